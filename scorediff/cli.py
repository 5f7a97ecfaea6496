"""The ``scorediff`` command line: train, sample, evaluate and compare frameworks.

    scorediff presets
    scorediff train --preset digits/ddpm [--workdir DIR] [--set section.key=value ...] [--framework jax|torch]
    scorediff sample --workdir DIR [--sampler NAME and its options] [--num N] [--seed S] [--out FILE.npz]
    scorediff sample --checkpoint FILE --preset NAME [...]       (official score_sde / ncsnv2 weights)
    scorediff evaluate --workdir DIR [--num N]                   (metrics.json)
    scorediff likelihood --workdir DIR [--data FILE.npy] [--num N]   (bits/dim)
    scorediff compare --workdir DIR                              (JAX vs PyTorch, same weights and noise)
    scorediff convert IN OUT [--preset NAME]                     (.pth/.pt/.npz/.safetensors <-> orbax)

``train`` and ``sample`` run as one process of a multi-process job with ``--coordinator
HOST:PORT --num-processes N --process-id I`` (``--init-timeout SECONDS``; ``--coordinator
auto`` on Cloud TPU / SLURM): jax.distributed joins the processes' devices into one mesh,
each process reads its own rows of every batch (sampling: computes its own samples), and
process 0 writes the logs, pictures and output files (checkpoints are written by all). The
environment variable ``SCOREDIFF_HOST_DEVICES`` ("1", an int, "auto") splits a CPU host
into several XLA devices at start-up; unset, ``sample`` and ``evaluate`` split it into one
device per core (when the batch divides) and shard the batch, while ``train`` stays on one
device. See ``scorediff/distributed.py`` and docs/scale-out.md.

Every command has ``--help``. Bad input (an unknown preset, override, sampler option, a
missing or foreign file, a workdir of another preset) prints one line
``scorediff <command>: error: ...`` and exits with status 2; ``SCOREDIFF_DEBUG=1`` shows
the traceback instead. Ctrl-C during ``train`` finishes the step, saves a checkpoint and
exits 0 (the loop's signal handling); a second Ctrl-C exits at once (status 130).

This application imports ``jax_impl`` always and ``torch_ref`` (torch) only in the
commands that need it: ``train --framework torch``, ``compare``, reading torch
checkpoints, and ``convert`` of a ``.pth`` file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from scorediff import distributed

__all__ = ["main", "build_parser"]


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- parser

def _add_sampler_flags(p: argparse.ArgumentParser) -> None:
    from scorediff.sampling import SAMPLERS

    g = p.add_argument_group("sampler (defaults: the preset's)")
    g.add_argument("--sampler", choices=SAMPLERS, help="which sampler (default: the preset's)")
    g.add_argument("--steps", type=int, help="pc: N (continuous models); ode: fixed steps; ddpm: "
                   "respaced steps; ddim: steps (default 50)")
    g.add_argument("--predictor", help="pc: euler_maruyama | reverse_diffusion | ancestral_sampling | none")
    g.add_argument("--corrector", help="pc: langevin | ald | none")
    g.add_argument("--snr", type=float, help="pc: the corrector's signal-to-noise ratio")
    g.add_argument("--n-steps", dest="n_steps", type=int, help="pc: corrector steps per predictor step")
    g.add_argument("--method", help="ode: euler | heun | rk4 (fixed) | dopri5 | tsit5 (adaptive)")
    g.add_argument("--rtol", type=float, help="ode: adaptive relative tolerance")
    g.add_argument("--atol", type=float, help="ode: adaptive absolute tolerance")
    g.add_argument("--n-steps-each", dest="n_steps_each", type=int, help="ald: Langevin steps per noise level")
    g.add_argument("--step-lr", dest="step_lr", type=float, help="ald: the step size eps")
    g.add_argument("--eta", type=float, help="ddim: 0 deterministic, 1 DDPM-like")
    g.add_argument("--class", dest="class_label", type=int, metavar="K",
                   help="class-conditional runs: every sample of class K (default: sample j of class j mod C)")
    g.add_argument("--guidance-scale", dest="guidance_scale", type=float, metavar="W",
                   help="class-conditional runs trained with label dropout: classifier-free guidance "
                        "scale (1: the conditional model, 0: unconditional, > 1: guided)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scorediff",
        description="Train, sample, evaluate and compare score-based and diffusion models "
                    "(JAX, with a PyTorch reference).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("presets", help="list the presets, one per line, name first",
                       description="List the presets (name, then what it trains).")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("train", help="train a preset (resumes when the workdir has checkpoints)",
                       description="Train a preset from scratch, or resume the run in --workdir.")
    p.add_argument("--preset", help="a preset name (`scorediff presets`); optional when resuming")
    p.add_argument("--workdir", help="the run directory (default: runs/<preset>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field, e.g. --set training.n_iters=500 (repeatable)")
    p.add_argument("--framework", choices=("jax", "torch"), default=None,
                   help="train with JAX (default) or the PyTorch reference")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    distributed.add_launch_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample a trained run (or an official checkpoint)",
                       description="Draw samples with the jit-compiled sampler; writes FILE.npz "
                                   "(key 'samples', NHWC or [N, D]) and FILE.png.")
    p.add_argument("--workdir", help="a run directory made by `scorediff train`")
    p.add_argument("--checkpoint", help="an official checkpoint file instead of a run (needs --preset)")
    p.add_argument("--preset", help="the preset of --checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="with --checkpoint: override the preset's config (e.g. a smaller model.nf for "
                        "a checkpoint of a modified architecture)")
    p.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--seed", type=int, default=0, help="the sampling key (default 0)")
    p.add_argument("--out", help="output .npz (default: WORKDIR/samples.npz, or ./samples.npz)")
    p.add_argument("--trajectory", action="store_true", help="also draw one reverse trajectory "
                   "(OUT's stem + _trajectory.png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_sampler_flags(p)
    distributed.add_launch_flags(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="sample quality next to the real-data and noise baselines",
                       description="Sample a run and judge the samples (digits: Frechet distance and "
                                   "classifier score in a digits classifier's feature space; 2-D: "
                                   "sliced Wasserstein / energy distance to held-out data), beside "
                                   "held-out real data and Gaussian noise; writes metrics.json.")
    p.add_argument("--workdir", required=True, help="a run directory")
    p.add_argument("--num", type=int, default=None, help="samples to judge (default: 359 for digits "
                   "= the held-out count, 2000 for 2-D)")
    p.add_argument("--seed", type=int, default=1, help="the sampling key (default 1)")
    p.add_argument("--likelihood-points", type=int, default=200, help="2-D mixture, SDE models: test "
                   "points whose probability-flow log-likelihood is compared with the exact one (default 200; 0: skip)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_sampler_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("likelihood", help="bits/dim of held-out data (probability-flow ODE, VLB)",
                       description="Bits per dimension of data under the model: through the "
                                   "probability-flow ODE (SDE models) or the variational bound "
                                   "(diffusion models); 2-D data: the mean log-likelihood.")
    p.add_argument("--workdir", required=True, help="a run directory")
    p.add_argument("--data", help="a .npy / .npz of data in the run's layout (default: the held-out split)")
    p.add_argument("--num", type=int, default=64, help="how many points (default 64)")
    p.add_argument("--seed", type=int, default=0, help="dequantisation / probe key (default 0)")
    p.set_defaults(func=cmd_likelihood)

    p = sub.add_parser("compare", help="the same weights and noise through JAX and PyTorch",
                       description="Load a run's weights into jax_impl and torch_ref; report the "
                                   "largest score difference on identical inputs, the largest sample "
                                   "difference on identical noise, and each framework's sampling time.")
    p.add_argument("--workdir", required=True, help="a run directory")
    p.add_argument("--num", type=int, default=64, help="samples per run (default 64)")
    p.add_argument("--seed", type=int, default=0, help="the noise seed (default 0)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per framework (median; default 3)")
    _add_sampler_flags(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("convert", help="convert checkpoints: .pth/.pt/.npz/.safetensors <-> orbax",
                       description="Convert a checkpoint. IN/OUT: a .pth / .pt / .npz / .safetensors "
                                   "file, or an orbax directory (a path without one of those suffixes; "
                                   "needs --preset for the layout); IN may also be a run directory "
                                   "(its latest EMA weights are exported).")
    p.add_argument("src", metavar="IN")
    p.add_argument("dst", metavar="OUT")
    p.add_argument("--preset", help="the architecture, for orbax input or output")
    p.add_argument("--run", help="orbax input: take the architecture from this run directory instead")
    p.set_defaults(func=cmd_convert)
    return parser


# ----------------------------------------------------------------------------- helpers

def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _sampler_overrides(args) -> dict:
    from scorediff.sampling import SAMPLER_OPTIONS

    return {k: getattr(args, k, None) for k in SAMPLER_OPTIONS if getattr(args, k, None) is not None}


def _check_num(name: str, value: int, lo: int = 1) -> int:
    if value is None or value < lo:
        raise UsageError(f"{name} must be an integer >= {lo}, got {value}")
    return value


def _run_and_preset(workdir):
    from scorediff import presets, runs

    run = runs.load_run(workdir)
    sampler = presets.get_preset(run.preset).sampler if run.preset in presets.PRESETS else _default_sampler(run.config)
    return run, sampler


def _default_sampler(config) -> dict:
    loss = config.resolved_loss
    if loss == "anneal_dsm":
        return {"name": "ald"}
    if loss == "diffusion":
        return {"name": "ddpm"}
    return {"name": "pc", "predictor": "euler_maruyama" if loss == "sde" else "reverse_diffusion",
            "corrector": "none"}


def _real_images(config, n: int):
    """Held-out real examples (numpy, JAX layout) of the run's data."""
    from spec.datasets import load_dataset

    _, test = load_dataset(config.data)
    return test[:n]


