"""Probability-flow likelihoods and bits/dim (``jax_impl/ode.py`` vs ``torch_ref/ode.py``).

Checks: the divergence (exact and Hutchinson) against a closed form; likelihood jax ==
torch (fixed-step: round-off; dopri5 and tsit5: solver tolerance); the exact-score
likelihood equals the mixture's exact log-density (tightly once the prior mismatch at T is
accounted for, and to < 1e-2 nats raw; on torch too with the hand-written tsit5, as its
bits/dim); Hutchinson's estimator is unbiased; bits/dim offsets (8 and 7)
against the closed-form density of dequantized data; grad w.r.t. score parameters vs
finite differences; argument errors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_impl import gmm as jgmm
from jax_impl import ode as jode
from jax_impl import sde as jsde
from parity_tests.helpers import to_np, tol
from spec.oracles import gmm as gmm_oracle
from spec.oracles import sde as osde
from torch_ref import gmm as tgmm
from torch_ref import ode as tode
from torch_ref import sde as tsde

MIX = gmm_oracle.demo_mixture()
# A VE SDE whose t = 0 perturbation (sigma_min) and prior mismatch (~|E x_0| / sigma_max)
# are small enough for the raw likelihood to be within 1e-2 nats of log p_0.
VE_TIGHT = dict(sigma_min=0.002, sigma_max=100.0)
KINDS = {
    "vp": (jsde.VPSDE, tsde.VPSDE, {}),
    "ve": (jsde.VESDE, tsde.VESDE, {}),
    "ve_tight": (jsde.VESDE, tsde.VESDE, VE_TIGHT),
    "subvp": (jsde.subVPSDE, tsde.subVPSDE, {}),
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP contention on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pair(kind):
    jcls, tcls, kw = KINDS[kind]
    return jcls(**kw), tcls(**kw)


def _perturbed(cfg, mixture, t):
    """The exact marginal p_t of ``mixture`` under ``cfg`` (numpy oracle)."""
    m, s = osde.marginal_prob(cfg, np.ones((1, 1)), np.array([t]))
    return mixture.perturbed(m[0, 0], s[0])


# ------------------------------------------------------------------ divergence


def test_divergence_closed_form_three_way(np_rng):
    """Gaussian data N(mu, s0^2 I) under VP: the drift is -beta/2 x + beta/2 (x - m mu) / v,
    v = m^2 s0^2 + std^2, so div = D beta/2 (1/v - 1) exactly (D = 2 here)."""
    mu, s0, t = np.array([0.7, -0.4]), 0.5, 0.3
    gauss = gmm_oracle.GaussianMixture(np.ones(1), mu[None], (s0**2 * np.eye(2))[None])
    js, ts = _pair("vp")
    x = np_rng.standard_normal((5, 2))
    m, s = osde.marginal_prob(js, np.ones((1, 1)), np.array([t]))
    beta = js.beta_min + t * (js.beta_max - js.beta_min)
    v = m[0, 0] ** 2 * s0**2 + s[0] ** 2
    expected = np.full(5, 2 * beta / 2 * (1 / v - 1))

    jfn = lambda y: jode.probability_flow_drift(js, jgmm.score_fn_for_sde(js, gauss), y, t)  # noqa: E731
    tfn = lambda y: tode.probability_flow_drift(ts, tgmm.score_fn_for_sde(ts, gauss), y, t)  # noqa: E731
    e = np_rng.standard_normal((5, 2))
    # exact and Hutchinson divergences in one jitted program (one compile)
    jdiv, jh = jax.jit(lambda y, e: (jode.exact_divergence(jfn, y)[1], jode.hutchinson_divergence(jfn, y, e)[1]))(
        jnp.asarray(x), jnp.asarray(e))
    _, tdiv = tode.exact_divergence(tfn, torch.as_tensor(x))
    np.testing.assert_allclose(to_np(jdiv), expected, rtol=1e-12)
    np.testing.assert_allclose(to_np(tdiv), expected, rtol=1e-12)
    _, th = tode.hutchinson_divergence(tfn, torch.as_tensor(x), torch.as_tensor(e))
    # isotropic Jacobian c I: e^T J e = c |e|^2
    np.testing.assert_allclose(to_np(jh), expected / 2 * np.sum(e**2, 1), rtol=1e-12)
    np.testing.assert_allclose(to_np(th), to_np(jh), rtol=1e-12)


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_divergence_is_unbiased(probe):
    """Mean of e^T J e over 4000 probes vs the exact trace, within 4 standard errors."""
    js = jsde.VPSDE()
    fn = lambda y: jode.probability_flow_drift(js, jgmm.score_fn_for_sde(js, MIX), y, 0.05)  # noqa: E731
    x = jnp.asarray(MIX.sample(np.random.default_rng(0), 3)[0])
    key = jax.random.PRNGKey(0)
    draw = jax.random.normal if probe == "gaussian" else jax.random.rademacher
    probes = draw(key, (4000,) + x.shape, x.dtype)
    est, exact = jax.jit(lambda probes, y: (jax.vmap(lambda e: jode.hutchinson_divergence(fn, y, e)[1])(probes),
                                            jode.exact_divergence(fn, y)[1]))(probes, x)
    est = np.asarray(est)
    se = est.std(0) / math.sqrt(len(est))
    assert np.all(np.abs(est.mean(0) - np.asarray(exact)) < 4 * se), (est.mean(0), exact, se)


# ------------------------------------------------------------------ parity


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_likelihood_parity_fixed_step_float64(kind, np_rng):
    js, ts = _pair(kind)
    jscore, tscore = jgmm.score_fn_for_sde(js, MIX), tgmm.score_fn_for_sde(ts, MIX)
    x = MIX.sample(np_rng, 6)[0]
    e = np_rng.standard_normal(x.shape)
    hutchinsons = (None, "gaussian")
    # both estimators in one jitted program (one compile)
    jouts = jax.jit(lambda x, e: [jode.likelihood(None, js, jscore, x, noise=None if h is None else e,
                                                  method="rk4", num_steps=8, hutchinson=h)
                                  for h in hutchinsons])(jnp.asarray(x), jnp.asarray(e))
    for hutchinson, (jl, jz, jn) in zip(hutchinsons, jouts):
        kw = dict(method="rk4", num_steps=8, hutchinson=hutchinson)
        tl, tz, tn = tode.likelihood(ts, tscore, torch.as_tensor(x),
                                     noise=None if hutchinson is None else torch.as_tensor(e), **kw)
        assert jl.shape == (6,) and jz.shape == x.shape and jn == tn == 32
        np.testing.assert_allclose(to_np(jl), to_np(tl), rtol=1e-10, atol=1e-10, err_msg=str(hutchinson))
        np.testing.assert_allclose(to_np(jz), to_np(tz), rtol=1e-10, atol=1e-12, err_msg=str(hutchinson))


def test_likelihood_parity_float32(np_rng):
    js, ts = _pair("vp")
    jscore, tscore = jgmm.score_fn_for_sde(js, MIX), tgmm.score_fn_for_sde(ts, MIX)
    x = MIX.sample(np_rng, 8)[0].astype(np.float32)
    jl, _, _ = jax.jit(lambda x: jode.likelihood(None, js, jscore, x, method="heun", num_steps=10))(
        jnp.asarray(x))
    tl, _, _ = tode.likelihood(ts, tscore, torch.as_tensor(x), method="heun", num_steps=10)
    assert jl.dtype == jnp.float32 and tl.dtype == torch.float32
    # 20 Jacobian evaluations in float32 (forward mode vs reverse mode): 10x the one-op table.
    t32 = tol(np.float32)
    np.testing.assert_allclose(to_np(jl), to_np(tl), rtol=10 * t32["rtol"], atol=10 * t32["atol"])


# ------------------------------------------------------------- exact answers


@pytest.mark.parametrize("kind", ["vp", "ve_tight", pytest.param("ve", marks=pytest.mark.slow)])
def test_likelihood_equals_exact_mixture_log_density(kind):
    """With the exact score the ODE transports p_T to p_eps exactly, so (Song et al. eq. 39)
      logp = log prior(z) + int div = log p_eps(x) + [log prior(z) - log p_T(z)]:
    after subtracting the prior-mismatch term (p_T is the mixture perturbed to T, not the
    prior) it must equal log p_eps(x) to the solver tolerance. Raw, it differs from
    log p_0(x) by that mismatch (VP: m(T) |E x_0| |z| ~ 4e-3 nats; VE: ~|E x_0| |z| /
    sigma_max) plus log p_eps - log p_0 (VP eps = 1e-5: std ~ 1e-3, ~2e-4 nats; VE: the
    t = 0 noise sigma_min, ~1.6e-2 nats for sigma_min = 0.01): within 1e-2 nats for VP and
    the VE with sigma_min = 0.002, sigma_max = 100; 2.5e-2 for score_sde's default VE.
    (``ve``, score_sde's default VE, is marked slow: the same code path and the same tight
    assertion run by default on ``ve_tight``, a VE with other sigmas.)"""
    js, _ = _pair(kind)
    score = jgmm.score_fn_for_sde(js, MIX)
    x = MIX.sample(np.random.default_rng(1), 32)[0]
    eps = 1e-5
    logp, z, _ = jax.jit(lambda x: jode.likelihood(None, js, score, x, rtol=1e-7, atol=1e-7,
                                                   eps=eps))(jnp.asarray(x))
    logp, z = np.asarray(logp), np.asarray(z)
    mismatch = osde.prior_logp(js, z) - _perturbed(js, MIX, 1.0).log_prob(z)
    exact_eps = _perturbed(js, MIX, eps).log_prob(x)
    np.testing.assert_allclose(logp - mismatch, exact_eps, rtol=0, atol=1e-4)
    raw_tol = 2.5e-2 if kind == "ve" else 1e-2
    assert np.abs(logp - MIX.log_prob(x)).max() < raw_tol


def test_likelihood_adaptive_jax_vs_torch_within_tolerance():
    """dopri5 and tsit5; the jax likelihoods of both in one jitted program (one compile),
    each with its own evaluation counter."""
    js, ts = _pair("vp")
    x = MIX.sample(np.random.default_rng(2), 16)[0]
    jscore, tscore = jgmm.score_fn_for_sde(js, MIX), tgmm.score_fn_for_sde(ts, MIX)
    methods = ("dopri5", "tsit5")
    calls = {m: [0, 0] for m in methods}

    def jcounted(method):
        def bump():
            calls[method][0] += 1

        def counted(y, t):
            jax.debug.callback(bump)  # runs once per evaluation of the augmented field
            return jscore(y, t)
        return counted

    def tcounted(method):
        def counted(y, t):
            calls[method][1] += 1
            return tscore(y, t)
        return counted

    kw = dict(rtol=1e-6, atol=1e-6)
    jouts = jax.jit(lambda x: {m: jode.likelihood(None, js, jcounted(m), x, method=m, **kw)
                               for m in methods})(jnp.asarray(x))
    jax.block_until_ready(jouts)
    jax.effects_barrier()
    exact = _perturbed(js, MIX, 1e-5).log_prob(x)
    for method in methods:
        jl, _, jn = jouts[method]
        tl, _, tn = tode.likelihood(ts, tcounted(method), torch.as_tensor(x), method=method, **kw)
        assert int(jn) == calls[method][0] and tn == calls[method][1], method  # true NFE on both sides
        # both within their global error (~100 x tol, see test_ode) of each other, and of the
        # exact p_eps up to the prior mismatch (< 1e-2, see above)
        np.testing.assert_allclose(to_np(jl), to_np(tl), rtol=0, atol=1e-4, err_msg=method)
        np.testing.assert_allclose(to_np(tl), exact, rtol=0, atol=1e-2, err_msg=method)


@pytest.mark.parametrize("kind", ["vp", "ve_tight"])
def test_torch_tsit5_likelihood_equals_exact_mixture_log_density(kind):
    """As ``test_likelihood_equals_exact_mixture_log_density`` on the torch side with the
    hand-written tsit5 (the augmented (x, logp) tuple state integrated eps -> T)."""
    _, ts = _pair(kind)
    x = MIX.sample(np.random.default_rng(1), 16)[0]
    eps = 1e-5
    logp, z, nfe = tode.likelihood(ts, tgmm.score_fn_for_sde(ts, MIX), torch.as_tensor(x),
                                   rtol=1e-7, atol=1e-7, eps=eps, method="tsit5")
    assert nfe > 0 and logp.dtype == z.dtype == torch.float64
    logp, z = to_np(logp), to_np(z)
    mismatch = osde.prior_logp(ts, z) - _perturbed(ts, MIX, 1.0).log_prob(z)
    np.testing.assert_allclose(logp - mismatch, _perturbed(ts, MIX, eps).log_prob(x),
                               rtol=0, atol=1e-4)
    assert np.abs(logp - MIX.log_prob(x)).max() < 1e-2


def test_hutchinson_likelihood_is_unbiased():
    """The trajectory of x does not depend on the probe, and the integrated estimate is
    linear in it: the mean of the Hutchinson likelihood over probes is the exact one (same
    solver, same grid), within Monte-Carlo error."""
    js = jsde.VPSDE()
    score = jgmm.score_fn_for_sde(js, MIX)
    x = jnp.asarray(MIX.sample(np.random.default_rng(3), 3)[0])
    kw = dict(method="rk4", num_steps=6)
    keys = jax.random.split(jax.random.PRNGKey(0), 256)
    # the exact and the vmapped Hutchinson likelihoods in one jitted program (one compile)
    (exact, z_exact, _), (est, z, _) = jax.jit(lambda x, keys: (
        jode.likelihood(None, js, score, x, **kw),
        jax.vmap(lambda k: jode.likelihood(k, js, score, x, hutchinson="rademacher", **kw))(keys)))(x, keys)
    est = np.asarray(est)
    np.testing.assert_allclose(np.asarray(z), np.broadcast_to(z_exact, z.shape), rtol=1e-12)
    assert est.std(0).min() > 0  # distinct probes per key
    se = est.std(0) / math.sqrt(len(est))
    assert np.all(np.abs(est.mean(0) - np.asarray(exact)) < 4 * se), (est.mean(0), exact, se)


# --------------------------------------------------------------- bits / dim

# Data: a 2-pixel "image" model whose density on the dequantized v in [0, 1)^2 is MIX_V;
# the same model for centred data y = 2 v - 1 is MIX_Y (the affine image).
MIX_V = gmm_oracle.GaussianMixture(
    np.array([0.6, 0.4]),
    np.array([[0.3, 0.6], [0.7, 0.4]]),
    np.array([np.eye(2) * 0.01, [[0.02, 0.005], [0.005, 0.01]]]),
)
MIX_Y = gmm_oracle.GaussianMixture(MIX_V.weights, 2 * MIX_V.means - 1, 4 * MIX_V.covs)


def _pixels(n, seed):
    rng = np.random.default_rng(seed)
    v, _ = MIX_V.sample(rng, n)
    k = np.clip(np.round(v * 255), 0, 255)
    return k, rng.uniform(size=k.shape)


@pytest.fixture(scope="module")
def bpd_offsets_runs():
    """{centered: (bpd, z)} for the uncentred and the centred data, one jitted program."""
    js = jsde.VPSDE()
    k, u = _pixels(24, seed=4)

    def run(u):
        out = {}
        for centered in (False, True):
            score = jgmm.score_fn_for_sde(js, MIX_Y if centered else MIX_V)
            x = jnp.asarray(2 * k / 255 - 1 if centered else k / 255)
            out[centered] = jode.bits_per_dim(None, js, score, x, centered=centered, noise={"dequantization": u},
                                              rtol=1e-7, atol=1e-7, eps=1e-5)[:2]
        return out

    return jax.jit(run)(jnp.asarray(u))


@pytest.mark.parametrize("centered", [False, True])
def test_bits_per_dim_offsets_against_closed_form(centered, bpd_offsets_runs):
    """bpd = -log p_y(y) / (D ln 2) + 8 - log2(a), a = 2 centred / 1 not (derivation in
    ``jax_impl.ode.bits_per_dim``). Both parametrisations describe the same density of v, so
    both must equal the closed form -log p_v((k + u)/256) / (D ln 2) + 8. Tightly once the
    prior mismatch and the eps-perturbation are accounted for; raw to 1.5e-2 bits (the VP
    prior mismatch of uncentred data with mean ~0.5: ~1.2e-2 nats over D = 2)."""
    js = jsde.VPSDE()
    mixture = MIX_Y if centered else MIX_V
    k, u = _pixels(24, seed=4)
    eps, D = 1e-5, 2
    bpd, z = (np.asarray(a) for a in bpd_offsets_runs[centered])
    v = (k + u) / 256
    y = 2 * v - 1 if centered else v
    offset = 7.0 if centered else 8.0
    mismatch = osde.prior_logp(js, z) - _perturbed(js, mixture, 1.0).log_prob(z)
    tight = -(_perturbed(js, mixture, eps).log_prob(y) + mismatch) / (D * math.log(2)) + offset
    np.testing.assert_allclose(bpd, tight, rtol=0, atol=1e-4)
    closed_form = -MIX_V.log_prob(v) / (D * math.log(2)) + 8.0
    assert np.abs(bpd - closed_form).max() < 1.5e-2


def test_bits_per_dim_parity_and_plumbing(np_rng):
    js, ts = _pair("vp")
    k, u = _pixels(6, seed=5)
    x = 2 * k / 255 - 1
    kw = dict(centered=True, method="rk4", num_steps=6)
    y = jnp.asarray(2 * (k + u) / 256 - 1)
    score = jgmm.score_fn_for_sde(js, MIX_Y)

    @jax.jit
    def all_jax(x, u, y, keys):
        """Given dequantization noise; none (x is the continuous y itself); drawn per key."""
        given = jode.bits_per_dim(None, js, score, x, noise={"dequantization": u}, **kw)
        logp = jode.likelihood(None, js, score, y, method="rk4", num_steps=6)[0]
        bpd = jode.bits_per_dim(None, js, score, y, centered=True, dequantize=False,
                                method="rk4", num_steps=6)[0]
        drawn = [jode.bits_per_dim(key, js, score, x, **kw)[0] for key in keys]
        return given, (logp, bpd), drawn

    (jb, _, jn), (jl, jb2), (b1, b2) = all_jax(jnp.asarray(x), jnp.asarray(u), y,
                                               [jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
    tb, _, tn = tode.bits_per_dim(ts, tgmm.score_fn_for_sde(ts, MIX_Y), torch.as_tensor(x),
                                  noise={"dequantization": torch.as_tensor(u)}, **kw)
    assert jn == tn == 24
    np.testing.assert_allclose(to_np(jb), to_np(tb), rtol=1e-10)
    # no dequantization: x is taken as the continuous y itself, same offset
    np.testing.assert_allclose(to_np(jb2), -to_np(jl) / (2 * math.log(2)) + 7.0, rtol=1e-12)
    np.testing.assert_allclose(to_np(jb2), to_np(jb), rtol=1e-12)
    # drawn dequantization noise: a key / generator path that runs and differs per key
    assert np.all(np.isfinite(to_np(b1))) and not np.allclose(to_np(b1), to_np(b2))
    g = torch.Generator().manual_seed(0)
    tb3, _, _ = tode.bits_per_dim(ts, tgmm.score_fn_for_sde(ts, MIX_Y), torch.as_tensor(x),
                                  generator=g, **kw)
    assert torch.isfinite(tb3).all()


def test_torch_tsit5_bits_per_dim_against_closed_form():
    """Torch tsit5 bits/dim of centred data vs the closed form (as the JAX test above)."""
    ts = tsde.VPSDE()
    k, u = _pixels(8, seed=4)
    x, eps, D = 2 * k / 255 - 1, 1e-5, 2
    bpd, z, _ = tode.bits_per_dim(ts, tgmm.score_fn_for_sde(ts, MIX_Y), torch.as_tensor(x),
                                  centered=True, noise={"dequantization": torch.as_tensor(u)}, rtol=1e-7, atol=1e-7,
                                  eps=eps, method="tsit5")
    bpd, z = to_np(bpd), to_np(z)
    y = 2 * (k + u) / 256 - 1
    mismatch = osde.prior_logp(ts, z) - _perturbed(ts, MIX_Y, 1.0).log_prob(z)
    tight = -(_perturbed(ts, MIX_Y, eps).log_prob(y) + mismatch) / (D * math.log(2)) + 7.0
    np.testing.assert_allclose(bpd, tight, rtol=0, atol=1e-4)


# ------------------------------------------------------------------- grad


def test_grad_of_log_likelihood_wrt_score_parameter():
    """d/dtheta of the mean log-likelihood (exact divergence, rk4 through lax.scan) for a
    score whose mixture means are scaled by theta, vs a central difference in float64."""
    js = jsde.VPSDE()
    x = jnp.asarray(MIX.sample(np.random.default_rng(6), 4)[0])

    def mean_logp(theta):
        def score_fn(y, t):
            mean, std = js.marginal_prob(jnp.ones_like(y), t)
            return jgmm.gmm_score(y, MIX.weights, theta * jnp.asarray(MIX.means), MIX.covs,
                                  mean[:, 0], std)
        return jnp.mean(jode.likelihood(None, js, score_fn, x, method="rk4", num_steps=8)[0])

    theta0, h = 1.1, 1e-4
    # the gradient and both function values in one jitted program (one compile)
    g, fp, fm = jax.jit(lambda th: (jax.grad(mean_logp)(th), mean_logp(th + h), mean_logp(th - h)))(
        jnp.float64(theta0))
    fd = (fp - fm) / (2 * h)
    assert abs(float(g)) > 1e-3  # a real dependence
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-6)  # FD truncation ~h^2


# ------------------------------------------------------------------- errors


def _never_called(x, t):
    raise AssertionError("score_fn must not be evaluated for invalid arguments")


@pytest.mark.parametrize("kwargs,match", [
    (dict(hutchinson="normal"), "valid choices: None, 'gaussian', 'rademacher'"),
    (dict(method="rk45"), "valid choices: 'euler', 'heun', 'rk4', 'dopri5', 'tsit5'"),
    (dict(rtol=0.0), "rtol must be > 0"),
    (dict(eps=0.0), r"eps must lie in the open interval \(0, T\)"),
    (dict(eps=1.5), r"eps must lie in the open interval \(0, T\)"),
    (dict(hutchinson="gaussian", noise=np.zeros((3, 2))), r"noise must have shape \(4, 2\)"),
    (dict(noise=np.zeros((4, 2))), "hutchinson is None"),
])
def test_likelihood_bad_arguments(kwargs, match):
    js, ts = _pair("vp")
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda x: jode.likelihood(jax.random.PRNGKey(0), js, _never_called, x, **kwargs))(
            jnp.asarray(x))
    tkw = {k: (torch.as_tensor(v) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=match):
        tode.likelihood(ts, _never_called, torch.as_tensor(x), **tkw)


def test_bits_per_dim_and_shape_errors():
    js, ts = _pair("vp")
    with pytest.raises(ValueError, match="x must have shape"):
        jode.likelihood(None, js, _never_called, jnp.zeros(4))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        jode.likelihood(None, js, _never_called, jnp.zeros((4, 2), jnp.int32))
    with pytest.raises(ValueError, match=r"x must lie in \[0.0, 1\]"):
        jode.bits_per_dim(jax.random.PRNGKey(0), js, _never_called, -jnp.ones((4, 2)))
    with pytest.raises(ValueError, match=r"x must lie in \[0.0, 1\]"):
        tode.bits_per_dim(ts, _never_called, -torch.ones((4, 2), dtype=torch.float64))
    with pytest.raises(ValueError, match=r"noise\['dequantization'\] must have shape \(4, 2\)"):
        jode.bits_per_dim(None, js, _never_called, jnp.zeros((4, 2)),
                          noise={"dequantization": jnp.zeros((2, 2))})
    with pytest.raises(ValueError, match="dequantize is False"):
        tode.bits_per_dim(ts, _never_called, torch.zeros((4, 2)), dequantize=False,
                          noise={"dequantization": torch.zeros((4, 2))})
    with pytest.raises(ValueError, match="num_levels must be >= 2"):
        jode.bits_per_dim(None, js, _never_called, jnp.zeros((4, 2)), num_levels=1)
