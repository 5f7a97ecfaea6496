"""NCSN++ / DDPM++ (score_sde ``ncsnpp``) and FIR resampling: flax == torch (== numpy).

Twins: ``jax_impl/models/ncsnpp.py`` <-> ``torch_ref/models/ncsnpp.py``,
``jax_impl/models/up_or_down_sampling.py`` <-> ``torch_ref/models/up_or_down_sampling.py``,
``jax_impl/models/layerspp.py`` <-> ``torch_ref/models/layerspp.py``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import signal

from jax_impl.models import ncsnpp as jncsnpp
from jax_impl.models import registry as jreg
from jax_impl.models import up_or_down_sampling as jud
from parity_tests import netutils
from spec.model_configs import PRESETS, NCSNppConfig, from_score_sde_config
from torch_ref import convert as tconv
from torch_ref.models import ncsnpp as tncsnpp
from torch_ref.models import registry as treg
from torch_ref.models import up_or_down_sampling as tud

# --------------------------------------------------------------------- FIR resampling


def np_upfirdn2d(x, k, up, down, pad):
    """float64 oracle (NCHW): zero insertion, padding, scipy 2-D convolution, striding."""
    B, C, H, W = x.shape
    u = np.zeros((B, C, H * up, W * up))
    u[:, :, ::up, ::up] = x
    u = np.pad(u, ((0, 0), (0, 0), pad, pad))
    out = np.stack([np.stack([signal.convolve2d(u[b, c], k, mode="valid") for c in range(C)]) for b in range(B)])
    return out[:, :, ::down, ::down]


def np_conv_transpose(x, w, stride):
    """float64 oracle of the StyleGAN2 transposed convolution: scatter-add of
    ``x[c, y, x] * w[o, c, ::-1, ::-1]`` at ``(y s, x s)``."""
    B, C, H, W = x.shape
    O, _, K, _ = w.shape
    w_t = w[:, :, ::-1, ::-1]
    out = np.zeros((B, O, (H - 1) * stride + K, (W - 1) * stride + K))
    for i in range(H):
        for j in range(W):
            out[:, :, i * stride:i * stride + K, j * stride:j * stride + K] += np.einsum(
                "bc,ocij->boij", x[:, :, i, j], w_t)
    return out


def np_kernel(k):
    k = np.outer(k, k).astype(np.float64)
    return k / k.sum()


K4 = (1, 3, 3, 1)


def _fir_cases(x, w):
    """(name, jax result, torch result, numpy oracle) for NCHW float64 x and OIHW w."""
    xj = jnp.asarray(netutils.nhwc(x))
    xt = torch.as_tensor(x)
    wj = jnp.asarray(np.transpose(w, (2, 3, 1, 0)))
    wt = torch.as_tensor(w)
    up = np_kernel(K4) * 4
    return [
        ("upsample_2d", jud.upsample_2d(xj, K4), tud.upsample_2d(xt, K4), np_upfirdn2d(x, up, 2, 1, (2, 1))),
        ("downsample_2d", jud.downsample_2d(xj, K4), tud.downsample_2d(xt, K4),
         np_upfirdn2d(x, np_kernel(K4), 1, 2, (1, 1))),
        ("upsample_conv_2d", jud.upsample_conv_2d(xj, wj, K4), tud.upsample_conv_2d(xt, wt, K4),
         np_upfirdn2d(np_conv_transpose(x, w, 2), up, 1, 1, (1, 1))),
        ("conv_downsample_2d", jud.conv_downsample_2d(xj, wj, K4), tud.conv_downsample_2d(xt, wt, K4),
         np.stack([np.stack([sum(signal.correlate2d(f[b, c], w[o, c], mode="valid")[::2, ::2]
                                 for c in range(w.shape[1])) for o in range(w.shape[0])])
                   for b in range(x.shape[0])])
         if (f := np_upfirdn2d(x, np_kernel(K4), 1, 1, (2, 2))) is not None else None),
        ("naive_upsample_2d", jud.naive_upsample_2d(xj), tud.naive_upsample_2d(xt),
         np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)),
        ("naive_downsample_2d", jud.naive_downsample_2d(xj), tud.naive_downsample_2d(xt),
         x.reshape(x.shape[0], x.shape[1], x.shape[2] // 2, 2, x.shape[3] // 2, 2).mean(axis=(3, 5))),
    ]


def test_fir_resampling_three_way_float64(np_rng):
    x = np_rng.normal(size=(2, 3, 6, 8))
    w = np_rng.normal(size=(4, 3, 3, 3))
    for name, rj, rt, ref in _fir_cases(x, w):
        rj = netutils.nchw(np.asarray(rj))
        rt = rt.numpy()
        assert rj.shape == rt.shape == ref.shape, name
        np.testing.assert_allclose(rj, ref, rtol=1e-10, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(rt, ref, rtol=1e-10, atol=1e-12, err_msg=name)


def test_fir_resampling_preserves_constants():
    x = np.full((1, 1, 8, 8), 3.0)
    up = tud.upsample_2d(torch.as_tensor(x), K4).numpy()
    down = netutils.nchw(np.asarray(jud.downsample_2d(jnp.asarray(netutils.nhwc(x)), K4)))
    np.testing.assert_allclose(up[:, :, 2:-2, 2:-2], 3.0, rtol=1e-12)  # interior (zero padding at borders)
    np.testing.assert_allclose(down[:, :, 1:-1, 1:-1], 3.0, rtol=1e-12)


def test_fir_separable_passes_equal_the_2d_kernel(np_rng):
    """The fast path (1-D taps, two fused passes) against the depthwise 2-D convolution of
    ``upfirdn2d`` with the outer-product kernel, for up / down / padding with a crop; and
    a 2-D kernel given to ``upsample_2d`` / ``downsample_2d`` takes the 2-D path."""
    x = jnp.asarray(np_rng.normal(size=(2, 7, 6, 3)))
    taps = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0
    for up, down, pad in ((2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (2, 2)), (3, 1, (0, -1)), (1, 3, (1, 0))):
        fast = jud.upfirdn2d(x, taps, up=up, down=down, pad=pad)
        ref = jud.upfirdn2d(x, np.outer(taps, taps), up=up, down=down, pad=pad)
        assert fast.shape == ref.shape, (up, down, pad)
        np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), rtol=1e-12, atol=1e-12,
                                   err_msg=str((up, down, pad)))
    k2 = np.outer(K4, K4)
    for gain in (1.0, 0.5):
        np.testing.assert_allclose(np.asarray(jud.upsample_2d(x, k2, gain=gain)),
                                   np.asarray(jud.upsample_2d(x, K4, gain=gain)), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(jud.downsample_2d(x, k2, gain=gain)),
                                   np.asarray(jud.downsample_2d(x, K4, gain=gain)), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------ networks

BASE = NCSNppConfig(image_size=8, num_channels=3, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                    dropout=0.1, num_scales=20)
CONFIGS = {
    # NCSN++ (VE, continuous): BigGAN blocks, FIR, residual input pyramid, Fourier, 1/sigma.
    "ncsnpp_biggan_fir_fourier": BASE,
    # DDPM++ (VP, continuous): BigGAN blocks, no FIR, positional embedding, centered.
    "ddpmpp_biggan_positional": dataclasses.replace(
        BASE, fir=False, progressive_input="none", embedding_type="positional", scale_by_sigma=False,
        centered=True, image_size=16, attn_resolutions=(16,)),
    # DDPM blocks, FIR conv resampling, output_skip / input_skip with cat, sigma table.
    "ddpm_blocks_skip_cat": dataclasses.replace(
        BASE, resblock_type="ddpm", progressive="output_skip", progressive_input="input_skip",
        progressive_combine="cat", embedding_type="positional", skip_rescale=False, init_scale=0.1),
    # DDPM blocks without conv / FIR resampling, residual pyramids both ways, unconditional.
    "ddpm_blocks_residual_plain": dataclasses.replace(
        BASE, resblock_type="ddpm", fir=False, resamp_with_conv=False, progressive="residual",
        progressive_input="residual", conditional=False, scale_by_sigma=False, nonlinearity="lrelu"),
}


def _inputs(config, rng, B=2):
    x = rng.uniform(0.0, 1.0, size=(B, config.image_size, config.image_size, config.num_channels))
    if config.embedding_type == "fourier":
        labels = np.exp(rng.uniform(np.log(0.01), np.log(50.0), size=B))  # continuous sigmas
    else:
        labels = np.array([3.0, 17.0])[:B] if config.scale_by_sigma else rng.uniform(0.0, 999.0, size=B)
    return x.astype(np.float32), labels.astype(np.float32)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ncsnpp_parity_outputs_and_input_gradients(name, np_rng):
    config = CONFIGS[name]
    tm, fm, variables = netutils.image_model_pair(config, np_rng, tncsnpp.NCSNpp, jncsnpp.NCSNpp)
    x, labels = _inputs(config, np_rng)
    netutils.check_image_parity(tm, fm, variables, x, labels, np_rng)


def test_ncsnpp_dropout_train_vs_eval(np_rng):
    config = dataclasses.replace(BASE, ch_mult=(1,), image_size=4, attn_resolutions=(), dropout=0.5,
                                 progressive_input="none")
    tm, fm, variables = netutils.image_model_pair(config, np_rng, tncsnpp.NCSNpp, jncsnpp.NCSNpp)
    x, labels = _inputs(config, np_rng)
    netutils.check_dropout_modes(tm, fm, variables, x, labels)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ncsnpp_key_table(name):
    config = CONFIGS[name]
    netutils.check_key_table(config, tncsnpp.NCSNpp(config), jncsnpp.NCSNpp(config))


def test_fourier_projection_is_a_constant_not_a_param():
    config = CONFIGS["ncsnpp_biggan_fir_fourier"]
    shapes = jreg.variable_shapes(config)
    assert shapes["constants"]["all_modules_0"]["W"].shape == (config.nf,)
    assert "all_modules_0" not in shapes["params"]
    with torch.device("meta"):
        assert treg.create_model(config).all_modules[0].W.requires_grad is False


@pytest.mark.parametrize("preset,total,trainable", [
    ("vp/cifar10_ddpmpp_continuous", 61_804_419, 61_804_419),
    ("vp/cifar10_ddpmpp_deep_continuous", 106_632_579, 106_632_579),
    ("ve/cifar10_ncsnpp_continuous", 62_758_915, 62_758_787),
    ("ve/cifar10_ncsnpp_deep_continuous", 107_587_075, 107_586_947),
])
def test_ncsnpp_cifar10_parameter_counts_both_sides(preset, total, trainable):
    config = PRESETS[preset]
    want = {"total": total, "trainable": trainable}
    assert jreg.count_parameters(config) == want
    assert treg.count_parameters(config) == want
    table = tconv.key_table(config)
    assert (tconv.num_parameters(table), tconv.num_parameters(table, trainable_only=True)) == (total, trainable)


def _official_dict(**model_overrides):
    """A score_sde ``config.to_dict()`` as ``ve/cifar10_ncsnpp_continuous`` writes it."""
    model = dict(
        sigma_min=0.01, sigma_max=50, num_scales=1000, beta_min=0.1, beta_max=20.0, dropout=0.1,
        embedding_type="fourier", name="ncsnpp", scale_by_sigma=True, ema_rate=0.999, normalization="GroupNorm",
        nonlinearity="swish", nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
        resamp_with_conv=True, conditional=True, fir=True, fir_kernel=[1, 3, 3, 1], skip_rescale=True,
        resblock_type="biggan", progressive="none", progressive_input="residual", progressive_combine="sum",
        attention_type="ddpm", init_scale=0.0, fourier_scale=16, conv_size=3)
    model.update(model_overrides)
    return {
        "training": {"sde": "vesde", "continuous": True, "batch_size": 128},
        "data": {"dataset": "CIFAR10", "image_size": 32, "random_flip": True, "centered": False,
                 "uniform_dequantization": False, "num_channels": 3},
        "model": model,
        "optim": {"lr": 2e-4},
    }


def test_from_score_sde_config_matches_preset():
    assert from_score_sde_config(_official_dict()) == PRESETS["ve/cifar10_ncsnpp_continuous"]
    cfg = NCSNppConfig.from_score_sde_config(_official_dict())
    assert hash(cfg) == hash(PRESETS["ve/cifar10_ncsnpp_continuous"])
    d = _official_dict(resblock_type="resnet")
    with pytest.raises(ValueError, match="unknown resblock_type 'resnet'; valid choices: 'ddpm', 'biggan'"):
        from_score_sde_config(d)
    d = _official_dict()
    d["training"]["continuous"] = False
    with pytest.raises(ValueError, match="training.continuous"):
        from_score_sde_config(d)


def test_ncsnpp_bad_inputs_raise_before_compute():
    config = CONFIGS["ncsnpp_biggan_fir_fourier"]
    fm, tm = jncsnpp.NCSNpp(config), tncsnpp.NCSNpp(config)
    netutils.check_bad_inputs_flax(fm, config, [
        ((2, 8, 8, 4), (2,), "x has 4 channels"),
        ((2, 8, 5, 3), (2,), "not divisible by the down-sampling factor 2"),
        ((2, 8, 8, 3), (2, 1), "labels must have shape"),
    ])
    with pytest.raises(ValueError, match="x has 8 channels"):
        tm(torch.zeros(2, 8, 8, 3), torch.ones(2))
    with pytest.raises(ValueError, match="not divisible by the down-sampling factor 2"):
        tm(torch.zeros(2, 3, 9, 8), torch.ones(2))
    with pytest.raises(ValueError, match="labels must have shape"):
        tm(torch.zeros(2, 3, 8, 8), torch.ones(()))
    for field, value in [("resblock_type", "resnet"), ("progressive", "skip"), ("progressive_input", "sum"),
                         ("progressive_combine", "mean"), ("embedding_type", "learned"),
                         ("attention_type", "legacy")]:
        with pytest.raises(ValueError, match=f"unknown {field} '{value}'; valid choices"):
            NCSNppConfig(**{field: value})
    with pytest.raises(ValueError, match="conv_size must be 3"):
        NCSNppConfig(conv_size=5)
    with pytest.raises(TypeError, match="fir must be a bool"):
        NCSNppConfig(fir="yes")
