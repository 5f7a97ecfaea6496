"""The validation modules (``spec/validate.py``, ``jax_impl/validate.py``,
``torch_ref/validate.py``) branch by branch, and a catalogue of wrong calls against the
public API of the losses, the diffusion, the SDEs, the resamplers and the spec configs:
each wrong call must raise the expected exception type from the project's own checks,
with a message naming the argument.

Imports and tiny arrays only (no network, no long loops).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import spec
from jax_impl import diffusion as jd
from jax_impl import losses as jl
from jax_impl import resample as jr
from jax_impl import sde as jsde
from jax_impl import validate as jv
from spec import schedules
from spec import validate as sv
from torch_ref import diffusion as td
from torch_ref import losses as tl
from torch_ref import resample as tr
from torch_ref import sde as tsde
from torch_ref import validate as tv

NAN = float("nan")


def _raises(exc, fn, *names):
    """``fn()`` raises ``exc`` whose message contains every string in ``names``."""
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for name in names:
        assert name in msg, f"message {msg!r} does not name {name!r}"
    return msg


# ======================================================================= spec/validate.py


def test_spec_check_bool():
    assert sv.check_bool("flag", True) is True
    assert sv.check_bool("flag", np.bool_(False)) is False
    for bad in ("yes", "False", 1, 0, None, 1.0):
        _raises(TypeError, lambda b=bad: sv.check_bool("reduce_mean", b), "reduce_mean")


def test_spec_check_shape():
    assert sv.check_shape("shape", (2, np.int64(3))) == (2, 3)
    assert sv.check_shape("shape", [4]) == (4,)
    assert sv.check_shape("shape", (2, 3), min_ndim=2) == (2, 3)
    _raises(ValueError, lambda: sv.check_shape("shape", ()), "shape", "at least 1")
    _raises(ValueError, lambda: sv.check_shape("shape", (4,), min_ndim=2), "shape", "at least 2")
    _raises(ValueError, lambda: sv.check_shape("shape", (2, 0)), "shape[1]", ">= 1")
    _raises(TypeError, lambda: sv.check_shape("shape", (2.0, 3)), "shape[0]", "integer")
    _raises(TypeError, lambda: sv.check_shape("shape", (True, 3)), "shape[0]")
    _raises(TypeError, lambda: sv.check_shape("shape", "ab"), "shape")
    _raises(TypeError, lambda: sv.check_shape("shape", 3), "shape")
    _raises(TypeError, lambda: sv.check_shape("shape", None), "shape")


def test_spec_check_finite_array():
    out = sv.check_finite_array("a", [1.0, 2.0])
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert sv.check_finite_array("a", np.arange(3)).dtype.kind == "i"
    assert sv.check_finite_array("a", np.array([True])).dtype == bool
    msg = _raises(ValueError, lambda: sv.check_finite_array("betas", [0.1, NAN, np.inf]), "betas")
    assert "2 of 3" in msg
    _raises(ValueError, lambda: sv.check_finite_array("z", np.array([1j, complex(NAN, 0)])), "z")
    _raises(TypeError, lambda: sv.check_finite_array("a", np.array(["x"])), "a", "numeric")
    _raises(TypeError, lambda: sv.check_finite_array("a", [[1.0], [1.0, 2.0]]), "a")
    assert sv.check_finite_array("sigmas", [1.0, 0.1], ndim=1, positive=True).shape == (2,)
    assert sv.check_finite_array("weights", [0, 1], ndim=1, nonnegative=True).shape == (2,)
    _raises(ValueError, lambda: sv.check_finite_array("sigmas", [[1.0]], ndim=1), "sigmas", "1 axis")
    _raises(ValueError, lambda: sv.check_finite_array("sigmas", [], ndim=1), "sigmas", "non-empty")
    _raises(ValueError, lambda: sv.check_finite_array("sigmas", [1.0, 0.0], positive=True), "sigmas", "> 0")
    _raises(ValueError, lambda: sv.check_finite_array("w", [1, -1], nonnegative=True), "w", ">= 0")
    _raises(ValueError, lambda: sv.check_finite_array("w", [0.0, 0.0], nonnegative=True), "w", "sum")


def test_spec_paths(tmp_path):
    f = tmp_path / "w.npz"
    f.write_bytes(b"data")
    (tmp_path / "empty.npz").write_bytes(b"")
    assert sv.check_path("path", str(f)) == f
    assert sv.check_path("path", f) == f
    assert sv.check_file("path", f, suffixes=(".NPZ", ".safetensors")) == f
    assert sv.check_dir("workdir", tmp_path) == tmp_path
    _raises(TypeError, lambda: sv.check_path("path", 3), "path")
    _raises(TypeError, lambda: sv.check_path("path", b"/tmp"), "path")
    _raises(FileNotFoundError, lambda: sv.check_path("path", tmp_path / "nope"), "path", "nope")
    _raises(FileNotFoundError, lambda: sv.check_file("checkpoint", tmp_path / "nope"), "checkpoint")
    _raises(IsADirectoryError, lambda: sv.check_file("checkpoint", tmp_path), "checkpoint")
    _raises(ValueError, lambda: sv.check_file("checkpoint", f, suffixes=(".pt",)), "checkpoint", ".pt")
    _raises(ValueError, lambda: sv.check_file("checkpoint", tmp_path / "empty.npz"),
            "checkpoint", "empty")
    _raises(NotADirectoryError, lambda: sv.check_dir("workdir", f), "workdir")


def test_spec_check_callable_int_float_choice():
    fn = lambda x: x  # noqa: E731
    assert sv.check_callable("score_fn", fn) is fn
    _raises(TypeError, lambda: sv.check_callable("score_fn", 3), "score_fn", "callable")
    _raises(TypeError, lambda: sv.check_callable("score_fn", 3, "score_fn(x, t) -> score"),
            "score_fn(x, t) -> score")
    assert sv.check_int("N", np.int32(4), minimum=1) == 4
    _raises(TypeError, lambda: sv.check_int("N", 2.0), "N")
    _raises(TypeError, lambda: sv.check_int("N", True), "N")
    _raises(ValueError, lambda: sv.check_int("N", 0, minimum=1), "N")
    assert sv.check_float("eps", 1) == 1.0
    _raises(TypeError, lambda: sv.check_float("eps", "0.1"), "eps")
    _raises(ValueError, lambda: sv.check_float("eps", NAN), "eps")
    _raises(ValueError, lambda: sv.check_float("eps", 0.0, positive=True), "eps")
    _raises(ValueError, lambda: sv.check_float("eps", -1.0, nonnegative=True), "eps")
    sv.check_choice("method", "a", ("a", "b"))
    _raises(ValueError, lambda: sv.check_choice("method", "c", ("a", "b")), "method", "'a'")


# ============================================================ jax_impl/validate.py


@pytest.mark.parametrize("V, conv", [(jv, jnp.asarray), (tv, torch.as_tensor)], ids=["jax", "torch"])
def test_check_array_shape_and_values(V, conv):
    """The branches both sides share (the side-specific ones follow per side)."""
    one3 = conv(np.ones(3))
    _raises(ValueError, lambda: V.check_array("x_T", one3, (2,)), "x_T", "(2,)", "(3,)")
    _raises(ValueError, lambda: V.check_array("noise", one3, (2,), what="[K, *shape]"),
            "noise must have shape [K, *shape] = (2,)")
    _raises(ValueError, lambda: V.check_array("z", one3, (2,), like_name="x"),
            "z must have the shape of x (2,)")
    _raises(ValueError, lambda: V.check_array("x", conv(np.float64(1.0)), min_ndim=1), "x", "[B, ...]")
    _raises(ValueError, lambda: V.check_array("x_T", conv(np.array([1.0, NAN]))), "x_T", "NaN")
    _raises(TypeError, lambda: V.check_array("x", conv(np.ones(2, np.int32))), "x", "int32")


def test_jax_is_concrete_and_finite():
    x = jnp.array([1.0, 2.0])
    assert jv.is_concrete(x) and jv.is_concrete(np.ones(2)) and jv.is_concrete(1.0)
    seen = []
    jax.jit(lambda a: seen.append(jv.is_concrete(a)) or a)(x)
    assert seen == [False]
    assert jv.check_finite("x", x) is x
    assert jv.check_finite("x", None) is None
    jv.check_finite("labels", jnp.array([1, 2]))  # integers are always finite
    _raises(ValueError, lambda: jv.check_finite("x", jnp.array([1.0, NAN])), "x", "NaN")
    _raises(ValueError, lambda: jv.check_finite("x", np.array([np.inf])), "x")
    _raises(ValueError, lambda: jv.check_finite("t", NAN), "t")
    # a tracer passes; a concrete constant closed over inside jit is still checked
    jax.jit(lambda a: jv.check_finite("x", a))(jnp.array([NAN]))
    bad = jnp.array([NAN])
    _raises(ValueError, lambda: jax.jit(lambda a: a + jv.check_finite("c", bad))(x), "c")


def test_jax_check_floating():
    jv.check_floating("x", jnp.ones(2))
    jv.check_floating("x", 1.0)
    _raises(TypeError, lambda: jv.check_floating("x", jnp.ones(2, jnp.int32)), "x", "int32")
    _raises(TypeError, lambda: jv.check_floating("x", None), "x")
    _raises(TypeError, lambda: jv.check_floating("x", "abc"), "x")


def test_jax_check_array():
    a = jv.check_array("x", np.ones((2, 3)), (2, 3), jnp.float32)
    assert isinstance(a, jax.Array) and a.dtype == jnp.float32
    assert jv.check_array("x", jnp.ones(2)).dtype == jnp.float64
    assert jv.check_array("x", jnp.ones(2), device=jax.devices()[0]).shape == (2,)
    assert jv.check_array("x", jnp.array([NAN]), finite=False).shape == (1,)
    _raises(TypeError, lambda: jv.check_array("x", np.ones(2), strict=True), "x", "jax.Array")


def test_jax_check_indices():
    x = jnp.ones((3, 2))
    t = jv.check_indices("t", np.array([0, 1, 2]), 3, x_name="x", x=x)
    assert isinstance(t, jax.Array)
    _raises(TypeError, lambda: jv.check_indices("t", jnp.array([0.0]), 3, what="an integer thing"),
            "t must be an integer thing")
    _raises(TypeError, lambda: jv.check_indices("t", jnp.array([True]), 3), "t")
    _raises(ValueError, lambda: jv.check_indices("t", jnp.zeros((3, 1), int), 3), "t", "[B]")
    _raises(ValueError, lambda: jv.check_indices("t", jnp.zeros(2, int), 3, x_name="x", x=x),
            "batch mismatch", "t", "x.shape[0] = 3")
    _raises(ValueError, lambda: jv.check_indices("t", jnp.array([0, 3]), 3), "t must lie in [0, 3)")
    _raises(ValueError, lambda: jv.check_indices("t", jnp.array([-1]), 3, bound_name="num_timesteps"),
            "t must lie in [0, num_timesteps) = [0, 3)")
    jax.jit(lambda i: jv.check_indices("t", i, 3))(jnp.array([7]))  # values unknown: passes


def test_jax_batch_time_score_inputs():
    x = jnp.ones((4, 2))
    jv.check_batch("x", x, "t", 0.5)
    jv.check_batch("x", x, "t", jnp.ones(4))
    _raises(ValueError, lambda: jv.check_batch("x", x, "t", jnp.ones((4, 1))), "t", "[B]")
    _raises(ValueError, lambda: jv.check_batch("x", x, "t", jnp.ones(3)), "batch mismatch", "t", "x")
    _raises(ValueError, lambda: jv.check_batch("x", jnp.ones(()), "t", jnp.ones(3)), "batch mismatch")
    jv.check_time_range("t", jnp.array([0.0, 1.0]), 0.0, 1.0)
    jv.check_time_range("t", jnp.array([], float), 0.0, 1.0)
    _raises(ValueError, lambda: jv.check_time_range("t", jnp.array([1.5]), 0.0, 1.0), "t must lie in")
    _raises(ValueError, lambda: jv.check_time_range("t", jnp.array([NAN]), 0.0, 1.0), "t", "NaN")
    jax.jit(lambda s: jv.check_time_range("t", s, 0.0, 1.0) or s)(jnp.array([5.0]))
    jv.check_score_inputs(x, jnp.full(4, 0.5))
    _raises(TypeError, lambda: jv.check_score_inputs(jnp.ones((4, 2), int), 0.5), "x")


def test_jax_resolve_dtype():
    assert jv.resolve_dtype(None) == np.float32
    assert jv.resolve_dtype(None, None, np.ones(2)) == np.float64
    assert jv.resolve_dtype(jnp.float32, np.ones(2)) == np.float32
    assert jv.resolve_dtype("float64") == np.float64
    _raises(TypeError, lambda: jv.resolve_dtype(jnp.int32), "dtype", "int32")
    _raises(TypeError, lambda: jv.resolve_dtype(None, np.ones(2, int)), "dtype")
    _raises(TypeError, lambda: jv.resolve_dtype("foo"), "dtype", "foo")
    _raises(TypeError, lambda: jv.resolve_dtype(torch.float32), "dtype")


def test_jax_check_fn_output():
    x = jnp.ones((4, 2))
    jv.check_fn_output("score_fn", jnp.ones((4, 2), jnp.float32), x)
    jv.check_fn_output("model_fn", jnp.ones((4, 4)), x, shape=(4, 4))
    msg = _raises(ValueError, lambda: jv.check_fn_output("score_fn", jnp.ones(4), x), "score_fn")
    assert msg == "score_fn returned shape (4,) for x of shape (4, 2)"
    _raises(ValueError, lambda: jv.check_fn_output("model_fn", x, x, shape=(4, 4)),
            "model_fn", "expected (4, 4)")
    _raises(ValueError, lambda: jv.check_fn_output("model_fn", x, x, shape=(4, 4), reason="why"),
            "model_fn", "but why")
    _raises(TypeError, lambda: jv.check_fn_output("score_fn", jnp.ones((4, 2), int), x),
            "score_fn", "int")
    _raises(TypeError, lambda: jv.check_fn_output("score_fn", None, x), "score_fn", "NoneType")
    _raises(TypeError, lambda: jv.check_fn_output("score_fn", (x,), x), "score_fn", "tuple")
    # trace time: the shapes of tracers are known
    _raises(ValueError, lambda: jax.jit(lambda a: jv.check_fn_output("score_fn", a[0], a))(x),
            "score_fn returned shape (2,)")


def test_jax_check_key():
    for key in (jax.random.key(0), jax.random.PRNGKey(0), np.zeros(2, np.uint32)):
        assert jv.check_key("rng", key) is key
    jax.jit(lambda k: jax.random.normal(jv.check_key("rng", k)))(jax.random.key(1))
    jax.jit(lambda k: jax.random.normal(jv.check_key("rng", k)))(jax.random.PRNGKey(1))
    bad = {
        "int": 0, "float": 1.5, "str": "0", "none": None,
        "numpy Generator": np.random.default_rng(0), "RandomState": np.random.RandomState(0),
        "torch Generator": torch.Generator(), "float array": jnp.zeros(2),
        "int32 pair": jnp.zeros(2, jnp.int32), "uint32[3]": jnp.zeros(3, jnp.uint32),
    }
    for what, key in bad.items():
        msg = _raises(TypeError, lambda k=key: jv.check_key("rng", k), "rng", "jax.random.key(0)")
        assert "PRNG key" in msg, what
    for batch in (jax.random.split(jax.random.key(0), 3), jax.random.split(jax.random.PRNGKey(0), 3)):
        _raises(TypeError, lambda b=batch: jv.check_key("rng", b), "rng", "batch", "(3")
    _raises(TypeError, lambda: jax.jit(lambda k: jv.check_key("key", k))(jnp.zeros(2)), "key")


def test_jax_check_sde_and_diffusion():
    jv.check_sde(jsde.VPSDE())
    jv.check_sde(jsde.VESDE())
    jv.check_sde(jsde.subVPSDE())
    jv.check_sde(jsde.VESDE(), kind="VESDE", purpose="smld_loss")
    _raises(TypeError, lambda: jv.check_sde(jsde.subVPSDE(), kind="VPSDE", purpose="ddpm_loss"),
            "sde: ddpm_loss needs a VPSDE, got subVPSDE")
    for bad in (tsde.VPSDE(), spec.VPSDEConfig(), "vpsde", None):
        _raises(TypeError, lambda b=bad: jv.check_sde(b), "sde must be a jax_impl.sde SDE")
    cfg = spec.DiffusionConfig(steps=4, noise_schedule="cosine")
    jv.check_diffusion(jd.GaussianDiffusion(cfg))
    for bad in (td.GaussianDiffusion(cfg), cfg, None):
        _raises(TypeError, lambda b=bad: jv.check_diffusion(b), "diffusion must be")


# ============================================================ torch_ref/validate.py


def test_torch_is_concrete_and_finite():
    x = torch.tensor([1.0, 2.0])
    assert tv.is_concrete(x) and not tv.is_concrete(torch.empty(2, device="meta"))
    assert tv.check_finite("x", x) is x
    assert tv.check_finite("x", None) is None
    tv.check_finite("labels", torch.tensor([1, 2]))
    tv.check_finite("x", torch.full((2,), NAN, device="meta"))  # no values to read
    _raises(ValueError, lambda: tv.check_finite("x", torch.tensor([1.0, NAN])), "x", "1 of 2")
    _raises(ValueError, lambda: tv.check_finite("x", np.array([np.inf])), "x")
    _raises(ValueError, lambda: tv.check_finite("t", NAN), "t")


def test_torch_check_floating():
    tv.check_floating("x", torch.ones(2))
    tv.check_floating("x", 1.0)
    _raises(TypeError, lambda: tv.check_floating("x", torch.ones(2, dtype=torch.int32)), "x", "int32")
    _raises(TypeError, lambda: tv.check_floating("x", None), "x")
    _raises(TypeError, lambda: tv.check_floating("x", "abc"), "x")


def test_torch_check_array():
    a = tv.check_array("x", np.ones((2, 3)), (2, 3), torch.float32, "cpu")
    assert torch.is_tensor(a) and a.dtype == torch.float32
    b = torch.ones(2, dtype=torch.float64)
    assert tv.check_array("x", b) is b
    assert tv.check_array("x", torch.tensor([NAN]), finite=False).shape == (1,)
    _raises(TypeError, lambda: tv.check_array("x", np.ones(2), strict=True), "x", "torch.Tensor")


def test_torch_check_indices():
    x = torch.ones(3, 2)
    t = tv.check_indices("t", [0, 1, 2], 3, x_name="x", x=x)
    assert torch.is_tensor(t) and t.dtype == torch.int64
    _raises(TypeError, lambda: tv.check_indices("t", torch.tensor([0.0]), 3, what="an integer thing"),
            "t must be an integer thing")
    _raises(TypeError, lambda: tv.check_indices("t", torch.tensor([True]), 3), "t")
    _raises(ValueError, lambda: tv.check_indices("t", torch.zeros(3, 1, dtype=torch.long), 3), "t", "[B]")
    _raises(ValueError, lambda: tv.check_indices("t", torch.zeros(2, dtype=torch.long), 3,
                                                 x_name="x", x=x), "batch mismatch", "x.shape[0] = 3")
    _raises(ValueError, lambda: tv.check_indices("t", torch.tensor([0, 3]), 3), "t must lie in [0, 3)")
    _raises(ValueError, lambda: tv.check_indices("ts", [-1], 3, bound_name="num_timesteps"),
            "ts must lie in [0, num_timesteps) = [0, 3)")


def test_torch_batch_time_score_inputs():
    x = torch.ones(4, 2)
    tv.check_batch("x", x, "t", 0.5)
    tv.check_batch("x", x, "t", torch.ones(4))
    _raises(ValueError, lambda: tv.check_batch("x", x, "t", torch.ones(4, 1)), "t", "[B]")
    _raises(ValueError, lambda: tv.check_batch("x", x, "t", torch.ones(3)), "batch mismatch")
    _raises(ValueError, lambda: tv.check_batch("x", torch.ones(()), "t", torch.ones(3)), "batch mismatch")
    tv.check_time_range("t", torch.tensor([0.0, 1.0]), 0.0, 1.0)
    tv.check_time_range("t", torch.tensor([]), 0.0, 1.0)
    _raises(ValueError, lambda: tv.check_time_range("t", torch.tensor([-0.5]), 0.0, 1.0), "t must lie in")
    _raises(ValueError, lambda: tv.check_time_range("t", torch.tensor([NAN]), 0.0, 1.0), "t", "NaN")
    tv.check_score_inputs(x, torch.full((4,), 0.5))
    _raises(TypeError, lambda: tv.check_score_inputs(torch.ones(4, 2, dtype=torch.long), 0.5), "x")


def test_torch_resolve_dtype():
    assert tv.resolve_dtype(None) == torch.float32
    assert tv.resolve_dtype(None, None, torch.ones(2, dtype=torch.float64)) == torch.float64
    assert tv.resolve_dtype(torch.float16) == torch.float16
    _raises(TypeError, lambda: tv.resolve_dtype(torch.int32), "dtype", "int32")
    _raises(TypeError, lambda: tv.resolve_dtype(None, torch.ones(2, dtype=torch.long)), "dtype")
    _raises(TypeError, lambda: tv.resolve_dtype("float32"), "dtype")
    _raises(TypeError, lambda: tv.resolve_dtype(jnp.float32), "dtype")


def test_torch_check_fn_output():
    x = torch.ones(4, 2)
    tv.check_fn_output("score_fn", torch.ones(4, 2, dtype=torch.float32), x)
    tv.check_fn_output("model_fn", torch.ones(4, 4), x, shape=(4, 4))
    msg = _raises(ValueError, lambda: tv.check_fn_output("score_fn", torch.ones(4), x), "score_fn")
    assert msg == "score_fn returned shape (4,) for x of shape (4, 2)"
    _raises(ValueError, lambda: tv.check_fn_output("model_fn", x, x, shape=(4, 4)),
            "model_fn", "expected (4, 4)")
    _raises(ValueError, lambda: tv.check_fn_output("model_fn", x, x, shape=(4, 4), reason="why"),
            "but why")
    _raises(TypeError, lambda: tv.check_fn_output("score_fn", torch.ones(4, 2, dtype=torch.long), x),
            "score_fn", "int64")
    _raises(TypeError, lambda: tv.check_fn_output("score_fn", np.ones((4, 2)), x), "score_fn", "ndarray")
    _raises(TypeError, lambda: tv.check_fn_output("score_fn", None, x), "score_fn")


def test_torch_check_generator():
    g = torch.Generator().manual_seed(0)
    assert tv.check_generator("generator", g) is g
    assert tv.check_generator("generator", None) is None
    for bad in (0, np.random.default_rng(0), jax.random.key(0), "g"):
        _raises(TypeError, lambda b=bad: tv.check_generator("generator", b),
                "generator", "torch.Generator().manual_seed(0)")


def test_torch_check_sde_and_diffusion():
    tv.check_sde(tsde.VESDE())
    tv.check_sde(tsde.subVPSDE())
    tv.check_sde(tsde.VPSDE(), kind="VPSDE", purpose="ddpm_loss")
    _raises(TypeError, lambda: tv.check_sde(tsde.VPSDE(), kind="VESDE", purpose="smld_loss"),
            "sde: smld_loss needs a VESDE, got VPSDE")
    for bad in (jsde.VPSDE(), spec.VESDEConfig(), "vesde"):
        _raises(TypeError, lambda b=bad: tv.check_sde(b), "sde must be a torch_ref.sde SDE")
    cfg = spec.DiffusionConfig(steps=4, noise_schedule="cosine")
    tv.check_diffusion(td.GaussianDiffusion(cfg))
    for bad in (jd.GaussianDiffusion(cfg), cfg):
        _raises(TypeError, lambda b=bad: tv.check_diffusion(b), "diffusion must be")


def test_one_sided_names_documented():
    assert set(jv.__all__) - set(tv.__all__) == {"check_key"}
    assert set(tv.__all__) - set(jv.__all__) == {"check_generator"}
    assert "One-sided names:" in jv.__doc__ and "check_key" in jv.__doc__
    assert "One-sided names:" in tv.__doc__ and "check_generator" in tv.__doc__


# ==================================================================== wrong-call catalogue


@dataclasses.dataclass(frozen=True)
class Side:
    """One framework's modules and how to make its arrays."""

    name: str
    losses: object
    sde: object
    diffusion: object
    resample: object
    arr: Callable
    key: Callable  # the randomness argument: a JAX key or a torch generator
    bad_rng: tuple


