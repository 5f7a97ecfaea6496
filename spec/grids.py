"""Sampler grids and fixed linear maps, float64 numpy (shared by ``jax_impl`` and ``torch_ref``).

Everything here is data computed once, outside any traced function: the JAX samplers
scan over these arrays (cast at use), the torch samplers loop over the same arrays.

  * ``pc_timesteps``: the predictor-corrector time grid ``linspace(T, eps, N)`` of
    score_sde's ``get_pc_sampler`` (Song et al. 2021, Alg. 1-3).
  * ``default_pc_eps``: score_sde's end time, 1e-5 for VE and 1e-3 for VP / sub-VP.
  * ``ald_schedule``: annealed Langevin dynamics (Song & Ermon 2019, Alg. 1) flattened to
    one step per row: the noise-level index ``i`` and step size
    ``alpha_i = step_lr * (sigma_i / sigma_L)^2``.
  * ``colorization_matrix``: score_sde's orthogonal 3x3 channel-decoupling matrix, exact.
  * ``ode_time_grid``: the uniform grid of a fixed-step probability-flow ODE solve.
  * ``dpm_solver_sigmas``: DPM-Solver++'s noise levels (log-SNR uniform or Karras), then 0.
"""

from __future__ import annotations

import numbers

import numpy as np

from spec import schedules
from spec.configs import SDEConfig, VESDEConfig
from spec.sampler_args import DPM_GRIDS
from spec.validate import check_choice, check_float, check_int

VE_EPS = 1e-5
"""score_sde's default end time for VE SDEs (``sampling.eps`` in the VE configs)."""
VP_EPS = 1e-3
"""score_sde's default end time for VP and sub-VP SDEs."""


def default_pc_eps(sde: SDEConfig) -> float:
    """score_sde's end time of the reverse SDE: 1e-5 for a VE SDE, 1e-3 otherwise."""
    if not isinstance(sde, SDEConfig):
        raise TypeError(f"sde must be an SDE (a spec.SDEConfig subclass), got {type(sde).__name__}")
    return VE_EPS if isinstance(sde, VESDEConfig) else VP_EPS


def check_eps(eps, T: float) -> float:
    """Return ``eps`` as a float in the open interval (0, T), or raise ``ValueError`` naming it."""
    eps = check_float("eps", eps)
    if not 0.0 < eps < T:
        raise ValueError(f"eps must lie in the open interval (0, T) = (0, {T}), got {eps}")
    return eps


def pc_timesteps(N: int, eps: float, T: float = 1.0) -> np.ndarray:
    """The PC sampler's time grid ``linspace(T, eps, N)``, float64 ``[N]`` (decreasing).

    Step i of the sampler evaluates the score at ``t_i``; with score_sde's truncating
    discrete index ``int(t (N-1) / T)`` step i maps to index ``N-1-i`` (up to round-off
    at the last steps, which is what the official code does too).
    """
    N = check_int("N", N, minimum=1)
    T = check_float("T", T, positive=True)
    eps = check_eps(eps, T)
    return np.linspace(T, eps, N, dtype=np.float64)


def check_sigmas(sigmas) -> np.ndarray:
    """Validate a noise ladder: 1-D, finite, positive and non-increasing; float64 ``[L]``."""
    if isinstance(sigmas, numbers.Number):
        raise TypeError("sigmas must be a 1-D array of noise levels, got a scalar")
    try:
        arr = np.asarray(sigmas, dtype=np.float64)
    except Exception as err:  # a tracer or an object array
        raise TypeError(
            "sigmas must be concrete (a numpy array or list, e.g. "
            "spec.schedules.geometric_sigmas(...)), not a traced value"
        ) from err
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError("sigmas must be finite and > 0")
    if np.any(np.diff(arr) > 0):
        raise ValueError("sigmas must be non-increasing (annealing runs from the largest noise level)")
    return arr


def ald_schedule(sigmas, n_steps_each: int, step_lr: float) -> tuple[np.ndarray, np.ndarray]:
    """Annealed Langevin dynamics flattened to ``S = L * n_steps_each`` steps.

    Returns ``(level [S] int64, step_size [S] float64)`` with ``level = repeat(arange(L),
    n_steps_each)`` and ``step_size[s] = step_lr * (sigmas[level[s]] / sigmas[-1])^2``
    (Song & Ermon 2019, Alg. 1: alpha_i = eps sigma_i^2 / sigma_L^2).
    """
    sig = check_sigmas(sigmas)
    n = check_int("n_steps_each", n_steps_each, minimum=1)
    lr = check_float("step_lr", step_lr, positive=True)
    level = np.repeat(np.arange(len(sig), dtype=np.int64), n)
    step_size = lr * (sig[level] / sig[-1]) ** 2
    return level, step_size


def colorization_matrix() -> np.ndarray:
    """score_sde's channel-decoupling matrix ``M`` ``[3, 3]`` (float64, exactly orthogonal).

    Columns: ``(1, 1, 1)/sqrt(3)`` (the gray direction), ``(-2, 1, 1)/sqrt(6)`` and
    ``(0, 1, -1)/sqrt(2)``. ``decouple(x) = x M`` over the channel axis puts the gray
    level (times sqrt 3) in channel 0; ``couple(y) = y M^T`` undoes it. score_sde hard-codes
    these entries rounded to float32 and inverts the matrix numerically; here they are
    exact, so ``M^{-1} = M^T``.
    """
    s3, s6, s2 = np.sqrt(3.0), np.sqrt(6.0), np.sqrt(2.0)
    return np.array([
        [1.0 / s3, -2.0 / s6, 0.0],
        [1.0 / s3, 1.0 / s6, 1.0 / s2],
        [1.0 / s3, 1.0 / s6, -1.0 / s2],
    ], dtype=np.float64)


def ode_time_grid(t_start: float, t_end: float, num_steps: int) -> np.ndarray:
    """Uniform float64 grid ``linspace(t_start, t_end, num_steps + 1)`` of a fixed-step solve."""
    num_steps = check_int("num_steps", num_steps, minimum=1)
    return np.linspace(float(t_start), float(t_end), num_steps + 1, dtype=np.float64)


def dpm_solver_sigmas(grid: str, num_steps: int, sigma_min: float, sigma_max: float,
                      rho: float = 7.0) -> np.ndarray:
    """DPM-Solver++'s noise levels, float64 ``[num_steps + 1]``, decreasing from
    ``sigma_max`` to ``sigma_min`` and then 0: ``"logsnr"`` is uniform in
    lambda = -log sigma (``geometric_sigmas``), ``"karras"`` is Karras' rho-ladder."""
    check_choice("grid", grid, DPM_GRIDS)
    if grid == "karras":
        return schedules.karras_sigmas(num_steps, sigma_min, sigma_max, rho)
    return np.append(schedules.geometric_sigmas(sigma_max, sigma_min, num_steps), 0.0)
