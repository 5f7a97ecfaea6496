"""Discrete Gaussian diffusion (DDPM / improved DDPM) maths and losses, in PyTorch.

Twin: ``jax_impl/diffusion.py`` (same classes, methods and semantics, JAX; see its
docstring for the conventions); float64 numpy oracle: ``spec/oracles/diffusion.py``.

improved-diffusion semantics and names: every process is a respaced one, ``t`` is an
integer index ``[B]`` into it and the model sees ``timestep_map[t]`` (or the float
``timestep_map[t] * 1000 / original_num_steps`` with ``rescale_timesteps``); float64
tables are cast at use with ``torch.as_tensor(tbl, dtype=..., device=x.device)``; the
variational-bound terms are in bits per dimension, the decoder NLL at t = 0.

Layout: the maths is layout-agnostic except the learned-variance split, which happens
along ``channel_axis`` -- axis 1 by default here (NCHW images, ``[B, C, L]`` sequences,
``[B, D]`` points), the LAST axis by default on the JAX side.

As improved-diffusion, ``calc_bpd_loop`` evaluates under ``torch.no_grad()``; the other
methods are differentiable.

Input checks (``torch_ref/validate.py``, as on the JAX side): tensors of floating dtype and
matching shapes, integer ``t`` in ``[0, num_timesteps)``, NaN/Inf in the data and noise,
bool options, ``generator`` None or a ``torch.Generator``, and what ``model_fn`` returns
(shape, floating dtype). The sampler state ``x`` of ``p_mean_variance``, the inputs of the
``predict_*`` reparameterisations and model outputs are not checked for NaN (a diverging
sampler returns NaN rather than raising).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch

import spec
from spec.diffusion_process import DiffusionProcess
from spec.configs import LossType, ModelMeanType, ModelVarType
from spec.validate import check_bool, check_callable, check_int
from torch_ref.utils import append_dims
from torch_ref.validate import (
    check_array,
    check_fn_output,
    check_generator,
    check_indices,
    resolve_dtype,
)

__all__ = [
    "GaussianDiffusion",
    "ModelMeanType",
    "ModelVarType",
    "LossType",
    "normal_kl",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "sample_timesteps_uniform",
]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_LOG2 = math.log(2.0)
_T_WHAT = "an integer index array [B] into the respaced process"
_MODEL_FN = "model_fn(x_t, t) -> output"


# ------------------------------------------------------------------ module functions


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the first: ``[B, ...] -> [B]`` (``[B]`` is returned as is)."""
    if x.ndim <= 1:
        return x
    return x.mean(dim=tuple(range(1, x.ndim)))


def _first_tensor(*args) -> torch.Tensor:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    raise TypeError("at least one argument must be a torch.Tensor")


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats.

    ``1/2 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2))``.
    Arguments broadcast; at least one must be a tensor (scalars are converted to it).
    """
    ref = _first_tensor(mean1, logvar1, mean2, logvar2)
    mean1, logvar1, mean2, logvar2 = (
        a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=ref.dtype, device=ref.device)
        for a in (mean1, logvar1, mean2, logvar2)
    )
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """``Phi(x) ~ 1/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (improved-diffusion's)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, *, means, log_scales) -> torch.Tensor:
    """log P(x) (nats, elementwise) of a Gaussian discretised to 256 levels in [-1, 1].

    Bins ``[x - 1/255, x + 1/255]``, edge bins open below -0.999 / above 0.999,
    probabilities clamped at 1e-12 (improved-diffusion / Ho et al. semantics).
    """
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError(
            "discretized_gaussian_log_likelihood: x, means and log_scales must have the same "
            f"shape, got x {tuple(x.shape)}, means {tuple(means.shape)}, "
            f"log_scales {tuple(log_scales.shape)}"
        )
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta),
    )


