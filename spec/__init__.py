"""Framework-neutral specification shared by ``jax_impl`` and ``torch_ref``.

Holds frozen dataclass configs, enums and float64 numpy tables (beta schedules, sigma
ladders, respaced timesteps) plus closed forms used as test oracles. Imports numpy and
the standard library only -- never jax or torch -- so that both implementations cast
the *same* data at their boundary while writing their formulas independently.
"""

from spec.configs import (
    DiffusionConfig,
    LossType,
    ModelMeanType,
    ModelVarType,
    SDEConfig,
    VESDEConfig,
    VPSDEConfig,
    subVPSDEConfig,
)
from spec.datasets import DataConfig
from spec.schedules import (
    DiffusionTables,
    betas_for_alpha_bar,
    diffusion_tables,
    geometric_sigmas,
    get_named_beta_schedule,
    karras_sigmas,
    respace_betas,
    space_timesteps,
    ve_discrete_sigmas,
    vp_discrete_betas,
)
from spec.unet_model import UNetModelConfig
from spec.train_config import EMAConfig, OptimConfig, RunConfig, TrainConfig, TrainingConfig

__all__ = [
    "DataConfig",
    "DiffusionConfig",
    "DiffusionTables",
    "EMAConfig",
    "LossType",
    "ModelMeanType",
    "ModelVarType",
    "OptimConfig",
    "RunConfig",
    "SDEConfig",
    "TrainConfig",
    "TrainingConfig",
    "UNetModelConfig",
    "VESDEConfig",
    "VPSDEConfig",
    "subVPSDEConfig",
    "betas_for_alpha_bar",
    "diffusion_tables",
    "geometric_sigmas",
    "get_named_beta_schedule",
    "karras_sigmas",
    "respace_betas",
    "space_timesteps",
    "ve_discrete_sigmas",
    "vp_discrete_betas",
]
