"""diffusers' DDPM models: ``UNet2DModel`` directories and scheduler configs, against diffusers itself.

Twins: ``jax_impl/diffusers_format.py`` <-> ``torch_ref/diffusers_format.py`` (data and
checks in ``spec/diffusers_format.py``); the TF/diffusers layout of
``jax_impl/models/ddpm.py`` <-> ``torch_ref/models/ddpm.py`` (``DDPMConfig.up_attention``,
``flip_sin_to_cos``, ``freq_shift``).

diffusers (a test dependency only) builds small random ``UNet2DModel``s in the DDPM
layout, saved with ``save_pretrained`` (``.safetensors`` and ``.bin``); ours must give
its outputs, and our samplers its schedulers' trajectories for the same x_T and noise.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel  # noqa: E402

from jax_impl import diffusers_format as jdf  # noqa: E402
from jax_impl import samplers_discrete as jsd  # noqa: E402
from jax_impl.models import registry as jreg  # noqa: E402
from parity_tests import netutils  # noqa: E402
from spec import diffusers_format as sdf  # noqa: E402
from spec.configs import ModelMeanType, ModelVarType  # noqa: E402
from spec.convert import flatten_paths, torch_to_flax  # noqa: E402
from spec.keytables import derived_buffers, num_parameters  # noqa: E402
from spec.model_configs import PRESETS, DDPMConfig  # noqa: E402
from torch_ref import diffusers_format as tdf  # noqa: E402
from torch_ref import samplers_discrete as tsd  # noqa: E402
from torch_ref.models import ddpm as tddpm  # noqa: E402

#: the DDPM layout of diffusers' google/ddpm-* checkpoints, at a small size
DDPM_LAYOUT = dict(
    sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
)
#: every other option this U-Net maps: diffusers' default embedding (cos first, shift 0),
#: centred input, a learned variance (2C outputs), attention at every level
#: (``test_cifar10_layout_parameter_count`` checks the names of a 2-block layout)
OPTIONS = dict(
    DDPM_LAYOUT, out_channels=6, flip_sin_to_cos=True, freq_shift=0, center_input_sample=True,
    down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
)
#: google/ddpm-cifar10-32's config.json (the fields that shape the network)
CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
    norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, dropout=0.1,
    center_input_sample=False, act_fn="silu", time_embedding_type="positional", norm_num_groups=32,
)

#: The README snippet: sampling a diffusers DDPM directory with our jit-compiled DDIM.
#: ``test_readme_snippet_ddim_equals_diffusers`` runs it on the tiny model (directory,
#: steps and shape substituted) and checks it against diffusers' DDIMScheduler.
README_SNIPPET = '''
import jax
import jax.numpy as jnp
from jax_impl.diffusers_format import diffusion_from_diffusers, from_diffusers
from jax_impl.samplers_discrete import ddim_sample

model, variables = from_diffusers("ddpm-cifar10-32")   # a UNet2DModel.save_pretrained folder
diffusion, kwargs = diffusion_from_diffusers("ddpm-cifar10-32", num_inference_steps=50)

@jax.jit
def sample(variables, x_T):   # the whole 50-step DDIM loop is one XLA program
    eps_fn = lambda x, t: model.apply(variables, x, t)
    return ddim_sample(None, diffusion, eps_fn, x_T.shape, x_T=x_T, **kwargs)[0]

x_T = jax.random.normal(jax.random.key(0), (16, 32, 32, 3), jnp.float32)   # NHWC
images = sample(variables, x_T)   # [16, 32, 32, 3] in [-1, 1]; deterministic (eta = 0)
'''


def _save(kwargs, directory, *, safe: bool, scheduler: DDPMScheduler, seed: int):
    """A random ``UNet2DModel(**kwargs)`` (parameters perturbed, so no zero layer hides a
    mismatch) saved with ``save_pretrained``, its scheduler config beside it."""
    torch.manual_seed(seed)
    unet = UNet2DModel(**kwargs)
    netutils.perturb_(unet, np.random.default_rng(seed), 0.05).eval()
    unet.save_pretrained(directory, safe_serialization=safe)
    scheduler.save_config(directory)
    return unet


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``{name: (diffusers unet, directory)}``: the DDPM layout as ``.safetensors``
    (fixed_small scheduler), the options as ``.bin`` (learned_range scheduler)."""
    root = tmp_path_factory.mktemp("diffusers")
    return {
        "ddpm": (_save(DDPM_LAYOUT, root / "ddpm", safe=True, scheduler=DDPMScheduler(), seed=1), root / "ddpm"),
        "options": (_save(OPTIONS, root / "options", safe=False, seed=2,
                          scheduler=DDPMScheduler(variance_type="learned_range")), root / "options"),
    }


