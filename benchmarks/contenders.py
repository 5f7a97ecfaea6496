"""Build a case's networks, inputs and contender rows, run them round-robin, compare outputs.

``run_case(sizes, case, ...)`` returns the case's result dict (``benchmarks.run`` writes it to
the JSON file). The networks: ONE torch module per network (seeded; the MLP fitted for a few
hundred Adam steps of denoising score matching to the demo 2-D mixture so that samplers
follow a meaningful score; image networks' parameters perturbed by N(0, 0.02^2) numpy noise so
that no zero-initialised layer hides a mismatch), converted with
``jax_impl.convert.torch_to_flax_variables``; the training cases start from the JAX
``create_train_state`` and copy it into torch with ``flax_to_torch_state_dict``.

Randomness is drawn once, in JAX layout (NHWC), and fed to every contender: the prior x_T, the
PC predictor / corrector noise, the DDPM step noise (replaying diffusers' torch Generator
draws), the Euler-Maruyama noise (replaying diffusionjax's key splits), the training step's
t / noise (``jax_impl.train.draw_randomness``).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import cases as C
from benchmarks import timing
from benchmarks.timing import Variant

#: agreement tolerance per job: max |out - out_jax| <= tol * (1 + max |out_jax|). An adaptive
#: solve (dopri5) agrees to the solver tolerance times the flow's conditioning, not to
#: round-off: torchdiffeq's controller differs from diffrax's in detail, and the RMS error
#: norm runs over the batch (over each shard for ``jax-split``), so every contender takes its
#: own step sequence. Measured with the fitted MLP at rtol = atol = 1e-5, batch 64: torch
#: 5.5e-3 and jax-split 5.6e-3 from jax (outputs up to 2.6); the tiny MLP: 2.5e-3 (up to 3.9).
TOLERANCE = {"forward": 1e-4, "train": 1e-3, "pc": 1e-3, "em": 1e-3, "ode_euler": 1e-3, "ode_rk4": 1e-3,
             "ode_dopri5": 1e-2, "ddpm": 1e-3, "ddim": 1e-3}


# ------------------------------------------------------------------------ networks


@dataclasses.dataclass
class Net:
    name: str
    config: Any
    tmodel: torch.nn.Module          # NCHW, eval mode
    variables: Any                   # flax variables (numpy leaves)
    fit: dict | None = None
    _cl: torch.nn.Module | None = None

    def channels_last(self) -> torch.nn.Module:
        if self._cl is None:
            from torch_ref.models import registry as tr
            clone = tr.create_model(self.config).eval()
            clone.load_state_dict(self.tmodel.state_dict())
            self._cl = clone.to(memory_format=torch.channels_last)
        return self._cl


def _perturb_(module, rng, scale):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.as_tensor(rng.normal(0.0, scale, size=tuple(p.shape)), dtype=p.dtype))
    return module


def _fit_mlp_(tmodel, steps, rng, batch=512, lr=2e-3) -> dict:
    """A short DSM fit (``torch_ref.losses.sde_loss``, Adam) to the demo 2-D mixture."""
    from spec.oracles.gmm import demo_mixture
    from torch_ref import losses as tl
    from torch_ref import sde as tsde
    from torch_ref.models import utils as tmu

    sde = tsde.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
    score_fn = tmu.get_score_fn(sde, tmu.get_model_fn(tmodel, train=True), continuous=True)
    opt = torch.optim.Adam(tmodel.parameters(), lr=lr)
    mixture, losses = demo_mixture(), []
    t0 = time.perf_counter()
    for _ in range(steps):
        x = torch.as_tensor(mixture.sample(rng, batch)[0], dtype=torch.float32)
        t = torch.as_tensor(rng.uniform(1e-5, 1.0, size=batch), dtype=torch.float32)
        z = torch.as_tensor(rng.standard_normal((batch, 2)), dtype=torch.float32)
        loss = tl.sde_loss(sde, score_fn, x, t, z).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    tmodel.eval()
    return {"steps": steps, "batch": batch, "lr": lr, "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "seconds": time.perf_counter() - t0,
            "data": "spec.oracles.gmm.demo_mixture()"}


def build_net(sizes: C.Sizes, name: str, seed: int = 0) -> Net:
    from jax_impl import convert as jc
    from torch_ref.models import registry as tr

    cfg = C.net_config(sizes, name)
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tmodel = tr.create_model(cfg)
    fit = None
    if name == "mlp":
        fit = _fit_mlp_(tmodel, sizes.mlp_fit_steps, rng)
    else:
        _perturb_(tmodel, rng, 0.02)
    tmodel.eval()
    variables = jc.torch_to_flax_variables(tmodel.state_dict(), cfg)
    variables = jax.tree_util.tree_map(np.asarray, variables)
    return Net(name, cfg, tmodel, variables, fit)


# -------------------------------------------------------------------------- inputs


def _nchw(a, image=True):
    """JAX layout -> torch layout (image arrays: the last axis to -3), as a torch tensor."""
    a = np.asarray(a)
    if image and a.ndim >= 4:
        a = np.moveaxis(a, -1, -3)
    return torch.from_numpy(np.array(a, copy=True, order="C"))


def _nhwc(t):
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    if a.ndim >= 4:
        a = np.moveaxis(a, -3, -1)
    return a


def diffusionjax_noise(seed: int, N: int, shape) -> np.ndarray:
    """The step noise diffusionjax's ``get_sampler`` draws from ``PRNGKey(seed)`` (x_0 given):
    one ``split`` for the prior, then per step ``rng, step = split(rng)``; ``normal(step)``."""
    @jax.jit
    def draw(key):
        rng, _ = jax.random.split(key)

        def body(rng, _):
            rng, step = jax.random.split(rng)
            return rng, jax.random.normal(step, shape)
        return jax.lax.scan(body, rng, None, length=N)[1]
    return np.asarray(draw(jax.random.PRNGKey(seed)))


def diffusers_noise(seed: int, K: int, shape_nhwc) -> np.ndarray:
    """DDPMScheduler.step's noise from ``torch.Generator().manual_seed(seed)`` (one
    ``randn`` NCHW per step with t > 0; the last step draws none: zeros), JAX layout."""
    B, H, W, Ch = shape_nhwc
    gen = torch.Generator().manual_seed(seed)
    zs = [torch.randn((B, Ch, H, W), generator=gen, dtype=torch.float32) for _ in range(K - 1)]
    zs.append(torch.zeros((B, Ch, H, W)))
    return np.ascontiguousarray(np.moveaxis(torch.stack(zs).numpy(), 2, -1))


def sampler_inputs(sizes: C.Sizes, case: C.Case, seed: int) -> dict:
    """``{"x_T": [B, ...], "noise": dict | array | None}`` in JAX layout, float32."""
    rng = np.random.default_rng(seed)
    shape = C.batch_shape(sizes, case)
    z = rng.standard_normal(shape).astype(np.float32)
    process = C.process_config(case)
    if case.job in ("ddpm", "ddim"):
        noise = diffusers_noise(seed, case.steps, shape) if case.job == "ddpm" else None
        return {"x_T": z, "noise": noise}
    x_T = z * np.float32(process.sigma_max) if isinstance(process, C.VESDEConfig) else z
    if case.job == "pc":
        N = case.steps
        noise = {"predictor": rng.standard_normal((N, *shape)).astype(np.float32),
                 "corrector": rng.standard_normal((N, 1, *shape)).astype(np.float32)}
    elif case.job == "em":
        noise = {"predictor": diffusionjax_noise(seed, case.steps, shape)}
    else:
        noise = None
    return {"x_T": x_T, "noise": noise}


def forward_inputs(sizes, case, seed) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(C.batch_shape(sizes, case)).astype(np.float32)
    if case.net == "ncsnpp32":
        labels = np.exp(rng.uniform(np.log(0.01), np.log(50.0), size=case.batch)).astype(np.float32)
    else:
        labels = (rng.uniform(0.0, 1.0, size=case.batch) * 999).astype(np.float32)
    return {"x": x, "labels": labels}


def train_inputs(sizes, case, seed) -> dict:
    rng = np.random.default_rng(seed)
    if case.net == "mlp":
        from spec.oracles.gmm import demo_mixture
        x = demo_mixture().sample(rng, case.batch)[0].astype(np.float32)
    else:
        x = rng.uniform(-1.0, 1.0, size=C.batch_shape(sizes, case)).astype(np.float32)
    return {"x": x}


# ---------------------------------------------------------------- torch contenders


def _tsde(process):
    from torch_ref import sde as tsde

    if isinstance(process, C.VESDEConfig):
        return tsde.VESDE(sigma_min=process.sigma_min, sigma_max=process.sigma_max, N=process.N)
    return tsde.VPSDE(beta_min=process.beta_min, beta_max=process.beta_max, N=process.N)


def torch_sampler_run(sizes, case, module, inputs, *, channels_last=False):
    """A zero-argument run of torch_ref's sampler for the case with ``module``."""
    from torch_ref import ode as tode
    from torch_ref import samplers as ts
    from torch_ref.diffusion import GaussianDiffusion
    from torch_ref.models import utils as tmu

    mf = tmu.get_model_fn(module)
    process = C.process_config(case)
    image = case.net != "mlp"
    x_T = _nchw(inputs["x_T"], image)
    if image and channels_last:
        x_T = x_T.contiguous(memory_format=torch.channels_last)
    noise = inputs["noise"]
    if isinstance(noise, dict):
        noise = {k: _nchw(v, image) for k, v in noise.items()}
    elif noise is not None:
        noise = _nchw(noise, image)
    shape = tuple(x_T.shape)

    if case.job in ("ddpm", "ddim"):
        diffusion = GaussianDiffusion(process)

        def run():
            with torch.no_grad():
                if case.job == "ddpm":
                    return ts.ddpm_sample(diffusion, mf, shape, x_T=x_T, noise=noise)[0]
                return ts.ddim_sample(diffusion, mf, shape, eta=0.0, x_T=x_T)[0]
        return run
    sde = _tsde(process)
    score = tmu.get_score_fn(sde, mf, continuous=True)

    def run():
        with torch.no_grad():
            if case.job == "pc":
                return ts.pc_sample(sde, score, shape, predictor="reverse_diffusion", corrector="langevin",
                                    snr=0.16, n_steps=1, x_T=x_T, noise=noise)[0]
            if case.job == "em":
                return ts.pc_sample(sde, score, shape, predictor="euler_maruyama", corrector="none",
                                    eps=1.0 / case.steps, x_T=x_T, noise=noise)[0]
            method = case.job.split("_", 1)[1]
            tol = sizes.ode_tol
            kw = {"num_steps": case.steps} if method != "dopri5" else {"rtol": tol, "atol": tol}
            return tode.ode_sample(sde, score, shape, method=method, x_T=x_T, **kw)[0]
    return run