def _write_sample_pictures(png: Path, samples, config, title: str) -> Path:
    from scorediff import plots

    if samples.ndim == 4:
        real = _real_images(config, min(len(samples), 64)) if config.data is not None else None
        return plots.image_grid(png, samples[:64], centered=_centered(config), title=title, real=real)
    ref = _real_images(config, 5000) if config.data is not None else samples
    return plots.scatter_over_density(png, samples, ref, title=title, density=_density(config))


def _centered(config) -> bool:
    if config.data is not None:
        return bool(config.data.centered)
    return bool(getattr(config.model, "centered", True))


def _density(config):
    if config.data is not None and config.data.dataset == "gmm":
        from spec.oracles.gmm import demo_mixture

        mix = demo_mixture()
        return mix.log_prob
    return None


# ----------------------------------------------------------------------------- presets

def cmd_presets(args) -> int:
    from scorediff.presets import PRESETS

    width = max(len(n) for n in PRESETS)
    for name, p in PRESETS.items():
        _say(f"{name:<{width}}  {p.summary}")
    return 0


# ------------------------------------------------------------------------------- train

def _multi_process(args) -> bool:
    """True when this command runs as one of several jax.distributed processes."""
    launch = getattr(args, "launch", None)
    if launch is None or not launch.distributed:
        return False
    import jax

    return jax.process_count() > 1


