"""SDEs: jax == torch == numpy oracle, analytic checks, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch

import spec
from jax_impl import sde as jsde
from parity_tests.helpers import to_np, tol
from spec.oracles import gmm as gmm_oracle
from spec.oracles import sde as oracle
from torch_ref import sde as tsde

KINDS = {
    "ve": (jsde.VESDE, tsde.VESDE, dict(sigma_min=0.01, sigma_max=50.0, N=1000)),
    "vp": (jsde.VPSDE, tsde.VPSDE, dict(beta_min=0.1, beta_max=20.0, N=1000)),
    "subvp": (jsde.subVPSDE, tsde.subVPSDE, dict(beta_min=0.1, beta_max=20.0, N=1000)),
}
SHAPES = [(5, 2), (3, 4, 4, 2)]  # 2-D points and NHWC-like images: any rank works


def _pair(kind):
    jcls, tcls, kw = KINDS[kind]
    return jcls(**kw), tcls(**kw)


def _inputs(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    t = rng.uniform(0.0, 1.0, shape[0]).astype(dtype)
    t[0] = 0.0
    t[-1] = 1.0
    return x, t


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sde_marginal_discretize_three_way(kind, shape, dtype, np_rng):
    js, ts = _pair(kind)
    x, t = _inputs(np_rng, shape, dtype)
    cfg = type(js).__mro__[1](**{k: getattr(js, k) for k in KINDS[kind][2]})  # the spec config
    for method in ("sde", "marginal_prob", "discretize"):
        j_out = jax.jit(lambda x, t, m=method: getattr(js, m)(x, t))(jnp.asarray(x), jnp.asarray(t))
        t_out = getattr(ts, method)(torch.as_tensor(x), torch.as_tensor(t))
        o_out = getattr(oracle, method)(cfg, x, t)
        for a, b, c in zip(j_out, t_out, o_out):
            a, b = to_np(a), to_np(b)
            assert a.dtype == dtype and b.dtype == dtype
            np.testing.assert_allclose(a, b, **tol(dtype), err_msg=f"{kind}.{method} jax vs torch")
            np.testing.assert_allclose(a, c, **tol(dtype), err_msg=f"{kind}.{method} jax vs oracle")


@pytest.mark.parametrize("kind", list(KINDS))
def test_scalar_t_broadcasts(kind, np_rng):
    js, ts = _pair(kind)
    x = np_rng.standard_normal((4, 3))
    m1, s1 = js.marginal_prob(jnp.asarray(x), 0.3)
    m2, s2 = js.marginal_prob(jnp.asarray(x), jnp.full(4, 0.3))
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(s1, s2)
    m3, s3 = ts.marginal_prob(torch.as_tensor(x), 0.3)
    np.testing.assert_allclose(to_np(s3), s1, rtol=1e-14)


@pytest.mark.parametrize("kind", list(KINDS))
def test_prior_logp_equals_scipy(kind, np_rng):
    js, ts = _pair(kind)
    z = np_rng.standard_normal((6, 2, 3)) * (50.0 if kind == "ve" else 1.0)
    var = 50.0**2 if kind == "ve" else 1.0
    expected = scipy.stats.multivariate_normal(np.zeros(6), var * np.eye(6)).logpdf(z.reshape(6, -1))
    np.testing.assert_allclose(to_np(js.prior_logp(jnp.asarray(z))), expected, rtol=1e-12)
    np.testing.assert_allclose(to_np(ts.prior_logp(torch.as_tensor(z))), expected, rtol=1e-12)


@pytest.mark.parametrize("kind", list(KINDS))
def test_prior_sampling_moments(kind):
    js, ts = _pair(kind)
    scale = 50.0 if kind == "ve" else 1.0
    xj = js.prior_sampling(jax.random.PRNGKey(0), (20000, 2), dtype=jnp.float64)
    xt = ts.prior_sampling((20000, 2), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for x in (to_np(xj), to_np(xt)):
        assert x.shape == (20000, 2)
        assert abs(x.mean()) < 5 * scale / np.sqrt(40000)
        assert abs(x.std() / scale - 1) < 0.02


@pytest.mark.parametrize("kind", list(KINDS))
def test_marginal_prob_matches_euler_maruyama_simulation(kind):
    """Simulate dx = f dt + g dw from x_0 = x0 with fine Euler-Maruyama steps; the
    empirical mean and std at t must match marginal_prob within Monte-Carlo error."""
    js, _ = _pair(kind)
    n, steps, t_end = 20000, 400, 0.6
    x0 = jnp.array([1.5, -0.5])
    dt = t_end / steps

    @jax.jit
    def simulate(key):
        x = jnp.broadcast_to(x0, (n, 2))

        def body(x, i):
            t = jnp.full((n,), i * dt)
            f, g = js.sde(x, t)
            z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            return x + f * dt + g[:, None] * jnp.sqrt(dt) * z, None

        x, _ = jax.lax.scan(body, x, jnp.arange(steps))
        return x

    x = np.asarray(simulate(jax.random.PRNGKey(1)))
    mean, std = js.marginal_prob(jnp.broadcast_to(x0, (1, 2)), jnp.array([t_end]))
    mean, std = np.asarray(mean)[0], float(std[0])
    se = std / np.sqrt(n)
    # 5 standard errors for the mean; 3% for the std (MC error ~0.5%, EM bias O(dt)).
    np.testing.assert_allclose(x.mean(0), mean, atol=5 * se + 2e-3 * np.abs(mean).max())
    np.testing.assert_allclose(x.std(0), std, rtol=0.03)


def test_discrete_index_official_semantics():
    js = jsde.VPSDE(N=1000)
    # t = i/N maps to index i-1 (truncation of t (N-1))
    i = np.arange(1, 1001)
    np.testing.assert_array_equal(np.asarray(js.discrete_index(jnp.asarray(i / 1000.0))), i - 1)
    # on the PC grid linspace(T, eps, N) with eps = 1/N, step i maps to index N-1-i
    grid = np.linspace(1.0, 1e-3, 1000)
    np.testing.assert_array_equal(np.asarray(js.discrete_index(jnp.asarray(grid))), 999 - np.arange(1000))
    np.testing.assert_array_equal(to_np(tsde.VPSDE().discrete_index(torch.as_tensor(grid))), 999 - np.arange(1000))


def test_ve_discretize_first_index_uses_sigma_min():
    js, ts = _pair("ve")
    x = jnp.zeros((2, 3))
    _, G = js.discretize(x, jnp.array([0.0, 0.0005]))
    np.testing.assert_allclose(np.asarray(G), [0.01, 0.01], rtol=1e-12)
    _, G = ts.discretize(torch.zeros(2, 3, dtype=torch.float64), torch.tensor([0.0, 0.0005], dtype=torch.float64))
    np.testing.assert_allclose(to_np(G), [0.01, 0.01], rtol=1e-12)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_sde_with_exact_score(kind, probability_flow, np_rng):
    js, ts = _pair(kind)
    mixture = gmm_oracle.demo_mixture()
    x, t = _inputs(np_rng, (7, 2), np.float64)
    t = np.clip(t, 0.05, 1.0)
    from jax_impl.gmm import score_fn_for_sde as jscore
    from torch_ref.gmm import score_fn_for_sde as tscore

    rj = js.reverse(jscore(js, mixture), probability_flow)
    rt = ts.reverse(tscore(ts, mixture), probability_flow)
    cfg = spec.VESDEConfig() if kind == "ve" else (spec.subVPSDEConfig() if kind == "subvp" else spec.VPSDEConfig())
    mean1, std = oracle.marginal_prob(cfg, np.ones_like(x), t)
    score = np.stack([mixture.perturbed(mean1[i, 0], std[i]).score(x[i:i + 1])[0] for i in range(len(x))])
    w = 0.5 if probability_flow else 1.0
    for method in ("sde", "discretize"):
        f, g = getattr(oracle, method)(cfg, x, t)
        expect_f = f - (g**2)[:, None] * score * w
        expect_g = np.zeros_like(g) if probability_flow else g
        for out in (getattr(rj, method)(jnp.asarray(x), jnp.asarray(t)),
                    getattr(rt, method)(torch.as_tensor(x), torch.as_tensor(t))):
            np.testing.assert_allclose(to_np(out[0]), expect_f, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(to_np(out[1]), expect_g, rtol=1e-12)
    assert rj.N == js.N and rj.T == 1.0 and rj.probability_flow is probability_flow


def test_sdes_are_jit_static_and_not_vp_subclasses():
    assert not isinstance(jsde.subVPSDE(), jsde.VPSDE)
    assert not isinstance(tsde.subVPSDE(), tsde.VPSDE)
    f = jax.jit(lambda s, x: s.marginal_prob(x, 0.5)[1], static_argnums=0)
    f(jsde.VPSDE(), jnp.ones((2, 2)))
    f(jsde.VPSDE(beta_min=0.1), jnp.ones((2, 2)))  # equal config: cache hit
    assert f._cache_size() == 1


@pytest.mark.parametrize("side", ["jax", "torch"])
def test_bad_input_errors(side):
    if side == "jax":
        s, arr = jsde.VPSDE(), jnp.asarray
    else:
        s, arr = tsde.VPSDE(), torch.as_tensor
    x = arr(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="batch mismatch"):
        s.marginal_prob(x, arr(np.full(3, 0.5)))
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\]"):
        s.sde(x, arr(np.full(4, 1.5)))
    with pytest.raises(ValueError, match=r"t must lie in"):
        s.discretize(x, arr(np.full(4, -0.1)))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        s.marginal_prob(arr(np.zeros((4, 2), np.int32)), arr(np.full(4, 0.5)))
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \[B\]"):
        s.marginal_prob(x, arr(np.full((4, 1), 0.5)))


def test_jit_contract_for_t_range():
    """Inside jit the values of t are unknown: the documented contract is t in [0, T]."""
    s = jsde.VPSDE()
    out = jax.jit(lambda x, t: s.marginal_prob(x, t)[1])(jnp.zeros((2, 2)), jnp.array([0.5, 0.7]))
    assert out.shape == (2,)
