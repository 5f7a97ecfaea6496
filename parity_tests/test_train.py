"""Training parity: optimiser (jax_impl.train == torch_ref.train == a float64 numpy Adam),
EMA, and one- / few-step train steps from identical weights, batch, t and noise for every
objective (SDE, SMLD, DDPM, NCSN annealed DSM, improved-diffusion's hybrid loss with
learned-range variances and importance-sampled t). Tiny shapes: the file runs in seconds.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import spec
from spec.model_configs import MLPConfig
from spec.ncsn_configs import NCSNConfig
from spec.train_config import OptimConfig, RunConfig, TrainConfig
from jax_impl import convert as jconvert
from jax_impl import train as jt
from torch_ref import train as tt
from parity_tests.helpers import tol

F64, F32 = tol(np.float64), tol(np.float32)


# ------------------------------------------------------------- numpy oracle of Adam


def numpy_optimizer(oc: OptimConfig, params: dict, grads_seq):
    """score_sde_pytorch's optimize_fn + torch.optim.Adam/AdamW, float64 numpy."""
    p = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2 = oc.beta1, 0.999
    out = []
    for step, grads in enumerate(grads_seq):
        g = {k: a.copy() for k, a in grads.items()}
        if oc.grad_clip >= 0:
            norm = np.sqrt(sum(np.sum(a**2) for a in g.values()))
            scale = min(1.0, oc.grad_clip / (norm + 1e-6))
            g = {k: a * scale for k, a in g.items()}
        lr = oc.learning_rate(step)
        n = step + 1
        for k in p:
            if oc.optimizer == "AdamW":
                p[k] = p[k] * (1 - lr * oc.weight_decay)
            elif oc.weight_decay:
                g[k] = g[k] + oc.weight_decay * p[k]
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
            mhat, vhat = m[k] / (1 - b1**n), v2[k] / (1 - b2**n)
            p[k] = p[k] - lr * mhat / (np.sqrt(vhat) + oc.eps)
        out.append({k: a.copy() for k, a in p.items()})
    return out, m, v2


def _adam_state(opt_state):
    found = [s for s in jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)]
    assert len(found) == 1
    return found[0]


OPTIM_CASES = {
    "warmup_clip_active": dict(lr=1e-2, warmup=3, grad_clip=1.0),
    "clip_inactive": dict(lr=1e-2, warmup=2, grad_clip=1e3),
    "clip_off": dict(lr=1e-2, warmup=0, grad_clip=-1.0),
    "weight_decay": dict(lr=1e-2, warmup=2, grad_clip=0.5, weight_decay=0.1, beta1=0.8, eps=1e-6),
    "adamw_anneal": dict(optimizer="AdamW", lr=1e-2, warmup=0, grad_clip=-1.0, weight_decay=0.05,
                         lr_anneal_steps=10),
}


