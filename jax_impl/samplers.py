"""Predictor-corrector samplers (Song et al. 2021) and annealed Langevin dynamics (Song &
Ermon 2019, 2020), in JAX; the public entry module of every sampler.

Twin: ``torch_ref/samplers.py`` (same classes, functions and semantics, PyTorch).

Structure (DESIGN rules 2-4):
  * Predictors and correctors are small frozen dataclasses with a pure ``step(sde,
    score_fn, x, t, z) -> (x, x_mean)`` that takes its Gaussian noise ``z`` as an argument.
    ``get_predictor(name)`` / ``get_corrector(name)`` build them from score_sde's names.
  * ``pc_loop`` runs the whole trajectory in one ``jax.lax.scan`` over the float64 grid
    ``spec.grids.pc_timesteps`` (cast at use); the noise of step i comes either from
    ``jax.random.fold_in(key, i)`` or from pre-drawn arrays (``*_from_noise``), so the
    sampler is one XLA program and parity tests can feed both frameworks the same noise.
  * ``pc_sample`` / ``ald_sample`` are plain functions: ``jax.jit`` them with ``sde``,
    ``score_fn``, ``shape`` and the options static; only the key and the arrays a
    ``score_fn`` closes over vary between calls (no recompilation). They ``vmap``. Each
    returns ``(samples, nfe)`` with nfe the true number of score evaluations.

score_sde semantics reproduced (see DESIGN "Official semantics"), for
``score_fn(x [B, ...], t [B]) -> score [B, ...]``:
  * grid ``t_i = linspace(T, eps, N)``; each step runs the corrector, then the predictor;
    ``denoise`` returns the last predictor's mean ``x_mean`` (the step without its noise).
  * ``euler_maruyama``: dt = -1/N (score_sde's fixed step, not the grid spacing);
    ``x_mean = x + f_rev(x, t) dt``, ``x = x_mean + g_rev sqrt(-dt) z``.
  * ``reverse_diffusion``: ``f, G = rsde.discretize(x, t)``; ``x_mean = x - f``,
    ``x = x_mean + G z`` (Song et al. eq. 46-47).
  * ``ancestral_sampling`` (VE and VP, i = int(t (N-1)/T)):
    VE ``x_mean = x + (s_i^2 - s_{i-1}^2) score``,
    ``x = x_mean + sqrt(s_{i-1}^2 (s_i^2 - s_{i-1}^2) / s_i^2) z`` (SMLD ancestral step);
    VP ``x_mean = (x + beta_i score) / sqrt(1 - beta_i)``, ``x = x_mean + sqrt(beta_i) z``.
  * ``langevin``: ``eps_step = 2 alpha_i (snr ||z|| / ||score||)^2`` with both norms the
    mean over the (global) batch of per-example L2 norms, ``x_mean = x + eps_step score``,
    ``x = x_mean + sqrt(2 eps_step) z`` (Song et al. Alg. 4-5); ``ald`` uses
    ``eps_step = 2 alpha_i (snr std(t))^2``. alpha_i = ``sde.alphas[i]`` for VP and sub-VP
    (score_sde's intent for both: it crashes on sub-VP, which lacks the table), 1 for VE.

Where the official code crashes or miscounts, this one works and counts true
evaluations: Euler-Maruyama with ``probability_flow=True`` (the ODE step), correctors on
sub-VP, and NFE = N (predictor evaluations + corrector steps), not N (n_steps + 1).

Measured with the exact score of the demo mixture (``parity_tests/test_samplers_pc.py``):
``reverse_diffusion`` with ``probability_flow=True`` has a first-order bias in the
covariance (4000 samples on VP: 11.6, 6.4, 3.7 standard errors at N = 100, 200, 500);
``euler_maruyama`` with the probability flow is within 2 SE from N = 100.

The Langevin step size couples the samples of a batch (the norms are batch means): a
``vmap`` over independent batches keeps each batch's own mean, and ``jnp.mean`` over a
sharded batch is the global mean, so sharding cannot change the result.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp

import spec
from spec import grids
from spec.sampler_args import (  # re-exported: the public names of this module
    CORRECTORS,
    PREDICTORS,
    ald_nfe,
    check_shape,
    pc_nfe,
    pc_noise_shapes,
    stack_step_noise,
)
from spec.sampler_args import check_noise as _check_noise
from spec.validate import check_choice, check_float, check_int
from jax_impl.utils import append_dims

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]

__all__ = [
    "PREDICTORS", "CORRECTORS",
    "EulerMaruyamaPredictor", "ReverseDiffusionPredictor", "AncestralSamplingPredictor",
    "NonePredictor", "LangevinCorrector", "AnnealedLangevinCorrector", "NoneCorrector",
    "get_predictor", "get_corrector", "pc_components", "pc_nfe", "pc_noise_shapes",
    "stack_step_noise", "pc_loop", "pc_sample", "pc_sample_from_noise",
    "ald_step", "ald_nfe", "ald_sample", "ald_sample_from_noise", "check_shape",
]

# ------------------------------------------------------------------------------ helpers


def _check_sde(sde) -> None:
    if not isinstance(sde, spec.SDEConfig) or not hasattr(sde, "reverse"):
        raise TypeError(
            "sde must be a jax_impl.sde SDE (VESDE, VPSDE or subVPSDE), "
            f"got {type(sde).__name__}"
        )


def _discrete_alpha(sde, t, dtype) -> jax.Array:
    """alpha_i = 1 - beta_i at i = int(t (N-1)/T) for VP and sub-VP, ones for VE; ``[B]``."""
    if isinstance(sde, spec.VPSDEConfig):  # VPSDE and subVPSDE
        return jnp.asarray(sde.alphas, dtype)[sde.discrete_index(t)]
    return jnp.ones(jnp.shape(t), dtype)


def _batch_mean_norm(v: jax.Array) -> jax.Array:
    """Mean over the batch of the per-example L2 norms of ``v [B, ...]`` (a scalar)."""
    return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))


def _check_dtype(dtype):
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    return jnp.dtype(dtype)


# --------------------------------------------------------------------------- predictors


@dataclasses.dataclass(frozen=True)
class EulerMaruyamaPredictor:
    """Euler-Maruyama step of the reverse SDE (or, with ``probability_flow``, Euler's
    step of the probability-flow ODE): dt = -1/N,
    ``x_mean = x + f_rev dt``, ``x = x_mean + g_rev sqrt(-dt) z``."""

    probability_flow: bool = False
    name: ClassVar[str] = "euler_maruyama"
    nfe: ClassVar[int] = 1

    @property
    def stochastic(self) -> bool:
        """Whether ``step`` uses its noise ``z`` (shape of x)."""
        return not self.probability_flow

    def check(self, sde) -> None:
        """Raise if this predictor cannot run on ``sde``."""

    def step(self, sde, score_fn: ScoreFn, x, t, z=None):
        """One step at time ``t [B]``; returns ``(x, x_mean)``, each ``[B, ...]``."""
        rsde = sde.reverse(score_fn, self.probability_flow)
        dt = -1.0 / rsde.N
        drift, diffusion = rsde.sde(x, t)
        x_mean = x + drift * dt
        if not self.stochastic:
            return x_mean, x_mean
        _check_noise("z", z, x.shape)
        return x_mean + append_dims(diffusion, x.ndim) * math.sqrt(-dt) * z, x_mean


@dataclasses.dataclass(frozen=True)
class ReverseDiffusionPredictor:
    """Reverse-diffusion step (Song et al. eq. 46-47): ``f, G = rsde.discretize(x, t)``,
    ``x_mean = x - f``, ``x = x_mean + G z``; with ``probability_flow`` G = 0."""

    probability_flow: bool = False
    name: ClassVar[str] = "reverse_diffusion"
    nfe: ClassVar[int] = 1

    @property
    def stochastic(self) -> bool:
        return not self.probability_flow

    def check(self, sde) -> None:
        """Raise if this predictor cannot run on ``sde``."""

    def step(self, sde, score_fn: ScoreFn, x, t, z=None):
        """One step at time ``t [B]``; returns ``(x, x_mean)``, each ``[B, ...]``."""
        f, G = sde.reverse(score_fn, self.probability_flow).discretize(x, t)
        x_mean = x - f
        if not self.stochastic:
            return x_mean, x_mean
        _check_noise("z", z, x.shape)
        return x_mean + append_dims(G, x.ndim) * z, x_mean


@dataclasses.dataclass(frozen=True)
class AncestralSamplingPredictor:
    """Ancestral sampling of the discrete chain (DDPM for VP, SMLD for VE), i = int(t(N-1)/T):
    VE ``x_mean = x + (s_i^2 - s_{i-1}^2) score``, std ``sqrt(s_{i-1}^2 (s_i^2 - s_{i-1}^2)
    / s_i^2)`` (s_{-1} = 0); VP ``x_mean = (x + beta_i score) / sqrt(1 - beta_i)``, std
    ``sqrt(beta_i)``. Not defined for sub-VP or the probability flow (raises)."""

    probability_flow: bool = False
    name: ClassVar[str] = "ancestral_sampling"
    nfe: ClassVar[int] = 1

    def __post_init__(self):
        if self.probability_flow:
            raise ValueError(
                "predictor 'ancestral_sampling' has no probability-flow form; use "
                "'reverse_diffusion' or 'euler_maruyama' with probability_flow=True"
            )

    @property
    def stochastic(self) -> bool:
        return True

    def check(self, sde) -> None:
        """Raise ``ValueError`` for a sub-VP SDE (only VE and VP have a discrete chain)."""
        if isinstance(sde, spec.subVPSDEConfig) or not isinstance(
            sde, (spec.VPSDEConfig, spec.VESDEConfig)
        ):
            raise ValueError(
                f"predictor 'ancestral_sampling' supports VESDE and VPSDE only, got "
                f"{type(sde).__name__}; use 'reverse_diffusion' or 'euler_maruyama'"
            )

    def step(self, sde, score_fn: ScoreFn, x, t, z=None):
        """One step at time ``t [B]``; returns ``(x, x_mean)``, each ``[B, ...]``."""
        self.check(sde)
        _check_noise("z", z, x.shape)
        i = sde.discrete_index(t)
        score = score_fn(x, t)
        if isinstance(sde, spec.VESDEConfig):
            sigmas = jnp.asarray(sde.discrete_sigmas, x.dtype)
            sigma = sigmas[i]
            prev = jnp.where(i == 0, jnp.zeros_like(sigma), sigmas[jnp.maximum(i - 1, 0)])
            gap = sigma**2 - prev**2
            x_mean = x + append_dims(gap, x.ndim) * score
            std = jnp.sqrt(prev**2 * gap / sigma**2)
        else:
            beta = jnp.asarray(sde.discrete_betas, x.dtype)[i]
            x_mean = (x + append_dims(beta, x.ndim) * score) / append_dims(jnp.sqrt(1.0 - beta), x.ndim)
            std = jnp.sqrt(beta)
        return x_mean + append_dims(std, x.ndim) * z, x_mean


@dataclasses.dataclass(frozen=True)
class NonePredictor:
    """The empty predictor (corrector-only sampling): returns ``(x, x)``, no evaluation."""

    probability_flow: bool = False
    name: ClassVar[str] = "none"
    nfe: ClassVar[int] = 0

    @property
    def stochastic(self) -> bool:
        return False

    def check(self, sde) -> None:
        """Runs on every SDE."""

    def step(self, sde, score_fn: ScoreFn, x, t, z=None):
        return x, x


# --------------------------------------------------------------------------- correctors


@dataclasses.dataclass(frozen=True)
class _Corrector:
    snr: float = 0.16
    n_steps: int = 1

    def __post_init__(self):
        object.__setattr__(self, "snr", check_float("snr", self.snr, positive=True))
        object.__setattr__(self, "n_steps", check_int("n_steps", self.n_steps, minimum=1))

    @property
    def nfe(self) -> int:
        """Score evaluations per PC step."""
        return self.n_steps

    @property
    def noise_shape_prefix(self) -> tuple[int, ...]:
        """Leading axes of the noise ``step`` takes: ``(n_steps,)``."""
        return (self.n_steps,)

    def check(self, sde) -> None:
        """Runs on every SDE (VE, VP and sub-VP)."""

    def _step_size(self, sde, x, t, grad, z_j):
        raise NotImplementedError

    def step(self, sde, score_fn: ScoreFn, x, t, z):
        """``n_steps`` Langevin steps at time ``t [B]`` with noise ``z [n_steps, B, ...]``;
        returns ``(x, x_mean)`` of the last one."""
        _check_noise("z", z, (self.n_steps, *x.shape))
        alpha = _discrete_alpha(sde, t, x.dtype)

        def one(carry, z_j):
            x, _ = carry
            grad = score_fn(x, t)
            step_size = self._step_size(sde, x, t, grad, z_j) * 2.0 * alpha
            x_mean = x + append_dims(step_size, x.ndim) * grad
            x = x_mean + append_dims(jnp.sqrt(2.0 * step_size), x.ndim) * z_j
            return (x, x_mean), None

        (x, x_mean), _ = jax.lax.scan(one, (x, x), z)
        return x, x_mean


@dataclasses.dataclass(frozen=True)
class LangevinCorrector(_Corrector):
    """Langevin MCMC with score_sde's SNR rule (Song et al. Alg. 4-5):
    ``eps = 2 alpha_i (snr ||z|| / ||score||)^2`` (norms averaged over the batch),
    ``x_mean = x + eps score``, ``x = x_mean + sqrt(2 eps) z``."""

    name: ClassVar[str] = "langevin"

    def _step_size(self, sde, x, t, grad, z_j):
        ratio = self.snr * _batch_mean_norm(z_j) / _batch_mean_norm(grad)
        return jnp.broadcast_to(ratio**2, t.shape)


@dataclasses.dataclass(frozen=True)
class AnnealedLangevinCorrector(_Corrector):
    """NCSN's annealed Langevin step as a corrector: ``eps = 2 alpha_i (snr std(t))^2``,
    ``x_mean = x + eps score``, ``x = x_mean + sqrt(2 eps) z``."""

    name: ClassVar[str] = "ald"

    def _step_size(self, sde, x, t, grad, z_j):
        std = sde.marginal_prob(x, t)[1]
        return (self.snr * std) ** 2


@dataclasses.dataclass(frozen=True)
class NoneCorrector:
    """The empty corrector (predictor-only sampling): returns ``(x, x)``, no evaluation."""

    name: ClassVar[str] = "none"
    nfe: ClassVar[int] = 0

    def check(self, sde) -> None:
        """Runs on every SDE."""

    def step(self, sde, score_fn: ScoreFn, x, t, z=None):
        return x, x


_PREDICTOR_CLASSES = {
    "euler_maruyama": EulerMaruyamaPredictor,
    "reverse_diffusion": ReverseDiffusionPredictor,
    "ancestral_sampling": AncestralSamplingPredictor,
    "none": NonePredictor,
}
_CORRECTOR_CLASSES = {
    "langevin": LangevinCorrector,
    "ald": AnnealedLangevinCorrector,
    "none": NoneCorrector,
}

Predictor = EulerMaruyamaPredictor | ReverseDiffusionPredictor | AncestralSamplingPredictor | NonePredictor
Corrector = LangevinCorrector | AnnealedLangevinCorrector | NoneCorrector


def get_predictor(name: str, *, probability_flow: bool = False) -> Predictor:
    """The predictor called ``name`` (one of ``PREDICTORS``, score_sde's names)."""
    check_choice("predictor", name, PREDICTORS)
    return _PREDICTOR_CLASSES[name](probability_flow=bool(probability_flow))


def get_corrector(name: str, *, snr: float = 0.16, n_steps: int = 1) -> Corrector:
    """The corrector called ``name`` (one of ``CORRECTORS``) with its SNR and step count."""
    check_choice("corrector", name, CORRECTORS)
    if name == "none":
        return NoneCorrector()
    return _CORRECTOR_CLASSES[name](snr=snr, n_steps=n_steps)


# ---------------------------------------------------------------------- the PC engine


def pc_components(sde, *, predictor="reverse_diffusion", corrector="langevin", snr=0.16,
                  n_steps=1, probability_flow=False, eps=None):
    """Validate the PC options; return ``(predictor, corrector, timesteps [N] float64)``.

    ``predictor`` / ``corrector`` are names (``PREDICTORS`` / ``CORRECTORS``) or instances;
    ``snr``, ``n_steps`` and ``probability_flow`` configure those given by name (an
    instance keeps its own fields). ``eps`` defaults to ``spec.grids.default_pc_eps(sde)``.
    Everything raises here, before any tracing or compilation.
    """
    _check_sde(sde)
    if isinstance(predictor, str):
        predictor = get_predictor(predictor, probability_flow=probability_flow)
    elif not isinstance(predictor, tuple(_PREDICTOR_CLASSES.values())):
        raise TypeError(f"predictor must be a name in {PREDICTORS} or a predictor instance, "
                        f"got {predictor!r}")
    if isinstance(corrector, str):
        check_float("snr", snr, positive=True)
        check_int("n_steps", n_steps, minimum=1)
        corrector = get_corrector(corrector, snr=snr, n_steps=n_steps)
    elif not isinstance(corrector, tuple(_CORRECTOR_CLASSES.values())):
        raise TypeError(f"corrector must be a name in {CORRECTORS} or a corrector instance, "
                        f"got {corrector!r}")
    predictor.check(sde)
    corrector.check(sde)
    eps = grids.default_pc_eps(sde) if eps is None else eps
    timesteps = grids.pc_timesteps(sde.N, eps, sde.T)
    return predictor, corrector, timesteps


def _draw_step_noise(key, shapes, dtype):
    """One normal draw from ``key`` cut into the named arrays (one RNG kernel per step
    compiles about twice as fast as one per array)."""
    sizes = [math.prod(s) for s in shapes.values()]
    flat = jax.random.normal(key, (sum(sizes),), dtype)
    out, offset = {}, 0
    for (name, s), size in zip(shapes.items(), sizes):
        out[name] = flat[offset : offset + size].reshape(s)
        offset += size
    return out


def pc_loop(sde, score_fn: ScoreFn, x_init, predictor, corrector, timesteps, *, key=None,
            noise=None, project=None, n_data: int = 0, denoise: bool = True):
    """Run corrector-then-predictor steps over ``timesteps`` in one ``lax.scan``.

    Args:
      x_init: ``x_T`` ``[B, ...]``; its dtype is the sampler's.
      predictor, corrector: instances (see ``pc_components``).
      timesteps: float64 ``[N]`` numpy grid, cast to ``x_init.dtype`` here.
      key: per-step noise ``normal(fold_in(key, i))`` (split over the names of
        ``pc_noise_shapes``); or
      noise: a dict of pre-drawn arrays ``[N, ...]`` (``stack_step_noise``).
      project: optional ``project(x, x_mean, t [B], z_data) -> (x, x_mean)`` applied after
        the corrector and after the predictor (conditional sampling); it consumes
        ``noise["data"][i, 0]`` and ``[i, 1]`` (``n_data = 2``).
      denoise: return the last ``x_mean`` instead of ``x``.

    Returns the samples ``[B, ...]``.
    """
    if (key is None) == (noise is None):
        raise ValueError("pass exactly one of key and noise")
    x_init = jnp.asarray(x_init)
    dtype = x_init.dtype
    batch = x_init.shape[0]
    shapes = pc_noise_shapes(predictor, corrector, x_init.shape, n_data)
    ts = jnp.asarray(timesteps, dtype)
    num_steps = ts.shape[0]

    def body(carry, inp):
        x, _ = carry
        i, t, z = inp
        if z is None:
            z = _draw_step_noise(jax.random.fold_in(key, i), shapes, dtype)
        vec_t = jnp.broadcast_to(t, (batch,))
        x, x_mean = corrector.step(sde, score_fn, x, vec_t, z.get("corrector"))
        if project is not None:
            x, x_mean = project(x, x_mean, vec_t, z["data"][0])
        x, x_mean = predictor.step(sde, score_fn, x, vec_t, z.get("predictor"))
        if project is not None:
            x, x_mean = project(x, x_mean, vec_t, z["data"][1])
        return (x, x_mean), None

    xs = (jnp.arange(num_steps), ts, noise)
    (x, x_mean), _ = jax.lax.scan(body, (x_init, x_init), xs)
    return x_mean if denoise else x


# --------------------------------------------------------------------------- PC public


def pc_sample(rng, sde, score_fn: ScoreFn, shape, *, predictor="reverse_diffusion",
              corrector="langevin", snr: float = 0.16, n_steps: int = 1,
              probability_flow: bool = False, denoise: bool = True, eps: float | None = None,
              dtype=jnp.float32):
    """Predictor-corrector sampling of ``sde``'s reverse SDE (Song et al. 2021, Alg. 1-3).

    Args:
      rng: a PRNG key (the prior draw uses one split, step i ``fold_in(key, i)``).
      sde: ``jax_impl.sde`` VESDE / VPSDE / subVPSDE (static under jit).
      score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``.
      shape: ``(B, ...)`` of the samples.
      predictor: one of ``PREDICTORS`` or an instance; corrector: ``CORRECTORS`` or instance.
      snr, n_steps: the corrector's signal-to-noise ratio and steps per PC step.
      probability_flow: predict along the probability-flow ODE (stochastic correctors
        still add noise).
      denoise: return the last predictor's mean. eps: end time (default 1e-5 VE, 1e-3 VP).
      dtype: floating dtype of the samples.

    Returns ``(samples [B, ...], nfe)`` with ``nfe = N (predictor.nfe + corrector.nfe)``.
    """
    shape = check_shape(shape)
    dtype = _check_dtype(dtype)
    pred, corr, ts = pc_components(sde, predictor=predictor, corrector=corrector, snr=snr,
                                   n_steps=n_steps, probability_flow=probability_flow, eps=eps)
    prior_key, loop_key = jax.random.split(rng)
    x = sde.prior_sampling(prior_key, shape, dtype)
    samples = pc_loop(sde, score_fn, x, pred, corr, ts, key=loop_key, denoise=denoise)
    return samples, pc_nfe(pred, corr, len(ts))


def pc_sample_from_noise(sde, score_fn: ScoreFn, prior_noise, predictor_noise=None,
                         corrector_noise=None, *, predictor="reverse_diffusion",
                         corrector="langevin", snr: float = 0.16, n_steps: int = 1,
                         probability_flow: bool = False, denoise: bool = True,
                         eps: float | None = None):
    """``pc_sample`` with pre-drawn noise (the pure core; parity tests feed both frameworks).

    Args:
      prior_noise: ``z [B, ...]``; ``x_T = sde.prior_from_noise(z)``; sets shape and dtype.
      predictor_noise: ``[N, B, ...]``, step i's predictor noise (None if the predictor is
        deterministic: ``none`` or probability flow).
      corrector_noise: ``[N, n_steps, B, ...]`` (None for corrector ``none``).
    Returns ``(samples, nfe)``.
    """
    prior_noise = jnp.asarray(prior_noise)
    check_shape(prior_noise.shape)
    _check_dtype(prior_noise.dtype)
    pred, corr, ts = pc_components(sde, predictor=predictor, corrector=corrector, snr=snr,
                                   n_steps=n_steps, probability_flow=probability_flow, eps=eps)
    shapes = pc_noise_shapes(pred, corr, prior_noise.shape)
    noise = stack_step_noise(shapes, len(ts), predictor_noise=predictor_noise,
                             corrector_noise=corrector_noise)
    noise = {k: jnp.asarray(v, prior_noise.dtype) for k, v in noise.items()}
    x = sde.prior_from_noise(prior_noise)
    samples = pc_loop(sde, score_fn, x, pred, corr, ts, noise=noise, denoise=denoise)
    return samples, pc_nfe(pred, corr, len(ts))


# ------------------------------------------------------------- annealed Langevin (NCSN)


def ald_step(score_fn, x, level, z, step_size):
    """One Langevin step at noise level ``level [B]`` (int): ``x + a score(x, level) +
    sqrt(2 a) z`` with step size ``a`` (scalar). Returns the new ``x``."""
    return x + step_size * score_fn(x, level) + jnp.sqrt(2.0 * step_size) * z


def _ald_denoise(score_fn, x, sigmas):
    """NCSNv2's final denoising step ``x + sigma_L^2 score(x, L-1)`` (Tweedie's formula)."""
    level = jnp.full((x.shape[0],), len(sigmas) - 1, jnp.int32)
    return x + jnp.asarray(sigmas[-1] ** 2, x.dtype) * score_fn(x, level)


def _ald_loop(sigmas, score_fn, x, levels, step_sizes, *, key, noise, denoise, final_only):
    dtype = x.dtype
    batch = x.shape[0]
    xs = (jnp.arange(len(levels)), jnp.asarray(levels, jnp.int32), jnp.asarray(step_sizes, dtype),
          noise)

    def body(x, inp):
        i, level, step_size, z = inp
        if z is None:
            z = jax.random.normal(jax.random.fold_in(key, i), x.shape, dtype)
        x = ald_step(score_fn, x, jnp.broadcast_to(level, (batch,)), z, step_size)
        return x, (None if final_only else x)

    x, trajectory = jax.lax.scan(body, x, xs)
    if denoise:
        x = _ald_denoise(score_fn, x, sigmas)
    if final_only:
        return x
    if denoise:
        trajectory = jnp.concatenate([trajectory, x[None]], axis=0)
    return trajectory


def _check_ald_options(sigmas, n_steps_each, step_lr, x_init, shape):
    sig = grids.check_sigmas(sigmas)
    levels, step_sizes = grids.ald_schedule(sig, n_steps_each, step_lr)
    if x_init is not None:
        x_init = jnp.asarray(x_init)
        if tuple(x_init.shape) != tuple(shape):
            raise ValueError(f"x_init must have shape {tuple(shape)}, got {tuple(x_init.shape)}")
        _check_dtype(x_init.dtype)
    return sig, levels, step_sizes, x_init


def ald_sample(rng, sigmas, score_fn, shape, *, n_steps_each: int = 100, step_lr: float = 2e-5,
               denoise: bool = True, final_only: bool = True, x_init=None, dtype=jnp.float32):
    """Annealed Langevin dynamics (Song & Ermon 2019 Alg. 1; NCSNv2's sampler).

    For each level i = 0..L-1 (``sigmas`` decreasing, e.g.
    ``spec.schedules.geometric_sigmas``) run ``n_steps_each`` steps
    ``x <- x + a_i score(x, i) + sqrt(2 a_i) z`` with ``a_i = step_lr (sigma_i/sigma_L)^2``;
    then, with ``denoise``, ``x <- x + sigma_L^2 score(x, L-1)``.

    Args:
      rng: PRNG key; step s draws ``normal(fold_in(key, s))`` (NCSN v1 draws the noise
        before calling the score, NCSNv2 after: only the torch RNG stream would notice).
      sigmas: concrete float ladder ``[L]`` (static); score_fn: ``score_fn(x, level [B]
        int32) -> [B, ...]`` (the noise-conditional network's label).
      shape: ``(B, ...)``. x_init: start ``[B, ...]`` (NCSN uses uniform noise for images);
        default ``sigma_1 * N(0, I)``, the law of the largest perturbation of centred data.
      final_only: return the last sample ``[B, ...]``, or else NCSNv2's trajectory
        ``[S (+1), B, ...]``: every post-step sample plus the denoised one
        (S = L n_steps_each). NCSN v1's list (pre-step, clamped to [0, 1]) is not reproduced.

    Returns ``(samples, nfe)``, ``nfe = L n_steps_each + denoise``.
    """
    shape = check_shape(shape)
    dtype = _check_dtype(dtype if x_init is None else jnp.result_type(x_init))
    sig, levels, step_sizes, x_init = _check_ald_options(sigmas, n_steps_each, step_lr, x_init, shape)
    init_key, loop_key = jax.random.split(rng)
    if x_init is None:
        x_init = jnp.asarray(sig[0], dtype) * jax.random.normal(init_key, shape, dtype)
    out = _ald_loop(sig, score_fn, x_init, levels, step_sizes, key=loop_key, noise=None,
                    denoise=denoise, final_only=final_only)
    return out, ald_nfe(len(sig), n_steps_each, denoise)


def ald_sample_from_noise(sigmas, score_fn, x_init, noise, *, n_steps_each: int = 100,
                          step_lr: float = 2e-5, denoise: bool = True, final_only: bool = True):
    """``ald_sample`` with pre-drawn noise ``[L n_steps_each, B, ...]`` (row s feeds step s)
    from ``x_init [B, ...]``. Returns ``(samples, nfe)`` as ``ald_sample``."""
    x_init = jnp.asarray(x_init)
    shape = check_shape(x_init.shape)
    sig, levels, step_sizes, x_init = _check_ald_options(sigmas, n_steps_each, step_lr, x_init, shape)
    if tuple(jnp.shape(noise)) != (len(levels), *shape):
        raise ValueError(f"noise must have shape {(len(levels), *shape)} "
                         f"(L * n_steps_each, *x_init.shape), got {tuple(jnp.shape(noise))}")
    noise = jnp.asarray(noise, x_init.dtype)
    out = _ald_loop(sig, score_fn, x_init, levels, step_sizes, key=None, noise=noise,
                    denoise=denoise, final_only=final_only)
    return out, ald_nfe(len(sig), n_steps_each, denoise)


# ------------------------------------------------------------------- other samplers
# This module is the public entry point of every sampler: the discrete (DDPM / DDIM), ODE
# and fast samplers live in their own modules and are re-exported here.

from jax_impl.fast_samplers import dpm_solver_pp_sample, edm_heun_sample  # noqa: E402
from jax_impl.ode import ode_sample  # noqa: E402
from jax_impl.samplers_discrete import ddim_invert, ddim_sample, ddpm_sample  # noqa: E402

__all__ += ["ddpm_sample", "ddim_sample", "ddim_invert", "edm_heun_sample",
            "dpm_solver_pp_sample", "ode_sample"]
