"""Weight conversion: key tables, torch <-> flax round trips, score_sde checkpoints, I/O.

Twins: ``jax_impl/convert.py`` <-> ``torch_ref/convert.py``.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_impl import convert as jconv
from jax_impl.models import registry as jreg
from parity_tests import netutils
from spec.model_configs import DDPMConfig, NCSNppConfig
from torch_ref import convert as tconv
from torch_ref.models import registry as treg

NCSNPP = NCSNppConfig(image_size=8, num_channels=3, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                      num_scales=20, sigma_min=0.01, sigma_max=50.0)
DDPM = DDPMConfig(image_size=8, nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_scales=30)


def _torch_model(config, rng):
    torch.manual_seed(1)
    return netutils.perturb_(treg.create_model(config), rng).eval()


_official_checkpoint = netutils.official_score_sde_checkpoint
_reference_ema_model = netutils.score_sde_ema_model


def _tree_equal(a, b) -> bool:
    fa, fb = tconv.flatten_paths(a), tconv.flatten_paths(b)
    return fa.keys() == fb.keys() and all(
        np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype and np.array_equal(np.asarray(fa[k]), np.asarray(fb[k]))
        for k in fa)


@pytest.mark.parametrize("config", [NCSNPP, DDPM], ids=["ncsnpp", "ddpm"])
def test_round_trips_are_exact(config, np_rng):
    # flax -> torch -> flax, starting from random flax variables of the model's structure
    variables = jax.tree_util.tree_map(
        lambda s: jnp.asarray(np_rng.normal(0, 0.05, size=s.shape), s.dtype), jreg.variable_shapes(config))
    sd = jconv.flax_to_torch_state_dict(variables, config)  # numpy on the flax side
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    model = treg.create_model(config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)  # every key, shapes right
    back = jconv.torch_to_flax_variables(model.state_dict(), config)
    assert _tree_equal(back, variables)
    # torch -> flax -> torch
    model = _torch_model(config, np_rng)
    sd2 = tconv.flax_to_torch_state_dict(jconv.torch_to_flax_variables(model.state_dict(), config), config)
    assert list(sd2) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(sd2[k], v), k
    sd3 = jconv.flax_to_torch_state_dict(tconv.torch_to_flax_variables(model.state_dict(), config), config)
    assert list(sd3) == list(sd2) and all(np.array_equal(sd3[k], sd2[k].numpy()) for k in sd2)


def test_conversion_errors_name_the_key(np_rng):
    sd = dict(_torch_model(NCSNPP, np_rng).state_dict())
    missing = dict(sd)
    del missing["all_modules.4.Conv_1.weight"]
    with pytest.raises(KeyError, match=r"missing key\(s\).*all_modules\.4\.Conv_1\.weight"):
        jconv.torch_to_flax_variables(missing, NCSNPP)
    extra = dict(sd, **{"all_modules.3.Conv_9.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"unexpected key\(s\).*all_modules\.3\.Conv_9\.weight"):
        jconv.torch_to_flax_variables(extra, NCSNPP)
    bad = dict(sd, **{"all_modules.2.weight": torch.zeros(64, 33)})
    with pytest.raises(ValueError, match=r"all_modules\.2\.weight: shape \(64, 33\) does not match"):
        jconv.torch_to_flax_variables(bad, NCSNPP)
    wrong_sigmas = dict(sd, sigmas=torch.as_tensor(dataclasses.replace(NCSNPP, sigma_max=10.0).sigmas))
    with pytest.raises(ValueError, match="sigmas: values do not match the config"):
        jconv.torch_to_flax_variables(wrong_sigmas, NCSNPP)
    no_sigmas = {k: v for k, v in sd.items() if k != "sigmas"}
    with pytest.raises(KeyError, match="sigmas"):
        jconv.torch_to_flax_variables(no_sigmas, NCSNPP)
    variables = jconv.torch_to_flax_variables(sd, NCSNPP)
    variables["params"]["all_modules_99"] = {"kernel": np.zeros(3)}
    with pytest.raises(KeyError, match="all_modules_99"):
        jconv.flax_to_torch_state_dict(variables, NCSNPP)


def test_from_score_sde_ema_matches_official_loading(np_rng, tmp_path):
    model = _torch_model(NCSNPP, np_rng)
    ckpt = _official_checkpoint(model, np_rng)
    path = tmp_path / "checkpoint_7.pth"
    torch.save(ckpt, path)
    ref = _reference_ema_model(NCSNPP, ckpt)

    x = np_rng.uniform(0, 1, size=(2, 8, 8, 3)).astype(np.float32)
    sigmas = np.array([0.05, 20.0], np.float32)
    with torch.no_grad():
        want = ref(torch.as_tensor(netutils.nchw(x)), torch.as_tensor(sigmas))

    tm = tconv.from_score_sde(path, NCSNPP)  # weights="ema" by default
    for (k, a), b in zip(tm.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    with torch.no_grad():
        assert torch.equal(tm(torch.as_tensor(netutils.nchw(x)), torch.as_tensor(sigmas)), want)

    fm, variables = jconv.from_score_sde(str(path), NCSNPP)
    assert set(variables) == {"params", "constants"}
    apply = netutils.compile_fast(lambda v, x, l: fm.apply(v, x, l), variables, x, sigmas)
    got = np.asarray(apply(variables, x, sigmas))
    netutils.assert_rel_close(got, netutils.nhwc(want.numpy()), 1e-5, "from_score_sde output")

    raw = tconv.from_score_sde(ckpt, NCSNPP, weights="raw")
    for k, v in model.state_dict().items():
        assert torch.equal(raw.state_dict()[k], v), k


def test_from_score_sde_state_dict_forms(np_rng):
    model = _torch_model(DDPM, np_rng)
    ckpt = _official_checkpoint(model, np_rng)
    expected = jconv.torch_to_flax_variables(_reference_ema_model(DDPM, ckpt).state_dict(), DDPM)
    _, v_ema = jconv.from_score_sde(ckpt, DDPM)
    assert _tree_equal(v_ema, expected)
    raw_expected = jconv.torch_to_flax_variables(model.state_dict(), DDPM)
    for sd in (ckpt["model"], tconv.strip_prefix(ckpt["model"])):  # bare, with or without module.
        _, v_raw = jconv.from_score_sde(sd, DDPM, weights="raw")
        assert _tree_equal(v_raw, raw_expected)
        with pytest.raises(ValueError, match="bare state_dict: pass weights='raw'"):
            jconv.from_score_sde(sd, DDPM)
    with pytest.raises(ValueError, match="unknown weights 'best'"):
        jconv.from_score_sde(ckpt, DDPM, weights="best")
    short = dict(ckpt, ema=dict(ckpt["ema"], shadow_params=ckpt["ema"]["shadow_params"][:-1]))
    with pytest.raises(ValueError, match="shadow_params has .* tensors but the model has"):
        jconv.from_score_sde(short, DDPM)
    shadow = list(ckpt["ema"]["shadow_params"])
    shadow[4] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"shadow_params\[4\] has shape \(3,\) but all_modules\.2\.weight"):
        jconv.from_score_sde(dict(ckpt, ema=dict(ckpt["ema"], shadow_params=shadow)), DDPM)
    with pytest.raises(FileNotFoundError):
        jconv.from_score_sde("/nonexistent/checkpoint.pth", DDPM)


def test_ema_order_is_parameters_order_without_frozen():
    table = tconv.key_table(NCSNPP)
    with torch.device("meta"):
        model = treg.create_model(NCSNPP)
    frozen = [km.torch_key for km in table if not km.trainable]
    assert frozen == ["all_modules.0.W"]  # the Fourier projection
    assert [km.torch_key for km in table if km.trainable] == [
        n for n, p in model.named_parameters() if p.requires_grad]


def test_orbax_and_pt_save_load(np_rng, tmp_path):
    model = _torch_model(NCSNPP, np_rng)
    variables = jconv.torch_to_flax_variables(model.state_dict(), NCSNPP)
    jconv.save_variables(tmp_path / "flax_ckpt", variables)
    assert _tree_equal(jconv.load_variables(tmp_path / "flax_ckpt", NCSNPP), variables)
    assert _tree_equal(jconv.load_variables(tmp_path / "flax_ckpt"), variables)
    with pytest.raises(FileExistsError):
        jconv.save_variables(tmp_path / "flax_ckpt", variables)
    with pytest.raises(FileNotFoundError):
        jconv.load_variables(tmp_path / "missing")

    tconv.save_state_dict(tmp_path / "model.pt", model)
    loaded = tconv.load_state_dict(tmp_path / "model.pt")
    assert list(loaded) == list(model.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert sorted(os.listdir(tmp_path)) == ["flax_ckpt", "model.pt"]  # no temporary files left
    # our own .pt file is a bare state_dict: loadable as an official one with weights="raw"
    back = tconv.from_score_sde(tmp_path / "model.pt", NCSNPP, weights="raw")
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