def _host_int(x) -> int:
    """A (possibly global, replicated) scalar array as a Python int, on every process."""
    import jax
    import numpy as np

    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return int(np.asarray(x))


def cmd_train(args) -> int:
    if not _multi_process(args):
        preset, config, workdir, framework = _prepare_train(args)
        return _run_train(args, preset, config, workdir, framework, primary=True)
    # several processes: process 0 checks the workdir and writes its records; the others
    # then read the same records (so every process trains the same config)
    primary = distributed.is_primary()
    error, prepared = None, None
    if primary:
        try:
            prepared = _prepare_train(args)
        except _user_errors() as e:
            error = e
    if not distributed.all_agree(error is None):
        if error is not None:
            raise error
        raise UsageError("process 0 refused the run (its error says why); nothing was trained")
    if not primary:
        prepared = _prepare_train(args, write=False)
    preset, config, workdir, framework = prepared
    if framework != "jax":
        raise UsageError("--coordinator (several processes) trains with --framework jax only; the PyTorch "
                         "reference runs one process")
    return _run_train(args, preset, config, workdir, framework, primary=primary)


def _prepare_train(args, *, write: bool = True):
    """The run's (preset, config, workdir, framework), after checking the workdir; with
    ``write`` the workdir is created and its preset record written."""
    from scorediff import presets, runs
    from scorediff.overrides import apply_overrides

    record = None
    workdir = Path(args.workdir) if args.workdir else None
    if workdir is not None and workdir.exists() and not workdir.is_dir():
        raise UsageError(f"--workdir {str(workdir)!r} is a file, not a directory")
    if workdir is not None and workdir.is_dir():
        record = runs.read_preset_record(workdir)
        if record is None and (workdir / "config.json").exists():
            raise UsageError(f"--workdir {str(workdir)!r} holds a run not made by `scorediff train` "
                             f"(no preset.json); use a new directory")
    name = args.preset or (record or {}).get("preset")
    if name is None:
        raise UsageError("--preset is required for a new run (`scorediff presets` lists them)")
    preset = presets.get_preset(name)
    if record is not None and record["preset"] != preset.name:
        raise UsageError(f"--workdir {str(workdir)!r} holds a run of preset {record['preset']!r}, not "
                         f"{preset.name!r}; resume it with --preset {record['preset']} or use a new directory")
    overrides = list(args.overrides)
    if record is not None:  # resuming: the run's own overrides, then any given now
        overrides = list(record.get("overrides", [])) + [o for o in overrides
                                                         if o not in record.get("overrides", [])]
    framework = args.framework or (record or {}).get("framework") or "jax"
    if record is not None and record.get("framework", framework) != framework:
        raise UsageError(f"--workdir {str(workdir)!r} was trained with --framework {record['framework']}; "
                         f"its checkpoints cannot be resumed by {framework}")
    config = apply_overrides(preset.run_config, overrides)
    if config.data is None:
        raise UsageError(f"preset {preset.name} has no built-in data: give yours, e.g. --set data.dataset=array "
                         f"--set data.path=FILE.npy (images [N, H, W, C]) or data.dataset=folder")
    if workdir is None:
        workdir = Path("runs") / preset.name.replace("/", "_")
    if write:
        workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "config.json").exists() and record is None:
        raise UsageError(f"--workdir {str(workdir)!r} holds another run; use a new directory")
    _check_same_config(workdir, config)
    if write:
        runs.write_preset_record(workdir, preset.name, overrides, framework)
    return preset, config, workdir, framework


def _run_train(args, preset, config, workdir, framework, *, primary: bool) -> int:
    from scorediff import plots

    tc = config.train.training
    if primary:
        where = ""
        if framework == "jax":
            import jax

            n = jax.device_count()
            where = f" on {n} {jax.devices()[0].platform.upper()} devices" if n > 1 else ""
        _say(f"train {preset.name} ({framework}): {type(config.model).__name__}, {config.resolved_loss} loss, "
             f"{tc.n_iters} steps of batch {tc.batch_size}{where}; run directory {workdir}")
    if framework == "jax":
        from jax_impl.loop import train
    else:
        from torch_ref.loop import train
    t0 = time.perf_counter()
    state = train(config, workdir, progress=not args.no_progress and primary)
    wall = time.perf_counter() - t0
    step = _host_int(state.step) if framework == "jax" else int(state.step)
    if not primary:
        return 0
    rows = plots.read_log(workdir)
    if rows:
        plots.loss_curve(workdir / "loss.png", rows, title=f"{preset.name}: training loss")
    last = f"last logged loss {rows[-1]['loss']:.4g}" if rows else "no loss logged yet (training.log_freq)"
    _say(f"step {step}/{tc.n_iters} in {wall:.1f} s; {last}; checkpoints in "
         f"{workdir / 'checkpoints'}; loss curve {workdir / 'loss.png'}")
    return 0


def _check_same_config(workdir: Path, config) -> None:
    path = workdir / "config.json"
    if not path.exists():
        return
    from jax_impl.checkpoint import _config_differences  # noqa: PLC2701  (one dotted-diff helper)

    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UsageError(f"{path}: not valid JSON") from None
    diffs = _config_differences(saved, json.loads(json.dumps(config.to_dict())))
    if diffs:
        raise UsageError(f"--workdir {str(workdir)!r} was trained with another config ("
                         f"{'; '.join(diffs[:4])}{' ...' if len(diffs) > 4 else ''}); "
                         f"resume without --set, or use a new directory")