def diffusers_run(case, module, inputs, seed):
    """diffusers' scheduler loop driving ``module`` (eps-prediction U-Net, NCHW)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    process = C.process_config(dataclasses.replace(case, steps=1000, job="forward"))
    betas = np.asarray(process.base_betas, np.float64)
    common = dict(num_train_timesteps=1000, trained_betas=betas, clip_sample=True, clip_sample_range=1.0,
                  prediction_type="epsilon", timestep_spacing="leading", steps_offset=0)
    if case.job == "ddpm":
        sched = DDPMScheduler(variance_type="fixed_small", **common)
    else:
        sched = DDIMScheduler(set_alpha_to_one=True, **common)
    sched.set_timesteps(case.steps)
    x_T = _nchw(inputs["x_T"])
    B = x_T.shape[0]

    def run():
        gen = torch.Generator().manual_seed(seed)
        x = x_T
        with torch.no_grad():
            for t in sched.timesteps:
                eps = module(x, t.to(torch.float32).expand(B))
                if case.job == "ddpm":
                    x = sched.step(eps, t, x, generator=gen).prev_sample
                else:
                    x = sched.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        return x
    return run


_COMPILE_NOTE = "compile = first call (torch.compile compiles then)"


# --------------------------------------------------------------------- the worker


class SplitWorker:
    """The ``jax-split`` contender: a subprocess (``python -m benchmarks.worker``) whose CPU
    host is split into per-core devices; it builds the case's program sharded over them and
    times each call itself (the round-robin sends one "run" per round)."""

    def __init__(self, host_devices="auto", env=None):
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "benchmarks.worker", "--host-devices", str(host_devices)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     env=env)
        self.info = self.receive()

    def receive(self) -> dict:
        """The worker's next answer (a RuntimeError for an error or an exited worker)."""
        import json

        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"benchmarks.worker exited (code {self.proc.poll()})")
            if line.startswith("@@ "):
                msg = json.loads(line[3:])
                if "error" in msg:
                    raise RuntimeError(f"benchmarks.worker: {msg['error']}")
                return msg

    def call(self, **msg) -> dict:
        self.send(**msg)
        return self.receive()

    def send(self, **msg) -> None:
        """Send a request without waiting for its answer (``receive()`` collects it)."""
        import json

        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.call(op="close")
            except (RuntimeError, BrokenPipeError, OSError):
                pass
            self.proc.wait(timeout=30)


