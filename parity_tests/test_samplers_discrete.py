"""DDPM ancestral sampling, DDIM and DDIM inversion: jax == torch == numpy float64 oracle,
exact answers with the exact Gaussian-mixture eps, NFE, compilation, errors.

Modules under test: ``jax_impl/samplers_discrete.py`` and ``torch_ref/samplers_discrete.py``.
The numpy oracle below re-derives improved-diffusion's ``p_mean_variance`` / ``p_sample`` /
``ddim_sample`` from ``spec.DiffusionConfig.tables()`` (float64) independently of
``*/diffusion.py``; the inversion oracle is written in the DDIM ODE's own variables
``xbar = x / sqrt(abar)``, ``sigma = sqrt(1/abar - 1)`` (a DDIM step is
``xbar' = xbar + (sigma' - sigma) eps``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import spec
from jax_impl import samplers_discrete as js
from jax_impl.diffusion import GaussianDiffusion as JaxDiffusion
from jax_impl.sharding import per_sample_normal
from jax_impl.gmm import gmm_score
from parity_tests.helpers import to_np, tol
from spec.configs import ModelMeanType as MT
from spec.configs import ModelVarType as VT
from spec.oracles.gmm import demo_mixture
from torch_ref import samplers_discrete as ts
from torch_ref.diffusion import GaussianDiffusion as TorchDiffusion

F64 = dict(rtol=1e-9, atol=1e-11)  # whole float64 trajectories: round-off accumulates over steps


# ============================================================ a tiny shared test model


def _weights(c_in: int, c_out: int, seed: int, var_offset: float = 0.0) -> dict:
    """Fixed float64 weights of a one-hidden-layer per-pixel MLP with a sinusoidal time
    embedding; ``var_offset`` is added to the second half of the outputs (the variance part
    when the output has 2C channels)."""
    rng = np.random.default_rng(seed)
    hidden, n_freq = 16, 6
    b2 = 0.1 * rng.standard_normal(c_out)
    if c_out == 2 * c_in:
        b2[c_in:] += var_offset
    return dict(
        W1=rng.standard_normal((c_in, hidden)) / math.sqrt(c_in),
        Wt=0.5 * rng.standard_normal((n_freq, hidden)),
        b1=0.1 * rng.standard_normal(hidden),
        W2=0.5 * rng.standard_normal((hidden, c_out)) / math.sqrt(hidden),
        b2=b2,
        freqs=np.geomspace(1e-3, 1.0, n_freq),
    )


def _mlp(xp, w, x, t_model, tanh, sin):
    """Channel-last forward pass, written once for numpy / jax.numpy / torch via ``xp``."""
    B, H = x.shape[0], w["W1"].shape[1]
    lead = (1,) * (x.ndim - 2)
    emb = sin(t_model.reshape(B, 1) * w["freqs"].reshape(1, -1)) @ w["Wt"]  # [B, H]
    h = tanh(x @ w["W1"] + emb.reshape((B,) + lead + (H,)) + w["b1"].reshape((1,) + lead + (H,)))
    return h @ w["W2"] + w["b2"].reshape((1,) + lead + (-1,))


def np_model(w):
    def f(x, t_model):
        return _mlp(np, w, x, np.asarray(t_model, np.float64), np.tanh, np.sin)
    return f


def jax_model(w):
    def f(x, t_model):
        wj = {k: jnp.asarray(v, x.dtype) for k, v in w.items()}
        return _mlp(jnp, wj, x, jnp.asarray(t_model).astype(x.dtype), jnp.tanh, jnp.sin)
    return f


def torch_model(w, channels_first: bool = False):
    def f(x, t_model):
        wt = {k: torch.as_tensor(v, dtype=x.dtype) for k, v in w.items()}
        if channels_first:
            x = x.movedim(1, -1)
        out = _mlp(torch, wt, x, t_model.to(x.dtype), torch.tanh, torch.sin)
        return out.movedim(-1, 1) if channels_first else out
    return f


# ============================================================ numpy float64 oracle


class NpDiffusion:
    """improved-diffusion's p(x_{t-1} | x_t) from the spec tables (float64, scalar t)."""

    def __init__(self, cfg: spec.DiffusionConfig, channel_axis: int = -1):
        self.cfg, self.tb, self.axis = cfg, cfg.tables(), channel_axis
        self.K = self.tb.num_timesteps

    def t_model(self, t: int, B: int) -> np.ndarray:
        tm = float(self.tb.timestep_map[t])
        if self.cfg.rescale_timesteps:
            tm = tm * 1000.0 / self.cfg.steps
        return np.full(B, tm)

    def abar(self, t: int) -> float:
        return 1.0 if t < 0 else float(self.tb.alphas_cumprod[t])

    def p_mean_variance(self, model, x, t, clip):
        tb, cfg = self.tb, self.cfg
        out = model(x, self.t_model(t, x.shape[0]))
        learned = cfg.model_var_type in (VT.LEARNED, VT.LEARNED_RANGE)
        if learned:
            out, v = np.split(out, 2, axis=self.axis)
        if cfg.model_var_type == VT.FIXED_SMALL:
            logvar = np.full_like(x, tb.posterior_log_variance_clipped[t])
        elif cfg.model_var_type == VT.FIXED_LARGE:
            var = tb.posterior_variance[1] if t == 0 else tb.betas[t]
            logvar = np.full_like(x, math.log(var))
        elif cfg.model_var_type == VT.LEARNED:
            logvar = v
        else:
            frac = (v + 1.0) / 2.0
            logvar = frac * math.log(tb.betas[t]) + (1.0 - frac) * tb.posterior_log_variance_clipped[t]
        c1, c2 = tb.posterior_mean_coef1[t], tb.posterior_mean_coef2[t]
        ab = self.abar(t)

        def process(x0):
            return np.clip(x0, -1.0, 1.0) if clip else x0

        if cfg.model_mean_type == MT.PREVIOUS_X:
            x0 = process((out - c2 * x) / c1)
            mean = out
        else:
            if cfg.model_mean_type == MT.START_X:
                x0 = process(out)
            else:
                x0 = process(x / math.sqrt(ab) - math.sqrt(1.0 / ab - 1.0) * out)
            mean = c1 * x0 + c2 * x
        return mean, logvar, x0

    def eps_from_x0(self, x, t, x0):
        ab = self.abar(t)
        return (x / math.sqrt(ab) - x0) / math.sqrt(1.0 / ab - 1.0)

    def ddpm(self, model, x_T, noise, clip):
        x = x_T
        for i in range(self.K):
            t = self.K - 1 - i
            mean, logvar, _ = self.p_mean_variance(model, x, t, clip)
            x = mean + (np.exp(0.5 * logvar) * noise[i] if t > 0 else 0.0)
        return x

    def ddim(self, model, x_T, noise, eta, clip):
        x = x_T
        for i in range(self.K):
            t = self.K - 1 - i
            _, _, x0 = self.p_mean_variance(model, x, t, clip)
            eps = self.eps_from_x0(x, t, x0)
            ab, ab_prev = self.abar(t), self.abar(t - 1)
            sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
            x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
            if t > 0:
                x = x + sigma * noise[i]
        return x

    def invert(self, model, x0, clip, iters):
        """x_bar_j = x_bar_{j-1} + (sigma_j - sigma_{j-1}) eps, eps first at the start point
        (label max(j-1, 0)), then ``iters`` times at the end point (label j)."""

        def sig(t):
            return math.sqrt(1.0 / self.abar(t) - 1.0)

        def eps_at(x, t):
            _, _, x0hat = self.p_mean_variance(model, x, t, clip)
            return self.eps_from_x0(x, t, x0hat)

        xbar_prev = x0  # abar = 1 at "step -1"
        for j in range(self.K):
            eps = eps_at(xbar_prev * math.sqrt(self.abar(j - 1)), max(j - 1, 0))
            xbar = xbar_prev + (sig(j) - sig(j - 1)) * eps
            for _ in range(iters):
                eps = eps_at(xbar * math.sqrt(self.abar(j)), j)
                xbar = xbar_prev + (sig(j) - sig(j - 1)) * eps
            xbar_prev = xbar
        return xbar_prev * math.sqrt(self.abar(self.K - 1))