@pytest.fixture(scope="module")
def loaded(saved):
    """``{name: (torch module, flax model, flax variables)}`` loaded by ``from_diffusers``."""
    out = {}
    for name, (_, d) in saved.items():
        fm, variables = jdf.from_diffusers(d)
        out[name] = (tdf.from_diffusers(d), fm, variables)
    return out


def _inputs(rng, config, B=2):
    x = rng.normal(size=(B, config.num_channels, config.image_size, config.image_size)).astype(np.float32)
    return x, np.array([3.0, 999.0][:B], np.float32)  # timesteps as a VP score function feeds them


def _check_parity(tm, fm, variables, x_nhwc, labels, rng, *, gradients: bool, rtol=1e-5):
    """flax == torch outputs (returned, NCHW), and with ``gradients`` the input gradients
    of ``sum(out * w)`` (``w`` of the output's shape: ``2C`` channels with a learned
    variance); the flax side is one jit-compiled program."""
    out_shape = x_nhwc.shape[:-1] + (tm.config.out_channels,)
    w = rng.normal(size=out_shape).astype(np.float32)

    def out_and_grad(v, x, w):
        out, vjp = jax.vjp(lambda x: fm.apply(v, x, jnp.asarray(labels)), x)
        return out, vjp(w)[0]

    def out_only(v, x, w):
        return fm.apply(v, x, jnp.asarray(labels)), None

    fn = out_and_grad if gradients else out_only
    args = (variables, jnp.asarray(x_nhwc), jnp.asarray(w))
    out_j, grad_j = netutils.compile_fast(fn, *args)(*args)
    xt = torch.from_numpy(netutils.nchw(x_nhwc)).requires_grad_(gradients)
    out_t = tm(xt, torch.from_numpy(labels))
    assert np.abs(out_j).max() > 1e-3
    if gradients:
        (out_t * torch.from_numpy(netutils.nchw(w))).sum().backward()
        netutils.assert_rel_close(np.asarray(grad_j), netutils.nhwc(xt.grad.numpy()), rtol, "input gradient")
    out_t = netutils.nhwc(out_t.detach().numpy())
    netutils.assert_rel_close(np.asarray(out_j), out_t, rtol, "output")
    return netutils.nchw(out_t), netutils.nchw(np.asarray(out_j))


# ------------------------------------------------------------------- the network


def test_configs_map_to_the_tf_layout(saved):
    config = sdf.ddpm_config_from_diffusers(saved["ddpm"][1])
    assert config == DDPMConfig(image_size=8, num_channels=3, centered=True, nf=32, ch_mult=(1, 2), num_res_blocks=1,
                                attn_resolutions=(4,), dropout=0.0, up_attention="per_block")
    options = sdf.ddpm_config_from_diffusers(saved["options"][1] / "config.json")
    assert (options.learn_sigma, options.centered, options.flip_sin_to_cos, options.freq_shift,
            options.attn_resolutions, options.num_res_blocks) == (True, False, True, 0, (8, 4), 1)
    assert options.out_channels == 6
    # default DDPMConfig: today's layout, unchanged
    assert (DDPMConfig().up_attention, DDPMConfig().flip_sin_to_cos, DDPMConfig().freq_shift) == ("per_level", False, 1)