JAX = Side("jax", jl, jsde, jd, jr, jnp.asarray, lambda: jax.random.key(0),
           (0, np.random.default_rng(0), torch.Generator(), jax.random.split(jax.random.key(0), 2)))
TORCH = Side("torch", tl, tsde, td, tr, torch.as_tensor, lambda: torch.Generator().manual_seed(0),
             (0, np.random.default_rng(0), jax.random.key(0)))


def _cases(S: Side):
    """``(id, thunk, exception type, strings the message must contain)`` for side ``S``."""
    L, SDE, D, R, arr = S.losses, S.sde, S.diffusion, S.resample, S.arr
    is_jax = S is JAX
    x = arr(np.zeros((4, 2)))
    z = arr(np.zeros((4, 2)))
    t = arr(np.full(4, 0.5))
    labels = arr(np.array([0, 1, 2, 3]))
    nan_x = arr(np.array([[0.0, NAN]] * 4))
    good = lambda xx, tt: xx  # noqa: E731
    flat = lambda xx, tt: xx[:, 0]  # noqa: E731
    as_int = (lambda xx, tt: xx.astype(jnp.int32)) if is_jax else (lambda xx, tt: xx.long())
    none = lambda xx, tt: None  # noqa: E731
    vp, ve = SDE.VPSDE(), SDE.VESDE()
    other_vp = tsde.VPSDE() if is_jax else jsde.VPSDE()
    sig = schedules.geometric_sigmas(1.0, 0.01, 4)

    def loss_call(fn, x_):
        return (lambda: fn(S.key(), good, x_)) if is_jax else (lambda: fn(good, x_, generator=S.key()))

    def loss_rng(fn, rng):
        return (lambda: fn(rng, good, x)) if is_jax else (lambda: fn(good, x, generator=rng))

    rng_name = "rng" if is_jax else "generator"
    c = [
        # -------- losses: options, data, noise, time, user functions, SDE, randomness
        ("sde_loss reduce_mean='yes'", lambda: L.sde_loss(vp, good, x, t, z, reduce_mean="yes"),
         TypeError, ["reduce_mean"]),
        ("sde_loss likelihood_weighting='yes'",
         lambda: L.sde_loss(vp, good, x, t, z, likelihood_weighting="yes"), TypeError,
         ["likelihood_weighting"]),
        ("sde_loss NaN x", lambda: L.sde_loss(vp, good, nan_x, t, z), ValueError, ["x", "NaN"]),
        ("sde_loss NaN z", lambda: L.sde_loss(vp, good, x, t, nan_x), ValueError, ["noise z", "NaN"]),
        ("sde_loss inf t", lambda: L.sde_loss(vp, good, x, arr(np.array([0.5, np.inf, 0.5, 0.5])), z),
         ValueError, ["t", "NaN or Inf"]),
        ("sde_loss t out of range", lambda: L.sde_loss(vp, good, x, arr(np.full(4, 1.5)), z),
         ValueError, ["t must lie in"]),
        ("sde_loss scalar x", lambda: L.sde_loss(vp, good, arr(np.float64(1.0)), t, z),
         ValueError, ["x"]),
        ("sde_loss score_fn wrong shape", lambda: L.sde_loss(vp, flat, x, t, z), ValueError,
         ["score_fn returned shape (4,) for x of shape (4, 2)"]),
        ("sde_loss score_fn int output", lambda: L.sde_loss(vp, as_int, x, t, z), TypeError,
         ["score_fn", "int"]),
        ("sde_loss score_fn returns None", lambda: L.sde_loss(vp, none, x, t, z), TypeError,
         ["score_fn", "NoneType"]),
        ("sde_loss score_fn not callable", lambda: L.sde_loss(vp, "fn", x, t, z), TypeError,
         ["score_fn", "callable"]),
        ("sde_loss sde a string", lambda: L.sde_loss("vpsde", good, x, t, z), TypeError, ["sde"]),
        ("sde_loss sde of the other side", lambda: L.sde_loss(other_vp, good, x, t, z), TypeError,
         ["sde"]),
        ("ddpm_loss model_fn wrong shape", lambda: L.ddpm_loss(vp, flat, x, labels, z), ValueError,
         ["model_fn returned shape"]),
        ("ddpm_loss reduce_mean=1", lambda: L.ddpm_loss(vp, good, x, labels, z, reduce_mean=1),
         TypeError, ["reduce_mean"]),
        ("ddpm_loss sub-VP", lambda: L.ddpm_loss(SDE.subVPSDE(), good, x, labels, z), TypeError,
         ["sde", "VPSDE"]),
        ("ddpm_loss labels too large", lambda: L.ddpm_loss(vp, good, x, arr(np.array([0, 1, 2, 1000])), z),
         ValueError, ["labels must lie in [0, 1000)"]),
        ("ddpm_loss labels batch mismatch", lambda: L.ddpm_loss(vp, good, x, arr(np.array([0, 1])), z),
         ValueError, ["batch mismatch", "labels"]),
        ("smld_loss float labels", lambda: L.smld_loss(ve, good, x, t, z), TypeError, ["labels"]),
        ("smld_loss model_fn returns None", lambda: L.smld_loss(ve, none, x, labels, z), TypeError,
         ["model_fn"]),
        ("smld_loss VP sde", lambda: L.smld_loss(vp, good, x, labels, z), TypeError, ["sde", "VESDE"]),
        ("smld_loss NaN x", lambda: L.smld_loss(ve, good, nan_x, labels, z), ValueError, ["x"]),
        ("anneal_dsm_loss NaN sigmas",
         lambda: L.anneal_dsm_loss(good, x, labels, z, np.array([1.0, NAN, 0.1, 0.01])), ValueError,
         ["sigmas"]),
        ("anneal_dsm_loss negative sigmas",
         lambda: L.anneal_dsm_loss(good, x, labels, z, np.array([1.0, -1.0, 0.1, 0.01])), ValueError,
         ["sigmas"]),
        ("anneal_dsm_loss score_fn wrong shape", lambda: L.anneal_dsm_loss(flat, x, labels, z, sig),
         ValueError, ["score_fn returned shape"]),
        ("anneal_dsm_loss anneal_power str",
         lambda: L.anneal_dsm_loss(good, x, labels, z, sig, anneal_power="2"), TypeError,
         ["anneal_power"]),
        ("anneal_dsm_loss label out of ladder",
         lambda: L.anneal_dsm_loss(good, x, arr(np.array([0, 1, 2, 4])), z, sig), ValueError,
         ["labels must lie in [0, 4)"]),
        ("get_sde_loss_fn reduce_mean='yes'", lambda: L.get_sde_loss_fn(vp, reduce_mean="yes"),
         TypeError, ["reduce_mean"]),
        ("get_sde_loss_fn likelihood_weighting=1",
         lambda: L.get_sde_loss_fn(vp, likelihood_weighting=1), TypeError, ["likelihood_weighting"]),
        ("get_sde_loss_fn eps str", lambda: L.get_sde_loss_fn(vp, eps="1e-5"), TypeError, ["eps"]),
        ("get_sde_loss_fn eps=0", lambda: L.get_sde_loss_fn(vp, eps=0.0), ValueError, ["eps"]),
        ("get_sde_loss_fn sde None", lambda: L.get_sde_loss_fn(None), TypeError, ["sde"]),
        ("get_smld_loss_fn VP sde", lambda: L.get_smld_loss_fn(vp), TypeError, ["sde", "VESDE"]),
        ("get_ddpm_loss_fn VE sde", lambda: L.get_ddpm_loss_fn(ve), TypeError, ["sde", "VPSDE"]),
        ("get_ddpm_loss_fn reduce_mean='no'", lambda: L.get_ddpm_loss_fn(vp, reduce_mean="no"),
         TypeError, ["reduce_mean"]),
        ("get_anneal_dsm_loss_fn NaN sigmas", lambda: L.get_anneal_dsm_loss_fn([1.0, NAN]),
         ValueError, ["sigmas"]),
        ("get_anneal_dsm_loss_fn anneal_power None", lambda: L.get_anneal_dsm_loss_fn(sig, None),
         TypeError, ["anneal_power"]),
        ("sde loss_fn NaN x", loss_call(L.get_sde_loss_fn(vp), nan_x), ValueError, ["x", "NaN"]),
        ("ddpm loss_fn int x", loss_call(L.get_ddpm_loss_fn(vp), arr(np.zeros((4, 2), np.int32))),
         TypeError, ["x"]),
    ]
    for i, bad in enumerate(S.bad_rng):
        for fname, fn in (("sde", L.get_sde_loss_fn(vp)), ("smld", L.get_smld_loss_fn(ve)),
                          ("anneal_dsm", L.get_anneal_dsm_loss_fn(sig))):
            c.append((f"{fname} loss_fn bad {rng_name} #{i} ({type(bad).__name__})",
                      loss_rng(fn, bad), TypeError, [rng_name]))

    # -------- SDEs
    if is_jax:
        prior = lambda rng, shape, dtype=jnp.float32: vp.prior_sampling(rng, shape, dtype)  # noqa: E731
        key = jax.random.key(0)
        c += [(f"prior_sampling bad rng #{i} ({type(b).__name__})", lambda b=b: prior(b, (2, 2)),
               TypeError, ["rng"]) for i, b in enumerate(S.bad_rng)]
        c += [("prior_sampling int dtype", lambda: prior(key, (2,), jnp.int32), TypeError, ["dtype"]),
              ("prior_sampling zero batch", lambda: prior(key, (0, 2)), ValueError, ["shape[0]"]),
              ("prior_sampling float shape", lambda: prior(key, (2.0,)), TypeError, ["shape[0]"]),
              ("prior_sampling shape int", lambda: prior(key, 4), TypeError, ["shape"])]
    else:
        prior = lambda g, shape, dtype=torch.float32: vp.prior_sampling(shape, dtype, generator=g)  # noqa: E731
        g = torch.Generator().manual_seed(0)
        c += [(f"prior_sampling bad generator #{i} ({type(b).__name__})", lambda b=b: prior(b, (2, 2)),
               TypeError, ["generator"]) for i, b in enumerate(S.bad_rng)]
        c += [("prior_sampling int dtype", lambda: prior(g, (2,), torch.int64), TypeError, ["dtype"]),
              ("prior_sampling jnp dtype", lambda: prior(g, (2,), jnp.float32), TypeError, ["dtype"]),
              ("prior_sampling zero batch", lambda: prior(g, (0, 2)), ValueError, ["shape[0]"]),
              ("prior_sampling float shape", lambda: prior(g, (2.0,)), TypeError, ["shape[0]"]),
              ("prior_sampling shape int", lambda: prior(g, 4), TypeError, ["shape"])]
    c += [
        ("reverse probability_flow='yes'", lambda: vp.reverse(good, probability_flow="yes"),
         TypeError, ["probability_flow"]),
        ("reverse probability_flow=1", lambda: ve.reverse(good, 1), TypeError, ["probability_flow"]),
        ("reverse score_fn not callable", lambda: vp.reverse(None), TypeError, ["score_fn"]),
        ("reverse sde score_fn wrong shape", lambda: vp.reverse(flat).sde(x, t), ValueError,
         ["score_fn returned shape (4,) for x of shape (4, 2)"]),
        ("reverse discretize score_fn int", lambda: ve.reverse(as_int).discretize(x, t), TypeError,
         ["score_fn"]),
        ("reverse score_fn returns tuple", lambda: vp.reverse(lambda a, b: (a,)).sde(x, t), TypeError,
         ["score_fn"]),
        ("marginal_prob NaN t", lambda: vp.marginal_prob(x, arr(np.full(4, NAN))), ValueError, ["t"]),
        ("sde int x", lambda: vp.sde(arr(np.zeros((4, 2), np.int64)), t), TypeError, ["x"]),
        ("discretize t [B, 1]", lambda: ve.discretize(x, arr(np.full((4, 1), 0.5))), ValueError, ["t"]),
        ("VPSDE beta_min < 0", lambda: SDE.VPSDE(beta_min=-1.0), ValueError, ["beta_min"]),
        ("VPSDE beta_min > beta_max", lambda: SDE.VPSDE(beta_min=5.0, beta_max=1.0), ValueError,
         ["beta_min"]),
        ("VPSDE beta_max str", lambda: SDE.VPSDE(beta_max="20"), TypeError, ["beta_max"]),
        ("VPSDE N=0", lambda: SDE.VPSDE(N=0), ValueError, ["N"]),
        ("subVPSDE N float", lambda: SDE.subVPSDE(N=10.0), TypeError, ["N"]),
        ("VESDE sigma_min >= sigma_max", lambda: SDE.VESDE(sigma_min=1.0, sigma_max=0.5), ValueError,
         ["sigma_min"]),
        ("VESDE sigma_max NaN", lambda: SDE.VESDE(sigma_max=NAN), ValueError, ["sigma_max"]),
    ]

    # -------- the discrete diffusion
    cfg = spec.DiffusionConfig(steps=4, noise_schedule="cosine")
    learned = spec.DiffusionConfig(steps=4, noise_schedule="cosine", model_var_type="learned_range")
    d, dl = D.GaussianDiffusion(cfg), D.GaussianDiffusion(learned)
    ti = arr(np.array([0, 1, 2, 3]))
    noise_T = arr(np.zeros((4, 4, 2)))
    bad_key = 0
    c += [
        ("GaussianDiffusion config str", lambda: D.GaussianDiffusion("linear"), TypeError, ["config"]),
        ("GaussianDiffusion dtype int", lambda: D.GaussianDiffusion(cfg, dtype=jnp.int32 if is_jax
                                                                     else torch.int64),
         TypeError, ["dtype"]),
        ("GaussianDiffusion dtype garbage", lambda: D.GaussianDiffusion(cfg, dtype="foo"), TypeError,
         ["dtype"]),
        ("GaussianDiffusion channel_axis=0", lambda: D.GaussianDiffusion(cfg, channel_axis=0),
         ValueError, ["channel_axis"]),
        ("GaussianDiffusion channel_axis str", lambda: D.GaussianDiffusion(cfg, channel_axis="1"),
         TypeError, ["channel_axis"]),
        ("training_losses NaN x_start", lambda: d.training_losses(good, nan_x, ti, z), ValueError,
         ["x_start", "NaN"]),
        ("training_losses NaN noise", lambda: d.training_losses(good, x, ti, nan_x), ValueError,
         ["noise", "NaN"]),
        ("training_losses noise shape", lambda: d.training_losses(good, x, ti, arr(np.zeros((4, 3)))),
         ValueError, ["noise must have the shape of x_start"]),
        ("training_losses model_fn wrong shape", lambda: d.training_losses(flat, x, ti, z), ValueError,
         ["model_fn returned shape (4,) for x of shape (4, 2)"]),
        ("training_losses model_fn int output", lambda: d.training_losses(as_int, x, ti, z), TypeError,
         ["model_fn"]),
        ("training_losses model_fn None output", lambda: d.training_losses(none, x, ti, z), TypeError,
         ["model_fn"]),
        ("training_losses model_fn not callable", lambda: d.training_losses(3, x, ti, z), TypeError,
         ["model_fn"]),
        ("training_losses learned variance x-shaped output",
         lambda: dl.training_losses(good, x, ti, z), ValueError,
         ["model_fn returned shape (4, 2)", "model_output must have shape (4, 4)"]),
        ("training_losses float t", lambda: d.training_losses(good, x, t, z), TypeError, ["t"]),
        ("training_losses t out of range", lambda: d.training_losses(good, x, arr(np.array([0, 1, 2, 4])), z),
         ValueError, ["t must lie in [0, num_timesteps)"]),
        ("q_sample scalar x_start", lambda: d.q_sample(arr(np.float64(0.0)), ti, z), ValueError,
         ["x_start"]),
        ("q_sample NaN noise", lambda: d.q_sample(x, ti, nan_x), ValueError, ["noise"]),
        ("q_posterior NaN x_start", lambda: d.q_posterior_mean_variance(nan_x, x, ti), ValueError,
         ["x_start"]),
        ("p_mean_variance clip_denoised='yes'",
         lambda: d.p_mean_variance(good, x, ti, clip_denoised="yes"), TypeError, ["clip_denoised"]),
        ("p_mean_variance denoised_fn=3", lambda: d.p_mean_variance(good, x, ti, denoised_fn=3),
         TypeError, ["denoised_fn"]),
        ("p_mean_variance model_fn wrong shape", lambda: d.p_mean_variance(flat, x, ti), ValueError,
         ["model_fn returned shape"]),
        ("p_mean_variance_from_output int output",
         lambda: d.p_mean_variance_from_output(arr(np.zeros((4, 2), np.int32)), x, ti), TypeError,
         ["model_output"]),
        ("p_mean_variance_from_output clip_denoised=None",
         lambda: d.p_mean_variance_from_output(z, x, ti, clip_denoised=None), TypeError,
         ["clip_denoised"]),
        ("vb_terms_bpd model_fn wrong shape", lambda: d.vb_terms_bpd(flat, x, x, ti), ValueError,
         ["model_fn returned shape"]),
        ("vb_terms_bpd clip_denoised=1", lambda: d.vb_terms_bpd(good, x, x, ti, clip_denoised=1),
         TypeError, ["clip_denoised"]),
        ("vb_terms_bpd_from_output wrong shape",
         lambda: d.vb_terms_bpd_from_output(arr(np.zeros((4, 3))), x, x, ti), ValueError,
         ["model_output"]),
        ("calc_bpd_loop NaN noise", lambda: d.calc_bpd_loop(good, x, arr(np.full((4, 4, 2), NAN))),
         ValueError, ["noise", "NaN"]),
        ("calc_bpd_loop noise shape", lambda: d.calc_bpd_loop(good, x, arr(np.zeros((3, 4, 2)))),
         ValueError, ["noise must have shape [T, B, ...]"]),
        ("calc_bpd_loop model_fn None output", lambda: d.calc_bpd_loop(none, x, noise_T), TypeError,
         ["model_fn"]),
        ("calc_bpd_loop model_fn wrong shape", lambda: d.calc_bpd_loop(flat, x, noise_T), ValueError,
         ["model_fn returned shape"]),
        ("calc_bpd_loop clip_denoised='no'", lambda: d.calc_bpd_loop(good, x, noise_T, clip_denoised="no"),
         TypeError, ["clip_denoised"]),
        ("prior_bpd NaN x_start", lambda: d.prior_bpd(nan_x), ValueError, ["x_start"]),
        ("scale_timesteps float t", lambda: d.scale_timesteps(t), TypeError, ["t"]),
        ("scale_timesteps t out of range", lambda: d.scale_timesteps(arr(np.array([9]))), ValueError,
         ["t must lie in"]),
        ("predict_xstart_from_eps eps shape",
         lambda: d.predict_xstart_from_eps(x, ti, arr(np.zeros((4, 3)))), ValueError,
         ["eps must have the shape of x_t"]),
    ]
    if is_jax:
        c += [
            ("calc_bpd_loop_random rng=0", lambda: d.calc_bpd_loop_random(bad_key, good, x), TypeError,
             ["rng"]),
            ("calc_bpd_loop_random torch Generator",
             lambda: d.calc_bpd_loop_random(torch.Generator(), good, x), TypeError, ["rng"]),
            ("sample_timesteps_uniform rng=0", lambda: D.sample_timesteps_uniform(0, 4, 10), TypeError,
             ["rng"]),
            ("sample_timesteps_uniform batch of keys",
             lambda: D.sample_timesteps_uniform(jax.random.split(jax.random.key(0), 2), 4, 10),
             TypeError, ["rng"]),
        ]
    else:
        c += [
            ("calc_bpd_loop_random generator=0",
             lambda: d.calc_bpd_loop_random(good, x, generator=0), TypeError, ["generator"]),
            ("sample_timesteps_uniform generator=0",
             lambda: D.sample_timesteps_uniform(4, 10, generator=0), TypeError, ["generator"]),
            ("q_sample numpy x_start", lambda: d.q_sample(np.zeros((4, 2)), ti, z), TypeError,
             ["x_start", "torch.Tensor"]),
            ("training_losses numpy noise", lambda: d.training_losses(good, x, ti, np.zeros((4, 2))),
             TypeError, ["noise", "torch.Tensor"]),
        ]

    # -------- timestep resamplers
    if is_jax:
        key = jax.random.key(0)
        lsm = R.LossSecondMomentResampler(4)
        state = lsm.init()
        c += [
            ("sample_from_weights rng=0", lambda: R.sample_from_weights(0, jnp.ones(4), 2), TypeError,
             ["rng"]),
            ("sample_from_weights numpy Generator",
             lambda: R.sample_from_weights(np.random.default_rng(0), jnp.ones(4), 2), TypeError, ["rng"]),
            ("sample_from_weights NaN weights",
             lambda: R.sample_from_weights(key, jnp.array([1.0, NAN]), 2), ValueError, ["weights"]),
            ("sample_from_weights negative weights",
             lambda: R.sample_from_weights(key, jnp.array([1.0, -1.0]), 2), ValueError, ["weights"]),
            ("sample_from_weights zero weights",
             lambda: R.sample_from_weights(key, jnp.zeros(3), 2), ValueError, ["weights"]),
            ("sample_from_weights int weights",
             lambda: R.sample_from_weights(key, jnp.ones(3, int), 2), TypeError, ["weights"]),
            ("sample_from_weights batch_size=0", lambda: R.sample_from_weights(key, jnp.ones(3), 0),
             ValueError, ["batch_size"]),
            ("UniformSampler.sample rng=0", lambda: R.UniformSampler(4).sample(0, None, 2), TypeError,
             ["rng"]),
            ("update NaN losses", lambda: lsm.update(state, jnp.array([0, 1]), jnp.array([1.0, NAN])),
             ValueError, ["losses"]),
            ("update float t", lambda: lsm.update(state, jnp.array([0.0, 1.0]), jnp.ones(2)),
             TypeError, ["t"]),
            ("update t out of range", lambda: lsm.update(state, jnp.array([0, 4]), jnp.ones(2)),
             ValueError, ["t must lie in [0, num_timesteps)"]),
            ("update state tuple", lambda: lsm.update((1, 2), jnp.array([0]), jnp.ones(1)), TypeError,
             ["state"]),
            ("init int dtype", lambda: lsm.init(dtype=jnp.int32), TypeError, ["dtype"]),
            ("UniformSampler.weights int dtype", lambda: R.UniformSampler(4).weights(None, jnp.int32),
             TypeError, ["dtype"]),
        ]
    else:
        lsm = R.LossSecondMomentResampler(4)
        c += [
            ("sample_from_weights generator=0",
             lambda: R.sample_from_weights(np.ones(4), 2, generator=0), TypeError, ["generator"]),
            ("sample_from_weights NaN weights", lambda: R.sample_from_weights([1.0, NAN], 2), ValueError,
             ["weights"]),
            ("sample_from_weights negative weights", lambda: R.sample_from_weights([1.0, -1.0], 2),
             ValueError, ["weights"]),
            ("sample_from_weights zero weights", lambda: R.sample_from_weights(np.zeros(3), 2),
             ValueError, ["weights"]),
            ("sample_from_weights 2-D weights", lambda: R.sample_from_weights(np.ones((2, 2)), 2),
             ValueError, ["weights"]),
            ("sample_from_weights int dtype",
             lambda: R.sample_from_weights(np.ones(3), 2, dtype=torch.int64), TypeError, ["dtype"]),
            ("sample_from_weights batch_size=0", lambda: R.sample_from_weights(np.ones(3), 0),
             ValueError, ["batch_size"]),
            ("UniformSampler.sample generator jax key",
             lambda: R.UniformSampler(4).sample(2, generator=jax.random.key(0)), TypeError,
             ["generator"]),
            ("update_with_all_losses NaN losses", lambda: lsm.update_with_all_losses([0, 1], [1.0, NAN]),
             ValueError, ["losses"]),
            ("update_with_all_losses float ts", lambda: lsm.update_with_all_losses([0.0, 1.0], [1.0, 1.0]),
             TypeError, ["ts"]),
            ("update_with_all_losses ts out of range",
             lambda: lsm.update_with_all_losses([0, 4], [1.0, 1.0]), ValueError,
             ["ts must lie in [0, num_timesteps)"]),
            ("update_with_all_losses shape", lambda: lsm.update_with_all_losses([0, 1], [1.0]),
             ValueError, ["ts and losses"]),
        ]
    c += [
        ("create_named_schedule_sampler unknown", lambda: R.create_named_schedule_sampler("lsm", 4),
         ValueError, ["schedule sampler name"]),
        ("create_named_schedule_sampler None", lambda: R.create_named_schedule_sampler(None, 4),
         ValueError, ["schedule sampler name"]),
        ("LossSecondMomentResampler uniform_prob str",
         lambda: R.LossSecondMomentResampler(4, uniform_prob="0.1"), TypeError, ["uniform_prob"]),
        ("LossSecondMomentResampler uniform_prob > 1",
         lambda: R.LossSecondMomentResampler(4, uniform_prob=1.5), ValueError, ["uniform_prob"]),
        ("LossSecondMomentResampler history_per_term=0",
         lambda: R.LossSecondMomentResampler(4, history_per_term=0), ValueError, ["history_per_term"]),
        ("UniformSampler num_timesteps=0", lambda: R.UniformSampler(0), ValueError, ["num_timesteps"]),
        ("UniformSampler num_timesteps str", lambda: R.UniformSampler("4"), TypeError, ["num_timesteps"]),
    ]
    return [(f"{S.name}: {name}", *rest) for name, *rest in c]


