"""The sampler demo on a 2-D Gaussian mixture with an exact score:
``python -m scorediff.demo --out outputs/demo`` (``make run``).

Every sampler of the library is fed the exact perturbed score of
``spec.oracles.gmm.demo_mixture()`` (so any error is the sampler's, not a network's) and
run in JAX (one jitted program per sampler, float32) and in the PyTorch reference. For
each sampler the demo prints:

  * ``jax-torch``: max |x_jax - x_torch| of the two frameworks on shared noise (the same
    numpy-drawn start ``x_T=`` and step ``noise=`` fed to both samplers, float32);
  * the distance of the JAX samples to the true mixture -- sliced Wasserstein-1 against a
    large exact reference sample (SW1), the largest error of the mean, of the covariance
    entries and of the component weights (mean responsibilities) -- and SW1 of the torch
    samples; the row ``exact`` gives the same numbers for a fresh exact sample of the same
    size: the Monte-Carlo floor nothing can beat;
  * timings: JAX compile time (lower + compile) apart from the run time, medians of
    ``--repeats`` runs with new keys / generators (second and later calls, compiled);
  * the exact log-density against the probability-flow ODE log-likelihood
    (``jax_impl.ode.likelihood``), and a scatter plot of every sampler's JAX samples over
    the mixture density (``<out>/samples.png``); all numbers go to ``<out>/results.json``.

``--quick`` runs a tiny version (the test suite's). The full run finishes in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

import spec
from jax_impl import fast_samplers as jfast
from jax_impl import gmm as jgmm
from jax_impl import ode as jode
from jax_impl import samplers as jsamplers
from jax_impl import samplers_discrete as jdisc
from jax_impl import sde as jsde
from jax_impl.diffusion import GaussianDiffusion as JDiffusion
from jax_impl.utils import append_dims as j_append_dims
from spec.oracles import gmm as gmm_oracle
from spec.schedules import geometric_sigmas
from torch_ref import fast_samplers as tfast
from torch_ref import gmm as tgmm
from torch_ref import ode as tode
from torch_ref import samplers as tsamplers
from torch_ref import samplers_discrete as tdisc
from torch_ref import sde as tsde
from torch_ref.diffusion import GaussianDiffusion as TDiffusion
from torch_ref.utils import append_dims as t_append_dims


@dataclasses.dataclass(frozen=True)
class DemoSizes:
    """Problem sizes of a demo run."""

    n: int = 2000  # samples per sampler
    n_parity: int = 128  # samples of the shared-noise parity run
    pc_steps: int = 200  # N of the PC samplers' SDEs
    ald_levels: int = 10
    ald_steps_each: int = 60
    ode_steps: int = 50  # rk4 steps (4 evaluations each)
    ddpm_respacing: str = "250"
    ddim_respacing: str = "ddim50"
    fast_steps: int = 18  # EDM Heun levels (2n - 1 evaluations) / DPM-Solver++ steps
    n_likelihood: int = 200
    repeats: int = 3
    reference: int = 100_000  # exact reference sample for the sliced Wasserstein distance


QUICK = DemoSizes(n=256, n_parity=32, pc_steps=30, ald_levels=5, ald_steps_each=5, ode_steps=8,
                  ddpm_respacing="30", ddim_respacing="ddim10", fast_steps=10, n_likelihood=16,
                  repeats=1, reference=20_000)


@dataclasses.dataclass
class DemoSampler:
    """One sampler in both frameworks. ``jax_run(key) -> (x, nfe)`` is jitted;
    ``torch_run(generator) -> (x, nfe)``; ``make_noise(rng, n)`` draws the shared numpy
    noise that ``jax_predrawn(*noise)`` and ``torch_predrawn(*noise)`` consume."""

    name: str
    jax_run: Callable
    torch_run: Callable
    make_noise: Callable
    jax_predrawn: Callable
    torch_predrawn: Callable


# ------------------------------------------------------------------- exact models


def _eps_models(config: spec.DiffusionConfig, mixture):
    """Exact eps-prediction models of the discrete diffusion: the model sees the base
    index ``t_model`` and returns ``-sqrt(1 - abar) score_t(x)`` (x_t = sqrt(abar) x_0 +
    sqrt(1 - abar) eps)."""
    abar = np.cumprod(1.0 - config.base_betas)
    w, m, c = mixture.weights, mixture.means, mixture.covs

    def j_model(x, t_model):
        ab = jnp.asarray(abar, x.dtype)[t_model]
        s = jnp.sqrt(1.0 - ab)
        return -j_append_dims(s, x.ndim) * jgmm.gmm_score(x, w, m, c, jnp.sqrt(ab), s)

    def t_model_fn(x, t_model):
        ab = torch.as_tensor(abar, dtype=x.dtype)[t_model.long()]
        s = torch.sqrt(1.0 - ab)
        return -t_append_dims(s, x.ndim) * tgmm.gmm_score(x, w, m, c, torch.sqrt(ab), s)

    return j_model, t_model_fn


def _level_scores(mixture, sigmas):
    w, m, c = mixture.weights, mixture.means, mixture.covs

    def j_score(x, level):
        return jgmm.gmm_score(x, w, m, c, 1.0, jnp.asarray(sigmas, x.dtype)[level])

    def t_score(x, level):
        return tgmm.gmm_score(x, w, m, c, 1.0, torch.as_tensor(sigmas, dtype=x.dtype)[level])

    return j_score, t_score


# ----------------------------------------------------------------------- samplers


def build_samplers(mixture, sizes: DemoSizes) -> list[DemoSampler]:
    """The demo's samplers, each with its JAX and torch runs on drawn and on shared noise."""
    f32, t32 = jnp.float32, torch.float32
    out = []
    T = torch.as_tensor

    def nrm(rng, *shape):
        return rng.standard_normal(shape).astype(np.float32)

    # -- predictor-corrector on VP and VE ---------------------------------------------
    for label, jsd, tsd in (
        ("PC VP rev-diff+Langevin", jsde.VPSDE(N=sizes.pc_steps), tsde.VPSDE(N=sizes.pc_steps)),
        ("PC VE rev-diff+Langevin", jsde.VESDE(sigma_max=10.0, N=sizes.pc_steps),
         tsde.VESDE(sigma_max=10.0, N=sizes.pc_steps)),
    ):
        jsf, tsf = jgmm.score_fn_for_sde(jsd, mixture), tgmm.score_fn_for_sde(tsd, mixture)
        N = jsd.N
        out.append(DemoSampler(
            label,
            jax_run=lambda key, jsd=jsd, jsf=jsf: jsamplers.pc_sample(key, jsd, jsf, (sizes.n, 2), dtype=f32),
            torch_run=lambda g, tsd=tsd, tsf=tsf: tsamplers.pc_sample(tsd, tsf, (sizes.n, 2), generator=g, dtype=t32),
            make_noise=lambda rng, n, N=N: (nrm(rng, n, 2), nrm(rng, N, n, 2), nrm(rng, N, 1, n, 2)),
            jax_predrawn=lambda z, pn, cn, jsd=jsd, jsf=jsf: jsamplers.pc_sample(
                None, jsd, jsf, z.shape, x_T=jsd.prior_from_noise(z),
                noise={"predictor": pn, "corrector": cn})[0],
            torch_predrawn=lambda z, pn, cn, tsd=tsd, tsf=tsf: tsamplers.pc_sample(
                tsd, tsf, tuple(z.shape), x_T=tsd.prior_from_noise(T(z)),
                noise={"predictor": T(pn), "corrector": T(cn)})[0],
        ))

    # -- annealed Langevin dynamics (NCSN) ----------------------------------------------
    sigmas = geometric_sigmas(3.0, 0.01, sizes.ald_levels)
    j_lvl, t_lvl = _level_scores(mixture, sigmas)
    ald_kw = dict(n_steps_each=sizes.ald_steps_each, step_lr=5e-5)
    S = sizes.ald_levels * sizes.ald_steps_each
    out.append(DemoSampler(
        "ALD (NCSN)",
        jax_run=lambda key: jsamplers.ald_sample(key, sigmas, j_lvl, (sizes.n, 2), dtype=f32, **ald_kw),
        torch_run=lambda g: tsamplers.ald_sample(sigmas, t_lvl, (sizes.n, 2), generator=g, dtype=t32, **ald_kw),
        make_noise=lambda rng, n: (nrm(rng, n, 2) * np.float32(sigmas[0]), nrm(rng, S, n, 2)),
        jax_predrawn=lambda x0, z: jsamplers.ald_sample(None, sigmas, j_lvl, x0.shape, x_T=x0, noise=z,
                                                          **ald_kw)[0],
        torch_predrawn=lambda x0, z: tsamplers.ald_sample(sigmas, t_lvl, tuple(x0.shape), x_T=T(x0),
                                                            noise=T(z), **ald_kw)[0],
    ))

    vp_j, vp_t = jsde.VPSDE(), tsde.VPSDE()
    vp_jsf, vp_tsf = jgmm.score_fn_for_sde(vp_j, mixture), tgmm.score_fn_for_sde(vp_t, mixture)

    # -- probability-flow ODE -----------------------------------------------------------
    kw = dict(method="rk4", num_steps=sizes.ode_steps)
    out.append(DemoSampler(
        f"ODE VP rk4 x{sizes.ode_steps}",
        jax_run=lambda key: jode.ode_sample(key, vp_j, vp_jsf, (sizes.n, 2), dtype=f32, **kw),
        torch_run=lambda g: tode.ode_sample(vp_t, vp_tsf, (sizes.n, 2), generator=g, dtype=t32, **kw),
        make_noise=lambda rng, n: (nrm(rng, n, 2),),
        jax_predrawn=lambda z: jode.ode_sample(None, vp_j, vp_jsf, z.shape, x_T=vp_j.prior_from_noise(z),
                                                 **kw)[0],
        torch_predrawn=lambda z: tode.ode_sample(vp_t, vp_tsf, tuple(z.shape),
                                                   x_T=vp_t.prior_from_noise(T(z)), **kw)[0],
    ))

    # -- DDPM / DDIM on the discrete VP process ---------------------------------------
    for label, respacing, fn in (("DDPM", sizes.ddpm_respacing, "ddpm_sample"),
                                 ("DDIM eta=0", sizes.ddim_respacing, "ddim_sample")):
        cfg = spec.DiffusionConfig(steps=1000, timestep_respacing=respacing)
        jd, td = JDiffusion(cfg), TDiffusion(cfg)
        jm, tm = _eps_models(cfg, mixture)
        jf, tf = getattr(jdisc, fn), getattr(tdisc, fn)
        K = jd.num_timesteps
        if fn == "ddpm_sample":
            make = lambda rng, n, K=K: (nrm(rng, n, 2), nrm(rng, K, n, 2))  # noqa: E731
        else:
            make = lambda rng, n: (nrm(rng, n, 2),)  # noqa: E731
        out.append(DemoSampler(
            f"{label} ({K} steps)",
            jax_run=lambda key, jf=jf, jd=jd, jm=jm: jf(key, jd, jm, (sizes.n, 2), clip_denoised=False, dtype=f32),
            torch_run=lambda g, tf=tf, td=td, tm=tm: tf(td, tm, (sizes.n, 2), clip_denoised=False, generator=g, dtype=t32),
            make_noise=make,
            jax_predrawn=lambda x_T, *noise, jf=jf, jd=jd, jm=jm: jf(
                None, jd, jm, x_T.shape, clip_denoised=False, x_T=x_T, **({"noise": noise[0]} if noise else {}))[0],
            torch_predrawn=lambda x_T, *noise, tf=tf, td=td, tm=tm: tf(
                td, tm, tuple(x_T.shape), clip_denoised=False, x_T=T(x_T),
                **({"noise": T(noise[0])} if noise else {}))[0],
        ))

    # -- EDM Heun and DPM-Solver++(2M) ----------------------------------------------------
    # Both start at x_hat_0 = sigma_max z with sigma_max = sigma(T), computed in float32 as
    # the drivers do; the shared start is that array.
    s_T = float(jfast.sigma_from_t(vp_j, jnp.asarray([0.0, vp_j.T, jfast.DEFAULT_T_MIN], f32))[1])
    for label, fn in ((f"EDM Heun ({sizes.fast_steps} levels)", "edm_heun_sample"),
                      (f"DPM-Solver++(2M) ({sizes.fast_steps} steps)", "dpm_solver_pp_sample")):
        jf, tf = getattr(jfast, fn), getattr(tfast, fn)
        out.append(DemoSampler(
            label,
            jax_run=lambda key, jf=jf: jf(key, vp_j, vp_jsf, (sizes.n, 2), num_steps=sizes.fast_steps, dtype=f32),
            torch_run=lambda g, tf=tf: tf(vp_t, vp_tsf, (sizes.n, 2), num_steps=sizes.fast_steps, generator=g, dtype=t32),
            make_noise=lambda rng, n: (nrm(rng, n, 2) * np.float32(s_T),),
            jax_predrawn=lambda x_T, jf=jf: jf(None, vp_j, vp_jsf, x_T.shape, num_steps=sizes.fast_steps,
                                                 x_T=x_T)[0],
            torch_predrawn=lambda x_T, tf=tf: tf(vp_t, vp_tsf, tuple(x_T.shape), num_steps=sizes.fast_steps,
                                                   x_T=T(x_T))[0],
        ))
    return out


