"""Discrete Gaussian diffusion: jax_impl == torch_ref == float64 numpy oracle, plus
closed forms (Monte-Carlo moments, Bayes posterior, Gaussian KLs, exact-model bound).

Data is ``[B, L, C]`` on the JAX side (channel last) and ``[B, C, L]`` on the torch side
(channel axis 1), so the learned-variance split is checked across the two layouts.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import torch

import spec
from jax_impl import diffusion as jd
from jax_impl.utils import append_dims as jax_append_dims
from parity_tests.helpers import to_np, tol
from spec.configs import LossType, ModelMeanType, ModelVarType
from spec.oracles import diffusion as od
from torch_ref import diffusion as td
from torch_ref.utils import append_dims as torch_append_dims

B, L, C = 4, 3, 2
SCHEDULES = [  # (noise_schedule, timestep_respacing, rescale_timesteps)
    ("linear", "", False),
    ("linear", "5", True),
    ("cosine", "", True),
    ("cosine", "ddim5", False),
]
STEPS = 50  # linear betas reach 0.02 * 1000 / STEPS: keep them < 1
MEAN_TYPES = list(ModelMeanType)
VAR_TYPES = list(ModelVarType)
LOSS_TYPES = list(LossType)
F32_VS_F64 = dict(rtol=2e-4, atol=1e-6)  # a float32 computation against the float64 oracle
#: float32 reruns a covering subset of the mean x variance types (every mean type and every
#: variance type once; the float64 runs cover every pair): the float32 code path is the same.
F32_MEAN_VAR = [(MEAN_TYPES[i % len(MEAN_TYPES)], v) for i, v in enumerate(VAR_TYPES)]


def make_config(schedule="linear", respacing="", rescale=False, **kw) -> spec.DiffusionConfig:
    return spec.DiffusionConfig(
        steps=STEPS, noise_schedule=schedule, timestep_respacing=respacing,
        rescale_timesteps=rescale, **kw,
    )


def make_all(config):
    return jd.GaussianDiffusion(config), td.GaussianDiffusion(config), od.GaussianDiffusion(config)


# ------------------------------------------------------------------ layout helpers


def to_torch(a, dtype):
    """numpy ``[B, L, C]`` -> torch ``[B, C, L]`` (other ranks unchanged)."""
    a = np.asarray(a)
    if a.ndim == 3:
        a = np.moveaxis(a, -1, 1)
    if np.issubdtype(a.dtype, np.integer):
        return torch.as_tensor(a)
    return torch.tensor(a, dtype=getattr(torch, np.dtype(dtype).name))


def from_torch(x):
    a = to_np(x)
    return np.moveaxis(a, 1, -1) if a.ndim == 3 else a


def to_jax(a, dtype):
    a = np.asarray(a)
    return jnp.asarray(a) if np.issubdtype(a.dtype, np.integer) else jnp.asarray(a, dtype=dtype)


def assert_three(jx, th, oracle, dtype, name="", scale=None):
    """jax == torch at ``tol(dtype)``; both == oracle (looser for float32)."""
    jx, th, oracle = np.asarray(jx, np.float64), from_torch(th).astype(np.float64), np.asarray(oracle)
    assert jx.shape == th.shape == oracle.shape, (name, jx.shape, th.shape, oracle.shape)
    t = tol(dtype)
    s = 1.0 if scale is None else scale
    np.testing.assert_allclose(jx, th, rtol=t["rtol"], atol=t["atol"] * s, err_msg=f"{name}: jax vs torch")
    ref = t if np.dtype(dtype) == np.float64 else F32_VS_F64
    np.testing.assert_allclose(jx, oracle, rtol=ref["rtol"], atol=ref["atol"] * s, err_msg=f"{name}: jax vs oracle")
    np.testing.assert_allclose(th, oracle, rtol=ref["rtol"], atol=ref["atol"] * s, err_msg=f"{name}: torch vs oracle")


def data(rng, T, *, b=B):
    x0 = rng.uniform(-1.0, 1.0, size=(b, L, C))
    x0[0, 0, 0], x0[0, 1, 0] = -1.0, 1.0  # the open edge bins of the decoder
    t = np.arange(b) * (T - 1) // max(b - 1, 1)  # includes 0 and T - 1
    t = rng.permutation(t)
    noise = rng.normal(size=x0.shape)
    return x0, t.astype(np.int64), noise


# A model with a differentiable leaf W, a constant offset A and a dependence on the x and
# the timestep it sees: out = A + W + a x (x twice on the channel axis for learned
# variances) + b t_model.
def jax_model(W, learned, A=0.0, a=0.5, b=1e-3):
    def fn(x, t):
        xx = jnp.concatenate([x, x], axis=-1) if learned else x
        return A + W + a * xx + b * jax_append_dims(t.astype(x.dtype), x.ndim)
    return fn


def torch_model(W, learned, A=0.0, a=0.5, b=1e-3):
    def fn(x, t):
        xx = torch.cat([x, x], dim=1) if learned else x
        return A + W + a * xx + b * torch_append_dims(t.to(x.dtype), x.ndim)
    return fn


def np_model(W, learned, A=0.0, a=0.5, b=1e-3):
    def fn(x, t):
        xx = np.concatenate([x, x], axis=-1) if learned else x
        return A + W + a * xx + b * np.asarray(t, np.float64).reshape(-1, 1, 1)
    return fn


def model_weights(rng, learned):
    return rng.normal(size=(B, L, 2 * C if learned else C))


# --------------------------------------------------------------- module functions


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_module_functions_parity(np_rng, dtype):
    m1, m2 = np_rng.normal(size=(2, B, L, C))
    lv1, lv2 = np_rng.normal(size=(2, B, L, C))
    x = np.clip(np_rng.uniform(-1.1, 1.1, size=(B, L, C)), -1, 1)
    x[0, 0] = -1.0
    x[1, 0] = 1.0
    log_scales = np_rng.uniform(-6, 0, size=(B, L, C))
    J = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    Tt = lambda a: to_torch(a, dtype)  # noqa: E731

    kl_j = jax.jit(jd.normal_kl)(J(m1), J(lv1), J(m2), J(lv2))
    kl_t = td.normal_kl(Tt(m1), Tt(lv1), Tt(m2), Tt(lv2))
    assert_three(kl_j, kl_t, od.normal_kl(m1, lv1, m2, lv2), dtype, "normal_kl")
    # scalar second argument, as prior_bpd uses it
    assert_three(jd.normal_kl(J(m1), J(lv1), 0.0, 0.0), td.normal_kl(Tt(m1), Tt(lv1), 0.0, 0.0),
                 od.normal_kl(m1, lv1, 0.0, 0.0), dtype, "normal_kl vs N(0, I)")

    z = np_rng.normal(scale=3, size=(B, L, C))
    assert_three(jax.jit(jd.approx_standard_normal_cdf)(J(z)), td.approx_standard_normal_cdf(Tt(z)),
                 od.approx_standard_normal_cdf(z), dtype, "approx_standard_normal_cdf")

    f = jax.jit(lambda x, m, s: jd.discretized_gaussian_log_likelihood(x, means=m, log_scales=s))
    ll_j = f(J(x), J(m1 * 0.3), J(log_scales))
    ll_t = td.discretized_gaussian_log_likelihood(Tt(x), means=Tt(m1 * 0.3), log_scales=Tt(log_scales))
    ll_o = od.discretized_gaussian_log_likelihood(x, means=m1 * 0.3, log_scales=log_scales)
    assert np.all(ll_o <= 0) and np.any(ll_o < -20)  # some bins far in the tails (clamped)
    # log(cdf_plus - cdf_min) cancels in the tails (an error of ~eps / P): compare the
    # log where P > 1e-3 and the probabilities P everywhere, at the dtype's resolution.
    mask = ll_o > math.log(1e-3)
    assert mask.sum() >= 5
    assert_three(to_np(ll_j)[mask], from_torch(ll_t)[mask], ll_o[mask], dtype,
                 "discretized_gaussian_log_likelihood")
    eps = float(np.finfo(dtype).eps)
    np.testing.assert_allclose(np.exp(to_np(ll_j)), np.exp(ll_o), rtol=0, atol=8 * eps)
    np.testing.assert_allclose(np.exp(from_torch(ll_t)), np.exp(ll_o), rtol=0, atol=8 * eps)


def test_normal_kl_equals_integral():
    """KL(p || q) = int p log(p/q) by quadrature, for a few scalar Gaussians."""
    for m1, lv1, m2, lv2 in [(0.3, -0.5, -0.2, 0.4), (1.5, 0.2, 0.0, 0.0), (-0.7, -2.0, -0.6, -1.5)]:
        s1, s2 = math.exp(0.5 * lv1), math.exp(0.5 * lv2)

        def integrand(x):
            lp = -0.5 * ((x - m1) / s1) ** 2 - math.log(s1 * math.sqrt(2 * math.pi))
            lq = -0.5 * ((x - m2) / s2) ** 2 - math.log(s2 * math.sqrt(2 * math.pi))
            return math.exp(lp) * (lp - lq)

        exact, _ = scipy.integrate.quad(integrand, m1 - 40 * s1, m1 + 40 * s1, epsabs=1e-13, epsrel=1e-12)
        for fn, conv in ((jd.normal_kl, float), (td.normal_kl, lambda v: float(v))):
            args = (m1, lv1, m2, lv2)
            if fn is td.normal_kl:
                args = (torch.tensor(m1, dtype=torch.float64), lv1, m2, lv2)
            else:
                args = (jnp.asarray(m1), lv1, m2, lv2)
            np.testing.assert_allclose(conv(fn(*args)), exact, rtol=1e-9, atol=1e-12)


def test_approx_cdf_and_discretized_likelihood_closed_forms():
    """The tanh CDF is within 2e-4 of Phi; the 256 bins' probabilities sum to 1 exactly
    (the bin edges telescope) and each is within 4e-4 of the exact Gaussian bin mass."""
    z = np.linspace(-8, 8, 4001)
    approx = to_np(jd.approx_standard_normal_cdf(jnp.asarray(z)))
    assert np.max(np.abs(approx - scipy.special.ndtr(z))) < 2e-4

    levels = -1.0 + 2.0 * np.arange(256) / 255.0  # uint8 values rescaled to [-1, 1]
    for mean, log_scale in [(0.1, math.log(0.3)), (-0.95, math.log(0.05)), (0.9, math.log(0.02))]:
        x = levels[:, None]
        m = np.full_like(x, mean)
        s = np.full_like(x, log_scale)
        lp_j = to_np(jd.discretized_gaussian_log_likelihood(jnp.asarray(x), means=jnp.asarray(m), log_scales=jnp.asarray(s)))
        lp_t = to_np(td.discretized_gaussian_log_likelihood(torch.tensor(x), means=torch.tensor(m), log_scales=torch.tensor(s)))
        for lp in (lp_j, lp_t):
            p = np.exp(lp[:, 0])
            p[p <= 1.5e-12] = 0.0  # clamped bins
            np.testing.assert_allclose(p.sum(), 1.0, rtol=0, atol=1e-10)
            sd = math.exp(log_scale)
            upper = np.where(levels > 0.999, np.inf, levels + 1 / 255)
            lower = np.where(levels < -0.999, -np.inf, levels - 1 / 255)
            exact = scipy.special.ndtr((upper - mean) / sd) - scipy.special.ndtr((lower - mean) / sd)
            np.testing.assert_allclose(p, exact, rtol=0, atol=4e-4)


# -------------------------------------------------------------- forward process q


@pytest.mark.parametrize("schedule,respacing,rescale,dtype",
                         [sch + (np.float64,) for sch in SCHEDULES]
                         # float32: one plain and one respaced (rescaled) schedule
                         + [SCHEDULES[0] + (np.float32,), SCHEDULES[3] + (np.float32,)])
def test_q_functions_parity(np_rng, schedule, respacing, rescale, dtype):
    cfg = make_config(schedule, respacing, rescale)
    dj, dt_, do = make_all(cfg)
    T = dj.num_timesteps
    x0, t, noise = data(np_rng, T)
    eps = np_rng.normal(size=x0.shape)
    J = lambda a: to_jax(a, dtype)  # noqa: E731
    Tt = lambda a: to_torch(a, dtype)  # noqa: E731

    x_t = do.q_sample(x0, t, noise)
    big = float(np.max(np.sqrt(1.0 / do.alphas_cumprod[t])))  # up to ~1e3 at a cosine's end
    xprev = do.q_posterior_mean_variance(x0, x_t, t)[0]

    # every jax function of this test in ONE jitted program (one compile)
    @jax.jit
    def jax_all(x0, t, noise, x_t, eps, xprev):
        return dict(q_mean_variance=dj.q_mean_variance(x0, t), q_sample=dj.q_sample(x0, t, noise),
                    q_posterior=dj.q_posterior_mean_variance(x0, x_t, t),
                    xstart_from_eps=dj.predict_xstart_from_eps(x_t, t, eps),
                    eps_from_xstart=dj.predict_eps_from_xstart(x_t, t, x0),
                    xstart_from_xprev=dj.predict_xstart_from_xprev(x_t, t, xprev),
                    xstart_from_noise=dj.predict_xstart_from_eps(x_t, t, noise))

    res = jax_all(J(x0), J(t), J(noise), J(x_t), J(eps), J(xprev))
    res_j = res["q_mean_variance"]
    res_t = dt_.q_mean_variance(Tt(x0), Tt(t))
    for name, a, b_, c in zip(("mean", "variance", "log_variance"), res_j, res_t, do.q_mean_variance(x0, t)):
        assert_three(a, b_, c, dtype, f"q_mean_variance.{name}")

    assert_three(res["q_sample"], dt_.q_sample(Tt(x0), Tt(t), Tt(noise)),
                 x_t, dtype, "q_sample")

    res_j = res["q_posterior"]
    res_t = dt_.q_posterior_mean_variance(Tt(x0), Tt(x_t), Tt(t))
    for name, a, b_, c in zip(("mean", "variance", "log_variance"), res_j, res_t,
                              do.q_posterior_mean_variance(x0, x_t, t)):
        assert_three(a, b_, c, dtype, f"q_posterior_mean_variance.{name}")

    assert_three(res["xstart_from_eps"],
                 dt_.predict_xstart_from_eps(Tt(x_t), Tt(t), Tt(eps)),
                 do.predict_xstart_from_eps(x_t, t, eps), dtype, "predict_xstart_from_eps")
    assert_three(res["eps_from_xstart"],
                 dt_.predict_eps_from_xstart(Tt(x_t), Tt(t), Tt(x0)),
                 do.predict_eps_from_xstart(x_t, t, x0), dtype, "predict_eps_from_xstart")
    recon_j = res["xstart_from_xprev"]
    recon_t = dt_.predict_xstart_from_xprev(Tt(x_t), Tt(t), Tt(xprev))
    recon_o = do.predict_xstart_from_xprev(x_t, t, xprev)
    assert_three(recon_j, recon_t, recon_o, dtype, "predict_xstart_from_xprev")
    if dtype == np.float64:  # round trips
        np.testing.assert_allclose(recon_o, x0, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(to_np(res["xstart_from_noise"]), x0,
                                   rtol=1e-8, atol=1e-8 * big)

    st_j = dj.scale_timesteps(J(t), dtype)
    st_t = dt_.scale_timesteps(Tt(t), getattr(torch, np.dtype(dtype).name))
    st_o = do.scale_timesteps(t)
    expected = cfg.tables().timestep_map[t] * (1000.0 / STEPS if rescale else 1)
    for st in (to_np(st_j), to_np(st_t), st_o):
        np.testing.assert_allclose(st, expected, rtol=1e-7, atol=0)
        assert np.issubdtype(st.dtype, np.floating) == rescale


def test_q_sample_moments_monte_carlo():
    """x_t ~ N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t): sample mean and variance within 5
    standard errors, alpha_bar from the base schedule's cumulative product."""
    cfg = make_config("cosine", "7")
    dj, dt_, _ = make_all(cfg)
    rng = np.random.default_rng(1)
    n = 20000
    x0 = np.full((n, 2), [0.7, -0.4])
    base_abar = np.cumprod(1.0 - cfg.base_betas)
    for k in (0, 3, 6):
        i = cfg.use_timesteps[k]
        t = np.full(n, k)
        noise = rng.normal(size=x0.shape)
        for xt in (to_np(dj.q_sample(jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))),
                   to_np(dt_.q_sample(torch.tensor(x0), torch.tensor(t), torch.tensor(noise)))):
            var = 1.0 - base_abar[i]
            se_mean = math.sqrt(var / n)
            se_var = var * math.sqrt(2.0 / (n - 1))
            assert np.all(np.abs(xt.mean(0) - math.sqrt(base_abar[i]) * x0[0]) < 5 * se_mean)
            assert np.all(np.abs(xt.var(0, ddof=1) - var) < 5 * se_var)