# ----------------------------------------------------------------------- one case


def _sync(out):
    return jax.block_until_ready(out)


def _compare(out, ref) -> float:
    a, b = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


class _Ctx:
    """Per-run caches: networks, torch.compile'd modules, forward flops."""

    def __init__(self, sizes):
        self.sizes = sizes
        self.nets: dict[str, Net] = {}
        self.compiled: dict = {}
        self.flops: dict = {}

    def net(self, name) -> Net:
        if name not in self.nets:
            self.nets[name] = build_net(self.sizes, name)
        return self.nets[name]


def make_context(sizes) -> _Ctx:
    return _Ctx(sizes)


def _forward_flops(ctx, case, variables) -> float | None:
    key = (case.net, case.batch)
    if key not in ctx.flops:
        fc = dataclasses.replace(case, job="forward")
        inp = forward_inputs(ctx.sizes, fc, 0)
        ctx.flops[key] = C.jax_flops(C.jax_forward(ctx.sizes, fc), variables, inp["x"], inp["labels"])
    return ctx.flops[key]


def run_case(ctx: _Ctx, case: C.Case, *, contenders=None, worker: SplitWorker | None = None,
             repeats: int | None = None, seed: int = 0) -> dict:
    """Build, time and compare every contender of ``case``; returns the result dict."""
    sizes = ctx.sizes
    chosen = [c for c in case.contenders if contenders is None or c in contenders]
    if "jax-split" in chosen and worker is None:
        chosen.remove("jax-split")
    repeats = repeats or sizes.repeats
    variants: list[Variant] = []
    extra: dict[str, dict] = {}
    net = ctx.net(case.net)
    image = case.net != "mlp"
    result: dict[str, Any] = {"name": case.name, "title": case.title, "net": case.net, "job": case.job,
                              "batch": case.batch, "steps": case.steps,
                              "network": dataclasses.asdict(net.config), "reference": "jax"}
    if net.fit is not None:
        result["score_fit"] = net.fit
    flops_per_call = None
    nfe = None
    if case.job == "train":
        inputs = train_inputs(sizes, case, seed)
    elif case.job == "forward":
        inputs = forward_inputs(sizes, case, seed)
    else:
        inputs = sampler_inputs(sizes, case, seed)
    # A tiny run (a smoke test; its times are not the point) lets the worker build and
    # compile its program while this process compiles the jax row: both cores work. A
    # timed run builds them one after the other, so that neither compile time is inflated.
    overlap = sizes.mode == "tiny"
    with tempfile.TemporaryDirectory() as tmp:
        if "jax-split" in chosen:
            path = os.path.join(tmp, "inputs.pkl")
            with open(path, "wb") as f:
                pickle.dump({"variables": net.variables, "inputs": inputs}, f)
            worker.send(op="setup", mode=sizes.mode, case=case.name, data=path)
            info = None if overlap else worker.receive()
        # ------------------------------------------------------------- jax (main process)
        if case.job == "train":
            state = C.jax_train_state(sizes, case)
            x = jnp.asarray(inputs["x"])
            fn = C.jax_train_step(sizes, case)
            t0 = time.perf_counter()
            # the state is donated and carried from call to call, as the training loop
            # (train.make_train_step), the jax-split worker and torch's in-place optimiser
            # do: the first call (the compared one) starts from the initial state
            compiled = jax.jit(fn, donate_argnums=0).lower(state, x).compile()
            compile_s = time.perf_counter() - t0
            flops_per_call = C.jax_flops(fn, state, x)
            carried = {"state": jax.tree_util.tree_map(jnp.copy, state)}

            def run_jax_train():
                carried["state"], metrics = compiled(carried["state"], x)
                return _sync(metrics)
            variants.append(Variant("jax", run_jax_train, compile_s))
            extra["jax"] = {"xla_memory_bytes": C.jax_memory(compiled)}
            outputs_of = {"jax": lambda m: np.array([float(m["loss"]), float(m["grad_norm"])])}
        elif case.job == "forward":
            fn = C.jax_forward(sizes, case)
            args = (net.variables, jnp.asarray(inputs["x"]), jnp.asarray(inputs["labels"]))
            t0 = time.perf_counter()
            compiled = jax.jit(fn).lower(*args).compile()
            compile_s = time.perf_counter() - t0
            flops_per_call = C.jax_flops(fn, *args)
            ctx.flops[(case.net, case.batch)] = flops_per_call
            nfe = 1
            variants.append(Variant("jax", lambda: _sync(compiled(*args)), compile_s))
            extra["jax"] = {"xla_memory_bytes": C.jax_memory(compiled)}
        else:
            fn = C.jax_sampler(sizes, case)
            noise = jax.tree_util.tree_map(jnp.asarray, inputs["noise"])
            x_T = jnp.asarray(inputs["x_T"])
            v = net.variables

            def prog(v, noise, x_T):
                return fn(None, v, noise, x_T=x_T)

            t0 = time.perf_counter()
            compiled = jax.jit(prog).lower(v, noise, x_T).compile()
            compile_s = time.perf_counter() - t0
            variants.append(Variant("jax", lambda: _sync(compiled(v, noise, x_T)), compile_s))
            extra["jax"] = {"xla_memory_bytes": C.jax_memory(compiled)}

        # ------------------------------------------------------------- jax-split (worker)
        if "jax-split" in chosen:
            if info is None:
                info = worker.receive()
            extra["jax-split"] = {"devices": info["devices"], "xla_memory_bytes": info.get("xla_memory_bytes")}
            out_path = os.path.join(tmp, "split_out.pkl")

            def split_run(first=[True]):  # noqa: B006 -- the first call keeps its output
                msg = worker.call(op="run", keep=out_path if first[0] else None)
                first[0] = False
                return timing.SelfTimed(msg["dt"], msg.get("peak_rss_mib"), msg.get("cpu_s"))
            variants.append(Variant("jax-split", split_run, info.get("compile_s"),
                                    note=f"{info['devices']} host devices" + (
                                        "" if info.get("compile_s") is not None else
                                        "; compile = first call - median")))

        # ------------------------------------------------------------- torch contenders
        if case.job == "train":
            _add_torch_train(ctx, case, chosen, variants, state, inputs)
        elif case.job == "forward":
            tx, tl = _nchw(inputs["x"], image), torch.from_numpy(inputs["labels"])
            for name in chosen:
                mod, xin = _torch_module(ctx, case, name, net, tx)
                if mod is None:
                    continue
                variants.append(Variant(name, _torch_fwd(mod, xin, tl),
                                        note=_COMPILE_NOTE if name == "torch-compile" else ""))
        else:
            for name in chosen:
                if name in ("torch", "torch-cl", "torch-compile"):
                    mod, _ = _torch_module(ctx, case, name, net, None)
                    if mod is None:
                        continue
                    variants.append(Variant(name, torch_sampler_run(sizes, case, mod, inputs,
                                                                    channels_last=name == "torch-cl"),
                                            note=_COMPILE_NOTE if name == "torch-compile" else ""))
                elif name == "diffusers":
                    variants.append(Variant(name, diffusers_run(case, net.tmodel, inputs, seed)))
                elif name == "diffusionjax":
                    run, c_s = _diffusionjax_run(sizes, case, net, inputs, seed)
                    variants.append(Variant(name, run, c_s))

        stats, outs = timing.measure(variants, repeats)

        if "jax-split" in stats:
            with open(out_path, "rb") as f:
                outs["jax-split"] = pickle.load(f)
            s = stats["jax-split"]
            if s["compile_s"] is None:
                s["compile_s"] = max(0.0, s["first_call_s"] - s["median_s"])
        if "torch-compile" in stats:
            s = stats["torch-compile"]
            s["compile_s"] = max(0.0, s["first_call_s"] - s["median_s"])
    # ---------------------------------------------------------------- compare + figures
    ref_out = outs["jax"]
    if case.job == "train":
        def as_arr(name, o):
            if isinstance(o, dict):
                return np.array([float(o["loss"]), float(o["grad_norm"])])
            return np.asarray(o)
        arrs = {k: as_arr(k, o) for k, o in outs.items()}
    else:
        def as_arr(name, o):
            if isinstance(o, (tuple, list)):
                o = o[0]
            if isinstance(o, torch.Tensor):
                return _nhwc(o) if image else o.detach().cpu().numpy()
            return np.asarray(o)
        if case.is_sampler and isinstance(ref_out, (tuple, list)):
            nfe = int(np.asarray(ref_out[1]))
        arrs = {k: as_arr(k, o) for k, o in outs.items()}
    ref = arrs["jax"]
    scale = 1.0 + float(np.max(np.abs(ref))) if ref.size else 1.0
    tol = TOLERANCE[case.job]
    if case.is_sampler and nfe is not None:
        fl = _forward_flops(ctx, case, net.variables)
        flops_per_call = None if fl is None else fl * nfe
    for name, s in stats.items():
        d = _compare(arrs[name], ref)
        s["max_abs_diff_vs_jax"] = d
        s["agrees"] = bool(d <= tol * scale)
        s.update(extra.get(name, {}))
        if case.is_sampler:
            s["samples_per_s"] = case.batch / s["median_s"]
        if case.job == "train":
            s["steps_per_s"] = 1.0 / s["median_s"]
        if nfe:
            s["per_nfe_s"] = s["median_s"] / nfe
        s["flops_per_s"] = None if flops_per_call is None else flops_per_call / s["median_s"]
    timing.add_ratios(stats, "jax")
    result.update({
        "nfe": nfe, "flops_per_call": flops_per_call, "tolerance": tol, "output_max_abs": scale - 1.0,
        "variants": stats, "all_agree": all(s["agrees"] for s in stats.values()),
    })
    return result


