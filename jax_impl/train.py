"""Training in JAX: the official optimisation (optax), EMA, ``TrainState`` and a jitted step.

Twin: ``torch_ref/train.py`` (torch.optim, the same EMA rule, the same step).

* ``get_optimizer(config)``: score_sde_pytorch's optimisation as an optax chain, number for
  number: ``clip_grad_norm_`` semantics (scale ``min(1, grad_clip / (norm + 1e-6))``, off
  when ``grad_clip < 0``), then ``torch.optim.Adam``'s L2 weight decay
  (``optax.add_decayed_weights`` BEFORE ``scale_by_adam``), Adam(beta1, 0.999, eps), and the
  learning rate ``lr * min(step / warmup, 1)`` evaluated on optax's pre-increment count (the
  first update has lr 0). ``optimizer="AdamW"`` is improved-diffusion's ``optax.adamw``
  (decoupled decay), ``lr_anneal_steps > 0`` its linear decay ``lr * (1 - step / anneal)``.
* ``ema_update``: ``ema - (1 - decay) (ema - params)`` with ``decay = min(rate, (1 + n) /
  (10 + n))`` (score_sde_pytorch's ``ExponentialMovingAverage``) or the constant rate.
  Only ``params`` are averaged: the frozen ``constants`` collection (NCSN++'s Fourier W) is
  neither trained nor averaged.
* ``TrainState``: a pytree (``flax.struct``) of step, params, constants, opt_state, ema
  (one param tree per rate), rng (the run's base key) and sampler_state
  (``LossSecondMomentState`` or None); the flax module rides along as static data.
* ``train_step_core(run_config, state, batch, t, noise)``: one update from the given random
  inputs (the parity tests feed both frameworks the same numpy draws).
  ``make_train_step(run_config)`` jits ``(state, batch, rng=None) -> (state, metrics)`` with
  buffer donation, drawing example ``i``'s t / noise from ``fold_in(step_key, i)`` with
  ``step_key = fold_in(rng or state.rng, step)``, so the draws do not depend on how the
  batch is sharded over devices.

Class-conditional models (``num_classes = K > 0``, ``spec.train_config``): every batch is a
pair ``(x, y)`` with int labels ``y [B]`` in ``[0, K)`` (``[S, B]`` with ``steps_per_call``)
and the network is called as ``model.apply(variables, x, t_labels, y=y, train=...)``;
unconditional models take a bare ``x`` and are never given ``y``. With
``training.label_dropout = p`` each example's label becomes the null class ``K - 1``
(``spec.train_config.null_label``) with probability p: ``draw_label_drop`` draws example
i's decision from ``fold_in(fold_in(step_key, i), 2)`` (a slot of its own: t and the noise,
slots 0 and 1, are unchanged), and ``train_step_core(..., label_drop=mask)`` applies it;
without ``label_drop`` the core draws it from ``step_key = fold_in(state.rng, state.step)``
itself (the key ``make_train_step`` uses when no ``rng`` is given).

Objectives (``RunConfig.resolved_loss``), every per-example loss averaged over the batch:
"sde" (``losses.sde_loss`` with score_sde's ``get_score_fn``, t ~ U(1e-5, T)), "smld" /
"ddpm" (discrete labels ~ U{0..N-1}), "anneal_dsm" (NCSN: labels ~ U{0..L-1}, the model's
sigmas, anneal power 2) and "diffusion" (``GaussianDiffusion.training_losses``, t from the
schedule sampler, loss ``mean(w_t L_t)``, the loss-second-moment history updated with the
unweighted losses of the whole batch in example order). With a learned-variance process
(``model_var_type`` "learned" / "learned_range") the model has ``learn_sigma=True`` (RunConfig
checks it) and its ``2C`` output (last axis here, axis 1 in torch: eps, then v) is split by
``GaussianDiffusion``; the hybrid loss ``L_simple + L_vlb`` trains v through the vb term only.

Deliberate differences from the official code: with ``microbatch`` improved-diffusion sums the
gradients of the micro-batch means (the step grows with the number of micro-batches); here
they are averaged, so micro-batching changes memory, not the update; all of a step's t are
drawn from the sampler state at the start of the step (improved-diffusion draws per
micro-batch after updating it). Dropout masks come from one key per step (not per example).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

import spec
from spec.train_config import OptimConfig, RunConfig, TrainConfig, null_label, num_classes
from jax_impl import losses as _losses
from jax_impl import resample as _resample
from jax_impl import sde as _sde
from jax_impl.diffusion import GaussianDiffusion
from jax_impl.models import registry
from jax_impl.models.utils import get_score_fn
from jax_impl.validate import check_array, check_key, is_concrete

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
#: torch.nn.utils.clip_grad_norm_'s guard: scale = max_norm / (norm + 1e-6)
CLIP_EPS = 1e-6
#: fold_in index of the step's dropout key (example indices are 0..B-1)
_DROPOUT_INDEX = 2**31 - 1
#: per-example fold_in slots: 0 = t, 1 = noise, 2 = the label-dropout decision
_LABEL_DROP_SLOT = 2


def _split_batch(batch):
    """``batch`` -> ``(x, y)``: a pair ``(x, y)`` (tuple or list), or a bare x with y None."""
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise ValueError(f"batch must be x or a pair (x, y), got a {type(batch).__name__} of "
                             f"{len(batch)} items")
        return batch[0], batch[1]
    return batch, None


def _join_batch(x, y):
    return x if y is None else (x, y)


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
    """``lr(step)`` for the update at pre-increment ``step`` (a traced int is fine):
    ``lr * min(step / warmup, 1)`` when warmup > 0, times ``1 - step / lr_anneal_steps`` when
    lr_anneal_steps > 0 (``OptimConfig.learning_rate`` is the float64 oracle)."""
    oc = _optim(config)

    def schedule(step):
        lr = jnp.asarray(oc.lr, dtype=jnp.result_type(float))
        step = jnp.asarray(step).astype(lr.dtype)
        if oc.warmup > 0:
            lr = lr * jnp.minimum(step / oc.warmup, 1.0)
        if oc.lr_anneal_steps > 0:
            lr = lr * (1.0 - step / oc.lr_anneal_steps)
        return lr

    return schedule


def _clip_grad_norm(max_norm: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_``: ``g * min(1, max_norm / (||g|| + 1e-6))``
    (optax's ``clip_by_global_norm`` divides by the norm without the guard)."""

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + CLIP_EPS))
        return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def get_optimizer(config, params=None) -> optax.GradientTransformation:
    """The optax transformation of ``config`` (a TrainConfig, or its OptimConfig).

    ``params`` is not needed by optax (the state is made by ``tx.init(params)``); it is
    accepted, and when given checked to be a tree of floating arrays, so that both frameworks
    have one signature (torch.optim binds the parameters at construction).
    """
    oc = _optim(config)
    if params is not None:
        for leaf in jax.tree_util.tree_leaves(params):
            check_array("params", leaf, finite=False)
    parts = []
    if oc.grad_clip >= 0:
        parts.append(_clip_grad_norm(oc.grad_clip))
    schedule = learning_rate_fn(oc)
    if oc.optimizer == "AdamW":
        parts.append(optax.adamw(schedule, b1=oc.beta1, b2=0.999, eps=oc.eps,
                                 weight_decay=oc.weight_decay))
    else:
        if oc.weight_decay > 0:
            parts.append(optax.add_decayed_weights(oc.weight_decay))  # L2: g + wd * p
        parts.append(optax.scale_by_adam(b1=oc.beta1, b2=0.999, eps=oc.eps))
        parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)


