"""diffusers' DDPM models in PyTorch: a ``UNet2DModel`` directory as our torch DDPM, its scheduler as a diffusion.

Twin: ``jax_impl/diffusers_format.py`` (same names; flax model and variables there). The
formats, the config mapping, the key table and the checks are framework-neutral data in
``spec/diffusers_format.py``; diffusers is never imported.

- ``from_diffusers(directory)`` -> our ``DDPM`` module (NCHW, eval mode):
  ``model(x, t)`` is diffusers' ``unet(x, t).sample``.
- ``diffusion_from_diffusers(directory_or_path, num_inference_steps=None)`` ->
  ``(GaussianDiffusion, sampler_kwargs)``: the scheduler's process (respaced to its
  inference grid) and ``{"clip_denoised": clip_sample}`` for ``ddpm_sample`` /
  ``ddim_sample`` (``torch_ref.samplers_discrete``).

Our DDIM re-derives eps from the clipped x_0 (improved-diffusion): diffusers'
``DDIMScheduler.step(..., use_clipped_model_output=True)``.
"""

from __future__ import annotations

import torch

from spec.diffusers_format import (
    ddpm_config_from_diffusers,
    ddpm_state_dict_from_diffusers,
    diffusers_key_table,
    find_diffusers_weights,
    find_unet_directory,
    read_diffusers_weights,
    scheduler_settings_from_diffusers,
)
from torch_ref.diffusion import GaussianDiffusion

__all__ = [
    "ddpm_config_from_diffusers",
    "diffusers_key_table",
    "diffusion_from_diffusers",
    "from_diffusers",
    "scheduler_settings_from_diffusers",
]


def from_diffusers(directory, *, dtype=torch.float32) -> torch.nn.Module:
    """Our torch DDPM (NCHW, eval mode) with the weights of a diffusers ``UNet2DModel``
    directory (``config.json`` + ``diffusion_pytorch_model.safetensors`` or ``.bin``;
    or a pipeline folder whose ``unet/`` holds them).

    ``dtype`` is the parameter dtype (float32 by default; the ``sigmas`` buffer keeps
    float64). Errors as the twin's (every unsupported config field, missing /
    unexpected keys and wrong shapes named).
    """
    from torch_ref.models.registry import create_model

    directory = find_unet_directory(directory)
    config = ddpm_config_from_diffusers(directory)
    weights = find_diffusers_weights(directory)
    state_dict = ddpm_state_dict_from_diffusers(read_diffusers_weights(weights), config, what=str(weights))
    model = create_model(config)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state_dict.items()}, strict=True)
    with torch.no_grad():
        for p in model.parameters():
            if p.dtype != dtype:
                p.data = p.data.to(dtype)
    return model.eval()


def diffusion_from_diffusers(directory_or_path, *, num_inference_steps: int | None = None, dtype=None):
    """The ``GaussianDiffusion`` of a diffusers ``DDPMScheduler`` / ``DDIMScheduler``
    config (a ``scheduler_config.json``, a folder holding it, or its dict) and
    ``{"clip_denoised": clip_sample}``; ``num_inference_steps`` respaces the process to
    diffusers' ``set_timesteps`` grid. See the twin.
    """
    settings = scheduler_settings_from_diffusers(directory_or_path, num_inference_steps=num_inference_steps)
    return GaussianDiffusion(settings.diffusion, dtype=dtype), settings.sampler_kwargs