@pytest.mark.parametrize("case", sorted(OPTIM_CASES))
def test_optimizer_parity(case):
    oc = OptimConfig(**OPTIM_CASES[case])
    rng = np.random.default_rng(1)
    params = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    grads_seq = [{k: 3.0 * rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(6)]
    want, m_np, v_np = numpy_optimizer(oc, params, grads_seq)

    tx = jt.get_optimizer(TrainConfig(optim=oc))
    jp = {k: jnp.asarray(v) for k, v in params.items()}
    st = tx.init(jp)
    update = jax.jit(tx.update)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt, lr_fn = tt.get_optimizer(TrainConfig(optim=oc), tp.values())
    for step, grads in enumerate(grads_seq):
        upd, st = update({k: jnp.asarray(v) for k, v in grads.items()}, st, jp)
        jp = optax.apply_updates(jp, upd)
        for k, v in grads.items():
            tp[k].grad = torch.tensor(v)
        for group in opt.param_groups:
            group["lr"] = lr_fn(step)
        if oc.grad_clip >= 0:
            torch.nn.utils.clip_grad_norm_(list(tp.values()), max_norm=oc.grad_clip)
        opt.step()
        for k in params:
            np.testing.assert_allclose(np.asarray(jp[k]), want[step][k], **F64)
            np.testing.assert_allclose(tp[k].detach().numpy(), want[step][k], **F64)
    adam = _adam_state(st)
    for k in params:
        np.testing.assert_allclose(np.asarray(adam.mu[k]), m_np[k], **F64)
        np.testing.assert_allclose(np.asarray(adam.nu[k]), v_np[k], **F64)
        np.testing.assert_allclose(opt.state[tp[k]]["exp_avg"].numpy(), m_np[k], **F64)
        np.testing.assert_allclose(opt.state[tp[k]]["exp_avg_sq"].numpy(), v_np[k], **F64)
    assert int(adam.count) == len(grads_seq)


def test_first_update_has_lr_zero_and_schedule():
    oc = OptimConfig(lr=1.0, warmup=4, lr_anneal_steps=8)
    j = jt.learning_rate_fn(TrainConfig(optim=oc))
    t = tt.learning_rate_fn(TrainConfig(optim=oc))
    for s in range(10):
        assert float(j(s)) == pytest.approx(oc.learning_rate(s), abs=1e-15)
        assert t(s) == oc.learning_rate(s)
    # optax hands the schedule the pre-increment count: the first update moves nothing
    tx = jt.get_optimizer(TrainConfig(optim=OptimConfig(warmup=5)))
    p = {"w": jnp.ones(3)}
    upd, _ = tx.update({"w": jnp.ones(3)}, tx.init(p), p)
    assert np.all(np.asarray(upd["w"]) == 0)
    with pytest.raises(TypeError, match="parameters"):
        tt.get_optimizer(TrainConfig())
    with pytest.raises(TypeError, match="TrainConfig"):
        jt.get_optimizer({"lr": 1})


# --------------------------------------------------------------------------- EMA


@pytest.mark.parametrize("num_updates", [None, 1, 2, 7, 10_000])
def test_ema_update_parity(num_updates):
    rng = np.random.default_rng(2)
    ema = {"a": rng.standard_normal((2, 3)), "b": rng.standard_normal(5)}
    par = {k: rng.standard_normal(v.shape) for k, v in ema.items()}
    rate = 0.999
    decay = rate if num_updates is None else min(rate, (1 + num_updates) / (10 + num_updates))
    want = {k: ema[k] - (1 - decay) * (ema[k] - par[k]) for k in ema}
    got_j = jt.ema_update({k: jnp.asarray(v) for k, v in ema.items()},
                          {k: jnp.asarray(v) for k, v in par.items()}, rate=rate,
                          num_updates=num_updates)
    te = {k: torch.tensor(v) for k, v in ema.items()}
    got_t = tt.ema_update(te, {k: torch.tensor(v) for k, v in par.items()}, rate=rate,
                          num_updates=num_updates)
    assert got_t is te  # in place
    for k in ema:
        np.testing.assert_allclose(np.asarray(got_j[k]), want[k], **F64)
        np.testing.assert_allclose(got_t[k].numpy(), want[k], **F64)
    # jit with a traced count gives the same numbers
    if num_updates is not None:
        jitted = jax.jit(lambda e, p, n: jt.ema_update(e, p, rate=rate, num_updates=n))
        again = jitted({k: jnp.asarray(v) for k, v in ema.items()},
                       {k: jnp.asarray(v) for k, v in par.items()}, jnp.int32(num_updates))
        for k in ema:
            np.testing.assert_allclose(np.asarray(again[k]), want[k], **F64)


# ------------------------------------------------------------------- train steps


def _run_config(model, process, overrides, batch=8):
    base = [f"training.batch_size={batch}", "optim.warmup=2", "optim.lr=1e-2",
            "model.ema_rate=0.9,0.5"]
    return RunConfig(model=model, process=process,
                     train=TrainConfig().with_overrides(base + list(overrides)))


def _registry_sync(cfg, js, ts):
    sd = jconvert.flax_to_torch_state_dict({"params": js.params, **js.constants}, cfg.model)
    ts.model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in sd.items()})