# --------------------------------------------------------------------------- EMA


def ema_update(ema_params, params, *, rate, num_updates=None):
    """One EMA step on matching trees: ``ema - (1 - decay) * (ema - params)``.

    ``decay = min(rate, (1 + n) / (10 + n))`` with ``n = num_updates`` (the number of
    optimiser updates including this one; score_sde_pytorch), or ``rate`` when None.
    Pass only the trainable ``params`` (not the frozen ``constants``).
    """
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must lie in [0, 1], got {rate}")
    if num_updates is None:
        one_minus = jnp.asarray(1.0 - rate)
    else:
        n = jnp.asarray(num_updates).astype(jnp.result_type(float))
        one_minus = 1.0 - jnp.minimum(rate, (1.0 + n) / (10.0 + n))
    return jax.tree_util.tree_map(
        lambda e, p: e - one_minus.astype(e.dtype) * (e - p), ema_params, params)


# --------------------------------------------------------------------- state


class TrainState(flax.struct.PyTreeNode):
    """Everything one training step reads and writes (a pytree; ``model`` is static).

    Attributes:
      step: int32 scalar, the number of updates made.
      params: the ``'params'`` collection (trained).
      constants: the other variable collections (``{'constants': {...}}`` for NCSN++'s
        Fourier W; ``{}`` otherwise): never trained, never averaged.
      opt_state: the optax state of ``get_optimizer``.
      ema: tuple of param trees, one per ``model.ema_rate`` entry.
      rng: the run's base PRNG key (raw uint32 ``[2]``); step ``s`` uses ``fold_in(rng, s)``.
      sampler_state: the schedule sampler's state (``LossSecondMomentState``) or None.
      model: the flax module (static, not a leaf).
    """

    step: Any
    params: Any
    constants: Any
    opt_state: Any
    ema: Any
    rng: Any
    sampler_state: Any
    model: Any = flax.struct.field(pytree_node=False, default=None)