def _spec_cases():
    return [(f"spec: {name}", *rest) for name, *rest in [
        ("DiffusionConfig rescale_timesteps='yes'",
         lambda: spec.DiffusionConfig(rescale_timesteps="yes"), TypeError, ["rescale_timesteps"]),
        ("DiffusionConfig rescale_timesteps=1", lambda: spec.DiffusionConfig(rescale_timesteps=1),
         TypeError, ["rescale_timesteps"]),
        ("DiffusionConfig steps str", lambda: spec.DiffusionConfig(steps="10"), TypeError, ["steps"]),
        ("DiffusionConfig steps=0", lambda: spec.DiffusionConfig(steps=0), ValueError, ["steps"]),
        ("DiffusionConfig noise_schedule", lambda: spec.DiffusionConfig(noise_schedule="sqrt"),
         ValueError, ["noise_schedule"]),
        ("DiffusionConfig model_var_type", lambda: spec.DiffusionConfig(model_var_type="big"),
         ValueError, ["model_var_type"]),
        ("DiffusionConfig loss_type int", lambda: spec.DiffusionConfig(loss_type=3), ValueError,
         ["loss_type"]),
        ("DiffusionConfig timestep_respacing int", lambda: spec.DiffusionConfig(timestep_respacing=50),
         TypeError, ["timestep_respacing"]),
        ("DiffusionConfig respacing too many", lambda: spec.DiffusionConfig(steps=30, timestep_respacing="40"),
         ValueError, ["30"]),
        ("VPSDEConfig N str", lambda: spec.VPSDEConfig(N="1000"), TypeError, ["N"]),
        ("VESDEConfig sigma_min=0", lambda: spec.VESDEConfig(sigma_min=0.0), ValueError, ["sigma_min"]),
        ("VPSDEConfig discrete betas >= 1", lambda: spec.VPSDEConfig(N=10).discrete_betas, ValueError,
         ["N > beta_max"]),
        ("diffusion_tables NaN betas", lambda: schedules.diffusion_tables([0.1, NAN]), ValueError,
         ["betas", "NaN"]),
        ("diffusion_tables betas > 1", lambda: schedules.diffusion_tables([0.1, 2.0]), ValueError,
         ["betas"]),
        ("respace_betas NaN betas", lambda: schedules.respace_betas([NAN, 0.1], [0]), ValueError,
         ["betas"]),
        ("respace_betas float index", lambda: schedules.respace_betas([0.1, 0.1], [0.5]), TypeError,
         ["use_timesteps"]),
        ("betas_for_alpha_bar not callable", lambda: schedules.betas_for_alpha_bar(10, 0.5), TypeError,
         ["alpha_bar"]),
        ("betas_for_alpha_bar max_beta str",
         lambda: schedules.betas_for_alpha_bar(10, lambda s: 1 - s, max_beta="0.9"), TypeError,
         ["max_beta"]),
        ("get_named_beta_schedule unknown", lambda: schedules.get_named_beta_schedule("quad", 10),
         ValueError, ["noise_schedule"]),
        ("geometric_sigmas sigma_end=0", lambda: schedules.geometric_sigmas(1.0, 0.0, 10), ValueError,
         ["sigma_end"]),
    ]]


