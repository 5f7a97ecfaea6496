"""Score adapters (score_sde ``get_model_fn`` / ``get_score_fn``): jax == torch == numpy.

Twins: ``jax_impl/models/utils.py`` <-> ``torch_ref/models/utils.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_impl import sde as jsde
from jax_impl.models import mlp as jmlp
from jax_impl.models import utils as jutils
from parity_tests import netutils
from spec.model_configs import MLPConfig
from torch_ref import sde as tsde
from torch_ref.models import mlp as tmlp
from torch_ref.models import utils as tutils

N = 1000
B0, B1 = 0.1, 20.0
SMIN, SMAX = 0.01, 50.0
# t * (N-1) = 4.755 and 1.998 (truncate to 4 and 1, round to 5 and 2), 456.2, 899.1, 999;
# VE: (1 - 0.5)(N-1) = 499.5 rounds (half to even) to 500
T_VALUES = np.array([0.00476, 0.4567, 0.9, 0.002, 1.0, 0.5])


def _np_model(x, labels):
    """The stand-in network: ``0.5 x + 0.001 label``."""
    return 0.5 * x + 0.001 * labels.reshape((-1,) + (1,) * (x.ndim - 1))


def _jax_model(x, labels):
    return 0.5 * x + 0.001 * labels.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))


def _torch_model(x, labels):
    return 0.5 * x + 0.001 * labels.to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))


def _expected(kind, continuous, x, t):
    """Labels and score computed by hand from score_sde's definitions (float64)."""
    log_m = -0.25 * t**2 * (B1 - B0) - 0.5 * t * B0
    if kind == "ve":
        labels = SMIN * (SMAX / SMIN) ** t if continuous else np.round((1.0 - t) * (N - 1))
        return labels, _np_model(x, labels)
    if kind == "subvp" or continuous:
        labels = 999.0 * t
        std = 1.0 - np.exp(2 * log_m) if kind == "subvp" else np.sqrt(1.0 - np.exp(2 * log_m))
    else:
        labels = t * (N - 1)
        alphas_cumprod = np.cumprod(1.0 - np.linspace(B0 / N, B1 / N, N))
        std = np.sqrt(1.0 - alphas_cumprod)[np.floor(labels).astype(int)]
    return labels, -_np_model(x, labels) / std.reshape((-1,) + (1,) * (x.ndim - 1))


SDES = {
    "vp": (jsde.VPSDE(beta_min=B0, beta_max=B1, N=N), tsde.VPSDE(beta_min=B0, beta_max=B1, N=N)),
    "subvp": (jsde.subVPSDE(beta_min=B0, beta_max=B1, N=N), tsde.subVPSDE(beta_min=B0, beta_max=B1, N=N)),
    "ve": (jsde.VESDE(sigma_min=SMIN, sigma_max=SMAX, N=N), tsde.VESDE(sigma_min=SMIN, sigma_max=SMAX, N=N)),
}