def sample_timesteps_uniform(
    batch_size: int, num_timesteps: int, *, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Draw ``t ~ U{0, ..., num_timesteps - 1}``, int64 ``[batch_size]``, from ``generator``
    (on the generator's device; the CPU without one)."""
    generator = check_generator("generator", generator)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    num_timesteps = check_int("num_timesteps", num_timesteps, minimum=1)
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, num_timesteps, (batch_size,), generator=generator, device=device)


# ------------------------------------------------------------------------- tables


# ---------------------------------------------------------------- the diffusion


@dataclasses.dataclass(frozen=True)
class GaussianDiffusion(DiffusionProcess):
    """A discrete Gaussian diffusion and its reverse model, improved-diffusion's API.

    Args:
      config: a ``spec.DiffusionConfig``.
      dtype: computing dtype (a floating ``torch.dtype``) the float64 tables are cast to;
        ``None`` (default) uses the data dtype. ``torch.float32`` reproduces
        improved-diffusion's cast.
      channel_axis: axis of the learned-variance split; ``None`` (default) means 1 (this
        side's layout: NCHW, ``[B, C, L]``, ``[B, D]``).
    """

    config: spec.DiffusionConfig
    dtype: Optional[torch.dtype] = None
    channel_axis: Optional[int] = None
    _tables: dict = dataclasses.field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        self._init_process(default_channel_axis=1)
        if self.dtype is not None:
            resolve_dtype(self.dtype)

    # -- checks and helpers ---------------------------------------------------------
    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        return self.dtype if self.dtype is not None else x.dtype

    def _extract(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``table[t]`` cast to the computing dtype, shaped ``[B, 1, ...]`` against ``x``."""
        tbl = torch.as_tensor(self._tables[name], dtype=self._compute_dtype(x), device=x.device)
        return append_dims(tbl[t], x.ndim)

    @staticmethod
    def _check_x(name: str, x, *, finite: bool = True) -> torch.Tensor:
        return check_array(name, x, min_ndim=1, finite=finite, strict=True)

    def _check_t(self, t, x: torch.Tensor, x_name: str) -> torch.Tensor:
        return check_indices("t", t, self.num_timesteps, what=_T_WHAT,
                             bound_name="num_timesteps", x_name=x_name, x=x)

    @staticmethod
    def _check_like(name: str, a, ref_name: str, ref: torch.Tensor, *,
                    finite: bool = True) -> torch.Tensor:
        return check_array(name, a, shape=tuple(ref.shape), like_name=ref_name, finite=finite,
                           strict=True)

    def _check_reparam(self, x_t, t, name: str, a):
        """The inputs of a ``predict_*`` reparameterisation: ``x_t [B, ...]``, ``t [B]`` and
        ``a`` of x_t's shape (no NaN check: samplers call these on their state)."""
        x_t = self._check_x("x_t", x_t, finite=False)
        t = self._check_t(t, x_t, "x_t")
        return x_t, t, self._check_like(name, a, "x_t", x_t, finite=False)

    def _axis(self, x: torch.Tensor) -> int:
        axis, ndim = self.channel_axis, x.ndim
        if not -ndim <= axis < ndim or axis % ndim == 0:
            raise ValueError(
                f"channel_axis={self.channel_axis} is not a non-batch axis of data of shape "
                f"{tuple(x.shape)}"
            )
        return axis % ndim

    def _output_spec(self, x: torch.Tensor) -> tuple[tuple[int, ...], str]:
        """The shape a model output must have for data ``x``, and why (for messages)."""
        if not self.learned_variance:
            return tuple(x.shape), (f"model_output must have the shape of x {tuple(x.shape)} "
                                    f"for model_var_type={self.model_var_type.value}")
        axis = self._axis(x)
        expected = list(x.shape)
        expected[axis] *= 2
        expected = tuple(expected)
        return expected, (f"model_output must have shape {expected} (twice x's channels on "
                          f"channel_axis={self.channel_axis}) for model_var_type="
                          f"{self.model_var_type.value}")

    def _check_output(self, model_output, x: torch.Tensor) -> torch.Tensor:
        """A model output passed in by the caller (the ``*_from_output`` methods)."""
        model_output = check_array("model_output", model_output, finite=False, strict=True)
        shape, reason = self._output_spec(x)
        if tuple(model_output.shape) != shape:
            raise ValueError(f"{reason}, got {tuple(model_output.shape)}")
        return model_output

    def _split_output(self, model_output, x: torch.Tensor):
        """(mean part, variance part or None) of a checked model output."""
        if not self.learned_variance:
            return model_output, None
        axis = self._axis(x)
        mean_part, var_part = torch.split(model_output, x.shape[axis], dim=axis)
        return mean_part, var_part

    @staticmethod
    def _check_options(clip_denoised, denoised_fn=None) -> bool:
        if denoised_fn is not None:
            check_callable("denoised_fn", denoised_fn, "denoised_fn(x_0) -> x_0")
        return check_bool("clip_denoised", clip_denoised)

    def _call_model(self, model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor):
        """``model_fn(x, scale_timesteps(t))``; its output checked."""
        out = model_fn(x, self._scale_timesteps(t, self._compute_dtype(x)))
        shape, reason = self._output_spec(x)
        check_fn_output("model_fn", out, x, shape=shape, reason=reason)
        return out

    # -- forward process q ------------------------------------------------------------
    def q_mean_variance(self, x_start, t):
        """q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

        Returns ``(mean, variance, log_variance)``, each of x_start's shape ``[B, ...]``.
        """
        x_start = self._check_x("x_start", x_start)
        t = self._check_t(t, x_start, "x_start")
        mean = self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
        variance = self._extract("one_minus_alphas_cumprod", t, x_start).expand(x_start.shape)
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x_start).expand(
            x_start.shape
        )
        return mean, variance, log_variance

    def _q_sample(self, x_start, t, noise):
        return (
            self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_sample(self, x_start, t, noise):
        """``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` with the given noise."""
        x_start = self._check_x("x_start", x_start)
        t = self._check_t(t, x_start, "x_start")
        noise = self._check_like("noise", noise, "x_start", x_start)
        return self._q_sample(x_start, t, noise)

    def _q_posterior(self, x_start, x_t, t):
        mean = (
            self._extract("posterior_mean_coef1", t, x_t) * x_start
            + self._extract("posterior_mean_coef2", t, x_t) * x_t
        )
        variance = self._extract("posterior_variance", t, x_t).expand(x_t.shape)
        log_variance = self._extract("posterior_log_variance_clipped", t, x_t).expand(x_t.shape)
        return mean, variance, log_variance

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """q(x_{t-1} | x_t, x_0) = N(coef1_t x_0 + coef2_t x_t, beta~_t I); returns
        ``(mean, variance, log_variance_clipped)``, each ``[B, ...]``."""
        x_start = self._check_x("x_start", x_start)
        x_t = self._check_like("x_t", x_t, "x_start", x_start)
        t = self._check_t(t, x_start, "x_start")
        return self._q_posterior(x_start, x_t, t)

    # -- reparameterisations ----------------------------------------------------------
    def _predict_xstart_from_eps(self, x_t, t, eps):
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_xstart_from_eps(self, x_t, t, eps):
        """``x_0 = x_t / sqrt(alpha_bar_t) - sqrt(1/alpha_bar_t - 1) eps``."""
        x_t, t, eps = self._check_reparam(x_t, t, "eps", eps)
        return self._predict_xstart_from_eps(x_t, t, eps)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart
        ) / self._extract("sqrt_recipm1_alphas_cumprod", t, x_t)

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        """``eps = (x_t / sqrt(alpha_bar_t) - x_0) / sqrt(1/alpha_bar_t - 1)``."""
        x_t, t, pred_xstart = self._check_reparam(x_t, t, "pred_xstart", pred_xstart)
        return self._predict_eps_from_xstart(x_t, t, pred_xstart)

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        return (
            self._extract("recip_posterior_mean_coef1", t, x_t) * xprev
            - self._extract("posterior_mean_coef2_over_coef1", t, x_t) * x_t
        )

    def predict_xstart_from_xprev(self, x_t, t, xprev):
        """``x_0 = (x_{t-1} - coef2_t x_t) / coef1_t``."""
        x_t, t, xprev = self._check_reparam(x_t, t, "xprev", xprev)
        return self._predict_xstart_from_xprev(x_t, t, xprev)

    def _scale_timesteps(self, t, dtype):
        mapped = torch.as_tensor(self._tables["timestep_map"], dtype=t.dtype, device=t.device)[t]
        if self.rescale_timesteps:
            return mapped.to(dtype) * (1000.0 / self.original_num_steps)
        return mapped

    def scale_timesteps(self, t, dtype=None) -> torch.Tensor:
        """The timestep the model sees: ``timestep_map[t]`` (t's dtype), or with
        ``rescale_timesteps`` the float ``timestep_map[t] * 1000 / original_num_steps`` in
        ``dtype`` (default: the constructor's dtype, else ``torch.get_default_dtype()``)."""
        t = check_indices("t", t, self.num_timesteps, bound_name="num_timesteps")
        if dtype is None:
            dtype = self.dtype if self.dtype is not None else torch.get_default_dtype()
        return self._scale_timesteps(t, dtype)

    # -- reverse process p ------------------------------------------------------------
    def _p_mean_variance(self, model_output, x, t, clip_denoised, denoised_fn):
        mean_part, var_part = self._split_output(model_output, x)
        vtype = self.model_var_type
        if vtype == ModelVarType.LEARNED:
            log_variance = var_part
            variance = torch.exp(log_variance)
        elif vtype == ModelVarType.LEARNED_RANGE:
            min_log = self._extract("posterior_log_variance_clipped", t, x)
            max_log = self._extract("log_betas", t, x)
            frac = (var_part + 1.0) / 2.0
            log_variance = frac * max_log + (1.0 - frac) * min_log
            variance = torch.exp(log_variance)
        elif vtype == ModelVarType.FIXED_LARGE:
            variance = self._extract("fixed_large_variance", t, x).expand(x.shape)
            log_variance = self._extract("fixed_large_log_variance", t, x).expand(x.shape)
        else:  # FIXED_SMALL
            variance = self._extract("posterior_variance", t, x).expand(x.shape)
            log_variance = self._extract("posterior_log_variance_clipped", t, x).expand(x.shape)

        def process_xstart(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            if clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
            return x0

        mtype = self.model_mean_type
        if mtype == ModelMeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._predict_xstart_from_xprev(x, t, mean_part))
            mean = mean_part
        else:
            if mtype == ModelMeanType.START_X:
                pred_xstart = process_xstart(mean_part)
            else:  # EPSILON
                pred_xstart = process_xstart(self._predict_xstart_from_eps(x, t, mean_part))
            mean, _, _ = self._q_posterior(pred_xstart, x, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "model_output": mean_part,
        }

    def p_mean_variance_from_output(
        self,
        model_output,
        x,
        t,
        *,
        clip_denoised: bool = True,
        denoised_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> dict:
        """p(x_{t-1} | x_t) from a computed model output (see the JAX twin for the
        mean / variance parameterisations). Returns ``mean``, ``variance``,
        ``log_variance``, ``pred_xstart``, ``model_output`` (the mean part), ``[B, ...]``."""
        x = self._check_x("x", x, finite=False)
        t = self._check_t(t, x, "x")
        model_output = self._check_output(model_output, x)
        clip_denoised = self._check_options(clip_denoised, denoised_fn)
        return self._p_mean_variance(model_output, x, t, clip_denoised, denoised_fn)

    def p_mean_variance(
        self,
        model_fn: ModelFn,
        x,
        t,
        *,
        clip_denoised: bool = True,
        denoised_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> dict:
        """Apply ``model_fn(x, scale_timesteps(t))``; then ``p_mean_variance_from_output``."""
        check_callable("model_fn", model_fn, _MODEL_FN)
        x = self._check_x("x", x, finite=False)
        t = self._check_t(t, x, "x")
        clip_denoised = self._check_options(clip_denoised, denoised_fn)
        model_output = self._call_model(model_fn, x, t)
        return self._p_mean_variance(model_output, x, t, clip_denoised, denoised_fn)

    # -- variational bound --------------------------------------------------------------
    def _vb_terms_bpd(self, model_output, x_start, x_t, t, clip_denoised):
        true_mean, _, true_log_variance = self._q_posterior(x_start, x_t, t)
        out = self._p_mean_variance(model_output, x_t, t, clip_denoised, None)
        kl = normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
        kl = mean_flat(kl) / _LOG2
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = mean_flat(decoder_nll) / _LOG2
        output = torch.where(t == 0, decoder_nll, kl)
        return {"output": output, "pred_xstart": out["pred_xstart"]}

    def vb_terms_bpd_from_output(self, model_output, x_start, x_t, t, *, clip_denoised=True) -> dict:
        """One variational-bound term in bits per dimension: KL to the posterior for t > 0,
        the discretized-Gaussian decoder NLL at t = 0. Returns ``output [B]`` and
        ``pred_xstart``."""
        x_start = self._check_x("x_start", x_start)
        x_t = self._check_like("x_t", x_t, "x_start", x_start)
        t = self._check_t(t, x_start, "x_start")
        model_output = self._check_output(model_output, x_t)
        clip_denoised = self._check_options(clip_denoised)
        return self._vb_terms_bpd(model_output, x_start, x_t, t, clip_denoised)

    def vb_terms_bpd(self, model_fn: ModelFn, x_start, x_t, t, *, clip_denoised=True) -> dict:
        """``vb_terms_bpd_from_output`` with ``model_fn(x_t, scale_timesteps(t))``."""
        check_callable("model_fn", model_fn, _MODEL_FN)
        x_start = self._check_x("x_start", x_start)
        x_t = self._check_like("x_t", x_t, "x_start", x_start)
        t = self._check_t(t, x_start, "x_start")
        clip_denoised = self._check_options(clip_denoised)
        model_output = self._call_model(model_fn, x_t, t)
        return self._vb_terms_bpd(model_output, x_start, x_t, t, clip_denoised)

    def _prior_bpd(self, x_start):
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, dtype=torch.long,
                       device=x_start.device)
        mean = self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x_start).expand(
            x_start.shape
        )
        kl = normal_kl(mean, log_variance, 0.0, 0.0)
        return mean_flat(kl) / _LOG2

    def prior_bpd(self, x_start) -> torch.Tensor:
        """``KL(q(x_T | x_0) || N(0, I))`` in bits per dimension, ``[B]``."""
        x_start = self._check_x("x_start", x_start)
        return self._prior_bpd(x_start)

    def calc_bpd_loop(self, model_fn: ModelFn, x_start, noise, *, clip_denoised=True) -> dict:
        """The whole variational bound in bits per dimension, a ``for`` loop over the T
        steps (under ``torch.no_grad()``). ``noise`` is ``[T, B, ...]``; loop step j
        evaluates timestep ``t = T - 1 - j`` with ``noise[j]``, and column j of the
        ``[B, T]`` outputs ``vb``, ``xstart_mse``, ``mse`` belongs to that timestep
        (improved-diffusion's order). Also returns ``total_bpd`` and ``prior_bpd`` ``[B]``.
        """
        check_callable("model_fn", model_fn, _MODEL_FN)
        x_start = self._check_x("x_start", x_start)
        T = self.num_timesteps
        noise = check_array("noise", noise, shape=(T,) + tuple(x_start.shape), what="[T, B, ...]",
                            strict=True)
        clip_denoised = self._check_options(clip_denoised)
        B = x_start.shape[0]
        vb, xstart_mse, mse = [], [], []
        with torch.no_grad():
            for j in range(T):
                t = torch.full((B,), T - 1 - j, dtype=torch.long, device=x_start.device)
                eps = noise[j]
                x_t = self._q_sample(x_start, t, eps)
                out = self._vb_terms_bpd(
                    self._call_model(model_fn, x_t, t), x_start, x_t, t, clip_denoised
                )
                vb.append(out["output"])
                xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
                eps_pred = self._predict_eps_from_xstart(x_t, t, out["pred_xstart"])
                mse.append(mean_flat((eps_pred - eps) ** 2))
            vb = torch.stack(vb, dim=1)
            xstart_mse = torch.stack(xstart_mse, dim=1)
            mse = torch.stack(mse, dim=1)
            prior = self._prior_bpd(x_start)
        return {
            "total_bpd": vb.sum(dim=1) + prior,
            "prior_bpd": prior,
            "vb": vb,
            "xstart_mse": xstart_mse,
            "mse": mse,
        }

    def calc_bpd_loop_random(
        self, model_fn: ModelFn, x_start, *, clip_denoised=True,
        generator: Optional[torch.Generator] = None,
    ) -> dict:
        """``calc_bpd_loop`` with noise ``[T, B, ...]`` drawn from ``generator``."""
        generator = check_generator("generator", generator)
        x_start = self._check_x("x_start", x_start)
        noise = torch.randn(
            (self.num_timesteps,) + tuple(x_start.shape),
            generator=generator,
            dtype=x_start.dtype,
            device=x_start.device,
        )
        return self.calc_bpd_loop(model_fn, x_start, noise, clip_denoised=clip_denoised)

    # -- training ---------------------------------------------------------------------
    def training_losses(self, model_fn: ModelFn, x_start, t, noise) -> dict:
        """Per-example training losses (see the JAX twin): KL / RESCALED_KL give
        ``loss = L_t`` (times T); MSE / RESCALED_MSE give ``mse`` against eps, x_0 or the
        posterior mean, plus with learned variances ``vb = L_t`` on the detached mean
        (times T / 1000 for RESCALED_MSE) and ``loss = mse + vb``. All ``[B]``."""
        check_callable("model_fn", model_fn, _MODEL_FN)
        x_start = self._check_x("x_start", x_start)
        t = self._check_t(t, x_start, "x_start")
        noise = self._check_like("noise", noise, "x_start", x_start)
        x_t = self._q_sample(x_start, t, noise)
        terms = {}
        if self.loss_type.is_vb:
            model_output = self._call_model(model_fn, x_t, t)
            loss = self._vb_terms_bpd(model_output, x_start, x_t, t, False)["output"]
            if self.loss_type == LossType.RESCALED_KL:
                loss = loss * self.num_timesteps
            terms["loss"] = loss
            return terms

        model_output = self._call_model(model_fn, x_t, t)
        mean_part, var_part = self._split_output(model_output, x_t)
        if var_part is not None:
            frozen = torch.cat([mean_part.detach(), var_part], dim=self._axis(x_t))
            vb = self._vb_terms_bpd(frozen, x_start, x_t, t, False)["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                vb = vb * (self.num_timesteps / 1000.0)
            terms["vb"] = vb
        mtype = self.model_mean_type
        if mtype == ModelMeanType.PREVIOUS_X:
            target = self._q_posterior(x_start, x_t, t)[0]
        elif mtype == ModelMeanType.START_X:
            target = x_start
        else:
            target = noise
        terms["mse"] = mean_flat((target - mean_part) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms
