"""Predictor-corrector samplers: jax == torch == numpy float64 oracle per step and per
trajectory (shared numpy noise), the exact Gaussian-mixture law, NFE, compilation, vmap,
bad input."""

from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_impl import gmm as jgmm
from jax_impl import samplers as js
from jax_impl import sde as jsde
from parity_tests.helpers import to_np, tol
from spec import grids
from spec.oracles import gmm as gmm_oracle
from spec.oracles import sde as oracle
from torch_ref import gmm as tgmm
from torch_ref import samplers as ts
from torch_ref import sde as tsde

KINDS = {
    "vp": (jsde.VPSDE, tsde.VPSDE, dict(beta_min=0.1, beta_max=20.0)),
    "ve": (jsde.VESDE, tsde.VESDE, dict(sigma_min=0.01, sigma_max=10.0)),
    "subvp": (jsde.subVPSDE, tsde.subVPSDE, dict(beta_min=0.1, beta_max=20.0)),
}
# (predictor, probability_flow): every predictor, and the probability-flow variants.
PREDICTOR_MODES = [("euler_maruyama", False), ("euler_maruyama", True), ("reverse_diffusion", False),
                   ("reverse_diffusion", True), ("ancestral_sampling", False), ("none", False)]
IMG = (3, 2, 2, 2)  # NHWC-like: the samplers are elementwise in everything but the batch axis
MU, C = 0.3, 0.7  # isotropic Gaussian data N(MU, C^2 I) for the image-shaped tests


def make_pair(kind, N):
    jcls, tcls, kw = KINDS[kind]
    return jcls(N=N, **kw), tcls(N=N, **kw)


def j_pc(sde, score_fn, prior, pnoise=None, cnoise=None, **kw):
    """``pc_sample`` on pre-drawn noise: the prior noise z (``x_T = prior_from_noise(z)``)
    and the predictor / corrector step noise ``[N, ...]``."""
    prior = jnp.asarray(prior)
    return js.pc_sample(None, sde, score_fn, prior.shape, x_T=sde.prior_from_noise(prior),
                        noise={"predictor": pnoise, "corrector": cnoise}, **kw)


def t_pc(sde, score_fn, prior, pnoise=None, cnoise=None, **kw):
    """The torch twin of ``j_pc`` (numpy or tensor inputs)."""
    prior = torch.as_tensor(prior)
    noise = {k: None if v is None else torch.as_tensor(v)
             for k, v in (("predictor", pnoise), ("corrector", cnoise))}
    return ts.pc_sample(sde, score_fn, tuple(prior.shape), x_T=sde.prior_from_noise(prior),
                        noise=noise, **kw)


def supported(kind, predictor, probability_flow):
    if predictor == "ancestral_sampling":
        return kind != "subvp" and not probability_flow
    return True


# ------------------------------------------------------------------------ exact scores


def j_iso_score(sde):
    """Exact score of N(MU, C^2 I) perturbed by ``sde`` (any data rank), JAX."""
    def score_fn(x, t):
        a, s = sde.marginal_prob(jnp.ones_like(x), t)
        return -(x - a * MU) / (a**2 * C**2 + jsde.append_dims(s**2, x.ndim))
    return score_fn


def t_iso_score(sde):
    def score_fn(x, t):
        a, s = sde.marginal_prob(torch.ones_like(x), t)
        return -(x - a * MU) / (a**2 * C**2 + tsde.append_dims(s**2, x.ndim))
    return score_fn


def np_iso_score(cfg):
    def score_fn(x, t):
        a, s = oracle.marginal_prob(cfg, np.ones_like(x), t)
        return -(x - a * MU) / (a**2 * C**2 + oracle._bc(s**2, x))
    return score_fn


def np_gmm_score(cfg, mixture):
    def score_fn(x, t):
        out = np.empty_like(x)
        for b in range(len(x)):
            a, s = oracle.marginal_prob(cfg, np.ones((1, 1)), t[b : b + 1])
            out[b] = mixture.perturbed(float(a[0, 0]), float(np.ravel(s)[0])).score(x[b : b + 1])[0]
        return out
    return score_fn


# ------------------------------------------------------------------- numpy oracle steps


