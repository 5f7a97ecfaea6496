"""The three benchmarks: PC sampler loop overhead, U-Net forward, DDIM sampling.

Every benchmark builds ONE torch module (seeded; the MLP then fitted for a few hundred
Adam steps to a 2-D mixture so the sampler follows a meaningful score, the U-Net's
parameters perturbed by numpy noise so that no zero-initialised layer, e.g. its output
conv, hides a mismatch), converts its ``state_dict`` with ``jax_impl.convert.torch_to_flax_variables`` and feeds
both frameworks the same numpy-drawn inputs and noise; the outputs of the first call of
every variant are compared (max abs difference) before anything is quoted.

Imports jax: ``benchmarks.run`` sets ``XLA_FLAGS`` (host device count) before importing
this module.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch

import spec
from benchmarks.timing import Variant, add_ratios, measure, timed
from jax_impl import convert as jconvert
from jax_impl import diffusion as jdiffusion
from jax_impl import samplers as jsamplers
from jax_impl import samplers_discrete as jsd
from jax_impl import sde as jsde
from jax_impl.models import ddpm as jddpm
from jax_impl.models import mlp as jmlp
from jax_impl.models import utils as jmutils
from spec.model_configs import DDPMConfig, MLPConfig
from spec.oracles.gmm import demo_mixture
from torch_ref import diffusion as tdiffusion
from torch_ref import losses as tlosses
from torch_ref import samplers as tsamplers
from torch_ref import samplers_discrete as tsd
from torch_ref import sde as tsde
from torch_ref.models import ddpm as tddpm
from torch_ref.models import mlp as tmlp
from torch_ref.models import utils as tmutils


# ------------------------------------------------------------------------------ sizes


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Problem sizes and repeat counts of one run mode."""

    pc_N: int
    pc_batches: tuple[int, ...]
    pc_hidden: tuple[int, ...]
    pc_repeats: int
    pc_fit_steps: int
    unet: DDPMConfig
    fwd_batch: int
    fwd_repeats: int
    ddim_steps: int
    ddim_batch: int
    ddim_repeats: int


def _unet(nf: int, num_res_blocks: int) -> DDPMConfig:
    return DDPMConfig(nf=nf, ch_mult=(1, 2, 2), num_res_blocks=num_res_blocks, attn_resolutions=(16,),
                      image_size=32, num_channels=3, dropout=0.0)


FULL = Sizes(pc_N=1000, pc_batches=(1024, 64), pc_hidden=(128, 128, 128), pc_repeats=5, pc_fit_steps=400,
             unet=_unet(nf=64, num_res_blocks=2), fwd_batch=32, fwd_repeats=7,
             ddim_steps=10, ddim_batch=8, ddim_repeats=5)
QUICK = Sizes(pc_N=100, pc_batches=(1024, 64), pc_hidden=(128, 128, 128), pc_repeats=3, pc_fit_steps=100,
              unet=_unet(nf=32, num_res_blocks=1), fwd_batch=8, fwd_repeats=3,
              ddim_steps=5, ddim_batch=4, ddim_repeats=3)


# ---------------------------------------------------------------------------- helpers


