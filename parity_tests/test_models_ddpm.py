"""DDPM U-Net (score_sde ``ddpm``): flax == torch (float32), key table, counts, input checks.

Twins: ``jax_impl/models/ddpm.py`` <-> ``torch_ref/models/ddpm.py``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from jax_impl.models import ddpm as jddpm
from jax_impl.models import registry as jreg
from parity_tests import netutils
from spec.model_configs import PRESETS, DDPMConfig, from_score_sde_config
from torch_ref import convert as tconv
from torch_ref.models import ddpm as tddpm
from torch_ref.models import registry as treg

SMALL = DDPMConfig(image_size=8, num_channels=3, nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                   dropout=0.1, resamp_with_conv=True, conditional=True, centered=False)
CONFIGS = {
    "conv_resample_conditional": SMALL,
    "pool_resample_unconditional_scale_by_sigma": dataclasses.replace(
        SMALL, resamp_with_conv=False, centered=True, attn_resolutions=(8,), nonlinearity="elu",
        conditional=False, scale_by_sigma=True, num_scales=10, num_channels=1),
}


def _inputs(config, rng, B=2):
    x = rng.uniform(0.0, 1.0, size=(B, config.image_size, config.image_size, config.num_channels))
    if config.scale_by_sigma:
        labels = rng.integers(0, config.num_scales, size=B).astype(np.int64)
    else:
        labels = rng.uniform(0.0, 999.0, size=B).astype(np.float32)  # VP labels t * (N-1)
    return x.astype(np.float32), labels


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ddpm_parity_outputs_and_input_gradients(name, np_rng):
    config = CONFIGS[name]
    tm, fm, variables = netutils.image_model_pair(config, np_rng, tddpm.DDPM, jddpm.DDPM)
    x, labels = _inputs(config, np_rng)
    netutils.check_image_parity(tm, fm, variables, x, labels, np_rng)


def test_ddpm_dropout_train_vs_eval(np_rng):
    config = DDPMConfig(image_size=4, nf=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.5)
    tm, fm, variables = netutils.image_model_pair(config, np_rng, tddpm.DDPM, jddpm.DDPM)
    x, labels = _inputs(config, np_rng)
    netutils.check_dropout_modes(tm, fm, variables, x, labels)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ddpm_key_table(name):
    config = CONFIGS[name]
    netutils.check_key_table(config, tddpm.DDPM(config), jddpm.DDPM(config))


def test_ddpm_cifar10_parameter_count_both_sides():
    config = PRESETS["vp/ddpm/cifar10"]
    expected = 35_218_947
    assert jreg.count_parameters(config) == {"total": expected, "trainable": expected}
    assert treg.count_parameters(config) == {"total": expected, "trainable": expected}
    assert tconv.num_parameters(tconv.key_table(config)) == expected


def test_ddpm_bad_inputs_raise_before_compute():
    config = CONFIGS["conv_resample_conditional"]
    fm, tm = jddpm.DDPM(config), tddpm.DDPM(config)
    netutils.check_bad_inputs_flax(fm, config, [
        ((2, 8, 8, 1), (2,), "x has 1 channels"),
        ((2, 7, 8, 3), (2,), "not divisible by the down-sampling factor 2"),
        ((2, 8, 8, 3), (3,), "labels must have shape"),
        ((2, 8, 8), (2,), "NHWC"),
    ])
    with pytest.raises(ValueError, match="x has 8 channels"):
        tm(torch.zeros(2, 8, 8, 3), torch.ones(2))  # NHWC given to the NCHW model
    with pytest.raises(ValueError, match="not divisible by the down-sampling factor 2"):
        tm(torch.zeros(2, 3, 8, 5), torch.ones(2))
    with pytest.raises(ValueError, match="labels must have shape"):
        tm(torch.zeros(2, 3, 8, 8), torch.ones(2, 1))
    with pytest.raises(ValueError, match="multiple of 32"):
        DDPMConfig(nf=16)
    with pytest.raises(ValueError, match="unknown nonlinearity 'gelu'"):
        DDPMConfig(nonlinearity="gelu")
    with pytest.raises(ValueError, match="image_size 12 must be divisible"):
        DDPMConfig(image_size=12)


def test_ddpm_from_score_sde_config_matches_preset():
    official = {  # score_sde vp/ddpm/cifar10 config.to_dict(), abridged to the relevant parts
        "training": {"sde": "vpsde", "continuous": False, "reduce_mean": True},
        "data": {"dataset": "CIFAR10", "image_size": 32, "random_flip": True, "centered": True,
                 "uniform_dequantization": False, "num_channels": 3},
        "model": {"sigma_min": 0.01, "sigma_max": 50, "num_scales": 1000, "beta_min": 0.1, "beta_max": 20.0,
                  "dropout": 0.1, "embedding_type": "fourier", "name": "ddpm", "scale_by_sigma": False,
                  "ema_rate": 0.9999, "normalization": "GroupNorm", "nonlinearity": "swish", "nf": 128,
                  "ch_mult": [1, 2, 2, 2], "num_res_blocks": 2, "attn_resolutions": [16],
                  "resamp_with_conv": True, "conditional": True},
    }
    config = from_score_sde_config(official)
    assert config == PRESETS["vp/ddpm/cifar10"] and isinstance(config, DDPMConfig)
    assert hash(config) == hash(PRESETS["vp/ddpm/cifar10"])  # usable as a jit static argument
    official["model"]["name"] = "unet"
    with pytest.raises(ValueError, match="unknown config\\['model'\\]\\['name'\\] 'unet'"):
        from_score_sde_config(official)


def test_registry_names_and_presets():
    for reg in (jreg, treg):
        assert reg.config_from_name("vp/ddpm/cifar10", image_size=64) == dataclasses.replace(
            PRESETS["vp/ddpm/cifar10"], image_size=64)
        assert reg.config_from_name("ddpm", nf=64) == DDPMConfig(nf=64)
        with pytest.raises(ValueError, match="unknown model name 'unet'"):
            reg.get_model_class("unet")
    assert type(jreg.create_model(SMALL)) is jddpm.DDPM
    with torch.device("meta"):
        assert type(treg.create_model(SMALL)) is tddpm.DDPM
