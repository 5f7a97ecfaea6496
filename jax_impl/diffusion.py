"""Discrete Gaussian diffusion (DDPM / improved DDPM) maths and losses, in JAX.

Twin: ``torch_ref/diffusion.py`` (same classes, methods and semantics, PyTorch);
float64 numpy oracle: ``spec/oracles/diffusion.py``.

Reproduces the semantics and names of improved-diffusion's ``GaussianDiffusion`` /
``SpacedDiffusion`` (Nichol & Dhariwal 2021), so its users switch without relearning:

  * every process is a respaced one (``spec.DiffusionConfig.tables()``): ``t`` is an
    integer index ``[B]`` into the respaced process, and the model sees
    ``timestep_map[t]`` (or ``timestep_map[t] * 1000 / original_num_steps`` as a float
    with ``rescale_timesteps``);
  * tables are float64 numpy arrays, cast to the computing dtype at use
    (``jnp.asarray(tbl, dtype)``): the data dtype by default, or the ``dtype`` given to
    the constructor (``dtype=jnp.float32`` reproduces improved-diffusion's cast to float32);
  * variational-bound terms are in bits, averaged over the non-batch axes; at t = 0 the
    term is the discretized-Gaussian decoder NLL (data in [-1, 1], 256 levels);
  * the hybrid loss (``MSE`` with learned variances) is ``L_simple + L_vlb`` with the mean
    stop-gradiented inside ``L_vlb``; ``RESCALED_MSE`` scales that vb term by
    ``num_timesteps / 1000`` (Nichol & Dhariwal's lambda = 0.001 at T = 4000 becomes
    this factor when t is sampled uniformly).

Differences from improved-diffusion, all deliberate:
  * ``q_sample``, ``training_losses`` and ``calc_bpd_loop`` take their noise as a required
    argument (pure functions); ``calc_bpd_loop_random`` draws it from a key with
    ``jax.random.fold_in(key, j)`` per loop step.
  * Data may have any rank ``[B, ...]``. The learned-variance channel split (the model
    outputs 2C channels: mean part, then variance part) happens along ``channel_axis``,
    by default the LAST axis here (NHWC images, ``[B, L, C]`` sequences, ``[B, D]``
    points); the torch twin defaults to axis 1 (NCHW). For ``[B, D]`` data both agree.
  * With a single step (T = 1) improved-diffusion indexes ``posterior_variance[1]`` and
    crashes; here FIXED_LARGE then uses ``betas[0]`` (as ``spec`` does for the clipped
    posterior log-variance).

``GaussianDiffusion`` is a frozen dataclass, hashable by ``(config, dtype,
channel_axis)``: pass it as a ``jax.jit`` static argument, or close over it. ``model_fn``
is any callable ``model_fn(x_t, t_model) -> output``; nothing here touches a network
library.

Input checks (``jax_impl/validate.py``: dtype, shapes, ``t`` in ``[0, num_timesteps)``,
NaN/Inf in the data and noise, bool options, PRNG keys) raise ``TypeError`` / ``ValueError``
naming the argument before any compute. Value checks need concrete values and are skipped
while tracing under ``jit``; what ``model_fn`` returns (shape and floating dtype) is checked
at trace time. The sampler state ``x`` of ``p_mean_variance``, the inputs of the
``predict_*`` reparameterisations and model outputs are not checked for NaN (a diverging
sampler returns NaN rather than raising).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

import spec
from spec.diffusion_process import DiffusionProcess
from spec.configs import LossType, ModelMeanType, ModelVarType
from spec.validate import check_bool, check_callable, check_int
from jax_impl.utils import append_dims
from jax_impl.validate import check_array, check_fn_output, check_indices, check_key, resolve_dtype

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

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

_LOG2 = math.log(2.0)
_T_WHAT = "an integer index array [B] into the respaced process"
_MODEL_FN = "model_fn(x_t, t) -> output"


# ------------------------------------------------------------------ module functions


def mean_flat(x: jax.Array) -> jax.Array:
    """Mean over every axis but the first: ``[B, ...] -> [B]`` (``[B]`` is returned as is)."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats.

    ``1/2 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2))``.
    Arguments broadcast (scalars allowed, e.g. ``mean2 = logvar2 = 0`` for N(0, I)).
    """
    mean1, logvar1, mean2, logvar2 = (jnp.asarray(a) for a in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + jnp.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * jnp.exp(-logvar2)
    )


def approx_standard_normal_cdf(x) -> jax.Array:
    """The tanh approximation of the standard normal CDF (Page 1977), as in improved-diffusion:
    ``Phi(x) ~ 1/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    x = jnp.asarray(x)
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, *, means, log_scales) -> jax.Array:
    """log P(x) (nats, elementwise) of a Gaussian discretised to 256 levels in [-1, 1].

    x, means, log_scales: same shape. With ``c = x - means`` and s = exp(log_scales) the
    bin of x is ``[x - 1/255, x + 1/255]``; the edge bins extend to -inf (x < -0.999) and
    +inf (x > 0.999). Probabilities are clamped at 1e-12 before the log. Uses
    ``approx_standard_normal_cdf`` (improved-diffusion / Ho et al. semantics).
    """
    x, means, log_scales = jnp.asarray(x), jnp.asarray(means), jnp.asarray(log_scales)
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError(
            "discretized_gaussian_log_likelihood: x, means and log_scales must have the same "
            f"shape, got x {x.shape}, means {means.shape}, log_scales {log_scales.shape}"
        )
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(
        x < -0.999,
        log_cdf_plus,
        jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta),
    )