# ------------------------------------------------------------------------------ sample

def _official_model(checkpoint: str, preset_name: str | None, overrides=()):
    from scorediff import presets
    from scorediff.overrides import apply_overrides

    if not preset_name:
        raise UsageError("--checkpoint needs --preset (the architecture of the checkpoint, e.g. "
                         "cifar10/ncsnpp-continuous or cifar10/improved-ddpm)")
    preset = presets.get_preset(preset_name)
    config = apply_overrides(preset.run_config, list(overrides)) if overrides else preset.run_config
    path = Path(checkpoint)
    if not path.is_file():
        raise UsageError(f"--checkpoint {checkpoint!r} does not exist" if not path.exists()
                         else f"--checkpoint {checkpoint!r} is not a file")
    from spec.ncsn_configs import NCSNConfig, NCSNv2Config

    m = config.model
    if isinstance(m, NCSNConfig):
        raise UsageError(f"--checkpoint: loading ermongroup/ncsn (v1) checkpoints is not supported; "
                         f"preset {preset.name} trains from scratch")
    from spec.unet_model import UNetModelConfig

    if isinstance(m, NCSNv2Config):
        from jax_impl.convert import from_ncsnv2
        _, variables = from_ncsnv2(str(path), m)
    elif isinstance(m, UNetModelConfig):  # openai/improved-diffusion's .pt (or .npz / .safetensors)
        from jax_impl.convert import from_improved_diffusion
        _, variables = from_improved_diffusion(str(path), m)
    else:
        from jax_impl.convert import from_score_sde
        _, variables = from_score_sde(str(path), m)
    return preset, config, variables


def cmd_sample(args) -> int:
    import jax
    import numpy as np

    from scorediff import plots, sampling

    _check_num("--num", args.num)
    if args.checkpoint is not None:
        if args.workdir is not None:
            raise UsageError("give --workdir or --checkpoint, not both")
        preset, config, variables = _official_model(args.checkpoint, args.preset, args.overrides)
        default, step, where = preset.sampler, None, Path(".")
    else:
        if args.workdir is None:
            raise UsageError("--workdir (a trained run) or --checkpoint FILE --preset NAME is required")
        if args.preset is not None or args.overrides:
            raise UsageError("--preset and --set go with --checkpoint; a run directory knows its config")
        run, default = _run_and_preset(args.workdir)
        from scorediff.runs import ema_variables
        variables, step = ema_variables(run)
        config, where = run.config, run.workdir
    out = Path(args.out) if args.out else where / "samples.npz"
    if out.suffix != ".npz":
        raise UsageError(f"--out {str(out)!r}: the samples file must end in .npz")
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a directory")
    plan = sampling.resolve(config, default, name=args.sampler, overrides=_sampler_overrides(args),
                            num=args.num)
    if jax.process_count() > 1:  # several processes: each computes its share (one process
        # with several devices: JaxSampler splits the batch over them itself)
        x, nfe, compile_s, wall = _sample_on_mesh(plan, variables, args.seed)
        if jax.process_index() != 0:
            return 0  # process 0 writes the files
    else:
        sampler = sampling.JaxSampler(plan, progress=not args.no_progress)
        t0 = time.perf_counter()
        x, nfe = sampler(variables, jax.random.key(args.seed))
        wall = time.perf_counter() - t0
        compile_s = sampler.compile_s
    x = np.asarray(x)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.npz")
    np.savez(tmp, samples=x, nfe=np.int64(nfe), sampler=np.str_(plan.describe()),
             seed=np.int64(args.seed), step=np.int64(-1 if step is None else step))
    os.replace(tmp, out)
    png = _write_sample_pictures(out.with_suffix(".png"), x, config,
                                 f"generated: {plan.describe()}\nNFE {nfe}" + ("" if step is None else f", step {step}"))
    bad = int((~np.isfinite(x)).any(axis=tuple(range(1, x.ndim))).sum())
    if compile_s is None:
        timing = f"{wall:.2f} s compiling and sampling on {jax.device_count()} devices"
    else:
        timing = f"compile {compile_s:.2f} s, {wall - compile_s:.2f} s sampling" + (
            f" on {sampler.devices} devices" if sampler.devices > 1 else "")
    _say(f"{len(x)} samples {tuple(x.shape[1:])} with {plan.describe()}: NFE {nfe}, {timing}"
         + (f"; {bad} samples are not finite" if bad else ""))
    _say(f"wrote {out} and {png}")
    if args.trajectory:
        states, labels = sampling.jax_trajectory(plan, variables, args.seed)
        tpng = out.with_name(out.stem + "_trajectory.png")
        ref = _real_images(config, 2000) if (config.data is not None and states.ndim == 3) else None
        plots.trajectory_strip(tpng, states, labels, centered=_centered(config),
                               title=f"one reverse trajectory, noise to data: {plan.describe()}", reference=ref)
        _say(f"wrote {tpng}")
    return 0


