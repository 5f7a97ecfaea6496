"""Shared helpers of the network parity tests (MLP / DDPM / NCSN++ / converter / score adapters).

Torch weights are perturbed with numpy noise (so no zero-initialised layer hides a
mismatch), converted to flax through the explicit key table, and both models are fed
the same numpy inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from torch_ref import convert as tconv


def perturb_(module: torch.nn.Module, rng: np.random.Generator, scale: float = 0.05) -> torch.nn.Module:
    """Add N(0, scale^2) numpy noise to every parameter (frozen ones too), in place."""
    with torch.no_grad():
        for p in module.parameters():
            noise = rng.normal(0.0, scale, size=tuple(p.shape))
            p.add_(torch.as_tensor(noise, dtype=p.dtype))
    return module


def flax_variables_from_torch(module: torch.nn.Module, config, flax_model, example_inputs) -> dict:
    """Convert ``module``'s state_dict with the key table; shapes checked against flax init."""
    shapes = jax.eval_shape(
        lambda *a: flax_model.init({"params": jax.random.PRNGKey(0)}, *a), *example_inputs
    )
    shapes = jax.tree_util.tree_map(lambda s: s, shapes)
    sd = module.state_dict()
    variables = tconv.torch_to_flax(sd, tconv.key_table(config), flax_shapes=shapes,
                                    derived=tconv.derived_buffers(config))
    return jax.tree_util.tree_map(jnp.asarray, variables)


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (a scale-aware relative error)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def assert_rel_close(a, b, rtol: float = 1e-5, what: str = "") -> float:
    """Elementwise |a - b| <= rtol (|b| + max|b|) -- i.e. within rtol relative to the
    element or to the array's scale; returns the normalised max error."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    scale = np.max(np.abs(b))
    bad = np.abs(a - b) > rtol * (np.abs(b) + scale)
    err = rel_err(a, b)
    assert not bad.any(), f"{what}: {bad.sum()} elements differ, normalised max error {err:.3g}"
    return err


def nchw(x_nhwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x_nhwc, (0, 3, 1, 2)))


def nhwc(x_nchw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x_nchw, (0, 2, 3, 1)))