@pytest.mark.parametrize("continuous", [True, False])
@pytest.mark.parametrize("kind", sorted(SDES))
@pytest.mark.parametrize("shape", [(6, 2), (6, 3, 4, 2)], ids=["points", "images"])
def test_score_fn_three_way_float64(kind, continuous, shape, np_rng):
    x = np_rng.normal(size=shape)
    want_labels, want = _expected(kind, continuous, x, T_VALUES)
    jsd, tsd = SDES[kind]
    seen = {}

    def recording_jax_model(x, labels):
        seen["jax"] = labels
        return _jax_model(x, labels)

    def recording_torch_model(x, labels):
        seen["torch"] = labels
        return _torch_model(x, labels)

    got_j = jutils.get_score_fn(jsd, recording_jax_model, continuous=continuous)(jnp.asarray(x), jnp.asarray(T_VALUES))
    got_t = tutils.get_score_fn(tsd, recording_torch_model, continuous=continuous)(
        torch.as_tensor(x), torch.as_tensor(T_VALUES))
    np.testing.assert_allclose(np.asarray(seen["jax"]), want_labels, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(seen["torch"].numpy(), want_labels, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(got_j), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_t.numpy(), want, rtol=1e-10, atol=1e-12)
    # jit-compiled, scalar t broadcast over the batch
    jitted = jax.jit(jutils.get_score_fn(jsd, _jax_model, continuous=continuous))
    np.testing.assert_allclose(np.asarray(jitted(jnp.asarray(x), T_VALUES[1])),
                               _expected(kind, continuous, x, np.full(shape[0], T_VALUES[1]))[1], rtol=1e-10)


def test_discrete_label_conventions():
    ve_j, ve_t = SDES["ve"][0], SDES["ve"][1]
    x = np.zeros((3, 2))
    for get, sde, arr in ((jutils.get_score_fn, ve_j, jnp.asarray), (tutils.get_score_fn, ve_t, torch.as_tensor)):
        labels = get(sde, lambda x, l: l, continuous=False)(arr(x), arr(np.array([1.0, 0.0, 0.5])))
        assert [int(v) for v in labels] == [0, 999, 500]  # label 0 is sigma_max
    vp_j = SDES["vp"][0]
    std = -np.asarray(jutils.get_score_fn(vp_j, lambda x, l: jnp.ones_like(x), continuous=False)(
        jnp.zeros((1, 1)), jnp.asarray([0.00476])))[0, 0]
    table = vp_j.sqrt_1m_alphas_cumprod
    assert np.isclose(1.0 / std, table[4], rtol=1e-12) and not np.isclose(1.0 / std, table[5], rtol=1e-6)


@pytest.mark.parametrize("kind,continuous,config", [
    ("vp", True, MLPConfig(hidden_dims=(32, 32), embedding_dim=16)),
    ("ve", True, MLPConfig(hidden_dims=(32, 32), embedding_dim=16, embedding_type="fourier", scale_by_sigma=True)),
    ("ve", False, MLPConfig(hidden_dims=(32, 32), embedding_dim=16)),
])
def test_score_fn_of_a_network_jax_equals_torch(kind, continuous, config, np_rng):
    torch.manual_seed(0)
    tm = netutils.perturb_(tmlp.MLP(config), np_rng)
    fm = jmlp.MLP(config)
    variables = netutils.flax_variables_from_torch(tm, config, fm, (np.zeros((1, 2), np.float32),
                                                                    np.ones((1,), np.float32)))
    x = np_rng.normal(size=(5, 2)).astype(np.float32)
    t = np_rng.uniform(1e-3, 1.0, size=5).astype(np.float32)
    jsd, tsd = SDES[kind]
    score_j = jax.jit(jutils.get_score_fn(jsd, jutils.get_model_fn(fm, variables), continuous=continuous))
    got_j = np.asarray(score_j(jnp.asarray(x), jnp.asarray(t)))
    model_fn_t = tutils.get_model_fn(tm, train=False)
    got_t = tutils.get_score_fn(tsd, model_fn_t, continuous=continuous)(torch.as_tensor(x), torch.as_tensor(t))
    assert tm.training is False
    netutils.assert_rel_close(got_j, got_t.detach().numpy(), 1e-5, "score")

    train_fn = jutils.get_model_fn(fm, variables, train=True)
    with pytest.raises(ValueError, match="train=True needs rng"):
        train_fn(jnp.asarray(x), jnp.asarray(t))
    train_score = jutils.get_score_fn(jsd, train_fn, continuous=continuous)
    assert train_score(jnp.asarray(x), jnp.asarray(t), rng=jax.random.PRNGKey(0)).shape == x.shape
    tutils.get_model_fn(tm, train=True)(torch.as_tensor(x), torch.as_tensor(t))
    assert tm.training is True


def test_score_fn_errors():
    with pytest.raises(TypeError, match="unsupported SDE type"):
        jutils.get_score_fn(object(), _jax_model, continuous=True)
    with pytest.raises(TypeError, match="unsupported SDE type"):
        tutils.get_score_fn(object(), _torch_model, continuous=True)
    with pytest.raises(TypeError, match="continuous must be a bool"):
        jutils.get_score_fn(SDES["vp"][0], _jax_model, continuous=1)
    score_j = jutils.get_score_fn(SDES["vp"][0], _jax_model, continuous=False)
    score_t = tutils.get_score_fn(SDES["vp"][1], _torch_model, continuous=False)
    with pytest.raises(ValueError, match="batch mismatch"):
        score_j(jnp.zeros((3, 2)), jnp.zeros(4))
    with pytest.raises(ValueError, match="batch mismatch"):
        score_t(torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\]"):
        score_j(jnp.zeros((3, 2)), 1.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\]"):
        score_t(torch.zeros(3, 2), -0.1)