def _sample_on_mesh(plan, variables, seed: int):
    """The plan's sampler over a mesh of every device of every process (``--num`` must divide
    by their count; ValueError naming it otherwise): the batch split along its data axis, each device computing its own samples (per-sample noise, so they equal
    the 1-device samples); returns ``(samples on the host, nfe, None, wall_s)`` (the wall
    time includes the compilation)."""
    import jax
    import numpy as np

    from jax_impl import sharding
    from scorediff import sampling

    mesh = sharding.make_mesh()
    try:
        sharding.check_divisible(plan.shape[0], mesh, "--num")
    except ValueError as e:
        raise UsageError(str(e)) from None
    sampler = sampling.JaxSampler(plan, progress=False)
    program = getattr(sampler, "_jit", None)
    if program is None:  # pragma: no cover -- scorediff.sampling without its program
        raise UsageError("sampling over several devices needs scorediff.sampling.JaxSampler's program")
    fn = sharding.shard_sampler(
        lambda kd, v: program(v, jax.random.wrap_key_data(kd), None, None), mesh)
    placed = sharding.replicate(variables, mesh)
    kd = sharding.replicate(np.asarray(jax.random.key_data(jax.random.key(seed))), mesh)
    t0 = time.perf_counter()
    x = sharding.to_host(fn(kd, placed))  # one call: compile and run; every process takes part
    return x, sampler.nfe, None, time.perf_counter() - t0


# ---------------------------------------------------------------------------- evaluate

def _judge(config, samples, seed: int) -> dict:
    from jax_impl import metrics

    if config.data is None:
        raise UsageError("evaluate needs the run's data (its config has none)")
    if config.data.dataset == "digits":
        return {"kind": "digits", **metrics.digits_report(samples, centered=config.data.centered, seed=seed)}
    if not config.data.is_image:
        return {"kind": "2d", **metrics.toy_report(samples, config.data, seed=seed)}
    raise UsageError(f"evaluate: no built-in judge for data.dataset={config.data.dataset!r} (digits and "
                     f"the 2-D sets have one); `scorediff likelihood` works for any data")


def _evaluate_num(config, num: int | None) -> int:
    """``evaluate --num``, or its default: 359 (the digits' held-out split), else 2000."""
    if num is not None:
        return num
    return 359 if config.data and config.data.dataset == "digits" else 2000


def cmd_evaluate(args) -> int:
    import jax
    import numpy as np

    from scorediff import plots, runs, sampling

    run, default = _run_and_preset(args.workdir)
    config = run.config
    num = _evaluate_num(config, args.num)
    _check_num("--num", num, 2)
    variables, step = runs.ema_variables(run)
    plan = sampling.resolve(config, default, name=args.sampler, overrides=_sampler_overrides(args), num=num)
    sampler = sampling.JaxSampler(plan, progress=not args.no_progress)
    t0 = time.perf_counter()
    x, nfe = sampler(variables, jax.random.key(args.seed))
    sample_s = time.perf_counter() - t0 - sampler.compile_s
    x = np.asarray(x)
    clipped = None
    if x.ndim == 4:  # images are judged as images: clipped to the data range, as score_sde
        lo, hi = (-1.0, 1.0) if config.data.centered else (0.0, 1.0)  # quantises before its FID
        finite = np.isfinite(x)
        clipped = float(np.mean(finite & ((x < lo) | (x > hi))))
        x = np.where(finite, np.clip(x, lo, hi), x)
    report = _judge(config, x, args.seed)
    if clipped is not None:
        report["clipped_pixel_fraction"] = clipped
    report.update({"step": step, "sampler": plan.describe(), "nfe": nfe, "num_samples": len(x),
                   "sample_seconds": sample_s, "compile_seconds": sampler.compile_s,
                   "devices": sampler.devices})
    if config.data.dataset == "gmm" and config.resolved_loss == "sde" and args.likelihood_points != 0:
        from jax_impl import metrics
        from jax_impl.models import registry
        from jax_impl.models.utils import get_score_fn
        from jax_impl.train import _make_sde

        model = registry.create_model(config.model)
        sde = _make_sde(config.process)
        score_fn = get_score_fn(sde, lambda x, t: model.apply(variables, x, t, train=False),
                                continuous=bool(config.train.training.continuous))
        report["likelihood"] = metrics.gmm_likelihood_report(
            jax.random.key(args.seed), sde, score_fn, config.data,
            num_points=_check_num("--likelihood-points", args.likelihood_points))  # 0 skips it
    path = runs.update_metrics(run.workdir, "evaluate", report)
    _print_report(report)
    if x.ndim == 4:
        plots.image_grid(run.workdir / "real_vs_generated.png", x[:64], centered=config.data.centered,
                         title=f"generated: {plan.describe()}\nNFE {nfe}, step {step}", real=_real_images(config, 64))
    else:
        _write_sample_pictures(run.workdir / "evaluate_samples.png", x, config, f"{plan.describe()}")
    rows = plots.read_log(run.workdir)
    if rows:
        plots.loss_curve(run.workdir / "loss.png", rows, title="training loss")
    _say(f"wrote {path}")
    return 0


def _print_report(r: dict) -> None:
    if r.get("kind") == "digits":
        b = r["baselines"]
        _say(f"sample quality on {r['num_samples']} digits (classifier test accuracy "
             f"{r.get('classifier_test_accuracy', float('nan')):.3f}):")
        _say(f"  {'':22s} {'FD (lower is better)':>22s} {'classifier score':>18s}")
        _say(f"  {'model samples':22s} {r['fd']:22.3f} {r['classifier_score']:18.3f}")
        _say(f"  {'held-out real digits':22s} {b['real']['fd']:22.3f} {b['real']['classifier_score']:18.3f}")
        _say(f"  {'Gaussian noise':22s} {b['noise']['fd']:22.3f} {b['noise']['classifier_score']:18.3f}")
        if "mean_confidence" in r:
            _say(f"  the classifier's mean confidence on the samples {r['mean_confidence']:.3f}; classes "
                 f"0-9: {r.get('class_histogram')}")
    else:
        f = r["floor"]
        _say(f"sample quality on {r['num_samples']} points, against held-out data:")
        _say(f"  {'':22s} {'sliced W2':>12s} {'energy dist':>12s}")
        _say(f"  {'model samples':22s} {r['sliced_wasserstein']:12.4f} {r['energy_distance']:12.4f}")
        sd = r.get("floor_std", {})
        _say(f"  {'exact samples (floor)':22s} {f['sliced_wasserstein']:12.4f} {f['energy_distance']:12.4f}"
             + (f"   (mean of exact draws; std {sd['sliced_wasserstein']:.4f}, {sd['energy_distance']:.4f})"
                if sd else ""))
        if "mean_log_density" in r:
            _say(f"  exact mean log-density of the samples {r['mean_log_density']:.4f} "
                 f"(exact samples: {f.get('mean_log_density', float('nan')):.4f})")
        if "likelihood" in r:
            lk = r["likelihood"]
            _say(f"  model probability-flow log-likelihood of test points {lk['model_mean_loglik']:.4f} "
                 f"(exact {lk['exact_mean_loglik']:.4f})")