def _torch_module(ctx, case, name, net, tx):
    """(module, input) for a torch contender row (None when it does not apply)."""
    image = case.net != "mlp"
    if name == "torch":
        return net.tmodel, tx
    if name == "torch-cl":
        if not image:
            return None, None
        return net.channels_last(), (None if tx is None else tx.contiguous(memory_format=torch.channels_last))
    if name == "torch-compile":
        key = (case.net, case.batch)
        if key not in ctx.compiled:
            base = net.channels_last() if image else net.tmodel
            ctx.compiled[key] = torch.compile(base, dynamic=False)
        xin = None if tx is None else (tx.contiguous(memory_format=torch.channels_last) if image else tx)
        return ctx.compiled[key], xin
    return None, None


def _torch_fwd(mod, x, labels):
    def run():
        with torch.no_grad():
            return mod(x, labels)
    return run


def _add_torch_train(ctx, case, chosen, variants, jstate, inputs):
    from jax_impl import convert as jc
    from jax_impl import train as jt
    from torch_ref import train as tt

    sizes = ctx.sizes
    cfg = C.run_config(sizes, case)
    x = jnp.asarray(inputs["x"])
    key = jax.random.fold_in(jstate.rng, jstate.step)
    t, z = jt.draw_randomness(key, cfg, jstate, x)
    t_np, z_np = np.asarray(t), np.asarray(z)
    sd = jc.flax_to_torch_state_dict({"params": jstate.params, **jstate.constants}, cfg.model)
    for name in chosen:
        if name not in ("torch", "torch-cl"):
            continue
        if name == "torch-cl" and case.net == "mlp":
            continue
        ts = tt.create_train_state(cfg)
        ts.model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in sd.items()})
        with torch.no_grad():
            for e in ts.ema:
                for k in e:
                    e[k].copy_(ts.params[k])
        image = case.net != "mlp"
        xt, zt = _nchw(inputs["x"], image), _nchw(z_np, image)
        if name == "torch-cl":
            ts.model.to(memory_format=torch.channels_last)
            xt, zt = xt.contiguous(memory_format=torch.channels_last), zt.contiguous(memory_format=torch.channels_last)
        tt_ = torch.as_tensor(t_np).to(torch.int64 if np.issubdtype(t_np.dtype, np.integer) else torch.float32)

        def run(ts=ts, xt=xt, tt_=tt_, zt=zt):
            return tt.train_step_core(cfg, ts, xt, tt_, zt)[1]
        variants.append(Variant(name, run))