def _registry_to_flax(cfg, ts, tensors=None):
    sd = {k: v.detach().numpy() for k, v in ts.model.state_dict().items()}
    if tensors is not None:
        sd.update({k: v.detach().numpy() for k, v in tensors.items()})
    return jconvert.torch_to_flax_variables(sd, cfg.model, dtype=np.float64)["params"]


def _paired_states(cfg, dtype, *, jmodel=None, tmodel=None, sync=_registry_sync):
    js = jt.create_train_state(jax.random.key(3), cfg, model=jmodel,
                               dtype=jnp.float64 if dtype == np.float64 else jnp.float32)
    ts = tt.create_train_state(cfg, model=tmodel,
                               dtype=torch.float64 if dtype == np.float64 else torch.float32)
    sync(cfg, js, ts)
    with torch.no_grad():
        for e in ts.ema:
            for k in e:
                e[k].copy_(ts.params[k])
    return js, ts


def _assert_trees(got, want, tolerance, what):
    flat_g = jax.tree_util.tree_leaves_with_path(got)
    flat_w = dict(jax.tree_util.tree_leaves_with_path(want))
    assert len(flat_g) == len(flat_w)
    worst = 0.0
    for path, g in flat_g:
        w = np.asarray(flat_w[path])
        g = np.asarray(g)
        np.testing.assert_allclose(g, w, err_msg=f"{what} {jax.tree_util.keystr(path)}", **tolerance)
        worst = max(worst, float(np.max(np.abs(g - w))))
    return worst


def _assert_states(cfg, js, ts, tolerance, to_flax=_registry_to_flax):
    assert int(js.step) == ts.step
    worst = _assert_trees(to_flax(cfg, ts), js.params, tolerance, "params")
    for e_j, e_t in zip(js.ema, ts.ema):
        worst = max(worst, _assert_trees(to_flax(cfg, ts, e_t), e_j, tolerance, "ema"))
    adam = _adam_state(js.opt_state)
    opt = ts.opt_state
    mu = {k: opt.state[p]["exp_avg"] for k, p in ts.params.items()}
    nu = {k: opt.state[p]["exp_avg_sq"] for k, p in ts.params.items()}
    worst = max(worst, _assert_trees(to_flax(cfg, ts, mu), adam.mu, tolerance, "exp_avg"))
    worst = max(worst, _assert_trees(to_flax(cfg, ts, nu), adam.nu, tolerance, "exp_avg_sq"))
    return worst


_CORES: dict = {}


def _core(cfg):
    """The jitted ``train_step_core`` of a config, compiled once per config in this file."""
    if cfg not in _CORES:
        _CORES[cfg] = jax.jit(lambda s, *a: jt.train_step_core(cfg, s, *a))
    return _CORES[cfg]


def _steps(cfg, js, ts, draws, *, image=False):
    """Run both sides on the same numpy (x, t, z) draws; x/z NHWC for JAX, NCHW for torch."""
    lj, lt = [], []
    to_t = (lambda a: torch.as_tensor(np.moveaxis(a, -1, 1).copy())) if image else torch.as_tensor
    core = _core(cfg)
    for x, t, z in draws:
        js, mj = core(js, jnp.asarray(x), jnp.asarray(t), jnp.asarray(z))
        ts, mt = tt.train_step_core(cfg, ts, to_t(x), torch.as_tensor(t), to_t(z))
        lj.append(mj)
        lt.append(mt)
    return js, ts, lj, lt


def _draws(rng, n, shape, t_fn, dtype):
    return [(rng.standard_normal(shape).astype(dtype), t_fn(rng), rng.standard_normal(shape).astype(dtype))
            for _ in range(n)]


MEASURED: dict[str, float] = {}


def _check_metrics(lj, lt, tolerance, cfg):
    for s, (mj, mt) in enumerate(zip(lj, lt)):
        for k in ("loss", "grad_norm", "lr"):
            np.testing.assert_allclose(float(mj[k]), mt[k], err_msg=k, **tolerance)
        assert mt["lr"] == cfg.train.optim.learning_rate(s)
    assert lt[0]["lr"] == 0.0  # warm-up: the first update has lr 0