@pytest.mark.parametrize("schedule,respacing", [("linear", ""), ("cosine", "3,2"), ("linear", "ddim4")])
def test_respaced_process_keeps_alpha_bar(schedule, respacing):
    """The respaced process has the base process's alpha_bar at every kept step, and its
    model sees the kept base step."""
    cfg = make_config(schedule, respacing)
    dj, dt_, _ = make_all(cfg)
    kept = np.asarray(cfg.use_timesteps)
    base_abar = np.cumprod(1.0 - spec.get_named_beta_schedule(schedule, STEPS))
    T = dj.num_timesteps
    assert T == len(kept)
    t = np.arange(T)
    ones = np.ones((T, 1))
    mean_j, var_j, _ = dj.q_mean_variance(jnp.asarray(ones), jnp.asarray(t))
    mean_t, var_t, _ = dt_.q_mean_variance(torch.tensor(ones), torch.tensor(t))
    for mean, var in ((mean_j, var_j), (mean_t, var_t)):
        # (a product of ratios: relative rounding grows as alpha_bar gets small)
        np.testing.assert_allclose(to_np(mean)[:, 0], np.sqrt(base_abar[kept]), rtol=1e-10)
        np.testing.assert_allclose(to_np(var)[:, 0], 1.0 - base_abar[kept], rtol=1e-10)
    np.testing.assert_array_equal(to_np(dj.scale_timesteps(jnp.asarray(t))), kept)
    np.testing.assert_array_equal(to_np(dt_.scale_timesteps(torch.tensor(t))), kept)


