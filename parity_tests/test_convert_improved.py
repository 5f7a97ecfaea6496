"""improved-diffusion checkpoints and the UNetModel in use: conversion both ways, loading
``.pt`` / ``.npz`` / ``.safetensors``, sampling through the DDPM and DDIM samplers (learned-range
variances, rescaled timesteps, respacing; JAX == torch) and training with the trainer (hybrid
loss, importance-sampled t, class-conditional batches).

Twins: ``jax_impl/convert.py`` <-> ``torch_ref/convert.py`` (``from_improved_diffusion``),
``jax_impl/models/unet.py`` <-> ``torch_ref/models/unet.py``.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_impl import convert as jconv
from jax_impl import diffusion as jdiff
from jax_impl import resample as jresample
from jax_impl import samplers_discrete as jsd
from jax_impl import train as jt
from jax_impl.models import registry as jreg
from jax_impl.models import unet as junet
from parity_tests import netutils
from spec import DiffusionConfig, LossType, ModelVarType, RunConfig, TrainConfig, UNetModelConfig
from spec.checkpoints import save_checkpoint
from torch_ref import convert as tconv
from torch_ref import diffusion as tdiff
from torch_ref import samplers_discrete as tsd
from torch_ref import train as tt
from torch_ref.models import unet as tunet

#: Two levels (Downsample ``op`` / Upsample ``conv`` keys), attention, class-conditional.
TWO_LEVELS = UNetModelConfig(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                             attention_resolutions=(2,), num_heads=2, out_channels=6, num_classes=4)
#: The network sampled and trained: one level (cheap to compile), attention with 2 heads,
#: scale-shift norm, learned sigma, 3 classes, dropout.
TINY = UNetModelConfig(image_size=8, model_channels=32, channel_mult=(1,), num_res_blocks=1,
                       attention_resolutions=(1,), num_heads=2, out_channels=6, num_classes=3, dropout=0.1)
#: MODEL_FLAGS / DIFFUSION_FLAGS style: learned-range variances, cosine schedule, rescaled timesteps.
DIFFUSION_FLAGS = {"learn_sigma": True, "diffusion_steps": 40, "noise_schedule": "cosine"}


def _official_model(config, seed=0):
    """A torch UNetModel as the official code would save it: every tensor random (so no
    zero-initialised conv hides a mismatch)."""
    torch.manual_seed(seed)
    return netutils.perturb_(tunet.UNetModel(config), np.random.default_rng(seed), 0.05).eval()


def _tree_equal(a, b) -> bool:
    fa, fb = tconv.flatten_paths(a), tconv.flatten_paths(b)
    return fa.keys() == fb.keys() and all(np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa)


def test_round_trips_are_exact_both_ways(np_rng):
    config = TWO_LEVELS
    variables = jax.tree_util.tree_map(lambda s: jnp.asarray(np_rng.normal(0, 0.05, size=s.shape), s.dtype),
                                       jreg.variable_shapes(config))
    sd = jconv.flax_to_torch_state_dict(variables, config)
    assert "input_blocks.2.0.op.weight" in sd and "output_blocks.1.2.conv.weight" in sd
    assert sd["input_blocks.3.1.qkv.weight"].shape == (192, 64, 1)  # a 1-D conv, as the official one
    model = tunet.UNetModel(config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    assert _tree_equal(jconv.torch_to_flax_variables(model.state_dict(), config), variables)
    tm = _official_model(config)
    sd2 = tconv.flax_to_torch_state_dict(jconv.torch_to_flax_variables(tm.state_dict(), config), config)
    assert list(sd2) == list(tm.state_dict()) and all(torch.equal(sd2[k], v) for k, v in tm.state_dict().items())


def test_conversion_errors_name_the_key(tmp_path):
    sd = dict(_official_model(TWO_LEVELS).state_dict())
    missing = {k: v for k, v in sd.items() if k != "middle_block.1.proj_out.bias"}
    with pytest.raises(KeyError, match=r"missing key\(s\).*middle_block\.1\.proj_out\.bias"):
        jconv.from_improved_diffusion(missing, TWO_LEVELS)
    extra = dict(sd, **{"input_blocks.9.0.op.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"unexpected key\(s\).*input_blocks\.9\.0\.op\.weight"):
        tconv.from_improved_diffusion(extra, TWO_LEVELS)
    bad = dict(sd, **{"label_emb.weight": torch.zeros(1000, 128)})  # class_cond=True's 1000 classes
    with pytest.raises(ValueError,
                       match=r"label_emb\.weight: shape \(1000, 128\) does not match the expected \(4, 128\)"):
        jconv.from_improved_diffusion(bad, TWO_LEVELS)
    nan = dict(sd, **{"out.2.bias": torch.full((6,), float("nan"))})
    with pytest.raises(ValueError, match=r"out\.2\.bias"):
        tconv.from_improved_diffusion(nan, TWO_LEVELS)
    # an unconditional checkpoint for a class-conditional config: label_emb is missing
    uncond = {k: v for k, v in sd.items() if not k.startswith("label_emb")}
    with pytest.raises(KeyError, match=r"missing key\(s\).*label_emb\.weight"):
        jconv.from_improved_diffusion(uncond, TWO_LEVELS)
    with pytest.raises(ValueError, match=r"unknown improved-diffusion flag\(s\) \['lr'\]"):
        jconv.from_improved_diffusion(sd, {"lr": 1e-4})
    with pytest.raises(TypeError, match="config must be a UNetModelConfig or a dict"):
        tconv.from_improved_diffusion(sd, "improved/cifar10_uncond")
    with pytest.raises(FileNotFoundError, match="model000.pt"):
        jconv.from_improved_diffusion(tmp_path / "model000.pt", TWO_LEVELS)


def test_flags_dict_config_builds_the_official_network():
    # the flags dict itself is a config: image_size 32 with the official multipliers
    flags = {"image_size": 32, "num_channels": 32, "num_res_blocks": 1, "learn_sigma": True, "class_cond": True,
             "attention_resolutions": "8", "num_heads": 1, "use_scale_shift_norm": False}
    config = UNetModelConfig.from_improved_diffusion_args(flags)
    assert config.channel_mult == (1, 2, 2, 2) and config.attention_resolutions == (4,)
    assert config.num_classes == 1000 and config.out_channels == 6 and not config.use_scale_shift_norm
    with torch.device("meta"):
        sd = tunet.UNetModel(config).state_dict()
    assert list(sd) == [km.torch_key for km in tconv.key_table(config)]
    assert tuple(sd["input_blocks.0.0.weight"].shape) == (32, 3, 3, 3)
    assert tuple(sd["input_blocks.1.0.emb_layers.1.weight"].shape) == (32, 128)  # no scale-shift: width C


def _saved_checkpoints(tmp_path, tm):
    """The official ``torch.save(model.state_dict(), "ema_0.9999_000000.pt")`` and the same
    weights as ``.npz`` / ``.safetensors`` (``spec.checkpoints.save_checkpoint``)."""
    pt = tmp_path / "ema_0.9999_000000.pt"
    torch.save(tm.state_dict(), pt)
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    return pt, save_checkpoint(tmp_path / "ema.npz", sd), save_checkpoint(tmp_path / "ema.safetensors", sd)


def test_loading_pt_npz_safetensors_gives_the_same_weights(tmp_path, monkeypatch):
    tm = _official_model(TINY, seed=1)
    pt, npz, st = _saved_checkpoints(tmp_path, tm)
    model, from_pt = jconv.from_improved_diffusion(pt, TINY)
    assert isinstance(model, junet.UNetModel) and model.config == TINY
    want = jconv.torch_to_flax_variables(tm.state_dict(), TINY)
    assert _tree_equal(from_pt, want)
    loaded = tconv.from_improved_diffusion(str(pt), TINY)
    assert not loaded.training and all(torch.equal(loaded.state_dict()[k], v) for k, v in tm.state_dict().items())
    # .npz / .safetensors load on the JAX side with torch unavailable
    monkeypatch.setitem(sys.modules, "torch", None)
    for path in (npz, st):
        _, variables = jconv.from_improved_diffusion(path, TINY)
        assert _tree_equal(variables, want), path.name
    monkeypatch.undo()
    for path in (npz, st):
        assert all(torch.equal(tconv.from_improved_diffusion(path, TINY).state_dict()[k], v)
                   for k, v in tm.state_dict().items())


def _diffusions(respacing: str):
    cfg = DiffusionConfig.from_improved_diffusion_args({**DIFFUSION_FLAGS, "timestep_respacing": respacing})
    assert cfg.model_var_type is ModelVarType.LEARNED_RANGE and cfg.rescale_timesteps
    return jdiff.GaussianDiffusion(cfg, dtype=jnp.float32), tdiff.GaussianDiffusion(cfg, dtype=torch.float32)


def test_sampling_ddpm_and_ddim_jax_equals_torch(tmp_path, np_rng):
    """The loaded checkpoint sampled with learned-range variances, rescaled timesteps and
    respacing (40 steps respaced to 6 for DDPM, ``ddim5`` for DDIM; eta = 0.5), class labels
    passed as ``y=``; JAX (one jit program for both samplers) == torch on the same noise."""
    tm = _official_model(TINY, seed=2)
    pt, _, _ = _saved_checkpoints(tmp_path, tm)
    model, variables = jconv.from_improved_diffusion(pt, TINY)
    tmod = tconv.from_improved_diffusion(pt, TINY)
    (jd_ddpm, td_ddpm), (jd_ddim, td_ddim) = _diffusions("6"), _diffusions("ddim5")
    assert jd_ddpm.num_timesteps == 6 and jd_ddim.num_timesteps == 5
    B, shape = 2, (2, 8, 8, 3)
    y = np.array([0, 2])
    x_T = np_rng.standard_normal(shape).astype(np.float32)
    z_ddpm = np_rng.standard_normal((6,) + shape).astype(np.float32)
    z_ddim = np_rng.standard_normal((5,) + shape).astype(np.float32)

    def run(v, x_T, z1, z2):
        fn = lambda x, t: model.apply(v, x, t, y=jnp.asarray(y, jnp.int32))  # noqa: E731
        a, _ = jsd.ddpm_sample(None, jd_ddpm, fn, shape, x_T=x_T, noise=z1)
        b, _ = jsd.ddim_sample(None, jd_ddim, fn, shape, eta=0.5, x_T=x_T, noise=z2)
        return a, b

    args = (variables, jnp.asarray(x_T), jnp.asarray(z_ddpm), jnp.asarray(z_ddim))
    a_j, b_j = (np.asarray(o) for o in netutils.compile_fast(run, *args)(*args))
    seen = []

    def tfn(x, t):
        seen.append(t.clone())
        return tmod(x, t, y=torch.as_tensor(y))

    nc = lambda a: torch.as_tensor(netutils.nchw(a))  # noqa: E731
    with torch.no_grad():
        a_t, nfe = tsd.ddpm_sample(td_ddpm, tfn, (B, 3, 8, 8), x_T=nc(x_T),
                                   noise=torch.stack([nc(z) for z in z_ddpm]))
        b_t, _ = tsd.ddim_sample(td_ddim, tfn, (B, 3, 8, 8), eta=0.5, x_T=nc(x_T),
                                 noise=torch.stack([nc(z) for z in z_ddim]))
    assert nfe == 6
    # the model saw the rescaled respaced timesteps: timestep_map[t] * 1000 / 40
    assert np.allclose(seen[0].numpy(), td_ddpm.table("timestep_map")[5] * 1000.0 / 40)
    assert np.abs(a_j).max() > 0.1 and np.isfinite(a_j).all() and np.isfinite(b_j).all()
    err_a = netutils.assert_rel_close(a_j, netutils.nhwc(a_t.numpy()), 1e-4, "DDPM samples")
    err_b = netutils.assert_rel_close(b_j, netutils.nhwc(b_t.numpy()), 1e-4, "DDIM samples")
    print(f"max normalised flax-torch sample difference: DDPM {err_a:.2e}, DDIM {err_b:.2e}")


def _run_config(model):
    process = DiffusionConfig.from_improved_diffusion_args(
        {"learn_sigma": True, "diffusion_steps": 4, "noise_schedule": "cosine", "rescale_learned_sigmas": False})
    assert process.loss_type is LossType.MSE  # with learned sigmas: the hybrid loss L_simple + L_vlb
    train = TrainConfig().with_overrides(["training.batch_size=8", "training.schedule_sampler=loss-second-moment",
                                          "optim.lr=1e-3", "optim.warmup=2", "model.ema_rate=0.99"])
    return RunConfig(model=model, process=process, train=train)


def _jax_state_from_torch(cfg, ts) -> jt.TrainState:
    """The JAX ``TrainState`` ``create_train_state`` builds, holding the torch state's weights
    (converted through the key table; no init program to compile)."""
    variables = jconv.torch_to_flax_variables({k: v.detach() for k, v in ts.model.state_dict().items()}, cfg.model)
    params = variables.pop("params")
    sampler = jresample.create_named_schedule_sampler(cfg.train.training.schedule_sampler, cfg.process.num_timesteps)
    return jt.TrainState(step=jnp.zeros((), jnp.int32), params=params, constants=variables,
                         opt_state=jt.get_optimizer(cfg.train).init(params),
                         ema=tuple(jax.tree_util.tree_map(jnp.copy, params) for _ in cfg.train.model.ema_rate),
                         rng=jax.random.key_data(jax.random.key(3)), sampler_state=sampler.init(jnp.float32),
                         model=jreg.create_model(cfg.model))


def test_training_class_conditional_with_hybrid_loss_and_importance_sampling(np_rng):
    """The trainer on (x, y) batches of a learned-sigma UNetModel, hybrid loss, the
    loss-second-moment sampler over T = 4 steps. Step 1 from the same weights, t and noise:
    JAX == torch (loss, gradient norm, updated parameters). Then JAX steps with t drawn by the
    trainer (``draw_randomness``): finite losses, every parameter moves (the zero-initialised
    convs too) and the sampler's history fills (4 x 10 losses), after which t is
    importance-sampled."""
    cfg = _run_config(dataclasses.replace(TINY, dropout=0.0))  # no dropout: masks differ by framework
    B = 8
    x = np.clip(np_rng.normal(0, 0.5, size=(B, 8, 8, 3)), -1, 1).astype(np.float32)
    y = np_rng.integers(0, 3, size=B)
    t = np_rng.integers(0, 4, size=B).astype(np.int32)  # the dtype draw_randomness gives
    z = np_rng.standard_normal(x.shape).astype(np.float32)
    ts = tt.create_train_state(cfg)
    netutils.perturb_(ts.model, np_rng, 0.02)  # non-zero output convs: every gradient is exercised
    js = _jax_state_from_torch(cfg, ts)
    p0 = jax.tree_util.tree_map(np.asarray, js.params)
    batch = (jnp.asarray(x), jnp.asarray(y, jnp.int32))
    core = netutils.compile_fast(lambda s, b, t, z: jt.train_step_core(cfg, s, b, t, z),
                                 js, batch, jnp.asarray(t), jnp.asarray(z))
    js, mj = core(js, batch, jnp.asarray(t), jnp.asarray(z))
    nc = lambda a: torch.as_tensor(netutils.nchw(a))  # noqa: E731
    ts, mt = tt.train_step_core(cfg, ts, (nc(x), torch.as_tensor(y)), torch.as_tensor(t), nc(z))
    for k in ("loss", "grad_norm"):
        np.testing.assert_allclose(float(mj[k]), mt[k], rtol=2e-4, err_msg=k)
    assert mt["lr"] == 0.0  # warm-up: Adam's first moment holds 0.1 * the gradient
    adam = [s for s in jax.tree_util.tree_leaves(js.opt_state, is_leaf=lambda s: hasattr(s, "mu"))
            if hasattr(s, "mu")][0]
    mu_t = {k: ts.opt_state.state[p]["exp_avg"].numpy() for k, p in ts.params.items()}
    mu_t = jconv.torch_to_flax_variables(mu_t, cfg.model)["params"]
    flat_j = tconv.flatten_paths(jax.tree_util.tree_map(np.asarray, adam.mu))
    scale = max(np.abs(v).max() for v in flat_j.values())  # leaves with an exactly-zero true gradient
    for path, leaf in tconv.flatten_paths(mu_t).items():       # (biases before a norm) hold only noise
        np.testing.assert_allclose(flat_j[path], leaf, rtol=2e-4, atol=1e-5 * scale, err_msg="/".join(path))
    draw = jax.jit(lambda key, s, b: jt.draw_randomness(key, cfg, s, b))
    losses = [float(mj["loss"])]
    for i in range(9):
        t_i, z_i = draw(jax.random.fold_in(jax.random.key(0), i), js, batch)
        js, m = core(js, batch, t_i, z_i)
        losses.append(float(m["loss"]))
    assert np.isfinite(losses).all() and int(js.step) == 10
    moved = [np.abs(np.asarray(a) - b).max() for a, b in zip(jax.tree_util.tree_leaves(js.params),
                                                            jax.tree_util.tree_leaves(p0))]
    assert min(moved) > 0
    counts = np.asarray(js.sampler_state.loss_counts)
    assert counts.shape == (4,) and (counts == 10).all()  # warmed up: importance sampling is on
    w = np.asarray(jresample.create_named_schedule_sampler("loss-second-moment", 4).weights(js.sampler_state))
    assert not np.allclose(w, w[0])  # no longer uniform
    with pytest.raises(ValueError, match="y"):  # a class-conditional model needs (x, y) batches
        jt.make_train_step(cfg)(js, jnp.asarray(x))