# shared model configs: one flax init compilation each
MLP64 = MLPConfig(hidden_dims=(16,), conditional=False)
MLP32 = MLPConfig(hidden_dims=(16,), embedding_dim=8)
F64_OVERRIDES = ["optim.grad_clip=0.05", "optim.weight_decay=0.01"]
F32_OVERRIDES = ["training.reduce_mean=true"]

SDE_CASES = {
    # name: (model, process, overrides, dtype)
    "sde_vp_continuous_f64": (MLP64, spec.VPSDEConfig(), F64_OVERRIDES, np.float64),
    "sde_vp_continuous_labels_f32": (MLP32, spec.VPSDEConfig(), F32_OVERRIDES, np.float32),
    "sde_ve_fourier_frozen_f32": (MLPConfig(hidden_dims=(16,), embedding_dim=8, embedding_type="fourier",
                                            scale_by_sigma=True), spec.VESDEConfig(sigma_max=5.0),
                                  ["training.likelihood_weighting=true", "model.ema_warmup=false"],
                                  np.float32),
    "smld_f64": (MLP64, spec.VESDEConfig(N=10, sigma_max=5.0),
                 ["training.continuous=false"], np.float64),
    "ddpm_f64": (MLP64, spec.VPSDEConfig(N=100),
                 ["training.continuous=false", "optim.optimizer=AdamW", "optim.weight_decay=0.1"],
                 np.float64),
    "sde_microbatch_f64": (MLP64, spec.subVPSDEConfig(),
                           ["training.microbatch=4", "optim.grad_clip=-1"], np.float64),
}


@pytest.mark.parametrize("case", sorted(SDE_CASES))
def test_train_step_parity_score_sde(case):
    model, process, overrides, dtype = SDE_CASES[case]
    cfg = _run_config(model, process, overrides)
    kind = cfg.resolved_loss
    js, ts = _paired_states(cfg, dtype)
    const0 = jax.tree_util.tree_map(np.asarray, js.constants)
    rng = np.random.default_rng(4)
    if kind == "sde":
        t_fn = lambda r: r.uniform(1e-5, 1.0, 8).astype(dtype)  # noqa: E731
    else:
        t_fn = lambda r: r.integers(0, process.N, 8)  # noqa: E731
    js, ts, lj, lt = _steps(cfg, js, ts, _draws(rng, 3, (8, 2), t_fn, dtype))
    tolerance = F64 if dtype == np.float64 else F32
    _check_metrics(lj, lt, tolerance, cfg)
    MEASURED[case] = _assert_states(cfg, js, ts, tolerance)
    # the frozen Fourier W: neither trained nor averaged (not in params / EMA), on both sides
    if model.embedding_type == "fourier":
        assert js.constants and "W" not in str(jax.tree_util.tree_structure(js.params))
        _assert_trees(js.constants, const0, dict(rtol=0, atol=0), "constants")
        assert ts.constants and all(not p.requires_grad for p in ts.constants.values())
        assert not set(ts.constants) & set(ts.ema[0])
        ref = jconvert.torch_to_flax_variables(
            {k: v.detach().numpy() for k, v in ts.model.state_dict().items()}, model, dtype=np.float64)
        _assert_trees(ref["constants"], const0["constants"], dict(rtol=0, atol=1e-6), "torch constants")


def test_microbatch_equals_full_batch():
    """Averaged micro-batch gradients: micro-batching changes memory, not the update."""
    model, process = MLP64, spec.VPSDEConfig()
    full = _run_config(model, process, F64_OVERRIDES)
    micro = _run_config(model, process, F64_OVERRIDES + ["training.microbatch=2"])
    a = jt.create_train_state(jax.random.key(0), full, dtype=jnp.float64)
    b = jt.create_train_state(jax.random.key(0), micro, dtype=jnp.float64)
    rng = np.random.default_rng(5)
    core_a, core_b = _core(full), _core(micro)
    for x, t, z in _draws(rng, 3, (8, 2), lambda r: r.uniform(1e-5, 1.0, 8), np.float64):
        a, ma = core_a(a, jnp.asarray(x), jnp.asarray(t), jnp.asarray(z))
        b, mb = core_b(b, jnp.asarray(x), jnp.asarray(t), jnp.asarray(z))
        np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), **F64)
    _assert_trees(b.params, a.params, F64, "params")