CASES = _cases(JAX) + _cases(TORCH) + _spec_cases()


def test_catalogue_is_large_and_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 200, len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_wrong_call(case):
    _, thunk, exc, names = case
    _raises(exc, thunk, *names)


def test_wrong_calls_raise_before_jit_compiles():
    """Inside ``jax.jit`` the wrong shape or dtype of what a user function returns, a bad
    option and a non-key rng are caught at trace time, by the project's own checks."""
    x = jnp.zeros((4, 2))
    vp = jsde.VPSDE()
    fn = jl.get_sde_loss_fn(vp)
    _raises(ValueError, lambda: jax.jit(lambda k: fn(k, lambda a, b: a[:, 0], x))(jax.random.key(0)),
            "score_fn returned shape")
    _raises(TypeError, lambda: jax.jit(lambda k: fn(k, lambda a, b: a.astype(int), x))(jax.random.key(0)),
            "score_fn")
    _raises(TypeError, lambda: jax.jit(lambda k: fn(k, lambda a, b: a, x))(jnp.zeros(2)), "rng")
    d = jd.GaussianDiffusion(spec.DiffusionConfig(steps=4, noise_schedule="cosine"))
    ti = jnp.array([0, 1, 2, 3])
    _raises(ValueError, lambda: jax.jit(lambda a: d.training_losses(lambda u, s: u[0], a, ti, a))(x),
            "model_fn returned shape")
    rsde = vp.reverse(lambda a, b: a.sum(-1))
    _raises(ValueError, lambda: jax.jit(lambda a: rsde.sde(a, jnp.full(4, 0.5)))(x), "score_fn")
