"""The MLP on small images (``MLPConfig(image_size=..., num_channels=...)``): the network the
digits presets of the command line train (an 8x8 digit is 64 numbers; see scorediff/presets.py).

Twins: ``jax_impl/models/mlp.py`` (NHWC) <-> ``torch_ref/models/mlp.py`` (NCHW). Checked:
flax == torch outputs from converted weights, with and without ``learn_sigma`` (eps
channels, then v); the image network is the vector MLP of width D applied to each image
flattened in NHWC order (same parameters, same numbers); the convert round trip is exact;
bad shapes and an inconsistent ``data_dim`` raise naming the argument; the config survives
the run directory's JSON.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_impl import convert as jconvert
from jax_impl.models import registry as jreg
from parity_tests.helpers import tol
from spec.model_configs import MLPConfig
from spec.train_config import RunConfig
from torch_ref.models import registry as treg

F32 = tol(np.float32)
IMG = MLPConfig(data_dim=48, image_size=4, num_channels=3, hidden_dims=(32, 32), embedding_dim=16)


def _pair(config, seed=0):
    variables = jreg.init_variables(config, jax.random.key(seed))
    sd = jconvert.flax_to_torch_state_dict(variables, config)
    module = treg.create_model(config)
    module.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()})
    return variables, module.eval()


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_image_mlp_flax_equals_torch_and_the_vector_mlp(learn_sigma):
    config = dataclasses.replace(IMG, learn_sigma=learn_sigma)
    variables, module = _pair(config)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4, 4, 3)).astype(np.float32)
    t = rng.uniform(0.0, 999.0, 5).astype(np.float32)
    model = jreg.create_model(config)
    out = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x), jnp.asarray(t)))
    assert out.shape == (5, 4, 4, 6 if learn_sigma else 3)
    with torch.no_grad():
        out_t = module(torch.as_tensor(x).permute(0, 3, 1, 2), torch.as_tensor(t)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, out_t, **F32)
    # the same parameters as the vector MLP on the NHWC-flattened image
    vec = dataclasses.replace(config, image_size=None, num_channels=1)
    flat = np.asarray(jreg.create_model(vec).apply(variables, jnp.asarray(x.reshape(5, -1)), jnp.asarray(t)))
    D = 48
    np.testing.assert_allclose(out[..., :3].reshape(5, D), flat[:, :D], rtol=1e-6, atol=1e-6)
    if learn_sigma:
        np.testing.assert_allclose(out[..., 3:].reshape(5, D), flat[:, D:], rtol=1e-6, atol=1e-6)


def test_image_mlp_convert_round_trip_is_exact():
    variables, module = _pair(IMG, seed=3)
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    back = jconvert.torch_to_flax_variables(sd, IMG)
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_image_mlp_bad_input_names_it():
    with pytest.raises(ValueError, match="data_dim=64 must equal"):
        MLPConfig(data_dim=64, image_size=4, num_channels=3)
    with pytest.raises(ValueError, match="image_size"):
        MLPConfig(data_dim=0 + 48, image_size=0, num_channels=3)
    variables, module = _pair(IMG)
    model = jreg.create_model(IMG)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 4, 4, 3\]"):
        model.apply(variables, jnp.zeros((2, 48)), jnp.ones((2,)))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 3, 4, 4\]"):
        module(torch.zeros(2, 4, 4, 3), torch.ones(2))


def test_image_mlp_config_round_trips_through_json():
    import spec

    rc = RunConfig(model=IMG, data=spec.DataConfig(dataset="digits"), process=spec.VPSDEConfig(N=100))
    assert RunConfig.from_dict(rc.to_dict()) == rc