def _bc(c, x):
    return np.reshape(c, (-1,) + (1,) * (x.ndim - 1))


def np_predictor(name, cfg, score_fn, x, t, z, probability_flow):
    """float64 oracle of one predictor step: (x, x_mean)."""
    if name == "none":
        return x, x
    w = 0.5 if probability_flow else 1.0
    if name == "euler_maruyama":
        drift, g = oracle.sde(cfg, x, t)
        dt = -1.0 / cfg.N
        x_mean = x + (drift - _bc(g**2, x) * score_fn(x, t) * w) * dt
        g = 0.0 * g if probability_flow else g
        return x_mean + _bc(g, x) * np.sqrt(-dt) * z, x_mean
    if name == "reverse_diffusion":
        f, G = oracle.discretize(cfg, x, t)
        x_mean = x - (f - _bc(G**2, x) * score_fn(x, t) * w)
        G = 0.0 * G if probability_flow else G
        return x_mean + _bc(G, x) * z, x_mean
    assert name == "ancestral_sampling"
    i = (t * (cfg.N - 1)).astype(np.int64)
    score = score_fn(x, t)
    if isinstance(cfg, jsde.VESDE):
        sig = cfg.discrete_sigmas
        prev = np.where(i == 0, 0.0, sig[np.maximum(i - 1, 0)])
        x_mean = x + _bc(sig[i] ** 2 - prev**2, x) * score
        std = np.sqrt(prev**2 * (sig[i] ** 2 - prev**2) / sig[i] ** 2)
    else:
        beta = cfg.discrete_betas[i]
        x_mean = (x + _bc(beta, x) * score) / _bc(np.sqrt(1 - beta), x)
        std = np.sqrt(beta)
    return x_mean + _bc(std, x) * z, x_mean


def np_corrector(name, cfg, score_fn, x, t, z, snr):
    """float64 oracle of ``len(z)`` corrector steps: (x, x_mean)."""
    if name == "none":
        return x, x
    i = (t * (cfg.N - 1)).astype(np.int64)
    alpha = np.ones_like(t) if isinstance(cfg, jsde.VESDE) else 1.0 - cfg.discrete_betas[i]
    x_mean = x
    for zj in z:
        grad = score_fn(x, t)
        if name == "langevin":
            gn = np.mean(np.sqrt(np.sum(grad.reshape(len(x), -1) ** 2, axis=1)))
            nn = np.mean(np.sqrt(np.sum(zj.reshape(len(x), -1) ** 2, axis=1)))
            step = 2 * alpha * (snr * nn / gn) ** 2
        else:
            std = oracle.marginal_prob(cfg, x, t)[1]
            step = 2 * alpha * (snr * std) ** 2
        x_mean = x + _bc(step, x) * grad
        x = x_mean + _bc(np.sqrt(2 * step), x) * zj
    return x, x_mean


def np_pc_sample(cfg, score_fn, prior_noise, pred_noise, corr_noise, predictor, corrector,
                 probability_flow, snr, eps, denoise):
    x = prior_noise * (cfg.sigma_max if isinstance(cfg, jsde.VESDE) else 1.0)
    x_mean = x
    for k, t in enumerate(np.linspace(1.0, eps, cfg.N)):
        vec_t = np.full(len(x), t)
        x, x_mean = np_corrector(corrector, cfg, score_fn, x, vec_t, corr_noise[k], snr)
        x, x_mean = np_predictor(predictor, cfg, score_fn, x, vec_t, pred_noise[k], probability_flow)
    return x_mean if denoise else x


# ----------------------------------------------------------------------- per-step parity


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind,predictor,probability_flow", [
    (kind, p, pf) for kind in KINDS for p, pf in PREDICTOR_MODES if supported(kind, p, pf)])
