"""float64 noise schedules, sigma ladders and timestep respacing (numpy only).

Everything here is data: both frameworks cast these tables at their boundary.

References:
  Ho et al. 2020 (DDPM, linear betas 1e-4..0.02 for T = 1000);
  Nichol & Dhariwal 2021 (improved DDPM: cosine schedule eq. 17, respacing);
  Song & Ermon 2019/2020 (NCSN geometric sigma ladders);
  Song et al. 2021 (score SDEs: discrete VP betas and VE sigmas);
  Karras et al. 2022 (EDM sigma ladder with rho = 7).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable

import numpy as np

from spec.validate import check_callable, check_choice, check_finite_array, check_float, check_int


# --------------------------------------------------------------------------- betas


def get_named_beta_schedule(name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """Betas ``[T]`` (float64) of a named schedule, as improved-diffusion defines them.

    ``"linear"``: ``linspace(1e-4 * 1000/T, 0.02 * 1000/T, T)`` (Ho et al., scaled so any
    T gives the same process as T = 1000 in the limit).
    ``"cosine"``: ``alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2)``, s = 0.008, betas
    capped at 0.999 (Nichol & Dhariwal eq. 17).
    """
    T = check_int("num_diffusion_timesteps", num_diffusion_timesteps, minimum=1)
    check_choice("noise_schedule", name, ("linear", "cosine"))
    if name == "linear":
        scale = 1000.0 / T
        betas = np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
        if betas.max() >= 1.0:
            raise ValueError(
                "the linear schedule's betas reach 0.02 * 1000 / T >= 1 for "
                f"num_diffusion_timesteps={T}: use T > 20 (or T = 1), or the cosine schedule"
            )
        return betas
    return betas_for_alpha_bar(
        T, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2, max_beta=0.999
    )


def betas_for_alpha_bar(
    num_diffusion_timesteps: int,
    alpha_bar: Callable[[float], float],
    max_beta: float = 0.999,
) -> np.ndarray:
    """Discretise a continuous ``alpha_bar(t)``, t in [0, 1], into betas ``[T]``.

    ``beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta)``.
    """
    T = check_int("num_diffusion_timesteps", num_diffusion_timesteps, minimum=1)
    check_callable("alpha_bar", alpha_bar, "alpha_bar(t) -> float")
    max_beta = check_float("max_beta", max_beta, positive=True)
    betas = np.empty(T, dtype=np.float64)
    for i in range(T):
        t1, t2 = i / T, (i + 1) / T
        betas[i] = min(1.0 - alpha_bar(t2) / alpha_bar(t1), max_beta)
    return betas


def vp_discrete_betas(beta_min: float, beta_max: float, N: int) -> np.ndarray:
    """score_sde's VPSDE discrete betas ``linspace(beta_min/N, beta_max/N, N)`` (= DDPM's
    1e-4..0.02 for the defaults), float64 ``[N]``."""
    N = check_int("N", N, minimum=1)
    return np.linspace(beta_min / N, beta_max / N, N, dtype=np.float64)


# -------------------------------------------------------------------------- sigmas


def ve_discrete_sigmas(sigma_min: float, sigma_max: float, N: int) -> np.ndarray:
    """score_sde's VESDE discrete sigmas, increasing: ``exp(linspace(log sigma_min,
    log sigma_max, N))``, float64 ``[N]``."""
    N = check_int("N", N, minimum=1)
    return np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), N, dtype=np.float64))


def geometric_sigmas(sigma_begin: float, sigma_end: float, num_classes: int) -> np.ndarray:
    """NCSN / NCSNv2 noise ladder, decreasing from ``sigma_begin`` to ``sigma_end``:
    ``exp(linspace(log sigma_begin, log sigma_end, L))``, float64 ``[L]``.

    NCSN: (1, 0.01, 10). NCSNv2 CIFAR-10: (50, 0.01, 232).
    """
    L = check_int("num_classes", num_classes, minimum=1)
    b = check_float("sigma_begin", sigma_begin, positive=True)
    e = check_float("sigma_end", sigma_end, positive=True)
    return np.exp(np.linspace(np.log(b), np.log(e), L, dtype=np.float64))


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """EDM sigma ladder (Karras et al. 2022 eq. 5), decreasing, with a final 0 appended:
    ``(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``,
    float64 ``[n + 1]``."""
    n = check_int("n", n, minimum=1)
    smin = check_float("sigma_min", sigma_min, positive=True)
    smax = check_float("sigma_max", sigma_max, positive=True)
    if smin >= smax:
        raise ValueError(f"sigma_min must be < sigma_max, got {smin} >= {smax}")
    rho = check_float("rho", rho, positive=True)
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float64) if n > 1 else np.zeros(1)
    inv_min, inv_max = smin ** (1.0 / rho), smax ** (1.0 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return np.append(sigmas, 0.0)


# ----------------------------------------------------------------------- respacing


def space_timesteps(num_timesteps: int, section_counts) -> set[int]:
    """Which steps of a ``num_timesteps`` process to keep (improved-diffusion semantics).

    ``section_counts`` is a list of ints or a string: ``"250"``, ``"10,15,20"`` (split
    the process into equal sections, the first ``num_timesteps % len`` one step longer,
    and take that many evenly-strided steps from each, rounding fractional strides), or
    ``"ddimN"`` (the integer stride giving exactly N steps: ``"ddim50"`` of 1000 keeps
    0, 20, ..., 980).

    Raises ``ValueError`` naming ``section_counts`` for a malformed string, a count
    larger than its section, or a ``ddimN`` no integer stride achieves.
    """
    num_timesteps = check_int("num_timesteps", num_timesteps, minimum=1)
    if isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("ddim"):
            try:
                desired = int(text[len("ddim"):])
            except ValueError:
                raise ValueError(
                    f"unknown timestep respacing {section_counts!r}: expected 'ddimN' with an "
                    "integer N, e.g. 'ddim50'"
                ) from None
            for stride in range(1, num_timesteps + 1):
                steps = range(0, num_timesteps, stride)
                if len(steps) == desired:
                    return set(steps)
            raise ValueError(
                f"timestep respacing {section_counts!r}: no integer stride gives exactly "
                f"{desired} steps out of {num_timesteps}"
            )
        try:
            counts = [int(part) for part in text.split(",")]
        except ValueError:
            raise ValueError(
                f"unknown timestep respacing {section_counts!r}: expected '', 'N', "
                "'N1,N2,...' or 'ddimN'"
            ) from None
    else:
        counts = [check_int("section_counts[i]", c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"section counts must be >= 1, got {section_counts!r}")

    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    kept: list[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"timestep respacing {section_counts!r}: cannot take {count} steps from a "
                f"section of {size} (num_timesteps={num_timesteps})"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return set(kept)


def respace_betas(betas: np.ndarray, use_timesteps: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """Betas of the process that keeps only ``use_timesteps`` of ``betas``.

    ``beta'_k = 1 - alpha_bar[i_k] / alpha_bar[i_{k-1}]`` (alpha_bar[i_{-1}] = 1), so the
    new process has exactly the original ``alpha_bar`` at the kept steps.

    Returns ``(new_betas [K], timestep_map [K])`` (float64, int64), timestep_map[k] = i_k.
    """
    betas = check_finite_array("betas", betas).astype(np.float64)
    keep = sorted(set(check_int("use_timesteps[i]", i) for i in use_timesteps))
    if not keep or keep[0] < 0 or keep[-1] >= len(betas):
        raise ValueError(f"use_timesteps must be in [0, {len(betas)}), got {keep[:3]}...{keep[-3:]}")
    alphas_cumprod = np.cumprod(1.0 - betas)
    new_betas = []
    last = 1.0
    for i in keep:
        new_betas.append(1.0 - alphas_cumprod[i] / last)
        last = alphas_cumprod[i]
    return np.asarray(new_betas, dtype=np.float64), np.asarray(keep, dtype=np.int64)


# ---------------------------------------------------------------- derived tables


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionTables:
    """float64 tables ``[T]`` of a discrete Gaussian diffusion (improved-diffusion names).

    With alpha_t = 1 - beta_t and alpha_bar_t = prod_{s<=t} alpha_s:
      q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
      q(x_{t-1} | x_t, x_0) = N(coef1_t x_0 + coef2_t x_t, beta~_t I),
      beta~_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)     (Ho et al. eq. 6-7)
    ``posterior_log_variance_clipped[0] = log(beta~_1)`` since beta~_0 = 0.
    ``timestep_map[k]`` is the base-process step of respaced step k.
    """

    betas: np.ndarray
    timestep_map: np.ndarray
    original_num_steps: int
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    alphas_cumprod_next: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    log_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def as_dict(self) -> dict[str, np.ndarray]:
        """The array-valued tables, by name (what each framework casts)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }

    def runtime_tables(self) -> dict[str, np.ndarray]:
        """``as_dict()`` plus the float64 tables the samplers and losses index at run time.

        ``fixed_large_variance`` is improved-diffusion's FIXED_LARGE choice
        ``[beta~_1, beta_1, ..., beta_{T-1}]`` (beta~_1 at t = 0 for a better decoder
        likelihood; ``betas[0]`` when T = 1); ``recip_posterior_mean_coef1`` and
        ``posterior_mean_coef2_over_coef1`` recover x_0 from a posterior mean:
        ``x_0 = (mu - coef2 x_t) / coef1``.
        """
        out = dict(self.as_dict())
        betas, post_var = self.betas, self.posterior_variance
        fixed_large = np.append(post_var[1], betas[1:]) if len(betas) > 1 else betas.copy()
        out["fixed_large_variance"] = fixed_large
        out["fixed_large_log_variance"] = np.log(fixed_large)
        out["log_betas"] = np.log(betas)
        out["one_minus_alphas_cumprod"] = 1.0 - self.alphas_cumprod
        out["recip_posterior_mean_coef1"] = 1.0 / self.posterior_mean_coef1
        out["posterior_mean_coef2_over_coef1"] = self.posterior_mean_coef2 / self.posterior_mean_coef1
        return out


