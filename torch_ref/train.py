"""Training in PyTorch: score_sde_pytorch's optimisation, EMA, ``TrainState`` and the step.

Twin: ``jax_impl/train.py`` (optax, the same EMA rule, the same step; see its docstring for
the objectives and the deliberate differences from the official code).

* ``get_optimizer(config, params)``: ``torch.optim.Adam(params, lr, betas=(beta1, 0.999), eps,
  weight_decay)`` (L2 added to the gradient) or ``torch.optim.AdamW`` (decoupled), and the
  schedule ``lr_fn(step)``; the step sets every param group's lr to ``lr_fn(step)`` with the
  pre-increment step (score_sde_pytorch's ``optimization_manager``: the first update has lr 0)
  and clips with ``torch.nn.utils.clip_grad_norm_`` when ``grad_clip >= 0``.
* ``ema_update``: in place, ``ema.sub_((1 - decay) * (ema - param))`` with
  ``decay = min(rate, (1 + n) / (10 + n))`` (score_sde_pytorch's ``ExponentialMovingAverage``)
  or the constant rate; frozen parameters (``requires_grad=False``, NCSN++'s Fourier W) are
  neither trained nor averaged.
* ``TrainState``: a dataclass with the JAX field names: ``params`` / ``constants`` are dicts
  of the module's own (live) trainable / frozen parameters, ``opt_state`` is the
  ``torch.optim`` optimiser (it owns the Adam moments), ``ema`` a tuple of dicts (one per
  rate), ``rng`` the ``torch.Generator``, ``sampler_state`` the stateful schedule sampler
  (``torch_ref.resample``) or None, ``model`` the module.
* ``train_step_core(run_config, state, batch, t, noise)`` updates ``state`` in place from the
  given random inputs and returns ``(state, metrics)``; ``make_train_step(run_config)`` draws
  them from ``generator`` (default ``state.rng``). Dropout (when a config has it) draws from
  torch's global generator.

Class-conditional models (``num_classes = K > 0``): batches are ``(x, y)`` with int labels
``y [B]`` in ``[0, K)`` and the network is called as ``model(x, t_labels, y=y)``; with
``training.label_dropout = p`` each label becomes the null class ``K - 1`` with probability
p. ``draw_label_drop`` draws the mask ``uniform [B] < p`` from the generator after t and the
noise (so those draws are unchanged); ``train_step_core(..., label_drop=mask)`` applies it
(default: drawn from ``state.rng``). The twin draws per example from ``fold_in``; parity
tests feed both the same numpy mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

import spec
from spec.train_config import OptimConfig, RunConfig, TrainConfig, null_label, num_classes
from torch_ref import losses as _losses
from torch_ref import resample as _resample
from torch_ref import sde as _sde
from torch_ref.diffusion import GaussianDiffusion
from torch_ref.models import registry
from torch_ref.models.utils import get_score_fn
from torch_ref.validate import check_generator

__all__ = [
    "TrainState",
    "create_train_state",
    "ema_update",
    "get_optimizer",
    "learning_rate_fn",
    "make_loss_fn",
    "make_train_step",
    "draw_randomness",
    "draw_label_drop",
    "train",
    "train_step_core",
]

#: score_sde's ``eps`` of the continuous SDE loss: t ~ U(eps, T)
SDE_T_EPS = 1e-5

_NEED_Y = ("batch: the model is class-conditional (num_classes={k}); pass batch = (x, y) with "
           "int class labels y [B]")


def _split_batch(batch):
    """``batch`` -> ``(x, y)``: a pair ``(x, y)`` (tuple or list), or a bare x with y None."""
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise ValueError(f"batch must be x or a pair (x, y), got a {type(batch).__name__} of "
                             f"{len(batch)} items")
        return batch[0], batch[1]
    return batch, None


def _optim(config) -> OptimConfig:
    if isinstance(config, RunConfig):
        config = config.train
    if isinstance(config, TrainConfig):
        return config.optim
    if isinstance(config, OptimConfig):
        return config
    raise TypeError(f"config must be a TrainConfig (or its OptimConfig / a RunConfig), got "
                    f"{type(config).__name__}")


# --------------------------------------------------------------------- optimiser


def learning_rate_fn(config):
    """``lr(step)`` (a Python float) for the update at pre-increment ``step``: ``lr *
    min(step / warmup, 1)`` when warmup > 0, times ``1 - step / lr_anneal_steps`` when
    lr_anneal_steps > 0."""
    oc = _optim(config)
    return oc.learning_rate


def get_optimizer(config, params=None):
    """``(optimizer, lr_fn)``: ``torch.optim.Adam`` (L2 weight decay) or ``AdamW`` over
    ``params`` (an iterable of tensors, as torch.optim takes them) and the schedule."""
    oc = _optim(config)
    if params is None:
        raise TypeError("get_optimizer: torch.optim needs the parameters: get_optimizer(config, "
                        "model.parameters())")
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("get_optimizer: params holds no trainable tensor (requires_grad=True)")
    cls = torch.optim.AdamW if oc.optimizer == "AdamW" else torch.optim.Adam
    optimizer = cls(params, lr=oc.lr, betas=(oc.beta1, 0.999), eps=oc.eps,
                    weight_decay=oc.weight_decay)
    return optimizer, learning_rate_fn(oc)


# --------------------------------------------------------------------------- EMA


@torch.no_grad()
def ema_update(ema_params, params, *, rate, num_updates=None):
    """One in-place EMA step on matching dicts (or lists) of tensors; returns ``ema_params``.

    ``decay = min(rate, (1 + n) / (10 + n))`` with ``n = num_updates`` (the number of
    optimiser updates including this one) or ``rate`` when None; ``ema -= (1 - decay) *
    (ema - param)``. Pass only trainable parameters.
    """
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must lie in [0, 1], got {rate}")
    decay = rate if num_updates is None else min(rate, (1 + int(num_updates)) / (10 + int(num_updates)))
    one_minus = 1.0 - decay
    if isinstance(ema_params, dict):
        if set(ema_params) != set(params):
            raise ValueError(f"ema_params and params must have the same keys; differ in "
                             f"{sorted(set(ema_params) ^ set(params))}")
        pairs = [(ema_params[k], params[k]) for k in ema_params]
    else:
        pairs = list(zip(ema_params, params))
    for e, p in pairs:
        e.sub_(one_minus * (e - p))
    return ema_params


# --------------------------------------------------------------------- state


@dataclasses.dataclass
class TrainState:
    """Everything a training step reads and writes (mutable; updated in place).

    Attributes:
      step: number of updates made (int).
      params: ``{name: nn.Parameter}``, the module's trainable parameters (live).
      constants: ``{name: tensor}``, its frozen parameters (``requires_grad=False``).
      opt_state: the ``torch.optim`` optimiser (its ``state`` holds the Adam moments).
      ema: tuple of ``{name: tensor}``, one per ``model.ema_rate`` entry.
      rng: the ``torch.Generator`` the step draws t and noise from.
      sampler_state: the schedule sampler (``torch_ref.resample``) or None.
      model: the ``torch.nn.Module``.
    """

    step: Any
    params: Any
    constants: Any
    opt_state: Any
    ema: Any
    rng: Any
    sampler_state: Any
    model: Any = None


def _make_sde(process):
    for cfg_cls, cls in ((spec.subVPSDEConfig, _sde.subVPSDE), (spec.VPSDEConfig, _sde.VPSDE),
                         (spec.VESDEConfig, _sde.VESDE)):
        if type(process) is cfg_cls:
            return cls(**{f.name: getattr(process, f.name) for f in dataclasses.fields(process)})
    raise TypeError(f"not an SDE config: {type(process).__name__}")


def _check_run_config(run_config) -> RunConfig:
    if not isinstance(run_config, RunConfig):
        raise TypeError(f"run_config must be a spec.train_config.RunConfig, got "
                        f"{type(run_config).__name__}")
    return run_config


def create_train_state(run_config: RunConfig, *, model=None, dtype=torch.float32,
                       generator=None) -> TrainState:
    """A fresh state: the registry's module for ``run_config.model`` (or ``model``) in
    ``dtype``, built under ``torch.manual_seed(training.seed)`` (without touching the global
    generator's state), the optimiser, EMA copies, ``generator`` (default: a new one seeded
    with training.seed) and the schedule sampler."""
    run_config = _check_run_config(run_config)
    generator = check_generator("generator", generator)
    seed = run_config.train.training.seed
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = registry.create_model(run_config.model)
    model = model.to(dtype)
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    constants = {k: p for k, p in model.named_parameters() if not p.requires_grad}
    optimizer, _ = get_optimizer(run_config.train, params.values())
    ema = tuple({k: p.detach().clone() for k, p in params.items()}
                for _ in run_config.train.model.ema_rate)
    sampler = None
    if run_config.resolved_loss == "diffusion":
        sampler = _resample.create_named_schedule_sampler(
            run_config.train.training.schedule_sampler, run_config.process.num_timesteps)
    return TrainState(step=0, params=params, constants=constants, opt_state=optimizer, ema=ema,
                      rng=generator, sampler_state=sampler, model=model)


# ---------------------------------------------------------------------- losses


def make_loss_fn(run_config: RunConfig):
    """``loss_fn(model, x, t, noise, weights=None, *, y=None) -> (loss, losses)``: the batch
    mean of ``weights * losses`` and the per-example losses ``[B]`` of the run's objective
    (the JAX twin's, for the module in its current train/eval mode); ``y`` (int ``[B]``,
    after label dropout) is passed to a class-conditional network as ``y=``."""
    run_config = _check_run_config(run_config)
    kind, tc = run_config.resolved_loss, run_config.train.training
    process = run_config.process

    def loss_fn(model, x, t, noise, weights=None, *, y=None):
        model_fn = model if y is None else (lambda xx, labels: model(xx, labels, y=y))
        if kind == "sde":
            sde = _make_sde(process)
            score_fn = get_score_fn(sde, model_fn, continuous=tc.continuous)
            losses = _losses.sde_loss(sde, score_fn, x, t, noise, reduce_mean=tc.reduce_mean,
                                      likelihood_weighting=tc.likelihood_weighting)
        elif kind == "smld":
            losses = _losses.smld_loss(_make_sde(process), model_fn, x, t, noise,
                                       reduce_mean=tc.reduce_mean)
        elif kind == "ddpm":
            losses = _losses.ddpm_loss(_make_sde(process), model_fn, x, t, noise,
                                       reduce_mean=tc.reduce_mean)
        elif kind == "anneal_dsm":
            losses = _losses.anneal_dsm_loss(model_fn, x, t, noise, run_config.model.sigmas, 2.0)
        else:
            losses = GaussianDiffusion(process).training_losses(model_fn, x, t, noise)["loss"]
        weighted = losses if weights is None else losses * weights.to(losses.dtype)
        return weighted.mean(), losses

    return loss_fn


def _importance_weights(state: TrainState, t, dtype):
    sampler = state.sampler_state
    if sampler is None:
        return None
    w = sampler.weights()
    p = w / w.sum()
    return torch.as_tensor(1.0 / (len(p) * p[t.cpu().numpy()]), dtype=dtype, device=t.device)


def draw_randomness(run_config: RunConfig, state: TrainState, batch, *, generator=None):
    """``(t, noise)`` for one step from ``generator`` (default ``state.rng``): t ~ U(1e-5, T)
    for "sde", U{0..N-1} for the discrete / NCSN losses, the schedule sampler's t for
    "diffusion"; noise standard normal like x (``batch`` is x or ``(x, y)``)."""
    generator = check_generator("generator", generator)
    gen = state.rng if generator is None else generator
    kind, x = run_config.resolved_loss, _split_batch(batch)[0]
    B = x.shape[0]
    if kind == "sde":
        T = run_config.process.T
        t = torch.rand(B, generator=gen, dtype=x.dtype) * (T - SDE_T_EPS) + SDE_T_EPS
    elif kind in ("smld", "ddpm", "anneal_dsm"):
        num = run_config.model.num_scales if kind == "anneal_dsm" else run_config.process.N
        t = torch.randint(0, num, (B,), generator=gen)
    else:
        t, _ = state.sampler_state.sample(B, generator=gen)
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return t.to(x.device), noise.to(x.device)


def draw_label_drop(run_config: RunConfig, state: TrainState, batch, *, generator=None):
    """The label-dropout mask ``[B]`` (bool, True = the label becomes the null class):
    ``torch.rand(B, generator) < training.label_dropout`` (default generator ``state.rng``;
    nothing is drawn, all False, when label_dropout is 0)."""
    generator = check_generator("generator", generator)
    gen = state.rng if generator is None else generator
    x = _split_batch(batch)[0]
    p = run_config.train.training.label_dropout
    if p <= 0:
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    return (torch.rand(x.shape[0], generator=gen) < p).to(x.device)


def _labels(run_config: RunConfig, state: TrainState, batch, y, label_drop):
    """The labels the network sees: None (unconditional), or y (int64) with dropped
    examples set to the null class."""
    K = num_classes(run_config.model)
    if K == 0:
        return None
    if y is None:
        raise ValueError(_NEED_Y.format(k=K))
    y = torch.as_tensor(y).long()
    if run_config.train.training.label_dropout > 0:
        if label_drop is None:
            label_drop = draw_label_drop(run_config, state, batch)
        label_drop = torch.as_tensor(label_drop, dtype=torch.bool, device=y.device)
        y = torch.where(label_drop, torch.full_like(y, null_label(run_config.model)), y)
    return y


# ------------------------------------------------------------------------- step


def _grad_norm(params) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def train_step_core(run_config: RunConfig, state: TrainState, batch, t, noise, *, label_drop=None):
    """One optimiser update of ``state`` (in place) from the given ``t`` and ``noise``;
    returns ``(state, metrics)`` (floats ``loss``, ``grad_norm`` before clipping, ``lr``).
    ``batch`` is x, or ``(x, y)`` for a class-conditional model; ``label_drop`` (bool
    ``[B]``) the label-dropout mask (default: ``draw_label_drop`` from ``state.rng``)."""
    run_config = _check_run_config(run_config)
    tc, oc, ema_cfg = run_config.train.training, run_config.train.optim, run_config.train.model
    model, optimizer = state.model, state.opt_state
    batch, y = _split_batch(batch)
    y = _labels(run_config, state, (batch, y), y, label_drop)
    B = batch.shape[0]
    M = B // tc.microbatch if tc.microbatch > 0 else 1
    if tc.microbatch > 0 and B % tc.microbatch:
        raise ValueError(f"batch of {B} examples is not a multiple of training.microbatch="
                         f"{tc.microbatch}")
    loss_fn = make_loss_fn(run_config)
    weights = _importance_weights(state, t, batch.dtype)
    model.train(True)
    optimizer.zero_grad(set_to_none=True)
    m = B // M
    total, per_example = 0.0, []
    for j in range(M):
        sl = slice(j * m, (j + 1) * m)
        loss, losses = loss_fn(model, batch[sl], t[sl], noise[sl],
                               None if weights is None else weights[sl],
                               y=None if y is None else y[sl])
        (loss / M).backward()
        total += float(loss.detach()) / M
        per_example.append(losses.detach())
    params = list(state.params.values())
    lr = learning_rate_fn(oc)(state.step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if oc.grad_clip >= 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm=oc.grad_clip)
    else:
        grad_norm = _grad_norm(params)
    optimizer.step()
    state.step += 1
    for ema, rate in zip(state.ema, ema_cfg.ema_rate):
        ema_update(ema, state.params, rate=rate,
                   num_updates=state.step if ema_cfg.ema_warmup else None)
    sampler = state.sampler_state
    if isinstance(sampler, _resample.LossAwareSampler):
        sampler.update_with_all_losses(t, torch.cat(per_example))
    return state, {"loss": total, "grad_norm": float(grad_norm), "lr": float(lr)}


def make_train_step(run_config: RunConfig, *, donate: bool = True, steps_per_call: int = 1):
    """``step(state, batch, *, generator=None) -> (state, metrics)``: draws t and noise
    (``draw_randomness``) then ``train_step_core``. ``donate`` is accepted for the twin's
    signature (torch updates in place anyway); with ``steps_per_call = S > 1`` the batch is a
    stack ``[S, B, ...]`` and the metrics are lists of S floats."""
    run_config = _check_run_config(run_config)
    if isinstance(steps_per_call, bool) or not isinstance(steps_per_call, int) or steps_per_call < 1:
        raise ValueError(f"steps_per_call must be an int >= 1, got {steps_per_call!r}")
    if not isinstance(donate, bool):
        raise TypeError(f"donate must be a bool, got {type(donate).__name__}")

    K = num_classes(run_config.model)
    dropping = run_config.train.training.label_dropout > 0

    def one(state, batch, generator):
        t, noise = draw_randomness(run_config, state, batch, generator=generator)
        drop = draw_label_drop(run_config, state, batch, generator=generator) if K and dropping else None
        return train_step_core(run_config, state, batch, t, noise, label_drop=drop)

    def step(state, batch, *, generator=None):
        if not isinstance(state, TrainState):
            raise TypeError(f"state must be a TrainState (create_train_state), got {type(state).__name__}")
        x, y = _split_batch(batch)
        if not torch.is_tensor(x) or not x.dtype.is_floating_point:
            raise TypeError(f"batch must be a floating torch tensor, got {type(x).__name__}")
        y = _check_labels(y, K, tuple(x.shape[:2] if steps_per_call > 1 else x.shape[:1]))
        if steps_per_call == 1:
            return one(state, x if y is None else (x, y), generator)
        if x.shape[0] != steps_per_call:
            raise ValueError(f"batch must stack steps_per_call={steps_per_call} batches "
                             f"[S, B, ...], got shape {tuple(x.shape)}")
        out = {"loss": [], "grad_norm": [], "lr": []}
        for i in range(steps_per_call):
            b = x[i] if y is None else (x[i], y[i])
            state, metrics = one(state, b, generator)
            for k in out:
                out[k].append(metrics[k])
        return state, out

    return step


def _check_labels(y, K: int, shape):
    """The batch's labels: None for an unconditional model (which refuses them), else int64
    ``[*shape]`` in ``[0, K)``."""
    if K == 0:
        if y is not None:
            raise ValueError("batch: the model is unconditional (num_classes=0); pass x alone, "
                             "not (x, y)")
        return None
    if y is None:
        raise ValueError(_NEED_Y.format(k=K))
    y = torch.as_tensor(y)
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"batch: the labels y must be integers, got dtype {y.dtype}")
    if tuple(y.shape) != tuple(shape):
        raise ValueError(f"batch: the labels y must have shape {list(shape)} (one per example), "
                         f"got {list(y.shape)}")
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= K:
            raise ValueError(f"batch: the labels y must lie in [0, num_classes={K}), got values "
                             f"in [{lo}, {hi}]")
    return y.long()


def train(config, workdir, **kwargs):
    """The training loop (``torch_ref.loop.train``): progress bar, JSON-lines log,
    checkpoints and resume in ``workdir``; see that module."""
    from torch_ref.loop import train as _train

    return _train(config, workdir, **kwargs)