@pytest.mark.slow
def test_train_step_parity_ncsn_anneal_dsm_refinenet():
    """The real (tiny) NCSN RefineNet: about 100 s of flax init / compile on 2 loaded cores."""
    model = NCSNConfig(ngf=4, num_scales=3, image_size=8, num_channels=1)
    cfg = _run_config(model, None, [], batch=2)
    js, ts = _paired_states(cfg, np.float64)
    rng = np.random.default_rng(6)
    draws = _draws(rng, 2, (2, 8, 8, 1), lambda r: r.integers(0, 3, 2), np.float64)
    js, ts, lj, lt = _steps(cfg, js, ts, draws, image=True)
    _check_metrics(lj, lt, F64, cfg)
    MEASURED["anneal_dsm_ncsn_refinenet_f64"] = _assert_states(cfg, js, ts, F64)


# -- NCSN's annealed DSM with a tiny noise-conditional conv score net (NHWC / NCHW) ------


class FlaxCondConv(nn.Module):
    num_scales: int = 3

    @nn.compact
    def __call__(self, x, y, train=False):
        h = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), name="conv_in")(x)
        h = h + nn.Embed(self.num_scales, 4, name="embed")(y)[:, None, None, :]
        return nn.Conv(x.shape[-1], (3, 3), padding=((1, 1), (1, 1)), name="conv_out")(jnp.tanh(h))


class TorchCondConv(torch.nn.Module):
    def __init__(self, channels=1, num_scales=3):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.embed = torch.nn.Embedding(num_scales, 4)
        self.conv_out = torch.nn.Conv2d(4, channels, 3, padding=1)

    def forward(self, x, y):
        h = self.conv_in(x) + self.embed(y)[:, :, None, None]
        return self.conv_out(torch.tanh(h))


def _condconv_sync(cfg, js, ts):
    p = jax.tree_util.tree_map(np.asarray, js.params)
    with torch.no_grad():
        for name in ("conv_in", "conv_out"):
            getattr(ts.model, name).weight.copy_(torch.as_tensor(p[name]["kernel"].transpose(3, 2, 0, 1).copy()))
            getattr(ts.model, name).bias.copy_(torch.as_tensor(p[name]["bias"].copy()))
        ts.model.embed.weight.copy_(torch.as_tensor(p["embed"]["embedding"].copy()))


def _condconv_to_flax(cfg, ts, tensors=None):
    src = {k: v.detach() for k, v in ts.model.named_parameters()}
    if tensors is not None:
        src.update(tensors)
    out = {name: {"kernel": src[f"{name}.weight"].numpy().transpose(2, 3, 1, 0),
                  "bias": src[f"{name}.bias"].numpy()} for name in ("conv_in", "conv_out")}
    out["embed"] = {"embedding": src["embed.weight"].numpy()}
    return out


def test_train_step_parity_ncsn_anneal_dsm():
    """anneal_dsm with the NCSN config's sigma ladder (L = 3) and integer noise-level labels."""
    model = NCSNConfig(ngf=4, num_scales=3, image_size=8, num_channels=1)
    cfg = _run_config(model, None, ["optim.grad_clip=0.1"], batch=4)
    js, ts = _paired_states(cfg, np.float64, jmodel=FlaxCondConv(), tmodel=TorchCondConv(),
                            sync=_condconv_sync)
    rng = np.random.default_rng(6)
    draws = _draws(rng, 3, (4, 8, 8, 1), lambda r: r.integers(0, 3, 4), np.float64)
    js, ts, lj, lt = _steps(cfg, js, ts, draws, image=True)
    _check_metrics(lj, lt, F64, cfg)
    MEASURED["anneal_dsm_f64"] = _assert_states(cfg, js, ts, F64, to_flax=_condconv_to_flax)


