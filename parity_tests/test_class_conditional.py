"""Class-conditional networks and training with labels: the MLP's ``label_emb``
(jax_impl/models/mlp.py <-> torch_ref/models/mlp.py: outputs and input gradients agree),
``y=`` required iff ``num_classes > 0``; ``training.label_dropout`` (validation, the measured
rate, independence from the batch layout, t / noise draws unchanged); train steps on
``(x, y)`` batches (JAX == torch from the same numpy draws, deterministic, every entry
point); the class-conditional digits example's ``--tiny`` run.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import spec
from jax_impl import train as jt
from jax_impl.models import registry as jreg
from jax_impl.models.mlp import MLP as JMLP
from parity_tests.helpers import tol
from spec.convert import flax_to_torch, torch_to_flax
from spec.keytables import mlp_key_table
from spec.model_configs import MLPConfig
from spec.train_config import RunConfig, TrainConfig, null_label
from torch_ref import train as tt
from torch_ref.models.mlp import MLP as TMLP

ROOT = Path(__file__).resolve().parents[1]
F32 = tol(np.float32)
VEC = MLPConfig(data_dim=2, hidden_dims=(16, 16), embedding_dim=8, num_classes=4)
IMG = MLPConfig(data_dim=16, image_size=4, num_channels=1, hidden_dims=(16,), embedding_dim=8,
                num_classes=3, learn_sigma=True)


def key_table(cfg):
    """The MLP's key table, class embedding included (``label_emb.weight [K, 4E]`` <->
    ``params/label_emb/embedding``; torch registers it after ``temb_proj``)."""
    table = mlp_key_table(cfg)
    assert ("label_emb.weight" in [km.torch_key for km in table]) == bool(cfg.num_classes)
    return table


def _to_torch(cfg, variables, module):
    sd = flax_to_torch(jax.tree_util.tree_map(np.asarray, variables), key_table(cfg))
    assert list(sd) == list(module.state_dict())       # the table's order is the state_dict's
    module.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()})


# ------------------------------------------------------------------------ the network


@pytest.mark.parametrize("cfg", [VEC, IMG], ids=["vectors", "images_learn_sigma"])
def test_mlp_label_emb_parity_outputs_and_input_gradients(cfg, np_rng):
    model = JMLP(cfg)
    variables = jreg.init_variables(cfg, jax.random.key(0))   # init without y builds label_emb
    assert variables["params"]["label_emb"]["embedding"].shape == (cfg.num_classes, cfg.temb_dim)
    tm = TMLP(cfg).double()
    _to_torch(cfg, jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables), tm)
    B = 5
    shape = (B, cfg.image_size, cfg.image_size, 1) if cfg.image_size else (B, cfg.data_dim)
    x = np_rng.standard_normal(shape)
    t = np_rng.uniform(0.1, 999, B)
    y = np_rng.integers(0, cfg.num_classes, B)
    v64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
    f = lambda xx: model.apply(v64, xx, jnp.asarray(t), y=jnp.asarray(y))  # noqa: E731
    out_j = f(jnp.asarray(x))
    g_j = jax.grad(lambda xx: jnp.sum(f(xx) ** 2))(jnp.asarray(x))
    xt = torch.as_tensor(np.moveaxis(x, -1, 1).copy() if cfg.image_size else x).requires_grad_(True)
    out_t = tm(xt, torch.as_tensor(t), y=torch.as_tensor(y))
    (g_t,) = torch.autograd.grad((out_t ** 2).sum(), xt)
    back = (lambda a: np.moveaxis(a.detach().numpy(), 1, -1)) if cfg.image_size else (lambda a: a.detach().numpy())
    # float32 tolerance: both sides compute the timestep embedding in float32 (DDPM's rule)
    np.testing.assert_allclose(np.asarray(out_j), back(out_t), **tol(np.float32))
    np.testing.assert_allclose(np.asarray(g_j), back(g_t), **tol(np.float32))
    # the class changes the output; the embedding is the only class path
    other = model.apply(v64, jnp.asarray(x), jnp.asarray(t), y=jnp.asarray((y + 1) % cfg.num_classes))
    assert not np.allclose(np.asarray(out_j), np.asarray(other))
    # and back: torch -> flax is exact
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    again = torch_to_flax(sd, key_table(cfg))
    np.testing.assert_array_equal(again["params"]["label_emb"]["embedding"],
                                  np.asarray(v64["params"]["label_emb"]["embedding"]))


def test_y_required_iff_class_conditional():
    x, t = jnp.zeros((2, 2)), jnp.ones(2)
    model = JMLP(VEC)
    v = jreg.init_variables(VEC, jax.random.key(0))
    with pytest.raises(ValueError, match=r"y: this MLP is class-conditional \(num_classes=4\)"):
        model.apply(v, x, t)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 4\)"):
        model.apply(v, x, t, y=jnp.array([0, 4]))
    with pytest.raises(ValueError, match=r"y must have shape \[B\] = \[2\]"):
        model.apply(v, x, t, y=jnp.array([0, 1, 2]))
    with pytest.raises(TypeError, match="y must hold integer"):
        model.apply(v, x, t, y=jnp.array([0.0, 1.0]))
    plain = dataclasses.replace(VEC, num_classes=0)
    vp = jreg.init_variables(plain, jax.random.key(0))
    assert "label_emb" not in vp["params"]
    with pytest.raises(ValueError, match="y: this MLP is unconditional"):
        JMLP(plain).apply(vp, x, t, y=jnp.array([0, 1]))
    tm = TMLP(VEC)
    with pytest.raises(ValueError, match="y: this MLP is class-conditional"):
        tm(torch.zeros(2, 2), torch.ones(2))
    with pytest.raises(ValueError, match=r"y must lie in \[0, 4\)"):
        tm(torch.zeros(2, 2), torch.ones(2), y=torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="y: this MLP is unconditional"):
        TMLP(plain)(torch.zeros(2, 2), torch.ones(2), y=torch.tensor([0, 1]))


# ------------------------------------------------------------------- configuration


def _cfg(model=VEC, p=0.25, process=None, extra=()):
    train = TrainConfig().with_overrides(["training.batch_size=8", "optim.warmup=2", "optim.lr=1e-2",
                                          "model.ema_rate=0.9", f"training.label_dropout={p}", *extra])
    return RunConfig(model=model, train=train, process=process or spec.VPSDEConfig())


def test_label_dropout_config():
    assert null_label(VEC) == 3
    assert _cfg().train.training.label_dropout == 0.25
    with pytest.raises(ValueError, match=r"training.label_dropout must lie in \[0, 1\)"):
        _cfg(p=1.0)
    with pytest.raises(ValueError, match="label_dropout=0.1 .* needs a class-conditional model with "
                                         "num_classes >= 2; MLPConfig has num_classes=1"):
        _cfg(model=dataclasses.replace(VEC, num_classes=1), p=0.1)
    with pytest.raises(ValueError, match="num_classes=0"):
        _cfg(model=dataclasses.replace(VEC, num_classes=0), p=0.1)
    with pytest.raises(ValueError, match="null_label"):
        null_label(dataclasses.replace(VEC, num_classes=0))
    cfg = _cfg(p=0.0)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_run_config_accepts_unet_model_config():
    unet = pytest.importorskip("spec.unet_model")
    fields = {f.name for f in dataclasses.fields(unet.UNetModelConfig)}
    kw = {"num_classes": 10} if "num_classes" in fields else {}
    model = unet.UNetModelConfig(**kw)
    process = spec.DiffusionConfig(steps=100, model_var_type="learned_range" if model.learn_sigma else "fixed_small")
    cfg = RunConfig(model=model, process=process,
                    train=TrainConfig().with_overrides(["training.label_dropout=0.1"] if kw else []))
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


# ------------------------------------------------------------------ label dropout


def test_label_dropout_rate_layout_and_slots():
    """Measured rate within 4 standard errors; example i's decision depends only on
    (step key, i), so the first rows of a bigger batch decide the same; t and the noise are
    the draws of the same run without labels (their fold_in slots are unchanged)."""
    cfg = _cfg(p=0.25)
    state = None  # neither draw reads the state for an SDE loss (the argument is the twin's)
    key = jax.random.key(7)
    n = 20_000
    drop = np.asarray(jax.jit(lambda k: jt.draw_label_drop(k, cfg, state, jnp.zeros((n, 2))))(key))
    assert drop.dtype == bool
    se = math.sqrt(0.25 * 0.75 / n)
    assert abs(drop.mean() - 0.25) < 4 * se, drop.mean()
    small = np.asarray(jax.jit(lambda k: jt.draw_label_drop(k, cfg, state, (jnp.zeros((64, 2)),
                                                                           jnp.zeros(64, jnp.int32))))(key))
    np.testing.assert_array_equal(small, drop[:64])
    assert not np.asarray(jt.draw_label_drop(key, _cfg(p=0.0), state, jnp.zeros((8, 2)))).any()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 2)))
    plain = _cfg(model=dataclasses.replace(VEC, num_classes=0), p=0.0)
    for a, b in zip(jax.jit(lambda k: jt.draw_randomness(k, cfg, state, (x, jnp.zeros(8, jnp.int32))))(key),
                    jax.jit(lambda k: jt.draw_randomness(k, plain, state, x))(key)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # torch: the mask is drawn after t and the noise from the same generator
    g = torch.Generator().manual_seed(3)
    mask = tt.draw_label_drop(cfg, None, torch.zeros(n, 2), generator=g)
    assert abs(mask.double().mean().item() - 0.25) < 4 * se


# --------------------------------------------------------------------- train steps


def _paired(cfg):
    js = jt.create_train_state(jax.random.key(3), cfg, dtype=jnp.float64)
    ts = tt.create_train_state(cfg, dtype=torch.float64)
    _to_torch(cfg.model, {"params": js.params, **js.constants}, ts.model)
    with torch.no_grad():
        for e in ts.ema:
            for k in e:
                e[k].copy_(ts.params[k])
    return js, ts


@pytest.mark.parametrize("extra", [(), ("training.microbatch=4",)], ids=["batch", "microbatch"])
def test_train_steps_jax_equals_torch(extra):
    """Three updates from the same numpy x, y, t, noise and dropout mask, SDE loss; float64
    weights, float32 tolerance (both sides compute the timestep embedding in float32)."""
    cfg = _cfg(p=0.25, extra=extra)
    js, ts = _paired(cfg)
    core = jax.jit(lambda s, b, t, z, d: jt.train_step_core(cfg, s, b, t, z, label_drop=d))
    rng = np.random.default_rng(5)
    for _ in range(3):
        x, z = rng.standard_normal((8, 2)), rng.standard_normal((8, 2))
        t = rng.uniform(1e-5, 1.0, 8)
        y = rng.integers(0, 3, 8)
        d = rng.uniform(size=8) < 0.25
        js, mj = core(js, (jnp.asarray(x), jnp.asarray(y)), jnp.asarray(t), jnp.asarray(z), jnp.asarray(d))
        ts, mt = tt.train_step_core(cfg, ts, (torch.as_tensor(x), torch.as_tensor(y)), torch.as_tensor(t),
                                    torch.as_tensor(z), label_drop=torch.as_tensor(d))
        for k in ("loss", "grad_norm", "lr"):
            np.testing.assert_allclose(float(mj[k]), mt[k], err_msg=k, **F32)
    sd = {k: v.detach().numpy() for k, v in ts.model.state_dict().items()}
    want = torch_to_flax(sd, key_table(cfg.model))["params"]
    for path, leaf in jax.tree_util.tree_leaves_with_path(js.params):
        np.testing.assert_allclose(np.asarray(leaf), _get(want, path), err_msg=jax.tree_util.keystr(path),
                                   **F32)


def _get(tree, path):
    for p in path:
        tree = tree[p.key]
    return np.asarray(tree)


def test_make_train_step_with_labels_is_deterministic_and_uses_the_drop_slot():
    """make_train_step on (x, y): two runs agree bit for bit; the step equals the core fed
    draw_randomness + draw_label_drop from fold_in(state.rng, step), and the core's own
    default draw is the same; steps_per_call stacks (x, y) pairs."""
    cfg = _cfg(p=0.5)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((8, 2)), jnp.float32)
    y = jnp.arange(8, dtype=jnp.int32) % 3
    step = jt.make_train_step(cfg, donate=False)
    s0 = jt.create_train_state(jax.random.key(0), cfg)
    a, ma = step(s0, (x, y))
    b, mb = step(s0, (x, y))
    assert float(ma["loss"]) == float(mb["loss"])
    key = jax.random.fold_in(s0.rng, s0.step)
    t, z, d = jax.jit(lambda k: (*jt.draw_randomness(k, cfg, None, (x, y)),
                                 jt.draw_label_drop(k, cfg, None, (x, y))))(key)
    assert 0 < int(d.sum()) < 8
    core = jax.jit(lambda s, yy, dd: jt.train_step_core(cfg, s, (x, yy), t, z, label_drop=dd))
    mc = core(s0, y, d)[1]
    me = jax.jit(lambda s: jt.train_step_core(cfg, s, (x, y), t, z))(s0)[1]   # the core's own draw
    # separately compiled programs may fuse differently: equal to float32 rounding
    np.testing.assert_allclose(float(mc["loss"]), float(ma["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(me["loss"]), float(ma["loss"]), rtol=1e-6)
    # dropping every label is the null class everywhere (same program: bit for bit)
    all_null = core(s0, jnp.full(8, 3, jnp.int32), jnp.zeros(8, bool))[1]
    all_drop = core(s0, y, jnp.ones(8, bool))[1]
    assert float(all_null["loss"]) == float(all_drop["loss"]) != float(mc["loss"])
    two = jt.make_train_step(cfg, donate=False, steps_per_call=2)
    s2, m2 = two(s0, (jnp.stack([x, x]), jnp.stack([y, y])))
    assert m2["loss"].shape == (2,) and int(s2.step) == 2
    with pytest.raises(ValueError, match=r"pass batch = \(x, y\)"):
        step(s0, x)
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, num_classes=4\)"):
        step(s0, (x, jnp.full(8, 4, jnp.int32)))
    with pytest.raises(ValueError, match=r"labels y must have shape \[8\]"):
        step(s0, (x, y[:4]))
    with pytest.raises(TypeError, match="labels y must be integers"):
        step(s0, (x, y.astype(jnp.float32)))
    plain = _cfg(model=dataclasses.replace(VEC, num_classes=0), p=0.0)
    with pytest.raises(ValueError, match="the model is unconditional"):  # raised before tracing
        jt.make_train_step(plain)(s0, (x, y))


def test_torch_make_train_step_with_labels():
    cfg = _cfg(p=0.5)
    x = torch.as_tensor(np.random.default_rng(1).standard_normal((8, 2)), dtype=torch.float32)
    y = torch.arange(8) % 3
    losses = []
    for _ in range(2):
        s = tt.create_train_state(cfg)
        s, m = tt.make_train_step(cfg)(s, (x, y))
        losses.append(m["loss"])
    assert losses[0] == losses[1] and s.step == 1
    s, m = tt.make_train_step(cfg, steps_per_call=2)(s, (torch.stack([x, x]), torch.stack([y, y])))
    assert len(m["loss"]) == 2 and s.step == 3
    with pytest.raises(ValueError, match=r"pass batch = \(x, y\)"):
        tt.make_train_step(cfg)(s, x)
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, num_classes=4\)"):
        tt.make_train_step(cfg)(s, (x, torch.full((8,), 9)))


# --------------------------------------------------------------------------- example


def test_class_conditional_digits_example_tiny(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import class_conditional_digits as example
    finally:
        sys.path.remove(str(ROOT / "examples"))
    res = example.main(["--tiny", "--out", str(tmp_path)])
    assert Path(res["figure"]).is_file()
    for w in example.SCALES:
        r = res[f"w={w:g}"]
        assert 0.0 <= r["class_accuracy"] <= 1.0 and len(r["per_class_accuracy"]) == 10
        assert np.isfinite(r["fd"])