def _diffusionjax_run(sizes, case, net, inputs, seed):
    """diffusionjax's Euler-Maruyama sampler on the reverse VP SDE with the flax score."""
    from diffusionjax.sde import VP
    from diffusionjax.solvers import EulerMaruyama
    from diffusionjax.utils import get_linear_beta_function, get_sampler, get_times

    from jax_impl.models import registry
    from jax_impl.models import utils as jmu

    process = C.process_config(case)
    model = registry.create_model(net.config)
    jsde = C._jax_sde(process)
    beta, mean_coeff = get_linear_beta_function(beta_min=process.beta_min, beta_max=process.beta_max)
    vp = VP(beta, mean_coeff)
    ts_, _ = get_times(num_steps=case.steps)
    shape = C.batch_shape(sizes, case)

    def sample(v, key, x_0):
        score = jmu.get_score_fn(jsde, jmu.get_model_fn(model, v), continuous=True)
        solver = EulerMaruyama(vp.reverse(lambda x, t: score(x, t)), ts_)
        return get_sampler(shape, solver, denoise=True)(key, x_0=x_0)[0]

    v = net.variables
    key = jax.random.PRNGKey(seed)
    x_0 = jnp.asarray(inputs["x_T"])
    t0 = time.perf_counter()
    compiled = jax.jit(sample).lower(v, key, x_0).compile()
    return (lambda: _sync(compiled(v, key, x_0))), time.perf_counter() - t0