# -- improved-diffusion: a tiny learned-range network (outputs 2D: eps, then v) ------------


class FlaxEpsVar(nn.Module):
    hidden: int = 16

    @nn.compact
    def __call__(self, x, t, train=False):
        h = nn.Dense(self.hidden, name="inp")(x) + nn.Dense(self.hidden, name="temb")(
            (t.astype(x.dtype) / 10.0)[:, None])
        return nn.Dense(2 * x.shape[-1], name="out")(jnp.tanh(h))


class TorchEpsVar(torch.nn.Module):
    def __init__(self, dim=2, hidden=16):
        super().__init__()
        self.inp = torch.nn.Linear(dim, hidden)
        self.temb = torch.nn.Linear(1, hidden)
        self.out = torch.nn.Linear(hidden, 2 * dim)

    def forward(self, x, t):
        h = self.inp(x) + self.temb((t.to(x.dtype) / 10.0)[:, None])
        return self.out(torch.tanh(h))


def _epsvar_sync(cfg, js, ts):
    with torch.no_grad():
        for name in ("inp", "temb", "out"):
            getattr(ts.model, name).weight.copy_(torch.as_tensor(np.asarray(js.params[name]["kernel"]).T.copy()))
            getattr(ts.model, name).bias.copy_(torch.as_tensor(np.asarray(js.params[name]["bias"]).copy()))


def _epsvar_to_flax(cfg, ts, tensors=None):
    src = {k: v.detach() for k, v in ts.model.named_parameters()}
    if tensors is not None:
        src.update(tensors)
    return {name: {"kernel": src[f"{name}.weight"].numpy().T, "bias": src[f"{name}.bias"].numpy()}
            for name in ("inp", "temb", "out")}


def test_train_step_parity_improved_diffusion_hybrid_importance_sampled():
    T = 10
    process = spec.DiffusionConfig(steps=T, noise_schedule="cosine", model_var_type="learned_range",
                                   loss_type="mse")
    cfg = _run_config(MLPConfig(learn_sigma=True), process, ["training.schedule_sampler=loss-second-moment",
                                             "optim.optimizer=AdamW", "optim.weight_decay=0.01",
                                             "optim.lr_anneal_steps=100", "model.ema_warmup=false",
                                             "optim.grad_clip=-1"])
    js, ts = _paired_states(cfg, np.float64, jmodel=FlaxEpsVar(), tmodel=TorchEpsVar(),
                            sync=_epsvar_sync)
    # a warmed-up loss history (same on both sides) so that the importance weights are not 1
    rng = np.random.default_rng(7)
    hist = rng.uniform(0.1, 2.0, (T, 10))
    js = js.replace(sampler_state=js.sampler_state._replace(
        loss_history=jnp.asarray(hist), loss_counts=jnp.full((T,), 10, jnp.int32)))
    ts.sampler_state._loss_history = hist.copy()
    ts.sampler_state._loss_counts = np.full((T,), 10, np.int64)
    w = ts.sampler_state.weights()
    assert np.ptp(w) > 0.01
    draws = _draws(rng, 3, (8, 2), lambda r: r.choice(T, 8, p=w / w.sum()), np.float64)
    js, ts, lj, lt = _steps(cfg, js, ts, draws)
    for mj, mt in zip(lj, lt):
        for k in ("loss", "grad_norm", "lr"):
            np.testing.assert_allclose(float(mj[k]), mt[k], err_msg=k, **F64)
    MEASURED["diffusion_hybrid_f64"] = _assert_states(cfg, js, ts, F64, to_flax=_epsvar_to_flax)
    np.testing.assert_allclose(np.asarray(js.sampler_state.loss_history),
                               ts.sampler_state._loss_history, **F64)
    assert not np.allclose(ts.sampler_state._loss_history, hist)  # updated with the new losses


# ------------------------------------------------------------ the jitted step