# ============================================================ parity helpers


def _setup(cfg, c_in, seed=0, var_offset=0.0):
    learned = cfg.model_var_type in (VT.LEARNED, VT.LEARNED_RANGE)
    w = _weights(c_in, 2 * c_in if learned else c_in, seed, var_offset)
    return w, JaxDiffusion(cfg), TorchDiffusion(cfg), NpDiffusion(cfg)


def _noise(np_rng, K, shape):
    return np_rng.standard_normal(shape), np_rng.standard_normal((K,) + shape)


def _run_jax(fn, dtype, *args):
    out, nfe = jax.jit(fn)(*(jnp.asarray(a, dtype) for a in args))
    return np.asarray(out, np.float64), nfe


PARITY_CASES = [
    # (steps, schedule, respacing, mean type, var type, clip, rescale)
    (12, "cosine", "", MT.EPSILON, VT.FIXED_SMALL, False, False),
    (12, "cosine", "", MT.EPSILON, VT.FIXED_LARGE, True, False),
    (40, "cosine", "6,3", MT.EPSILON, VT.LEARNED_RANGE, True, True),
    (40, "linear", "ddim8", MT.EPSILON, VT.LEARNED, False, False),
    (40, "linear", "10", MT.START_X, VT.FIXED_SMALL, True, False),
    (40, "linear", "10", MT.PREVIOUS_X, VT.LEARNED_RANGE, False, True),
]


