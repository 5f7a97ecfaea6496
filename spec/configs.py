"""Frozen, typed configs for the SDEs and the discrete (DDPM) diffusion.

The SDE configs carry score_sde's constructor arguments and defaults
(``VPSDE(beta_min=0.1, beta_max=20, N=1000)``, ``VESDE(sigma_min=0.01, sigma_max=50,
N=1000)``); ``jax_impl.sde`` and ``torch_ref.sde`` subclass them and add the formulas, so
the data is defined once and validated once. Configs are hashable and can be static
arguments of ``jax.jit``.

``DiffusionConfig`` mirrors improved-diffusion's ``create_gaussian_diffusion`` arguments;
``DiffusionConfig.from_improved_diffusion_args(flags)`` maps the official flags onto it.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

from spec import schedules
from spec.validate import check_bool, check_choice, check_float, check_int


class ModelMeanType(enum.Enum):
    """What the network predicts (improved-diffusion ``ModelMeanType``)."""

    PREVIOUS_X = "previous_x"  # the mean of x_{t-1}
    START_X = "start_x"  # x_0
    EPSILON = "epsilon"  # the noise eps


class ModelVarType(enum.Enum):
    """How the reverse-process variance is chosen (improved-diffusion ``ModelVarType``).

    LEARNED_RANGE: the network outputs v in [-1, 1] and
    log Sigma = (v+1)/2 log beta_t + (1-v)/2 log beta~_t  (Nichol & Dhariwal eq. 15).
    """

    LEARNED = "learned"
    FIXED_SMALL = "fixed_small"  # beta~_t, the posterior variance
    FIXED_LARGE = "fixed_large"  # beta_t (with beta~_1 at t = 0)
    LEARNED_RANGE = "learned_range"


class LossType(enum.Enum):
    """Training objective (improved-diffusion ``LossType``)."""

    MSE = "mse"  # L_simple (+ L_vlb for learned variances: the hybrid loss)
    RESCALED_MSE = "rescaled_mse"  # as MSE, vb term scaled by num_timesteps / 1000
    KL = "kl"  # the variational bound
    RESCALED_KL = "rescaled_kl"  # the VLB times num_timesteps

    @property
    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


def _coerce_enum(name: str, value, enum_cls):
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        for member in enum_cls:
            if value.lower() in (member.value, member.name.lower()):
                return member
    check_choice(name, value, [m.value for m in enum_cls])
    return value  # unreachable


@dataclasses.dataclass(frozen=True)
class SDEConfig:
    """Base of the SDE configs: ``N`` is the number of discretisation steps."""

    N: int = 1000

    @property
    def T(self) -> float:
        """End time of the SDE (score_sde uses 1)."""
        return 1.0

    def _check_N(self) -> None:
        object.__setattr__(self, "N", check_int("N", self.N, minimum=1))

    def _check_range(self, lo_name: str, hi_name: str, *, low_positive: bool, strict: bool) -> None:
        """Validate the fields ``lo_name <= hi_name`` (``<`` when ``strict``) as finite floats,
        ``hi > 0`` and ``lo > 0`` (``low_positive``) or ``lo >= 0``; store them as floats."""
        lo = check_float(lo_name, getattr(self, lo_name), positive=low_positive,
                         nonnegative=not low_positive)
        hi = check_float(hi_name, getattr(self, hi_name), positive=True)
        if lo > hi or (strict and lo == hi):
            op = "<" if strict else "<="
            raise ValueError(f"{lo_name} must be {op} {hi_name}, got {lo_name}={lo} and {hi_name}={hi}")
        object.__setattr__(self, lo_name, lo)
        object.__setattr__(self, hi_name, hi)


@dataclasses.dataclass(frozen=True)
class VPSDEConfig(SDEConfig):
    """Variance-preserving SDE, dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,
    beta(t) = beta_min + t (beta_max - beta_min)."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def __post_init__(self):
        self._check_N()
        self._check_range("beta_min", "beta_max", low_positive=False, strict=False)

    @property
    def discrete_betas(self) -> np.ndarray:
        """DDPM betas ``linspace(beta_min/N, beta_max/N, N)``, float64 ``[N]``.

        The discrete (DDPM) view needs every beta < 1, i.e. ``N > beta_max``: raises
        ``ValueError`` otherwise (the continuous SDE itself works for any ``N``).
        """
        betas = schedules.vp_discrete_betas(self.beta_min, self.beta_max, self.N)
        if betas.max() >= 1.0:
            raise ValueError(
                f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max}, "
                f"N={self.N}): the discrete betas reach {betas.max():g} >= 1; the discrete "
                "(DDPM) steps -- reverse_diffusion / ancestral predictors, Langevin step sizes, "
                "discrete losses -- need N > beta_max"
            )
        return betas

    @property
    def alphas(self) -> np.ndarray:
        """``1 - discrete_betas``, float64 ``[N]``."""
        return 1.0 - self.discrete_betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """``cumprod(alphas)``, float64 ``[N]``."""
        return np.cumprod(self.alphas)

    @property
    def sqrt_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(self.alphas_cumprod)

    @property
    def sqrt_1m_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 - self.alphas_cumprod)


@dataclasses.dataclass(frozen=True)
class subVPSDEConfig(VPSDEConfig):  # noqa: N801 (score_sde's name)
    """Sub-VP SDE, dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw."""