def test_make_train_step_jit_donation_scan_and_per_example_draws():
    cfg = _run_config(MLP32, spec.VPSDEConfig(), F32_OVERRIDES)  # its core is compiled above
    x = jnp.asarray(np.random.default_rng(8).standard_normal((2, 8, 2)), jnp.float32)
    s0 = jt.create_train_state(jax.random.key(9), cfg)
    # the step = draw_randomness + train_step_core, from fold_in(state.rng, step)
    key = jax.random.fold_in(s0.rng, s0.step)
    draw = jax.jit(lambda k, s, b: jt.draw_randomness(k, cfg, s, b))
    t, z = draw(key, s0, x[0])
    want, _ = _core(cfg)(s0, x[0], t, z)
    step = jt.make_train_step(cfg)
    s1, m1 = step(jt.create_train_state(jax.random.key(9), cfg), x[0])
    _assert_trees(s1.params, want.params, F32, "params")
    assert float(m1["lr"]) == 0.0 and np.isfinite(float(m1["loss"]))
    s2, m2 = step(s1, x[1])
    # two steps in one compiled call (lax.scan) == two calls
    scan = jt.make_train_step(cfg, steps_per_call=2)
    s2b, m2b = scan(jt.create_train_state(jax.random.key(9), cfg), x)
    assert m2b["loss"].shape == (2,) and int(s2b.step) == 2
    _assert_trees(s2b.params, s2.params, F32, "params")
    # example i's draws depend only on (key, i): a prefix of the batch draws the same numbers
    t4, z4 = draw(key, s0, x[0][:4])
    np.testing.assert_array_equal(np.asarray(t4), np.asarray(t)[:4])
    np.testing.assert_array_equal(np.asarray(z4), np.asarray(z)[:4])
    with pytest.raises(ValueError, match="steps_per_call"):
        scan(s2b, x[0])
    with pytest.raises(TypeError, match="TrainState"):
        step({"params": 1}, x[0])


def test_torch_make_train_step_runs():
    cfg = _run_config(MLP32, spec.VPSDEConfig(), [])
    ts = tt.create_train_state(cfg, generator=torch.Generator().manual_seed(0))
    step = tt.make_train_step(cfg, steps_per_call=2)
    ts, m = step(ts, torch.randn(2, 8, 2, generator=torch.Generator().manual_seed(1)))
    assert ts.step == 2 and m["lr"] == [0.0, 0.005] and all(np.isfinite(m["loss"]))


def test_measured_parity_figures():
    """Prints the worst absolute differences measured above (run with -s to see them)."""
    for k, v in sorted(MEASURED.items()):
        print(f"train parity {k}: max |jax - torch| = {v:.2e}")


def test_bad_inputs_raise_early_naming_the_argument():
    cfg = _run_config(MLP32, spec.VPSDEConfig(), F32_OVERRIDES)
    with pytest.raises(TypeError, match="rng"):
        jt.create_train_state(0, cfg)
    with pytest.raises(TypeError, match="run_config"):
        jt.create_train_state(jax.random.key(0), TrainConfig())
    with pytest.raises(TypeError, match="run_config"):
        tt.create_train_state(TrainConfig())
    with pytest.raises(TypeError, match="generator"):
        tt.create_train_state(cfg, generator=np.random.default_rng(0))
    for side in (jt, tt):
        with pytest.raises(ValueError, match="steps_per_call"):
            side.make_train_step(cfg, steps_per_call=0)
        with pytest.raises(TypeError, match="donate"):
            side.make_train_step(cfg, donate=1)
        with pytest.raises(ValueError, match="rate"):
            side.ema_update({}, {}, rate=1.5)
    micro = _run_config(MLP32, spec.VPSDEConfig(), ["training.microbatch=4"])
    state = jt.create_train_state(jax.random.key(0), micro)
    with pytest.raises(ValueError, match="microbatch"):
        jt.make_train_step(micro)(state, jnp.zeros((6, 2), jnp.float32))
    with pytest.raises(TypeError, match="batch"):
        tt.make_train_step(cfg)(tt.create_train_state(cfg), np.zeros((8, 2)))