def test_predictor_step_three_way(kind, predictor, probability_flow, dtype, np_rng):
    """One step, jax (jit) == torch == numpy float64 oracle, to the dtype's tolerance."""
    jsd, tsd = make_pair(kind, 50)
    x = np_rng.standard_normal(IMG)
    z = np_rng.standard_normal(IMG)
    # A spread of times, including t = 1, a t in the first interval (index 0) and t = 0.
    t = np.array([1.0, 0.01, 0.0]) if kind != "ve" else np.array([1.0, 0.37, 0.0])
    jp = js.get_predictor(predictor, probability_flow=probability_flow)
    tp = ts.get_predictor(predictor, probability_flow=probability_flow)
    args = [a.astype(dtype) for a in (x, t, z)]
    j_out = jax.jit(lambda x, t, z: jp.step(jsd, j_iso_score(jsd), x, t, z))(*args)
    t_out = tp.step(tsd, t_iso_score(tsd), *(torch.as_tensor(a) for a in args))
    o_out = np_predictor(predictor, jsd, np_iso_score(jsd), *(a.astype(np.float64) for a in args),
                         probability_flow)
    for a, b, c in zip(j_out, t_out, o_out):
        assert to_np(a).dtype == to_np(b).dtype == dtype
        np.testing.assert_allclose(to_np(a), to_np(b), **tol(dtype))
        np.testing.assert_allclose(to_np(a), c, **tol(dtype))
    if predictor != "none":
        assert not np.allclose(to_np(j_out[1]), x)  # the step moved


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("corrector", ["langevin", "ald"])
def test_corrector_step_three_way(kind, corrector, dtype, np_rng):
    jsd, tsd = make_pair(kind, 50)
    x = np_rng.standard_normal(IMG)
    z = np_rng.standard_normal((2, *IMG))
    t = np.full(IMG[0], 0.41)
    jc = js.get_corrector(corrector, snr=0.2, n_steps=2)
    tc = ts.get_corrector(corrector, snr=0.2, n_steps=2)
    args = [a.astype(dtype) for a in (x, t, z)]
    j_out = jax.jit(lambda x, t, z: jc.step(jsd, j_iso_score(jsd), x, t, z))(*args)
    t_out = tc.step(tsd, t_iso_score(tsd), *(torch.as_tensor(a) for a in args))
    o_out = np_corrector(corrector, jsd, np_iso_score(jsd), *(a.astype(np.float64) for a in args), 0.2)
    for a, b, c in zip(j_out, t_out, o_out):
        assert to_np(a).dtype == to_np(b).dtype == dtype
        np.testing.assert_allclose(to_np(a), to_np(b), **tol(dtype))
        np.testing.assert_allclose(to_np(a), c, **tol(dtype))


def test_langevin_step_size_is_snr_rule_with_batch_mean_norms(np_rng):
    """eps = 2 alpha (snr mean||z|| / mean||g||)^2: with the exact score of N(0, I) under VE
    (score = -x / (1 + sigma^2)), x_mean - x = eps * score recovers eps in closed form."""
    jsd = jsde.VESDE(sigma_min=0.5, sigma_max=2.0, N=10)
    x = np_rng.standard_normal((5, 3))
    z = np_rng.standard_normal((1, 5, 3))
    t = np.full(5, 0.5)
    var = 1.0 + jsd.marginal_prob(x, t)[1][0] ** 2
    score = -x / var
    _, x_mean = js.LangevinCorrector(snr=0.3).step(jsd, lambda x, t: -x / var, x, t, z)
    expected = 2 * (0.3 * np.linalg.norm(z[0], axis=1).mean() / np.linalg.norm(score, axis=1).mean()) ** 2
    np.testing.assert_allclose(to_np(x_mean) - x, expected * score, rtol=1e-12)


# ------------------------------------------------------------------ trajectory parity

COMBOS = [(p, pf, c) for (p, pf), c in itertools.product(PREDICTOR_MODES, ["langevin", "ald", "none"])]


def _noise(np_rng, N, shape, n_steps=1):
    return (np_rng.standard_normal(shape), np_rng.standard_normal((N, *shape)),
            np_rng.standard_normal((N, n_steps, *shape)))


