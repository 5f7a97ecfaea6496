"""Class-conditional runs on the command line: ``scorediff sample --class K --guidance-scale W``.

The sampler the command line builds for a class-conditional run (``scorediff.sampling``)
feeds the network the labels (``--class K``: every sample of class K; default sample j of
class j mod C, C the data's classes without label dropout's null class) and, for
``--guidance-scale W != 1``, classifier-free guidance (``jax_impl.guidance.cfg_model_fn``).
Checked against the library called by hand: w = 0 is the conditional network at the null
class, w = 1 at the sampled classes; the torch twin on the same noise equals JAX; a tiny
class-conditional training run samples through ``main``; wrong flags exit 2 naming them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spec
from jax_impl.diffusion import GaussianDiffusion
from jax_impl.models import registry
from jax_impl.samplers_discrete import ddim_sample
from scorediff import presets, sampling
from scorediff.cli import main
from spec.model_configs import MLPConfig
from spec.train_config import null_label

TINY = ["--set", "training.n_iters=3", "--set", "training.batch_size=16", "--set", "training.snapshot_freq=3",
        "--set", "training.log_freq=1", "--set", "model.hidden_dims=16,16", "--set", "optim.warmup=0"]


def _config(label_dropout=0.1):
    base = presets.get_preset("2d/improved-ddpm").run_config
    model = dataclasses.replace(base.model, hidden_dims=(16, 16), num_classes=4)
    train = base.train.with_overrides([f"training.label_dropout={label_dropout}"])
    return dataclasses.replace(base, model=model, train=train)


def test_labels_and_flag_errors():
    config = _config()
    assert sampling.data_classes(config) == 3                       # 4 labels, the last is null
    assert sampling.data_classes(_config(0.0)) == 4
    plan = sampling.resolve(config, {"name": "ddim", "steps": 5}, num=7)
    np.testing.assert_array_equal(sampling.sample_labels(plan), [0, 1, 2, 0, 1, 2, 0])
    plan = sampling.resolve(config, {"name": "ddim", "steps": 5}, overrides={"class_label": 2}, num=3)
    np.testing.assert_array_equal(sampling.sample_labels(plan), [2, 2, 2])
    with pytest.raises(ValueError, match=r"--class must be a class of the run, 0\.\.2"):
        sampling.resolve(config, {"name": "ddim"}, overrides={"class_label": 3})
    with pytest.raises(ValueError, match="--guidance-scale.*label_dropout"):
        sampling.resolve(_config(0.0), {"name": "ddim"}, overrides={"guidance_scale": 2.0})
    uncond = presets.get_preset("2d/improved-ddpm").run_config
    assert sampling.sample_labels(sampling.resolve(uncond, {"name": "ddim"})) is None
    for key in ("class_label", "guidance_scale"):
        with pytest.raises(ValueError, match="not class-conditional"):
            sampling.resolve(uncond, {"name": "ddim"}, overrides={key: 1})


def test_guided_sampler_equals_the_library_by_hand_and_torch():
    import torch

    from torch_ref.convert import flax_to_torch_state_dict
    from torch_ref.models import registry as treg

    config = _config()
    variables = registry.init_variables(config.model, jax.random.key(0))
    model = registry.create_model(config.model)
    x_T = np.random.default_rng(0).standard_normal((6, 2)).astype(np.float32)
    diffusion = GaussianDiffusion(dataclasses.replace(config.process, timestep_respacing="ddim5"))
    for w, y in ((0.0, null_label(config.model)), (1.0, 1)):
        plan = sampling.resolve(config, {"name": "ddim", "steps": 5},
                                overrides={"class_label": 1, "guidance_scale": w}, num=6)
        x, nfe = sampling.JaxSampler(plan)(variables, None, jnp.asarray(x_T), None)
        eps_fn = lambda x, t, y=y: model.apply(variables, x, t, y=jnp.full((x.shape[0],), y, jnp.int32))  # noqa: E731
        ref, _ = jax.jit(lambda x_T: ddim_sample(None, diffusion, eps_fn, x_T.shape, x_T=x_T,
                                                 clip_denoised=False))(jnp.asarray(x_T))
        np.testing.assert_allclose(np.asarray(x), np.asarray(ref), rtol=1e-5, atol=1e-5)
    # a real guidance scale: JAX == the torch twin on the same start
    plan = sampling.resolve(config, {"name": "ddim", "steps": 5}, overrides={"guidance_scale": 2.5}, num=6)
    xj, _ = sampling.JaxSampler(plan)(variables, None, jnp.asarray(x_T), None)
    module = treg.create_model(config.model)
    sd = flax_to_torch_state_dict(jax.tree_util.tree_map(np.asarray, variables), config.model)
    module.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()})
    module.eval()
    with torch.no_grad():
        xt, _ = sampling.torch_sampler(plan)(module, x_T, None)
    np.testing.assert_allclose(np.asarray(xj), np.asarray(xt), rtol=1e-4, atol=1e-4)


def test_train_and_sample_a_class_conditional_run(tmp_path, capsys):
    wd = tmp_path / "cc"
    assert main(["train", "--preset", "2d/improved-ddpm", "--workdir", str(wd), "--no-progress", *TINY,
                 "--set", "model.num_classes=4", "--set", "training.label_dropout=0.1"]) == 0
    out = tmp_path / "s.npz"
    assert main(["sample", "--workdir", str(wd), "--num", "6", "--steps", "4", "--class", "2",
                 "--guidance-scale", "3", "--out", str(out)]) == 0
    assert np.load(out)["samples"].shape == (6, 2)
    capsys.readouterr()
    assert main(["sample", "--workdir", str(wd), "--num", "6", "--class", "7"]) == 2
    assert "--class must be a class of the run, 0..2" in capsys.readouterr().err