def sample_timesteps_uniform(rng: jax.Array, batch_size: int, num_timesteps: int) -> jax.Array:
    """Draw ``t ~ U{0, ..., num_timesteps - 1}``, int32 ``[batch_size]`` (the uniform
    schedule sampler; its importance weights are all 1), from the PRNG key ``rng``."""
    rng = check_key("rng", rng)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    num_timesteps = check_int("num_timesteps", num_timesteps, minimum=1)
    return jax.random.randint(rng, (batch_size,), 0, num_timesteps, dtype=jnp.int32)


# ---------------------------------------------------------------- the diffusion


@dataclasses.dataclass(frozen=True)
class GaussianDiffusion(DiffusionProcess):
    """A discrete Gaussian diffusion q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)
    and the reverse model p(x_{t-1} | x_t) = N(mu_theta, Sigma_theta) (Ho et al. 2020,
    Nichol & Dhariwal 2021), with improved-diffusion's method names.

    Args:
      config: a ``spec.DiffusionConfig`` (schedule, respacing, mean/variance/loss types).
      dtype: computing dtype the float64 tables are cast to; ``None`` (default) uses the
        data dtype. ``jnp.float32`` reproduces improved-diffusion's float32 cast.
      channel_axis: axis of the learned-variance split; ``None`` (default) means -1, the
        last axis (this side's layout: NHWC, ``[B, L, C]``, ``[B, D]``).
    """

    config: spec.DiffusionConfig
    dtype: Any = None
    channel_axis: Optional[int] = None
    _tables: dict = dataclasses.field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        self._init_process(default_channel_axis=-1)
        if self.dtype is not None:
            object.__setattr__(self, "dtype", resolve_dtype(self.dtype))

    # -- checks and helpers ---------------------------------------------------------
    def _compute_dtype(self, x):
        return self.dtype if self.dtype is not None else jnp.result_type(x)

    def _extract(self, name: str, t, x) -> jax.Array:
        """``table[t]`` cast to the computing dtype, shaped ``[B, 1, ...]`` against ``x``."""
        tbl = jnp.asarray(self._tables[name], dtype=self._compute_dtype(x))
        return append_dims(tbl[t], x.ndim)

    def _check_x(self, name: str, x, *, finite: bool = True) -> jax.Array:
        return check_array(name, x, min_ndim=1, finite=finite)

    def _check_t(self, t, x, x_name: str) -> jax.Array:
        return check_indices("t", t, self.num_timesteps, what=_T_WHAT,
                             bound_name="num_timesteps", x_name=x_name, x=x)

    def _check_like(self, name: str, a, ref_name: str, ref, *, finite: bool = True) -> jax.Array:
        return check_array(name, a, shape=ref.shape, like_name=ref_name, finite=finite)

    def _check_reparam(self, x_t, t, name: str, a):
        """The inputs of a ``predict_*`` reparameterisation: ``x_t [B, ...]``, ``t [B]`` and
        ``a`` of x_t's shape (no NaN check: samplers call these on their state)."""
        x_t = self._check_x("x_t", x_t, finite=False)
        t = self._check_t(t, x_t, "x_t")
        return x_t, t, self._check_like(name, a, "x_t", x_t, finite=False)

    def _axis(self, x) -> int:
        axis = self.channel_axis
        ndim = x.ndim
        if not -ndim <= axis < ndim or axis % ndim == 0:
            raise ValueError(
                f"channel_axis={self.channel_axis} is not a non-batch axis of data of shape {x.shape}"
            )
        return axis % ndim

    def _output_spec(self, x) -> tuple[tuple[int, ...], str]:
        """The shape a model output must have for data ``x``, and why (for messages)."""
        if not self.learned_variance:
            return x.shape, (f"model_output must have the shape of x {x.shape} for "
                             f"model_var_type={self.model_var_type.value}")
        axis = self._axis(x)
        expected = list(x.shape)
        expected[axis] *= 2
        expected = tuple(expected)
        return expected, (f"model_output must have shape {expected} (twice x's channels on "
                          f"channel_axis={self.channel_axis}) for model_var_type="
                          f"{self.model_var_type.value}")

    def _check_output(self, model_output, x) -> jax.Array:
        """A model output passed in by the caller (the ``*_from_output`` methods)."""
        model_output = check_array("model_output", model_output, finite=False)
        shape, reason = self._output_spec(x)
        if model_output.shape != shape:
            raise ValueError(f"{reason}, got {model_output.shape}")
        return model_output

    def _split_output(self, model_output, x):
        """(mean part, variance part or None) of a checked model output."""
        if not self.learned_variance:
            return model_output, None
        mean_part, var_part = jnp.split(model_output, 2, axis=self._axis(x))
        return mean_part, var_part

    @staticmethod
    def _check_options(clip_denoised, denoised_fn=None) -> bool:
        if denoised_fn is not None:
            check_callable("denoised_fn", denoised_fn, "denoised_fn(x_0) -> x_0")
        return check_bool("clip_denoised", clip_denoised)

    def _call_model(self, model_fn: ModelFn, x, t):
        """``model_fn(x, scale_timesteps(t))``; its output checked at trace time."""
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
        variance = jnp.broadcast_to(
            self._extract("one_minus_alphas_cumprod", t, x_start), x_start.shape
        )
        log_variance = jnp.broadcast_to(
            self._extract("log_one_minus_alphas_cumprod", t, x_start), x_start.shape
        )
        return mean, variance, log_variance

    def _q_sample(self, x_start, t, noise):
        return (
            self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_sample(self, x_start, t, noise):
        """Diffuse ``x_start`` ``[B, ...]`` to step ``t`` ``[B]`` with the given ``noise``
        (same shape as x_start): ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``."""
        x_start = self._check_x("x_start", x_start)
        t = self._check_t(t, x_start, "x_start")
        noise = self._check_like("noise", noise, "x_start", x_start)
        return self._q_sample(x_start, t, noise)

    def _q_posterior(self, x_start, x_t, t):
        mean = (
            self._extract("posterior_mean_coef1", t, x_t) * x_start
            + self._extract("posterior_mean_coef2", t, x_t) * x_t
        )
        variance = jnp.broadcast_to(self._extract("posterior_variance", t, x_t), x_t.shape)
        log_variance = jnp.broadcast_to(
            self._extract("posterior_log_variance_clipped", t, x_t), x_t.shape
        )
        return mean, variance, log_variance

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """q(x_{t-1} | x_t, x_0) = N(coef1_t x_0 + coef2_t x_t, beta~_t I) (Ho et al. eq. 6-7).

        Returns ``(mean, variance, log_variance_clipped)``, each ``[B, ...]``; the log
        variance at t = 0 is ``log beta~_1`` (beta~_0 = 0).
        """
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
        """``x_0 = x_t / sqrt(alpha_bar_t) - sqrt(1/alpha_bar_t - 1) eps``, ``[B, ...]``."""
        x_t, t, eps = self._check_reparam(x_t, t, "eps", eps)
        return self._predict_xstart_from_eps(x_t, t, eps)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart
        ) / self._extract("sqrt_recipm1_alphas_cumprod", t, x_t)

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        """``eps = (x_t / sqrt(alpha_bar_t) - x_0) / sqrt(1/alpha_bar_t - 1)``, ``[B, ...]``."""
        x_t, t, pred_xstart = self._check_reparam(x_t, t, "pred_xstart", pred_xstart)
        return self._predict_eps_from_xstart(x_t, t, pred_xstart)

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        return (
            self._extract("recip_posterior_mean_coef1", t, x_t) * xprev
            - self._extract("posterior_mean_coef2_over_coef1", t, x_t) * x_t
        )

    def predict_xstart_from_xprev(self, x_t, t, xprev):
        """Invert the posterior mean: ``x_0 = (x_{t-1} - coef2_t x_t) / coef1_t``, ``[B, ...]``."""
        x_t, t, xprev = self._check_reparam(x_t, t, "xprev", xprev)
        return self._predict_xstart_from_xprev(x_t, t, xprev)

    def _scale_timesteps(self, t, dtype):
        mapped = jnp.asarray(self._tables["timestep_map"], dtype=t.dtype)[t]
        if self.rescale_timesteps:
            return mapped.astype(dtype) * (1000.0 / self.original_num_steps)
        return mapped

    def scale_timesteps(self, t, dtype=None) -> jax.Array:
        """The timestep the model sees for respaced index ``t`` ``[B]``.

        ``timestep_map[t]`` (t's integer dtype), or with ``rescale_timesteps`` the float
        ``timestep_map[t] * 1000 / original_num_steps`` in ``dtype`` (default: the
        constructor's dtype, else JAX's default float). Inside ``p_mean_variance`` and the
        losses the float dtype is the computing dtype of the data.
        """
        t = check_indices("t", t, self.num_timesteps, bound_name="num_timesteps")
        if dtype is None:
            dtype = self.dtype if self.dtype is not None else jnp.result_type(float)
        return self._scale_timesteps(t, dtype)

    # -- reverse process p ------------------------------------------------------------
    def _p_mean_variance(self, model_output, x, t, clip_denoised, denoised_fn):
        mean_part, var_part = self._split_output(model_output, x)
        vtype = self.model_var_type
        if vtype == ModelVarType.LEARNED:
            log_variance = var_part
            variance = jnp.exp(log_variance)
        elif vtype == ModelVarType.LEARNED_RANGE:
            min_log = self._extract("posterior_log_variance_clipped", t, x)
            max_log = self._extract("log_betas", t, x)
            frac = (var_part + 1.0) / 2.0  # v in [-1, 1] -> [min_log, max_log]
            log_variance = frac * max_log + (1.0 - frac) * min_log
            variance = jnp.exp(log_variance)
        elif vtype == ModelVarType.FIXED_LARGE:
            variance = jnp.broadcast_to(self._extract("fixed_large_variance", t, x), x.shape)
            log_variance = jnp.broadcast_to(
                self._extract("fixed_large_log_variance", t, x), x.shape
            )
        else:  # FIXED_SMALL
            variance = jnp.broadcast_to(self._extract("posterior_variance", t, x), x.shape)
            log_variance = jnp.broadcast_to(
                self._extract("posterior_log_variance_clipped", t, x), x.shape
            )

        def process_xstart(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            if clip_denoised:
                x0 = jnp.clip(x0, -1.0, 1.0)
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
        denoised_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
    ) -> dict:
        """p(x_{t-1} | x_t) from a model output already computed (pure; samplers reuse it).

        ``model_output`` is ``[B, ...]`` like x, or with learned variances twice x's size
        on ``channel_axis`` (mean part first, then the variance part v). Mean types:
        EPSILON (``mu = mu~(x_0(x_t, eps), x_t)``), START_X (``mu = mu~(x_0, x_t)``),
        PREVIOUS_X (``mu`` is the output). Variances: FIXED_SMALL ``beta~_t``, FIXED_LARGE
        ``[beta~_1, beta_1, beta_2, ...]``, LEARNED ``log Sigma = v``, LEARNED_RANGE
        ``log Sigma = frac log beta_t + (1 - frac) log beta~_t`` with ``frac = (v + 1)/2``.
        ``denoised_fn`` then clipping to [-1, 1] (``clip_denoised``) apply to x_0.

        Returns a dict of ``[B, ...]`` arrays: ``mean``, ``variance``, ``log_variance``,
        ``pred_xstart`` and ``model_output`` (the mean part of the output).
        """
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
        denoised_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
    ) -> dict:
        """Apply ``model_fn(x, scale_timesteps(t))`` and return p(x_{t-1} | x_t) as
        ``p_mean_variance_from_output`` does."""
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
        output = jnp.where(t == 0, decoder_nll, kl)
        return {"output": output, "pred_xstart": out["pred_xstart"]}

    def vb_terms_bpd_from_output(self, model_output, x_start, x_t, t, *, clip_denoised=True) -> dict:
        """One term of the variational bound, in bits per dimension, from a model output.

        ``L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` for t > 0 and the
        decoder NLL ``L_0 = -log p(x_0 | x_1)`` (discretized Gaussian) for t = 0, each
        averaged over the non-batch axes and divided by log 2.

        Returns ``{"output": [B], "pred_xstart": [B, ...]}``.
        """
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
        t = jnp.full((x_start.shape[0],), self.num_timesteps - 1, dtype=jnp.int32)
        mean = self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
        log_variance = jnp.broadcast_to(
            self._extract("log_one_minus_alphas_cumprod", t, x_start), x_start.shape
        )
        kl = normal_kl(mean, log_variance, 0.0, 0.0)
        return mean_flat(kl) / _LOG2

    def prior_bpd(self, x_start) -> jax.Array:
        """The prior term ``KL(q(x_T | x_0) || N(0, I))`` in bits per dimension, ``[B]``
        (T = the last respaced step; constant in the model)."""
        x_start = self._check_x("x_start", x_start)
        return self._prior_bpd(x_start)

    def calc_bpd_loop(self, model_fn: ModelFn, x_start, noise, *, clip_denoised=True) -> dict:
        """The whole variational bound in bits per dimension (improved-diffusion's
        ``calc_bpd_loop``), as one ``jax.lax.scan`` over the T steps.

        Args:
          model_fn: ``model_fn(x_t, t_model) -> output``.
          x_start: data ``[B, ...]`` in [-1, 1].
          noise: ``[T, B, ...]``; loop step j evaluates timestep ``t = T - 1 - j`` with
            ``x_t = q_sample(x_start, t, noise[j])`` (improved-diffusion's order, from T-1
            down to 0).

        Returns a dict: ``total_bpd`` ``[B]`` (sum of ``vb`` plus ``prior_bpd``),
        ``prior_bpd`` ``[B]``, and ``[B, T]`` arrays whose column j belongs to timestep
        ``T - 1 - j``: ``vb`` (the terms L_{t}), ``xstart_mse`` (mean of
        ``(x_0_pred - x_0)^2``) and ``mse`` (mean of ``(eps_pred - eps)^2``).
        """
        x_start = self._check_x("x_start", x_start)
        T = self.num_timesteps
        noise = check_array("noise", noise, shape=(T,) + x_start.shape, what="[T, B, ...]")
        check_callable("model_fn", model_fn, _MODEL_FN)
        clip_denoised = self._check_options(clip_denoised)
        B = x_start.shape[0]

        def step(carry, inputs):
            j, eps = inputs
            t = jnp.full((B,), T - 1 - j, dtype=jnp.int32)
            x_t = self._q_sample(x_start, t, eps)
            model_output = self._call_model(model_fn, x_t, t)
            out = self._vb_terms_bpd(model_output, x_start, x_t, t, clip_denoised)
            xstart_mse = mean_flat((out["pred_xstart"] - x_start) ** 2)
            eps_pred = self._predict_eps_from_xstart(x_t, t, out["pred_xstart"])
            mse = mean_flat((eps_pred - eps) ** 2)
            return carry, (out["output"], xstart_mse, mse)

        _, (vb, xstart_mse, mse) = jax.lax.scan(
            step, None, (jnp.arange(T, dtype=jnp.int32), noise)
        )
        vb, xstart_mse, mse = vb.T, xstart_mse.T, mse.T
        prior = self._prior_bpd(x_start)
        return {
            "total_bpd": jnp.sum(vb, axis=1) + prior,
            "prior_bpd": prior,
            "vb": vb,
            "xstart_mse": xstart_mse,
            "mse": mse,
        }

    def calc_bpd_loop_random(self, rng: jax.Array, model_fn: ModelFn, x_start, *,
                             clip_denoised=True) -> dict:
        """``calc_bpd_loop`` with noise drawn from the PRNG key ``rng``: ``noise[j] =
        normal(fold_in(rng, j), x_start.shape)``."""
        key = check_key("rng", rng)
        x_start = self._check_x("x_start", x_start)
        dtype = jnp.result_type(x_start)
        noise = jax.vmap(
            lambda j: jax.random.normal(jax.random.fold_in(key, j), x_start.shape, dtype)
        )(jnp.arange(self.num_timesteps))
        return self.calc_bpd_loop(model_fn, x_start, noise, clip_denoised=clip_denoised)

    # -- training ---------------------------------------------------------------------
    def training_losses(self, model_fn: ModelFn, x_start, t, noise) -> dict:
        """Per-example training losses at steps ``t`` ``[B]`` with the given ``noise``.

        ``x_t = q_sample(x_start, t, noise)``; then by ``loss_type``:
          KL: ``loss = L_t`` (``vb_terms_bpd`` without clipping); RESCALED_KL: ``T L_t``.
          MSE / RESCALED_MSE: ``mse = mean((target - output)^2)`` with target ``eps``
          (EPSILON), ``x_0`` (START_X) or the posterior mean (PREVIOUS_X); with learned
          variances ``vb = L_t`` computed with the mean part stop-gradiented (only the
          variance learns from it), times ``T / 1000`` for RESCALED_MSE, and
          ``loss = mse + vb``.

        Returns a dict of ``[B]`` arrays: ``loss``, and ``mse`` / ``vb`` where applicable.
        """
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
            frozen = jnp.concatenate(
                [jax.lax.stop_gradient(mean_part), var_part], axis=self._axis(x_t)
            )
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