@pytest.mark.parametrize("steps,schedule,resp,mtype,vtype,clip,rescale", PARITY_CASES)
def test_ddpm_parity_float64(np_rng, steps, schedule, resp, mtype, vtype, clip, rescale):
    cfg = spec.DiffusionConfig(steps=steps, noise_schedule=schedule,
                               timestep_respacing=resp, model_mean_type=mtype,
                               model_var_type=vtype, rescale_timesteps=rescale)
    w, jd, td, nd = _setup(cfg, 3, var_offset=-4.0 if vtype == VT.LEARNED else 0.0)
    shape = (5, 3)
    x_T, noise = _noise(np_rng, nd.K, shape)
    ref = nd.ddpm(np_model(w), x_T, noise, clip)
    out_j, nfe_j = _run_jax(
        lambda a, b: js.ddpm_sample(None, jd, jax_model(w), shape, clip_denoised=clip, x_T=a, noise=b),
        jnp.float64, x_T, noise)
    out_t, nfe_t = ts.ddpm_sample(td, torch_model(w), shape, clip_denoised=clip,
                                  x_T=torch.as_tensor(x_T), noise=torch.as_tensor(noise))
    assert nfe_j == nfe_t == nd.K == cfg.num_timesteps
    assert np.all(np.isfinite(ref)) and np.abs(ref).max() > 0.1  # a non-degenerate trajectory
    np.testing.assert_allclose(out_j, ref, **F64)
    np.testing.assert_allclose(to_np(out_t), ref, **F64)


DDIM_CASES = [
    # (respacing, mean type, var type, eta, clip)
    ("", MT.EPSILON, VT.FIXED_SMALL, 0.0, False),
    ("ddim6", MT.EPSILON, VT.LEARNED_RANGE, 0.5, True),
    ("ddim6", MT.START_X, VT.FIXED_SMALL, 1.0, True),
    ("5,3", MT.PREVIOUS_X, VT.FIXED_LARGE, 0.5, False),
    ("7", MT.EPSILON, VT.FIXED_SMALL, 1.0, False),
]


@pytest.mark.parametrize("resp,mtype,vtype,eta,clip", DDIM_CASES)
def test_ddim_parity_float64(np_rng, resp, mtype, vtype, eta, clip):
    cfg = spec.DiffusionConfig(steps=36, noise_schedule="linear", timestep_respacing=resp,
                               model_mean_type=mtype, model_var_type=vtype)
    w, jd, td, nd = _setup(cfg, 2, seed=1)
    shape = (6, 2)
    x_T, noise = _noise(np_rng, nd.K, shape)
    ref = nd.ddim(np_model(w), x_T, noise, eta, clip)
    assert np.all(np.isfinite(ref))
    out_j, nfe_j = _run_jax(
        lambda a, b: js.ddim_sample(None, jd, jax_model(w), shape, eta=eta, clip_denoised=clip,
                                    x_T=a, noise=b),
        jnp.float64, x_T, noise)
    out_t, nfe_t = ts.ddim_sample(td, torch_model(w), shape, eta=eta, clip_denoised=clip,
                                  x_T=torch.as_tensor(x_T), noise=torch.as_tensor(noise))
    assert nfe_j == nfe_t == nd.K
    np.testing.assert_allclose(out_j, ref, **F64)
    np.testing.assert_allclose(to_np(out_t), ref, **F64)
    if eta == 0.0:  # deterministic: the noise must not matter
        out_j2, _ = _run_jax(
            lambda a: js.ddim_sample(None, jd, jax_model(w), shape, eta=0.0, clip_denoised=clip, x_T=a),
            jnp.float64, x_T)
        np.testing.assert_array_equal(out_j2, out_j)


@pytest.mark.parametrize("iters,mtype,resp", [(0, MT.EPSILON, ""), (2, MT.START_X, "ddim5")])
def test_ddim_invert_parity_float64(np_rng, iters, mtype, resp):
    cfg = spec.DiffusionConfig(steps=20, noise_schedule="cosine", timestep_respacing=resp,
                               model_mean_type=mtype)
    w, jd, td, nd = _setup(cfg, 2, seed=2)
    x0 = 0.5 * np_rng.standard_normal((4, 2))
    ref = nd.invert(np_model(w), x0, False, iters)
    assert np.all(np.isfinite(ref))
    out_j, nfe_j = _run_jax(
        lambda a: js.ddim_invert(jd, jax_model(w), a, fixed_point_iters=iters), jnp.float64, x0)
    out_t, nfe_t = ts.ddim_invert(td, torch_model(w), torch.as_tensor(x0), fixed_point_iters=iters)
    assert nfe_j == nfe_t == nd.K * (1 + iters)
    np.testing.assert_allclose(out_j, ref, **F64)
    np.testing.assert_allclose(to_np(out_t), ref, **F64)


def test_learned_variance_image_layout_parity(np_rng):
    """NHWC in JAX (variance channels on the last axis) == NCHW in torch (axis 1)."""
    cfg = spec.DiffusionConfig(steps=30, timestep_respacing="6", model_var_type=VT.LEARNED_RANGE)
    w, jd, td, nd = _setup(cfg, 3, seed=3)
    shape = (2, 4, 4, 3)  # NHWC
    x_T, noise = _noise(np_rng, nd.K, shape)
    ref = nd.ddpm(np_model(w), x_T, noise, True)
    out_j, _ = _run_jax(
        lambda a, b: js.ddpm_sample(None, jd, jax_model(w), shape, x_T=a, noise=b),
        jnp.float64, x_T, noise)
    nchw = (2, 3, 4, 4)
    out_t, _ = ts.ddpm_sample(td, torch_model(w, channels_first=True), nchw,
                              x_T=torch.as_tensor(x_T).permute(0, 3, 1, 2),
                              noise=torch.as_tensor(noise).permute(0, 1, 4, 2, 3))
    np.testing.assert_allclose(out_j, ref, **F64)
    np.testing.assert_allclose(to_np(out_t.permute(0, 2, 3, 1)), ref, **F64)


