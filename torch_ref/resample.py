"""Timestep samplers for diffusion training (improved-diffusion's ``resample.py``), PyTorch.

Twin: ``jax_impl/resample.py`` (functional state; see its docstring for the maths).

Stateful classes with improved-diffusion's names and semantics: ``weights()`` (numpy
float64 ``[T]``), ``sample(batch_size)`` -> ``(t, weights)`` with importance weights
``1 / (T p_t)``, and for the loss-aware sampler ``update_with_all_losses(ts, losses)``
(a numpy history of the last ``history_per_term`` losses per step; uniform until every
step has that many). Randomness comes from a ``torch.Generator`` (improved-diffusion
uses numpy's global generator). Where improved-diffusion would divide by zero (all
recorded losses exactly 0) the weights fall back to uniform.

Framework-specific helpers, not part of the mirrored API: ``ScheduleSampler``, ``LossAwareSampler``.
"""

from __future__ import annotations

import abc
from typing import Optional

import numpy as np
import torch

from spec.validate import check_choice, check_finite_array, check_float, check_int
from torch_ref.validate import check_generator, check_indices, resolve_dtype


def _as_num_timesteps(value) -> int:
    """An int, or an object with ``num_timesteps`` (e.g. a ``GaussianDiffusion``)."""
    if hasattr(value, "num_timesteps") and not isinstance(value, (int, np.integer)):
        value = value.num_timesteps
    return check_int("num_timesteps", value, minimum=1)


def _check_weights(weights) -> np.ndarray:
    """Sampling weights ``[T]`` as float64 numpy: finite, >= 0 with a positive sum."""
    if torch.is_tensor(weights):
        weights = weights.detach().cpu().numpy()
    return check_finite_array("weights", weights, ndim=1, nonnegative=True).astype(np.float64)


def sample_from_weights(
    weights,
    batch_size: int,
    *,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
):
    """Draw ``t ~ p = weights / sum(weights)``; return ``(t [B] int64, w [B])`` with
    ``w = 1 / (T p_t)`` in ``dtype`` (float32 by default, as improved-diffusion)."""
    generator = check_generator("generator", generator)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    dtype = resolve_dtype(dtype)
    w = _check_weights(weights)
    p = w / np.sum(w)
    T = len(p)
    t = torch.multinomial(torch.as_tensor(p), batch_size, replacement=True, generator=generator)
    importance = 1.0 / (T * p[t.numpy()])
    return t.to(device), torch.as_tensor(importance, dtype=dtype, device=device)


class ScheduleSampler(abc.ABC):
    """A distribution over timesteps with unbiased importance weights."""

    num_timesteps: int

    @abc.abstractmethod
    def weights(self) -> np.ndarray:
        """Positive (not necessarily normalised) weights ``[T]``, float64."""

    def sample(
        self,
        batch_size: int,
        *,
        generator: Optional[torch.Generator] = None,
        device=None,
        dtype: torch.dtype = torch.float32,
    ):
        """``(t [B] int64, weights [B])``: t ~ p and importance weights ``1 / (T p_t)``."""
        return sample_from_weights(
            self.weights(), batch_size, generator=generator, device=device, dtype=dtype
        )


class UniformSampler(ScheduleSampler):
    """t ~ U{0, ..., T-1}, weights all 1."""

    def __init__(self, num_timesteps):
        self.num_timesteps = _as_num_timesteps(num_timesteps)
        self._weights = np.ones([self.num_timesteps], dtype=np.float64)

    def weights(self) -> np.ndarray:
        return self._weights


class LossAwareSampler(ScheduleSampler):
    """A sampler that learns its weights from the training losses."""

    @abc.abstractmethod
    def update_with_all_losses(self, ts, losses) -> None:
        """Record ``losses[i]`` for step ``ts[i]`` (all of the global batch, in order)."""


class LossSecondMomentResampler(LossAwareSampler):
    """p_t proportional to ``sqrt(mean of the last history_per_term L_t^2)``, mixed with
    ``uniform_prob`` of the uniform distribution; uniform during warm-up."""

    def __init__(self, num_timesteps, history_per_term: int = 10, uniform_prob: float = 0.001):
        self.num_timesteps = _as_num_timesteps(num_timesteps)
        self.history_per_term = check_int("history_per_term", history_per_term, minimum=1)
        u = check_float("uniform_prob", uniform_prob, nonnegative=True)
        if u > 1.0:
            raise ValueError(f"uniform_prob must lie in [0, 1], got {u}")
        self.uniform_prob = u
        self._loss_history = np.zeros([self.num_timesteps, self.history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([self.num_timesteps], dtype=np.int64)

    def warmed_up(self) -> bool:
        """True once every step has ``history_per_term`` recorded losses."""
        return bool(np.all(self._loss_counts == self.history_per_term))

    def weights(self) -> np.ndarray:
        """Ones during warm-up, then ``(1 - u) rms_t / sum(rms) + u / T``."""
        T = self.num_timesteps
        if not self.warmed_up():
            return np.ones([T], dtype=np.float64)
        rms = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        total = rms.sum()
        if not total > 0:
            return np.ones([T], dtype=np.float64)
        w = rms / total
        return w * (1.0 - self.uniform_prob) + self.uniform_prob / T

    def update_with_all_losses(self, ts, losses) -> None:
        """Append ``losses[i]`` to step ``ts[i]``'s history, dropping its oldest once full."""
        ts = check_indices("ts", ts, self.num_timesteps, what="integer timesteps [B]",
                           bound_name="num_timesteps").detach().cpu().numpy()
        if torch.is_tensor(losses):
            losses = losses.detach().cpu().double().numpy()
        losses = check_finite_array("losses", losses).astype(np.float64)
        if losses.shape != ts.shape:
            raise ValueError(
                f"ts and losses must both have shape [B], got ts {ts.shape} and losses {losses.shape}"
            )
        H = self.history_per_term
        for t, loss in zip(ts.tolist(), losses.tolist()):
            count = self._loss_counts[t]
            if count == H:
                self._loss_history[t, :-1] = self._loss_history[t, 1:]
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, count] = loss
                self._loss_counts[t] = count + 1


def create_named_schedule_sampler(name: str, num_timesteps, **kwargs) -> ScheduleSampler:
    """``"uniform"`` or ``"loss-second-moment"`` -> a sampler (improved-diffusion's names)."""
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
