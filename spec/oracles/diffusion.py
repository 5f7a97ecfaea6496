"""float64 numpy oracle of the discrete Gaussian diffusion maths (improved-diffusion).

The reference the parity tests hold ``jax_impl/diffusion.py`` and
``torch_ref/diffusion.py`` to. Written independently of both: it recomputes every
coefficient from the respaced ``betas`` alone (not from ``spec.DiffusionTables``), in
float64, with plain numpy indexing. numpy + math only.

Same public names and semantics as the two implementations (see the JAX docstring):
``t`` is an integer index ``[B]`` into the respaced process, the model sees
``timestep_map[t]`` (times ``1000 / original_num_steps`` with ``rescale_timesteps``),
variational-bound terms are in bits per dimension, ``calc_bpd_loop`` runs t from T-1
down to 0 with ``noise[j]`` for ``t = T-1-j``.
"""

from __future__ import annotations

import math

import numpy as np

from spec.configs import DiffusionConfig, LossType, ModelMeanType, ModelVarType


def mean_flat(x: np.ndarray) -> np.ndarray:
    """Mean over every axis but the first."""
    x = np.asarray(x)
    return x.mean(axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def normal_kl(mean1, logvar1, mean2, logvar2) -> np.ndarray:
    """KL(N(m1, e^{lv1}) || N(m2, e^{lv2})) = log(s2/s1) + (s1^2 + (m1-m2)^2) / (2 s2^2) - 1/2."""
    mean1, logvar1, mean2, logvar2 = (np.asarray(a, np.float64) for a in (mean1, logvar1, mean2, logvar2))
    var1, var2 = np.exp(logvar1), np.exp(logvar2)
    return 0.5 * (logvar2 - logvar1) + (var1 + (mean1 - mean2) ** 2) / (2.0 * var2) - 0.5


def approx_standard_normal_cdf(x) -> np.ndarray:
    """``1/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    x = np.asarray(x, np.float64)
    return 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, *, means, log_scales) -> np.ndarray:
    """log-probability of the 1/255-wide bin around x (open edge bins at +-0.999)."""
    x, means, log_scales = (np.asarray(a, np.float64) for a in (x, means, log_scales))
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError("x, means and log_scales must have the same shape")
    scale = np.exp(log_scales)
    upper = approx_standard_normal_cdf((x + 1.0 / 255.0 - means) / scale)
    lower = approx_standard_normal_cdf((x - 1.0 / 255.0 - means) / scale)
    prob = np.where(x < -0.999, upper, np.where(x > 0.999, 1.0 - lower, upper - lower))
    return np.log(np.maximum(prob, 1e-12))


class GaussianDiffusion:
    """float64 oracle with the implementations' method names (no checks, no dtype)."""

    def __init__(self, config: DiffusionConfig, channel_axis: int = -1):
        self.config = config
        self.channel_axis = channel_axis
        tables = config.tables()
        betas = np.asarray(tables.betas, np.float64)
        self.timestep_map = np.asarray(tables.timestep_map)
        self.original_num_steps = config.steps
        self.num_timesteps = T = len(betas)
        self.betas = betas
        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.concatenate([[1.0], abar[:-1]])
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = abar_prev
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        first = self.posterior_variance[1] if T > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(
            np.concatenate([[first], self.posterior_variance[1:]])
        )
        self.coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.coef2 = (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)
        self.fixed_large_variance = np.concatenate([[first], betas[1:]])

    # helpers
    @staticmethod
    def _b(values: np.ndarray, t, x) -> np.ndarray:
        v = np.asarray(values)[np.asarray(t)]
        return v.reshape(v.shape + (1,) * (np.ndim(x) - 1))

    def q_mean_variance(self, x_start, t):
        a = self._b(self.alphas_cumprod, t, x_start)
        shape = np.shape(x_start)
        return (np.sqrt(a) * x_start, np.broadcast_to(1.0 - a, shape),
                np.broadcast_to(np.log(1.0 - a), shape))

    def q_sample(self, x_start, t, noise):
        a = self._b(self.alphas_cumprod, t, x_start)
        return np.sqrt(a) * x_start + np.sqrt(1.0 - a) * noise

    def q_posterior_mean_variance(self, x_start, x_t, t):
        mean = self._b(self.coef1, t, x_t) * x_start + self._b(self.coef2, t, x_t) * x_t
        shape = np.shape(x_t)
        return (mean, np.broadcast_to(self._b(self.posterior_variance, t, x_t), shape),
                np.broadcast_to(self._b(self.posterior_log_variance_clipped, t, x_t), shape))

    def predict_xstart_from_eps(self, x_t, t, eps):
        a = self._b(self.alphas_cumprod, t, x_t)
        return (x_t - np.sqrt(1.0 - a) * eps) / np.sqrt(a)

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        a = self._b(self.alphas_cumprod, t, x_t)
        return (x_t - np.sqrt(a) * pred_xstart) / np.sqrt(1.0 - a)

    def predict_xstart_from_xprev(self, x_t, t, xprev):
        return (xprev - self._b(self.coef2, t, x_t) * x_t) / self._b(self.coef1, t, x_t)

    def scale_timesteps(self, t):
        mapped = self.timestep_map[np.asarray(t)]
        if self.config.rescale_timesteps:
            return mapped.astype(np.float64) * 1000.0 / self.original_num_steps
        return mapped

    def p_mean_variance_from_output(self, model_output, x, t, *, clip_denoised=True, denoised_fn=None):
        x = np.asarray(x, np.float64)
        out = np.asarray(model_output, np.float64)
        vtype, mtype = self.config.model_var_type, self.config.model_mean_type
        shape = x.shape
        if vtype in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            axis = self.channel_axis % x.ndim
            C = x.shape[axis]
            mean_part = np.take(out, np.arange(C), axis=axis)
            v = np.take(out, np.arange(C, 2 * C), axis=axis)
            if vtype == ModelVarType.LEARNED:
                log_variance = v
            else:
                lo = self._b(self.posterior_log_variance_clipped, t, x)
                hi = self._b(np.log(self.betas), t, x)
                log_variance = lo + (v + 1.0) / 2.0 * (hi - lo)
            variance = np.exp(log_variance)
        else:
            mean_part = out
            table = self.fixed_large_variance if vtype == ModelVarType.FIXED_LARGE else None
            if table is None:
                variance = np.broadcast_to(self._b(self.posterior_variance, t, x), shape)
                log_variance = np.broadcast_to(self._b(self.posterior_log_variance_clipped, t, x), shape)
            else:
                variance = np.broadcast_to(self._b(table, t, x), shape)
                log_variance = np.log(variance)

        def process(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return np.clip(x0, -1.0, 1.0) if clip_denoised else x0

        if mtype == ModelMeanType.PREVIOUS_X:
            pred_xstart = process(self.predict_xstart_from_xprev(x, t, mean_part))
            mean = mean_part
        else:
            if mtype == ModelMeanType.START_X:
                pred_xstart = process(mean_part)
            else:
                pred_xstart = process(self.predict_xstart_from_eps(x, t, mean_part))
            mean = self.q_posterior_mean_variance(pred_xstart, x, t)[0]
        return {"mean": mean, "variance": variance, "log_variance": log_variance,
                "pred_xstart": pred_xstart, "model_output": mean_part}

    def p_mean_variance(self, model_fn, x, t, *, clip_denoised=True, denoised_fn=None):
        out = model_fn(x, self.scale_timesteps(t))
        return self.p_mean_variance_from_output(out, x, t, clip_denoised=clip_denoised,
                                                denoised_fn=denoised_fn)

    def vb_terms_bpd_from_output(self, model_output, x_start, x_t, t, *, clip_denoised=True):
        true_mean, _, true_logvar = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance_from_output(model_output, x_t, t, clip_denoised=clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"])) / math.log(2.0)
        return {"output": np.where(np.asarray(t) == 0, nll, kl), "pred_xstart": out["pred_xstart"]}

    def vb_terms_bpd(self, model_fn, x_start, x_t, t, *, clip_denoised=True):
        out = model_fn(x_t, self.scale_timesteps(t))
        return self.vb_terms_bpd_from_output(out, x_start, x_t, t, clip_denoised=clip_denoised)

    def prior_bpd(self, x_start):
        a = self.alphas_cumprod[-1]
        kl = normal_kl(np.sqrt(a) * x_start, np.log(1.0 - a), 0.0, 0.0)
        return mean_flat(kl) / math.log(2.0)

    def calc_bpd_loop(self, model_fn, x_start, noise, *, clip_denoised=True):
        T, B = self.num_timesteps, np.shape(x_start)[0]
        vb, xstart_mse, mse = [], [], []
        for j in range(T):
            t = np.full(B, T - 1 - j, dtype=np.int64)
            x_t = self.q_sample(x_start, t, noise[j])
            out = self.vb_terms_bpd(model_fn, x_start, x_t, t, clip_denoised=clip_denoised)
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            mse.append(mean_flat((self.predict_eps_from_xstart(x_t, t, out["pred_xstart"]) - noise[j]) ** 2))
        vb, xstart_mse, mse = (np.stack(a, axis=1) for a in (vb, xstart_mse, mse))
        prior = self.prior_bpd(x_start)
        return {"total_bpd": vb.sum(axis=1) + prior, "prior_bpd": prior, "vb": vb,
                "xstart_mse": xstart_mse, "mse": mse}

    def training_losses(self, model_fn, x_start, t, noise):
        cfg = self.config
        x_t = self.q_sample(x_start, t, noise)
        out = np.asarray(model_fn(x_t, self.scale_timesteps(t)), np.float64)
        if cfg.loss_type in (LossType.KL, LossType.RESCALED_KL):
            loss = self.vb_terms_bpd_from_output(out, x_start, x_t, t, clip_denoised=False)["output"]
            return {"loss": loss * (self.num_timesteps if cfg.loss_type == LossType.RESCALED_KL else 1.0)}
        terms = {}
        mean_part = out
        if cfg.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            axis = self.channel_axis % np.ndim(x_t)
            mean_part = np.take(out, np.arange(np.shape(x_t)[axis]), axis=axis)
            vb = self.vb_terms_bpd_from_output(out, x_start, x_t, t, clip_denoised=False)["output"]
            if cfg.loss_type == LossType.RESCALED_MSE:
                vb = vb * self.num_timesteps / 1000.0
            terms["vb"] = vb
        target = {
            ModelMeanType.EPSILON: noise,
            ModelMeanType.START_X: x_start,
            ModelMeanType.PREVIOUS_X: self.q_posterior_mean_variance(x_start, x_t, t)[0],
        }[cfg.model_mean_type]
        terms["mse"] = mean_flat((target - mean_part) ** 2)
        terms["loss"] = terms["mse"] + terms.get("vb", 0.0)
        return terms