# float32: each step's round-off (about 1e-7 relative) is carried through K = 20 steps; the
# measured worst differences to the float64 oracle over these cases are 6e-7 absolute and
# 1.5e-6 relative, inside the float32 row of the tolerance table with a >= 3x margin.
F32 = tol(np.float32)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "invert"])
def test_float32_parity(np_rng, sampler):
    cfg = spec.DiffusionConfig(steps=200, noise_schedule="cosine", timestep_respacing="20",
                               model_var_type=VT.LEARNED_RANGE, rescale_timesteps=True)
    w, jd, td, nd = _setup(cfg, 2, seed=4)
    shape = (8, 2)
    x_T, noise = _noise(np_rng, nd.K, shape)
    x_T32, noise32 = x_T.astype(np.float32), noise.astype(np.float32)
    if sampler == "ddpm":
        ref = nd.ddpm(np_model(w), x_T32.astype(np.float64), noise32.astype(np.float64), True)
        out_j, _ = _run_jax(lambda a, b: js.ddpm_sample(None, jd, jax_model(w), shape, x_T=a, noise=b),
                            jnp.float32, x_T32, noise32)
        out_t, _ = ts.ddpm_sample(td, torch_model(w), shape, x_T=torch.as_tensor(x_T32),
                                  noise=torch.as_tensor(noise32))
    elif sampler == "ddim":
        ref = nd.ddim(np_model(w), x_T32.astype(np.float64), noise32.astype(np.float64), 0.5, True)
        out_j, _ = _run_jax(
            lambda a, b: js.ddim_sample(None, jd, jax_model(w), shape, eta=0.5, x_T=a, noise=b),
            jnp.float32, x_T32, noise32)
        out_t, _ = ts.ddim_sample(td, torch_model(w), shape, eta=0.5, x_T=torch.as_tensor(x_T32),
                                  noise=torch.as_tensor(noise32))
    else:
        x0 = (0.5 * x_T32).astype(np.float32)
        ref = nd.invert(np_model(w), x0.astype(np.float64), False, 1)
        out_j, _ = _run_jax(lambda a: js.ddim_invert(jd, jax_model(w), a, fixed_point_iters=1),
                            jnp.float32, x0)
        out_t, _ = ts.ddim_invert(td, torch_model(w), torch.as_tensor(x0), fixed_point_iters=1)
    assert out_t.dtype == torch.float32
    np.testing.assert_allclose(out_j, ref, **F32)
    np.testing.assert_allclose(to_np(out_t), ref, **F32)
    np.testing.assert_allclose(out_j, to_np(out_t), **F32)


