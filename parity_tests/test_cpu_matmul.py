"""oneDNN's sgemm as a JAX primitive (``jax_impl/cpu_matmul.py``) and the ``Dense`` layer that
uses it (``jax_impl/models/xla_cpu_layers.py``): values of the three product forms against a
float64 numpy oracle, both threading modes (a split of the rows or of the contraction, and
one call), every kind of derivative, vmap, the layer's parameters against ``flax.linen.Dense``,
and bad input."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_impl import cpu_matmul as MM
from jax_impl import onednn
from jax_impl.models import xla_cpu_layers as XL

pytestmark = pytest.mark.skipif(not onednn.available(),
                                reason=f"CPU kernels unavailable: {onednn.status()['error']}")

FORMS = [(0, 0), (0, 1), (1, 0)]


def _operands(ta, tb, rows, k=64, n=48, seed=0):
    """op(a) [M, K] op(b) [K, N] with M = ``rows`` (the result's rows, which the custom call
    splits between threads)."""
    rng = np.random.default_rng(seed)
    if not ta:
        a = rng.standard_normal((rows, k))
        b = rng.standard_normal((n, k) if tb else (k, n))
    else:  # a [K, M], b [K, N]
        a = rng.standard_normal((k, rows))
        b = rng.standard_normal((k, n))
    return rng, a.astype(np.float32), b.astype(np.float32)


def oracle(a, b, ta, tb):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64.T if ta else a64) @ (b64.T if tb else b64)


def _close(got, want, tol=1e-5):
    got = np.asarray(got, np.float64)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * (1 + np.max(np.abs(want), initial=0)))


# on 2 threads, with K = 64 and N = 48: 1, 7 one call (under 8 rows per part), 100 one call
# (under 5e5 flops per part), 300 and 1001 split (uneven parts with 1001; for A^T B a part
# reads a band of A's columns)
ROWS = [1, 7, 100, 300, 1001]


@pytest.mark.parametrize("threading", ["xla", "tbb"])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("form", FORMS, ids=["AB", "ABt", "AtB"])
def test_values_and_gradients(form, rows, threading, monkeypatch):
    monkeypatch.setenv(onednn.THREADING_ENV, threading)
    ta, tb = form
    rng, a, b = _operands(ta, tb, rows)
    y = jax.jit(lambda a, b: MM.matmul(a, b, ta, tb))(a, b)
    want = oracle(a, b, ta, tb)
    assert y.shape == want.shape and y.dtype == jnp.float32
    _close(y, want)
    g = rng.standard_normal(want.shape).astype(np.float32)
    da, db = jax.jit(jax.grad(lambda a, b: jnp.vdot(MM.matmul(a, b, ta, tb), g), (0, 1)))(a, b)
    ra, rb = jax.grad(lambda a, b: jnp.vdot(MM.reference(a, b, ta=ta, tb=tb), g), (0, 1))(a, b)
    _close(da, np.asarray(ra, np.float64))
    _close(db, np.asarray(rb, np.float64))
    # the adjoints in float64: dA = g op(b)^T (or its transpose), dB likewise
    g64 = g.astype(np.float64)
    opa, opb = oracle(a, np.eye(a.shape[1 - ta], dtype=np.float32), ta, 0), oracle(b, np.eye(b.shape[1 - tb], dtype=np.float32), tb, 0)
    _close(da, (g64 @ opb.T).T if ta else g64 @ opb.T)
    _close(db, (opa.T @ g64).T if tb else opa.T @ g64)


def test_zero_sized_and_empty_contraction():
    a = np.zeros((0, 4), np.float32)
    assert MM.matmul(a, np.ones((4, 3), np.float32)).shape == (0, 3)
    y = jax.jit(lambda a, b: MM.matmul(a, b))(np.ones((5, 0), np.float32), np.ones((0, 3), np.float32))
    np.testing.assert_array_equal(np.asarray(y), np.zeros((5, 3)))


def test_forward_mode_and_second_order():
    rng, a, b = _operands(0, 0, 9, k=5, n=4)
    f = lambda a, b: jnp.sum(jnp.tanh(MM.matmul(a, b)))  # noqa: E731
    r = lambda a, b: jnp.sum(jnp.tanh(MM.reference(a, b, ta=0, tb=0)))  # noqa: E731
    ta_, tb_ = rng.standard_normal(a.shape).astype(np.float32), rng.standard_normal(b.shape).astype(np.float32)
    (_, t1), (_, t2) = jax.jvp(f, (a, b), (ta_, tb_)), jax.jvp(r, (a, b), (ta_, tb_))
    _close(t1, float(t2))
    h1 = jax.jit(jax.hessian(f, (0, 1)))(a, b)
    h2 = jax.hessian(r, (0, 1))(a, b)
    for x, y in zip(jax.tree_util.tree_leaves(h1), jax.tree_util.tree_leaves(h2)):
        _close(x, np.asarray(y, np.float64), tol=1e-4)
    # reverse over forward (an HVP) and the primitive in the jaxpr of the gradient
    hvp1 = jax.grad(lambda a: jax.jvp(lambda a: f(a, b), (a,), (ta_,))[1])(a)
    hvp2 = jax.grad(lambda a: jax.jvp(lambda a: r(a, b), (a,), (ta_,))[1])(a)
    _close(hvp1, np.asarray(hvp2, np.float64), tol=1e-4)
    assert "scorediff_onednn_matmul" in str(jax.make_jaxpr(jax.grad(f, (0, 1)))(a, b))


def test_vmap():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 7, 5)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    bs = rng.standard_normal((3, 5, 4)).astype(np.float32)
    # a mapped, b shared: folded into the rows (one custom call)
    y = jax.vmap(lambda a: MM.matmul(a, b))(a)
    _close(y, np.einsum("bmk,kn->bmn", a.astype(np.float64), b))
    jaxpr = str(jax.make_jaxpr(jax.vmap(lambda a: MM.matmul(a, b)))(a))
    assert jaxpr.count("scorediff_onednn_matmul") == 1
    # both mapped, and a shared with b mapped: the plain product, mapped
    _close(jax.vmap(MM.matmul)(a, bs), np.einsum("bmk,bkn->bmn", a.astype(np.float64), bs))
    _close(jax.vmap(lambda b: MM.matmul(a[0], b))(bs), np.einsum("mk,bkn->bmn", a[0].astype(np.float64), bs))
    # per-example gradients (vmap of grad)
    g = jax.vmap(jax.grad(lambda a, b: jnp.sum(MM.matmul(a, b) ** 2), 1), in_axes=(0, None))(a, b)
    want = np.stack([2 * a[i].astype(np.float64).T @ (a[i].astype(np.float64) @ b) for i in range(3)])
    _close(g, want, tol=1e-4)


def test_bad_input():
    a, b = np.ones((4, 3), np.float32), np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="ta and tb both"):
        MM.matmul(a, b.T, True, True)
    with pytest.raises(ValueError, match="2-D operands"):
        MM.matmul(a[None], b)
    with pytest.raises(TypeError, match="float32"):
        MM.matmul(a.astype(np.float64), b)
    with pytest.raises(ValueError, match="do not multiply"):
        MM.matmul(a, np.ones((4, 2), np.float32))


@pytest.mark.parametrize("rows", [8, MM.MIN_ROWS])
def test_dense_layer_is_flax_dense(rows):
    """Same parameter tree and initial values as ``flax.linen.Dense`` for the same key; the
    same outputs and gradients; oneDNN only from ``MIN_ROWS`` rows (float32, one device)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows // 4, 4, 6)).astype(np.float32)
    # a random bias, so the bias's path is checked too
    ours = XL.Dense(5, bias_init=nn.initializers.normal(1.0))
    theirs = nn.Dense(5, bias_init=nn.initializers.normal(1.0))
    p1, p2 = ours.init(jax.random.key(0), x), theirs.init(jax.random.key(0), x)
    assert jax.tree_util.tree_structure(p1) == jax.tree_util.tree_structure(p2)
    for u, v in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    y1 = jax.jit(ours.apply)(p1, x)
    y2 = theirs.apply(p2, x)
    assert y1.shape == (rows // 4, 4, 5)
    _close(y1, np.asarray(y2, np.float64))
    g1 = jax.grad(lambda p: jnp.sum(jnp.sin(ours.apply(p, x))))(p1)
    g2 = jax.grad(lambda p: jnp.sum(jnp.sin(theirs.apply(p, x))))(p2)
    for u, v in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        _close(u, np.asarray(v, np.float64), tol=1e-4)
    text = jax.jit(ours.apply).lower(p1, x).as_text()
    assert ("scorediff_onednn_matmul" in text) == (rows >= MM.MIN_ROWS and onednn.enabled())


def test_dense_dispatch_rules():
    k = jnp.ones((6, 5), jnp.float32)
    big = jnp.ones((MM.MIN_ROWS, 6), jnp.float32)
    assert MM.use_for(big, k) == onednn.enabled()
    assert not MM.use_for(big[:-1], k)  # too few rows
    assert not MM.use_for(big.astype(jnp.float64) if jax.config.jax_enable_x64 else big.astype(jnp.bfloat16), k)
    assert not MM.use_for(big[0], k)  # a vector: XLA's dot
    # a bfloat16 layer stays XLA's dot and keeps flax's dtype promotion
    x16 = jnp.ones((MM.MIN_ROWS, 6), jnp.bfloat16)
    p = XL.Dense(5).init(jax.random.key(0), x16)
    assert XL.Dense(5).apply(p, x16).dtype == jnp.float32  # params are float32: promoted as flax does
    assert XL.Dense(5).apply(p, x16).shape == (MM.MIN_ROWS, 5)