def _key_data(key):
    key = check_key("rng", key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return key


def _make_sde(process):
    for cfg_cls, cls in ((spec.subVPSDEConfig, _sde.subVPSDE), (spec.VPSDEConfig, _sde.VPSDE),
                         (spec.VESDEConfig, _sde.VESDE)):
        if type(process) is cfg_cls:
            return cls(**{f.name: getattr(process, f.name) for f in dataclasses.fields(process)})
    raise TypeError(f"not an SDE config: {type(process).__name__}")


def _sampler(run_config: RunConfig):
    if run_config.resolved_loss != "diffusion":
        return None
    return _resample.create_named_schedule_sampler(run_config.train.training.schedule_sampler,
                                                   run_config.process.num_timesteps)


def _check_run_config(run_config) -> RunConfig:
    if not isinstance(run_config, RunConfig):
        raise TypeError(f"run_config must be a spec.train_config.RunConfig, got "
                        f"{type(run_config).__name__}")
    return run_config


def create_train_state(rng, run_config: RunConfig, *, model=None, dtype=jnp.float32) -> TrainState:
    """A fresh state: variables from ``registry.init_variables`` (or ``model.init`` for a
    custom flax ``model`` taking ``(x, labels)``) cast to ``dtype``, the optimiser state,
    EMA copies of the params, ``rng`` kept as the base key, an empty sampler history."""
    run_config = _check_run_config(run_config)
    base = _key_data(rng)
    init_key = jax.random.fold_in(base, 0x5EED)
    if model is None:
        model = registry.create_model(run_config.model)
    variables = registry._compiled_init(model, run_config.model)(init_key)  # cached per (module, config)
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), dict(variables))
    params = variables.pop("params")
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, constants=variables,
        opt_state=get_optimizer(run_config.train).init(params),
        ema=tuple(jax.tree_util.tree_map(jnp.copy, params) for _ in run_config.train.model.ema_rate),
        rng=base, sampler_state=None, model=model)
    sampler = _sampler(run_config)
    if sampler is not None:
        state = state.replace(sampler_state=sampler.init(dtype))
    return state


# ---------------------------------------------------------------------- losses


def make_loss_fn(run_config: RunConfig):
    """``loss_fn(model, variables, x, t, noise, weights=None, dropout_rng=None, *, y=None)
    -> (loss, losses)``: the batch mean of ``weights * losses`` (scalar) and the per-example
    losses ``[B]`` of the run's objective, from drawn ``t`` (times, integer labels or
    diffusion steps) and ``noise`` (x's shape). ``dropout_rng`` turns train mode (dropout)
    on; ``y`` (int ``[B]``, after label dropout) is passed to a class-conditional network
    as ``y=``."""
    run_config = _check_run_config(run_config)
    kind, tc = run_config.resolved_loss, run_config.train.training
    process = run_config.process

    def loss_fn(model, variables, x, t, noise, weights=None, dropout_rng=None, *, y=None):
        extra = {} if y is None else {"y": y}

        def model_fn(xx, labels):
            if dropout_rng is None:
                return model.apply(variables, xx, labels, train=False, **extra)
            return model.apply(variables, xx, labels, train=True, rngs={"dropout": dropout_rng},
                               **extra)

        if kind == "sde":
            sde = _make_sde(process)
            score_fn = get_score_fn(sde, lambda xx, lab: model_fn(xx, lab), continuous=tc.continuous)
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
        weighted = losses if weights is None else losses * weights.astype(losses.dtype)
        return jnp.mean(weighted), losses

    return loss_fn


