"""Guidance (jax_impl/guidance.py <-> torch_ref/guidance.py): with the exact class-conditional
score of a Gaussian mixture (class k = component k of the demo mixture, label 3 = the null
class = the whole mixture), classifier-free guidance at scale 1 (DDIM, the probability-flow
ODE) and classifier guidance at scale 1 (PC) sample each class's Gaussian, and scale 0 the
unconditional mixture: means and covariances within Monte-Carlo error. JAX == torch ==
numpy for the wrappers, one batched call, errors.

Monte-Carlo check: N_PER_CLASS = 1000 samples per class; each statistic (2 means, 3
covariance entries per class) must lie within K_SE = 4.5 standard errors of the truth
(Gaussian SEs: sqrt(C_ii / n) for a mean, sqrt((C_ii C_jj + C_ij^2) / n) for a covariance
entry); the unconditional checks use 3000 samples, their SEs from a 200k exact sample.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import spec
from jax_impl import gmm as jgmm
from jax_impl import guidance as jg
from jax_impl import samplers as js
from jax_impl import sde as jsde
from jax_impl.diffusion import GaussianDiffusion as JaxDiffusion
from parity_tests.helpers import to_np, tol
from spec.oracles.gmm import demo_mixture
from torch_ref import gmm as tgmm
from torch_ref import guidance as tg
from torch_ref import sde as tsde

MIX = demo_mixture()
K = 3                      # classes: the mixture's components
NULL = K                   # the null label: the unconditional mixture
N_PER_CLASS = 1000
K_SE = 4.5


# ----------------------------------------------------------------- exact class scores


def _j_class_scores(x, a, s):
    """[K + 1, B, D]: each component's perturbed score, then the mixture's (JAX)."""
    w, m, c = MIX.weights, MIX.means, MIX.covs
    per = [jgmm.gmm_score(x, np.ones(1), m[k:k + 1], c[k:k + 1], a, s) for k in range(K)]
    return jnp.stack(per + [jgmm.gmm_score(x, w, m, c, a, s)])


def _t_class_scores(x, a, s):
    w, m, c = MIX.weights, MIX.means, MIX.covs
    per = [tgmm.gmm_score(x, np.ones(1), m[k:k + 1], c[k:k + 1], a, s) for k in range(K)]
    return torch.stack(per + [tgmm.gmm_score(x, w, m, c, a, s)])


def j_cond_score(sde):
    """Exact ``score(x, t, y)``: component y's perturbed score, the mixture's for y = NULL."""
    def score_fn(x, t, y):
        mean, std = sde.marginal_prob(jnp.ones_like(x), t)
        onehot = jax.nn.one_hot(y, K + 1, dtype=x.dtype)
        return jnp.einsum("kbd,bk->bd", _j_class_scores(x, mean[:, 0], std), onehot)
    return score_fn


def t_cond_score(sde):
    def score_fn(x, t, y):
        mean, std = sde.marginal_prob(torch.ones_like(x), t)
        onehot = torch.nn.functional.one_hot(y, K + 1).to(x.dtype)
        return torch.einsum("kbd,bk->bd", _t_class_scores(x, mean[:, 0], std), onehot)
    return score_fn


def j_log_posterior(sde):
    """Exact noise-conditional classifier ``log p_t(y | x)`` [B] (y < K)."""
    w, m, c = MIX.weights, MIX.means, MIX.covs

    def log_prob_fn(x, t, y):
        mean, std = sde.marginal_prob(jnp.ones_like(x), t)
        a = mean[:, 0]
        comp = jnp.stack([jgmm.gmm_log_prob(x, np.ones(1), m[k:k + 1], c[k:k + 1], a, std) + np.log(w[k])
                          for k in range(K)], axis=1)                       # [B, K]
        return (jnp.take_along_axis(comp, y[:, None], axis=1)[:, 0]
                - jgmm.gmm_log_prob(x, w, m, c, a, std))
    return log_prob_fn


def t_log_posterior(sde):
    w, m, c = MIX.weights, MIX.means, MIX.covs

    def log_prob_fn(x, t, y):
        mean, std = sde.marginal_prob(torch.ones_like(x), t)
        a = mean[:, 0]
        comp = torch.stack([tgmm.gmm_log_prob(x, np.ones(1), m[k:k + 1], c[k:k + 1], a, std) + math.log(w[k])
                            for k in range(K)], dim=1)
        return comp.gather(1, y[:, None])[:, 0] - tgmm.gmm_log_prob(x, w, m, c, a, std)
    return log_prob_fn


def j_cond_eps(abar):
    """Exact ``eps(x, t_model, y) = -sqrt(1 - abar) score`` of a GaussianDiffusion (rescale off)."""
    def eps_fn(x, t_model, y):
        ab = jnp.asarray(abar, x.dtype)[t_model]
        a, s = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
        onehot = jax.nn.one_hot(y, K + 1, dtype=x.dtype)
        return -s[:, None] * jnp.einsum("kbd,bk->bd", _j_class_scores(x, a, s), onehot)
    return eps_fn


# ----------------------------------------------------------------- Monte-Carlo checks


LABELS = np.repeat(np.arange(K), N_PER_CLASS)


def assert_class_gaussians(x, labels=LABELS):
    """Per class k: sample mean and covariance against N(mu_k, C_k), in standard errors."""
    x = np.asarray(x, np.float64)
    z = []
    for k in range(K):
        xk = x[labels == k]
        n, mu, C = len(xk), MIX.means[k], MIX.covs[k]
        z += list((xk.mean(0) - mu) / np.sqrt(np.diag(C) / n))
        S = np.cov(xk.T)
        for i, j in ((0, 0), (0, 1), (1, 1)):
            z.append((S[i, j] - C[i, j]) / math.sqrt((C[i, i] * C[j, j] + C[i, j] ** 2) / n))
    z = np.asarray(z)
    assert np.all(np.abs(z) < K_SE), f"per-class deviations in standard errors: {np.round(z, 2)}"


def _mixture_stats(x):
    d = x - MIX.mean
    return np.concatenate([x, np.stack([d[:, 0] ** 2, d[:, 0] * d[:, 1], d[:, 1] ** 2], 1),
                           MIX.responsibilities(x)], axis=1)


_REF = {}


def assert_mixture(x):
    """Mean, covariance and component weights of the whole sample against the mixture."""
    if not _REF:
        ref, _ = MIX.sample(np.random.default_rng(99), 200_000)
        _REF["std"] = _mixture_stats(ref).std(0)
    x = np.asarray(x, np.float64)
    truth = np.concatenate([MIX.mean, MIX.cov[np.triu_indices(2)], MIX.weights])
    z = (_mixture_stats(x).mean(0) - truth) / (_REF["std"] / math.sqrt(len(x)))
    assert np.all(np.abs(z) < K_SE), f"deviations from the mixture in standard errors: {np.round(z, 2)}"


# ------------------------------------------------------------ sampling the right laws


def _ddim(scale):
    cfg = spec.DiffusionConfig(steps=1000, noise_schedule="cosine", timestep_respacing="ddim50")
    d = JaxDiffusion(cfg)
    abar = np.cumprod(1.0 - spec.DiffusionConfig(steps=1000, noise_schedule="cosine").base_betas)
    fn = jg.cfg_model_fn(j_cond_eps(abar), jnp.asarray(LABELS), scale=scale, null_label=NULL)
    run = jax.jit(lambda k: js.ddim_sample(k, d, fn, (len(LABELS), 2), eta=0.0, clip_denoised=False,
                                           dtype=jnp.float32))
    x, nfe = run(jax.random.PRNGKey(0))
    assert nfe == 50 and x.dtype == jnp.float32
    return x


def test_cfg_ddim_scale_1_samples_each_class():
    assert_class_gaussians(_ddim(1.0))


def test_cfg_ddim_scale_0_samples_the_unconditional_mixture():
    assert_mixture(_ddim(0.0))


def test_cfg_ode_scale_1_batched_path_samples_each_class():
    """A traced scale takes the batched cond + null call (2B rows) of every evaluation."""
    sde = jsde.VPSDE(N=1000)
    x, nfe = jax.jit(lambda k, w: js.ode_sample(
        k, sde, jg.cfg_score_fn(j_cond_score(sde), jnp.asarray(LABELS), scale=w, null_label=NULL),
        (len(LABELS), 2), method="heun", num_steps=50, dtype=jnp.float32))(jax.random.PRNGKey(1),
                                                                          jnp.float32(1.0))
    assert nfe == 100
    assert_class_gaussians(x)


def test_classifier_guidance_pc_scale_1_samples_each_class():
    """score_sde's conditional PC sampler: the mixture's score plus grad log p_t(y | x)
    (Euler-Maruyama, N = 200; scale 0 is the unguided score exactly, checked in
    ``test_classifier_guided_score_three_way``)."""
    sde = jsde.VPSDE(N=200)
    run = jax.jit(lambda k: jg.pc_conditional_sample(
        k, sde, jgmm.score_fn_for_sde(sde, MIX), j_log_posterior(sde), jnp.asarray(LABELS),
        (len(LABELS), 2), scale=1.0, predictor="euler_maruyama", corrector="none",
        dtype=jnp.float32))
    x, nfe = run(jax.random.PRNGKey(2))
    assert int(nfe) == 200
    assert_class_gaussians(x)


# ------------------------------------------------------------------- JAX == torch == numpy


def _np_class_score(x, a, s, y):
    out = np.empty_like(x)
    for b in range(len(x)):
        mix = MIX if y[b] == NULL else spec.oracles.gmm.GaussianMixture(
            np.ones(1), MIX.means[y[b]:y[b] + 1], MIX.covs[y[b]:y[b] + 1])
        out[b] = mix.perturbed(a[b], s[b]).score(x[b:b + 1])[0]
    return out


def _oracle_inputs(np_rng):
    x = np_rng.standard_normal((6, 2))
    t = np_rng.uniform(0.05, 1.0, 6)
    y = np.array([0, 1, 2, 2, 1, 0])
    mean, std = jsde.VPSDE().marginal_prob(jnp.ones((6, 1)), jnp.asarray(t))
    a, s = np.asarray(mean[:, 0]), np.asarray(std)
    return x, t, y, _np_class_score(x, a, s, y), _np_class_score(x, a, s, np.full(6, NULL))


def test_cfg_score_fn_three_way(np_rng):
    """JAX (jitted, a traced scale: the batched path) == torch == the numpy mix of the
    float64 oracle scores, at scales 2.5, 1 and 0 (Python scales 1 and 0 take the one-call
    shortcut)."""
    jsd, tsd = jsde.VPSDE(), tsde.VPSDE()
    x, t, y, cond, uncond = _oracle_inputs(np_rng)
    jfn = jax.jit(lambda x, t, w: jg.cfg_score_fn(j_cond_score(jsd), jnp.asarray(y), scale=w,
                                                  null_label=NULL)(x, t))
    for scale in (2.5, 1.0, 0.0):
        want = uncond + scale * (cond - uncond)
        got_j = jfn(jnp.asarray(x), jnp.asarray(t), jnp.float64(scale))
        np.testing.assert_allclose(to_np(got_j), want, **tol(np.float64))
        for w in (scale, torch.tensor(scale, dtype=torch.float64)):
            got_t = tg.cfg_score_fn(t_cond_score(tsd), torch.as_tensor(y), scale=w, null_label=NULL)(
                torch.as_tensor(x), torch.as_tensor(t))
            np.testing.assert_allclose(to_np(got_t), want, **tol(np.float64))


def test_classifier_guided_score_three_way(np_rng):
    """``score + s grad log p_t(y | x)`` with the exact posterior: scale 1 is each class's
    own score (Bayes' rule), 0 the mixture's, 3 the extrapolation; JAX == torch == numpy."""
    jsd, tsd = jsde.VPSDE(), tsde.VPSDE()
    x, t, y, cond, uncond = _oracle_inputs(np_rng)
    jfn = jax.jit(lambda x, t, w: jg.classifier_guided_score_fn(
        jgmm.score_fn_for_sde(jsd, MIX), j_log_posterior(jsd), jnp.asarray(y), scale=w)(x, t))
    for scale in (3.0, 1.0, 0.0):
        want = uncond + scale * (cond - uncond)
        got_j = jfn(jnp.asarray(x), jnp.asarray(t), jnp.float64(scale))
        with torch.no_grad():  # as inside the samplers: the gradient is enabled where needed
            got_t = tg.classifier_guided_score_fn(tgmm.score_fn_for_sde(tsd, MIX), t_log_posterior(tsd),
                                                  torch.as_tensor(y), scale=scale)(torch.as_tensor(x),
                                                                                   torch.as_tensor(t))
        np.testing.assert_allclose(to_np(got_j), want, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(to_np(got_t), want, rtol=1e-9, atol=1e-10)


def test_pc_conditional_sample_jax_equals_torch(np_rng):
    """The whole trajectory from shared numpy noise (float64, 25 steps, Langevin corrector)."""
    N = 25
    jsd, tsd = jsde.VPSDE(N=N), tsde.VPSDE(N=N)
    B = 6
    y = np.array([0, 1, 2, 2, 1, 0])
    z0 = np_rng.standard_normal((B, 2))
    noise = {"predictor": np_rng.standard_normal((N, B, 2)),
             "corrector": np_rng.standard_normal((N, 1, B, 2))}
    xj, nj = jg.pc_conditional_sample(None, jsd, jgmm.score_fn_for_sde(jsd, MIX), j_log_posterior(jsd),
                                      jnp.asarray(y), (B, 2), scale=2.0, x_T=jnp.asarray(z0),
                                      noise={k: jnp.asarray(v) for k, v in noise.items()})
    xt, nt = tg.pc_conditional_sample(tsd, tgmm.score_fn_for_sde(tsd, MIX), t_log_posterior(tsd),
                                      torch.as_tensor(y), (B, 2), scale=2.0, x_T=torch.as_tensor(z0),
                                      noise={k: torch.as_tensor(v) for k, v in noise.items()})
    assert int(nj) == nt == 2 * N
    np.testing.assert_allclose(to_np(xj), to_np(xt), rtol=1e-9, atol=1e-10)


def _toy_fn(side, image):
    """A class-conditional 'network' whose output has 2C channels (eps, v) on the side's
    channel axis: eps = x (1 + y) + t, v = x - y."""
    if side == "jax":
        def fn(x, t, y):
            yy = y.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
            tt = t.reshape((-1,) + (1,) * (x.ndim - 1))
            return jnp.concatenate([x * (1 + yy) + tt, x - yy], axis=-1)
    else:
        def fn(x, t, y):
            yy = y.to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
            tt = t.reshape((-1,) + (1,) * (x.ndim - 1))
            return torch.cat([x * (1 + yy) + tt, x - yy], dim=1 if image else -1)
    return fn


@pytest.mark.parametrize("image", [False, True])
def test_cfg_model_fn_learn_sigma_guides_eps_only(image, np_rng):
    """With learn_sigma only the eps half is mixed; v is the conditional row's. NHWC on the
    JAX side, NCHW on torch's (each side's CHANNEL_AXIS)."""
    shape = (4, 2, 2, 3) if image else (4, 3)
    x = np_rng.standard_normal(shape)
    t = np_rng.uniform(0, 999, 4)
    y, w, null = np.array([0, 1, 2, 1]), 3.0, 5
    yb = y.reshape((-1,) + (1,) * (x.ndim - 1))
    tb = t.reshape((-1,) + (1,) * (x.ndim - 1))
    eps = lambda yy: x * (1 + yy) + tb  # noqa: E731
    want = np.concatenate([eps(null) + w * (eps(yb) - eps(null)), x - yb], axis=-1)
    got_j = jg.cfg_model_fn(_toy_fn("jax", image), jnp.asarray(y), scale=w, null_label=null,
                            learn_sigma=True)(jnp.asarray(x), jnp.asarray(t))
    xt = torch.as_tensor(np.moveaxis(x, -1, 1).copy() if image else x)
    got_t = tg.cfg_model_fn(_toy_fn("torch", image), torch.as_tensor(y), scale=w, null_label=null,
                            learn_sigma=True)(xt, torch.as_tensor(t))
    np.testing.assert_allclose(to_np(got_j), want, **tol(np.float64))
    got_t = to_np(got_t)
    np.testing.assert_allclose(np.moveaxis(got_t, 1, -1) if image else got_t, want, **tol(np.float64))


def test_one_batched_call_and_scalar_labels():
    """Scale 2: ONE call on 2B rows ([y; null]); Python scales 1 and 0: one call on B rows.
    A scalar label means every sample of that class."""
    calls = []

    def fn(x, t, y):
        calls.append(np.asarray(y))
        return x * y[:, None].astype(x.dtype)

    x = jnp.ones((3, 2))
    out = jg.cfg_model_fn(fn, 2, scale=2.0, null_label=7)(x, jnp.zeros(3))
    assert len(calls) == 1 and calls[0].tolist() == [2, 2, 2, 7, 7, 7]
    np.testing.assert_allclose(out, 7 + 2.0 * (2 - 7) * np.ones((3, 2)))
    calls.clear()
    jg.cfg_model_fn(fn, 2, scale=1.0, null_label=7)(x, jnp.zeros(3))
    jg.cfg_model_fn(fn, 2, scale=0, null_label=7)(x, 0.5)
    assert [c.tolist() for c in calls] == [[2, 2, 2], [7, 7, 7]]
    tcalls = []

    def tfn(x, t, y):
        tcalls.append(y.tolist())
        return x * y[:, None].to(x.dtype)

    tg.cfg_model_fn(tfn, 2, scale=2.0, null_label=7)(torch.ones(3, 2), torch.zeros(3))
    assert tcalls == [[2, 2, 2, 7, 7, 7]]
    np.testing.assert_allclose(to_np(jg.guidance_combine(jnp.ones(2), jnp.zeros(2), 3.0)), [3.0, 3.0])
    np.testing.assert_allclose(to_np(tg.guidance_combine(torch.ones(2), torch.zeros(2), 3.0)), [3.0, 3.0])


@pytest.mark.parametrize("side", ["jax", "torch"])
def test_bad_arguments_raise_early(side):
    g, arr = (jg, jnp.asarray) if side == "jax" else (tg, torch.as_tensor)
    fn = lambda x, t, y: x  # noqa: E731
    with pytest.raises(TypeError, match="model_fn"):
        g.cfg_model_fn(None, 1, scale=1.0, null_label=3)
    with pytest.raises(TypeError, match="y must hold integer"):
        g.cfg_model_fn(fn, arr(np.array([0.5])), scale=1.0, null_label=3)
    with pytest.raises(ValueError, match="y must hold labels >= 0"):
        g.cfg_model_fn(fn, arr(np.array([-1])), scale=1.0, null_label=3)
    with pytest.raises(ValueError, match="null_label"):
        g.cfg_score_fn(fn, 1, scale=1.0, null_label=-1)
    with pytest.raises(ValueError, match="scale"):
        g.cfg_score_fn(fn, 1, scale=float("nan"), null_label=3)
    with pytest.raises(TypeError, match="scale"):
        g.cfg_score_fn(fn, 1, scale="3", null_label=3)
    with pytest.raises(ValueError, match=r"y must have shape \[B\] = \[2\]"):
        g.cfg_score_fn(fn, arr(np.array([0, 1, 2])), scale=2.0, null_label=3)(arr(np.ones((2, 2))),
                                                                            arr(np.ones(2)))
    with pytest.raises(TypeError, match="log_prob_fn"):
        g.classifier_guided_score_fn(lambda x, t: x, 3, 1)
    bad = g.classifier_guided_score_fn(lambda x, t: x, lambda x, t, y: x, 1)
    with pytest.raises(ValueError, match="log_prob_fn must return"):
        bad(arr(np.ones((2, 2))), arr(np.ones(2)))
    with pytest.raises(ValueError, match="one label per sample"):
        args = (None,) if side == "jax" else ()
        sde = jsde.VPSDE(N=5) if side == "jax" else tsde.VPSDE(N=5)
        g.pc_conditional_sample(*args, sde, lambda x, t: x, lambda x, t, y: x[:, 0], arr(np.array([0, 1])),
                                (3, 2))
