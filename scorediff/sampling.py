"""Samplers of a trained run, by name, for the command line: JAX (one jitted program) and the
PyTorch reference (for ``scorediff compare``), fed the same pre-drawn noise.

``--sampler NAME`` and its options (``SAMPLER_OPTIONS``):

=========  =====================================  ===========================================
name       runs (library driver)                  options (defaults from the preset)
=========  =====================================  ===========================================
``pc``     predictor-corrector, ``pc_sample``     predictor, corrector, snr, n_steps, steps (N;
                                                  continuous models only), probability_flow
``ode``    probability-flow ODE, ``ode_sample``   method (euler/heun/rk4 fixed with ``steps``;
                                                  dopri5/tsit5 adaptive with rtol/atol)
``ald``    annealed Langevin, ``ald_sample``      n_steps_each, step_lr
``ddpm``   DDPM ancestral, ``ddpm_sample``        steps (respaced count; default all)
``ddim``   DDIM, ``ddim_sample``                  steps (``ddimN`` respacing, default 50), eta
=========  =====================================  ===========================================

Which samplers a run takes follows from its objective: an SDE (``sde`` / ``smld`` /
``ddpm`` losses) takes ``pc`` and ``ode`` (and ``ald`` for the discrete VE ladder of
``smld``); a ``GaussianDiffusion`` (``diffusion`` loss) takes ``ddpm`` and ``ddim``; NCSN /
NCSNv2 (``anneal_dsm``) take ``ald``. Anything else is refused naming what is valid.

``JaxSampler`` splits the batch over every device the process sees (a CPU host split into
per-core devices with ``jax_impl.sharding.configure_host_devices``, several GPUs, TPU cores):
``jax_impl.sharding.shard_sampler`` over the largest device count that divides the batch
(an odd batch runs on one device); the samples equal the unsharded ones (the default noise
is per sample). On a 2-core CPU this runs the convolutions of an image sampler on both cores
(XLA:CPU runs each convolution on one core).

The score function follows score_sde's ``get_score_fn`` (continuous labels for the
continuous SDE loss, the discrete index otherwise), exactly as the training loop's
snapshots do; for ``ald`` on a model trained with integer noise-level labels the label of
level i is i (label 0 = sigma_max, the flipped SMLD table).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from spec.configs import DiffusionConfig, VESDEConfig
from spec.train_config import RunConfig

__all__ = ["SAMPLERS", "SAMPLER_OPTIONS", "Plan", "resolve", "JaxSampler", "shard_devices", "torch_sampler",
           "draw_inputs", "jax_trajectory", "data_classes", "sample_labels"]

SAMPLERS = ("pc", "ode", "ald", "ddpm", "ddim")

#: option -> (type, samplers that take it)
SAMPLER_OPTIONS: Mapping[str, tuple[type, tuple[str, ...]]] = {
    "predictor": (str, ("pc",)),
    "corrector": (str, ("pc",)),
    "snr": (float, ("pc",)),
    "n_steps": (int, ("pc",)),
    "probability_flow": (bool, ("pc",)),
    "steps": (int, ("pc", "ode", "ddpm", "ddim")),
    "method": (str, ("ode",)),
    "rtol": (float, ("ode",)),
    "atol": (float, ("ode",)),
    "n_steps_each": (int, ("ald",)),
    "step_lr": (float, ("ald",)),
    "eta": (float, ("ddim",)),
    # class-conditional runs (model.num_classes > 0): the class of every sample (default:
    # sample j of class j mod C) and the classifier-free guidance scale w (default 1: the
    # conditional model; w != 1 needs training.label_dropout > 0, the null class)
    "class_label": (int, SAMPLERS),
    "guidance_scale": (float, SAMPLERS),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """A resolved sampler: ``name``, ``options`` (a sorted tuple of (key, value)),
    ``shape`` (the JAX batch shape, NHWC or ``[N, D]``) and the run's config."""

    name: str
    options: tuple
    shape: tuple
    config: RunConfig

    @property
    def opts(self) -> dict:
        return dict(self.options)

    def describe(self) -> str:
        return self.name + "".join(f" {k}={v}" for k, v in self.options)