def perturb_(module: torch.nn.Module, rng: np.random.Generator, scale: float) -> torch.nn.Module:
    """Add N(0, scale^2) numpy noise to every parameter, in place (no layer stays zero)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.as_tensor(rng.normal(0.0, scale, size=tuple(p.shape)), dtype=p.dtype))
    return module


def fit_mlp_(tmodel: torch.nn.Module, tsde_, rng: np.random.Generator, steps: int,
             batch: int = 512, lr: float = 2e-3) -> dict:
    """A short denoising-score-matching fit (``torch_ref.losses.sde_loss``, Adam) of ``tmodel``
    to the demo 2-D Gaussian mixture, in place, so the sampler runs a meaningful score
    (a random network's Langevin steps wander off to |x| ~ 1e3 and the agreement check
    would be about a diverging trajectory). Data, times and noise come from ``rng``.
    Returns the first and last loss and the seconds spent (not part of any timing)."""
    score_fn = tmutils.get_score_fn(tsde_, tmutils.get_model_fn(tmodel, train=True), continuous=True)
    opt = torch.optim.Adam(tmodel.parameters(), lr=lr)
    mixture = demo_mixture()
    losses = []

    def fit():
        for _ in range(steps):
            x = torch.as_tensor(mixture.sample(rng, batch)[0], dtype=torch.float32)
            t = torch.as_tensor(rng.uniform(1e-5, 1.0, size=batch), dtype=torch.float32)
            z = torch.as_tensor(rng.standard_normal((batch, 2)), dtype=torch.float32)
            loss = tlosses.sde_loss(tsde_, score_fn, x, t, z).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())

    fit_s, _ = timed(fit)
    tmodel.eval()
    return {"steps": steps, "batch": batch, "lr": lr, "first_loss": losses[0], "last_loss": losses[-1],
            "seconds": fit_s, "data": "spec.oracles.gmm.demo_mixture()"}


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _aot(fn, *args) -> tuple[float, object]:
    """``(compile seconds, compiled)`` for ``jax.jit(fn)`` at ``args`` (lower + compile)."""
    return timed(lambda: jax.jit(fn).lower(*args).compile())


def _host_mesh_sharding(n: int):
    """Batch-sharded and replicated ``NamedSharding`` over the first ``n`` devices."""
    mesh = jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])
    P = jax.sharding.PartitionSpec
    return (jax.sharding.NamedSharding(mesh, P("data")), jax.sharding.NamedSharding(mesh, P()))


def _torch_sync(x):
    if isinstance(x, torch.Tensor) and x.is_cuda:
        torch.cuda.synchronize(x.device)
    return x


# ------------------------------------------------------------------ 1. PC sampler loop


def bench_pc(sizes: Sizes, seed: int = 0) -> list[dict]:
    """Reverse-diffusion + Langevin PC sampling of a VPSDE with a small MLP on 2-D data.

    Variants (same weights, same pre-drawn noise): the whole loop as one ``lax.scan``
    under jit (``pc_sample`` with ``x_T=`` and ``noise=``); a Python ``for`` loop calling a
    jitted corrector+predictor step (noise and grid passed whole and indexed inside the
    step, so each step is exactly one dispatch; synchronised once at the end); torch eager
    ``pc_sample`` on the same pre-drawn noise (a ``for`` loop). Plus, not compared
    numerically, ``pc_sample`` drawing its noise in the loop (JAX ``fold_in`` per step).

    One fitted MLP serves every batch size of ``sizes.pc_batches``: at a large batch the
    step is matmul-bound, at a small one the per-step overhead shows.
    """
    N = sizes.pc_N
    cfg = MLPConfig(data_dim=2, hidden_dims=sizes.pc_hidden, embedding_dim=64)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    tsde_ = tsde.VPSDE(beta_min=0.1, beta_max=20.0, N=N)
    tmodel = tmlp.MLP(cfg)
    fit = fit_mlp_(tmodel, tsde_, rng, sizes.pc_fit_steps)
    variables = jconvert.torch_to_flax_variables(tmodel.state_dict(), cfg)
    return [_bench_pc_batch(sizes, B, cfg, tmodel, variables, fit, rng, seed) for B in sizes.pc_batches]


def _bench_pc_batch(sizes, B, cfg, tmodel, variables, fit, rng, seed) -> dict:
    N = sizes.pc_N
    jsde_, tsde_ = jsde.VPSDE(beta_min=0.1, beta_max=20.0, N=N), tsde.VPSDE(beta_min=0.1, beta_max=20.0, N=N)
    fmodel = jmlp.MLP(cfg)
    opts = dict(predictor="reverse_diffusion", corrector="langevin", snr=0.16, n_steps=1)
    pred, corr, timesteps = jsamplers.pc_components(jsde_, **opts)
    shapes = jsamplers.pc_noise_shapes(pred, corr, (B, 2))
    prior = rng.standard_normal((B, 2), dtype=np.float32)
    pn = rng.standard_normal((N, *shapes["predictor"]), dtype=np.float32)
    cn = rng.standard_normal((N, *shapes["corrector"]), dtype=np.float32)
    nfe = jsamplers.pc_nfe(pred, corr, N)

    def jscore(v):
        return jmutils.get_score_fn(jsde_, jmutils.get_model_fn(fmodel, v), continuous=True)

    # (a) whole loop in one lax.scan
    def scan_fn(v, prior, pn, cn):
        return jsamplers.pc_sample(None, jsde_, jscore(v), prior.shape, x_T=jsde_.prior_from_noise(prior),
                                   noise={"predictor": pn, "corrector": cn}, **opts)[0]

    jargs = (variables, jnp.asarray(prior), jnp.asarray(pn), jnp.asarray(cn))
    scan_compile_s, scan_c = _aot(scan_fn, *jargs)

    # (b) Python loop over a jitted step
    ts = jnp.asarray(timesteps, jnp.float32)

    @jax.jit
    def step(v, x, i, pn, cn):
        score_fn = jscore(v)
        vec_t = jnp.broadcast_to(ts[i], (B,))
        x, x_mean = corr.step(jsde_, score_fn, x, vec_t, cn[i])
        return pred.step(jsde_, score_fn, x, vec_t, pn[i])

    step_compile_s, _ = timed(lambda: jax.block_until_ready(step(jargs[0], jargs[1], 0, jargs[2], jargs[3])))

    def loop_run():
        v, x, pn_, cn_ = jargs
        x = jsde_.prior_from_noise(x)
        x_mean = x
        for i in range(N):
            x, x_mean = step(v, x, i, pn_, cn_)
        return jax.block_until_ready(x_mean)

    # (c) JAX, noise drawn inside the scan from a key (pc_sample)
    def key_fn(v, key):
        return jsamplers.pc_sample(key, jsde_, jscore(v), (B, 2), **opts)[0]

    key = jax.random.PRNGKey(seed)
    key_compile_s, key_c = _aot(key_fn, variables, key)

    # (d) torch eager
    tscore = tmutils.get_score_fn(tsde_, tmutils.get_model_fn(tmodel), continuous=True)
    targs = (torch.from_numpy(prior), torch.from_numpy(pn), torch.from_numpy(cn))

    def torch_run():
        with torch.no_grad():
            prior_t, pn_t, cn_t = targs
            return _torch_sync(tsamplers.pc_sample(
                tsde_, tscore, tuple(prior_t.shape), x_T=tsde_.prior_from_noise(prior_t),
                noise={"predictor": pn_t, "corrector": cn_t}, **opts)[0])

    variants = [
        Variant("jax: lax.scan under jit (pc_sample, pre-drawn noise)",
                lambda: jax.block_until_ready(scan_c(*jargs)), scan_compile_s),
        Variant("jax: Python loop over a jitted step", loop_run, step_compile_s,
                "compile_s: compile + first call of the step"),
        Variant("jax: lax.scan, in-loop RNG (pc_sample)",
                lambda: jax.block_until_ready(key_c(variables, key)), key_compile_s,
                "own noise: not compared"),
        Variant("torch eager: for loop (pc_sample, pre-drawn noise)", torch_run),
    ]
    stats, outs = measure(variants, sizes.pc_repeats)
    add_ratios(stats, variants[0].name)
    ref = _np(outs[variants[3].name])
    for v in variants[:2]:
        stats[v.name]["max_abs_diff_vs_torch"] = max_abs_diff(_np(outs[v.name]), ref)
    stats[variants[1].name]["max_abs_diff_vs_jax_scan"] = max_abs_diff(
        _np(outs[variants[1].name]), _np(outs[variants[0].name]))
    per_step = {name: s["median_s"] / N for name, s in stats.items()}
    return {
        "name": f"pc_sampler_b{B}",
        "title": f"PC sampler, VPSDE N={N}, reverse_diffusion + langevin, MLP{sizes.pc_hidden} on 2-D, batch {B}",
        "config": {"sde": "VPSDE(beta_min=0.1, beta_max=20, N=%d)" % N, "continuous": True, **opts,
                   "denoise": True, "batch": B, "mlp": dataclasses.asdict(cfg), "nfe": nfe,
                   "dtype": "float32", "num_parameters": int(sum(p.numel() for p in tmodel.parameters())),
                   "score_fit": fit},
        "baseline": variants[0].name,
        "variants": stats,
        "per_step_median_s": per_step,
        "sample_mean_std": [np.mean(ref, 0).tolist(), np.std(ref, 0).tolist()],
        "data_mean": demo_mixture().mean.tolist(),
        "output_max_abs": float(np.max(np.abs(ref))),
    }


# ------------------------------------------------------------------ shared U-Net pair


def _unet_pair(cfg: DDPMConfig, seed: int):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    tmodel = perturb_(tddpm.DDPM(cfg), rng, 0.02).eval()
    fmodel = jddpm.DDPM(cfg)
    variables = jconvert.torch_to_flax_variables(tmodel.state_dict(), cfg)
    return rng, tmodel, fmodel, variables


def _channels_last_copy(tmodel: torch.nn.Module, cfg: DDPMConfig) -> torch.nn.Module:
    clone = tddpm.DDPM(cfg).eval()
    clone.load_state_dict(tmodel.state_dict())
    return clone.to(memory_format=torch.channels_last)


# ------------------------------------------------------------------ 2. U-Net forward


def bench_unet_forward(sizes: Sizes, seed: int = 1, host_devices: int = 1, use_compile: bool = False) -> dict:
    """One forward pass of a small DDPM U-Net: flax under jit (NHWC) vs torch eager (NCHW,
    and channels_last), identical weights and inputs; optionally the batch sharded over
    ``host_devices`` CPU devices (JAX) and ``torch.compile`` (``use_compile``)."""
    cfg, B = sizes.unet, sizes.fwd_batch
    rng, tmodel, fmodel, variables = _unet_pair(cfg, seed)
    x_nchw = rng.standard_normal((B, 3, cfg.image_size, cfg.image_size), dtype=np.float32)
    labels = rng.integers(0, 1000, size=B).astype(np.float32)
    x_nhwc = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))

    def fwd(v, x, lab):
        return fmodel.apply(v, x, lab, train=False)

    jargs = (variables, jnp.asarray(x_nhwc), jnp.asarray(labels))
    c_s, fwd_c = _aot(fwd, *jargs)
    variants = [Variant("jax: jit (1 device)", lambda: jax.block_until_ready(fwd_c(*jargs)), c_s)]

    if host_devices > 1 and B % host_devices == 0:
        batch_sh, repl = _host_mesh_sharding(host_devices)
        sargs = (jax.device_put(variables, repl), jax.device_put(jargs[1], batch_sh),
                 jax.device_put(jargs[2], batch_sh))
        cs_s, fwd_sc = _aot(fwd, *sargs)
        variants.append(Variant(f"jax: jit, batch sharded over {host_devices} host devices",
                                lambda: jax.block_until_ready(fwd_sc(*sargs)), cs_s))

    tx, tl = torch.from_numpy(x_nchw), torch.from_numpy(labels)
    tmodel_cl = _channels_last_copy(tmodel, cfg)
    tx_cl = tx.contiguous(memory_format=torch.channels_last)

    def torch_run(model, x):
        def run():
            with torch.no_grad():
                return _torch_sync(model(x, tl))
        return run

    variants.append(Variant("torch eager (NCHW)", torch_run(tmodel, tx)))
    variants.append(Variant("torch eager, channels_last", torch_run(tmodel_cl, tx_cl)))
    if use_compile:
        compiled = torch.compile(tmodel_cl)
        variants.append(Variant("torch.compile, channels_last", torch_run(compiled, tx_cl),
                                note="first call includes the compile"))

    stats, outs = measure(variants, sizes.fwd_repeats)
    add_ratios(stats, variants[0].name)
    ref = _np(outs["torch eager (NCHW)"])
    for name, out in outs.items():
        o = _np(out)
        if name.startswith("jax"):
            o = o.transpose(0, 3, 1, 2)
        stats[name]["max_abs_diff_vs_torch"] = max_abs_diff(o, ref)
    return {
        "name": "unet_forward",
        "title": f"DDPM U-Net forward, nf={cfg.nf} ch_mult={cfg.ch_mult} res_blocks={cfg.num_res_blocks}, "
                 f"{cfg.image_size}x{cfg.image_size}x3, batch {B}",
        "config": {"ddpm": dataclasses.asdict(cfg), "batch": B, "dtype": "float32",
                   "num_parameters": int(sum(p.numel() for p in tmodel.parameters()))},
        "baseline": variants[0].name,
        "variants": stats,
        "output_max_abs": float(np.max(np.abs(ref))),
    }


# ------------------------------------------------------------------ 3. DDIM sampling


def bench_ddim(sizes: Sizes, seed: int = 2, host_devices: int = 1) -> dict:
    """DDIM (eta = 0) on a linear 1000-step schedule respaced to ``ddim<K>``, with the small
    U-Net as the eps model: ``jax_impl.samplers_discrete.ddim_sample`` (one ``lax.scan``,
    jitted) vs ``torch_ref.samplers_discrete.ddim_sample`` (eager loop), same x_T."""
    cfg, B, K = sizes.unet, sizes.ddim_batch, sizes.ddim_steps
    rng, tmodel, fmodel, variables = _unet_pair(cfg, seed)
    dcfg = spec.DiffusionConfig(steps=1000, noise_schedule="linear", timestep_respacing=f"ddim{K}")
    jdiff = jdiffusion.GaussianDiffusion(dcfg)
    tdiff = tdiffusion.GaussianDiffusion(dcfg)
    xT_nchw = rng.standard_normal((B, 3, cfg.image_size, cfg.image_size), dtype=np.float32)
    xT_nhwc = np.ascontiguousarray(xT_nchw.transpose(0, 2, 3, 1))
    shape = xT_nhwc.shape

    def ddim_fn(v, x_T):
        return jsd.ddim_sample(None, jdiff, jmutils.get_model_fn(fmodel, v), shape, eta=0.0, x_T=x_T)[0]

    jargs = (variables, jnp.asarray(xT_nhwc))
    c_s, ddim_c = _aot(ddim_fn, *jargs)
    variants = [Variant("jax: ddim_sample, lax.scan under jit (1 device)",
                        lambda: jax.block_until_ready(ddim_c(*jargs)), c_s)]
    if host_devices > 1 and B % host_devices == 0:
        batch_sh, repl = _host_mesh_sharding(host_devices)
        sargs = (jax.device_put(variables, repl), jax.device_put(jargs[1], batch_sh))
        cs_s, ddim_sc = _aot(ddim_fn, *sargs)
        variants.append(Variant(f"jax: ddim_sample, batch sharded over {host_devices} host devices",
                                lambda: jax.block_until_ready(ddim_sc(*sargs)), cs_s))

    tmodel_cl = _channels_last_copy(tmodel, cfg)
    txT = torch.from_numpy(xT_nchw)
    txT_cl = txT.contiguous(memory_format=torch.channels_last)

    def torch_run(model, x_T):
        model_fn = tmutils.get_model_fn(model)

        def run():
            with torch.no_grad():
                return _torch_sync(tsd.ddim_sample(tdiff, model_fn, tuple(x_T.shape), eta=0.0, x_T=x_T)[0])
        return run

    variants.append(Variant("torch eager: ddim_sample (NCHW)", torch_run(tmodel, txT)))
    variants.append(Variant("torch eager: ddim_sample, channels_last", torch_run(tmodel_cl, txT_cl)))
    stats, outs = measure(variants, sizes.ddim_repeats)
    add_ratios(stats, variants[0].name)
    ref = _np(outs["torch eager: ddim_sample (NCHW)"])
    for name, out in outs.items():
        o = _np(out)
        if name.startswith("jax"):
            o = o.transpose(0, 3, 1, 2)
        stats[name]["max_abs_diff_vs_torch"] = max_abs_diff(o, ref)
    return {
        "name": "ddim",
        "title": f"DDIM (eta=0, ddim{K} of a linear 1000-step schedule), U-Net nf={cfg.nf} "
                 f"res_blocks={cfg.num_res_blocks}, 32x32x3, batch {B}",
        "config": {"diffusion": {"steps": 1000, "noise_schedule": "linear", "timestep_respacing": f"ddim{K}",
                                 "model_mean_type": "epsilon", "model_var_type": "fixed_small",
                                 "clip_denoised": True, "eta": 0.0},
                   "ddpm": dataclasses.asdict(cfg), "batch": B, "nfe": K, "dtype": "float32"},
        "baseline": variants[0].name,
        "variants": stats,
        "output_max_abs": float(np.max(np.abs(ref))),
    }