# -------------------------------------------------------------------------- likelihood

def _load_points(path: str, config, num: int):
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--data {path!r} does not exist" if not p.exists() else f"--data {path!r} is not a file")
    try:
        if p.suffix == ".npz":
            with np.load(p) as f:
                keys = list(f.keys())
                if len(keys) != 1 and "samples" not in keys:
                    raise UsageError(f"--data {path!r} holds {keys}; give a file with one array or 'samples'")
                a = f["samples" if "samples" in keys else keys[0]]
        else:
            a = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"--data {path!r}: not a numpy file ({e})") from None
    a = np.asarray(a, np.float32)[:num]
    from scorediff.sampling import _data_shape

    want = _data_shape(config)
    if a.shape[1:] != want:
        raise UsageError(f"--data {path!r} has examples of shape {a.shape[1:]}; this run's are {want}")
    return a


def cmd_likelihood(args) -> int:
    import jax
    import numpy as np

    from scorediff import runs
    from spec.configs import DiffusionConfig

    run = runs.load_run(args.workdir)
    config = run.config
    _check_num("--num", args.num)
    x = _load_points(args.data, config, args.num) if args.data else _real_images(config, args.num)
    variables, step = runs.ema_variables(run)
    from jax_impl import metrics
    from jax_impl.models import registry

    model = registry.create_model(config.model)
    model_fn = lambda x, t: model.apply(variables, x, t, train=False)  # noqa: E731
    key = jax.random.key(args.seed)
    out = {"step": step, "num_points": int(len(x))}
    image = x.ndim == 4
    levels = config.data.num_bins if (config.data is not None and image) else None
    if isinstance(config.process, DiffusionConfig):
        from jax_impl.diffusion import GaussianDiffusion

        if not image:
            raise UsageError("likelihood: the variational bound in bits/dim needs quantised images; this run "
                             "is on 2-D points")
        bpd = metrics.bits_per_dim_vlb(key, GaussianDiffusion(config.process), model_fn, jax.numpy.asarray(x),
                                       num_levels=levels)
        out["bits_per_dim_vlb"] = bpd
        _say(f"bits/dim (variational bound, {config.process.num_timesteps} terms) on {len(x)} held-out "
             f"images: {bpd:.4f}")
    elif config.process is not None:
        from jax_impl.models.utils import get_score_fn
        from jax_impl.train import _make_sde

        sde = _make_sde(config.process)
        continuous = bool(config.train.training.continuous and config.resolved_loss == "sde")
        score_fn = get_score_fn(sde, model_fn, continuous=continuous)
        if image:
            bpd = metrics.bits_per_dim_ode(key, sde, score_fn, jax.numpy.asarray(x), centered=_centered(config),
                                           num_levels=levels)
            out["bits_per_dim_ode"] = bpd
            _say(f"bits/dim (probability-flow ODE, dopri5, {levels} levels) on {len(x)} held-out images: {bpd:.4f}")
        else:
            from jax_impl import ode

            logp = np.asarray(ode.likelihood(key, sde, score_fn, jax.numpy.asarray(x))[0])
            out["mean_loglik_ode"] = float(np.mean(logp))
            out["nats_per_dim"] = -float(np.mean(logp)) / x.shape[1]
            _say(f"mean log-likelihood (probability-flow ODE) of {len(x)} held-out points: "
                 f"{out['mean_loglik_ode']:.4f} nats ({out['nats_per_dim']:.4f} nats/dim)")
    else:
        raise UsageError("likelihood: an NCSN model (annealed Langevin) defines no likelihood; the SDE "
                         "and diffusion presets do")
    path = runs.update_metrics(run.workdir, "likelihood", out)
    _say(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- compare

def _torch_module(config, variables):
    from torch_ref.convert import flax_to_torch_state_dict
    from torch_ref.models import registry as tregistry

    module = tregistry.create_model(config.model)
    module.load_state_dict(flax_to_torch_state_dict(variables, config.model))
    return module.eval()


def cmd_compare(args) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from scorediff import runs, sampling
    from scorediff.sampling import _to_torch

    _check_num("--num", args.num)
    _check_num("--repeats", args.repeats)
    run, default = _run_and_preset(args.workdir)
    config = run.config
    variables, step = runs.ema_variables(run)
    module = _torch_module(config, variables)
    from jax_impl.models import registry

    model = registry.create_model(config.model)
    # 1. the network on identical inputs: held-out data plus noise, labels across the range
    rng = np.random.default_rng(args.seed)
    x0 = _real_images(config, args.num) if config.data is not None else None
    plan = sampling.resolve(config, default, name=args.sampler, overrides=_sampler_overrides(args), num=args.num)
    shape = plan.shape
    x0 = x0 if x0 is not None and len(x0) == shape[0] else rng.standard_normal(shape).astype(np.float32)
    x_in = (x0 + 0.5 * rng.standard_normal(shape)).astype(np.float32)
    labels = _labels(config, rng, shape[0])
    classes = sampling.sample_labels(plan)   # class-conditional runs: the classes sampled
    if classes is None:
        out_j = np.asarray(jax.jit(lambda v, x, t: model.apply(v, x, t, train=False))(
            variables, jnp.asarray(x_in), jnp.asarray(labels)))
        with torch.no_grad():
            out_t = module(_to_torch(x_in), torch.as_tensor(labels)).numpy()
    else:
        out_j = np.asarray(jax.jit(lambda v, x, t, y: model.apply(v, x, t, y=y, train=False))(
            variables, jnp.asarray(x_in), jnp.asarray(labels), jnp.asarray(classes, jnp.int32)))
        with torch.no_grad():
            out_t = module(_to_torch(x_in), torch.as_tensor(labels), y=torch.as_tensor(classes)).numpy()
    if out_t.ndim == 4:
        out_t = np.moveaxis(out_t, 1, -1)
    net_diff = float(np.max(np.abs(out_j - out_t)))
    net_scale = float(np.max(np.abs(out_j)))
    # 2. the whole sampler on identical noise, timed
    x_T, noise = sampling.draw_inputs(plan, args.seed)
    jx = sampling.JaxSampler(plan)
    jn = None if noise is None else (jax.tree_util.tree_map(jnp.asarray, noise))
    xj, nfe = jx(variables, None, jnp.asarray(x_T), jn)
    tj = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jx(variables, None, jnp.asarray(x_T), jn)
        tj.append(time.perf_counter() - t0)
    ts = sampling.torch_sampler(plan)
    xt, _ = ts(module, x_T, noise)  # warm-up
    tt = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        xt, _ = ts(module, x_T, noise)
        tt.append(time.perf_counter() - t0)
    xj = np.asarray(xj)
    sample_diff = float(np.nanmax(np.abs(xj - xt)))
    result = {
        "step": step, "sampler": plan.describe(), "nfe": nfe, "num_samples": shape[0],
        "network_max_abs_diff": net_diff, "network_max_abs_output": net_scale,
        "samples_max_abs_diff": sample_diff, "samples_max_abs": float(np.nanmax(np.abs(xj))),
        "jax_compile_seconds": jx.compile_s, "jax_seconds": statistics.median(tj),
        "torch_seconds": statistics.median(tt), "torch_over_jax": statistics.median(tt) / statistics.median(tj),
        "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
    }
    path = runs.update_metrics(run.workdir, "compare", result)
    _say(f"JAX vs PyTorch, same weights (step {step}), {type(config.model).__name__}:")
    _say(f"  network output on identical inputs: max |jax - torch| = {net_diff:.3g} "
         f"(max |output| {net_scale:.3g})")
    _say(f"  {plan.describe()} (NFE {nfe}) on identical noise: max |jax - torch| = {sample_diff:.3g} "
         f"(max |x| {result['samples_max_abs']:.3g})")
    _say(f"  sampling {shape[0]} samples, median of {args.repeats}: JAX {result['jax_seconds']:.3f} s "
         f"(+ {jx.compile_s:.2f} s compile once), torch eager {result['torch_seconds']:.3f} s "
         f"({result['torch_over_jax']:.2f}x the JAX time)")
    _say(f"wrote {path}")
    return 0


def _labels(config, rng, n: int):
    import numpy as np

    from spec.configs import DiffusionConfig, VESDEConfig
    from spec.ncsn_configs import NCSNConfig, NCSNv2Config

    m = config.model
    if isinstance(m, (NCSNConfig, NCSNv2Config)):
        return rng.integers(0, m.num_scales, n).astype(np.int32)
    p = config.process
    if isinstance(p, DiffusionConfig):
        return rng.integers(0, p.steps, n).astype(np.float32)
    if isinstance(p, VESDEConfig):
        return np.exp(rng.uniform(np.log(p.sigma_min), np.log(p.sigma_max), n)).astype(np.float32)
    return (rng.uniform(1e-3, 1.0, n) * 999).astype(np.float32)


# ----------------------------------------------------------------------------- convert

_FILE_SUFFIXES = (".pth", ".pt", ".npz", ".safetensors")


def cmd_convert(args) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if not src.exists():
        raise UsageError(f"IN {str(src)!r} does not exist")
    if dst.exists():
        raise UsageError(f"OUT {str(dst)!r} exists; converting never overwrites")
    dst_is_file = dst.suffix in _FILE_SUFFIXES
    if dst.suffix and not dst_is_file:
        raise UsageError(f"OUT {str(dst)!r}: unknown suffix {dst.suffix!r}; use one of "
                         f"{', '.join(_FILE_SUFFIXES)} or a directory name (orbax)")
    if src.is_file():
        if src.suffix not in _FILE_SUFFIXES:
            raise UsageError(f"IN {str(src)!r}: unknown suffix {src.suffix!r}; expected one of "
                             f"{', '.join(_FILE_SUFFIXES)}")
        if dst_is_file:
            from spec.checkpoints import convert_checkpoint_file

            convert_checkpoint_file(str(src), str(dst))
            _say(f"wrote {dst}")
            return 0
        preset = _need_preset(args, "an orbax OUT")
        _, _, variables = _official_model(str(src), preset)
        from jax_impl.convert import save_variables

        save_variables(str(dst), variables)
        _say(f"wrote orbax variables to {dst} ({preset}; EMA weights)")
        return 0
    # a directory: a run, or orbax variables
    if (src / "config.json").exists():
        from scorediff import runs

        run = runs.load_run(src)
        variables, step = runs.ema_variables(run)
        config = run.config.model
        what = f"run {src} (EMA weights of step {step})"
    else:
        from jax_impl.convert import load_variables

        if args.run:
            from scorediff import runs

            config = runs.load_run(args.run).config.model
        else:
            from scorediff.presets import get_preset

            config = get_preset(_need_preset(args, "an orbax IN (or --run DIR)")).run_config.model
        variables = load_variables(str(src), config)
        step = 0
        what = f"orbax {src}"
    if dst_is_file:
        from jax_impl.convert import flax_to_torch_state_dict
        from spec.checkpoints import save_checkpoint

        sd = flax_to_torch_state_dict(variables, config)
        if dst.suffix in (".pth", ".pt"):
            import torch

            tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
            torch.save({"model": {k: torch.as_tensor(v) for k, v in sd.items()}, "step": int(step)}, tmp)
            os.replace(tmp, dst)
        else:
            save_checkpoint(str(dst), {"model": dict(sd), "step": int(step)})
    else:
        from jax_impl.convert import save_variables

        save_variables(str(dst), variables)
    _say(f"wrote {dst} from {what}")
    return 0


def _need_preset(args, what: str) -> str:
    if not args.preset:
        raise UsageError(f"{what} needs --preset NAME (the architecture; `scorediff presets`)")
    return args.preset


# -------------------------------------------------------------------------------- main

def _user_errors():
    errors = [UsageError, ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError,
              IsADirectoryError, PermissionError]
    try:
        from jax_impl.checkpoint import CheckpointError
        errors.append(CheckpointError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def main(argv=None) -> int:
    """Entry point of the ``scorediff`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        status = _start_and_run(args)
    except KeyboardInterrupt:
        print(f"scorediff {args.command}: interrupted", file=sys.stderr)
        status = 130
    except _user_errors() as e:
        if os.environ.get("SCOREDIFF_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        msg = " ".join(str(msg).split())  # one line
        print(f"scorediff {args.command}: error: {msg}", file=sys.stderr)
        status = 2
    launch = getattr(args, "launch", None)
    if status != 0 and launch is not None and launch.distributed:
        # leave at once: jax.distributed's exit barrier would wait for processes that may
        # be blocked on this one; the runtime tells them that this process has gone
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _default_host_devices(args) -> int | None:
    """The host split this command chooses when ``SCOREDIFF_HOST_DEVICES`` is unset (see
    ``scorediff.distributed``): for a single-process ``sample`` or ``evaluate`` of an MLP,
    or of a conv net when oneDNN's kernels cannot run (``jax_impl.onednn.expected()``),
    ``distributed.default_host_devices(batch)``; None otherwise (``train``, a conv net
    with oneDNN, another command, several processes, or a config that cannot be read yet:
    the command then reports its own error).

    Measured on the 2-core host (2026-12-04, after oneDNN's convolutions, dense products,
    the C++ GroupNorm and the allocator setting, all of which a split host gives up as a
    custom call does not follow a sharding): the conv-net samplers ran 1-10% faster on one
    device in every configuration of ``benchmarks/results/cpu-20261204T040541Z.json`` (and
    the run after), and the digits U-Net's RK4 sampler 0.98x split
    (``scaleout-cpu-2026-12-04-late.md``); the MLP's samplers still gain from the split
    (batch 64 Euler-Maruyama 1.4x in the benchmark, the digits MLP's DDIM 1.04x). Training
    stays on one device (split steps 0.5-0.8x)."""
    if args.command not in ("sample", "evaluate") or getattr(args, "coordinator", None):
        return None
    try:
        if getattr(args, "checkpoint", None) is not None:
            from scorediff import presets
            from scorediff.overrides import apply_overrides

            config = apply_overrides(presets.get_preset(args.preset).run_config, list(args.overrides))
        else:
            from scorediff import runs

            config = runs.load_run(args.workdir).config
        batch = _evaluate_num(config, args.num) if args.command == "evaluate" else args.num
    except Exception:  # noqa: BLE001 -- any problem is the command's to report
        return None
    from jax_impl import onednn
    from spec.model_configs import MLPConfig

    if not isinstance(config.model, MLPConfig) and onednn.expected():
        return None  # a conv net: oneDNN's kernels use every core of one device
    return distributed.default_host_devices(batch)


def _start_and_run(args) -> int:
    """XLA:CPU's convolutions, the host allocator, the host-device split, jax.distributed
    (train / sample), then the command."""
    from jax_impl import xla_cpu

    from jax_impl import host_malloc, onednn

    try:
        xla_cpu.configure_cpu_convolutions()  # before JAX starts; see jax_impl/xla_cpu.py
        onednn.check_environment()  # SCOREDIFF_ONEDNN / SCOREDIFF_ONEDNN_THREADING
        host_malloc.configure_host_allocator()  # SCOREDIFF_MALLOC; see jax_impl/host_malloc.py
    except ValueError as err:
        raise distributed.LaunchError(str(err)) from None
    distributed.configure_host_devices(default=_default_host_devices(args))
    if hasattr(args, "coordinator"):
        args.launch = distributed.launch_spec(args.coordinator, args.num_processes, args.process_id,
                                              args.init_timeout)
        distributed.initialize(args.launch, prog=f"scorediff {args.command}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
