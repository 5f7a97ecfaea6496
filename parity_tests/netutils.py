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


#: XLA options for compiling test programs about twice as fast (numerics stay float32-exact
#: per op; only fusion / LLVM optimisation effort changes).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compile_fast(fn, *args):
    """``jax.jit(fn)`` lowered for ``args`` and compiled with ``FAST_COMPILE``."""
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)


def perturb_(module: torch.nn.Module, rng: np.random.Generator, scale: float = 0.05) -> torch.nn.Module:
    """Add N(0, scale^2) numpy noise to every parameter (frozen ones too), in place."""
    with torch.no_grad():
        for p in module.parameters():
            noise = rng.normal(0.0, scale, size=tuple(p.shape))
            p.add_(torch.as_tensor(noise, dtype=p.dtype))
    return module


def official_score_sde_checkpoint(model: torch.nn.Module, rng: np.random.Generator, step: int = 7,
                                  scale: float = 0.01) -> dict:
    """A score_sde_pytorch checkpoint dict as its ``.pth`` holds it: DataParallel ``module.``
    keys (with the float64 ``sigmas`` buffer), EMA shadow copies of the trainable
    parameters (``model.parameters()`` order, each perturbed by N(0, scale^2)), an
    optimizer state and the step."""
    import collections

    trainable = [p for p in model.parameters() if p.requires_grad]
    shadow = [p.detach().clone() + torch.as_tensor(rng.normal(0, scale, size=tuple(p.shape)), dtype=p.dtype)
              for p in trainable]
    return {
        "model": collections.OrderedDict(("module." + k, v.clone()) for k, v in model.state_dict().items()),
        "ema": {"decay": 0.999, "num_updates": step, "shadow_params": shadow},
        "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "params": list(range(len(trainable)))}]},
        "step": step,
    }


def score_sde_ema_model(config, ckpt: dict) -> torch.nn.Module:
    """What score_sde's evaluation runs: the ``model`` state loaded, then ``ema.copy_to``."""
    from torch_ref.models.registry import create_model

    ref = create_model(config)
    ref.load_state_dict(tconv.strip_prefix(ckpt["model"]))
    with torch.no_grad():
        for s, p in zip(ckpt["ema"]["shadow_params"], [p for p in ref.parameters() if p.requires_grad]):
            p.copy_(s)
    return ref.eval()


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


def image_model_pair(config, rng: np.random.Generator, torch_model_cls, flax_model_cls):
    """(torch model perturbed + eval, flax model, flax variables converted from torch)."""
    torch.manual_seed(0)
    tm = perturb_(torch_model_cls(config), rng).eval()
    fm = flax_model_cls(config)
    x0 = np.zeros((1, config.image_size, config.image_size, config.num_channels), np.float32)
    variables = flax_variables_from_torch(tm, config, fm, (x0, np.ones((1,), np.float32)))
    return tm, fm, variables


def check_image_parity(tm, fm, variables, x_nhwc: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                       rtol: float = 1e-5) -> dict:
    """Outputs and input gradients of a scalar loss ``sum(out * w)`` agree (eval mode).

    The flax side runs one jit-compiled program returning both (``jax.vjp``). Returns
    the normalised max errors ``{'out': ..., 'grad': ...}``.
    """
    w = rng.normal(size=x_nhwc.shape).astype(np.float32)
    labels_j = jnp.asarray(labels)

    def out_and_grad(v, x, w):
        out, vjp = jax.vjp(lambda x: fm.apply(v, x, labels_j), x)
        return out, vjp(w)[0]

    args = (variables, jnp.asarray(x_nhwc), jnp.asarray(w))
    out_j, grad_j = (np.asarray(a) for a in compile_fast(out_and_grad, *args)(*args))
    xt = torch.as_tensor(nchw(x_nhwc)).requires_grad_(True)
    out_t = tm(xt, torch.as_tensor(labels))
    (out_t * torch.as_tensor(nchw(w))).sum().backward()
    assert out_t.dtype == torch.float32 and out_j.dtype == np.float32
    assert np.abs(out_j).max() > 1e-3, "degenerate network output"
    err_out = assert_rel_close(out_j, nhwc(out_t.detach().numpy()), rtol, "output")
    err_grad = assert_rel_close(grad_j, nhwc(xt.grad.numpy()), rtol, "input gradient")
    return {"out": err_out, "grad": err_grad}


def check_dropout_modes(tm, fm, variables, x_nhwc: np.ndarray, labels: np.ndarray) -> None:
    """Train mode: two dropout keys (two torch draws) differ, a key reproduces itself and
    differs from eval mode; eval mode is deterministic."""
    x, l = jnp.asarray(x_nhwc), jnp.asarray(labels)

    def outputs(v, x, l):
        train = lambda k: fm.apply(v, x, l, train=True, rngs={"dropout": jax.random.PRNGKey(k)})  # noqa: E731
        return train(1), train(2), fm.apply(v, x, l)

    compiled = compile_fast(outputs, variables, x, l)
    a, b, e1 = (np.asarray(o) for o in compiled(variables, x, l))
    a2, _, e2 = (np.asarray(o) for o in compiled(variables, x, l))
    assert np.abs(a - b).max() > 1e-4 and np.array_equal(a, a2)
    assert np.array_equal(e1, e2) and np.abs(e1 - a).max() > 1e-4

    xt, lt = torch.as_tensor(nchw(x_nhwc)), torch.as_tensor(labels)
    with torch.no_grad():
        tm.train()
        ta, tb = tm(xt, lt), tm(xt, lt)
        tm.eval()
        te1, te2 = tm(xt, lt), tm(xt, lt)
    assert (ta - tb).abs().max() > 1e-4
    assert torch.equal(te1, te2) and (te1 - ta).abs().max() > 1e-4


def check_bad_inputs_flax(fm, config, cases) -> None:
    """Each ``(x_shape, labels_shape, error_regex)`` raises while tracing (no compute)."""
    import pytest

    x0 = jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.float32)
    shapes = jax.eval_shape(fm.init, jax.random.PRNGKey(0), x0, jnp.ones((1,), jnp.float32))
    for x_shape, l_shape, match in cases:
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(fm.apply, shapes, jax.ShapeDtypeStruct(x_shape, jnp.float32),
                           jax.ShapeDtypeStruct(l_shape, jnp.float32))


def check_key_table(config, tm, fm) -> None:
    """The table lists the torch state_dict keys in order (after the derived buffers),
    with their shapes; its trainable entries are ``parameters()`` with grad, in order;
    its flax paths are exactly the flax leaves."""
    table = tconv.key_table(config)
    sd = tm.state_dict()
    derived = list(tconv.derived_buffers(config))
    assert list(sd) == derived + [km.torch_key for km in table]
    assert all(tuple(sd[km.torch_key].shape) == km.shape for km in table)
    assert [km.torch_key for km in table if km.trainable] == [
        n for n, p in tm.named_parameters() if p.requires_grad
    ]
    x0 = jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.float32)
    shapes = jax.eval_shape(fm.init, jax.random.PRNGKey(0), x0, jnp.ones((1,), jnp.float32))
    flat = tconv.flatten_paths(shapes)
    assert sorted(flat) == sorted(km.flax_path for km in table)
    for km in table:
        want = km.shape if km.layout == "same" else (
            km.shape[2:] + (km.shape[1], km.shape[0]) if km.layout == "conv" else km.shape[::-1])
        assert tuple(flat[km.flax_path].shape) == want, km.torch_key