@pytest.mark.parametrize("schedule,respacing", [("linear", ""), ("cosine", "6")])
def test_posterior_equals_bayes_conditioning(np_rng, schedule, respacing):
    """q(x_{t-1} | x_t, x_0) from Gaussian conditioning of the joint of
    (x_{t-1}, x_t) | x_0: x_{t-1} ~ N(sqrt(ab_{t-1}) x0, 1 - ab_{t-1}),
    x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, 1 - alpha_t), alpha_t = ab_t / ab_{t-1}."""
    cfg = make_config(schedule, respacing)
    dj, dt_, _ = make_all(cfg)
    abar = np.cumprod(1.0 - spec.get_named_beta_schedule(schedule, STEPS))[list(cfg.use_timesteps)]
    T = len(abar)
    t = np.arange(1, T)
    x0 = np_rng.uniform(-1, 1, size=(T - 1, 2))
    x_t = np_rng.normal(size=x0.shape)
    mean_j, var_j, logvar_j = dj.q_posterior_mean_variance(jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t))
    mean_t, var_t, logvar_t = dt_.q_posterior_mean_variance(torch.tensor(x0), torch.tensor(x_t), torch.tensor(t))
    for k, tk in enumerate(t):
        a_prev, a_t = abar[tk - 1], abar[tk]
        alpha = a_t / a_prev
        mu = np.array([math.sqrt(a_prev), math.sqrt(a_t)])[:, None] * x0[k][None]  # [2, D]
        v = 1.0 - a_prev
        cov = np.array([[v, math.sqrt(alpha) * v], [math.sqrt(alpha) * v, alpha * v + (1.0 - alpha)]])
        gain = cov[0, 1] / cov[1, 1]
        cond_mean = mu[0] + gain * (x_t[k] - mu[1])
        cond_var = cov[0, 0] - gain * cov[1, 0]
        for mean, var, logvar in ((mean_j, var_j, logvar_j), (mean_t, var_t, logvar_t)):
            np.testing.assert_allclose(to_np(mean)[k], cond_mean, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(to_np(var)[k], cond_var, rtol=1e-10)
            np.testing.assert_allclose(to_np(logvar)[k], math.log(cond_var), rtol=1e-10)
    # t = 0: the posterior is a point mass at x0 and the log-variance is clipped to beta~_1
    t0 = np.zeros(2, dtype=np.int64)
    mean, var, logvar = dj.q_posterior_mean_variance(jnp.asarray(x0[:2]), jnp.asarray(x_t[:2]), jnp.asarray(t0))
    np.testing.assert_allclose(to_np(mean), x0[:2], rtol=1e-12)
    np.testing.assert_allclose(to_np(var), 0.0, atol=0)
    np.testing.assert_allclose(to_np(logvar), np.log(cfg.tables().posterior_variance[1]), rtol=1e-12)


# --------------------------------------------------------------- reverse process p


@pytest.mark.parametrize("mean_type,var_type,dtype",
                         [mv + (np.float64,) for mv in itertools.product(MEAN_TYPES, VAR_TYPES)]
                         + [mv + (np.float32,) for mv in F32_MEAN_VAR])
def test_p_mean_variance_parity(np_rng, mean_type, var_type, dtype):
    schedule, respacing, rescale = SCHEDULES[(MEAN_TYPES.index(mean_type) + VAR_TYPES.index(var_type)) % 4]
    cfg = make_config(schedule, respacing, rescale, model_mean_type=mean_type, model_var_type=var_type)
    dj, dt_, do = make_all(cfg)
    learned = dj.learned_variance
    x0, t, noise = data(np_rng, dj.num_timesteps)
    x = do.q_sample(x0, t, noise)
    W = model_weights(np_rng, learned)
    J = lambda a: to_jax(a, dtype)  # noqa: E731
    Tt = lambda a: to_torch(a, dtype)  # noqa: E731
    # both clip settings in one jitted program (one compile)
    outs_j = jax.jit(lambda W, x, t: [dj.p_mean_variance(jax_model(W, learned), x, t, clip_denoised=clip)
                                      for clip in (True, False)])(J(W), J(x), J(t))
    for clip, out_j in zip((True, False), outs_j):
        out_t = dt_.p_mean_variance(torch_model(Tt(W), learned), Tt(x), Tt(t), clip_denoised=clip)
        out_o = do.p_mean_variance(np_model(W, learned), x, t, clip_denoised=clip)
        assert set(out_j) == set(out_t) == set(out_o)
        for k in out_o:
            assert_three(out_j[k], out_t[k], out_o[k], dtype, f"{k} (clip={clip})")
        if clip:
            assert np.max(np.abs(to_np(out_j["pred_xstart"]))) <= 1.0
    # p_mean_variance_from_output is the same function of a precomputed output
    out = np_model(W, learned)(x, do.scale_timesteps(t))
    ref = dj.p_mean_variance_from_output(J(out), J(x), J(t), denoised_fn=lambda z: 0.5 * z)
    ref_t = dt_.p_mean_variance_from_output(Tt(out), Tt(x), Tt(t), denoised_fn=lambda z: 0.5 * z)
    ref_o = do.p_mean_variance_from_output(out, x, t, denoised_fn=lambda z: 0.5 * z)
    for k in ref_o:
        assert_three(ref[k], ref_t[k], ref_o[k], dtype, f"from_output {k}")


def test_fixed_and_learned_variances_closed_form(np_rng):
    """FIXED_LARGE = [beta~_1, beta_1, ...], FIXED_SMALL = beta~_t, LEARNED_RANGE at
    v = +-1 hits log beta_t / log beta~_t (clipped), LEARNED is exp(v)."""
    tables = make_config("cosine", "6").tables()
    T = tables.num_timesteps
    t = np.arange(T)
    x = np.zeros((T, 2))
    expected = {
        ModelVarType.FIXED_LARGE: np.append(tables.posterior_variance[1], tables.betas[1:]),
        ModelVarType.FIXED_SMALL: tables.posterior_variance,
    }
    for vt, var in expected.items():
        cfg = make_config("cosine", "6", model_var_type=vt)
        for d, conv in ((jd.GaussianDiffusion(cfg), jnp.asarray), (td.GaussianDiffusion(cfg), torch.tensor)):
            out = d.p_mean_variance_from_output(conv(x), conv(x), conv(t))
            np.testing.assert_allclose(to_np(out["variance"])[:, 0], var, rtol=1e-12)
            np.testing.assert_allclose(to_np(out["log_variance"])[:, 0], np.log(np.where(var > 0, var, tables.posterior_variance[1])), rtol=1e-12)
    cfg = make_config("cosine", "6", model_var_type="learned_range")
    for v, target in ((1.0, np.log(tables.betas)), (-1.0, tables.posterior_log_variance_clipped)):
        out_v = np.concatenate([x, np.full_like(x, v)], axis=-1)
        for d, conv in ((jd.GaussianDiffusion(cfg), jnp.asarray), (td.GaussianDiffusion(cfg), torch.tensor)):
            out = d.p_mean_variance_from_output(conv(out_v), conv(x), conv(t))
            np.testing.assert_allclose(to_np(out["log_variance"])[:, 0], target, rtol=1e-12)
    cfg = make_config("cosine", "6", model_var_type="learned")
    v = np_rng.normal(size=x.shape)
    for d, conv in ((jd.GaussianDiffusion(cfg), jnp.asarray), (td.GaussianDiffusion(cfg), torch.tensor)):
        out = d.p_mean_variance_from_output(conv(np.concatenate([x, v], -1)), conv(x), conv(t))
        np.testing.assert_allclose(to_np(out["variance"]), np.exp(v), rtol=1e-12)


# --------------------------------------------------------------- losses and the VLB


def near_target_model(do, x0, t, noise, rng):
    """(A, W, a): a model close to the loss target for the mean part (as a trained one
    is: every vb term, the decoder NLL at t = 0 included, is then well conditioned),
    with a random variance part."""
    cfg = do.config
    learned = cfg.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)
    x_t = do.q_sample(x0, t, noise)
    target = {
        ModelMeanType.EPSILON: noise,
        ModelMeanType.START_X: x0,
        ModelMeanType.PREVIOUS_X: do.q_posterior_mean_variance(x0, x_t, t)[0],
    }[cfg.model_mean_type]
    a = 0.01
    W = 0.05 * rng.normal(size=(B, L, 2 * C if learned else C))
    A = target - a * x_t
    if learned:
        W[..., C:] = np.tanh(rng.normal(size=(B, L, C)))  # v in [-1, 1] (log-var for LEARNED)
        A = np.concatenate([A, np.zeros_like(A)], axis=-1)
    return A, W, a


