"""EDM Heun and DPM-Solver++(2M) (``jax_impl/fast_samplers.py`` vs ``torch_ref/fast_samplers.py``).

Checks: the sigma <-> t maps against the numpy SDE oracle; both samplers jax == torch ==
an independent float64 numpy implementation written here (k-diffusion's loop structure,
t(sigma) by root finding); the exact-score samples reproduce the Gaussian mixture in
20-24 steps; convergence (order 2) to the closed-form probability-flow solution of
Gaussian data; true NFE; jit / vmap; argument errors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import torch

from jax_impl import fast_samplers as jfs
from jax_impl import gmm as jgmm
from jax_impl import sde as jsde
from parity_tests.helpers import to_np, tol
from parity_tests.test_ode import assert_reproduces_mixture
from spec import schedules
from spec.oracles import gmm as gmm_oracle
from spec.oracles import sde as osde
from torch_ref import fast_samplers as tfs
from torch_ref import gmm as tgmm
from torch_ref import sde as tsde

MIX = gmm_oracle.demo_mixture()
KINDS = {
    "vp": (jsde.VPSDE, tsde.VPSDE),
    "ve": (jsde.VESDE, tsde.VESDE),
    "subvp": (jsde.subVPSDE, tsde.subVPSDE),
}
SAMPLERS = {
    "edm": ("edm_heun_sample", dict(num_steps=7)),
    "edm_churn": ("edm_heun_sample", dict(num_steps=7, S_churn=4.0, S_tmin=0.05, S_tmax=20.0,
                                          S_noise=1.007)),
    "dpm_logsnr": ("dpm_solver_pp_sample", dict(num_steps=7)),
    "dpm_karras": ("dpm_solver_pp_sample", dict(num_steps=7, grid="karras", rho=5.0)),
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP contention on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def j_start(sde, z):
    """The start ``x_T = x_hat_0 = sigma_max z`` with the default sigma_max = sigma(T),
    computed as the drivers do (in z's dtype); ``z`` a JAX array or tracer."""
    with jax.ensure_compile_time_eval():  # a constant, also when z is traced
        s_T = jfs.sigma_from_t(sde, jnp.asarray([0.0, sde.T, jfs.DEFAULT_T_MIN], z.dtype))[1]
    return float(s_T) * z


def t_start(sde, z):
    """The torch twin of ``j_start``."""
    s_T = tfs.sigma_from_t(sde, torch.tensor([0.0, sde.T, tfs.DEFAULT_T_MIN], dtype=z.dtype))[1]
    return float(s_T) * z


def _pair(kind):
    jcls, tcls = KINDS[kind]
    return jcls(), tcls()


# ------------------------------------------------------------------ numpy oracle


def _np_sigma(cfg, t):
    m, s = osde.marginal_prob(cfg, np.ones((1, 1)), np.array([t]))
    return s[0] / m[0, 0]


def _np_t(cfg, sigma):
    """t(sigma) by bracketing root finding on the oracle's sigma(t) (independent of the
    closed-form inverses under test)."""
    if sigma >= _np_sigma(cfg, 1.0):
        return 1.0
    return scipy.optimize.brentq(lambda t: _np_sigma(cfg, t) - sigma, 0.0, 1.0, xtol=1e-15,
                                 rtol=4 * np.finfo(float).eps)


def _np_denoiser(cfg, mixture, x_hat, sigma):
    t = _np_t(cfg, sigma)
    m, s = osde.marginal_prob(cfg, np.ones((1, 1)), np.array([t]))
    m, s = m[0, 0], s[0]
    x = m * x_hat
    return (x + s**2 * mixture.perturbed(m, s).score(x)) / m


def _np_edm(cfg, mixture, z, noise, *, num_steps, S_churn=0.0, S_tmin=0.0, S_tmax=np.inf,
            S_noise=1.0, rho=7.0):
    """Karras et al. 2022 Alg. 2 (Alg. 1 without churn) in float64 numpy."""
    s_T = _np_sigma(cfg, 1.0)
    sig = schedules.karras_sigmas(num_steps, _np_sigma(cfg, 1e-3), s_T, rho)
    x = sig[0] * z
    for i in range(num_steps):
        s, s_next = sig[i], sig[i + 1]
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_tmin <= s <= S_tmax else 0.0
        s_hat = min(s * (1 + gamma), s_T)
        if gamma > 0:
            x = x + math.sqrt(s_hat**2 - s**2) * S_noise * noise[i]
        d = (x - _np_denoiser(cfg, mixture, x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:
            d2 = (x_next - _np_denoiser(cfg, mixture, x_next, s_next)) / s_next
            x_next = x + (s_next - s_hat) * (d + d2) / 2
        x = x_next
    return x


def _np_dpmpp_2m(cfg, mixture, z, *, num_steps, grid="logsnr", rho=7.0):
    """DPM-Solver++(2M) in lambda = -log sigma, k-diffusion's loop, float64 numpy."""
    lo, hi = _np_sigma(cfg, 1e-3), _np_sigma(cfg, 1.0)
    if grid == "karras":
        sig = schedules.karras_sigmas(num_steps, lo, hi, rho)
    else:
        sig = np.append(np.exp(np.linspace(np.log(hi), np.log(lo), num_steps)), 0.0)
    x, old = sig[0] * z, None
    for i in range(num_steps):
        den = _np_denoiser(cfg, mixture, x, sig[i])
        if sig[i + 1] == 0:
            return den
        h = np.log(sig[i]) - np.log(sig[i + 1])
        if old is None:
            x = sig[i + 1] / sig[i] * x - np.expm1(-h) * den
        else:
            r = (np.log(sig[i - 1]) - np.log(sig[i])) / h
            x = sig[i + 1] / sig[i] * x - np.expm1(-h) * ((1 + 1 / (2 * r)) * den - old / (2 * r))
        old = den
    return x


def _np_sample(name, cfg, z, noise, kw):
    if name.startswith("edm"):
        return _np_edm(cfg, MIX, z, noise, **kw)
    return _np_dpmpp_2m(cfg, MIX, z, **kw)


# -------------------------------------------------------------------- sigma <-> t


@pytest.mark.parametrize("kind", list(KINDS))
def test_sigma_time_maps_three_way(kind):
    js, ts = _pair(kind)
    t = np.linspace(0.0, 1.0, 21)[1:]
    expected = np.array([_np_sigma(js, ti) for ti in t])
    js_sig = jax.jit(lambda t: jfs.sigma_from_t(js, t))(jnp.asarray(t))
    np.testing.assert_allclose(to_np(js_sig), expected, rtol=1e-12)
    np.testing.assert_allclose(to_np(tfs.sigma_from_t(ts, torch.as_tensor(t))), expected, rtol=1e-12)
    # closed-form inverses, round trip and against root finding
    np.testing.assert_allclose(to_np(jax.jit(lambda s: jfs.t_from_sigma(js, s))(js_sig)), t, rtol=1e-12)
    np.testing.assert_allclose(to_np(tfs.t_from_sigma(ts, torch.as_tensor(expected))), t, rtol=1e-12)
    np.testing.assert_allclose([_np_t(js, s) for s in expected[::5]], t[::5], rtol=1e-12)


# ------------------------------------------------------------------ parity


@pytest.mark.parametrize("kind,names", [
    ("vp", ("edm", "edm_churn", "dpm_logsnr", "dpm_karras")),
    ("ve", ("edm", "edm_churn", "dpm_logsnr", "dpm_karras")),
    ("subvp", ("edm", "dpm_logsnr")),
])
def test_three_way_float64(kind, names, np_rng):
    js, ts = _pair(kind)
    jscore, tscore = jgmm.score_fn_for_sde(js, MIX), tgmm.score_fn_for_sde(ts, MIX)
    z = np_rng.standard_normal((6, 2))
    noise = np_rng.standard_normal((7, 6, 2))
    for name in names:
        fn, kw = SAMPLERS[name]
        churn = "S_churn" in kw
        jkw = dict(kw, noise=jnp.asarray(noise)) if churn else kw
        tkw = dict(kw, noise=torch.as_tensor(noise)) if churn else kw
        xj, nj = jax.jit(lambda z: getattr(jfs, fn)(None, js, jscore, z.shape, x_T=j_start(js, z), **jkw))(
            jnp.asarray(z))
        xt, nt = getattr(tfs, fn)(ts, tscore, z.shape, x_T=t_start(ts, torch.as_tensor(z)), **tkw)
        xo = _np_sample(name, js, z, noise, kw)
        n = kw["num_steps"]
        assert nj == nt == (2 * n - 1 if fn == "edm_heun_sample" else n)
        np.testing.assert_allclose(to_np(xj), to_np(xt), rtol=1e-10, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(to_np(xj), xo, rtol=1e-9, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("name", ["edm_churn", "dpm_logsnr"])
def test_parity_float32(name, np_rng):
    js, ts = _pair("vp")
    jscore, tscore = jgmm.score_fn_for_sde(js, MIX), tgmm.score_fn_for_sde(ts, MIX)
    z = np_rng.standard_normal((16, 2)).astype(np.float32)
    noise = np_rng.standard_normal((7, 16, 2)).astype(np.float32)
    fn, kw = SAMPLERS[name]
    churn = "S_churn" in kw
    xj, _ = jax.jit(lambda z: getattr(jfs, fn)(
        None, js, jscore, z.shape, x_T=j_start(js, z), **(dict(kw, noise=jnp.asarray(noise)) if churn else kw)))(
        jnp.asarray(z))
    xt, _ = getattr(tfs, fn)(ts, tscore, z.shape, x_T=t_start(ts, torch.as_tensor(z)),
                             **(dict(kw, noise=torch.as_tensor(noise)) if churn else kw))
    assert xj.dtype == jnp.float32 and xt.dtype == torch.float32
    # ~13 float32 score evaluations (a Cholesky each) and sigma's from t(sigma) in float32:
    # 10x the one-op tolerance.
    t32 = tol(np.float32)
    np.testing.assert_allclose(to_np(xj), to_np(xt), rtol=10 * t32["rtol"], atol=10 * t32["atol"])


# ----------------------------------------------------------- exact answers


@pytest.mark.parametrize("kind,fn,kw", [
    ("vp", "edm_heun_sample", dict(num_steps=24)),
    ("ve", "edm_heun_sample", dict(num_steps=24, S_churn=8.0, S_tmin=0.05, S_tmax=10.0)),
    ("vp", "dpm_solver_pp_sample", dict(num_steps=20)),
    ("ve", "dpm_solver_pp_sample", dict(num_steps=24, grid="karras")),
])
def test_samples_reproduce_mixture(kind, fn, kw):
    js, _ = _pair(kind)
    score = jgmm.score_fn_for_sde(js, MIX)
    x, nfe = jax.jit(lambda key: getattr(jfs, fn)(key, js, score, (3000, 2), dtype=jnp.float64,
                                                  **kw))(jax.random.PRNGKey(2))
    assert_reproduces_mixture(x, MIX, what=f"{kind} {fn} {kw} (nfe {nfe})")


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_convergence_to_closed_form_ode_solution(kind):
    """Gaussian data N(mu, s0^2 I): in x_hat = x / m, p_sigma = N(mu, (s0^2 + sigma^2) I) and
    the ODE keeps (x_hat - mu) / sqrt(s0^2 + sigma^2) constant; the last step returns
    D(x_hat; sigma_min) = mu + s0^2 / (s0^2 + sigma_min^2) (x_hat - mu). So the exact output
    from x_hat_0 = sigma_max z is mu + s0^2 (sigma_max z - mu) / sqrt((s0^2 + sigma_min^2)
    (s0^2 + sigma_max^2)). Both samplers are second order: the error falls ~4x per
    doubling of the steps."""
    mu, s0 = np.array([0.7, -0.4]), 0.5
    gauss = gmm_oracle.GaussianMixture(np.ones(1), mu[None], (s0**2 * np.eye(2))[None])
    js, _ = _pair(kind)
    score = jgmm.score_fn_for_sde(js, gauss)
    z = np.random.default_rng(7).standard_normal((4, 2))
    s_min, s_max = _np_sigma(js, 1e-3), _np_sigma(js, 1.0)
    exact = mu + s0**2 * (s_max * z - mu) / np.sqrt((s0**2 + s_min**2) * (s0**2 + s_max**2))
    counts = (16, 32, 64)
    for fn in ("edm_heun_sample", "dpm_solver_pp_sample"):
        def run(z, fn=fn):
            return [getattr(jfs, fn)(None, js, score, z.shape, num_steps=n, x_T=j_start(js, z))[0] for n in counts]
        errs = np.array([np.abs(to_np(x) - exact).max() for x in jax.jit(run)(jnp.asarray(z))])
        orders = -np.diff(np.log(errs)) / math.log(2)
        assert np.all(orders > 1.7) and np.all(orders < 2.6), f"{kind} {fn}: {errs}, {orders}"
        assert errs[-1] < 5e-3


# ------------------------------------------------------------------ NFE / jit


def test_nfe_counts_true_evaluations(np_rng):
    js, ts = _pair("ve")
    jscore, tscore = jgmm.score_fn_for_sde(js, MIX), tgmm.score_fn_for_sde(ts, MIX)
    z = np_rng.standard_normal((4, 2))
    calls = [0]

    def bump():
        calls[0] += 1

    def counted(x, t):
        jax.debug.callback(bump)
        return jscore(x, t)

    tcalls = [0]

    def tcounted(x, t):
        tcalls[0] += 1
        return tscore(x, t)

    for fn, kw in (("edm_heun_sample", dict(num_steps=5)), ("dpm_solver_pp_sample", dict(num_steps=6))):
        calls[0] = tcalls[0] = 0
        x, nfe = jax.jit(lambda z: getattr(jfs, fn)(None, js, counted, z.shape, x_T=j_start(js, z), **kw))(
            jnp.asarray(z))
        jax.block_until_ready(x)
        jax.effects_barrier()
        _, tnfe = getattr(tfs, fn)(ts, tcounted, z.shape, x_T=t_start(ts, torch.as_tensor(z)), **kw)
        assert nfe == calls[0] == tnfe == tcalls[0], fn


def test_no_recompile_on_new_key_or_params_and_vmap():
    js = jsde.VPSDE()
    traces = []

    @jax.jit
    def run(key, theta):
        traces.append(None)

        def score_fn(x, t):
            mean, std = js.marginal_prob(jnp.ones_like(x), t)
            return jgmm.gmm_score(x, MIX.weights, theta * jnp.asarray(MIX.means), MIX.covs,
                                  mean[:, 0], std)

        return jfs.edm_heun_sample(key, js, score_fn, (8, 2), num_steps=4, S_churn=2.0,
                                   dtype=jnp.float64)[0]

    k1, k2 = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
    a, b, c = run(k1, jnp.float64(1.0)), run(k2, jnp.float64(1.0)), run(k1, jnp.float64(0.7))
    assert len(traces) == 1 and run._cache_size() == 1
    assert not np.allclose(a, b) and not np.allclose(a, c)
    stacked = jax.vmap(run, in_axes=(0, None))(jnp.stack([k1, k2]), jnp.float64(1.0))
    np.testing.assert_allclose(stacked, np.stack([a, b]), rtol=1e-12, atol=1e-12)
    # the torch driver draws from its generator: same seed, same samples
    ts = tsde.VPSDE()
    tscore = tgmm.score_fn_for_sde(ts, MIX)
    draws = [tfs.edm_heun_sample(ts, tscore, (8, 2), num_steps=3, S_churn=2.0,
                                 generator=torch.Generator().manual_seed(s))[0] for s in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


# ------------------------------------------------------------------- errors


def _never_called(x, t):
    raise AssertionError("score_fn must not be evaluated for invalid arguments")


@pytest.mark.parametrize("fn,kwargs,exc,match", [
    ("dpm_solver_pp_sample", dict(grid="uniform"), ValueError, "valid choices: 'logsnr', 'karras'"),
    ("edm_heun_sample", dict(num_steps=0), ValueError, "num_steps must be >= 1"),
    ("edm_heun_sample", dict(sigma_min=0.001), ValueError, r"sigma_min must be >= sigma\(0\)"),
    ("edm_heun_sample", dict(sigma_max=80.0), ValueError, r"sigma_max must be <= sigma\(T\)"),
    ("dpm_solver_pp_sample", dict(sigma_min=5.0, sigma_max=1.0), ValueError, "sigma_min must be < sigma_max"),
    ("edm_heun_sample", dict(S_churn=-1.0), ValueError, "S_churn must be >= 0"),
    ("edm_heun_sample", dict(rho=0.0), ValueError, "rho must be > 0"),
    ("edm_heun_sample", dict(x_T=np.zeros((3, 2))), ValueError, r"x_T must have shape \(4, 2\)"),
    ("edm_heun_sample", dict(S_churn=1.0, num_steps=3, noise=np.zeros((2, 4, 2))), ValueError,
     r"noise must have shape \(3, 4, 2\)"),
    ("edm_heun_sample", dict(noise=np.zeros((18, 4, 2))), ValueError, "only used with S_churn > 0"),
])
def test_bad_arguments_raise_before_compilation(fn, kwargs, exc, match):
    js, ts = jsde.VESDE(), tsde.VESDE()
    shape = (4, 2)
    with pytest.raises(exc, match=match):
        jax.jit(lambda key: getattr(jfs, fn)(key, js, _never_called, shape, **kwargs))(
            jax.random.PRNGKey(0))
    tkw = {k: (torch.as_tensor(v) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    with pytest.raises(exc, match=match):
        getattr(tfs, fn)(ts, _never_called, shape, **tkw)


def test_bad_sde_and_shape():
    with pytest.raises(TypeError, match="sde must be"):
        jfs.edm_heun_sample(jax.random.PRNGKey(0), tsde.VPSDE(), _never_called, (4, 2))
    with pytest.raises(TypeError, match="sde must be"):
        tfs.dpm_solver_pp_sample(jsde.VPSDE(), _never_called, (4, 2))
    with pytest.raises(ValueError, match="shape must be"):
        jfs.dpm_solver_pp_sample(jax.random.PRNGKey(0), jsde.VPSDE(), _never_called, (0, 2))
    with pytest.raises(TypeError, match="rng must be a jax.random key"):
        jfs.dpm_solver_pp_sample(None, jsde.VPSDE(), _never_called, (4, 2))