@dataclasses.dataclass(frozen=True)
class VESDEConfig(SDEConfig):
    """Variance-exploding SDE, sigma(t) = sigma_min (sigma_max/sigma_min)^t,
    dx = sigma(t) sqrt(2 log(sigma_max/sigma_min)) dw."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000

    def __post_init__(self):
        self._check_N()
        self._check_range("sigma_min", "sigma_max", low_positive=True, strict=True)

    @property
    def discrete_sigmas(self) -> np.ndarray:
        """SMLD sigmas ``exp(linspace(log sigma_min, log sigma_max, N))``, float64 ``[N]``."""
        return schedules.ve_discrete_sigmas(self.sigma_min, self.sigma_max, self.N)


NOISE_SCHEDULES = ("linear", "cosine")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """A discrete Gaussian diffusion, as improved-diffusion's ``create_gaussian_diffusion``.

    Attributes:
      steps: T, the number of diffusion steps of the base process.
      noise_schedule: ``"linear"`` (Ho et al., scaled by 1000/T) or ``"cosine"``
        (Nichol & Dhariwal, s = 0.008, betas capped at 0.999).
      timestep_respacing: ``""`` (keep all), ``"250"``, ``"10,15,20"`` (per-section
        counts) or ``"ddimN"`` (an even stride giving exactly N steps).
      model_mean_type, model_var_type, loss_type: enums (or their string values).
      rescale_timesteps: feed the model ``t * 1000 / T`` instead of ``t``.
    """

    steps: int = 1000
    noise_schedule: str = "linear"
    timestep_respacing: str = ""
    model_mean_type: ModelMeanType = ModelMeanType.EPSILON
    model_var_type: ModelVarType = ModelVarType.FIXED_SMALL
    loss_type: LossType = LossType.MSE
    rescale_timesteps: bool = False

    def __post_init__(self):
        object.__setattr__(self, "steps", check_int("steps", self.steps, minimum=1))
        object.__setattr__(
            self, "rescale_timesteps", check_bool("rescale_timesteps", self.rescale_timesteps)
        )
        check_choice("noise_schedule", self.noise_schedule, NOISE_SCHEDULES)
        if not isinstance(self.timestep_respacing, str):
            raise TypeError(
                "timestep_respacing must be a string such as '', '250', '10,15,20' or "
                f"'ddim50', got {type(self.timestep_respacing).__name__}"
            )
        for name, cls in (
            ("model_mean_type", ModelMeanType),
            ("model_var_type", ModelVarType),
            ("loss_type", LossType),
        ):
            object.__setattr__(self, name, _coerce_enum(name, getattr(self, name), cls))
        # Validate the schedule and the respacing string now, not at first use.
        self.base_betas  # noqa: B018
        self.use_timesteps  # noqa: B018

    @classmethod
    def from_improved_diffusion_args(cls, flags) -> "DiffusionConfig":
        """The process of improved-diffusion's ``create_gaussian_diffusion`` for ``flags``.

        ``flags``: a dict of ``model_and_diffusion_defaults()`` keys (the network keys are
        accepted and ignored; ``spec.UNetModelConfig.from_improved_diffusion_args`` reads
        them). Missing keys take the official defaults (``rescale_timesteps=True``,
        ``rescale_learned_sigmas=True``, ...); unknown keys raise ``ValueError`` naming them;
        strings of the official command line (``"True"``, ``"4000"``) are parsed. Mapping, as
        the official code:

        - ``diffusion_steps`` -> ``steps``; ``noise_schedule``; ``timestep_respacing``
          (``""`` keeps every step);
        - loss: ``use_kl`` -> RESCALED_KL, else ``rescale_learned_sigmas`` -> RESCALED_MSE,
          else MSE;
        - mean: ``predict_xstart`` -> START_X, else EPSILON;
        - variance: ``learn_sigma`` -> LEARNED_RANGE, else ``sigma_small`` -> FIXED_SMALL,
          else FIXED_LARGE;
        - ``rescale_timesteps``.
        """
        from spec.unet_model import check_improved_diffusion_flags

        f = check_improved_diffusion_flags(flags)
        if f["use_kl"]:
            loss = LossType.RESCALED_KL
        elif f["rescale_learned_sigmas"]:
            loss = LossType.RESCALED_MSE
        else:
            loss = LossType.MSE
        if f["learn_sigma"]:
            var = ModelVarType.LEARNED_RANGE
        else:
            var = ModelVarType.FIXED_SMALL if f["sigma_small"] else ModelVarType.FIXED_LARGE
        return cls(
            steps=f["diffusion_steps"], noise_schedule=f["noise_schedule"],
            timestep_respacing=f["timestep_respacing"],
            model_mean_type=ModelMeanType.START_X if f["predict_xstart"] else ModelMeanType.EPSILON,
            model_var_type=var, loss_type=loss, rescale_timesteps=f["rescale_timesteps"],
        )

    @property
    def use_timesteps(self) -> tuple[int, ...]:
        """Sorted indices of the base process kept by the respacing."""
        section = self.timestep_respacing or str(self.steps)
        return tuple(sorted(schedules.space_timesteps(self.steps, section)))

    @property
    def base_betas(self) -> np.ndarray:
        """Betas of the un-respaced process, float64 ``[steps]``."""
        return schedules.get_named_beta_schedule(self.noise_schedule, self.steps)

    def tables(self) -> "schedules.DiffusionTables":
        """All float64 tables of the (respaced) process; see ``DiffusionTables``."""
        betas, timestep_map = schedules.respace_betas(self.base_betas, self.use_timesteps)
        return schedules.diffusion_tables(betas, timestep_map=timestep_map, original_num_steps=self.steps)

    @property
    def num_timesteps(self) -> int:
        return len(self.use_timesteps)
