"""Model registry and converter entry points across all network families, both sides."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch

from jax_impl import convert as jconvert
from jax_impl.models import registry as jreg
from parity_tests.helpers import to_np
from spec.model_configs import PRESETS, from_score_sde_config
from torch_ref import convert as tconvert
from torch_ref.models import registry as treg

OFFICIAL_COUNTS = {  # measured from the official score_sde code (DESIGN.md / issue 3)
    "vp/ddpm/cifar10": 35_218_947,
    "vp/cifar10_ddpmpp_continuous": 61_804_419,
    "vp/cifar10_ddpmpp_deep_continuous": 106_632_579,
    "ve/cifar10_ncsnpp_continuous": 62_758_915,
    "ve/cifar10_ncsnpp_deep_continuous": 107_587_075,
    "ve/ncsnv2/cifar10": 29_694_083,
}


def test_registries_list_the_same_models():
    assert set(jreg.MODELS) == set(treg.MODELS) == {
        "mlp", "ddpm", "ncsnpp", "ncsn", "ncsnv2_64", "ncsnv2_128", "ncsnv2_256", "improved_unet"}
    for name in jreg.MODELS:
        assert jreg.get_config_class(name) is treg.get_config_class(name)
    with pytest.raises(ValueError, match="unknown model name 'unet'.*valid choices"):
        jreg.get_model_class("unet")


@pytest.mark.parametrize("preset", sorted(OFFICIAL_COUNTS))
def test_preset_counts_both_sides(preset):
    config = jreg.config_from_name(preset)
    assert config is PRESETS[preset] or config == PRESETS[preset]
    assert jreg.count_parameters(config)["total"] == OFFICIAL_COUNTS[preset]
    assert treg.count_parameters(config)["total"] == OFFICIAL_COUNTS[preset]


def test_ncsnv2_names_pick_the_layout():
    for name in ("ncsnv2_64", "ncsnv2_128", "ncsnv2_256"):
        cfg = jreg.config_from_name(name, ngf=8, num_scales=4)
        assert cfg.name == name and cfg == treg.config_from_name(name, ngf=8, num_scales=4)
    official = {"model": {"name": "ncsnv2_64", "nf": 128, "num_scales": 232, "sigma_min": 0.01,
                          "sigma_max": 50.0}, "data": {"image_size": 32, "num_channels": 3}}
    assert from_score_sde_config(official) == PRESETS["ve/ncsnv2/cifar10"]


SMALL = {
    "mlp": dict(data_dim=2, hidden_dims=(16, 16)),
    "ncsn": dict(ngf=8, num_scales=4, image_size=16),
    "ncsnv2_64": dict(ngf=8, num_scales=4, image_size=16),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_generic_conversion_round_trip_and_forward(name):
    """torch module -> flax variables (generic entry points) -> the same outputs; and back."""
    cfg = jreg.config_from_name(name, **SMALL[name])
    torch.manual_seed(0)
    tmodel = treg.create_model(cfg).eval()
    with torch.no_grad():
        for p in tmodel.parameters():
            p.add_(0.05 * torch.randn_like(p))
    variables = jconvert.torch_to_flax_variables(tmodel.state_dict(), cfg)
    back = jconvert.flax_to_torch_state_dict(variables, cfg)
    ref = tmodel.state_dict()
    assert set(back) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(to_np(back[k]), to_np(ref[k]).astype(to_np(back[k]).dtype))

    x, labels = jreg.example_inputs(cfg, batch=2)
    x = np.random.default_rng(0).uniform(size=x.shape).astype(np.float32)
    model = jreg.create_model(cfg)
    out_j = np.asarray(jax.jit(model.apply)(variables, x, labels))
    xt = torch.from_numpy(x if x.ndim == 2 else x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        out_t = to_np(tmodel(xt, torch.from_numpy(np.array(labels))))
    if out_t.ndim == 4:
        out_t = out_t.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out_j, out_t, rtol=1e-5, atol=1e-5 * np.abs(out_t).max())


def test_convert_modules_export_both_official_loaders():
    from jax_impl.models.ncsnv2 import from_ncsnv2 as j_impl

    assert jconvert.from_ncsnv2 is j_impl
    assert callable(tconvert.from_ncsnv2) and callable(tconvert.from_score_sde)
    assert callable(jconvert.from_score_sde)
    with pytest.raises(TypeError, match="no key table for config type"):
        tconvert.key_table(dataclasses.make_dataclass("Other", [])())
