"""Subprocess of ``test_sharding.py``: one process split into 8 host devices computes each
result on a 1-device mesh (``jax.devices()[:1]``) and on the 8-device mesh, and prints the
comparisons as one JSON object on the last line of stdout (the parent asserts).

Run as ``python parity_tests/_sharding_subprocess.py [--full]``; it calls
``sharding.configure_host_devices(8)`` before JAX starts. The default run is the cheap core
(the MLP's training steps, PC, DDPM, DDIM, the RK4 probability-flow ODE, the Langevin step
size, the errors); ``--full`` adds the unsharded train step, the MLP on images, the
adaptive dopri5 ODE and ALD (``test_sharding.py``'s slow test).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jax_impl import sharding as S  # noqa: E402

S.configure_host_devices(8)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import spec  # noqa: E402
from spec.model_configs import DDPMConfig, MLPConfig  # noqa: E402
from spec.train_config import RunConfig, TrainConfig  # noqa: E402
from jax_impl import ode as jode  # noqa: E402
from jax_impl import samplers as js  # noqa: E402
from jax_impl import samplers_discrete as jdisc  # noqa: E402
from jax_impl import sde as jsde  # noqa: E402
from jax_impl import train as jt  # noqa: E402
from jax_impl.diffusion import GaussianDiffusion  # noqa: E402

FULL = "--full" in sys.argv[1:]
OUT: dict = {"devices": len(jax.devices()), "full": FULL}
MESH1 = S.make_mesh(devices=jax.devices()[:1])
MESH8 = S.make_mesh()
MESH42 = S.make_mesh(model_parallel=2)


def max_diff(a, b) -> float:
    la, lb = jax.tree_util.tree_leaves(S.to_host(a)), jax.tree_util.tree_leaves(S.to_host(b))
    assert len(la) == len(lb)
    return max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                for x, y in zip(la, lb) if np.size(x)), default=0.0)


def rel_diff(a, b) -> float:
    """``max_diff`` over the largest magnitude of ``b`` (float32 ulps are relative)."""
    scale = max(float(np.max(np.abs(np.asarray(y, np.float64))))
                for y in jax.tree_util.tree_leaves(S.to_host(b)) if np.size(y))
    return max_diff(a, b) / max(scale, 1e-30)


def specs(tree) -> list[str]:
    return sorted({str(leaf.sharding.spec) for leaf in jax.tree_util.tree_leaves(tree)})


# ---------------------------------------------------------------- (a) training steps


def train_case(name, model, process, batch, steps=3, extra=()):
    cfg = RunConfig(model=model, process=process, train=TrainConfig().with_overrides(
        [f"training.batch_size={batch.shape[0]}", "optim.warmup=0", "optim.lr=1e-3",
         "model.ema_rate=0.9", *extra]))

    def run(mesh, shard_params=False):
        state = jt.create_train_state(jax.random.key(1), cfg)
        if mesh is None:
            step = jt.make_train_step(cfg)
        else:
            state = S.shard_train_state(state, mesh, shard_params=shard_params)
            step = S.make_sharded_train_step(cfg, mesh, shard_params=shard_params)
        losses = []
        for _ in range(steps):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        return state, losses

    t0 = time.perf_counter()
    one, l1 = run(MESH1)
    eight, l8 = run(MESH8)
    res = {
        "params_8_vs_1": max_diff(eight.params, one.params),
        "ema_8_vs_1": max_diff(eight.ema, one.ema),
        "opt_state_8_vs_1": max_diff(eight.opt_state, one.opt_state),
        "loss_8_vs_1": float(np.max(np.abs(np.asarray(l8) - np.asarray(l1)))),
        "param_scale": max(float(np.max(np.abs(a))) for a in jax.tree_util.tree_leaves(S.to_host(one.params))),
        "specs_8": specs(eight.params),
        "step": int(S.to_host(eight.step)),
    }
    if FULL:
        plain, _ = run(None)
        res["plain_vs_1dev"] = max_diff((plain.params, plain.ema, plain.opt_state),
                                        (one.params, one.ema, one.opt_state))
    if name == "mlp":  # parameters split along the model axis of a 4 x 2 mesh
        sharded, ls = run(MESH42, shard_params=True)
        res["shard_params_vs_1"] = max_diff((sharded.params, sharded.ema, sharded.opt_state),
                                            (one.params, one.ema, one.opt_state))
        res["shard_params_loss_vs_1"] = float(np.max(np.abs(np.asarray(ls) - np.asarray(l1))))
        res["shard_params_specs"] = specs(sharded.params)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    OUT[f"train_{name}"] = res
    print(name, res["seconds"], time.process_time(), file=sys.stderr, flush=True)


rng = np.random.default_rng(0)
train_case("mlp", MLPConfig(data_dim=2, hidden_dims=(64, 64)), spec.VPSDEConfig(N=100),
           rng.normal(size=(16, 2)).astype(np.float32))
if FULL:
    train_case("mlp_image", MLPConfig(data_dim=16, hidden_dims=(32,), image_size=4, num_channels=1),
               spec.VPSDEConfig(N=100), rng.uniform(-1, 1, size=(8, 4, 4, 1)).astype(np.float32),
               steps=2)

# dropout masks (the train step draws them from one key per step, inside the network):
# jax's partitionable threefry gives the same bits whatever the batch sharding
OUT["dropout_mask_8_vs_1"] = max_diff(*[jax.jit(
    lambda k, x: jax.random.bernoulli(k, 0.9, x.shape).astype(x.dtype) * x,
    in_shardings=(S.replicated_sharding(m), S.batch_sharding(m)))(
        jax.random.key(2), S.shard_batch(np.ones((16, 4, 4, 8), np.float32), m))
    for m in (MESH8, MESH1)])

# shard_batch of (x, y): each leaf sharded along the data axis, values unchanged
xy = (rng.normal(size=(16, 2)).astype(np.float32), np.arange(16, dtype=np.int32))
placed = S.shard_batch(xy, MESH8)
OUT["shard_batch_xy"] = {"specs": specs(placed), "shards": len(placed[0].addressable_shards),
                         "equal": bool(all(np.array_equal(a, b) for a, b in zip(S.to_host(placed), xy)))}


# ---------------------------------------------------------------- (b) samplers

B = 16
VP = jsde.VPSDE(N=30)
MU, SD = jnp.asarray([0.5, -1.0]), jnp.asarray([0.3, 0.7])


def SCORE(x, t):  # noqa: N802 -- the exact score of N(MU, diag SD^2) perturbed by VP
    mean, std = VP.marginal_prob(jnp.ones_like(x), t)
    a, s = mean[:, :1], std[:, None]
    return -(x - a * MU) / (a**2 * SD**2 + s**2)


DIFF = GaussianDiffusion(spec.DiffusionConfig(steps=40, timestep_respacing="8"))
W = jnp.asarray(np.random.default_rng(1).normal(size=(2, 2)) * 0.3, jnp.float32)


def eps_fn(x, t):
    return jnp.tanh(x @ W) * (1.0 + t[:, None].astype(x.dtype) / 40.0)


SAMPLERS = {
    "pc_reverse_diffusion_langevin": lambda rng: js.pc_sample(
        rng, VP, SCORE, (B, 2), predictor="reverse_diffusion", corrector="langevin", n_steps=2),
    "ddpm_ancestral": lambda rng: jdisc.ddpm_sample(rng, DIFF, eps_fn, (B, 2), clip_denoised=False),
    "ddim_eta0.5": lambda rng: jdisc.ddim_sample(rng, DIFF, eps_fn, (B, 2), eta=0.5,
                                                 clip_denoised=False),
    "ode_rk4": lambda rng: jode.ode_sample(rng, VP, SCORE, (B, 2), method="rk4", num_steps=8),
}
if FULL:
    SAMPLERS["ode_dopri5"] = lambda rng: jode.ode_sample(rng, VP, SCORE, (B, 2), method="dopri5",
                                                         rtol=1e-4, atol=1e-4)
    SAMPLERS["ald"] = lambda rng: js.ald_sample(rng, (2.0, 0.5, 0.1), lambda x, lv: -x, (B, 2),
                                                n_steps_each=3, step_lr=0.05)

OUT["samplers"] = {}
key = jax.random.key(5)
for name, fn in SAMPLERS.items():
    t0 = time.perf_counter()
    plain = jax.jit(fn)(key)[0] if name == "ddpm_ancestral" else None
    x1 = S.shard_sampler(fn, MESH1)(key)[0]
    x8, nfe8 = S.shard_sampler(fn, MESH8)(key)
    # the first half of a batch of 2B equals a batch of B (per-sample noise), on 8 devices
    OUT["samplers"][name] = {
        "8_vs_1": max_diff(x8, x1), "8_vs_1_rel": rel_diff(x8, x1),
        "plain_vs_1": None if plain is None else max_diff(plain, x1),
        "spec_8": str(x8.sharding.spec), "nfe_spec": str(getattr(nfe8, "sharding", None) and nfe8.sharding.spec),
        "finite": bool(np.isfinite(S.to_host(x8)).all()), "seconds": round(time.perf_counter() - t0, 2)}
    print(name, OUT["samplers"][name]["seconds"], time.process_time(), file=sys.stderr, flush=True)

# explicit x_T / noise stay bit-identical and are constrained to the data axis
z_T = jnp.asarray(np.random.default_rng(2).normal(size=(B, 2)), jnp.float32)
nz = jnp.asarray(np.random.default_rng(3).normal(size=(8, B, 2)), jnp.float32)
explicit = lambda rng, x_T, noise: jdisc.ddpm_sample(rng, DIFF, eps_fn, (B, 2), x_T=x_T,  # noqa: E731
                                                      noise=noise, clip_denoised=False)
e_plain = jax.jit(explicit)(None, z_T, nz)[0]
e8 = S.shard_sampler(lambda r, **kw: explicit(r, **kw), MESH8)(None, x_T=z_T, noise=nz)[0]
OUT["explicit_noise_8_vs_plain"] = max_diff(e8, e_plain)
OUT["explicit_noise_8_vs_plain_rel"] = rel_diff(e8, e_plain)

# a sample does not depend on the batch it is drawn in: batch 8 = the first rows of batch 16
pc_small = jax.jit(lambda rng: js.ddpm_sample(rng, DIFF, eps_fn, (8, 2), clip_denoised=False))(key)[0]
pc_big = S.shard_sampler(SAMPLERS["ddpm_ancestral"], MESH8)(key)[0]
OUT["batch_prefix_diff"] = max_diff(pc_small, S.to_host(pc_big)[:8])


print("section", time.process_time(), file=sys.stderr, flush=True)


# ---------------------------------------------------------------- (c) Langevin step size

corr = js.LangevinCorrector(snr=0.16, n_steps=1)
xs = jnp.asarray(np.random.default_rng(4).normal(size=(B, 2)) * np.linspace(0.1, 3, B)[:, None],
                 jnp.float32)
zs = jnp.asarray(np.random.default_rng(5).normal(size=(B, 2)), jnp.float32)
ts = jnp.full((B,), 0.5, jnp.float32)


def step_size(x, z):
    return corr._step_size(VP, x, ts, SCORE(x, ts), z)


def on(mesh):
    sh = S.batch_sharding(mesh)
    return jax.jit(step_size, in_shardings=(sh, sh))(S.shard_batch(xs, mesh), S.shard_batch(zs, mesh))


g = np.asarray(SCORE(xs, ts), np.float64)
want = (0.16 * np.mean(np.linalg.norm(np.asarray(zs, np.float64), axis=1))
        / np.mean(np.linalg.norm(g, axis=1))) ** 2
per_shard = [(0.16 * np.mean(np.linalg.norm(np.asarray(zs, np.float64)[i:i + 2], axis=1))
              / np.mean(np.linalg.norm(g[i:i + 2], axis=1))) ** 2 for i in range(0, B, 2)]
s1, s8 = S.to_host(on(MESH1)), S.to_host(on(MESH8))
OUT["langevin_step_size"] = {"8_vs_1": float(np.max(np.abs(s8 - s1))),
                             "8_vs_global_numpy": float(np.max(np.abs(s8 - want))),
                             "value": float(want),
                             "per_shard_spread": float(np.max(per_shard) - np.min(per_shard))}


print("section", time.process_time(), file=sys.stderr, flush=True)


# ---------------------------------------------------------------- (d) indivisible batches

errors = {}
for what, call in {
    "shard_batch": lambda: S.shard_batch(np.zeros((12, 2), np.float32), MESH8),
    "sampler": lambda: S.shard_sampler(lambda r: js.pc_sample(r, VP, SCORE, (12, 2)), MESH8)(key),
    "train_step": lambda: S.make_sharded_train_step(RunConfig(
        model=MLPConfig(data_dim=2, hidden_dims=(8,)), process=spec.VPSDEConfig(N=10)), MESH8)(
        jt.create_train_state(jax.random.key(0), RunConfig(
            model=MLPConfig(data_dim=2, hidden_dims=(8,)), process=spec.VPSDEConfig(N=10))),
        np.zeros((12, 2), np.float32)),
}.items():
    try:
        call()
        errors[what] = None
    except ValueError as err:
        errors[what] = str(err)
OUT["indivisible"] = errors

OUT["cpu_seconds"] = round(time.process_time(), 1)
print(json.dumps(OUT))