def _t_kind(run_config: RunConfig) -> tuple[str, int]:
    kind = run_config.resolved_loss
    if kind == "sde":
        return "uniform", 0
    if kind in ("smld", "ddpm"):
        return "int", run_config.process.N
    if kind == "anneal_dsm":
        return "int", run_config.model.num_scales
    return "weights", run_config.process.num_timesteps


def draw_randomness(rng, run_config: RunConfig, state: TrainState, batch):
    """``(t, noise)`` for one step: example ``i`` draws from ``fold_in(rng, i)`` (rng is the
    step's data key), so the draws are the same however the batch is sharded. t is
    U(1e-5, T) for "sde", U{0..N-1} for the discrete / NCSN losses, ``t ~ p`` of the schedule
    sampler for "diffusion". ``batch`` is x or ``(x, y)`` (only x's shape is read)."""
    kind, num = _t_kind(run_config)
    x = jnp.asarray(_split_batch(batch)[0])
    sde_T = getattr(run_config.process, "T", 1.0)
    if kind == "weights":
        sampler = _sampler(run_config)
        w = sampler.weights(state.sampler_state) if state.sampler_state is not None else sampler.weights()
        p = w / jnp.sum(w)

    def one(i):
        k = jax.random.fold_in(rng, i)
        k_t, k_z = jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)
        z = jax.random.normal(k_z, x.shape[1:], x.dtype)
        if kind == "uniform":
            t = jax.random.uniform(k_t, (), x.dtype) * (sde_T - SDE_T_EPS) + SDE_T_EPS
        elif kind == "int":
            t = jax.random.randint(k_t, (), 0, num, jnp.int32)
        else:
            t = jax.random.choice(k_t, num, (), p=p).astype(jnp.int32)
        return t, z

    return jax.vmap(one)(jnp.arange(x.shape[0]))


def draw_label_drop(rng, run_config: RunConfig, state: TrainState, batch):
    """The label-dropout mask ``[B]`` (bool, True = the label becomes the null class) of one
    step: example i is dropped when ``uniform(fold_in(fold_in(rng, i), 2)) <
    training.label_dropout`` (rng is the step's data key, as in ``draw_randomness``; the
    same however the batch is sharded). All False when label_dropout is 0. ``state`` is not
    read (the twin's signature)."""
    del state
    x = jnp.asarray(_split_batch(batch)[0])
    p = run_config.train.training.label_dropout

    def one(i):
        k = jax.random.fold_in(jax.random.fold_in(rng, i), _LABEL_DROP_SLOT)
        return jax.random.uniform(k, (), jnp.float32) < p

    if p <= 0:
        return jnp.zeros((x.shape[0],), bool)
    return jax.vmap(one)(jnp.arange(x.shape[0]))


def _labels(run_config: RunConfig, state: TrainState, batch, y, label_drop):
    """The labels the network sees: None (unconditional), or y with dropped examples set
    to the null class."""
    if num_classes(run_config.model) == 0:
        return None
    if y is None:
        raise ValueError(_NEED_Y.format(k=num_classes(run_config.model)))
    y = jnp.asarray(y).astype(jnp.int32)
    if run_config.train.training.label_dropout > 0:
        if label_drop is None:
            label_drop = draw_label_drop(jax.random.fold_in(state.rng, state.step), run_config,
                                         state, batch)
        y = jnp.where(jnp.asarray(label_drop, bool), null_label(run_config.model), y)
    return y


_NEED_Y = ("batch: the model is class-conditional (num_classes={k}); pass batch = (x, y) with "
           "int class labels y [B]")


# ------------------------------------------------------------------------- step


