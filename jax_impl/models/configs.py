"""Frozen model configs and official presets (re-exported from ``spec.model_configs``).

Twin: ``torch_ref/models/configs.py``. The dataclasses are framework-neutral data, so
they are defined once in ``spec`` and both sides use the same classes (a config built
for one framework builds the other's model too).
"""

from spec.model_configs import (  # noqa: F401
    PRESETS,
    DDPMConfig,
    MLPConfig,
    ModelConfig,
    NCSNppConfig,
    from_score_sde_config,
    get_preset,
    get_sigmas,
)

__all__ = ["PRESETS", "DDPMConfig", "MLPConfig", "ModelConfig", "NCSNppConfig", "from_score_sde_config",
           "get_preset", "get_sigmas"]
