"""diffusers' DDPM models in JAX: a ``UNet2DModel`` directory as our flax DDPM, its scheduler as a diffusion.

Twin: ``torch_ref/diffusers_format.py`` (same names; a torch module there). The formats,
the config mapping, the key table and the checks are framework-neutral data in
``spec/diffusers_format.py``; diffusers is never imported and torch only to read a
``.bin`` weight file (``.safetensors`` needs no torch).

- ``from_diffusers(directory)`` -> ``(model, variables)``: ``model.apply(variables, x, t)``
  with ``x`` NHWC ``[B, H, W, C]`` and integer (or float) timesteps ``t [B]`` is
  diffusers' ``unet(x_nchw, t).sample`` transposed to NHWC.
- ``diffusion_from_diffusers(directory_or_path, num_inference_steps=None)`` ->
  ``(GaussianDiffusion, sampler_kwargs)``: the scheduler's process (respaced to its
  inference grid) and ``{"clip_denoised": clip_sample}`` for ``ddpm_sample`` /
  ``ddim_sample`` (``jax_impl.samplers_discrete``).

Sampling a diffusers DDPM model with the jit-compiled DDIM (50 steps; the snippet is
run by ``parity_tests/test_diffusers.py`` and checked against diffusers' DDIMScheduler)::

    import jax
    import jax.numpy as jnp
    from jax_impl.diffusers_format import diffusion_from_diffusers, from_diffusers
    from jax_impl.samplers_discrete import ddim_sample

    model, variables = from_diffusers("ddpm-cifar10-32")   # a UNet2DModel.save_pretrained folder
    diffusion, kwargs = diffusion_from_diffusers("ddpm-cifar10-32", num_inference_steps=50)

    @jax.jit
    def sample(variables, x_T):   # the whole 50-step DDIM loop is one XLA program
        eps_fn = lambda x, t: model.apply(variables, x, t)
        return ddim_sample(None, diffusion, eps_fn, x_T.shape, x_T=x_T, **kwargs)[0]

    x_T = jax.random.normal(jax.random.key(0), (16, 32, 32, 3), jnp.float32)   # NHWC
    images = sample(variables, x_T)   # [16, 32, 32, 3] in [-1, 1]; deterministic (eta = 0)

Our DDIM re-derives eps from the clipped x_0 (improved-diffusion's ``ddim_sample``):
that is diffusers' ``DDIMScheduler.step(..., use_clipped_model_output=True)``; with
diffusers' default ``False`` and ``clip_sample=True`` the two differ wherever the
predicted x_0 leaves [-1, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.diffusion import GaussianDiffusion
from jax_impl.models import registry
from spec.convert import torch_to_flax
from spec.diffusers_format import (
    ddpm_config_from_diffusers,
    ddpm_layout_key_table,
    ddpm_state_dict_from_diffusers,
    diffusers_key_table,
    find_diffusers_weights,
    find_unet_directory,
    read_diffusers_weights,
    scheduler_settings_from_diffusers,
)
from spec.keytables import derived_buffers

__all__ = [
    "ddpm_config_from_diffusers",
    "diffusers_key_table",
    "diffusion_from_diffusers",
    "from_diffusers",
    "scheduler_settings_from_diffusers",
]


def from_diffusers(directory, *, dtype=np.float32):
    """Our flax DDPM with the weights of a diffusers ``UNet2DModel`` directory.

    Args:
      directory: holds ``config.json`` and ``diffusion_pytorch_model.safetensors``
        (read without torch) or ``diffusion_pytorch_model.bin`` (needs torch); or a
        pipeline folder whose ``unet/`` does.
      dtype: parameter dtype (float32 by default; None keeps the stored one).

    Returns:
      ``(model, variables)``; ``model.apply(variables, x [B, H, W, C], t [B])``.

    Raises:
      FileNotFoundError / NotADirectoryError: no such directory, config or weights.
      ValueError: the config has no counterpart here (every unsupported field named),
        or the weights do not match it (the key and shape named); ``KeyError`` for
        missing / unexpected keys.
    """
    directory = find_unet_directory(directory)
    config = ddpm_config_from_diffusers(directory)
    weights = find_diffusers_weights(directory)
    state_dict = ddpm_state_dict_from_diffusers(read_diffusers_weights(weights), config, what=str(weights))
    variables = torch_to_flax(state_dict, ddpm_layout_key_table(config), flax_shapes=registry.variable_shapes(config),
                              derived=derived_buffers(config), dtype=dtype)
    return registry.create_model(config), jax.tree_util.tree_map(jnp.asarray, variables)


def diffusion_from_diffusers(directory_or_path, *, num_inference_steps: int | None = None, dtype=None):
    """The ``GaussianDiffusion`` of a diffusers ``DDPMScheduler`` / ``DDIMScheduler`` config.

    Args:
      directory_or_path: ``scheduler_config.json``, or a folder holding it (the model
        folder, or a pipeline folder, or ``unet/`` beside ``scheduler/``), or the
        config's dict.
      num_inference_steps: diffusers' ``set_timesteps`` count (default: all
        ``num_train_timesteps``); the process is respaced to that grid (``"ddim{n}"``).
      dtype: the diffusion's computing dtype (None: the data's).

    Returns:
      ``(diffusion, sampler_kwargs)`` with ``sampler_kwargs = {"clip_denoised": clip_sample}``.
      See ``spec.diffusers_format.scheduler_settings_from_diffusers`` for the mapping and
      the fields that raise.
    """
    settings = scheduler_settings_from_diffusers(directory_or_path, num_inference_steps=num_inference_steps)
    return GaussianDiffusion(settings.diffusion, dtype=dtype), settings.sampler_kwargs