def _valid_samplers(config: RunConfig) -> tuple[str, ...]:
    loss = config.resolved_loss
    if loss == "anneal_dsm":
        return ("ald",)
    if loss == "diffusion":
        return ("ddpm", "ddim")
    if loss == "smld":
        return ("pc", "ode", "ald")
    return ("pc", "ode")


def _data_shape(config: RunConfig) -> tuple[int, ...]:
    """One example's JAX shape: ``(H, W, C)`` for image models (an MLP with ``image_size``
    included), ``(D,)`` for an MLP on vectors."""
    m = config.model
    if getattr(m, "image_size", None) is None:
        return (m.data_dim,)
    return (m.image_size, m.image_size, m.num_channels)


def resolve(config: RunConfig, default: Mapping[str, Any], *, name: str | None = None,
            overrides: Mapping[str, Any] | None = None, num: int = 64) -> Plan:
    """The sampler to run: ``name`` (None: the preset's ``default["name"]``) with the
    preset's options (when the name is the preset's) updated by ``overrides`` (CLI flags;
    None values ignored). ``ValueError`` names a sampler or option that does not apply."""
    valid = _valid_samplers(config)
    base = dict(default)
    base_name = base.pop("name")
    name = base_name if name is None else name
    if name not in SAMPLERS:
        raise ValueError(f"--sampler: unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    if name not in valid:
        raise ValueError(f"--sampler {name}: a model trained with the {config.resolved_loss!r} loss "
                         f"samples with {', '.join(valid)}")
    opts = dict(base) if name == base_name else {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        typ, takers = SAMPLER_OPTIONS[key]
        if name not in takers:
            raise ValueError(f"--{key.replace('_', '-')}: not an option of --sampler {name} "
                             f"(it is one of {', '.join(takers)})")
        opts[key] = value
    if name == "pc" and "steps" in opts:
        continuous = config.train.training.continuous and config.resolved_loss == "sde"
        if not continuous and opts["steps"] != config.process.N:
            raise ValueError(f"--steps {opts['steps']}: the model was trained on the discrete "
                             f"{config.process.N}-step ladder (training.continuous=False); only "
                             f"a continuous model samples on another grid")
    if name in ("ddpm", "ddim") and "steps" in opts and not isinstance(opts["steps"], bool) \
            and int(opts["steps"]) > config.process.steps:
        raise ValueError(f"--steps {opts['steps']}: the diffusion has {config.process.steps} steps; "
                         f"{name} can keep at most that many")
    for key in ("steps", "n_steps", "n_steps_each"):
        if key in opts and (isinstance(opts[key], bool) or int(opts[key]) < 1):
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, got {opts[key]}")
    _check_class_options(config, opts)
    from spec.validate import check_int
    num = check_int("--num", num, minimum=1)
    return Plan(name, tuple(sorted(opts.items())), (num, *_data_shape(config)), config)


def data_classes(config: RunConfig) -> int:
    """How many real classes a class-conditional run's network knows: ``num_classes``, less
    label dropout's null class (the last label) when the run was trained with it; 0 for an
    unconditional run."""
    from spec.train_config import num_classes

    k = num_classes(config.model)
    if k and config.train.training.label_dropout > 0:
        return k - 1
    return k


def _check_class_options(config: RunConfig, opts: dict) -> None:
    k = data_classes(config)
    if not k:
        for key in ("class_label", "guidance_scale"):
            if key in opts:
                raise ValueError(f"--{key.replace('_', '-').replace('class-label', 'class')}: the run's "
                                 f"network is not class-conditional (model.num_classes=0)")
        return
    if "class_label" in opts:
        c = opts["class_label"]
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= int(c) < k:
            raise ValueError(f"--class must be a class of the run, 0..{k - 1}, got {c!r}")
    if "guidance_scale" in opts:
        w = opts["guidance_scale"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w):
            raise ValueError(f"--guidance-scale must be a finite number, got {w!r}")
        if float(w) != 1.0 and config.train.training.label_dropout <= 0:
            raise ValueError(f"--guidance-scale {w}: classifier-free guidance needs a network trained with "
                             f"label dropout (training.label_dropout > 0: the null class); this run has "
                             f"label_dropout=0, so only --guidance-scale 1 (the conditional model) applies")


def sample_labels(plan: Plan) -> np.ndarray | None:
    """The class labels ``[B]`` (int64) a class-conditional plan samples: every sample of
    ``--class`` when given, else sample j of class ``j mod C`` (as the training snapshots);
    None for an unconditional run."""
    k = data_classes(plan.config)
    if not k:
        return None
    b = int(plan.shape[0])
    c = plan.opts.get("class_label")
    return np.full((b,), int(c), np.int64) if c is not None else np.arange(b, dtype=np.int64) % k


def _guided(plan: Plan, conditional_fn, guidance_module, as_labels):
    """``model_fn(x, t)`` of a class-conditional plan: ``conditional_fn(x, t, y)`` at the
    plan's labels (``as_labels`` turns the numpy labels into the framework's array),
    classifier-free guided when ``--guidance-scale`` is not 1."""
    y = as_labels(sample_labels(plan))
    w = float(plan.opts.get("guidance_scale", 1.0))
    if w == 1.0:
        return lambda x, t: conditional_fn(x, t, y)
    from spec.train_config import null_label

    return guidance_module.cfg_model_fn(conditional_fn, y, scale=w, null_label=null_label(plan.config.model),
                                        learn_sigma=bool(getattr(plan.config.model, "learn_sigma", False)))


def _jax_labels(y):
    import jax.numpy as jnp
    return jnp.asarray(y, jnp.int32)


# ----------------------------------------------------------------------------- pieces

def _sde_config(plan: Plan):
    p = plan.config.process
    if plan.name == "pc" and "steps" in plan.opts:
        p = dataclasses.replace(p, N=int(plan.opts["steps"]))
    return p


def _continuous(config: RunConfig) -> bool:
    return bool(config.train.training.continuous and config.resolved_loss == "sde")


def _diffusion_config(plan: Plan) -> DiffusionConfig:
    p = plan.config.process
    steps = plan.opts.get("steps")
    if plan.name == "ddim":
        return dataclasses.replace(p, timestep_respacing=f"ddim{int(steps or 50)}")
    if steps is not None:
        return dataclasses.replace(p, timestep_respacing=str(int(steps)))
    return p


def _ald_sigmas(config: RunConfig) -> np.ndarray:
    if config.resolved_loss == "anneal_dsm":
        return np.asarray(config.model.sigmas, np.float64)
    p = config.process  # smld: the VE ladder, decreasing (label 0 = sigma_max)
    if not isinstance(p, VESDEConfig):
        raise ValueError("--sampler ald needs a VE ladder")
    return np.asarray(p.discrete_sigmas[::-1], np.float64)


def _pc_kwargs(plan: Plan) -> dict:
    o = plan.opts
    kw = {k: o[k] for k in ("predictor", "corrector", "snr", "n_steps", "probability_flow") if k in o}
    return kw


def _ode_kwargs(plan: Plan) -> dict:
    o = plan.opts
    kw = {"method": o.get("method", "rk4")}
    if kw["method"] in ("euler", "heun", "rk4"):
        kw["num_steps"] = int(o.get("steps", 100))
    else:
        kw.update({k: o[k] for k in ("rtol", "atol") if k in o})
    return kw


def _is_image(plan: Plan) -> bool:
    return len(plan.shape) == 4


# --------------------------------------------------------------------------------- JAX

def shard_devices(batch: int, available: int) -> int:
    """How many devices a batch of ``batch`` samples is split over when ``available``
    devices exist: the largest ``d <= available`` that divides ``batch`` (every device gets
    ``batch / d`` samples; 1 = unsharded). E.g. 64 samples on 2 devices: 2; 6 on 4: 3;
    7 on 2: 1."""
    return max(d for d in range(1, max(1, min(batch, available)) + 1) if batch % d == 0)


class JaxSampler:
    """The run's sampler as one jitted JAX program: ``sampler(variables, rng=None, x_T=None,
    noise=None) -> (samples, nfe)`` in JAX layout. ``variables`` are traced, so new weights
    never recompile. The first call per input structure lowers and compiles
    (``compile_s``); with ``progress`` a tqdm bar counts network evaluations as they run
    (a ``jax.debug.callback`` in the model function; leave it off when timing).

    Sharding: when the process sees several devices (``jax.devices()``: GPUs, TPU cores, or a
    CPU host split into per-core devices by ``jax_impl.sharding.configure_host_devices``, see
    ``SCOREDIFF_HOST_DEVICES``), the batch is split over ``shard_devices(batch, devices)`` of
    them automatically (``jax_impl.sharding.shard_sampler``: the samples, x_T and the
    per-sample default noise live batch-sharded; the step noise of ``noise=`` keeps its layout,
    the weights are replicated). The largest device count that divides the batch is used, so
    an odd batch runs unsharded on one device. ``num_devices`` caps the count (1 = never
    shard). The samples equal the unsharded program's to the float32 reduction order: every
    sampler draws its default noise per sample and averages batch-coupled quantities (the
    Langevin step size) over the global batch. ``devices`` is the count used."""

    def __init__(self, plan: Plan, *, progress: bool = False, num_devices: int | None = None):
        import jax

        from spec.validate import check_int

        self.plan = plan
        self.progress = progress
        self.nfe = None
        self.compile_s = None
        self._bar = None
        self._executables = {}
        available = len(jax.devices())
        if num_devices is not None:
            available = min(available, check_int("num_devices", num_devices, minimum=1))
        self.devices = shard_devices(int(plan.shape[0]), available)
        self.mesh = None
        if self.devices > 1:
            from jax_impl import sharding
            self.mesh = sharding.make_mesh(self.devices)
        self._jit = self._build()

    def _tick(self, _):
        if self._bar is not None:
            self._bar.update(1)

    def _build(self):
        import jax

        from jax_impl import samplers
        from jax_impl.models import registry
        from jax_impl.models.utils import get_score_fn

        plan, config, shape = self.plan, self.plan.config, self.plan.shape
        model = registry.create_model(config.model)
        progress = self.progress

        conditional = data_classes(config) > 0

        def model_fn_of(variables):
            def fn(x, labels, y=None):
                out = (model.apply(variables, x, labels, y=y, train=False) if conditional
                       else model.apply(variables, x, labels, train=False))
                if progress:
                    jax.debug.callback(self._tick, labels[0])
                return out
            if conditional:
                from jax_impl import guidance
                return _guided(plan, fn, guidance, _jax_labels)
            return fn

        if plan.name == "ald":
            sigmas = _ald_sigmas(config)
            o = plan.opts

            def run(variables, rng, x_T, noise):
                return samplers.ald_sample(rng, sigmas, model_fn_of(variables), shape,
                                           n_steps_each=int(o.get("n_steps_each", 100)),
                                           step_lr=float(o.get("step_lr", 2e-5)), x_T=x_T, noise=noise)
        elif plan.name in ("ddpm", "ddim"):
            from jax_impl.diffusion import GaussianDiffusion
            diffusion = GaussianDiffusion(_diffusion_config(plan))
            clip = _is_image(plan)
            if plan.name == "ddpm":
                def run(variables, rng, x_T, noise):
                    return samplers.ddpm_sample(rng, diffusion, model_fn_of(variables), shape,
                                                clip_denoised=clip, x_T=x_T, noise=noise)
            else:
                eta = float(plan.opts.get("eta", 0.0))

                def run(variables, rng, x_T, noise):
                    return samplers.ddim_sample(rng, diffusion, model_fn_of(variables), shape,
                                                eta=eta, clip_denoised=clip, x_T=x_T, noise=noise)
        else:
            from jax_impl.train import _make_sde
            sde = _make_sde(_sde_config(plan))
            continuous = _continuous(config)
            if plan.name == "pc":
                kw = _pc_kwargs(plan)

                def run(variables, rng, x_T, noise):
                    score_fn = get_score_fn(sde, model_fn_of(variables), continuous=continuous)
                    return samplers.pc_sample(rng, sde, score_fn, shape, x_T=x_T, noise=noise, **kw)
            else:
                kw = _ode_kwargs(plan)

                def run(variables, rng, x_T, noise):
                    score_fn = get_score_fn(sde, model_fn_of(variables), continuous=continuous)
                    return samplers.ode_sample(rng, sde, score_fn, shape, x_T=x_T, **kw)

        def program(variables, rng, x_T, noise):
            x, nfe = run(variables, rng, x_T, noise)
            self.nfe = nfe  # a Python int, known once traced
            return x

        if self.mesh is None:
            return jax.jit(program)
        from jax_impl import sharding

        # shard_sampler constrains its keyword x_T (leading axis = batch) to the batch
        # sharding; the step noise [steps, ..., B, ...] goes positionally (XLA places it)
        sharded = sharding.shard_sampler(
            lambda rng, variables, noise, x_T=None: program(variables, rng, x_T, noise), self.mesh,
            batch_size=int(shape[0]))
        return jax.jit(lambda variables, rng, x_T, noise: sharded(rng, variables, noise, x_T=x_T))

    def _place(self, variables):
        """The weights replicated over the mesh (unchanged when unsharded)."""
        if self.mesh is None:
            return variables
        from jax_impl import sharding
        return sharding.replicate(variables, self.mesh)

    def compile(self, variables, rng=None, x_T=None, noise=None):
        """Lower and compile for these inputs' structure (idempotent); returns the executable
        (its compile time in ``compile_s``)."""
        import time

        sig = (rng is None, x_T is None, noise is None if not isinstance(noise, dict) else tuple(sorted(noise)))
        if sig not in self._executables:
            t0 = time.perf_counter()
            self._executables[sig] = self._jit.lower(self._place(variables), rng, x_T, noise).compile()
            self.compile_s = time.perf_counter() - t0
        return self._executables[sig]

    def __call__(self, variables, rng=None, x_T=None, noise=None):
        import jax

        exe = self.compile(variables, rng, x_T, noise)
        variables = self._place(variables)
        if self.progress:
            import sys

            from tqdm.auto import tqdm
            self._bar = tqdm(total=self.nfe, desc=f"sample ({self.plan.name})", unit="nfe",
                             dynamic_ncols=True, file=sys.stderr)
        try:
            x = jax.block_until_ready(exe(variables, rng, x_T, noise))
        finally:
            if self._bar is not None:
                jax.effects_barrier()
                self._bar.close()
                self._bar = None
        return x, self.nfe


def draw_inputs(plan: Plan, seed: int) -> tuple[np.ndarray, Any]:
    """Pre-drawn float32 randomness for both frameworks, JAX layout: ``(x_T, noise)`` with
    ``noise`` an array, a dict (PC) or None (ODE, DDIM with eta = 0)."""
    rng = np.random.default_rng(seed)
    shape = plan.shape
    z = rng.standard_normal(shape).astype(np.float32)
    o = plan.opts
    if plan.name == "ald":
        sigmas = _ald_sigmas(plan.config)
        S = len(sigmas) * int(o.get("n_steps_each", 100))
        return (z * np.float32(sigmas[0])), rng.standard_normal((S, *shape)).astype(np.float32)
    if plan.name in ("ddpm", "ddim"):
        K = _diffusion_config(plan).num_timesteps
        if plan.name == "ddim" and float(o.get("eta", 0.0)) == 0.0:
            return z, None
        return z, rng.standard_normal((K, *shape)).astype(np.float32)
    p = _sde_config(plan)
    x_T = z * np.float32(p.sigma_max) if isinstance(p, VESDEConfig) else z
    if plan.name == "ode":
        return x_T, None
    noise = {}
    predictor = o.get("predictor", "reverse_diffusion")
    corrector = o.get("corrector", "langevin")
    if predictor != "none" and not o.get("probability_flow", False):
        noise["predictor"] = rng.standard_normal((p.N, *shape)).astype(np.float32)
    if corrector != "none":
        noise["corrector"] = rng.standard_normal((p.N, int(o.get("n_steps", 1)), *shape)).astype(np.float32)
    return x_T, (noise or None)


# ------------------------------------------------------------------------------- torch

def _to_torch(a):
    import torch

    a = np.asarray(a)
    if a.ndim >= 4:  # [..., B, H, W, C] -> [..., B, C, H, W]
        a = np.moveaxis(a, -1, -3)
    return torch.as_tensor(np.ascontiguousarray(a))


def torch_sampler(plan: Plan, *, progress: bool = False):
    """``sample(module, x_T, noise) -> (samples numpy in JAX layout, nfe)`` through the
    PyTorch reference, fed the arrays of ``draw_inputs`` (transposed to NCHW); with
    ``progress`` a tqdm bar counts network evaluations."""
    import torch

    from torch_ref import samplers
    from torch_ref.models.utils import get_score_fn

    config = plan.config
    shape = plan.shape
    tshape = (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 else shape

    bar = {}

    conditional = data_classes(config) > 0

    def model_fn_of(module):
        def fn(x, labels, y=None):
            if bar.get("bar") is not None:
                bar["bar"].update(1)
            return module(x, labels, y=y) if conditional else module(x, labels)
        if conditional:
            from torch_ref import guidance
            return _guided(plan, fn, guidance, torch.as_tensor)
        return fn

    def wrap(x_T, noise):
        x_T = _to_torch(x_T)
        if isinstance(noise, dict):
            noise = {k: _to_torch(v) for k, v in noise.items()}
        elif noise is not None:
            noise = _to_torch(noise)
        return x_T, noise

    if plan.name == "ald":
        sigmas = _ald_sigmas(config)
        o = plan.opts

        def run(module, x_T, noise):
            return samplers.ald_sample(sigmas, model_fn_of(module), tshape,
                                       n_steps_each=int(o.get("n_steps_each", 100)),
                                       step_lr=float(o.get("step_lr", 2e-5)), x_T=x_T, noise=noise)
    elif plan.name in ("ddpm", "ddim"):
        from torch_ref.diffusion import GaussianDiffusion
        diffusion = GaussianDiffusion(_diffusion_config(plan))
        clip = _is_image(plan)
        if plan.name == "ddpm":
            def run(module, x_T, noise):
                return samplers.ddpm_sample(diffusion, model_fn_of(module), tshape, clip_denoised=clip,
                                            x_T=x_T, noise=noise)
        else:
            eta = float(plan.opts.get("eta", 0.0))

            def run(module, x_T, noise):
                return samplers.ddim_sample(diffusion, model_fn_of(module), tshape, eta=eta,
                                            clip_denoised=clip, x_T=x_T, noise=noise)
    else:
        from torch_ref.train import _make_sde
        sde = _make_sde(_sde_config(plan))
        continuous = _continuous(config)
        if plan.name == "pc":
            kw = _pc_kwargs(plan)

            def run(module, x_T, noise):
                score_fn = get_score_fn(sde, model_fn_of(module), continuous=continuous)
                return samplers.pc_sample(sde, score_fn, tshape, x_T=x_T, noise=noise, **kw)
        else:
            kw = _ode_kwargs(plan)

            def run(module, x_T, noise):
                score_fn = get_score_fn(sde, model_fn_of(module), continuous=continuous)
                return samplers.ode_sample(sde, score_fn, tshape, x_T=x_T, **kw)

    def sample(module, x_T, noise):
        x_T, noise = wrap(x_T, noise)
        if progress:
            import sys

            from tqdm.auto import tqdm
            bar["bar"] = tqdm(desc=f"sample torch ({plan.name})", unit="nfe", file=sys.stderr)
        try:
            with torch.no_grad():
                x, nfe = run(module, x_T, noise)
        finally:
            if bar.get("bar") is not None:
                bar.pop("bar").close()
        x = x.detach().cpu().numpy()
        if x.ndim == 4:
            x = np.moveaxis(x, 1, -1)
        return x, nfe

    return sample


# ------------------------------------------------------------------------- trajectory

def jax_trajectory(plan: Plan, variables, seed: int, *, frames: int = 8) -> tuple[np.ndarray, list[str]]:
    """One reverse trajectory of the first sample: ``frames`` states from the prior to the
    final sample (``[frames, *shape[1:]]``) and their labels (t or the step), JAX.

    PC: ``pc_loop`` run over consecutive pieces of the sampling grid; DDPM / DDIM: the pure
    ``ddpm_step`` / ``ddim_step`` in one scan; ALD: ``ald_sample(final_only=False)``; ODE:
    ``ode_sample`` to intermediate end times is not offered (the PC picture of the same
    model is)."""
    import jax
    import jax.numpy as jnp

    from jax_impl import samplers
    from jax_impl.models import registry
    from jax_impl.models.utils import get_score_fn

    config = plan.config
    image = _is_image(plan)
    one = dataclasses.replace(plan, shape=(1 if image else 512, *plan.shape[1:]))
    pick = (lambda xs: xs[:, 0]) if image else (lambda xs: xs)  # noqa: E731
    model = registry.create_model(config.model)
    if data_classes(config):
        from jax_impl import guidance
        model_fn = _guided(one, lambda x, labels, y: model.apply(variables, x, labels, y=y, train=False),
                           guidance, _jax_labels)
    else:
        model_fn = lambda x, labels: model.apply(variables, x, labels, train=False)  # noqa: E731
    key = jax.random.key(seed)
    if plan.name == "ald":
        o = plan.opts
        xs, _ = jax.jit(lambda k: samplers.ald_sample(
            k, _ald_sigmas(config), model_fn, one.shape, n_steps_each=int(o.get("n_steps_each", 100)),
            step_lr=float(o.get("step_lr", 2e-5)), final_only=False))(key)
        xs = pick(np.asarray(xs))
        idx = np.linspace(0, len(xs) - 1, frames).round().astype(int)
        return xs[idx], [f"step {i}" for i in idx]
    if plan.name in ("ddpm", "ddim"):
        from jax_impl.diffusion import GaussianDiffusion
        from jax_impl.samplers_discrete import ddim_step, ddpm_step
        diffusion = GaussianDiffusion(_diffusion_config(plan))
        K = diffusion.num_timesteps
        clip = _is_image(plan)
        eta = float(plan.opts.get("eta", 0.0))

        @jax.jit
        def run(k):
            x = jax.random.normal(jax.random.fold_in(k, -1 % (2**31)), one.shape)

            def body(x, i):
                t = jnp.full((one.shape[0],), K - 1 - i, jnp.int32)
                z = jax.random.normal(jax.random.fold_in(k, i), one.shape)
                if plan.name == "ddpm":
                    x = ddpm_step(diffusion, model_fn, x, t, z, clip_denoised=clip)["sample"]
                else:
                    x = ddim_step(diffusion, model_fn, x, t, z, eta=eta, clip_denoised=clip)["sample"]
                return x, x

            _, xs = jax.lax.scan(body, x, jnp.arange(K))
            return jnp.concatenate([x[None], xs], 0)

        xs = pick(np.asarray(run(key)))
        idx = np.linspace(0, K, frames).round().astype(int)
        return xs[idx], [f"t={K - i}" for i in idx]
    # PC (and the ODE sampler's model): pc_loop over consecutive pieces of the PC grid
    from jax_impl.train import _make_sde
    p_plan = plan if plan.name == "pc" else dataclasses.replace(plan, name="pc", options=())
    sde = _make_sde(_sde_config(p_plan))
    score_fn = get_score_fn(sde, model_fn, continuous=_continuous(config))
    predictor, corrector, grid = samplers.pc_components(sde, **_pc_kwargs(p_plan))
    grid = np.asarray(grid, np.float64)
    cuts = np.linspace(0, len(grid), frames).round().astype(int)
    x = sde.prior_from_noise(jax.random.normal(key, one.shape))
    states, labels = [np.asarray(x)], [f"t={sde.T:.2f}"]
    piece = jax.jit(lambda k, x, ts, last: samplers.pc_loop(k, sde, score_fn, x, predictor, corrector,
                                                            ts, denoise=last), static_argnums=3)
    for j, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        x = piece(jax.random.fold_in(key, j), x, grid[a:b], bool(b == len(grid)))
        states.append(np.asarray(x))
        labels.append(f"t={grid[b - 1]:.2f}")
    return pick(np.stack(states)), labels