@pytest.mark.parametrize("predictor,probability_flow,corrector", COMBOS)
def test_pc_trajectory_three_way_float64(predictor, probability_flow, corrector, np_rng):
    """Every predictor x corrector combination, 25 PC steps, shared numpy noise: jax (jit)
    == torch == numpy oracle in float64 near round-off. The SDE rotates with the combo so
    VE, VP and sub-VP all run every corrector."""
    p_idx = PREDICTOR_MODES.index((predictor, probability_flow))
    kind = ["vp", "ve", "subvp"][(p_idx + ["langevin", "ald", "none"].index(corrector)) % 3]
    if not supported(kind, predictor, probability_flow):
        kind = "vp"
    N, snr, eps, n_steps = 25, 0.16, 1e-2, 2  # N >= 21: VP's discrete betas < 1
    jsd, tsd = make_pair(kind, N)
    prior, pnoise, cnoise = _noise(np_rng, N, IMG, n_steps)
    kw = dict(predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
              probability_flow=probability_flow, eps=eps)

    for denoise in (True, False) if corrector == "langevin" else (True,):
        kw = {**kw, "denoise": denoise}
        run = jax.jit(lambda *a, kw=kw: j_pc(jsd, j_iso_score(jsd), *a, **kw))
        j_x, j_nfe = run(prior, pnoise, cnoise)
        t_x, t_nfe = t_pc(tsd, t_iso_score(tsd), *map(torch.as_tensor, (prior, pnoise, cnoise)), **kw)
        o_x = np_pc_sample(jsd, np_iso_score(jsd), prior, pnoise, cnoise, predictor, corrector,
                           probability_flow, snr, eps, denoise)
        np.testing.assert_allclose(to_np(j_x), to_np(t_x), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(to_np(j_x), o_x, rtol=1e-9, atol=1e-11)
        expected_nfe = N * ((predictor != "none") + (corrector != "none") * n_steps)
        assert int(j_nfe) == t_nfe == expected_nfe


@pytest.mark.parametrize("kind", list(KINDS))
def test_pc_trajectory_gmm_three_way_float64(kind, np_rng):
    """The exact (non-linear) mixture score on 2-D points, default sampler, 25 steps."""
    mix = gmm_oracle.demo_mixture()
    N = 25
    jsd, tsd = make_pair(kind, N)
    prior, pnoise, cnoise = _noise(np_rng, N, (6, 2))
    j_x, _ = jax.jit(lambda *a: j_pc(jsd, jgmm.score_fn_for_sde(jsd, mix), *a))(
        prior, pnoise, cnoise)
    t_x, _ = t_pc(tsd, tgmm.score_fn_for_sde(tsd, mix), *map(torch.as_tensor, (prior, pnoise, cnoise)))
    eps = grids.default_pc_eps(jsd)
    o_x = np_pc_sample(jsd, np_gmm_score(jsd, mix), prior, pnoise, cnoise, "reverse_diffusion",
                       "langevin", False, 0.16, eps, True)
    np.testing.assert_allclose(to_np(j_x), to_np(t_x), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(to_np(j_x), o_x, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("kind,predictor,corrector", [
    ("vp", "reverse_diffusion", "langevin"), ("ve", "ancestral_sampling", "ald"),
    ("subvp", "euler_maruyama", "langevin"),
])
def test_pc_trajectory_float32(kind, predictor, corrector, np_rng):
    """float32, 25 steps: jax and torch agree to float32 round-off accumulated over the
    trajectory (rtol 1e-4: 25 steps x a few ulp each), and both stay within 1e-3 of the
    float64 oracle."""
    N = 25
    jsd, tsd = make_pair(kind, N)
    prior, pnoise, cnoise = (a.astype(np.float32) for a in _noise(np_rng, N, IMG))
    kw = dict(predictor=predictor, corrector=corrector)
    j_x, _ = jax.jit(lambda *a: j_pc(jsd, j_iso_score(jsd), *a, **kw))(prior, pnoise, cnoise)
    t_x, _ = t_pc(tsd, t_iso_score(tsd), *map(torch.as_tensor, (prior, pnoise, cnoise)), **kw)
    assert to_np(j_x).dtype == np.float32 and to_np(t_x).dtype == np.float32
    np.testing.assert_allclose(to_np(j_x), to_np(t_x), rtol=1e-4, atol=1e-5)
    o_x = np_pc_sample(jsd, np_iso_score(jsd), *(a.astype(np.float64) for a in (prior, pnoise, cnoise)),
                       predictor, corrector, False, 0.16, grids.default_pc_eps(jsd), True)
    np.testing.assert_allclose(to_np(j_x), o_x, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------ correctness vs exact GMM

_REFERENCE = {}


def _reference_stats(mixture):
    """Moments of the statistics under the exact mixture, from 400k exact draws (numpy)."""
    key = id(mixture)
    if key not in _REFERENCE:
        x, _ = mixture.sample(np.random.default_rng(123), 400_000)
        _REFERENCE[key] = _stats(mixture, x)
    return _REFERENCE[key]


def _stats(mixture, x):
    """Per-sample statistics whose means are the mixture's mean, second moments, component
    weights and expected log-density (sensitive to each component's width): columns
    ``[x_1..x_D, (x-mu)_i (x-mu)_j (i<=j), r_1..r_K, log p(x)]``."""
    d = x - mixture.mean
    iu = np.triu_indices(x.shape[1])
    prods = (d[:, :, None] * d[:, None, :])[:, iu[0], iu[1]]
    return np.concatenate([x, prods, mixture.responsibilities(x), mixture.log_prob(x)[:, None]], axis=1)


def mixture_z_scores(x, mixture):
    """z-scores of the sample's mean, covariance entries and mean responsibilities against
    the exact mixture: (sample mean - exact) / (exact std / sqrt(n))."""
    x = np.asarray(x, np.float64)
    ref = _reference_stats(mixture)
    stats = _stats(mixture, x)
    se = ref.std(axis=0) / np.sqrt(len(x))
    return (stats.mean(axis=0) - ref.mean(axis=0)) / se


def assert_matches_mixture(x, mixture, *, max_z=4.5):
    """Every statistic within ``max_z`` standard errors. With ~11 statistics of one fixed
    seed, |z| > 4.5 under an exact sampler has probability < 1e-4; a sampler bias of 1/4 of
    a component's std moves the weights or means by >> 5 SE at n = 3000."""
    z = mixture_z_scores(x, mixture)
    assert np.all(np.isfinite(z)), z
    assert np.max(np.abs(z)) < max_z, f"z-scores vs the exact mixture: {np.round(z, 2)}"


@pytest.mark.parametrize("kind,predictor,corrector,probability_flow,N", [
    ("vp", "reverse_diffusion", "langevin", False, 200),
    ("ve", "reverse_diffusion", "langevin", False, 200),
    ("vp", "euler_maruyama", "none", False, 200),
    ("ve", "ancestral_sampling", "none", False, 200),
    ("vp", "euler_maruyama", "none", True, 200),
    ("subvp", "euler_maruyama", "langevin", True, 200),
])
def test_pc_samples_exact_mixture(kind, predictor, corrector, probability_flow, N):
    """Fed the exact score, the sampler reproduces the demo mixture (3000 2-D samples,
    JAX float32 under jit): mean, covariance and component weights within MC error.
    N = 200 keeps the discretisation bias well under the MC error at this sample size.
    (Measured, 4000 samples: reverse_diffusion with probability_flow has a first-order
    bias in the covariance -- z = 11.6, 6.4, 3.7 at N = 100, 200, 500 on VP -- so the
    probability-flow cases here use the Euler step, whose z-scores stay < 2 from N = 100.)"""
    mix = gmm_oracle.demo_mixture()
    jsd, _ = make_pair(kind, N)
    sf = jgmm.score_fn_for_sde(jsd, mix)
    run = jax.jit(lambda key: js.pc_sample(key, jsd, sf, (3000, 2), predictor=predictor,
                                           corrector=corrector, probability_flow=probability_flow))
    x, nfe = run(jax.random.PRNGKey(1))
    assert x.dtype == jnp.float32
    assert int(nfe) == N * ((predictor != "none") + (corrector != "none"))
    assert_matches_mixture(x, mix)


def test_exact_sample_passes_and_biased_sample_fails():
    """The acceptance test itself: an exact sample passes; samples 5% too wide, with
    components blurred by N(0, 0.08^2 I) (+10-30% variance) or weights off by 0.05 fail."""
    mix = gmm_oracle.demo_mixture()
    x, _ = mix.sample(np.random.default_rng(7), 3000)
    assert_matches_mixture(x, mix)
    with pytest.raises(AssertionError):
        assert_matches_mixture(x * 1.05, mix)  # 5% too wide
    with pytest.raises(AssertionError):
        assert_matches_mixture(mix.perturbed(1.0, 0.08).sample(np.random.default_rng(7), 3000)[0], mix)
    reweighted = gmm_oracle.GaussianMixture(np.array([0.45, 0.35, 0.2]), mix.means, mix.covs)
    with pytest.raises(AssertionError):
        assert_matches_mixture(reweighted.sample(np.random.default_rng(7), 3000)[0], mix)


# ------------------------------------------------------------ NFE, jit, vmap, generator


def test_nfe_counts_true_evaluations(np_rng):
    """NFE equals the number of score calls (counted in torch, and in JAX at run time
    through a debug callback), not score_sde's N (n_steps + 1)."""
    for predictor, corrector, n_steps in [("reverse_diffusion", "langevin", 2), ("none", "ald", 3),
                                          ("euler_maruyama", "none", 1)]:
        jsd, tsd = make_pair("ve", 5)
        calls = {"torch": 0, "jax": 0}
        base_t = t_iso_score(tsd)

        def t_score(x, t):
            calls["torch"] += 1
            return base_t(x, t)

        def j_score(x, t, base=j_iso_score(jsd)):
            jax.debug.callback(lambda: calls.__setitem__("jax", calls["jax"] + 1))
            return base(x, t)

        kw = dict(predictor=predictor, corrector=corrector, n_steps=n_steps)
        _, t_nfe = ts.pc_sample(tsd, t_score, (2, 3), generator=torch.Generator().manual_seed(0), **kw)
        x, j_nfe = jax.jit(lambda k: js.pc_sample(k, jsd, j_score, (2, 3), **kw))(jax.random.PRNGKey(0))
        jax.block_until_ready(x)
        jax.effects_barrier()
        expected = 5 * ((predictor != "none") + (corrector != "none") * n_steps)
        assert t_nfe == calls["torch"] == int(j_nfe) == calls["jax"] == expected


def test_no_recompilation_when_key_or_params_change():
    """Changing the key or the arrays the score closes over (network params) reuses the
    compiled program: one trace, one cache entry."""
    jsd, _ = make_pair("vp", 25)  # the discrete VP steps need N > beta_max = 20
    traces = []

    weights, covs = np.array([0.5, 0.5]), np.stack([np.eye(2)] * 2) * 0.1

    def sample(key, means):
        traces.append(1)  # runs only while tracing

        def score_fn(x, t):
            a, s = jsd.marginal_prob(jnp.ones_like(x), t)
            return jgmm.gmm_score(x, weights, means, covs, a[:, 0], s)

        return js.pc_sample(key, jsd, score_fn, (4, 2))[0]

    f = jax.jit(sample)
    means = jnp.array([[-1.0, 0.0], [1.0, 0.0]])
    a = f(jax.random.PRNGKey(0), means)
    b = f(jax.random.PRNGKey(1), means)
    c = f(jax.random.PRNGKey(1), means + 0.5)
    assert len(traces) == 1 and f._cache_size() == 1
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(c))
    assert not np.allclose(a, b) and not np.allclose(b, c)


def test_vmap_over_keys_matches_separate_calls():
    jsd, _ = make_pair("ve", 5)
    sf = j_iso_score(jsd)
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    one = lambda k: js.pc_sample(k, jsd, sf, (4, 2), n_steps=2, dtype=jnp.float64)[0]  # noqa: E731
    batched = jax.jit(jax.vmap(one))(keys)
    separate = jnp.stack([jax.jit(one)(k) for k in keys])
    np.testing.assert_allclose(batched, separate, rtol=1e-12, atol=1e-12)
    assert batched.shape == (3, 4, 2)


def test_key_and_generator_drivers_are_reproducible():
    jsd, tsd = make_pair("vp", 25)
    f = jax.jit(lambda k: js.pc_sample(k, jsd, j_iso_score(jsd), (3, 2))[0])
    np.testing.assert_array_equal(f(jax.random.PRNGKey(0)), f(jax.random.PRNGKey(0)))
    assert not np.allclose(f(jax.random.PRNGKey(0)), f(jax.random.PRNGKey(1)))
    g = lambda s: ts.pc_sample(tsd, t_iso_score(tsd), (3, 2), generator=torch.Generator().manual_seed(s))[0]  # noqa: E731
    torch.testing.assert_close(g(0), g(0), rtol=0, atol=0)
    assert g(0).dtype == torch.float32 and not torch.allclose(g(0), g(1))


def test_steps_compose_by_hand(np_rng):
    """Users can combine step functions: a hand-written loop of corrector + predictor steps
    reproduces pc_sample on the same pre-drawn noise."""
    jsd, _ = make_pair("ve", 5)
    sf = j_iso_score(jsd)
    prior, pnoise, cnoise = _noise(np_rng, 5, (3, 2))
    pred, corr = js.get_predictor("reverse_diffusion"), js.get_corrector("langevin")
    pstep = jax.jit(lambda x, t, z: pred.step(jsd, sf, x, t, z))
    cstep = jax.jit(lambda x, t, z: corr.step(jsd, sf, x, t, z))
    x = jsd.prior_from_noise(jnp.asarray(prior))
    for i, t in enumerate(grids.pc_timesteps(5, 1e-5)):
        vec_t = jnp.full((3,), t)
        x, _ = cstep(x, vec_t, cnoise[i])
        x, x_mean = pstep(x, vec_t, pnoise[i])
    out, _ = j_pc(jsd, sf, prior, pnoise, cnoise)
    np.testing.assert_allclose(out, x_mean, rtol=1e-13)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("side", ["jax", "torch"])
def test_bad_input_errors_raise_before_any_evaluation(side):
    mod, (jsd, tsd) = (js if side == "jax" else ts), make_pair("vp", 25)
    sd = jsd if side == "jax" else tsd
    sub = make_pair("subvp", 5)[0 if side == "jax" else 1]
    called = []

    def score_fn(x, t):
        called.append(1)
        return -x

    def run(sde=sd, shape=(2, 3), **kw):
        if side == "jax":
            return jax.jit(lambda k: mod.pc_sample(k, sde, score_fn, shape, **kw))(jax.random.PRNGKey(0))
        return mod.pc_sample(sde, score_fn, shape, **kw)

    cases = [
        (dict(predictor="heun"), ValueError, "valid choices: 'euler_maruyama', 'reverse_diffusion'"),
        (dict(corrector="hmc"), ValueError, "unknown corrector 'hmc'; valid choices: 'langevin', 'ald', 'none'"),
        (dict(snr=0.0), ValueError, "snr must be > 0"),
        (dict(snr=-0.1), ValueError, "snr must be > 0"),
        (dict(n_steps=0), ValueError, "n_steps must be >= 1"),
        (dict(eps=0.0), ValueError, "eps must lie in the open interval"),
        (dict(eps=1.0), ValueError, "eps must lie in the open interval"),
        (dict(eps=-1e-3), ValueError, "eps must lie in the open interval"),
        (dict(shape=()), ValueError, "shape must have at least the batch axis"),
        (dict(shape=(0, 2)), ValueError, "shape[0] must be >= 1"),
        (dict(shape=(2.5, 2)), TypeError, "shape[0] must be an integer"),
        (dict(sde=sub, predictor="ancestral_sampling"), ValueError, "supports VESDE and VPSDE only"),
        (dict(predictor="ancestral_sampling", probability_flow=True), ValueError, "no probability-flow form"),
        (dict(sde="vp"), TypeError, "sde must be"),
        (dict(predictor=3), TypeError, "predictor must be a name"),
        (dict(dtype=jnp.int32 if side == "jax" else torch.int32), TypeError, "dtype must be a floating"),
    ]
    for kw, err, msg in cases:
        with pytest.raises(err, match=msg.replace("[", r"\[").replace("(", r"\(")):
            run(**kw)
    assert not called  # every error came before the first score evaluation / compilation


@pytest.mark.parametrize("side", ["jax", "torch"])
def test_predrawn_noise_shape_errors(side, np_rng):
    mod, (jsd, tsd) = (js if side == "jax" else ts), make_pair("vp", 25)
    sd = jsd if side == "jax" else tsd
    conv = jnp.asarray if side == "jax" else torch.as_tensor
    prior, pnoise, cnoise = (conv(a) for a in _noise(np_rng, 25, (3, 2)))
    sf = lambda x, t: -x  # noqa: E731
    run = j_pc if side == "jax" else t_pc
    with pytest.raises(ValueError, match=r"noise\['predictor'\] must have shape"):
        run(sd, sf, prior, pnoise[:3], cnoise)
    with pytest.raises(ValueError, match=r"noise\['corrector'\] must have shape"):
        run(sd, sf, prior, pnoise, cnoise, n_steps=2)
    with pytest.raises(ValueError, match=r"noise\['corrector'\] is required"):
        run(sd, sf, prior, pnoise, None)
    # Unused noise may be omitted: deterministic predictor, no corrector.
    out, nfe = run(sd, sf, prior, None, None, corrector="none", probability_flow=True)
    assert tuple(out.shape) == (3, 2) and nfe == 25
    # The same without any noise dict and without a key: nothing is random after x_T.
    x_T = sd.prior_from_noise(prior)
    out2, _ = (mod.pc_sample(None, sd, sf, (3, 2), x_T=x_T, corrector="none", probability_flow=True)
               if side == "jax" else
               mod.pc_sample(sd, sf, (3, 2), x_T=x_T, corrector="none", probability_flow=True))
    np.testing.assert_array_equal(to_np(out2), to_np(out))


def test_grid_is_official_linspace():
    np.testing.assert_array_equal(grids.pc_timesteps(5, 1e-3), np.linspace(1.0, 1e-3, 5))
    assert grids.default_pc_eps(jsde.VESDE()) == 1e-5
    assert grids.default_pc_eps(tsde.VPSDE()) == grids.default_pc_eps(jsde.subVPSDE()) == 1e-3
    # score_sde's index int(t (N-1)/T) on this grid: step i -> N-1-i (away from round-off).
    N = 50
    idx = (grids.pc_timesteps(N, 1e-3) * (N - 1)).astype(int)
    np.testing.assert_array_equal(idx[:-1], np.arange(N - 1, 0, -1))


def test_samplers_module_re_exports_every_sampler():
    """``samplers`` is the public entry module: the discrete, ODE and fast samplers of the
    other modules are re-exported (same objects), on both sides."""
    import importlib

    for side, mod in (("jax_impl", js), ("torch_ref", ts)):
        for module, names in (("samplers_discrete", ("ddpm_sample", "ddim_sample", "ddim_invert")),
                              ("fast_samplers", ("edm_heun_sample", "dpm_solver_pp_sample")),
                              ("ode", ("ode_sample",))):
            try:
                other = importlib.import_module(f"{side}.{module}")
            except ModuleNotFoundError:
                continue
            for name in names:
                assert getattr(mod, name) is getattr(other, name) and name in mod.__all__
        for name in mod.__all__:
            assert hasattr(mod, name)


_SHARDING_SCRIPT = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
from jax.sharding import NamedSharding, PartitionSpec as P
from jax_impl import samplers, sde
assert len(jax.devices()) == 2
vp = sde.VPSDE(N=25)
def score(x, t):
    a, s = vp.marginal_prob(x * 0 + 1, t)
    return -(x - 0.3 * a) / (0.49 * a**2 + s[:, None] ** 2)
rng = np.random.default_rng(0)
prior, pn, cn = rng.standard_normal((8, 2)), rng.standard_normal((25, 8, 2)), rng.standard_normal((25, 1, 8, 2))
f = jax.jit(lambda a, b, c: samplers.pc_sample(None, vp, score, a.shape, x_T=a,
                                                noise={"predictor": b, "corrector": c})[0])
mesh = jax.make_mesh((2,), ("data",))
put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
one = np.asarray(f(prior, pn, cn))
two = f(put(prior, P("data")), put(pn, P(None, "data")), put(cn, P(None, None, "data")))
assert len(two.sharding.device_set) == 2
print(float(np.max(np.abs(np.asarray(two) - one))))
"""


def test_langevin_batch_norms_are_global_under_sharding():
    """The Langevin step size uses batch-mean norms over the GLOBAL batch: the same run
    with its batch sharded over 2 (host) devices gives the same samples (a per-shard mean
    would change every step). Runs in a subprocess, which needs its own XLA flags."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", _SHARDING_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < 1e-12