def _losses_and_grads(cfg, A, W, a, x0, t, noise, dtype, use_jit=True):
    """training_losses and d(sum loss)/dW on both sides (W is the model output leaf)."""
    dj, dt_ = jd.GaussianDiffusion(cfg), td.GaussianDiffusion(cfg)
    learned = dj.learned_variance
    x0_j, t_j, noise_j, A_j = to_jax(x0, dtype), to_jax(t, dtype), to_jax(noise, dtype), to_jax(A, dtype)

    def total(W):
        out = dj.training_losses(jax_model(W, learned, A_j, a), x0_j, t_j, noise_j)
        return jnp.sum(out["loss"]), out

    value_and_grad = jax.value_and_grad(total, has_aux=True)
    (_, out_j), grad_j = (jax.jit(value_and_grad) if use_jit else value_and_grad)(to_jax(W, dtype))
    W_t = to_torch(W, dtype).requires_grad_(True)
    out_t = dt_.training_losses(torch_model(W_t, learned, to_torch(A, dtype), a), to_torch(x0, dtype),
                                to_torch(t, dtype), to_torch(noise, dtype))
    out_t["loss"].sum().backward()
    return out_j, grad_j, out_t, W_t.grad


def _finite_difference(do, A, W, a, x0, t, noise, V, key, h=1e-6):
    """Central difference of sum(oracle[key]) along V."""
    learned = W.shape[-1] == 2 * C
    f = lambda W_: do.training_losses(np_model(W_, learned, A, a), x0, t, noise)[key].sum()  # noqa: E731
    return (f(W + h * V) - f(W - h * V)) / (2 * h)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_training_losses_parity_and_gradients(np_rng, loss_type, dtype):
    """Every loss x variance type, every loss x mean type and every mean x variance type
    (float64: each loss type with every variance type, the mean types rotating, so that
    every pair of the three types occurs): values jax == torch == oracle; gradients with
    respect to the model output jax == torch, and (float64) == a central difference of
    the oracle along a random direction (for the hybrid loss: the mse along the mean
    channels, the whole loss along the variance channels, since L_vlb sees a
    stop-gradiented mean)."""
    li = LOSS_TYPES.index(loss_type)
    combos = [(MEAN_TYPES[(vi + li) % len(MEAN_TYPES)], var_type) for vi, var_type in enumerate(VAR_TYPES)]
    if dtype == np.float32:  # float32: a representative subset
        combos = [(ModelMeanType.EPSILON, ModelVarType.LEARNED_RANGE), (ModelMeanType.START_X, ModelVarType.FIXED_LARGE),
                  (ModelMeanType.PREVIOUS_X, ModelVarType.LEARNED)]
    for i, (mean_type, var_type) in enumerate(combos):
        schedule, respacing, rescale = SCHEDULES[i % 4]
        cfg = make_config(schedule, respacing, rescale, model_mean_type=mean_type,
                          model_var_type=var_type, loss_type=loss_type)
        do = od.GaussianDiffusion(cfg)
        learned = var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)
        x0, t, noise = data(np_rng, do.num_timesteps)
        A, W, a = near_target_model(do, x0, t, noise, np_rng)
        # jit where the tracing paths differ most (learned variances, float32); the other
        # float64 combinations run eagerly to keep the file fast
        use_jit = dtype == np.float32 or var_type == ModelVarType.LEARNED_RANGE
        out_j, grad_j, out_t, grad_t = _losses_and_grads(cfg, A, W, a, x0, t, noise, dtype, use_jit)
        out_o = do.training_losses(np_model(W, learned, A, a), x0, t, noise)
        expected_keys = {"loss"} if loss_type.is_vb else ({"loss", "mse", "vb"} if learned else {"loss", "mse"})
        assert set(out_j) == set(out_t) == set(out_o) == expected_keys
        name = f"{loss_type.value}/{mean_type.value}/{var_type.value}"
        for k in out_o:
            assert_three(out_j[k], out_t[k], out_o[k], dtype, f"{name}: {k}")
        g_j, g_t = to_np(grad_j).astype(np.float64), from_torch(grad_t).astype(np.float64)
        assert np.all(np.isfinite(g_j)) and np.any(g_j != 0)
        # float32 backward passes through the KL's cancellations: compare at 1e-4 of the
        # largest gradient entry (float64: the tolerance table)
        gtol = tol(dtype) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
        gscale = float(np.max(np.abs(g_t)))
        np.testing.assert_allclose(g_j, g_t, rtol=gtol["rtol"], atol=gtol["atol"] * gscale, err_msg=f"{name}: grad")
        if dtype == np.float64:
            V = np_rng.normal(size=W.shape)
            if learned and not loss_type.is_vb:
                V_mean, V_var = V.copy(), V.copy()
                V_mean[..., C:] = 0.0
                V_var[..., :C] = 0.0
                g_mse = to_np(jax.grad(lambda W_: jnp.sum(jd.GaussianDiffusion(cfg).training_losses(
                    jax_model(W_, True, jnp.asarray(A), a), jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))["mse"]))(jnp.asarray(W)))
                checks = [(np.sum(g_mse * V_mean), _finite_difference(do, A, W, a, x0, t, noise, V_mean, "mse")),
                          (np.sum(g_j * V_var), _finite_difference(do, A, W, a, x0, t, noise, V_var, "loss"))]
            else:
                checks = [(np.sum(g_j * V), _finite_difference(do, A, W, a, x0, t, noise, V, "loss"))]
            for analytic, numeric in checks:
                np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8, err_msg=f"{name}: grad vs FD")


