"""MLP score network: flax == torch (float32), key table, input checks.

Twins: ``jax_impl/models/mlp.py`` <-> ``torch_ref/models/mlp.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_impl.models import mlp as jmlp
from parity_tests.netutils import assert_rel_close, flax_variables_from_torch, perturb_
from spec.model_configs import MLPConfig
from torch_ref import convert as tconv
from torch_ref.models import mlp as tmlp

CONFIGS = {
    "positional": MLPConfig(data_dim=2, hidden_dims=(32, 48, 32), embedding_dim=16),
    "fourier_sigma": MLPConfig(data_dim=3, hidden_dims=(32, 32), embedding_dim=16, embedding_type="fourier",
                               scale_by_sigma=True, nonlinearity="elu"),
    "unconditional": MLPConfig(data_dim=2, hidden_dims=(16,), conditional=False, nonlinearity="lrelu"),
}


def _pair(config, rng):
    torch.manual_seed(0)
    tm = perturb_(tmlp.MLP(config), rng).eval()
    fm = jmlp.MLP(config)
    x0 = np.zeros((1, config.data_dim), np.float32)
    variables = flax_variables_from_torch(tm, config, fm, (x0, np.ones((1,), np.float32)))
    return tm, fm, variables


def _labels(config, rng, B):
    if config.embedding_type == "fourier":
        return np.exp(rng.uniform(np.log(0.01), np.log(50.0), size=B)).astype(np.float32)  # sigmas
    return rng.uniform(0.0, 999.0, size=B).astype(np.float32)  # VP labels 999 t


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mlp_parity_outputs_and_input_gradients(name, np_rng):
    config = CONFIGS[name]
    tm, fm, variables = _pair(config, np_rng)
    B = 7
    x = np_rng.normal(size=(B, config.data_dim)).astype(np.float32)
    labels = _labels(config, np_rng, B)
    w = np_rng.normal(size=(B, config.data_dim)).astype(np.float32)

    apply = jax.jit(lambda v, x, l: fm.apply(v, x, l))
    out_j = apply(variables, jnp.asarray(x), jnp.asarray(labels))
    assert out_j.dtype == jnp.float32
    out_t = tm(torch.as_tensor(x), torch.as_tensor(labels))
    assert_rel_close(np.asarray(out_j), out_t.detach().numpy(), 1e-5, "output")
    assert np.abs(np.asarray(out_j)).max() > 1e-2  # the network does something

    grad_j = jax.jit(jax.grad(lambda x: jnp.sum(fm.apply(variables, x, jnp.asarray(labels)) * w)))(jnp.asarray(x))
    xt = torch.as_tensor(x).requires_grad_(True)
    (tm(xt, torch.as_tensor(labels)) * torch.as_tensor(w)).sum().backward()
    assert_rel_close(np.asarray(grad_j), xt.grad.numpy(), 1e-5, "input gradient")


def test_mlp_label_changes_output(np_rng):
    config = CONFIGS["positional"]
    _, fm, variables = _pair(config, np_rng)
    x = jnp.asarray(np_rng.normal(size=(2, 2)).astype(np.float32))
    a = fm.apply(variables, x, jnp.asarray([1.0, 1.0], jnp.float32))
    b = fm.apply(variables, x, jnp.asarray([500.0, 500.0], jnp.float32))
    assert np.abs(np.asarray(a - b)).max() > 1e-3


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mlp_key_table_matches_both_modules(name):
    config = CONFIGS[name]
    table = tconv.key_table(config)
    tm = tmlp.MLP(config)
    sd = tm.state_dict()
    assert [km.torch_key for km in table] == list(sd)  # every key, in state_dict order
    assert all(tuple(sd[km.torch_key].shape) == km.shape for km in table)
    assert [km.torch_key for km in table if km.trainable] == [
        n for n, p in tm.named_parameters() if p.requires_grad
    ]
    fm = jmlp.MLP(config)
    shapes = jax.eval_shape(fm.init, jax.random.PRNGKey(0), jnp.zeros((1, config.data_dim), jnp.float32),
                            jnp.ones((1,), jnp.float32))
    flat = tconv.flatten_paths(shapes)
    assert sorted(flat) == sorted(km.flax_path for km in table)
    n_torch = sum(p.numel() for p in tm.parameters())
    n_flax = sum(int(np.prod(s.shape)) for s in flat.values())
    assert n_torch == n_flax == tconv.num_parameters(table)


def test_mlp_fourier_projection_is_frozen_and_outside_params():
    config = CONFIGS["fourier_sigma"]
    tm = tmlp.MLP(config)
    assert tm.embed.W.requires_grad is False
    shapes = jax.eval_shape(jmlp.MLP(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.float32),
                            jnp.ones((1,), jnp.float32))
    assert shapes["constants"]["embed"]["W"].shape == (8,)
    assert "embed" not in shapes["params"]


def test_mlp_round_trip_exact(np_rng):
    config = CONFIGS["fourier_sigma"]
    tm, _, variables = _pair(config, np_rng)
    back = tconv.flax_to_torch(jax.tree_util.tree_map(np.asarray, variables), tconv.key_table(config),
                               torch_shapes={k: v.shape for k, v in tm.state_dict().items()})
    for k, v in tm.state_dict().items():
        assert torch.equal(back[k], v), k


def test_mlp_bad_inputs_raise_before_compute():
    config = CONFIGS["positional"]
    fm, tm = jmlp.MLP(config), tmlp.MLP(config)
    variables = fm.init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.float32), jnp.ones((1,), jnp.float32))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2\]"):
        fm.apply(variables, jnp.zeros((3, 4), jnp.float32), jnp.ones((3,), jnp.float32))
    with pytest.raises(ValueError, match="labels must have shape"):
        fm.apply(variables, jnp.zeros((3, 2), jnp.float32), jnp.ones((3, 1), jnp.float32))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2\]"):
        tm(torch.zeros(3, 4), torch.ones(3))
    with pytest.raises(ValueError, match="labels must have shape"):
        tm(torch.zeros(3, 2), torch.ones(2))
    with pytest.raises(ValueError, match="embedding_type"):
        MLPConfig(embedding_type="learned")
    with pytest.raises(ValueError, match="embedding_dim must be even"):
        MLPConfig(embedding_dim=15)
    with pytest.raises(TypeError, match="hidden_dims"):
        MLPConfig(hidden_dims=64)
