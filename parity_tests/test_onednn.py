"""oneDNN convolutions on XLA:CPU (``jax_impl/onednn.py``): values, derivatives, selection.

Every value is checked against a float64 numpy oracle (the convolution and its two adjoints
written as sums over the kernel taps) and against ``lax.conv_general_dilated``; the layer
test checks that ``xla_cpu_layers.Conv`` puts the custom call in the program when enabled
and not when ``SCOREDIFF_ONEDNN=0``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jax_impl import onednn

pytestmark = pytest.mark.skipif(not onednn.available(),
                                reason=f"oneDNN convolutions unavailable: {onednn.status()['error']}")

TOL = 2e-5  # float32 sums of <= 300 products, relative to the largest |value|

# (N, H, W, C_in, C_out, kernel, strides, padding)
SHAPES = [
    (2, 8, 8, 3, 5, 3, (1, 1), ((1, 1), (1, 1))),    # the networks' 3x3 "same"
    (3, 9, 7, 4, 6, 3, (2, 2), ((0, 1), (1, 0))),    # stride 2, asymmetric padding, odd sizes
    (2, 8, 8, 4, 4, 1, (1, 1), ((0, 0), (0, 0))),    # 1x1
    (1, 6, 6, 2, 3, 3, (2, 1), ((0, 0), (2, 1))),    # mixed strides, rows left over
    (2, 7, 6, 3, 4, 3, (1, 1), ((0, 2), (2, 1))),    # stride 1, asymmetric (input gradient as a forward conv)
    (1, 5, 5, 2, 2, 3, (1, 1), ((3, 0), (0, 0))),    # stride 1, padding >= kernel (oneDNN's backward data)
    (4, 6, 6, 16, 32, 3, (2, 2), ((1, 1), (1, 1))),  # blocked kernels (16-channel blocks), batch split 2 x 2
]


def _pad(x, padding):
    (pt, pb), (pl, pr) = padding
    return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))


def oracle(x, w, strides, padding):
    """y[n, i, j, o] = sum_{a, b, c} xpad[n, i s_h + a, j s_w + b, c] w[a, b, c, o] (float64)."""
    xp = _pad(x.astype(np.float64), padding)
    kh, kw, _, co = w.shape
    sh, sw = strides
    oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    y = np.zeros((x.shape[0], oh, ow, co))
    for a in range(kh):
        for b in range(kw):
            patch = xp[:, a:a + sh * (oh - 1) + 1:sh, b:b + sw * (ow - 1) + 1:sw, :]
            y += patch @ w[a, b].astype(np.float64)
    return y


def oracle_adjoints(x, w, g, strides, padding):
    """(dx, dw) of sum(y * g): the two adjoints of ``oracle`` (float64)."""
    xp = _pad(x.astype(np.float64), padding)
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    kh, kw = w.shape[:2]
    sh, sw = strides
    oh, ow = g.shape[1:3]
    g = g.astype(np.float64)
    for a in range(kh):
        for b in range(kw):
            rows, cols = slice(a, a + sh * (oh - 1) + 1, sh), slice(b, b + sw * (ow - 1) + 1, sw)
            dw[a, b] = np.einsum("nijc,nijo->co", xp[:, rows, cols, :], g)
            dxp[:, rows, cols, :] += g @ w[a, b].astype(np.float64).T
    (pt, _), (pl, _) = padding
    return dxp[:, pt:pt + x.shape[1], pl:pl + x.shape[2], :], dw


def _close(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
    assert err <= TOL, err


def _lax(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


def _operands(shape, seed=0):
    N, H, W, C, O, k, strides, padding = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, H, W, C)).astype(np.float32)
    w = rng.standard_normal((k, k, C, O)).astype(np.float32)
    return rng, x, w, strides, padding


@pytest.mark.parametrize("threading", ["xla", "tbb"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{s[5]}x{s[5]}-s{s[6][0]}{s[6][1]}-n{s[0]}" for s in SHAPES])
def test_values_and_first_derivatives(shape, threading, monkeypatch):
    # "xla": an even batch is split between XLA's threads (a one-thread primitive per part, the
    # kernel gradient's parts summed), an odd one is oneDNN's own; "tbb": always oneDNN's own
    monkeypatch.setenv(onednn.THREADING_ENV, threading)
    rng, x, w, strides, padding = _operands(shape)
    conv = jax.jit(lambda x, w: onednn.conv2d(x, w, strides, padding))
    y = conv(x, w)
    _close(y, oracle(x, w, strides, padding))
    _close(y, _lax(x, w, strides, padding))

    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw = jax.jit(jax.grad(lambda x, w: jnp.vdot(onednn.conv2d(x, w, strides, padding), g), (0, 1)))(x, w)
    odx, odw = oracle_adjoints(x, w, g, strides, padding)
    _close(dx, odx)
    _close(dw, odw)

    tx, tw = rng.standard_normal(x.shape).astype(np.float32), rng.standard_normal(w.shape).astype(np.float32)
    _, ty = jax.jvp(lambda x, w: onednn.conv2d(x, w, strides, padding), (x, w), (tx, tw))
    _close(ty, oracle(tx, w, strides, padding) + oracle(x, tw, strides, padding))


def test_gradient_in_one_operand_only():
    _, x, w, strides, padding = _operands(SHAPES[0])
    f = lambda x, w: (onednn.conv2d(x, w, strides, padding) ** 2).sum()
    r = lambda x, w: (_lax(x, w, strides, padding) ** 2).sum()
    _close(jax.grad(f, 1)(x, w), jax.grad(r, 1)(x, w))   # the weights (training: x is data)
    _close(jax.grad(f, 0)(x, w), jax.grad(r, 0)(x, w))   # the input (guidance, saliency)


def test_vmap_and_nested_forward_mode():
    _, x, w, strides, padding = _operands(SHAPES[1])
    xs = np.stack([x, -2 * x, x + 1])
    _close(jax.vmap(lambda x: onednn.conv2d(x, w, strides, padding))(xs),
           np.stack([oracle(v, w, strides, padding) for v in xs]))
    f = lambda x: onednn.conv2d(x, w, strides, padding)
    r = lambda x: _lax(x, w, strides, padding)
    # jvp of jvp (a linear map: its second derivative is 0) and Hessian-vector products in x
    _close(jax.jvp(lambda x: jax.jvp(f, (x,), (x,))[1], (x,), (x,))[1],
           jax.jvp(lambda x: jax.jvp(r, (x,), (x,))[1], (x,), (x,))[1])
    hv = jax.jvp(jax.grad(lambda x: (jnp.tanh(f(x)) ** 2).sum()), (x,), (x,))[1]
    hr = jax.jvp(jax.grad(lambda x: (jnp.tanh(r(x)) ** 2).sum()), (x,), (x,))[1]
    _close(hv, hr)


def test_second_order_reverse_mode_and_batched_kernels():
    _, x, w, strides, padding = _operands(SHAPES[1], seed=3)
    x, w = x[:2, :5, :5, :2], w[:, :, :2, :2]
    f = lambda x, w: (jnp.tanh(onednn.conv2d(x, w, strides, padding)) ** 2).sum()
    r = lambda x, w: (jnp.tanh(_lax(x, w, strides, padding)) ** 2).sum()
    # grad of grad through both adjoints, and the full Hessian in the kernel
    gg = jax.grad(lambda w: jax.grad(f, 0)(x, w).sum())(w)
    _close(gg, jax.grad(lambda w: jax.grad(r, 0)(x, w).sum())(w))
    _close(jax.hessian(f, 1)(x, w), jax.hessian(r, 1)(x, w))
    # per-example weight gradients: vmap over x and dy together (the looped batching rule)
    pe = jax.vmap(lambda xi: jax.grad(f, 1)(xi[None], w))(x)
    _close(pe, jax.vmap(lambda xi: jax.grad(r, 1)(xi[None], w))(x))
    # a mapped kernel
    ws = np.stack([w, 2 * w])
    _close(jax.vmap(lambda w: onednn.conv2d(x, w, strides, padding))(ws),
           np.stack([oracle(x, v, strides, padding) for v in ws]))


def test_bad_operands_named():
    x = np.zeros((1, 4, 4, 3), np.float32)
    w = np.zeros((3, 3, 3, 2), np.float32)
    with pytest.raises(ValueError, match="channels"):
        onednn.conv2d(x, np.zeros((3, 3, 4, 2), np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        onednn.conv2d(x[0], w)
    with pytest.raises(TypeError, match="float32"):
        onednn.conv2d(x.astype(np.float16), w)
    with pytest.raises(ValueError, match="does not fit"):
        onednn.conv2d(x[:, :2, :2], w)
    with pytest.raises(ValueError, match="strides"):
        onednn.conv2d(x, w, (0, 1), ((1, 1), (1, 1)))


def _conv_program(env: dict) -> str:
    code = ("import jax, jax.numpy as jnp\n"
            "from jax_impl.models.xla_cpu_layers import Conv\n"
            "m = Conv(4, (3, 3), padding=1)\n"
            "x = jnp.ones((2, 8, 8, 3))\n"
            "v = m.init(jax.random.key(0), x)\n"
            "print(jax.jit(m.apply).lower(v, x).as_text())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout + out.stderr


def test_layer_uses_onednn_and_the_switch_turns_it_off():
    on = _conv_program({"SCOREDIFF_ONEDNN": "1"})
    assert "scorediff_onednn_conv_fwd" in on and "convolution" not in on.split("scorediff_onednn")[0].lower()
    off = _conv_program({"SCOREDIFF_ONEDNN": "0"})
    assert "scorediff_onednn" not in off and "stablehlo.convolution" in off


def test_layer_equals_lax_layer(monkeypatch):
    from jax_impl.models.xla_cpu_layers import Conv

    m = Conv(6, (3, 3), strides=2, padding=1)
    x = jax.random.normal(jax.random.key(1), (2, 9, 9, 5))
    v = m.init(jax.random.key(0), x)
    assert onednn.enabled()
    got = m.apply(v, x)
    g_got = jax.grad(lambda v: (m.apply(v, x) ** 2).sum())(v)
    monkeypatch.setenv(onednn.ENV, "0")
    assert not onednn.enabled()
    want = m.apply(v, x)
    g_want = jax.grad(lambda v: (m.apply(v, x) ** 2).sum())(v)
    _close(got, want)
    jax.tree_util.tree_map(_close, g_got, g_want)


def test_threading_values(monkeypatch):
    monkeypatch.setenv(onednn.THREADING_ENV, "openmp")
    with pytest.raises(ValueError, match=onednn.THREADING_ENV):
        onednn.threading_mode()
    x, w = np.ones((2, 4, 4, 1), np.float32), np.ones((3, 3, 1, 1), np.float32)
    with pytest.raises(ValueError, match=onednn.THREADING_ENV):
        jax.jit(lambda x, w: onednn.conv2d(x, w, (1, 1), ((1, 1), (1, 1)))).lower(x, w)
    monkeypatch.setenv(onednn.THREADING_ENV, " TBB ")
    assert onednn.threading_mode() == "tbb"
    monkeypatch.delenv(onednn.THREADING_ENV)
    assert onednn.threading_mode() == "xla"


def test_switch_values(monkeypatch):
    monkeypatch.setenv(onednn.ENV, "yes")
    with pytest.raises(ValueError, match="SCOREDIFF_ONEDNN='yes'"):
        onednn.enabled()
    monkeypatch.setenv(onednn.ENV, "0")
    st = onednn.status()
    assert (st["enabled"], st["available"], st["reason"]) == (False, True, "SCOREDIFF_ONEDNN=0")


def test_build_is_cached_and_the_command_line_reports():
    path = onednn.build()
    assert path == onednn.library_path() and path.is_file()
    assert onednn.build() == path  # found, not rebuilt
    out = subprocess.run([sys.executable, "-m", "jax_impl.onednn", "status"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "'enabled': True" in out.stdout and "3.2" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "jax_impl.onednn", "bogus"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


@pytest.mark.parametrize("var,value", [("SCOREDIFF_ONEDNN", "on"), ("SCOREDIFF_ONEDNN_THREADING", "openmp")])
def test_bad_switches_are_one_error_line_at_start(var, value, monkeypatch, capsys):
    """The command line and the benchmark runner check both variables before anything runs."""
    from benchmarks import run as bench_run
    from scorediff import cli

    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        onednn.check_environment()
    assert cli.main(["presets"]) == 2
    assert f"{var}={value!r}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        bench_run.main(["--tiny", "--list"])
    assert exit_info.value.code == 2
    assert var in capsys.readouterr().err