def test_hybrid_loss_structure(np_rng):
    """With learned variances: the vb term equals vb_terms_bpd of the same output
    (no clipping), is scaled by T/1000 for RESCALED_MSE, its gradient reaches only the
    variance channels (mean stop-gradiented), and the mse gradient only the mean ones."""
    for loss_type in (LossType.MSE, LossType.RESCALED_MSE):
        cfg = make_config("cosine", "5", True, model_var_type="learned_range", loss_type=loss_type)
        dj, dt_, _ = make_all(cfg)
        x0, t, noise = data(np_rng, dj.num_timesteps)
        W = np.tanh(model_weights(np_rng, True))
        x0_j, t_j, noise_j = jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise)
        x_t = dj.q_sample(x0_j, t_j, noise_j)
        factor = dj.num_timesteps / 1000.0 if loss_type == LossType.RESCALED_MSE else 1.0
        vb = dj.vb_terms_bpd(jax_model(jnp.asarray(W), True), x0_j, x_t, t_j, clip_denoised=False)["output"]
        out = dj.training_losses(jax_model(jnp.asarray(W), True), x0_j, t_j, noise_j)
        np.testing.assert_allclose(to_np(out["vb"]), factor * to_np(vb), rtol=1e-12)
        np.testing.assert_allclose(to_np(out["loss"]), to_np(out["mse"] + out["vb"]), rtol=1e-12)

        g_vb = jax.grad(lambda W: jnp.sum(dj.training_losses(jax_model(W, True), x0_j, t_j, noise_j)["vb"]))(jnp.asarray(W))
        g_mse = jax.grad(lambda W: jnp.sum(dj.training_losses(jax_model(W, True), x0_j, t_j, noise_j)["mse"]))(jnp.asarray(W))
        g_vb, g_mse = to_np(g_vb), to_np(g_mse)
        assert np.all(g_vb[..., :C] == 0.0) and np.any(g_vb[..., C:] != 0.0)
        assert np.all(g_mse[..., C:] == 0.0) and np.any(g_mse[..., :C] != 0.0)
        # torch: the same through .detach()
        W_t = to_torch(W, np.float64).requires_grad_(True)
        out_t = dt_.training_losses(torch_model(W_t, True), to_torch(x0, np.float64),
                                    torch.tensor(t), to_torch(noise, np.float64))
        out_t["vb"].sum().backward()
        g_t = from_torch(W_t.grad)
        assert np.all(g_t[..., :C] == 0.0)
        np.testing.assert_allclose(g_t, g_vb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("schedule,respacing,rescale,dtype", [
    SCHEDULES[1] + (np.float64,), SCHEDULES[2] + (np.float64,),
    SCHEDULES[3] + (np.float32,), SCHEDULES[0] + (np.float32,),
])
def test_vb_terms_prior_and_bpd_loop_parity(np_rng, schedule, respacing, rescale, dtype):
    """vb_terms_bpd, prior_bpd and calc_bpd_loop (jitted scan vs torch for-loop vs oracle),
    with an epsilon model, whose decoder mean at t = 0 stays within a few std of x_0."""
    cfg = make_config(schedule, respacing, rescale, model_var_type="learned_range")
    dj, dt_, do = make_all(cfg)
    T = dj.num_timesteps
    x0, t, noise = data(np_rng, T)
    W = np.tanh(model_weights(np_rng, True))
    x_t = do.q_sample(x0, t, noise)
    J = lambda a: to_jax(a, dtype)  # noqa: E731
    Tt = lambda a: to_torch(a, dtype)  # noqa: E731
    loop_noise = np_rng.normal(size=(T,) + x0.shape)
    # the three jax functions in one jitted program (one compile)
    out_j, prior_j, loop_j = jax.jit(lambda W, x0, x_t, t, n: (
        dj.vb_terms_bpd(jax_model(W, True), x0, x_t, t), dj.prior_bpd(x0),
        dj.calc_bpd_loop(jax_model(W, True), x0, n)))(J(W), J(x0), J(x_t), J(t), J(loop_noise))
    out_t = dt_.vb_terms_bpd(torch_model(Tt(W), True), Tt(x0), Tt(x_t), Tt(t))
    out_o = do.vb_terms_bpd(np_model(W, True), x0, x_t, t)
    for k in out_o:
        assert_three(out_j[k], out_t[k], out_o[k], dtype, f"vb_terms_bpd.{k}")
    assert_three(prior_j, dt_.prior_bpd(Tt(x0)), do.prior_bpd(x0), dtype, "prior_bpd")

    loop_t = dt_.calc_bpd_loop(torch_model(Tt(W), True), Tt(x0),
                               torch.tensor(np.moveaxis(loop_noise, -1, 2), dtype=Tt(x0).dtype))
    loop_o = do.calc_bpd_loop(np_model(W, True), x0, loop_noise)
    for k in loop_o:
        assert to_np(loop_j[k]).shape == ((B,) if k.endswith("bpd") else (B, T))
        assert_three(loop_j[k], loop_t[k], loop_o[k], dtype, f"calc_bpd_loop.{k}")
    np.testing.assert_allclose(to_np(loop_j["total_bpd"]), to_np(loop_j["vb"]).sum(1) + to_np(loop_j["prior_bpd"]),
                               rtol=tol(dtype)["rtol"])
    # column j is timestep T-1-j: it equals vb_terms_bpd at that step with noise[j]
    j = 1
    tt = np.full(B, T - 1 - j)
    col = do.vb_terms_bpd(np_model(W, True), x0, do.q_sample(x0, tt, loop_noise[j]), tt)["output"]
    np.testing.assert_allclose(to_np(loop_j["vb"])[:, j], col, **(tol(dtype) if dtype == np.float64 else F32_VS_F64))


def test_vlb_terms_equal_closed_form_gaussian_kls(np_rng):
    """For t > 0 each term is KL(N(mu~, beta~) || N(mu_theta, Sigma_theta)) / log 2
    averaged over dimensions, written here as log(s2/s1) + (s1^2 + dmu^2)/(2 s2^2) - 1/2
    from the posterior and the model's Gaussian."""
    cfg = make_config("linear", "6", model_var_type="learned")
    dj, dt_, _ = make_all(cfg)
    tables = cfg.tables()
    T = dj.num_timesteps
    x0 = np_rng.uniform(-1, 1, size=(T - 1, 5))
    t = np.arange(1, T)
    x_t = np_rng.normal(size=x0.shape)
    eps_hat, log_var = np_rng.normal(size=(2,) + x0.shape)
    output = np.concatenate([eps_hat, log_var], axis=-1)
    ab, ab_prev = tables.alphas_cumprod[t][:, None], tables.alphas_cumprod_prev[t][:, None]
    beta = tables.betas[t][:, None]
    coef1 = beta * np.sqrt(ab_prev) / (1 - ab)
    coef2 = (1 - ab_prev) * np.sqrt(1 - beta) / (1 - ab)
    mu_q = coef1 * x0 + coef2 * x_t
    var_q = beta * (1 - ab_prev) / (1 - ab)
    x0_hat = np.clip((x_t - np.sqrt(1 - ab) * eps_hat) / np.sqrt(ab), -1, 1)
    mu_p = coef1 * x0_hat + coef2 * x_t
    var_p = np.exp(log_var)
    kl = 0.5 * np.log(var_p / var_q) + (var_q + (mu_q - mu_p) ** 2) / (2 * var_p) - 0.5
    expected = kl.mean(1) / math.log(2)
    out_j = dj.vb_terms_bpd_from_output(jnp.asarray(output), jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(t))
    out_t = dt_.vb_terms_bpd_from_output(torch.tensor(output), torch.tensor(x0), torch.tensor(x_t), torch.tensor(t))
    np.testing.assert_allclose(to_np(out_j["output"]), expected, rtol=1e-10)
    np.testing.assert_allclose(to_np(out_t["output"]), expected, rtol=1e-10)


@pytest.mark.parametrize("respacing", ["", "4"])
def test_bpd_loop_with_exact_posterior_model(np_rng, respacing):
    """A model that knows x_0 predicts the true eps: every KL term is 0, the t = 0 term is
    the decoder NLL of N(x_0, beta~_1) on x_0's bin, the prior equals its closed form
    and total_bpd is their sum; the x_0 and eps errors are 0."""
    cfg = make_config("linear", respacing, False)
    dj, dt_, _ = make_all(cfg)
    T = dj.num_timesteps
    base_abar = np.cumprod(1.0 - cfg.base_betas)
    x0 = np.round(np_rng.uniform(-0.98, 0.98, size=(3, 4)) * 127.5) / 127.5  # interior bins
    noise = np_rng.normal(size=(T,) + x0.shape)

    def make_exact(xp, x0_arr, abar_tbl):
        def fn(x_t, t_model):  # sees the base step: alpha_bar from the BASE schedule
            a = abar_tbl[t_model][:, None]
            return (x_t - xp.sqrt(a) * x0_arr) / xp.sqrt(1.0 - a)
        return fn

    res_j = jax.jit(lambda x0: dj.calc_bpd_loop(make_exact(jnp, x0, jnp.asarray(base_abar)), x0, jnp.asarray(noise)))(jnp.asarray(x0))
    res_t = dt_.calc_bpd_loop(make_exact(torch, torch.tensor(x0), torch.tensor(base_abar)),
                              torch.tensor(x0), torch.tensor(noise))
    pv1 = cfg.tables().posterior_variance[1]
    sd = math.sqrt(pv1)
    dec = -math.log(scipy.special.ndtr(1 / 255 / sd) - scipy.special.ndtr(-1 / 255 / sd)) / math.log(2)
    ab_T = base_abar[cfg.use_timesteps[-1]]
    prior = (0.5 * (-math.log(1 - ab_T) + (1 - ab_T) + ab_T * x0**2 - 1)).mean(1) / math.log(2)
    for res in (res_j, res_t):
        vb = to_np(res["vb"])
        np.testing.assert_allclose(vb[:, :-1], 0.0, atol=1e-9)  # t = T-1 .. 1
        np.testing.assert_allclose(vb[:, -1], dec, rtol=2e-3)  # t = 0 (tanh CDF approximation)
        np.testing.assert_allclose(to_np(res["prior_bpd"]), prior, rtol=1e-10)
        np.testing.assert_allclose(to_np(res["total_bpd"]), vb.sum(1) + prior, rtol=1e-12)
        np.testing.assert_allclose(to_np(res["xstart_mse"]), 0.0, atol=1e-18)
        np.testing.assert_allclose(to_np(res["mse"]), 0.0, atol=1e-16)
    # KL training loss is 0 for t > 0 with the exact model; MSE is 0
    t = np.array([1, T - 1, 2 % T])
    for lt in ("kl", "mse"):
        cfg2 = make_config("linear", respacing, False, loss_type=lt)
        out = jd.GaussianDiffusion(cfg2).training_losses(
            make_exact(jnp, jnp.asarray(x0), jnp.asarray(base_abar)), jnp.asarray(x0), jnp.asarray(t),
            jnp.asarray(noise[0]))
        np.testing.assert_allclose(to_np(out["loss"])[:2], 0.0, atol=1e-9)


def test_random_drivers():
    cfg = make_config("cosine", "5")
    dj, dt_, do = make_all(cfg)
    x0 = np.random.default_rng(3).uniform(-1, 1, size=(2, 3))
    W = np.zeros_like(x0)
    key = jax.random.PRNGKey(0)
    res = dj.calc_bpd_loop_random(key, lambda x, t: jnp.asarray(W), jnp.asarray(x0))
    noise = to_np(jax.jit(jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(key, j), x0.shape, jnp.float64)))(
        jnp.arange(dj.num_timesteps)))  # row j: normal(fold_in(key, j))
    ref = do.calc_bpd_loop(lambda x, t: W, x0, noise)
    np.testing.assert_allclose(to_np(res["vb"]), ref["vb"], rtol=1e-10)
    g = torch.Generator().manual_seed(0)
    res_t = dt_.calc_bpd_loop_random(lambda x, t: torch.tensor(W), torch.tensor(x0), generator=g)
    noise_t = torch.randn((dj.num_timesteps,) + x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref_t = do.calc_bpd_loop(lambda x, t: W, x0, to_np(noise_t))
    np.testing.assert_allclose(to_np(res_t["total_bpd"]), ref_t["total_bpd"], rtol=1e-10)

    t_j = to_np(jax.jit(jd.sample_timesteps_uniform, static_argnums=(1, 2))(key, 4000, 7))
    t_t = to_np(td.sample_timesteps_uniform(4000, 7, generator=torch.Generator().manual_seed(1)))
    for tt in (t_j, t_t):
        assert tt.shape == (4000,) and tt.min() == 0 and tt.max() == 6
        assert np.all(np.abs(np.bincount(tt, minlength=7) / 4000 - 1 / 7) < 0.03)


def test_float32_tables_reproduce_improved_diffusion_cast():
    """dtype=float32 casts the tables to float32 (improved-diffusion's ``.float()``) even
    for float64 data: both sides agree to float64 precision and differ from the pure
    float64 result at the float32 level."""
    cfg = make_config("cosine", "")
    x0 = np.random.default_rng(0).uniform(-1, 1, size=(B, 3))
    t = np.arange(B) * 5
    noise = np.ones_like(x0)
    a = to_np(jd.GaussianDiffusion(cfg, dtype=jnp.float32).q_sample(jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise)))
    b = to_np(td.GaussianDiffusion(cfg, dtype=torch.float32).q_sample(torch.tensor(x0), torch.tensor(t), torch.tensor(noise)))
    c = od.GaussianDiffusion(cfg).q_sample(x0, t, noise)
    assert a.dtype == b.dtype == np.float64
    np.testing.assert_allclose(a, b, rtol=1e-14)
    assert 0 < np.max(np.abs(a - c)) < 1e-6


