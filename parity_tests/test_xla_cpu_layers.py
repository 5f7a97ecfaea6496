"""``jax_impl.models.xla_cpu_layers``: GroupNorm, Conv and bias with their reductions as dots.

The layers must be flax's layers computed another way, so the oracle is flax itself
(``nn.GroupNorm(use_fast_variance=False)``, ``nn.Conv``) and a float64 numpy GroupNorm, in
float64, for outputs, reverse-mode gradients (params and input), forward-mode tangents
(the likelihood's divergence uses ``jax.jvp`` through the networks) and ``vmap``. Both
formulations are checked: the CPU one (what a CPU program runs) and the plain reductions
other backends get (forced here through ``_per_platform``). The networks built from these
layers are compared with torch in ``test_models_*``; the speed is measured in benchmarks/,
never here. A structural test checks that a CPU program really computes the sums as dots.
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_impl.models import xla_cpu_layers as XL
from parity_tests.helpers import numpy_group_norm


@contextlib.contextmanager
def formulation(which: str):
    """``"cpu"``: the library's choice on this (CPU) backend; ``"other"``: the plain
    reductions and broadcasts of the GPU / TPU branch."""
    original = XL._per_platform
    if which == "other":
        XL._per_platform = lambda cpu, other, *args: other(*args)
    try:
        yield
    finally:
        XL._per_platform = original


def _perturbed(variables, rng):
    return jax.tree.map(lambda p: p + jnp.asarray(rng.randn(*p.shape) * 0.3, p.dtype), variables)


def _max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(p - q))) for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("which", ["cpu", "other"])
@pytest.mark.parametrize("shape,groups", [((3, 5, 4, 64), 32), ((2, 7, 12), 4), ((4, 16), 8), ((2, 3, 3, 8), 1)])
def test_group_norm_is_flax_group_norm(which, shape, groups):
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(*shape) * 2.0 + 1.0)
    ours, flax_gn = XL.GroupNorm(num_groups=groups), nn.GroupNorm(num_groups=groups, epsilon=1e-6,
                                                                  use_fast_variance=False)
    with formulation(which):
        v0 = ours.init(jax.random.key(1), x)
        assert jax.tree.map(jnp.shape, v0) == jax.tree.map(jnp.shape, flax_gn.init(jax.random.key(1), x))
        v = _perturbed(v0, rng)
        g = jnp.asarray(rng.randn(*shape))
        y = ours.apply(v, x)
        np.testing.assert_allclose(y, numpy_group_norm(x, groups, 1e-6, v["params"]["scale"], v["params"]["bias"]),
                                   rtol=0, atol=1e-12)
        assert _max_diff(y, flax_gn.apply(v, x)) < 1e-12
        grads = jax.grad(lambda v, x: jnp.sum(ours.apply(v, x) * g), (0, 1))(v, x)
        ref = jax.grad(lambda v, x: jnp.sum(flax_gn.apply(v, x) * g), (0, 1))(v, x)
        assert _max_diff(grads, ref) < 1e-11
        tangent = jax.jvp(lambda x: ours.apply(v, x), (x,), (g,))[1]
        assert _max_diff(tangent, jax.jvp(lambda x: flax_gn.apply(v, x), (x,), (g,))[1]) < 1e-11
        batched = jax.vmap(lambda x: ours.apply(v, x))(jnp.stack([x, 2 * x]))
        assert _max_diff(batched[1], ours.apply(v, 2 * x)) < 1e-12


def test_group_norm_float32_and_dtypes():
    rng = np.random.RandomState(1)
    x = jnp.asarray(rng.randn(4, 8, 8, 32), jnp.float32)
    ours = XL.GroupNorm(num_groups=8)
    v = _perturbed(ours.init(jax.random.key(0), x), rng)
    v = jax.tree.map(lambda p: p.astype(jnp.float32), v)
    y = ours.apply(v, x)
    assert y.dtype == jnp.float32
    ref = numpy_group_norm(x, 8, 1e-6, v["params"]["scale"], v["params"]["bias"])
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5)
    # bfloat16 inputs: statistics and output in float32, as flax's GroupNorm
    yb = ours.apply(v, x.astype(jnp.bfloat16))
    assert yb.dtype == jnp.float32


@pytest.mark.parametrize("which", ["cpu", "other"])
@pytest.mark.parametrize("kernel_size,padding,strides", [
    ((3, 3), 1, 1), ((3, 3), 1, 2), ((3, 3), ((0, 1), (0, 1)), 2), ((1, 1), 0, 1), ((3,), ((1, 0),), 1),
    ((1,), 0, 1), ((3, 3, 3), 1, 1)])
def test_conv_is_flax_conv(which, kernel_size, padding, strides):
    rng = np.random.RandomState(2)
    n = len(kernel_size)
    x = jnp.asarray(rng.randn(2, *([6] * n), 5))
    pairs = ((padding, padding),) * n if isinstance(padding, int) else padding
    ours = XL.Conv(7, kernel_size, strides=strides, padding=padding)
    flax_conv = nn.Conv(7, kernel_size, strides=strides, padding=pairs)
    with formulation(which):
        v0 = ours.init(jax.random.key(3), x)
        ref0 = flax_conv.init(jax.random.key(3), x)
        # same names, shapes and initial values from the same key
        assert jax.tree.structure(v0) == jax.tree.structure(ref0) and _max_diff(v0, ref0) == 0.0
        v = _perturbed(v0, rng)
        y = ours.apply(v, x)
        assert y.shape == flax_conv.apply(v, x).shape and _max_diff(y, flax_conv.apply(v, x)) < 1e-12
        loss = lambda m: (lambda v, x: jnp.sum(m.apply(v, x) ** 2))  # noqa: E731
        assert _max_diff(jax.grad(loss(ours), (0, 1))(v, x), jax.grad(loss(flax_conv), (0, 1))(v, x)) < 1e-10


def test_conv_without_bias_and_custom_initialisers():
    x = jnp.ones((1, 4, 4, 3))
    v = XL.Conv(2, (3, 3), padding=1, use_bias=False).init(jax.random.key(0), x)
    assert set(v["params"]) == {"kernel"}
    v = XL.Conv(2, (1, 1), kernel_init=nn.initializers.zeros, bias_init=nn.initializers.ones).init(jax.random.key(0), x)
    assert float(jnp.abs(v["params"]["kernel"]).max()) == 0.0 and bool((v["params"]["bias"] == 1).all())


@pytest.mark.parametrize("which", ["cpu", "other"])
def test_sums_and_broadcasts(which):
    rng = np.random.RandomState(4)
    x = jnp.asarray(rng.randn(3, 5, 4))
    s = jnp.asarray(rng.randn(3, 8))
    with formulation(which):
        np.testing.assert_allclose(XL.sum_rows(x[0]), np.asarray(x[0]).sum(0), atol=1e-13)
        np.testing.assert_allclose(XL.broadcast_rows(x[0, 0], 6), np.broadcast_to(np.asarray(x[0, 0]), (6, 4)), atol=0)
        np.testing.assert_allclose(XL.sum_per_example(x), np.asarray(x).sum(1), atol=1e-13)
        np.testing.assert_allclose(XL.broadcast_per_example(x[:, 0], 5), np.repeat(np.asarray(x[:, :1]), 5, 1), atol=0)
        want = np.repeat(np.asarray(s).reshape(3, 2, 4).sum(-1) / 7.0, 4, axis=-1)
        np.testing.assert_allclose(XL.group_average(s, 2, 7), want, atol=1e-13)
        y = jnp.asarray(rng.randn(2, 3, 4))
        b = jnp.asarray(rng.randn(4))
        np.testing.assert_allclose(XL.add_bias(y, b), np.asarray(y) + np.asarray(b), atol=0)
        gb = jax.grad(lambda b: jnp.sum(XL.add_bias(y, b) * y))(b)
        np.testing.assert_allclose(gb, np.asarray(y).reshape(-1, 4).sum(0), atol=1e-13)


def test_cpu_programs_compute_the_sums_as_dots(monkeypatch):
    """The point of the module: compiled for the CPU, GroupNorm's gradient has no reduction
    over the [N, H, W, C] array left, only dots (without the C++ kernels: SCOREDIFF_ONEDNN=0)."""
    from jax_impl import onednn

    monkeypatch.setenv(onednn.ENV, "0")
    x = jnp.ones((4, 8, 8, 32), jnp.float32)
    gn = XL.GroupNorm(num_groups=8)
    v = gn.init(jax.random.key(0), x)
    hlo = jax.jit(jax.grad(lambda v, x: jnp.sum(gn.apply(v, x) ** 2), (0, 1))).lower(v, x).compile().as_text()
    assert "conditional" not in hlo
    assert hlo.count(" dot(") >= 6
    big_reductions = [line for line in hlo.splitlines()
                      if " reduce(" in line and ("f32[4,8,8,32]" in line or "f32[4,64,32]" in line or "f32[256,32]" in line)]
    assert big_reductions == []


def test_bad_arguments_name_the_layer():
    with pytest.raises(ValueError, match="not divisible into 3 groups"):
        XL.GroupNorm(num_groups=3).init(jax.random.key(0), jnp.ones((1, 2, 2, 8)))
    with pytest.raises(ValueError, match=r"GroupNorm: expected \[N, ..., C\]"):
        XL.GroupNorm(num_groups=1).init(jax.random.key(0), jnp.ones((8,)))
    with pytest.raises(ValueError, match="padding must be an int or"):
        XL.Conv(2, (3, 3), padding="SAME").init(jax.random.key(0), jnp.ones((1, 4, 4, 1)))
    with pytest.raises(ValueError, match=r"padding needs 2 \(lo, hi\) pairs"):
        XL.Conv(2, (3, 3), padding=((1, 1),)).init(jax.random.key(0), jnp.ones((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="needs \\[N, \\*2 spatial, C\\] inputs"):
        XL.Conv(2, (3, 3)).init(jax.random.key(0), jnp.ones((4, 4, 1)))
    with pytest.raises(ValueError, match="1-, 2- or 3-D kernels"):
        XL.Conv(2, (1, 1, 1, 1)).init(jax.random.key(0), jnp.ones((1, 2, 2, 2, 2, 1)))


@pytest.mark.parametrize("shape", [(2, 4, 4, 8), (3, 4, 4, 8), (5, 8)])
def test_channel_dense_is_the_einsum(shape, monkeypatch):
    """NIN's product: a 1 x 1 oneDNN convolution for 4-D float32 activations when oneDNN is
    enabled (even and odd batches), the einsum otherwise; values, gradients and the jvp agree
    with the einsum in float64."""
    from jax_impl import onednn

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    W = rng.standard_normal((8, 6)).astype(np.float32)
    g = rng.standard_normal(shape[:-1] + (6,)).astype(np.float32)
    want = np.einsum("...i,ij->...j", x.astype(np.float64), W.astype(np.float64))
    hlo = jax.jit(XL.channel_dense).lower(x, W).as_text()
    assert ("scorediff_onednn_conv_fwd" in hlo) == (len(shape) == 4 and onednn.enabled())
    np.testing.assert_allclose(jax.jit(XL.channel_dense)(x, W), want, rtol=1e-5, atol=1e-5)
    dx, dW = jax.jit(jax.grad(lambda x, W: jnp.vdot(XL.channel_dense(x, W), g), (0, 1)))(x, W)
    np.testing.assert_allclose(dx, g.astype(np.float64) @ W.T.astype(np.float64), rtol=1e-5, atol=1e-5)
    rows = lambda a: a.reshape(-1, a.shape[-1]).astype(np.float64)  # noqa: E731
    np.testing.assert_allclose(dW, rows(x).T @ rows(g), rtol=1e-5, atol=1e-4)
    _, ty = jax.jvp(XL.channel_dense, (x, W), (x, W))
    np.testing.assert_allclose(ty, 2 * want, rtol=1e-5, atol=1e-4)
    monkeypatch.setenv(onednn.ENV, "0")
    assert "scorediff_onednn" not in jax.jit(lambda x, W: XL.channel_dense(x, W)).lower(x, W).as_text()


@pytest.mark.parametrize("act", [None, jax.nn.silu, jax.nn.relu])
def test_group_norm_act(act, monkeypatch):
    """``GroupNorm(x, act=f)`` is ``f(GroupNorm(x))``: SiLU fused into the C++ kernels when
    they are enabled, any other activation applied after; values and gradients against the
    float64 oracle, both ways."""
    from jax_impl import onednn

    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(3, 4, 4, 16).astype(np.float32) * 2 + 0.5)
    gn = XL.GroupNorm(num_groups=4)
    v = _perturbed(gn.init(jax.random.key(0), x), rng)
    p = v["params"]
    f = (lambda z: z) if act is None else act
    y64 = numpy_group_norm(x, 4, 1e-6, p["scale"], p["bias"])
    want = {None: y64, jax.nn.silu: y64 / (1 + np.exp(-y64)), jax.nn.relu: np.maximum(y64, 0)}[act]
    monkeypatch.setenv(onednn.ENV, "0")  # the reference gradient: the dot formulation, then f
    g_ref = jax.grad(lambda v, x: jnp.sum(jnp.sin(f(gn.apply(v, x)))), (0, 1))(v, x)
    for switch in ("1", "0"):
        monkeypatch.setenv(onednn.ENV, switch)
        apply = jax.jit(lambda v, x: gn.apply(v, x, act=act))
        hlo = apply.lower(v, x).as_text()
        assert ("scorediff_group_norm_fwd" in hlo) == (switch == "1" and onednn.enabled())
        np.testing.assert_allclose(apply(v, x), want, rtol=1e-5, atol=1e-5)
        g = jax.jit(jax.grad(lambda v, x: jnp.sum(jnp.sin(gn.apply(v, x, act=act))), (0, 1)))(v, x)
        assert _max_diff(g, g_ref) < 1e-4