def test_step_functions_match_oracle(np_rng):
    """The pure steps on their own (mixed t in one batch; no noise at t == 0)."""
    cfg = spec.DiffusionConfig(steps=40, timestep_respacing="8", model_var_type=VT.FIXED_LARGE)
    w, jd, td, nd = _setup(cfg, 2, seed=5)
    x = np_rng.standard_normal((3, 2))
    z = np_rng.standard_normal((3, 2))
    t = np.array([0, 3, 7])
    for k in range(3):
        xk, zk, tk = x[k:k + 1], z[k:k + 1], int(t[k])
        mean, logvar, x0 = nd.p_mean_variance(np_model(w), xk, tk, True)
        want_ddpm = mean + (np.exp(0.5 * logvar) * zk if tk > 0 else 0.0)
        got = js.ddpm_step(jd, jax_model(w), jnp.asarray(x), jnp.asarray(t), jnp.asarray(z))
        got_t = ts.ddpm_step(td, torch_model(w), torch.as_tensor(x), torch.as_tensor(t), torch.as_tensor(z))
        np.testing.assert_allclose(np.asarray(got["sample"])[k:k + 1], want_ddpm, **tol(np.float64))
        np.testing.assert_allclose(to_np(got_t["sample"])[k:k + 1], want_ddpm, **tol(np.float64))
        np.testing.assert_allclose(np.asarray(got["pred_xstart"])[k:k + 1], x0, **tol(np.float64))
        # reverse step t -> t+1 (improved-diffusion ddim_reverse_sample), clip off
        _, _, x0u = nd.p_mean_variance(np_model(w), xk, tk, False)
        eps = nd.eps_from_x0(xk, tk, x0u)
        ab_next = float(nd.tb.alphas_cumprod_next[tk])
        want_rev = math.sqrt(ab_next) * x0u + math.sqrt(1 - ab_next) * eps
        got_r = js.ddim_reverse_step(jd, jax_model(w), jnp.asarray(x), jnp.asarray(t))
        got_rt = ts.ddim_reverse_step(td, torch_model(w), torch.as_tensor(x), torch.as_tensor(t))
        np.testing.assert_allclose(np.asarray(got_r["sample"])[k:k + 1], want_rev, **tol(np.float64))
        np.testing.assert_allclose(to_np(got_rt["sample"])[k:k + 1], want_rev, **tol(np.float64))
    # a scalar t broadcasts over the batch
    a = js.ddim_step(jd, jax_model(w), jnp.asarray(x), 4, jnp.asarray(z), eta=0.3)["sample"]
    b = js.ddim_step(jd, jax_model(w), jnp.asarray(x), jnp.full((3,), 4), jnp.asarray(z), eta=0.3)["sample"]
    c = ts.ddim_step(td, torch_model(w), torch.as_tensor(x), 4, torch.as_tensor(z), eta=0.3)["sample"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(to_np(c), np.asarray(a), **tol(np.float64))


# ============================================================ exact answers (GMM, Gaussian)

MIX = demo_mixture()


def exact_eps_fn(noise_schedule: str, steps: int = 1000, mixture=MIX):
    """Exact eps of the perturbed mixture at base step n = t_model (rescale off):
    ``eps = -sqrt(1 - abar_n) score_n(x)`` with a = sqrt(abar_n), s = sqrt(1 - abar_n)."""
    abar = np.cumprod(1.0 - spec.DiffusionConfig(steps=steps, noise_schedule=noise_schedule).base_betas)
    w, m, c = mixture.weights, mixture.means, mixture.covs

    def eps_fn(x, t_model):
        ab = jnp.asarray(abar, x.dtype)[t_model]
        a, s = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
        return -s[:, None] * gmm_score(x, w, m, c, a, s)

    return eps_fn


def _stats(x: np.ndarray) -> np.ndarray:
    """(mean_x, mean_y, cov_xx, cov_xy, cov_yy, w_1, w_2, w_3) of 2-D samples; weights are
    the averaged responsibilities of the true mixture."""
    return np.concatenate([x.mean(0), np.cov(x.T)[np.triu_indices(2)], MIX.responsibilities(x).mean(0)])


N_MC = 4000


def _truth_and_se(n: int = N_MC):
    """True statistics and their Monte-Carlo standard errors at n samples, estimated from
    a 400k reference sample of the mixture (fourth moments for the covariance entries,
    the responsibilities' spread for the weights)."""
    ref, _ = MIX.sample(np.random.default_rng(12345), 400_000)
    d = ref - MIX.mean
    prods = np.stack([d[:, 0] ** 2, d[:, 0] * d[:, 1], d[:, 1] ** 2], 1)
    spread = np.concatenate([ref.std(0), prods.std(0), MIX.responsibilities(ref).std(0)])
    truth = np.concatenate([MIX.mean, MIX.cov[np.triu_indices(2)], MIX.weights])
    return truth, spread / math.sqrt(n)


TRUTH, SE = _truth_and_se()
# Tolerance in standard errors. Discretisation biases measured with 200k samples (in units
# of SE at n = 4000, +-0.15): DDPM cosine-250 FIXED_LARGE <= 0.12; DDPM linear-250
# FIXED_SMALL <= 0.9 (variances shrink: beta~ underestimates Var(x_{t-1} | x_t)); DDIM
# eta=0 cosine-ddim100 <= 1.05; DDIM eta=1 cosine-ddim100 <= 1.33 (it is DDPM FIXED_SMALL on
# the 100-step grid). With 4.5 SE at least 3.2 SE are left for Monte-Carlo noise, and
# ``test_gmm_check_has_power`` shows a one-step timing error fails the same check.
K_SE = 4.5

GMM_CASES = [
    # (sampler, schedule, respacing, var type, eta, dtype)
    ("ddpm", "cosine", "250", VT.FIXED_LARGE, None, jnp.float32),
    ("ddpm", "linear", "250", VT.FIXED_SMALL, None, jnp.float64),
    ("ddim", "cosine", "ddim100", VT.FIXED_SMALL, 0.0, jnp.float32),
    ("ddim", "cosine", "ddim100", VT.FIXED_SMALL, 1.0, jnp.float64),
]


def _gmm_samples(sampler, schedule, resp, vtype, eta, dtype, eps_fn=None, key=0):
    cfg = spec.DiffusionConfig(steps=1000, noise_schedule=schedule, timestep_respacing=resp,
                               model_var_type=vtype)
    d = JaxDiffusion(cfg)
    eps_fn = eps_fn or exact_eps_fn(schedule)
    if sampler == "ddpm":
        f = jax.jit(lambda k: js.ddpm_sample(k, d, eps_fn, (N_MC, 2), clip_denoised=False, dtype=dtype))
    else:
        f = jax.jit(lambda k: js.ddim_sample(k, d, eps_fn, (N_MC, 2), eta=eta, clip_denoised=False,
                                             dtype=dtype))
    x, nfe = f(jax.random.PRNGKey(key))
    assert x.dtype == dtype and nfe == cfg.num_timesteps
    return np.asarray(x, np.float64)


@pytest.mark.parametrize("sampler,schedule,resp,vtype,eta,dtype", GMM_CASES)
def test_samplers_reproduce_gmm(sampler, schedule, resp, vtype, eta, dtype):
    x = _gmm_samples(sampler, schedule, resp, vtype, eta, dtype)
    z = (_stats(x) - TRUTH) / SE
    assert np.all(np.abs(z) < K_SE), f"deviations in standard errors: {np.round(z, 2)}"


def test_gmm_check_has_power():
    """Negative control: the classic respacing bug, the model fed the respaced index t
    instead of ``timestep_map[t]``, fails the same check by a wide margin. (Its power has
    limits: eps taken one respaced step early in DDIM-100 moves cov_xy by only ~3.4 SE.)"""
    schedule = "cosine"
    good = exact_eps_fn(schedule)
    stride = 10  # "ddim100" of 1000: timestep_map[t] = 10 t

    def unmapped(x, t_model):
        return good(x, t_model // stride)

    x = _gmm_samples("ddim", schedule, "ddim100", VT.FIXED_SMALL, 0.0, jnp.float32, eps_fn=unmapped)
    z = (_stats(x) - TRUTH) / SE
    assert np.max(np.abs(z)) > 3 * K_SE, np.round(z, 2)


def test_ddim_gaussian_flow_map_first_order():
    """Data N(mu, s0^2 I): eps is linear and the exact probability-flow map from step K-1 to
    the data is affine, x_0 = mu + (x - a mu) s0 / sqrt(a^2 s0^2 + s^2) (a, s of abar_{K-1}).
    DDIM (eta = 0, exact eps) approximates it with first-order error in the step size."""
    mu, s0 = 0.3, 0.5
    from spec.oracles.gmm import GaussianMixture

    gauss = GaussianMixture(np.array([1.0]), np.array([[mu, -mu]]), np.array([s0**2 * np.eye(2)]))
    eps_fn = exact_eps_fn("linear", mixture=gauss)
    x_T = np.linspace(-3.0, 3.0, 14).reshape(7, 2)
    errs = []
    for K in (25, 50, 100, 200):
        d = JaxDiffusion(spec.DiffusionConfig(steps=1000, timestep_respacing=f"ddim{K}"))
        ab = d.table("alphas_cumprod")[-1]
        a, s = math.sqrt(ab), math.sqrt(1 - ab)
        mean = np.array([mu, -mu])
        exact = mean + (x_T - a * mean) * s0 / math.sqrt(a**2 * s0**2 + s**2)
        out, _ = jax.jit(lambda v: js.ddim_sample(None, d, eps_fn, (7, 2), x_T=v, clip_denoised=False))(
            jnp.asarray(x_T))
        errs.append(np.abs(np.asarray(out) - exact).max())
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((orders > 0.8) & (orders < 1.3)), (errs, orders)
    # measured 0.161, 0.083, 0.042, 0.021 for |x_T| <= 3: the linear schedule puts few steps
    # near sigma = s0, where the flow map bends
    assert errs[-1] < 0.025, errs


@pytest.fixture(scope="module")
def bulk_points():
    x0, _ = MIX.sample(np.random.default_rng(7), 300)
    logp = MIX.log_prob(x0)
    return x0, logp > np.quantile(logp, 0.1)  # the bulk: all but the 10% least likely


_DECODERS = {}


def _reconstruction_error(x0, resp, iters):
    """Encode with ``ddim_invert``, decode with ``ddim_sample(eta=0)``; per-point max error."""
    d = JaxDiffusion(spec.DiffusionConfig(steps=1000, timestep_respacing=resp))
    eps_fn = exact_eps_fn("linear")
    if resp not in _DECODERS:  # one compiled decoder per grid
        _DECODERS[resp] = jax.jit(
            lambda v: js.ddim_sample(None, d, eps_fn, v.shape, x_T=v, clip_denoised=False))
    enc = jax.jit(lambda v: js.ddim_invert(d, eps_fn, v, fixed_point_iters=iters))
    x_T, nfe = enc(jnp.asarray(x0))
    x_rec, _ = _DECODERS[resp](x_T)
    assert nfe == d.num_timesteps * (1 + iters)
    return np.abs(np.asarray(x_rec) - x0).max(axis=1), np.asarray(x_T)


def test_ddim_invert_reconstructs_first_order(bulk_points):
    """Plain DDIM inversion (eps at each step's start point) reconstructs x_0 with an error
    first order in the step: measured bulk max ~0.10 at K = 50 and ~0.05 at K = 100."""
    x0, bulk = bulk_points
    e50, _ = _reconstruction_error(x0, "ddim50", 0)
    e100, x_T = _reconstruction_error(x0, "ddim100", 0)
    ratio = e50[bulk].max() / e100[bulk].max()
    assert 1.6 < ratio < 2.5, ratio
    assert e100[bulk].max() < 0.07
    # the latent is noise-like: mean ~0, standard deviation ~1 (not a copy of the data)
    assert np.all(np.abs(x_T.mean(0)) < 0.2) and np.all(np.abs(x_T.std(0) - 1) < 0.2)


def test_ddim_invert_fixed_point_reconstructs_tightly(bulk_points):
    """With fixed-point refinement the encoding inverts the decoder: at K = 100 the bulk max
    error falls from ~5e-2 (plain) to ~9e-3, ~1e-3 and ~4e-5 with 1, 2 and 4 iterations;
    the few least likely points, between components where eps bends fastest, converge
    more slowly (worst measured ~4e-3 at 4 iterations)."""
    x0, bulk = bulk_points
    maxima = [_reconstruction_error(x0, "ddim100", n)[0] for n in (1, 4)]
    bulk_max = [m[bulk].max() for m in maxima]
    assert bulk_max[0] > 10 * bulk_max[1], bulk_max
    assert bulk_max[1] < 1e-4 and np.median(maxima[1]) < 1e-5, bulk_max
    assert maxima[1].max() < 1e-2, maxima[1].max()


# ============================================================ NFE, keys, compilation, vmap


def test_nfe_counts_true_model_calls():
    cfg = spec.DiffusionConfig(steps=30, timestep_respacing="7", model_var_type=VT.LEARNED_RANGE)
    w = _weights(2, 4, 0)
    jd, td = JaxDiffusion(cfg), TorchDiffusion(cfg)
    calls = {"jax": 0, "torch": 0}

    def jm(x, t):
        jax.debug.callback(lambda _: calls.__setitem__("jax", calls["jax"] + 1), t)
        return jax_model(w)(x, t)

    def tm(x, t):
        calls["torch"] += 1
        return torch_model(w)(x, t)

    key = jax.random.PRNGKey(0)
    runs = [
        (lambda: js.ddpm_sample(key, jd, jm, (3, 2)), lambda: ts.ddpm_sample(td, tm, (3, 2)), 7),
        (lambda: js.ddim_sample(key, jd, jm, (3, 2), eta=0.5),
         lambda: ts.ddim_sample(td, tm, (3, 2), eta=0.5), 7),
        (lambda: js.ddim_invert(jd, jm, jnp.zeros((3, 2)), fixed_point_iters=2),
         lambda: ts.ddim_invert(td, tm, torch.zeros(3, 2), fixed_point_iters=2), 21),
    ]
    for run_j, run_t, want in runs:
        calls.update(jax=0, torch=0)
        out, nfe = jax.jit(run_j)()
        jax.block_until_ready(out)
        jax.effects_barrier()
        _, nfe_t = run_t()
        assert nfe == nfe_t == calls["jax"] == calls["torch"] == want


def test_key_layout_and_generator_order():
    """JAX: x_T's row j from fold_in(split(rng)[0], j), step i noise of sample j from
    fold_in(fold_in(split(rng)[1], i), j) (per sample). torch: x_T
    then one randn per step from the generator. Both equal feeding those draws explicitly."""
    cfg = spec.DiffusionConfig(steps=40, timestep_respacing="5")
    w = _weights(2, 2, 0)
    jd, td = JaxDiffusion(cfg), TorchDiffusion(cfg)
    shape, K = (4, 2), 5
    key = jax.random.PRNGKey(11)
    k0, k1 = jax.random.split(key)
    x_T = per_sample_normal(k0, shape, jnp.float64)
    noise = jnp.stack([per_sample_normal(jax.random.fold_in(k1, i), shape, jnp.float64) for i in range(K)])
    a, _ = jax.jit(lambda k: js.ddpm_sample(k, jd, jax_model(w), shape, dtype=jnp.float64))(key)
    b, _ = js.ddpm_sample(None, jd, jax_model(w), shape, x_T=x_T, noise=noise)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-14)

    g = torch.Generator().manual_seed(5)
    c, _ = ts.ddim_sample(td, torch_model(w), shape, eta=1.0, dtype=torch.float64, generator=g)
    g = torch.Generator().manual_seed(5)
    xt = torch.randn(shape, generator=g, dtype=torch.float64)
    nz = torch.stack([torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(K)])
    d_, _ = ts.ddim_sample(td, torch_model(w), shape, eta=1.0, x_T=xt, noise=nz)
    assert torch.isfinite(c).all()
    torch.testing.assert_close(c, d_, rtol=0, atol=0)


def test_no_recompilation_for_new_key_or_params():
    """One trace serves every key and every parameter value (the network params are a
    traced argument; diffusion, shape and options are static)."""
    cfg = spec.DiffusionConfig(steps=50, timestep_respacing="10", model_var_type=VT.LEARNED_RANGE)
    jd = JaxDiffusion(cfg)
    traces = []

    @jax.jit
    def sample(params, key):
        traces.append(1)

        def model_fn(x, t):
            return _mlp(jnp, params, x, t.astype(x.dtype), jnp.tanh, jnp.sin)

        a, _ = js.ddpm_sample(key, jd, model_fn, (3, 2), dtype=jnp.float32)
        b, _ = js.ddim_sample(key, jd, model_fn, (3, 2), eta=0.5, dtype=jnp.float32)
        return a, b

    p1 = {k: jnp.asarray(v, jnp.float32) for k, v in _weights(2, 4, 0).items()}
    p2 = {k: jnp.asarray(v, jnp.float32) for k, v in _weights(2, 4, 1).items()}
    outs = [sample(p, jax.random.PRNGKey(k)) for p, k in ((p1, 0), (p1, 1), (p2, 0), (p2, 3))]
    assert len(traces) == 1 and sample._cache_size() == 1
    assert not np.allclose(np.asarray(outs[0][0]), np.asarray(outs[1][0]))  # the key matters
    assert not np.allclose(np.asarray(outs[0][0]), np.asarray(outs[2][0]))  # the params matter


def test_vmap_over_keys():
    cfg = spec.DiffusionConfig(steps=40, timestep_respacing="4", model_var_type=VT.FIXED_LARGE)
    jd, w = JaxDiffusion(cfg), _weights(2, 2, 0)
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    for fn in (
        lambda k: js.ddpm_sample(k, jd, jax_model(w), (5, 2), dtype=jnp.float64)[0],
        lambda k: js.ddim_sample(k, jd, jax_model(w), (5, 2), eta=1.0, dtype=jnp.float64)[0],
    ):
        batched = jax.jit(jax.vmap(fn))(keys)
        single_fn = jax.jit(fn)
        single = np.stack([np.asarray(single_fn(k)) for k in keys])
        assert batched.shape == (3, 5, 2) and np.all(np.isfinite(single))
        np.testing.assert_allclose(np.asarray(batched), single, rtol=1e-12, atol=1e-13)


# ============================================================ bad input


def _bad_input_cases(fw):
    """(callable, exception, message fragment) for framework ``fw`` ('jax' / 'torch')."""
    cfg = spec.DiffusionConfig(steps=40, timestep_respacing="ddim10")
    cfg_lr = spec.DiffusionConfig(steps=40, timestep_respacing="ddim10", model_var_type=VT.LEARNED_RANGE)
    calls = []
    if fw == "jax":
        mod, D, key, arr = js, JaxDiffusion, jax.random.PRNGKey(0), jnp.zeros
        wrap = jax_model

        def first(fn):  # the key comes first in JAX
            return lambda *a, **k: fn(key, *a, **k)
        int_dtype, f64 = jnp.int32, jnp.float64
    else:
        mod, D, arr = ts, TorchDiffusion, torch.zeros
        wrap = torch_model

        def first(fn):
            return fn
        int_dtype, f64 = torch.int32, torch.float64
    d, d_lr = D(cfg), D(cfg_lr)

    def counted(w):
        m = wrap(w)

        def f(x, t):
            calls.append(1)
            return m(x, t)
        return f

    m2 = counted(_weights(2, 2, 0))  # C channels: wrong for a learned variance
    ddpm, ddim = first(mod.ddpm_sample), first(mod.ddim_sample)
    pre = [  # rejected before the model is ever called
        (lambda: ddpm(d, m2, (4, 2), x_T=arr((3, 2), dtype=f64)), ValueError, "x_T must have shape"),
        (lambda: ddpm(d, m2, (4, 2), noise=arr((9, 4, 2), dtype=f64)), ValueError,
         "noise must have shape [num_timesteps, *shape]"),
        (lambda: ddim(d, m2, (4, 2), eta=-0.1), ValueError, "eta must be >= 0"),
        (lambda: ddim(d, m2, (4, 2), eta=20.0), ValueError, "eta=20.0 makes"),
        (lambda: ddim(d, m2, (4, 2), eta="0"), TypeError, "eta must be a real number"),
        (lambda: ddpm(d, m2, (4, 2), dtype=int_dtype), TypeError, "dtype must be a floating"),
        (lambda: ddpm(d, m2, (4, 2), x_T=arr((4, 2), dtype=int_dtype)), TypeError,
         "x_T must have a floating dtype"),
        (lambda: ddpm(d, m2, ()), ValueError, "shape must be a non-empty tuple"),
        (lambda: ddpm(d, m2, "4,2"), TypeError, "shape must be a tuple of ints"),
        (lambda: ddpm(cfg, m2, (4, 2)), TypeError, "diffusion must be a"),
        (lambda: ddpm(d, None, (4, 2)), TypeError, "model_fn must be callable"),
        (lambda: mod.ddim_invert(d, m2, arr((4, 2), dtype=int_dtype)), TypeError,
         "x0 must have a floating dtype"),
        (lambda: mod.ddim_invert(d, m2, arr((4, 2)), fixed_point_iters=-1), ValueError,
         "fixed_point_iters must be >= 0"),
        (lambda: mod.ddim_invert(d, m2, arr((4, 2)), fixed_point_iters=1.5), TypeError,
         "fixed_point_iters must be an integer"),
    ]
    if fw == "jax":
        pre.append((lambda: js.ddpm_sample(None, d, m2, (4, 2)), TypeError, "rng must be a jax.random key"))
    else:
        pre.append((lambda: ts.ddpm_sample(d, m2, (4, 2), generator=5), TypeError,
                    "generator must be None or a torch.Generator"))
    # the model output is checked on the first (traced) call, before any compute, naming
    # the function (a learned variance doubles the channels)
    msg = "model_fn returned shape (4, 2) for x of shape (4, 2); expected (4, 4)"
    post = [
        (lambda: ddpm(d_lr, m2, (4, 2)), ValueError, msg),
        (lambda: ddim(d_lr, m2, (4, 2)), ValueError, msg),
        (lambda: mod.ddim_invert(d_lr, m2, arr((4, 2))), ValueError, msg),
    ]
    return pre, post, calls


@pytest.mark.parametrize("fw", ["jax", "torch"])
def test_bad_input_raises_early(fw):
    pre, post, calls = _bad_input_cases(fw)
    for fn, exc, msg in pre:
        with pytest.raises(exc, match=None) as info:
            fn() if fw == "torch" else jax.jit(fn)()
        assert msg in str(info.value), (msg, str(info.value))
    assert calls == []  # none of these reached the model
    for fn, exc, msg in post:
        with pytest.raises(exc) as info:
            fn() if fw == "torch" else jax.jit(fn)()
        assert msg in str(info.value), (msg, str(info.value))
