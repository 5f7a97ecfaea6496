"""Timestep samplers for diffusion training (improved-diffusion's ``resample.py``), in JAX.

Twin: ``torch_ref/resample.py`` (the stateful classes of improved-diffusion, numpy
history, ``torch.Generator`` draws).

A schedule sampler draws t with probabilities p_t and returns the importance weights
``w_t = 1 / (T p_t)``, so that ``E_{t ~ p}[w_t L_t] = (1/T) sum_t L_t``: the training
objective keeps its mean while its variance drops (Nichol & Dhariwal 2021, sec. 3.3).

  * ``UniformSampler``: p_t = 1/T, all weights 1.
  * ``LossSecondMomentResampler``: p_t proportional to ``sqrt(E[L_t^2])`` over the last
    ``history_per_term`` losses seen at t, mixed with ``uniform_prob`` of the uniform
    distribution; uniform until every t has ``history_per_term`` losses (warm-up).

Functional here: the sampler is a frozen, hashable dataclass (a ``jax.jit`` static
argument or a closure constant); its state is a pytree returned by ``init()`` and
threaded through the pure ``update(state, t, losses)`` and ``sample(rng, state,
batch_size)``, both usable under ``jit``. Under data-parallel sharding, pass the global
``t`` and ``losses`` arrays to ``update`` (what improved-diffusion's
``update_with_local_losses`` all-gathers), so every device holds the same state.

One deliberate difference: where improved-diffusion would divide by zero (all recorded
losses exactly 0) the weights fall back to uniform.

Framework-specific helpers, not part of the mirrored API: ``LossSecondMomentState``.

Signature differences:
  UniformSampler.weights -- functional state: takes the (empty) state; torch's object holds it.
  UniformSampler.sample -- functional state: takes the state; torch's object holds it.
  LossSecondMomentResampler.weights -- functional state: takes the state pytree (``init`` /
    ``update`` return it); the torch twin is improved-diffusion's stateful object.
  LossSecondMomentResampler.sample -- functional state, as ``weights``.
  LossSecondMomentResampler.warmed_up -- functional state, as ``weights``.
  sample_from_weights -- torch places its draw with ``device=`` / ``dtype=``; here the
    indices are int32 and the weights the default float dtype (JAX places by sharding).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spec.validate import check_choice, check_finite_array, check_float, check_int
from jax_impl.validate import check_array, check_indices, check_key, is_concrete, resolve_dtype


def _as_num_timesteps(value) -> int:
    """An int, or an object with ``num_timesteps`` (e.g. a ``GaussianDiffusion``)."""
    if hasattr(value, "num_timesteps") and not isinstance(value, (int, np.integer)):
        value = value.num_timesteps
    return check_int("num_timesteps", value, minimum=1)


def _check_weights(weights) -> jax.Array:
    """Sampling weights ``[T]``: floating, finite, >= 0 with a positive sum (values checked
    when concrete)."""
    weights = check_array("weights", weights, min_ndim=1)
    if weights.ndim != 1:
        raise ValueError(f"weights must have shape [T], got {weights.shape}")
    if is_concrete(weights):
        check_finite_array("weights", weights, ndim=1, nonnegative=True)
    return weights


def _default_float(dtype):
    return jnp.result_type(float) if dtype is None else resolve_dtype(dtype)


def sample_from_weights(rng: jax.Array, weights, batch_size: int):
    """Draw ``t ~ p = weights / sum(weights)`` and return ``(t, w)``: int32 ``[B]``
    indices and importance weights ``w = 1 / (T p_t)`` ``[B]``. ``rng`` is one PRNG key."""
    key = check_key("rng", rng)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    weights = _check_weights(weights)
    T = weights.shape[0]
    p = weights / jnp.sum(weights)
    t = jax.random.choice(key, T, shape=(batch_size,), replace=True, p=p).astype(jnp.int32)
    return t, 1.0 / (T * p[t])


@dataclasses.dataclass(frozen=True)
class UniformSampler:
    """t ~ U{0, ..., T-1}, weights all 1. Its state is ``None`` (kept for a uniform API)."""

    num_timesteps: int

    def __post_init__(self):
        object.__setattr__(self, "num_timesteps", _as_num_timesteps(self.num_timesteps))

    def init(self, dtype=None) -> None:
        """The (empty) state."""
        return None

    def weights(self, state=None, dtype=None) -> jax.Array:
        """``[T]`` ones."""
        return jnp.ones((self.num_timesteps,), dtype=_default_float(dtype))

    def update(self, state, t, losses):
        """Nothing to learn: returns ``state``."""
        return state

    def sample(self, rng: jax.Array, state, batch_size: int):
        """``(t [B] int32, weights [B])`` with p_t = 1/T (``rng``: one PRNG key)."""
        return sample_from_weights(rng, self.weights(state), batch_size)


class LossSecondMomentState(NamedTuple):
    """State of ``LossSecondMomentResampler``: the last ``history_per_term`` losses per
    step (oldest first) and how many were recorded (saturating at history_per_term)."""

    loss_history: jax.Array  # [T, history_per_term], floating
    loss_counts: jax.Array  # [T], int32


@dataclasses.dataclass(frozen=True)
class LossSecondMomentResampler:
    """Importance sampling by the loss second moment (improved DDPM's L_vlb sampler).

    ``p_t = (1 - uniform_prob) sqrt(E[L_t^2]) / sum_s sqrt(E[L_s^2]) + uniform_prob / T``
    once warmed up; uniform before.
    """

    num_timesteps: int
    history_per_term: int = 10
    uniform_prob: float = 0.001

    def __post_init__(self):
        object.__setattr__(self, "num_timesteps", _as_num_timesteps(self.num_timesteps))
        object.__setattr__(
            self, "history_per_term", check_int("history_per_term", self.history_per_term, minimum=1)
        )
        u = check_float("uniform_prob", self.uniform_prob, nonnegative=True)
        if u > 1.0:
            raise ValueError(f"uniform_prob must lie in [0, 1], got {u}")
        object.__setattr__(self, "uniform_prob", u)

    def init(self, dtype=None) -> LossSecondMomentState:
        """Empty history (``dtype`` defaults to JAX's default float)."""
        dtype = _default_float(dtype)
        return LossSecondMomentState(
            loss_history=jnp.zeros((self.num_timesteps, self.history_per_term), dtype=dtype),
            loss_counts=jnp.zeros((self.num_timesteps,), dtype=jnp.int32),
        )

    def _check_state(self, state) -> None:
        if not isinstance(state, LossSecondMomentState):
            raise TypeError(
                f"state must be a LossSecondMomentState (from init()), got {type(state).__name__}"
            )
        shape = (self.num_timesteps, self.history_per_term)
        if tuple(state.loss_history.shape) != shape or tuple(state.loss_counts.shape) != shape[:1]:
            raise ValueError(
                f"state must hold loss_history {shape} and loss_counts {shape[:1]}, got "
                f"{tuple(state.loss_history.shape)} and {tuple(state.loss_counts.shape)}"
            )

    def warmed_up(self, state: LossSecondMomentState) -> jax.Array:
        """True once every step has ``history_per_term`` recorded losses (a bool scalar)."""
        self._check_state(state)
        return jnp.all(state.loss_counts == self.history_per_term)

    def weights(self, state: LossSecondMomentState) -> jax.Array:
        """``[T]`` sampling weights: ones during warm-up, then the normalised
        ``sqrt(mean(history^2))`` mixed with ``uniform_prob`` of uniform (sums to 1)."""
        self._check_state(state)
        T = self.num_timesteps
        rms = jnp.sqrt(jnp.mean(state.loss_history**2, axis=-1))
        total = jnp.sum(rms)
        ready = jnp.all(state.loss_counts == self.history_per_term) & (total > 0)
        w = rms / jnp.where(ready, total, 1.0)
        w = w * (1.0 - self.uniform_prob) + self.uniform_prob / T
        return jnp.where(ready, w, jnp.ones_like(w))

    def update(self, state: LossSecondMomentState, t, losses) -> LossSecondMomentState:
        """Record ``losses[i]`` for step ``t[i]``, in order (``[B]`` each): append while a
        step has fewer than ``history_per_term`` losses, else drop its oldest. Pure; a
        ``lax.scan`` over the batch, so repeated steps in one batch behave as
        improved-diffusion's sequential loop."""
        self._check_state(state)
        t = check_indices("t", t, self.num_timesteps, what="an integer array [B]",
                          bound_name="num_timesteps")
        losses = check_array("losses", losses)
        if losses.shape != t.shape:
            raise ValueError(
                f"t and losses must both have shape [B], got t {t.shape} and losses {losses.shape}"
            )
        H = self.history_per_term
        losses = losses.astype(state.loss_history.dtype)

        def record(carry, item):
            history, counts = carry
            ti, loss = item
            count = counts[ti]
            row = history[ti]
            shifted = jnp.concatenate([row[1:], loss[None]])
            appended = row.at[jnp.minimum(count, H - 1)].set(loss)
            history = history.at[ti].set(jnp.where(count == H, shifted, appended))
            counts = counts.at[ti].set(jnp.minimum(count + 1, H))
            return (history, counts), None

        (history, counts), _ = jax.lax.scan(
            record, (state.loss_history, state.loss_counts), (t, losses)
        )
        return LossSecondMomentState(loss_history=history, loss_counts=counts)

    def sample(self, rng: jax.Array, state: LossSecondMomentState, batch_size: int):
        """``(t [B] int32, weights [B])``: t ~ p and importance weights ``1 / (T p_t)``."""
        return sample_from_weights(rng, self.weights(state), batch_size)


def create_named_schedule_sampler(name: str, num_timesteps, **kwargs):
    """``"uniform"`` or ``"loss-second-moment"`` (the command-line names of
    improved-diffusion) -> a sampler; ``num_timesteps`` may be a diffusion object."""
    check_choice("schedule sampler name", name, ("uniform", "loss-second-moment"))
    if name == "uniform":
        return UniformSampler(num_timesteps, **kwargs)
    return LossSecondMomentResampler(num_timesteps, **kwargs)


__all__ = [
    "LossSecondMomentResampler",
    "UniformSampler",
    "create_named_schedule_sampler",
    "sample_from_weights",
]