@pytest.mark.parametrize("name", ["ddpm", "options"])
def test_from_diffusers_gives_the_diffusers_outputs(name, saved, loaded, np_rng):
    """torch and flax outputs == diffusers' ``unet(x, t).sample``; flax == torch input
    gradients too for the model with every option (per-block layout, embedding options,
    centred input, learned variance)."""
    unet, _ = saved[name]
    tm, fm, variables = loaded[name]
    x, t = _inputs(np_rng, tm.config)
    with torch.no_grad():
        ref = unet(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()
    assert ref.shape == (2, tm.config.out_channels, 8, 8) and np.abs(ref).max() > 0.1
    out_t, out_j = _check_parity(tm, fm, variables, netutils.nhwc(x), t, np_rng, gradients=name == "options")
    netutils.assert_rel_close(out_t, ref, 1e-5, "torch vs diffusers")
    netutils.assert_rel_close(out_j, ref, 1e-5, "flax vs diffusers")


def test_per_level_layout_with_diffusers_embedding_flax_torch(np_rng):
    """The embedding options combine with score_sde's per-level layout too (flax == torch)."""
    config = DDPMConfig(image_size=4, nf=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(4,),
                        flip_sin_to_cos=True, freq_shift=0, dropout=0.0)
    torch.manual_seed(0)
    tm = netutils.perturb_(tddpm.DDPM(config), np_rng).eval()
    fm = jreg.create_model(config)
    variables = jax.tree_util.tree_map(jnp.asarray, torch_to_flax(
        tm.state_dict(), sdf.ddpm_layout_key_table(config), flax_shapes=jreg.variable_shapes(config),
        derived=derived_buffers(config)))
    x = np_rng.uniform(size=(2, 4, 4, 3)).astype(np.float32)
    _check_parity(tm, fm, variables, x, np.array([1.0, 500.0], np.float32), np_rng, gradients=False)


def test_timestep_embedding_variants():
    from jax_impl.models import ddpm as jddpm
    from jax_impl.models.layers import get_timestep_embedding

    from diffusers.models.embeddings import get_timestep_embedding as hf_embedding

    t = np.array([0.0, 1.0, 17.5, 999.0], np.float32)
    # the default is score_sde's, bit for bit, on both sides
    assert np.array_equal(np.asarray(jddpm.timestep_embedding(jnp.asarray(t), 32)),
                          np.asarray(get_timestep_embedding(jnp.asarray(t), 32)))
    for flip, shift, dim in ((False, 1, 32), (True, 0, 32), (True, 1, 33), (False, 3, 16)):
        ref = hf_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift).numpy()
        got_t = tddpm.timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=flip, freq_shift=shift).numpy()
        got_j = np.asarray(jddpm.timestep_embedding(jnp.asarray(t), dim, flip_sin_to_cos=flip, freq_shift=shift))
        assert got_t.dtype == got_j.dtype == np.float32 and got_t.shape == (4, dim)
        np.testing.assert_allclose(got_t, ref, rtol=0, atol=2e-4)  # float32 args t * w up to 999
        np.testing.assert_allclose(got_j, got_t, rtol=0, atol=1e-4)  # XLA's and torch's sin(999 w)


def test_key_table_exact_both_ways(saved, loaded):
    unet, d = saved["options"]
    config = sdf.ddpm_config_from_diffusers(d)
    table = sdf.diffusers_key_table(config)
    hf = {k: v.numpy() for k, v in unet.state_dict().items()}
    assert sorted(e.diffusers_key for e in table) == sorted(hf)
    assert all(tuple(hf[e.diffusers_key].shape) == e.shape for e in table)
    ours = sdf.ddpm_state_dict_from_diffusers(hf, config)
    tm, fm, variables = loaded["options"]
    sd = tm.state_dict()
    assert list(ours) == list(sd)  # sigmas, then all_modules.* in the module's order
    assert all(np.array_equal(ours[k], sd[k].numpy()) for k in ours)
    back = sdf.diffusers_state_dict_from_ddpm(ours, config)
    assert sorted(back) == sorted(hf) and all(np.array_equal(back[k], hf[k]) for k in hf)
    # our table: every torch key in order, every flax leaf with its shape
    ltable = sdf.ddpm_layout_key_table(config)
    assert [km.torch_key for km in ltable] == [n for n, _ in tm.named_parameters()]
    leaves = flatten_paths(variables)
    assert sorted(leaves) == sorted(km.flax_path for km in ltable)
    assert all(tuple(leaves[km.flax_path].shape) == km.flax_shape for km in ltable)


def test_pipeline_folder_loads(saved, loaded, tmp_path):
    """A ``DDPMPipeline.save_pretrained`` folder (``unet/``, ``scheduler/``) loads too."""
    from diffusers import DDPMPipeline

    unet, d = saved["ddpm"]
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_pretrained(d)).save_pretrained(tmp_path)
    assert sdf.find_unet_directory(tmp_path) == tmp_path / "unet"
    sd, want = tdf.from_diffusers(tmp_path).state_dict(), loaded["ddpm"][0].state_dict()
    assert list(sd) == list(want) and all(torch.equal(sd[k], want[k]) for k in sd)
    for where in (tmp_path, tmp_path / "unet", tmp_path / "scheduler" / "scheduler_config.json"):
        diffusion, kw = jdf.diffusion_from_diffusers(where, num_inference_steps=10)
        assert diffusion.config.timestep_respacing == "ddim10" and kw == {"clip_denoised": True}


