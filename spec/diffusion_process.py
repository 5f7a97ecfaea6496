"""Framework-neutral part of ``GaussianDiffusion``: its config, tables and properties.

``jax_impl.diffusion.GaussianDiffusion`` and ``torch_ref.diffusion.GaussianDiffusion``
subclass ``DiffusionProcess``: the float64 tables, the respacing and the property names
(improved-diffusion's) are defined once here; each side writes its own formulas.
"""

from __future__ import annotations

import numpy as np

from spec.configs import DiffusionConfig, LossType, ModelMeanType, ModelVarType
from spec.validate import check_int


class DiffusionProcess:
    """Mixin for a frozen dataclass with fields ``config`` and ``channel_axis`` and a
    non-init ``_tables`` field; ``_init_process(default_channel_axis)`` validates them
    (``channel_axis=None`` becomes the side's layout default) and builds the tables."""

    config: DiffusionConfig
    channel_axis: int
    _tables: dict

    def _init_process(self, default_channel_axis: int) -> None:
        if not isinstance(self.config, DiffusionConfig):
            raise TypeError(f"config must be a spec.DiffusionConfig, got {type(self.config).__name__}")
        axis = self.channel_axis
        axis = default_channel_axis if axis is None else check_int("channel_axis", axis)
        if axis == 0:
            raise ValueError("channel_axis must not be 0 (the batch axis)")
        object.__setattr__(self, "channel_axis", axis)
        object.__setattr__(self, "_tables", self.config.tables().runtime_tables())

    @property
    def num_timesteps(self) -> int:
        """T of the respaced process (the length of every table)."""
        return len(self._tables["betas"])

    @property
    def model_mean_type(self) -> ModelMeanType:
        return self.config.model_mean_type

    @property
    def model_var_type(self) -> ModelVarType:
        return self.config.model_var_type

    @property
    def loss_type(self) -> LossType:
        return self.config.loss_type

    @property
    def rescale_timesteps(self) -> bool:
        return bool(self.config.rescale_timesteps)

    @property
    def original_num_steps(self) -> int:
        return int(self.config.steps)

    @property
    def learned_variance(self) -> bool:
        return self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)

    def table(self, name: str) -> np.ndarray:
        """A float64 table ``[T]`` by name (improved-diffusion's names, e.g. ``"betas"``,
        ``"alphas_cumprod"``, ``"posterior_variance"``, ``"timestep_map"``)."""
        try:
            return self._tables[name]
        except KeyError:
            raise ValueError(f"unknown table name {name!r}; valid names: {sorted(self._tables)}") from None