# ------------------------------------------------------------------------ metrics


def sliced_w1(x: np.ndarray, reference_quantiles: np.ndarray, directions: np.ndarray) -> float:
    """Sliced Wasserstein-1 distance between the sample ``x [n, 2]`` and the law whose
    projections onto ``directions [P, 2]`` have the quantile functions tabulated in
    ``reference_quantiles [P, Q]`` (Q probability levels (k + 1/2)/Q)."""
    proj = np.sort(x @ directions.T, axis=0)  # [n, P]
    levels = (np.arange(len(x)) + 0.5) / len(x)
    grid = (np.arange(reference_quantiles.shape[1]) + 0.5) / reference_quantiles.shape[1]
    ref = np.stack([np.interp(levels, grid, q) for q in reference_quantiles], axis=1)
    return float(np.mean(np.abs(proj - ref)))


class MixtureMetrics:
    """Distances of a sample to the exact mixture (see ``distances``)."""

    def __init__(self, mixture, reference_size: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.mixture = mixture
        angles = np.linspace(0.0, np.pi, 64, endpoint=False)
        self.directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        ref, _ = mixture.sample(rng, reference_size)
        self.reference_quantiles = np.sort(ref @ self.directions.T, axis=0).T  # [P, Q]

    def distances(self, x) -> dict:
        x = np.asarray(x, np.float64)
        if not np.all(np.isfinite(x)):
            return dict(sw1=float("nan"), mean_err=float("nan"), cov_err=float("nan"),
                        weight_err=float("nan"))
        mix = self.mixture
        return dict(
            sw1=sliced_w1(x, self.reference_quantiles, self.directions),
            mean_err=float(np.max(np.abs(x.mean(0) - mix.mean))),
            cov_err=float(np.max(np.abs(np.cov(x.T) - mix.cov))),
            weight_err=float(np.max(np.abs(mix.responsibilities(x).mean(0) - mix.weights))),
        )


# ------------------------------------------------------------------------- timing


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, first = [], None
    for r in range(repeats):
        t0 = time.perf_counter()
        out = fn(r)
        times.append(time.perf_counter() - t0)
        first = out if first is None else first
    return statistics.median(times), first


def run_sampler(sampler: DemoSampler, metrics: MixtureMetrics, sizes: DemoSizes, seed: int) -> dict:
    """Compile, time and score one sampler in both frameworks; parity on shared noise."""
    jitted = jax.jit(sampler.jax_run)
    key0 = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    compiled = jitted.lower(key0).compile()
    compile_s = time.perf_counter() - t0

    def jax_call(r):
        return jax.block_until_ready(compiled(jax.random.fold_in(key0, r)))

    jax_s, (x_jax, nfe) = _median_time(jax_call, sizes.repeats)
    with torch.no_grad():
        torch_s, (x_torch, t_nfe) = _median_time(
            lambda r: sampler.torch_run(torch.Generator().manual_seed(seed + r)), sizes.repeats)
    noise = sampler.make_noise(np.random.default_rng(seed), sizes.n_parity)
    p_jax = np.asarray(jax.jit(sampler.jax_predrawn)(*noise))
    with torch.no_grad():
        p_torch = sampler.torch_predrawn(*noise).numpy()
    d_jax = metrics.distances(x_jax)
    return dict(
        name=sampler.name, nfe=int(nfe), torch_nfe=int(t_nfe),
        parity_max_abs=float(np.max(np.abs(p_jax - p_torch))),
        **d_jax, sw1_torch=metrics.distances(x_torch.numpy())["sw1"],
        jax_compile_s=compile_s, jax_run_s=jax_s, torch_run_s=torch_s,
        samples=np.asarray(x_jax),
    )


def likelihood_check(mixture, sizes: DemoSizes, seed: int) -> dict:
    """Exact log p(x) against the probability-flow ODE log-likelihood (VP, exact
    divergence, dopri5, from eps = 1e-5) on points drawn from the mixture."""
    vp = jsde.VPSDE()
    x, _ = mixture.sample(np.random.default_rng(seed + 1), sizes.n_likelihood)
    x = x.astype(np.float32)
    sf = jgmm.score_fn_for_sde(vp, mixture)
    fn = jax.jit(lambda x: jode.likelihood(None, vp, sf, x, rtol=1e-5, atol=1e-5))
    t0 = time.perf_counter()
    logp, _, nfe = jax.block_until_ready(fn(x))
    elapsed = time.perf_counter() - t0
    exact = mixture.log_prob(x.astype(np.float64))
    err = np.asarray(logp, np.float64) - exact
    return dict(n=len(x), mean_exact=float(exact.mean()), mean_ode=float(np.mean(logp)),
                max_abs_err=float(np.max(np.abs(err))), nfe=int(nfe), seconds=elapsed)


# --------------------------------------------------------------------------- output


def plot(results: list[dict], exact: np.ndarray, mixture, path: str) -> None:
    """Scatter of each sampler's JAX samples over the mixture's log-density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("exact sample", exact)] + [(r["name"], r["samples"]) for r in results]
    ncols = 4
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.0 * nrows), squeeze=False)
    gx, gy = np.meshgrid(np.linspace(-2.2, 2.2, 120), np.linspace(-1.6, 2.6, 120))
    logp = mixture.log_prob(np.stack([gx.ravel(), gy.ravel()], 1)).reshape(gx.shape)
    for ax, (title, x) in zip(axes.ravel(), panels):
        ax.contourf(gx, gy, np.exp(logp), levels=12, cmap="Blues")
        x = np.asarray(x)[:1000]
        ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:red", alpha=0.5, linewidths=0)
        ax.set_title(title, fontsize=8)
        ax.set_xlim(-2.2, 2.2)
        ax.set_ylim(-1.6, 2.6)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.suptitle("Samples (JAX, exact score) over the demo mixture's density", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def format_table(rows: list[dict], floor: dict) -> str:
    head = (f"{'sampler':<30} {'NFE':>5} {'jax-torch':>10} {'SW1':>7} {'SW1 tch':>7} "
            f"{'mean err':>8} {'cov err':>8} {'w err':>7} {'jax cmp s':>9} {'jax s':>7} {'torch s':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<30} {r['nfe']:>5d} {r['parity_max_abs']:>10.2e} {r['sw1']:>7.4f} "
            f"{r['sw1_torch']:>7.4f} {r['mean_err']:>8.4f} {r['cov_err']:>8.4f} {r['weight_err']:>7.4f} "
            f"{r['jax_compile_s']:>9.2f} {r['jax_run_s']:>7.3f} {r['torch_run_s']:>8.3f}")
    lines.append(
        f"{'exact (MC floor)':<30} {'-':>5} {'-':>10} {floor['sw1']:>7.4f} {'-':>7} "
        f"{floor['mean_err']:>8.4f} {floor['cov_err']:>8.4f} {floor['weight_err']:>7.4f}")
    return "\n".join(lines)


def run_demo(out_dir: str, sizes: DemoSizes = DemoSizes(), seed: int = 0, verbose: bool = True,
             torch_threads: int | None = 1) -> dict:
    """Run every available sampler, print the table, write ``samples.png`` and
    ``results.json`` to ``out_dir``; return the results (without the sample arrays).

    ``torch_threads``: intra-op threads of torch during the run (restored afterwards);
    1 by default: these 2-D problems are too small to gain from more, and on a shared
    machine more threads made torch's small-tensor ops 10x slower (measured). None keeps
    torch's setting."""
    previous_threads = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(int(torch_threads))
    try:
        return _run_demo(out_dir, sizes, seed, verbose)
    finally:
        torch.set_num_threads(previous_threads)


def _run_demo(out_dir: str, sizes: DemoSizes, seed: int, verbose: bool) -> dict:
    say = print if verbose else (lambda *a, **k: None)
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    mixture = gmm_oracle.demo_mixture()
    metrics = MixtureMetrics(mixture, sizes.reference, seed)
    samplers = build_samplers(mixture, sizes)
    say(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); {sizes.n} samples per sampler, "
        f"parity on {sizes.n_parity} with shared float32 noise, medians of {sizes.repeats} runs")
    rows = [run_sampler(s, metrics, sizes, seed) for s in samplers]
    exact, _ = mixture.sample(np.random.default_rng(seed + 2), sizes.n)
    floor = metrics.distances(exact)
    say(format_table(rows, floor))
    lik = likelihood_check(mixture, sizes, seed)
    say(f"log-likelihood on {lik['n']} exact points (VP probability-flow ODE, dopri5, exact "
        f"divergence): mean exact {lik['mean_exact']:.4f}, mean ODE {lik['mean_ode']:.4f}, "
        f"max |error| {lik['max_abs_err']:.2e}, NFE {lik['nfe']}, {lik['seconds']:.2f} s incl. compile")
    png = os.path.join(out_dir, "samples.png")
    plot(rows, exact, mixture, png)
    results = dict(
        samplers=[{k: v for k, v in r.items() if k != "samples"} for r in rows],
        exact=floor, likelihood=lik, sizes=dataclasses.asdict(sizes),
        versions=dict(jax=jax.__version__, torch=torch.__version__, backend=jax.default_backend()),
        png=png, total_s=time.perf_counter() - start,
    )
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    say(f"wrote {png} and {os.path.join(out_dir, 'results.json')} in {results['total_s']:.1f} s")
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m scorediff.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per sampler")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(argv)
    if args.torch_threads < 1:
        parser.error("--torch-threads must be >= 1")
    sizes = QUICK if args.quick else DemoSizes()
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error("--repeats must be >= 1")
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    return run_demo(args.out, sizes, args.seed, torch_threads=args.torch_threads)


if __name__ == "__main__":
    main()