def diffusion_tables(
    betas: np.ndarray,
    *,
    timestep_map: np.ndarray | None = None,
    original_num_steps: int | None = None,
) -> DiffusionTables:
    """Compute every ``DiffusionTables`` entry from ``betas [T]`` in float64."""
    betas = check_finite_array("betas", betas).astype(np.float64)
    if betas.ndim != 1 or len(betas) < 1:
        raise ValueError(f"betas must be 1-D and non-empty, got shape {betas.shape}")
    if not np.all((betas > 0) & (betas <= 1)):
        raise ValueError("betas must lie in (0, 1]")
    T = len(betas)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    ac_next = np.append(ac[1:], 0.0)
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    post_var_for_log = np.append(post_var[1], post_var[1:]) if T > 1 else np.array([betas[0]])
    return DiffusionTables(
        betas=betas,
        timestep_map=(np.arange(T, dtype=np.int64) if timestep_map is None
                      else np.asarray(timestep_map, dtype=np.int64)),
        original_num_steps=int(T if original_num_steps is None else original_num_steps),
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        alphas_cumprod_next=ac_next,
        sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
        log_one_minus_alphas_cumprod=np.log(1.0 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1.0),
        posterior_variance=post_var,
        posterior_log_variance_clipped=np.log(post_var_for_log),
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    )