def test_learned_variance_channel_axis_option(np_rng):
    """The JAX side can split channel axis 1 too, and then matches torch on NCL data."""
    cfg = make_config("linear", "5", model_var_type="learned_range", loss_type="rescaled_mse")
    dj = jd.GaussianDiffusion(cfg, channel_axis=1)
    dt_ = td.GaussianDiffusion(cfg)
    x0, t, noise = data(np_rng, dj.num_timesteps)
    W = np.tanh(model_weights(np_rng, True))
    nc = lambda a: np.moveaxis(a, -1, 1)  # noqa: E731
    out_j = dj.training_losses(lambda x, tt: jnp.asarray(nc(W)),
                               jnp.asarray(nc(x0)), jnp.asarray(t), jnp.asarray(nc(noise)))
    out_t = dt_.training_losses(lambda x, tt: torch.tensor(nc(W)), torch.tensor(nc(x0)),
                                torch.tensor(t), torch.tensor(nc(noise)))
    for k in out_t:
        np.testing.assert_allclose(to_np(out_j[k]), to_np(out_t[k]), rtol=1e-10)


def test_single_step_process(np_rng):
    """T = 1 (where improved-diffusion indexes posterior_variance[1] and crashes): the only
    term is the decoder NLL, FIXED_LARGE uses beta_0, and all three sides agree."""
    for vt in ("fixed_large", "fixed_small"):
        cfg = spec.DiffusionConfig(steps=1, model_var_type=vt, loss_type="kl")
        dj, dt_, do = make_all(cfg)
        assert dj.num_timesteps == 1
        x0 = np_rng.uniform(-1, 1, size=(2, 3))
        t = np.zeros(2, dtype=np.int64)
        out_j = dj.p_mean_variance_from_output(jnp.asarray(x0), jnp.asarray(x0), jnp.asarray(t))
        np.testing.assert_allclose(to_np(out_j["variance"]), cfg.tables().betas[0] if vt == "fixed_large" else 0.0)
        noise = np_rng.normal(size=x0.shape)
        loss_j = dj.training_losses(lambda x, tt: jnp.asarray(noise), jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))["loss"]
        loss_t = dt_.training_losses(lambda x, tt: torch.tensor(noise), torch.tensor(x0), torch.tensor(t), torch.tensor(noise))["loss"]
        loss_o = do.training_losses(lambda x, tt: noise, x0, t, noise)["loss"]
        assert np.all(np.isfinite(loss_o))
        assert_three(loss_j, loss_t, loss_o, np.float64, f"T=1 {vt}")


