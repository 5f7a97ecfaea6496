"""GroupNorm (+ SiLU) custom calls (``jax_impl/cpu_group_norm.py``): values, every kind of
derivative, vmap and bad input, against a float64 numpy oracle and the plain-JAX formula."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_impl import cpu_group_norm as G
from jax_impl import onednn
from parity_tests.helpers import numpy_group_norm

pytestmark = pytest.mark.skipif(not onednn.available(),
                                reason=f"CPU kernels unavailable: {onednn.status()['error']}")

EPS = 1e-6


def oracle(x, scale, bias, groups, act):
    """float64: two-pass statistics per example and group, then the affine map and SiLU."""
    z = numpy_group_norm(x, groups, EPS, scale, bias)
    return z / (1 + np.exp(-z)) if act == "silu" else z


def _plain(x, scale, bias, groups, act):
    N, C = x.shape[0], x.shape[-1]
    y = G.reference(x.reshape(N, -1, C), scale, bias, groups=groups, eps=EPS, act=G.ACTS[act])
    return y.reshape(x.shape)


def _operands(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    C = shape[-1]
    return rng, x, rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)


def _close(a, b, tol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1.0)
    assert err <= tol, err


# (shape, groups): even and odd batches (split between XLA's threads by examples), batch 1
# (split by groups, an odd number of them), one group, one channel per group, 1-D and 3-D
# spatial
CASES = [((4, 6, 6, 16), 4), ((3, 5, 7, 8), 8), ((1, 5, 5, 12), 3), ((1, 4, 4, 6), 1), ((2, 9, 12), 3),
         ((2, 3, 2, 2, 4), 2)]


@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("shape,groups", CASES)
def test_values_and_first_derivatives(shape, groups, act):
    rng, x, s, b = _operands(shape)
    f = lambda x, s, b: G.group_norm_act(x, s, b, groups=groups, eps=EPS, act=act)  # noqa: E731
    hlo = jax.jit(jax.grad(lambda x, s, b: jnp.sum(f(x, s, b) ** 2), (0, 1, 2))).lower(x, s, b).as_text()
    assert "scorediff_group_norm_bwd" in hlo  # reverse mode runs the C++ adjoint
    _close(jax.jit(f)(x, s, b), oracle(x, s, b, groups, act))

    g = rng.standard_normal(shape).astype(np.float32)
    got = jax.jit(jax.grad(lambda *a: jnp.vdot(f(*a), g), (0, 1, 2)))(x, s, b)
    want = jax.grad(lambda *a: jnp.vdot(_plain(*a, groups, act), g), (0, 1, 2))(x, s, b)
    for u, v in zip(got, want):
        _close(u, v, 1e-4)

    t = [rng.standard_normal(v.shape).astype(np.float32) for v in (x, s, b)]
    _close(jax.jvp(f, (x, s, b), tuple(t))[1], jax.jvp(lambda *a: _plain(*a, groups, act), (x, s, b), tuple(t))[1], 1e-4)


def test_silu_of_large_and_tiny_values():
    """The polynomial exp over float32's range: saturated SiLU for |z| up to 1e4."""
    x = np.array([[[-1e4], [-90.0], [-20.0], [-1e-3], [0.0], [1e-3], [20.0], [90.0], [1e4]]], np.float32)
    x = np.repeat(x, 2, axis=-1)
    s, b = np.ones(2, np.float32), np.zeros(2, np.float32)
    y = np.asarray(G.group_norm_act(x, s, b, groups=1, eps=EPS, act="silu"))
    assert np.isfinite(y).all()
    _close(y, oracle(x, s, b, 1, "silu"))


def test_second_order_and_vmap():
    rng, x, s, b = _operands((2, 4, 4, 8))
    g = rng.standard_normal(x.shape).astype(np.float32)
    f = lambda x, s, b: G.group_norm_act(x, s, b, groups=4, eps=EPS, act="silu")  # noqa: E731
    plain = lambda x, s, b: _plain(x, s, b, 4, "silu")  # noqa: E731
    # reverse over reverse (the gradient of a gradient norm) and a Hessian-vector product
    h = lambda F: jax.grad(lambda x: jnp.sum(jax.grad(lambda x: jnp.vdot(F(x, s, b), g))(x) ** 2))(x)  # noqa: E731
    _close(jax.jit(lambda x: h(f))(x), h(plain), 1e-4)
    hvp = lambda F: jax.jvp(jax.grad(lambda x: jnp.vdot(F(x, s, b), g)), (x,), (g,))[1]  # noqa: E731
    _close(hvp(f), hvp(plain), 1e-4)
    # vmap: a mapped activation axis (folded into N), mapped parameters (the plain formula)
    xb = np.stack([x, 2 * x - 1])
    _close(jax.vmap(lambda x: f(x, s, b))(xb), jax.vmap(lambda x: plain(x, s, b))(xb))
    sb = np.stack([s, -s])
    _close(jax.vmap(lambda x, s: f(x, s, b))(xb, sb), jax.vmap(lambda x, s: plain(x, s, b))(xb, sb))
    per_example = jax.vmap(jax.grad(lambda x, s: jnp.vdot(f(x, s, b), g), (0, 1)))(xb, sb)
    want = jax.vmap(jax.grad(lambda x, s: jnp.vdot(plain(x, s, b), g), (0, 1)))(xb, sb)
    for u, v in zip(per_example, want):
        _close(u, v, 1e-4)


def test_bad_input_named():
    x = np.ones((2, 4, 4, 8), np.float32)
    s = b = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="act"):
        G.group_norm_act(x, s, b, groups=4, eps=EPS, act="relu")
    with pytest.raises(ValueError, match="divisible"):
        G.group_norm_act(x, s, b, groups=3, eps=EPS)
    with pytest.raises(ValueError, match="float32"):
        G.group_norm_act(x.astype(np.float16), s, b, groups=4, eps=EPS)
    with pytest.raises(ValueError, match="scale and bias"):
        G.group_norm_act(x, s[:4], b, groups=4, eps=EPS)
