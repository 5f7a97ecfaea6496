"""Score SDEs of Song et al. 2021: VE, VP and sub-VP, with score_sde's public API.

Twin: ``jax_impl/sde.py`` (same classes, methods and semantics, JAX). See its docstring
for the equations and the official discrete conventions reproduced here.

Each class is a frozen dataclass subclassing its ``spec`` config; the float64 discrete
tables come from ``spec`` and are cast to the data's dtype and device at use. Every
method works for data of any rank ``[B, ...]``, and ``t`` may be a scalar or ``[B]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

import spec
from spec.validate import check_bool, check_callable, check_shape
from torch_ref.utils import append_dims
from torch_ref.validate import check_fn_output, check_generator, check_score_inputs, resolve_dtype

__all__ = [
    "VESDE",
    "VPSDE",
    "subVPSDE",
    "ReverseSDE",
    "SDE_CLASSES",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _SDEMethods:
    """Methods shared by the three SDEs (their formulas live in the subclasses)."""

    N: int
    T: float

    def _prepare(self, x, t):
        """Check ``(x, t)`` and return ``t`` as a ``[B]`` tensor in x's dtype and device."""
        check_score_inputs(x, t, self.T)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return t.expand(x.shape[0]) if t.ndim == 0 else t

    def discrete_index(self, t) -> torch.Tensor:
        """Official discrete index ``int(t (N-1) / T)`` (truncation), int64 ``[B]``."""
        t = torch.as_tensor(t)
        return (t * (self.N - 1) / self.T).long()

    def _table(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(getattr(self, name), dtype=like.dtype, device=like.device)

    def prior_sampling(self, shape, dtype=torch.float32, *,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``x_T`` of ``shape`` ``[B, ...]`` from the prior p_T: one normal draw from
        ``generator`` (None: torch's global generator), on the generator's device (the CPU
        without one); callers move it with ``.to(device)``."""
        generator = check_generator("generator", generator)
        shape = check_shape("shape", shape)
        dtype = resolve_dtype(dtype)
        device = None if generator is None else generator.device
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return self.prior_from_noise(z)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or probability-flow ODE) driven by ``score_fn(x, t)``.

        ``probability_flow`` must be a bool (a string such as ``"yes"`` raises)."""
        return ReverseSDE(self, score_fn, probability_flow)


class _VPFamily(_SDEMethods):
    """What VP and sub-VP share: the linear beta(t), the mean coefficient and the prior."""

    beta_min: float
    beta_max: float

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_mean_coeff(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def prior_from_noise(self, z):
        """The prior is N(0, I): ``x_T = z``."""
        return z

    def prior_logp(self, z):
        """``log N(z; 0, I)`` summed over all but the batch axis, ``[B]``."""
        D = math.prod(z.shape[1:])
        return -0.5 * D * math.log(2 * math.pi) - 0.5 * torch.sum(z**2, dim=tuple(range(1, z.ndim)))


@dataclasses.dataclass(frozen=True)
class VPSDE(spec.VPSDEConfig, _VPFamily):
    """Variance-preserving SDE (DDPM in the continuum limit). Args as score_sde."""

    def sde(self, x, t):
        """Drift ``-1/2 beta(t) x`` ``[B, ...]`` and diffusion ``sqrt(beta(t))`` ``[B]``."""
        t = self._prepare(x, t)
        beta_t = self._beta(t)
        return -0.5 * append_dims(beta_t, x.ndim) * x, torch.sqrt(beta_t)

    def marginal_prob(self, x, t):
        """Mean ``exp(log m(t)) x`` ``[B, ...]`` and std ``sqrt(1 - m(t)^2)`` ``[B]``."""
        t = self._prepare(x, t)
        log_m = self._log_mean_coeff(t)
        mean = append_dims(torch.exp(log_m), x.ndim) * x
        return mean, torch.sqrt(-torch.expm1(2.0 * log_m))

    def discretize(self, x, t):
        """DDPM step: ``f = (sqrt(alpha_i) - 1) x``, ``G = sqrt(beta_i)``, i = int(t(N-1)/T)."""
        t = self._prepare(x, t)
        i = self.discrete_index(t)
        beta = self._table("discrete_betas", x)[i]
        alpha = self._table("alphas", x)[i]
        f = append_dims(torch.sqrt(alpha), x.ndim) * x - x
        return f, torch.sqrt(beta)


@dataclasses.dataclass(frozen=True)
class subVPSDE(spec.subVPSDEConfig, _VPFamily):  # noqa: N801 (score_sde's name)
    """Sub-VP SDE: the VP drift with a smaller diffusion; its variance is bounded by VP's."""

    def sde(self, x, t):
        """Drift ``-1/2 beta(t) x``; diffusion ``sqrt(beta(t) (1 - exp(-2 int_0^t beta)))``."""
        t = self._prepare(x, t)
        beta_t = self._beta(t)
        drift = -0.5 * append_dims(beta_t, x.ndim) * x
        discount = -torch.expm1(-2.0 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
        return drift, torch.sqrt(beta_t * discount)

    def marginal_prob(self, x, t):
        """Mean ``m(t) x`` and std ``1 - m(t)^2`` (the variance is ``(1 - m^2)^2``)."""
        t = self._prepare(x, t)
        log_m = self._log_mean_coeff(t)
        mean = append_dims(torch.exp(log_m), x.ndim) * x
        return mean, -torch.expm1(2.0 * log_m)

    def discretize(self, x, t):
        """Generic Euler-Maruyama: ``f = drift / N``, ``G = diffusion / sqrt(N)``."""
        drift, diffusion = self.sde(x, t)
        dt = 1.0 / self.N
        return drift * dt, diffusion * math.sqrt(dt)


@dataclasses.dataclass(frozen=True)
class VESDE(spec.VESDEConfig, _SDEMethods):
    """Variance-exploding SDE (SMLD / NCSN in the continuum limit). Args as score_sde."""

    def _sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x, t):
        """Drift 0 and diffusion ``sigma(t) sqrt(2 log(sigma_max / sigma_min))`` ``[B]``."""
        t = self._prepare(x, t)
        sigma = self._sigma(t)
        diffusion = sigma * math.sqrt(2.0 * (math.log(self.sigma_max) - math.log(self.sigma_min)))
        return torch.zeros_like(x), diffusion

    def marginal_prob(self, x, t):
        """Mean ``x`` and std ``sigma(t)`` ``[B]``."""
        t = self._prepare(x, t)
        return x, self._sigma(t)

    def prior_from_noise(self, z):
        """The prior is N(0, sigma_max^2 I): ``x_T = sigma_max z``."""
        return z * self.sigma_max

    def prior_logp(self, z):
        """``log N(z; 0, sigma_max^2 I)`` summed over all but the batch axis, ``[B]``."""
        D = math.prod(z.shape[1:])
        return (-0.5 * D * math.log(2 * math.pi * self.sigma_max**2)
                - torch.sum(z**2, dim=tuple(range(1, z.ndim))) / (2 * self.sigma_max**2))

    def discretize(self, x, t):
        """SMLD step: ``f = 0``, ``G = sqrt(sigma_i^2 - sigma_{i-1}^2)`` (sigma_{-1} = 0)."""
        t = self._prepare(x, t)
        i = self.discrete_index(t)
        sigmas = self._table("discrete_sigmas", x)
        sigma = sigmas[i]
        prev = torch.where(i == 0, torch.zeros_like(sigma), sigmas[torch.clamp(i - 1, min=0)])
        return torch.zeros_like(x), torch.sqrt(sigma**2 - prev**2)


class ReverseSDE:
    """Reverse-time SDE ``dx = [f - g^2 score] dt + g dw_bar`` (Anderson 1982), or with
    ``probability_flow`` the ODE ``dx = [f - 1/2 g^2 score] dt`` (Song et al. eq. 13).
    What ``score_fn`` returns is checked at every call (shape of x, floating dtype)."""

    def __init__(self, forward: _SDEMethods, score_fn: ScoreFn, probability_flow: bool):
        self.forward = forward
        self.score_fn = check_callable("score_fn", score_fn, "score_fn(x, t) -> score")
        self.probability_flow = check_bool("probability_flow", probability_flow)
        self.N = forward.N
        self.T = forward.T

    def _combine(self, x, t, f, G):
        score = self.score_fn(x, t)
        check_fn_output("score_fn", score, x)
        weight = 0.5 if self.probability_flow else 1.0
        rev_f = f - append_dims(G**2, x.ndim) * score * weight
        rev_G = torch.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G

    def sde(self, x, t):
        """Reverse drift ``[B, ...]`` and diffusion ``[B]`` at time ``t``."""
        drift, diffusion = self.forward.sde(x, t)
        return self._combine(x, t, drift, diffusion)

    def discretize(self, x, t):
        """Discrete reverse step ``f - G^2 score (x 1/2)``, ``G`` (0 for probability flow)."""
        f, G = self.forward.discretize(x, t)
        return self._combine(x, t, f, G)


SDE_CLASSES = {"vesde": VESDE, "vpsde": VPSDE, "subvpsde": subVPSDE}