def test_deprecated_attention_names_load(saved):
    unet, d = saved["ddpm"]
    config = sdf.ddpm_config_from_diffusers(d)
    hf = {k: v.numpy() for k, v in unet.state_dict().items()}
    old = {}
    for k, v in hf.items():
        for new, dep in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f".{new}.", f".{dep}.")
        old[k] = v
    assert any(".proj_attn." in k for k in old)
    a, b = sdf.ddpm_state_dict_from_diffusers(old, config), sdf.ddpm_state_dict_from_diffusers(hf, config)
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    both = dict(hf, **{"mid_block.attentions.0.query.weight": hf["mid_block.attentions.0.to_q.weight"]})
    with pytest.raises(KeyError, match="to_q.weight"):
        sdf.ddpm_state_dict_from_diffusers(both, config)


def test_bad_weights_raise_naming_the_key(saved, tmp_path):
    unet, d = saved["ddpm"]
    config = sdf.ddpm_config_from_diffusers(d)
    hf = {k: v.numpy() for k, v in unet.state_dict().items()}
    missing = {k: v for k, v in hf.items() if k != "conv_out.bias"}
    with pytest.raises(KeyError, match="missing key.*conv_out.bias"):
        sdf.ddpm_state_dict_from_diffusers(missing, config)
    with pytest.raises(KeyError, match="unexpected key.*class_embedding.weight"):
        sdf.ddpm_state_dict_from_diffusers(dict(hf, **{"class_embedding.weight": np.zeros((10, 128))}), config)
    with pytest.raises(ValueError, match="conv_in.weight: shape \\(32, 3, 3, 1\\)"):
        sdf.ddpm_state_dict_from_diffusers(dict(hf, **{"conv_in.weight": np.zeros((32, 3, 3, 1))}), config)
    with pytest.raises(FileNotFoundError, match="neither diffusion_pytorch_model.safetensors nor"):
        sdf.find_diffusers_weights(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json in .* or in its unet/ folder"):
        jdf.from_diffusers(tmp_path)
    with pytest.raises(ValueError, match="no diffusers UNet2DModel layout: up_attention='per_level'"):
        sdf.diffusers_key_table(PRESETS["vp/ddpm/cifar10"])
    # a weights file that does not fit its config.json
    (tmp_path / "config.json").write_text(json.dumps(dict(DDPM_LAYOUT, block_out_channels=[32, 96])))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(
        (d / "diffusion_pytorch_model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="down_blocks.1.resnets.0.conv1.weight: shape \\(64, 32, 3, 3\\) does not "
                                         "match the expected \\(96, 32, 3, 3\\).*safetensors"):
        tdf.from_diffusers(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(DDPM_LAYOUT, layers_per_block=2)))
    with pytest.raises(KeyError, match="missing key.*resnets.1"):
        jdf.from_diffusers(tmp_path)


UNSUPPORTED = {
    "down_block_types": ("CrossAttnDownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "AttnSkipUpBlock2D"),
    "attention_head_dim": 8,
    "norm_eps": 1e-5,
    "norm_num_groups": 16,
    "act_fn": "gelu",
    "class_embed_type": "timestep",
    "num_class_embeds": 10,
    "downsample_padding": 1,
    "resnet_time_scale_shift": "scale_shift",
    "time_embedding_type": "fourier",
    "mid_block_type": None,
    "add_attention": False,
    "mid_block_scale_factor": 2.0,
    "downsample_type": "resnet",
    "time_embedding_dim": 64,
    "out_channels": 4,
    "sample_size": None,
}


@pytest.mark.parametrize("field", sorted(UNSUPPORTED))
def test_unsupported_unet_configs_raise_naming_the_field(field):
    bad = dict(DDPM_LAYOUT, **{field: UNSUPPORTED[field]})
    with pytest.raises(ValueError, match=f"not a DDPM U-Net.*\\n  - {field}="):
        sdf.ddpm_config_from_diffusers(bad)


def test_unet_config_errors_list_every_field_and_defaults_count():
    with pytest.raises(ValueError) as info:
        sdf.ddpm_config_from_diffusers(dict(DDPM_LAYOUT, attention_head_dim=8, act_fn="mish", norm_num_groups=16))
    assert all(f"  - {f}=" in str(info.value) for f in ("attention_head_dim", "act_fn", "norm_num_groups"))
    # a field left out means diffusers' default: UNet2DModel's norm_eps 1e-5 and downsample_padding 1
    omitted = {k: v for k, v in DDPM_LAYOUT.items() if k not in ("norm_eps", "downsample_padding")}
    with pytest.raises(ValueError) as info:
        sdf.ddpm_config_from_diffusers(omitted)
    assert "  - norm_eps=1e-05" in str(info.value) and "  - downsample_padding=1" in str(info.value)
    with pytest.warns(UserWarning, match="ignoring field\\(s\\) attn_bias, tensor_format"):  # as diffusers does
        assert sdf.ddpm_config_from_diffusers(dict(DDPM_LAYOUT, attn_bias=True, tensor_format="pt")) == \
            sdf.ddpm_config_from_diffusers(DDPM_LAYOUT)
    with pytest.raises(ValueError, match="_class_name 'UNet2DConditionModel'"):
        sdf.ddpm_config_from_diffusers(dict(DDPM_LAYOUT, _class_name="UNet2DConditionModel"))
    with pytest.raises(ValueError, match="up_block_types=.*attention at levels \\[0\\] of the up path"):
        sdf.ddpm_config_from_diffusers(dict(DDPM_LAYOUT, up_block_types=("UpBlock2D", "AttnUpBlock2D")))
    with pytest.raises(ValueError, match="freq_shift must be < nf // 2"):
        DDPMConfig(nf=32, freq_shift=16)
    with pytest.raises(ValueError, match="unknown up_attention 'every'"):
        DDPMConfig(up_attention="every")
    with pytest.raises(TypeError, match="flip_sin_to_cos must be a bool"):
        DDPMConfig(flip_sin_to_cos=1)


def test_cifar10_layout_parameter_count():
    """google/ddpm-cifar10-32's layout: 35,746,307 parameters (measured with diffusers; on
    the meta device here), score_sde's preset with one attention block per up-path res block."""
    config = sdf.ddpm_config_from_diffusers(CIFAR10)
    assert config == dataclasses.replace(PRESETS["vp/ddpm/cifar10"], up_attention="per_block")
    assert num_parameters(sdf.ddpm_layout_key_table(config)) == 35_746_307
    assert num_parameters(sdf.ddpm_layout_key_table(PRESETS["vp/ddpm/cifar10"])) == 35_218_947
    with torch.device("meta"):
        ours = sum(p.numel() for p in tddpm.DDPM(config).parameters())
        hf = UNet2DModel(**CIFAR10)
    assert ours == sum(p.numel() for p in hf.parameters()) == 35_746_307
    assert sorted(e.diffusers_key for e in sdf.diffusers_key_table(config)) == sorted(hf.state_dict())


# ------------------------------------------------------------------- schedulers


@pytest.mark.parametrize("kwargs", [
    {},
    {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample", "variance_type": "fixed_large"},
    {"num_train_timesteps": 200, "beta_start": 5e-4, "beta_end": 0.1, "clip_sample": False,
     "variance_type": "learned_range"},
], ids=["linear", "cosine", "linear200"])
def test_scheduler_config_tables_equal_diffusers(kwargs, tmp_path):
    sched = DDPMScheduler(**kwargs)
    sched.save_config(tmp_path)
    diffusion, kw = jdf.diffusion_from_diffusers(tmp_path)
    tdiffusion, tkw = tdf.diffusion_from_diffusers(tmp_path / "scheduler_config.json")
    assert kw == tkw == {"clip_denoised": sched.config.clip_sample}
    for name in ("betas", "alphas_cumprod"):
        ref = getattr(sched, name).numpy().astype(np.float64)
        np.testing.assert_allclose(diffusion.table(name), ref, rtol=2e-6, atol=1e-12)  # diffusers': float32
        np.testing.assert_array_equal(tdiffusion.table(name), diffusion.table(name))
    settings = sdf.scheduler_settings_from_diffusers(dict(sched.config))
    assert settings.diffusion.model_mean_type == (ModelMeanType.START_X if kwargs.get("prediction_type") == "sample"
                                                  else ModelMeanType.EPSILON)
    assert settings.diffusion.model_var_type == ModelVarType(kwargs.get("variance_type", "fixed_small"))
    # diffusers' inference grid is our respacing
    sched.set_timesteps(10)
    d10, _ = jdf.diffusion_from_diffusers(tmp_path, num_inference_steps=10)
    np.testing.assert_array_equal(d10.table("timestep_map")[::-1], sched.timesteps.numpy())
    np.testing.assert_allclose(d10.table("alphas_cumprod"), sched.alphas_cumprod.numpy()[sched.timesteps.numpy()][::-1],
                               rtol=2e-6)


SCHEDULER_UNSUPPORTED = [
    ({"beta_schedule": "scaled_linear"}, "beta_schedule='scaled_linear'"),
    ({"beta_end": 0.012}, "beta_end=0.012"),
    ({"num_train_timesteps": 500}, "beta_start=0.0001.*\\n.*beta_end=0.02"),
    ({"prediction_type": "v_prediction"}, "prediction_type='v_prediction'"),
    ({"variance_type": "learned"}, "variance_type='learned'"),
    ({"thresholding": True}, "thresholding=True"),
    ({"clip_sample_range": 2.0}, "clip_sample_range=2.0"),
    ({"steps_offset": 1}, "steps_offset=1"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True"),
    ({"trained_betas": [0.1, 0.2]}, "trained_betas="),
]


@pytest.mark.parametrize("override,match", SCHEDULER_UNSUPPORTED, ids=[m[:24] for _, m in SCHEDULER_UNSUPPORTED])
def test_unsupported_scheduler_configs_raise_naming_the_field(override, match):
    config = dict(DDPMScheduler().config, _class_name="DDPMScheduler", **override)
    with pytest.raises(ValueError, match=f"no counterpart here:\\n  - {match}"):
        sdf.scheduler_settings_from_diffusers(config)


def test_scheduler_grid_and_class_errors():
    ddim = dict(DDIMScheduler().config, _class_name="DDIMScheduler")
    assert sdf.scheduler_settings_from_diffusers(ddim, num_inference_steps=50).diffusion.timestep_respacing == "ddim50"
    with pytest.raises(ValueError, match="set_alpha_to_one=False"):
        sdf.scheduler_settings_from_diffusers(dict(ddim, set_alpha_to_one=False))
    with pytest.raises(ValueError, match="num_inference_steps=30 must divide num_train_timesteps=1000"):
        sdf.scheduler_settings_from_diffusers(ddim, num_inference_steps=30)
    with pytest.raises(ValueError, match="timestep_spacing='trailing'"):
        sdf.scheduler_settings_from_diffusers(dict(ddim, timestep_spacing="trailing"), num_inference_steps=50)
    full = sdf.scheduler_settings_from_diffusers(dict(ddim, timestep_spacing="trailing"), num_inference_steps=1000)
    assert full.diffusion.timestep_respacing == ""
    with pytest.raises(ValueError, match="_class_name 'PNDMScheduler'"):
        sdf.scheduler_settings_from_diffusers(dict(ddim, _class_name="PNDMScheduler"))
    with pytest.warns(UserWarning, match="ignoring field\\(s\\) variance_type"):  # DDIM has none
        sdf.scheduler_settings_from_diffusers(dict(ddim, variance_type="learned"))
    with pytest.raises(FileNotFoundError, match="no scheduler_config.json"):
        sdf.find_scheduler_config("/nonexistent-dir")


# ------------------------------------------------------------------- samplers

#: 10-step trajectories: diffusers keeps its tables in float32 (alpha_bar's rounding is
#: amplified by 1 / sqrt(alpha_bar) ~ 100 in x_0 at t = 900), ours in float64
SAMPLER_RTOL = 2e-4


def _hf_loop(unet, sched, x, step_kwargs):
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, **step_kwargs).prev_sample
    return x.numpy()


@pytest.mark.parametrize("name", ["ddpm", "options"])
def test_ancestral_ddpm_equals_diffusers_ddpm_scheduler(name, saved, loaded, np_rng):
    """Our DDPM sampler == diffusers' DDPMScheduler.step loop with the same x_T and the
    same step noise, 10 steps: fixed_small on the DDPM model (JAX jit and torch),
    learned_range on the 6-channel model (torch; flax == torch for learned variances is
    test_learn_sigma's)."""
    unet, d = saved[name]
    tm, fm, variables = loaded[name]
    sched = DDPMScheduler.from_pretrained(d)
    sched.set_timesteps(10)
    shape = (2, 3, 8, 8)
    x_T = np_rng.normal(size=shape).astype(np.float32)
    ref = _hf_loop(unet, sched, torch.from_numpy(x_T), {"generator": torch.Generator().manual_seed(5)})
    g = torch.Generator().manual_seed(5)  # the draws diffusers made, in order (none at t = 0)
    noise = np.stack([torch.randn(shape, generator=g).numpy() for _ in range(9)] + [np.zeros(shape, np.float32)])
    tdiffusion, kw = tdf.diffusion_from_diffusers(d, num_inference_steps=10)
    assert tdiffusion.model_var_type == (ModelVarType.LEARNED_RANGE if name == "options" else ModelVarType.FIXED_SMALL)
    with torch.no_grad():
        out_t = tsd.ddpm_sample(tdiffusion, tm, shape, x_T=torch.from_numpy(x_T), noise=torch.from_numpy(noise),
                                **kw)[0].numpy()
    netutils.assert_rel_close(out_t, ref, SAMPLER_RTOL, "torch DDPM vs diffusers")
    if name == "options":
        return
    diffusion, kw = jdf.diffusion_from_diffusers(d, num_inference_steps=10)

    def run(v, x, z):
        return jsd.ddpm_sample(None, diffusion, lambda x, t: fm.apply(v, x, t), x.shape, x_T=x, noise=z, **kw)[0]

    args = (variables, jnp.asarray(netutils.nhwc(x_T)), jnp.asarray(noise.transpose(0, 1, 3, 4, 2)))
    out_j = netutils.nchw(np.asarray(netutils.compile_fast(run, *args)(*args)))
    netutils.assert_rel_close(out_j, ref, SAMPLER_RTOL, "jax DDPM vs diffusers")


def test_readme_snippet_ddim_equals_diffusers(saved, loaded):
    """The README snippet (our jit DDIM, eta 0) == diffusers' DDIMScheduler loop from its
    x_T (``use_clipped_model_output=True``: eps re-derived from the clipped x_0, as ours
    and improved-diffusion's), and == our torch DDIM."""
    unet, d = saved["ddpm"]
    code = (README_SNIPPET.replace('"ddpm-cifar10-32"', repr(str(d)))
            .replace("num_inference_steps=50", "num_inference_steps=10").replace("(16, 32, 32, 3)", "(2, 8, 8, 3)"))
    assert code.count(repr(str(d))) == 2
    scope: dict = {}
    exec(compile(code, "README-diffusers", "exec"), scope)
    images, x_T = netutils.nchw(np.asarray(scope["images"])), netutils.nchw(np.asarray(scope["x_T"]))
    assert images.shape == (2, 3, 8, 8) and images.dtype == np.float32 and np.abs(images).max() <= 1.0 + 1e-5

    sched = DDIMScheduler.from_config(DDPMScheduler.load_config(d))
    sched.set_timesteps(10)
    ref = _hf_loop(unet, sched, torch.from_numpy(x_T), {"eta": 0.0, "use_clipped_model_output": True})
    assert np.abs(ref).max() > 0.5
    netutils.assert_rel_close(images, ref, SAMPLER_RTOL, "jax DDIM vs diffusers")
    tm = loaded["ddpm"][0]
    tdiffusion, kw = tdf.diffusion_from_diffusers(d, num_inference_steps=10)
    assert kw == {"clip_denoised": True}
    with torch.no_grad():
        out_t = tsd.ddim_sample(tdiffusion, tm, x_T.shape, x_T=torch.from_numpy(x_T), **kw)[0].numpy()
    netutils.assert_rel_close(out_t, ref, SAMPLER_RTOL, "torch DDIM vs diffusers")
    # without clipping the float32 tables' rounding cancels, and diffusers' default step
    # (eps as predicted) is the same map
    unclipped = dict(DDPMScheduler.load_config(d), clip_sample=False)
    sched = DDIMScheduler.from_config(unclipped)
    sched.set_timesteps(10)
    ref = _hf_loop(unet, sched, torch.from_numpy(x_T), {"eta": 0.0})
    tdiffusion, kw = tdf.diffusion_from_diffusers(unclipped, num_inference_steps=10)
    assert kw == {"clip_denoised": False}
    with torch.no_grad():
        out_t = tsd.ddim_sample(tdiffusion, tm, x_T.shape, x_T=torch.from_numpy(x_T), **kw)[0].numpy()
    netutils.assert_rel_close(out_t, ref, 1e-5, "torch DDIM vs diffusers, no clipping")