# ------------------------------------------------------------------ static / jit


def test_hashable_static_argument():
    cfg = make_config("linear", "5", True)
    a, b = jd.GaussianDiffusion(cfg), jd.GaussianDiffusion(make_config("linear", "5", True))
    assert a == b and hash(a) == hash(b)
    assert a != jd.GaussianDiffusion(cfg, dtype=jnp.float32)
    assert a != jd.GaussianDiffusion(cfg, channel_axis=1)
    assert td.GaussianDiffusion(cfg) == td.GaussianDiffusion(cfg)
    f = jax.jit(lambda d, x, t, n: d.q_sample(x, t, n), static_argnums=0)
    x = jnp.ones((2, 3))
    t = jnp.array([0, 4])
    np.testing.assert_allclose(to_np(f(a, x, t, x)), to_np(f(b, x, t, x)))
    assert a.num_timesteps == 5 and a.table("timestep_map").tolist() == list(cfg.use_timesteps)


# ------------------------------------------------------------------------ bad input


def test_bad_input_raises_naming_the_argument():
    cfg = make_config("linear", "5")
    x = np.zeros((3, 2))
    t = np.array([0, 1, 4])
    for d, arr in ((jd.GaussianDiffusion(cfg), jnp.asarray), (td.GaussianDiffusion(cfg), torch.tensor)):
        calls = 0

        def model(x, t):
            nonlocal calls
            calls += 1
            return x

        with pytest.raises(ValueError, match="batch mismatch.*t"):
            d.q_sample(arr(x), arr(np.array([0, 1])), arr(x))
        with pytest.raises(ValueError, match="batch mismatch.*t"):
            d.training_losses(model, arr(x), arr(np.array([0, 1])), arr(x))
        with pytest.raises(ValueError, match=r"t must lie in \[0, num_timesteps\)"):
            d.q_sample(arr(x), arr(np.array([0, 1, 5])), arr(x))
        with pytest.raises(ValueError, match=r"t must lie in \[0, num_timesteps\)"):
            d.p_mean_variance(model, arr(x), arr(np.array([-1, 1, 2])))
        with pytest.raises(TypeError, match="x_start must have a floating dtype"):
            d.q_sample(arr(x.astype(np.int64)), arr(t), arr(x))
        with pytest.raises(TypeError, match="x must have a floating dtype"):
            d.p_mean_variance(model, arr(x.astype(np.int32)), arr(t))
        with pytest.raises(TypeError, match="t must be an integer"):
            d.q_sample(arr(x), arr(t.astype(np.float64)), arr(x))
        with pytest.raises(ValueError, match="noise must have the shape of x_start"):
            d.training_losses(model, arr(x), arr(t), arr(np.zeros((3, 3))))
        with pytest.raises(ValueError, match=r"noise must have shape \[T, B, ...\]"):
            d.calc_bpd_loop(model, arr(x), arr(np.zeros((4, 3, 2))))
        with pytest.raises(ValueError, match="model_output must have the shape of x"):
            d.p_mean_variance_from_output(arr(np.zeros((3, 4))), arr(x), arr(t))
        with pytest.raises(TypeError, match="model_fn must be callable"):
            d.training_losses("not a model", arr(x), arr(t), arr(x))
        assert calls == 0  # every check ran before the model
    learned = make_config("linear", "5", model_var_type="learned")
    for d, arr in ((jd.GaussianDiffusion(learned), jnp.asarray), (td.GaussianDiffusion(learned), torch.tensor)):
        with pytest.raises(ValueError, match="model_output must have shape .*twice"):
            d.training_losses(lambda x, t: x, arr(x), arr(t), arr(x))
    for name, value in (("model_mean_type", "eps"), ("model_var_type", "learnt"), ("loss_type", "l2")):
        with pytest.raises(ValueError, match=f"unknown {name}"):
            spec.DiffusionConfig(**{name: value})
    with pytest.raises(TypeError, match="config must be a spec.DiffusionConfig"):
        jd.GaussianDiffusion("linear")
    with pytest.raises(TypeError, match="config must be a spec.DiffusionConfig"):
        td.GaussianDiffusion({"steps": 10})
    with pytest.raises(TypeError, match="dtype must be a floating"):
        jd.GaussianDiffusion(cfg, dtype=jnp.int32)
    with pytest.raises(TypeError, match="dtype must be a floating"):
        td.GaussianDiffusion(cfg, dtype=torch.int64)
    with pytest.raises(ValueError, match="channel_axis must not be 0"):
        jd.GaussianDiffusion(cfg, channel_axis=0)
    with pytest.raises(ValueError, match="discretized_gaussian_log_likelihood"):
        jd.discretized_gaussian_log_likelihood(jnp.zeros(3), means=jnp.zeros(2), log_scales=jnp.zeros(3))
