"""Predictor-corrector samplers (Song et al. 2021) and annealed Langevin dynamics (Song &
Ermon 2019, 2020), in JAX; the public entry module of every sampler.

Twin: ``torch_ref/samplers.py`` (same classes, functions and semantics, PyTorch).

The sampler contract (every driver of the library, both frameworks):
  * JAX: ``sampler(rng, <model>, <score_fn | model_fn>, shape, *, <options>, x_T=None,
    noise=None, dtype=None) -> (samples, nfe)``; the torch twin has the same parameters
    without ``rng`` and with a keyword ``generator: torch.Generator | None = None`` last.
  * ``x_T=`` is the actual starting state ``[*shape]`` (PC: ``sde.prior_from_noise(z)``);
    ``noise=`` the per-step noise: a ``[K, *shape]`` array, or where a step draws several
    kinds a dict (PC: ``{"predictor": [N, B, ...], "corrector": [N, n_steps, B, ...]}``,
    the shapes ``pc_noise_shapes`` gives with a leading ``N``). What is not given is drawn
    from ``rng``, PER SAMPLE: sample j's start from ``fold_in(split(rng)[0], j)``, its
    noise of step i from ``fold_in(fold_in(split(rng)[1], i), j)``
    (``jax_impl.sharding.per_sample_normal``), so a sample depends on its key and index
    only: not on the batch size, nor on how the batch is sharded over devices
    (``sharding.shard_sampler``); ``rng`` may be None only when everything random is
    given. ``dtype`` defaults to that of ``x_T`` / ``noise``, else float32.
  * The table of drivers (all importable from this module; the ODE solver needs diffrax
    only when an adaptive method is run):

      ==========================  ===============================================
      ``pc_sample``               predictor-corrector (score_sde), this module
      ``ald_sample``              annealed Langevin dynamics (NCSN), this module
      ``ode_sample``              probability-flow ODE (``jax_impl.ode``)
      ``ddpm_sample``             DDPM ancestral (``jax_impl.samplers_discrete``)
      ``ddim_sample``             DDIM, any eta (``jax_impl.samplers_discrete``)
      ``ddim_invert``             deterministic DDIM encoding (no randomness, no rng)
      ``edm_heun_sample``         EDM Heun (``jax_impl.fast_samplers``)
      ``dpm_solver_pp_sample``    DPM-Solver++(2M) (``jax_impl.fast_samplers``)
      ``pc_inpaint``,             conditional PC (``jax_impl.controllable``)
      ``pc_colorize``
      ==========================  ===============================================

  * Checks, all raised before compilation: options (names, bools, ranges), ``rng`` (one
    PRNG key, ``validate.check_key``), pre-drawn arrays (shape, floating dtype, concrete
    NaN/Inf), and what ``score_fn`` returns (shape ``x.shape`` and a floating dtype,
    checked at trace time on every call site).

Structure (DESIGN rules 2-4):
  * Predictors and correctors follow a small protocol (``Predictor``, ``Corrector``
    below): ``nfe`` (score evaluations per step), ``noise_shape(shape)`` (the noise one
    step takes for samples of ``shape``, None for none), ``check(sde)`` (raise if it
    cannot run on ``sde``) and a pure ``step(sde, score_fn, x, t, z) -> (x, x_mean)``
    that takes its Gaussian noise ``z`` as an argument. The built-in ones are small
    frozen dataclasses built by ``get_predictor(name)`` / ``get_corrector(name)`` from
    score_sde's names; any object following the protocol (no subclassing) works in
    ``pc_sample`` as well.
  * ``pc_loop`` runs the whole trajectory in one ``jax.lax.scan`` over the float64 grid
    ``spec.grids.pc_timesteps`` (cast at use); the noise of step i comes either from
    ``fold_in(fold_in(key, i), j)`` for sample j or from the pre-drawn ``noise`` dict, so
    the sampler is one XLA program and parity tests can feed both frameworks the same
    noise.
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
    PC_NOISE_KEYS,
    PREDICTORS,
    Corrector,
    Predictor,
    ald_nfe,
    check_shape,
    check_step_noise,
    pc_nfe,
    pc_noise_shapes,
)
from spec.sampler_args import check_callable, check_component, checked_fn
from spec.sampler_args import check_noise as _check_noise
from spec.validate import check_bool, check_choice, check_float, check_int
from jax_impl.sharding import per_sample_normal
from jax_impl.utils import append_dims
from jax_impl.validate import check_array, check_fn_output, check_key, check_sde, resolve_dtype

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]

__all__ = [
    "PREDICTORS", "CORRECTORS", "PC_NOISE_KEYS", "Predictor", "Corrector",
    "EulerMaruyamaPredictor", "ReverseDiffusionPredictor", "AncestralSamplingPredictor",
    "NonePredictor", "LangevinCorrector", "AnnealedLangevinCorrector", "NoneCorrector",
    "get_predictor", "get_corrector", "pc_components", "pc_nfe", "pc_noise_shapes",
    "check_step_noise", "pc_loop", "pc_sample",
    "ald_step", "ald_nfe", "ald_sample", "check_shape",
]

# ------------------------------------------------------------------------------ helpers


def _discrete_alpha(sde, t, dtype) -> jax.Array:
    """alpha_i = 1 - beta_i at i = int(t (N-1)/T) for VP and sub-VP, ones for VE; ``[B]``."""
    if isinstance(sde, spec.VPSDEConfig):  # VPSDE and subVPSDE
        return jnp.asarray(sde.alphas, dtype)[sde.discrete_index(t)]
    return jnp.ones(jnp.shape(t), dtype)


def _batch_mean_norm(v: jax.Array) -> jax.Array:
    """Mean over the batch of the per-example L2 norms of ``v [B, ...]`` (a scalar)."""
    return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))


def _check_rng(rng, given: str):
    """``rng`` checked as one PRNG key; None is allowed only when nothing is left to draw
    (``given`` names what must then be passed). Returns ``rng``."""
    if rng is None:
        raise TypeError(f"rng must be a jax.random key (e.g. jax.random.key(0)) unless {given} "
                        "given; got None")
    return check_key("rng", rng)


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

    def noise_shape(self, shape):
        """``shape`` (one normal per entry of x), or None with the probability flow."""
        return tuple(shape) if self.stochastic else None

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

    def noise_shape(self, shape):
        """``shape``, or None with the probability flow."""
        return tuple(shape) if self.stochastic else None

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

    def noise_shape(self, shape):
        """``shape``: one normal per entry of x."""
        return tuple(shape)

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

    def noise_shape(self, shape):
        """None: no noise."""
        return None

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

    def noise_shape(self, shape):
        """``(n_steps, *shape)``: one normal per Langevin step and entry of x."""
        return (self.n_steps, *shape)

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

    def noise_shape(self, shape):
        """None: no noise."""
        return None

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

def get_predictor(name: str, *, probability_flow: bool = False) -> Predictor:
    """The predictor called ``name`` (one of ``PREDICTORS``, score_sde's names)."""
    check_choice("predictor", name, PREDICTORS)
    return _PREDICTOR_CLASSES[name](probability_flow=check_bool("probability_flow", probability_flow))


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

    ``predictor`` / ``corrector`` are names (``PREDICTORS`` / ``CORRECTORS``) or objects
    following the ``Predictor`` / ``Corrector`` protocol (the built-in classes or a
    user's own); ``snr``, ``n_steps`` and ``probability_flow`` configure those given by
    name (an object keeps its own fields). ``eps`` defaults to
    ``spec.grids.default_pc_eps(sde)``. Everything raises here, before any tracing or
    compilation, including the components' own ``check(sde)``.
    """
    check_sde(sde)
    check_bool("probability_flow", probability_flow)
    if isinstance(predictor, str):
        predictor = get_predictor(predictor, probability_flow=probability_flow)
    else:
        check_component("predictor", predictor)
    if isinstance(corrector, str):
        check_float("snr", snr, positive=True)
        check_int("n_steps", n_steps, minimum=1)
        corrector = get_corrector(corrector, snr=snr, n_steps=n_steps)
    else:
        check_component("corrector", corrector)
    predictor.check(sde)
    corrector.check(sde)
    eps = grids.default_pc_eps(sde) if eps is None else eps
    timesteps = grids.pc_timesteps(sde.N, eps, sde.T)
    return predictor, corrector, timesteps


def _draw_step_noise(key, shapes, dtype, sample_shape):
    """A step's noise arrays ``{name: [*lead, B, ...]}`` drawn per sample: sample j's
    entries of every array come from one normal draw of ``fold_in(key, j)``
    (``sharding.per_sample_normal``; one RNG kernel per step compiles about twice as fast
    as one per array), so they do not depend on the batch size or its sharding.
    ``sample_shape`` is ``(B, ...)``; each named shape is ``(*lead, *sample_shape)``."""
    B, rest = sample_shape[0], tuple(sample_shape[1:])
    leads = {name: tuple(s[: len(s) - len(sample_shape)]) for name, s in shapes.items()}
    sizes = [math.prod(lead) * math.prod(rest) for lead in leads.values()]
    flat = per_sample_normal(key, (B, sum(sizes)), dtype)
    out, offset = {}, 0
    for (name, lead), size in zip(leads.items(), sizes):
        part = flat[:, offset : offset + size].reshape((B, *lead, *rest))
        out[name] = jnp.moveaxis(part, 0, len(lead))
        offset += size
    return out


def pc_loop(rng, sde, score_fn: ScoreFn, x_init, predictor, corrector, timesteps, *,
            noise=None, project=None, n_data: int = 0, denoise: bool = True):
    """Run corrector-then-predictor steps over ``timesteps`` in one ``lax.scan`` (the
    engine under ``pc_sample`` and the conditional samplers; inputs are not re-checked).

    Args:
      rng: the loop key: sample j of step i draws ``normal(fold_in(fold_in(rng, i), j))``
        cut into its entries of the arrays of ``pc_noise_shapes`` (None when ``noise`` is
        given or nothing is drawn).
      x_init: the start ``[B, ...]``; its dtype is the sampler's.
      predictor, corrector: protocol objects (see ``pc_components``).
      timesteps: float64 ``[N]`` numpy grid, cast to ``x_init.dtype`` here.
      noise: the pre-drawn dict ``{name: [N, ...]}`` (``check_step_noise``), or None.
      project: optional ``project(x, x_mean, t [B], z_data) -> (x, x_mean)`` applied after
        the corrector and after the predictor (conditional sampling); it consumes
        ``noise["data"][i, 0]`` and ``[i, 1]`` (``n_data = 2``).
      denoise: return the last ``x_mean`` instead of ``x``.

    Returns the samples ``[B, ...]``.
    """
    x_init = jnp.asarray(x_init)
    dtype = x_init.dtype
    batch = x_init.shape[0]
    shapes = pc_noise_shapes(predictor, corrector, x_init.shape, n_data)
    ts = jnp.asarray(timesteps, dtype)
    num_steps = ts.shape[0]
    if noise is None and shapes and rng is None:
        raise TypeError("pc_loop: rng is required to draw the step noise when noise is None")

    def body(carry, inp):
        x, _ = carry
        i, t, z = inp
        if z is None:
            z = (_draw_step_noise(jax.random.fold_in(rng, i), shapes, dtype, x_init.shape)
                 if shapes else {})
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


def _pc_prepare(rng, sde, score_fn, shape, x_T, noise, dtype, *, denoise, n_data: int = 0,
                **options):
    """The checks and draws shared by the PC drivers (``pc_sample`` and the conditional
    samplers of ``jax_impl.controllable``): validate ``options`` (``pc_components``'
    keywords and ``denoise``), ``shape``, ``rng``, ``x_T [*shape]`` and the ``noise`` dict;
    draw what is not given. Returns ``(predictor, corrector, timesteps, checked score_fn,
    dtype, x_T or None, prior_key or None, loop_key or None, noise or None)``; ``x_T`` is
    None exactly when it must be drawn from ``prior_key`` (``_draw_prior``: row j from
    ``normal(fold_in(prior_key, j))`` mapped to the prior)."""
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    shape = check_shape(shape)
    check_bool("denoise", denoise)
    pred, corr, ts = pc_components(sde, **options)
    shapes = pc_noise_shapes(pred, corr, shape, n_data)
    if noise is not None:
        noise = check_step_noise(noise, shapes, len(ts))
    dtype = resolve_dtype(dtype, x_T, *(noise or {}).values())
    if x_T is not None:
        x_T = check_array("x_T", x_T, shape, dtype)
    if noise is not None:
        noise = {k: check_array(f"noise[{k!r}]", v, None, dtype) for k, v in noise.items()}
    prior_key = loop_key = None
    if x_T is None or (shapes and noise is None):
        given = "x_T and noise (" + (", ".join(map(repr, shapes)) or "no keys") + ") are"
        prior_key, loop_key = jax.random.split(_check_rng(rng, given))
    elif rng is not None:
        check_key("rng", rng)
    score_fn = checked_fn("score_fn", score_fn, check_fn_output)
    return pred, corr, ts, score_fn, dtype, x_T, prior_key, loop_key, noise


def _draw_prior(sde, prior_key, shape, dtype):
    """``x_T [*shape]`` from ``sde``'s prior, per sample: row j is
    ``sde.prior_from_noise`` of ``normal(fold_in(prior_key, j), shape[1:])``."""
    return sde.prior_from_noise(per_sample_normal(prior_key, shape, dtype))


# --------------------------------------------------------------------------- PC public


def pc_sample(rng, sde, score_fn: ScoreFn, shape, *, predictor="reverse_diffusion",
              corrector="langevin", snr: float = 0.16, n_steps: int = 1,
              probability_flow: bool = False, denoise: bool = True, eps: float | None = None,
              x_T=None, noise=None, dtype=None):
    """Predictor-corrector sampling of ``sde``'s reverse SDE (Song et al. 2021, Alg. 1-3).

    Args:
      rng: a PRNG key (``jax.random.key(0)``): sample j starts from
        ``sde.prior_from_noise(normal(fold_in(split(rng)[0], j)))`` and draws step i's
        noise from ``fold_in(fold_in(split(rng)[1], i), j)`` (per sample, so the samples
        do not depend on the batch's sharding). May be None when ``x_T`` and every array
        ``noise`` needs are given.
      sde: ``jax_impl.sde`` VESDE / VPSDE / subVPSDE (static under jit).
      score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]`` (checked at trace time: the
        shape of x and a floating dtype).
      shape: ``(B, ...)`` of the samples.
      predictor: one of ``PREDICTORS`` or a ``Predictor``; corrector: one of
        ``CORRECTORS`` or a ``Corrector`` (a user's own class works: see the protocols).
      snr, n_steps: the corrector's signal-to-noise ratio and steps per PC step.
      probability_flow: predict along the probability-flow ODE (stochastic correctors
        still add noise). A bool.
      denoise: return the last predictor's mean (a bool). eps: end time (default 1e-5
        VE, 1e-3 VP / sub-VP).
      x_T: the start ``[*shape]`` (e.g. ``sde.prior_from_noise(z)``).
      noise: pre-drawn step noise, a dict ``{"predictor": [N, *shape], "corrector":
        [N, n_steps, *shape]}`` (the keys ``pc_noise_shapes`` lists; unused keys are
        ignored).
      dtype: floating dtype of the samples (default: that of x_T / noise, else float32).

    Returns ``(samples [B, ...], nfe)`` with ``nfe = N (predictor.nfe + corrector.nfe)``.
    """
    pred, corr, ts, score_fn, dtype, x_T, prior_key, loop_key, noise = _pc_prepare(
        rng, sde, score_fn, shape, x_T, noise, dtype, predictor=predictor,
        corrector=corrector, snr=snr, n_steps=n_steps, probability_flow=probability_flow,
        eps=eps, denoise=denoise)
    if x_T is None:
        x_T = _draw_prior(sde, prior_key, check_shape(shape), dtype)
    samples = pc_loop(loop_key, sde, score_fn, x_T, pred, corr, ts, noise=noise, denoise=denoise)
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
            z = per_sample_normal(jax.random.fold_in(key, i), x.shape, dtype)
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


def ald_sample(rng, sigmas, score_fn, shape, *, n_steps_each: int = 100, step_lr: float = 2e-5,
               denoise: bool = True, final_only: bool = True, x_T=None, noise=None, dtype=None):
    """Annealed Langevin dynamics (Song & Ermon 2019 Alg. 1; NCSNv2's sampler).

    For each level i = 0..L-1 (``sigmas`` decreasing, e.g.
    ``spec.schedules.geometric_sigmas``) run ``n_steps_each`` steps
    ``x <- x + a_i score(x, i) + sqrt(2 a_i) z`` with ``a_i = step_lr (sigma_i/sigma_L)^2``;
    then, with ``denoise``, ``x <- x + sigma_L^2 score(x, L-1)``.

    Args:
      rng: PRNG key; sample j's start is drawn from ``fold_in(split(rng)[0], j)``, its
        noise of step s from ``normal(fold_in(fold_in(split(rng)[1], s), j))`` (per sample;
        NCSN v1 draws the noise before calling the score, NCSNv2 after: only the torch RNG
        stream would notice). May be None when ``x_T`` and ``noise`` are given.
      sigmas: concrete float ladder ``[L]`` (static); score_fn: ``score_fn(x, level [B]
        int32) -> [B, ...]`` (the noise-conditional network's label).
      shape: ``(B, ...)``. x_T: the start ``[B, ...]`` (NCSN uses uniform noise for
        images); default ``sigma_1 * N(0, I)``, the law of the largest perturbation of
        centred data. noise: the step noise ``[L n_steps_each, *shape]`` (row s feeds
        step s). dtype: default that of x_T / noise, else float32.
      denoise, final_only: bools. ``final_only``: return the last sample ``[B, ...]``, or
        else NCSNv2's trajectory ``[S (+1), B, ...]``: every post-step sample plus the
        denoised one (S = L n_steps_each). NCSN v1's list (pre-step, clamped to [0, 1]) is
        not reproduced.

    Returns ``(samples, nfe)``, ``nfe = L n_steps_each + denoise``.
    """
    check_callable("score_fn", score_fn, "score_fn(x, level)")
    shape = check_shape(shape)
    denoise = check_bool("denoise", denoise)
    final_only = check_bool("final_only", final_only)
    sig = grids.check_sigmas(sigmas)
    levels, step_sizes = grids.ald_schedule(sig, n_steps_each, step_lr)
    dtype = resolve_dtype(dtype, x_T, noise)
    if x_T is not None:
        x_T = check_array("x_T", x_T, shape, dtype)
    if noise is not None:
        noise = check_array("noise", noise, (len(levels), *shape), dtype,
                            what="[L * n_steps_each, *shape]")
    init_key = loop_key = None
    if x_T is None or noise is None:
        init_key, loop_key = jax.random.split(_check_rng(rng, "x_T and noise are"))
    elif rng is not None:
        check_key("rng", rng)
    if x_T is None:
        x_T = jnp.asarray(sig[0], dtype) * per_sample_normal(init_key, shape, dtype)
    score_fn = checked_fn("score_fn", score_fn, check_fn_output)
    out = _ald_loop(sig, score_fn, x_T, levels, step_sizes, key=loop_key, noise=noise,
                    denoise=denoise, final_only=final_only)
    return out, ald_nfe(len(sig), n_steps_each, denoise)


# ------------------------------------------------------------------- other samplers
# This module is the public entry point of every sampler: the discrete (DDPM / DDIM), ODE
# and fast samplers live in their own modules and are re-exported here (none of them
# imports diffrax: ``jax_impl.ode`` loads it only when an adaptive method runs).

from jax_impl.fast_samplers import dpm_solver_pp_sample, edm_heun_sample  # noqa: E402
from jax_impl.ode import ode_sample  # noqa: E402
from jax_impl.samplers_discrete import ddim_invert, ddim_sample, ddpm_sample  # noqa: E402

__all__ += ["ddpm_sample", "ddim_sample", "ddim_invert", "edm_heun_sample",
            "dpm_solver_pp_sample", "ode_sample"]