def _importance_weights(run_config: RunConfig, state: TrainState, t, dtype):
    sampler = _sampler(run_config)
    if sampler is None:
        return None
    w = sampler.weights(state.sampler_state) if state.sampler_state is not None else sampler.weights()
    p = w / jnp.sum(w)
    return (1.0 / (w.shape[0] * p[t])).astype(dtype)


def train_step_core(run_config: RunConfig, state: TrainState, batch, t, noise, *, label_drop=None):
    """One optimiser update from the given ``t`` ``[B]`` and ``noise`` (x's shape).

    ``batch`` is x, or ``(x, y)`` for a class-conditional model; ``label_drop`` (bool
    ``[B]``) the label-dropout mask (default: ``draw_label_drop`` from
    ``fold_in(state.rng, state.step)``; unused without label dropout).

    Gradients of the batch-mean loss w.r.t. ``state.params`` (averaged over micro-batches
    when ``training.microbatch`` is set), the optax update, EMA per rate (warm-up on the
    post-increment count when ``model.ema_warmup``), the sampler history. Pure; returns
    ``(state, metrics)`` with metrics ``loss`` (batch mean), ``grad_norm`` (before clipping)
    and ``lr`` (of this update).
    """
    run_config = _check_run_config(run_config)
    tc, ema_cfg = run_config.train.training, run_config.train.model
    model = state.model if state.model is not None else registry.create_model(run_config.model)
    x, y = _split_batch(batch)
    x = jnp.asarray(x)
    y = _labels(run_config, state, batch, y, label_drop)
    B = x.shape[0]
    if tc.microbatch > 0 and B % tc.microbatch:
        raise ValueError(f"batch of {B} examples cannot be split into micro-batches of "
                         f"{tc.microbatch}")
    M = B // tc.microbatch if tc.microbatch > 0 else 1
    loss_fn = make_loss_fn(run_config)
    weights = _importance_weights(run_config, state, t, x.dtype)
    step_key = jax.random.fold_in(state.rng, state.step)
    drop_key = jax.random.fold_in(step_key, _DROPOUT_INDEX)
    dropout = getattr(run_config.model, "dropout", 0.0) > 0

    def micro(params, j, xs, ts, zs, ws, ys):
        variables = {"params": params, **state.constants}
        rng = jax.random.fold_in(drop_key, j) if dropout else None
        return loss_fn(model, variables, xs, ts, zs, ws, rng, y=ys)

    grad_fn = jax.value_and_grad(micro, has_aux=True)
    if M == 1:
        (loss, losses), grads = grad_fn(state.params, 0, x, t, noise, weights, y)
    else:
        split = lambda a: None if a is None else a.reshape((M, B // M) + a.shape[1:])  # noqa: E731
        xs, ts, zs, ws, ys = split(x), split(t), split(noise), split(weights), split(y)

        def body(acc, item):
            j, xj, tj, zj = item[:4]
            wj = item[4] if ws is not None else None
            yj = item[-1] if ys is not None else None
            (lj, lsj), gj = grad_fn(state.params, j, xj, tj, zj, wj, yj)
            acc = jax.tree_util.tree_map(jnp.add, acc, gj)
            return acc, (lj, lsj)

        zero = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        items = ((jnp.arange(M), xs, ts, zs) + ((ws,) if ws is not None else ())
                 + ((ys,) if ys is not None else ()))
        grads, (lm, lsm) = jax.lax.scan(body, zero, items)
        grads = jax.tree_util.tree_map(lambda g: g / M, grads)
        loss, losses = jnp.mean(lm), lsm.reshape((B,))
    grad_norm = optax.tree.norm(grads)
    tx = get_optimizer(run_config.train)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    n = state.step + 1
    ema = tuple(ema_update(e, params, rate=r, num_updates=n if ema_cfg.ema_warmup else None)
                for e, r in zip(state.ema, ema_cfg.ema_rate))
    sampler_state = state.sampler_state
    sampler = _sampler(run_config)
    if sampler is not None and sampler_state is not None:
        sampler_state = sampler.update(sampler_state, t, jax.lax.stop_gradient(losses))
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "lr": learning_rate_fn(run_config.train)(state.step)}
    new = state.replace(step=n, params=params, opt_state=opt_state, ema=ema,
                        sampler_state=sampler_state)
    return new, metrics


def make_train_step(run_config: RunConfig, *, donate: bool = True, steps_per_call: int = 1):
    """A jitted ``step(state, batch, rng=None) -> (state, metrics)``.

    ``rng`` (default ``state.rng``) is the base key: the step's data key is
    ``fold_in(rng, state.step)``, example ``i`` draws from ``fold_in(data_key, i)``
    (``draw_randomness``; its label dropout ``draw_label_drop``). ``batch`` is x, or
    ``(x, y)`` for a class-conditional model (checked before compilation: y integer
    ``[B]`` in ``[0, num_classes)``). With ``steps_per_call = S > 1`` the batch is a stack ``[S, B, ...]``
    run by ``lax.scan`` and the metrics are ``[S]``. ``donate=True`` donates the state's
    buffers (do not reuse the state passed in).
    """
    run_config = _check_run_config(run_config)
    if isinstance(steps_per_call, bool) or not isinstance(steps_per_call, int) or steps_per_call < 1:
        raise ValueError(f"steps_per_call must be an int >= 1, got {steps_per_call!r}")
    if not isinstance(donate, bool):
        raise TypeError(f"donate must be a bool, got {type(donate).__name__}")

    def one_step(state, batch, base):
        key = jax.random.fold_in(state.rng if base is None else base, state.step)
        t, noise = draw_randomness(key, run_config, state, batch)
        drop = draw_label_drop(key, run_config, state, batch) if labelled and dropping else None
        return train_step_core(run_config, state, batch, t, noise, label_drop=drop)

    def run(state, batch, base):
        if steps_per_call == 1:
            return one_step(state, batch, base)
        return jax.lax.scan(lambda s, b: one_step(s, b, base), state, batch)

    K = num_classes(run_config.model)
    labelled, dropping = K > 0, run_config.train.training.label_dropout > 0
    jitted = jax.jit(run, donate_argnums=(0,) if donate else ())
    mb = run_config.train.training.microbatch

    def step(state, batch, rng=None):
        if not isinstance(state, TrainState):
            raise TypeError(f"state must be a TrainState (create_train_state), got {type(state).__name__}")
        x, y = _split_batch(batch)
        x = check_array("batch", x, finite=False, min_ndim=2 if steps_per_call > 1 else 1)
        if steps_per_call > 1 and x.shape[0] != steps_per_call:
            raise ValueError(f"batch must stack steps_per_call={steps_per_call} batches "
                             f"[S, B, ...], got shape {x.shape}")
        b = x.shape[1] if steps_per_call > 1 else x.shape[0]
        if mb > 0 and b % mb:
            raise ValueError(f"batch of {b} examples is not a multiple of training.microbatch={mb}")
        y = _check_labels(y, K, x.shape[:2] if steps_per_call > 1 else x.shape[:1])
        return jitted(state, _join_batch(x, y), None if rng is None else _key_data(rng))

    return step


def _check_labels(y, K: int, shape):
    """The batch's labels: None for an unconditional model (which refuses them), else int32
    ``[*shape]`` in ``[0, K)`` (checked when concrete)."""
    if K == 0:
        if y is not None:
            raise ValueError("batch: the model is unconditional (num_classes=0); pass x alone, "
                             "not (x, y)")
        return None
    if y is None:
        raise ValueError(_NEED_Y.format(k=K))
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"batch: the labels y must be integers, got dtype {y.dtype}")
    if tuple(y.shape) != tuple(shape):
        raise ValueError(f"batch: the labels y must have shape {list(shape)} (one per example), "
                         f"got {list(y.shape)}")
    if is_concrete(y) and y.size:
        lo, hi = int(np.min(np.asarray(y))), int(np.max(np.asarray(y)))
        if lo < 0 or hi >= K:
            raise ValueError(f"batch: the labels y must lie in [0, num_classes={K}), got values "
                             f"in [{lo}, {hi}]")
    return y.astype(jnp.int32)


def train(config, workdir, **kwargs):
    """The training loop (``jax_impl.loop.train``): progress bar, JSON-lines log,
    checkpoints and resume in ``workdir``; see that module."""
    from jax_impl.loop import train as _train

    return _train(config, workdir, **kwargs)
