"""improved-diffusion's UNetModel: flax == torch (float32), key table, official parameter counts,
flags -> configs, input checks.

Twins: ``jax_impl/models/unet.py`` <-> ``torch_ref/models/unet.py``; config and layout in
``spec/unet_model.py``, key table in ``spec/keytables.py``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_impl.models import registry as jreg
from jax_impl.models import unet as junet
from parity_tests import netutils
from spec import DiffusionConfig, LossType, ModelMeanType, ModelVarType, UNetModelConfig
from spec.unet_model import (
    IMPROVED_DIFFUSION_DEFAULTS,
    IMPROVED_DIFFUSION_PRESETS,
    parse_improved_diffusion_flags,
    unet_model_plan,
)
from torch_ref import convert as tconv
from torch_ref.models import registry as treg
from torch_ref.models import unet as tunet

# Two small networks between them covering every option value: attention on/off (down path,
# middle, up path), heads (down != up), scale-shift norm on/off, class-conditional or not,
# learned sigma or not, dropout (eval mode here), conv / pooled resampling, gradient
# checkpointing on/off, two / three levels, channel-changing skip convs. (Each forward +
# input-gradient program costs ~10 s of CPU to compile, so the options are combined.)
BASE = UNetModelConfig(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                       attention_resolutions=(), dropout=0.0, channel_mult=(1, 2), num_heads=1)
CONFIGS = {
    "attn_heads_scaleshift_classcond_learnsigma_dropout_checkpoint": dataclasses.replace(
        BASE, attention_resolutions=(1, 2), num_heads=2, num_heads_upsample=4, use_scale_shift_norm=True,
        num_classes=10, out_channels=6, dropout=0.3, use_checkpoint=True),
    "three_levels_no_attn_add_norm_pool_resample": dataclasses.replace(
        BASE, channel_mult=(1, 1, 2), use_scale_shift_norm=False, conv_resample=False, dropout=0.2),
}


def _inputs(config, rng, B=2):
    x = rng.normal(size=(B, config.image_size, config.image_size, config.in_channels)).astype(np.float32)
    t = rng.uniform(0.0, 1000.0, size=B).astype(np.float32)  # rescaled timesteps are fractional
    y = rng.integers(0, config.num_classes, size=B) if config.num_classes else None
    return x, t, y


def _pair(config, rng):
    torch.manual_seed(0)
    tm = netutils.perturb_(tunet.UNetModel(config), rng).eval()  # perturbed: no zero conv hides a mismatch
    variables = jax.tree_util.tree_map(jnp.asarray, tconv.torch_to_flax(
        tm.state_dict(), tconv.key_table(config), flax_shapes=jreg.variable_shapes(config)))
    return tm, junet.UNetModel(config), variables


#: The config whose parity program also runs flax's train mode twice (dropout keys 1 and 2).
DROPOUT_CHECKED = "three_levels_no_attn_add_norm_pool_resample"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_unet_parity_outputs_and_input_gradients(name, np_rng):
    """Eval-mode outputs and input gradients, flax (one jit program) == torch; for
    ``DROPOUT_CHECKED`` the same program applies dropout (``train=True``) with two keys:
    they differ from each other and from eval mode (compiled once, with the parity)."""
    config = CONFIGS[name]
    tm, fm, variables = _pair(config, np_rng)
    x, t, y = _inputs(config, np_rng)
    w = np_rng.normal(size=x.shape[:3] + (config.out_channels,)).astype(np.float32)
    yj = None if y is None else jnp.asarray(y, jnp.int32)
    dropout = name == DROPOUT_CHECKED

    def out_and_grad(v, x, t, w):
        out, vjp = jax.vjp(lambda x: fm.apply(v, x, t, y=yj), x)
        if not dropout:
            return out, vjp(w)[0]
        train = lambda k: fm.apply(v, x, t, y=yj, train=True, rngs={"dropout": jax.random.PRNGKey(k)})  # noqa: E731
        return out, vjp(w)[0], train(1), train(2)

    args = (variables, jnp.asarray(x), jnp.asarray(t), jnp.asarray(w))
    out_j, grad_j, *trained = (np.asarray(a) for a in netutils.compile_fast(out_and_grad, *args)(*args))
    xt = torch.as_tensor(netutils.nchw(x)).requires_grad_(True)
    out_t = tm(xt, torch.as_tensor(t), y=None if y is None else torch.as_tensor(y))
    (out_t * torch.as_tensor(netutils.nchw(w))).sum().backward()
    assert out_j.shape == (2, 8, 8, config.out_channels) and out_j.dtype == np.float32
    assert np.abs(out_j).max() > 1e-3
    err_out = netutils.assert_rel_close(out_j, netutils.nhwc(out_t.detach().numpy()), 1e-5, "output")
    err_grad = netutils.assert_rel_close(grad_j, netutils.nhwc(xt.grad.numpy()), 1e-5, "input gradient")
    print(f"{name}: max normalised flax-torch difference output {err_out:.2e}, input gradient {err_grad:.2e}")
    if dropout:
        a, b = trained
        assert np.abs(a - b).max() > 1e-4 and np.abs(a - out_j).max() > 1e-4


def test_unet_torch_dropout_modes_and_labels_change_the_output(np_rng):
    """torch: dropout only in train mode, eval deterministic; the class label reaches the
    output (flax's train mode is checked inside the parity program of ``DROPOUT_CHECKED``)."""
    config = CONFIGS[DROPOUT_CHECKED]
    tm = _official_like(config, np_rng)
    x, t, _ = _inputs(config, np_rng)
    xt, tt = torch.as_tensor(netutils.nchw(x)), torch.as_tensor(t)
    with torch.no_grad():
        tm.train()
        ta, tb = tm(xt, tt), tm(xt, tt)
        tm.eval()
        te = tm(xt, tt)
        assert (ta - tb).abs().max() > 1e-4 and (ta - te).abs().max() > 1e-4 and torch.equal(te, tm(xt, tt))
        cond = _official_like(CONFIGS["attn_heads_scaleshift_classcond_learnsigma_dropout_checkpoint"], np_rng)
        y0, y1 = cond(xt, tt, y=torch.tensor([0, 0])), cond(xt, tt, y=torch.tensor([1, 0]))
    assert (y0[0] - y1[0]).abs().max() > 1e-4 and torch.equal(y0[1], y1[1])


def _official_like(config, rng):
    torch.manual_seed(0)
    return netutils.perturb_(tunet.UNetModel(config), rng).eval()


def test_timestep_embedding_is_the_official_one():
    t = np.array([0.0, 1.0, 17.5, 999.0], np.float32)
    for dim in (8, 7):
        half = dim // 2
        freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)
        args = t[:, None].astype(np.float64) * freqs[None]
        want = np.concatenate([np.cos(args), np.sin(args)] + ([np.zeros((4, 1))] if dim % 2 else []), axis=1)
        got_j = np.asarray(junet.timestep_embedding(jnp.asarray(t), dim))
        got_t = tunet.timestep_embedding(torch.as_tensor(t), dim).numpy()
        assert got_j.shape == got_t.shape == (4, dim) and got_j.dtype == got_t.dtype == np.float32
        np.testing.assert_allclose(got_j, want, atol=2e-4)
        np.testing.assert_allclose(got_t, want, atol=2e-4)
        np.testing.assert_allclose(got_j, got_t, atol=1e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_unet_key_table_is_exact_both_ways(name):
    config = CONFIGS[name]
    table = tconv.key_table(config)
    with torch.device("meta"):
        tm = tunet.UNetModel(config)
    sd = tm.state_dict()
    assert list(sd) == [km.torch_key for km in table]  # official order, nothing left out or added
    assert all(tuple(sd[km.torch_key].shape) == km.shape for km in table)
    assert [km.torch_key for km in table] == [n for n, _ in tm.named_parameters()]
    flat = tconv.flatten_paths(jreg.variable_shapes(config))
    assert sorted(flat) == sorted(km.flax_path for km in table)
    assert all(tuple(flat[km.flax_path].shape) == km.flax_shape for km in table)
    # the flax path is the torch key with every ".<index>" joined by "_"
    for km in table:
        module = km.torch_key.rsplit(".", 1)[0]
        parts = module.split(".")
        joined = [parts[0]]
        for p in parts[1:]:
            joined[-1:] = [f"{joined[-1]}_{p}"] if p.isdigit() else [joined[-1], p]
        assert km.flax_path[1:-1] == tuple(joined), km.torch_key


#: The official parameter counts (measured with openai/improved-diffusion's create_model).
OFFICIAL_COUNTS = {
    "improved/cifar10_uncond": 52_546_438,
    "improved/imagenet64_uncond": 121_063_942,
    "improved/imagenet64_cond": 121_575_942,
    "improved/lsun256": 124_056_710,
}


def test_official_parameter_counts_without_allocating():
    """All four from the torch module on the meta device and from the key table; the flax
    count (``jax.eval_shape`` of init, ~3 s each) for the 4-level CIFAR-10 and the 6-level
    LSUN layouts (the flax tree equals the key table: ``test_unet_key_table_is_exact_both_ways``)."""
    for name, n in OFFICIAL_COUNTS.items():
        config = IMPROVED_DIFFUSION_PRESETS[name]
        assert treg.count_parameters(config) == {"total": n, "trainable": n}, name  # torch meta device
        assert tconv.num_parameters(tconv.key_table(config)) == n, name
        with torch.device("meta"):
            sd = tunet.UNetModel(config).state_dict()
        assert list(sd) == [km.torch_key for km in tconv.key_table(config)], name
    for name in ("improved/cifar10_uncond", "improved/lsun256"):
        n = OFFICIAL_COUNTS[name]
        assert jreg.count_parameters(IMPROVED_DIFFUSION_PRESETS[name]) == {"total": n, "trainable": n}, name


def test_presets_are_the_readme_flags():
    cifar = IMPROVED_DIFFUSION_PRESETS["improved/cifar10_uncond"]
    assert (cifar.channel_mult, cifar.attention_resolutions, cifar.out_channels, cifar.dropout) == (
        (1, 2, 2, 2), (2, 4), 6, 0.3)
    lsun = IMPROVED_DIFFUSION_PRESETS["improved/lsun256"]
    assert (lsun.channel_mult, lsun.attention_resolutions, lsun.num_heads) == ((1, 1, 2, 2, 4, 4), (16, 32), 4)
    cond = IMPROVED_DIFFUSION_PRESETS["improved/imagenet64_cond"]
    assert cond.num_classes == 1000 and cond.learn_sigma and cond.num_channels == 3
    flags = parse_improved_diffusion_flags(
        "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True --class_cond True")
    assert UNetModelConfig.from_improved_diffusion_args(flags) == cond
    for reg in (jreg, treg):
        assert reg.config_from_name("improved/imagenet64_cond") == cond
        assert reg.config_from_name("improved_unet") == UNetModelConfig()
        assert reg.get_config_class("improved_unet") is UNetModelConfig
    assert type(jreg.create_model(BASE)) is junet.UNetModel


def test_flags_map_onto_the_configs_as_the_official_code():
    assert UNetModelConfig.from_improved_diffusion_args({}) == UNetModelConfig()
    d = UNetModelConfig()
    assert (d.image_size, d.model_channels, d.num_res_blocks, d.num_heads, d.heads_upsample, d.attention_resolutions,
            d.channel_mult, d.use_scale_shift_norm, d.out_channels, d.num_classes) == (
        64, 128, 2, 4, 4, (4, 8), (1, 2, 3, 4), True, 3, 0)
    # create_gaussian_diffusion: defaults rescale_timesteps=True, rescale_learned_sigmas=True
    dc = DiffusionConfig.from_improved_diffusion_args({})
    assert dc == DiffusionConfig(steps=1000, noise_schedule="linear", timestep_respacing="",
                                 model_mean_type=ModelMeanType.EPSILON, model_var_type=ModelVarType.FIXED_LARGE,
                                 loss_type=LossType.RESCALED_MSE, rescale_timesteps=True)
    cases = [
        ({"use_kl": True, "rescale_learned_sigmas": True}, "loss_type", LossType.RESCALED_KL),
        ({"rescale_learned_sigmas": False}, "loss_type", LossType.MSE),
        ({"predict_xstart": "True"}, "model_mean_type", ModelMeanType.START_X),
        ({"sigma_small": True}, "model_var_type", ModelVarType.FIXED_SMALL),
        ({"sigma_small": True, "learn_sigma": True}, "model_var_type", ModelVarType.LEARNED_RANGE),
        ({"rescale_timesteps": "False"}, "rescale_timesteps", False),
        ({"diffusion_steps": "4000"}, "steps", 4000),
        ({"noise_schedule": "cosine"}, "noise_schedule", "cosine"),
        ({"timestep_respacing": "ddim50"}, "timestep_respacing", "ddim50"),
        ({"timestep_respacing": [10, 15]}, "timestep_respacing", "10,15"),
    ]
    for flags, field, want in cases:
        assert getattr(DiffusionConfig.from_improved_diffusion_args(flags), field) == want, flags
    assert DiffusionConfig.from_improved_diffusion_args({"timestep_respacing": "ddim50"}).use_timesteps[-1] == 980
    assert set(IMPROVED_DIFFUSION_DEFAULTS) >= {"diffusion_steps", "image_size", "class_cond"}
    with pytest.raises(ValueError, match=r"unknown improved-diffusion flag\(s\) \['foo', 'lr'\]"):
        DiffusionConfig.from_improved_diffusion_args({"foo": 1, "lr": 1e-4})
    with pytest.raises(ValueError, match=r"unknown improved-diffusion flag\(s\) \['num_classes'\]"):
        UNetModelConfig.from_improved_diffusion_args({"num_classes": 10})
    with pytest.raises(ValueError, match="flag learn_sigma must be a boolean"):
        UNetModelConfig.from_improved_diffusion_args({"learn_sigma": "maybe"})
    with pytest.raises(ValueError, match="flag image_size must be one of"):
        UNetModelConfig.from_improved_diffusion_args({"image_size": 128})
    with pytest.raises(ValueError, match="unknown improved-diffusion flag --lr"):
        parse_improved_diffusion_flags("--lr 1e-4")


def test_config_validation_names_the_field():
    bad = [
        ({"model_channels": 48}, ValueError, "multiples of 32"),
        ({"image_size": 10, "channel_mult": (1, 2, 2)}, ValueError,
         "image_size 10 must be divisible by the down-sampling factor"),
        ({"image_size": 16}, ValueError, "channel_mult must be given for image_size 16"),
        ({"dims": 3}, ValueError, "dims must be 2"),
        ({"num_heads": 3}, ValueError, "num_heads=3 must divide the attention width"),
        ({"num_heads_upsample": 0}, ValueError, "num_heads_upsample must be >= 1 or -1"),
        ({"num_classes": -1}, ValueError, "num_classes must be >= 0"),
        ({"dropout": 1.0}, ValueError, "dropout must be in"),
        ({"attention_resolutions": "16,8"}, TypeError, "attention_resolutions must be a tuple"),
        ({"use_checkpoint": "yes"}, TypeError, "use_checkpoint"),
        ({"name": "unet"}, ValueError, "name must be 'improved_unet'"),
    ]
    for kwargs, exc, match in bad:
        with pytest.raises(exc, match=match):
            UNetModelConfig(**kwargs)
    assert UNetModelConfig(attention_resolutions=[8, 4, 4]).attention_resolutions == (4, 8)
    assert hash(BASE) == hash(dataclasses.replace(BASE))  # a jit static argument
    plan = unet_model_plan(CONFIGS["three_levels_no_attn_add_norm_pool_resample"])
    assert len(plan.input_blocks) == 1 + 3 * 1 + 2 and len(plan.output_blocks) == 3 * 2
    assert [layer.kind for layer in plan.middle_block] == ["res", "attn", "res"]  # always attention


def test_unet_bad_inputs_raise_before_compute():
    cond = CONFIGS["attn_heads_scaleshift_classcond_learnsigma_dropout_checkpoint"]
    fm = junet.UNetModel(cond)
    shapes = jreg.variable_shapes(cond)
    S = jax.ShapeDtypeStruct
    x, t, y = S((2, 8, 8, 3), jnp.float32), S((2,), jnp.float32), S((2,), jnp.int32)
    cases = [
        ((x, t), {}, ValueError, "y \\(the class labels, int \\[B\\]\\) is required"),
        ((x, t), {"y": S((2,), jnp.float32)}, TypeError, "y must hold integer class labels"),
        ((x, t), {"y": S((3,), jnp.int32)}, ValueError, "y must have shape"),
        ((S((2, 8, 8, 1), jnp.float32), t), {"y": y}, ValueError, "x has 1 channels"),
        ((S((2, 7, 8, 3), jnp.float32), t), {"y": y}, ValueError, "not divisible by the down-sampling factor 2"),
        ((x, S((3,), jnp.float32)), {"y": y}, ValueError, "t \\(the timesteps\\) must have shape"),
    ]
    for args, kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            jax.eval_shape(lambda v, *a, **k: fm.apply(v, *a, **k), shapes, *args, **kwargs)
    with pytest.raises(ValueError, match="y was given but the model is unconditional"):
        jax.eval_shape(lambda v, *a: junet.UNetModel(BASE).apply(v, *a, y=jnp.zeros((2,), jnp.int32)),
                       jreg.variable_shapes(BASE), x, t)
    with torch.device("meta"):
        tm = tunet.UNetModel(cond)
    xt, tt = torch.zeros(2, 3, 8, 8, device="meta"), torch.ones(2, device="meta")
    with pytest.raises(ValueError, match="y \\(the class labels, int \\[B\\]\\) is required"):
        tm(xt, tt)
    with pytest.raises(TypeError, match="y must hold integer class labels"):
        tm(xt, tt, y=torch.zeros(2, device="meta"))
    with pytest.raises(ValueError, match="x has 8 channels"):
        tm(torch.zeros(2, 8, 8, 3, device="meta"), tt, y=torch.zeros(2, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="y was given but the model is unconditional"):
        tunet.UNetModel(BASE)(torch.zeros(2, 3, 8, 8), torch.ones(2), y=torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="config must be a UNetModelConfig"):
        tunet.UNetModel(BASE.__dict__)
