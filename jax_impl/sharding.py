"""Scale-out within a process: a ``jax.sharding`` Mesh, the batch sharded along its data axis.

One-sided module: JAX only, with no ``torch_ref`` twin. It places arrays on the devices of a
``jax.sharding.Mesh`` (``jax.Array`` shardings, ``jax.make_array_from_process_local_data``,
``multihost_utils.process_allgather``), concepts the torch reference does not have: it runs
on one device and keeps its numbers device-count independent by construction.

Nothing here changes an algorithm. The train step (``jax_impl.train``) and every sampler
draw their randomness per example / per sample (example ``i`` of a step from
``fold_in(step_key, i)``, sample ``j`` of sampler step ``i`` from
``fold_in(fold_in(step_key, i), j)``, see ``per_sample_normal``), so the numbers drawn do
not depend on how the batch is split; batch-coupled quantities (the batch-mean loss, the
Langevin corrector's batch-averaged norms) are plain means inside one jitted program, which
XLA computes over the GLOBAL batch (an all-reduce across devices and processes). Results on
D devices therefore equal results on 1 device up to the float32 reduction order.

The mesh has two axes, ``(DATA_AXIS, MODEL_AXIS)`` = ``("data", "model")``, shape
``[num_devices // model_parallel, model_parallel]``:

* ``DATA_AXIS``: the batch's leading dimension is split over it (``batch_sharding``); the
  global batch size must be divisible by its size (``check_divisible``).
* ``MODEL_AXIS``: optional parameter sharding for large models (``shard_train_state(...,
  shard_params=True)`` splits every params / opt_state / EMA leaf of at least
  ``SHARD_MIN_SIZE`` elements along one dimension divisible by the axis size); size 1 (the
  default) means everything is replicated.

Processes (``jax.distributed``) are transparent: ``jax.devices()`` lists the devices of all
processes, ``shard_batch`` takes each process's own rows of the global batch (row order =
process order), ``to_host`` gathers a global array to numpy on every process.

Typical use::

    configure_host_devices(8)                  # CPU only, before any JAX computation
    mesh = make_mesh()                         # all devices on the data axis
    state = shard_train_state(create_train_state(key, run_config), mesh)
    step = make_sharded_train_step(run_config, mesh)
    state, metrics = step(state, batch)        # batch: this process's rows (numpy)
    sample = shard_sampler(lambda rng: pc_sample(rng, sde, score_fn, (B, 2)), mesh)
    x, nfe = sample(jax.random.key(0))         # x: [B, 2], sharded along "data"
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "SHARD_MIN_SIZE",
    "batch_sharding",
    "check_divisible",
    "configure_host_devices",
    "make_mesh",
    "make_sharded_train_step",
    "per_sample_normal",
    "per_sample_random",
    "replicate",
    "replicated_sharding",
    "shard_batch",
    "shard_sampler",
    "shard_train_state",
    "state_shardings",
    "to_host",
]

#: the mesh axis the batch is split over
DATA_AXIS = "data"
#: the mesh axis large parameters are split over (``shard_params=True``)
MODEL_AXIS = "model"
#: a params / opt_state / EMA leaf with fewer elements stays replicated under shard_params
SHARD_MIN_SIZE = 1024

# set while ``shard_sampler`` traces a sampler: per_sample_normal then constrains its draws
# to the batch sharding, so the sampler's state is split over the data axis from the start
_TRACE_BATCH_SHARDING: contextvars.ContextVar = contextvars.ContextVar(
    "scorediff_batch_sharding", default=None)


# ------------------------------------------------------------------------ devices


def _backends_started() -> bool | None:
    """True / False when JAX tells whether its backends are initialised, None if unknown."""
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # noqa: BLE001 -- a private API; fall back to trying the update
        return None


def configure_host_devices(n="auto") -> int:
    """Split the CPU host into ``n`` XLA devices; returns ``n``.

    Call it before JAX's backend starts (before any JAX computation, ``jax.devices()``
    included). ``n`` is an int >= 1 or ``"auto"`` (``os.cpu_count()``). It sets the
    ``jax_num_cpu_devices`` config option, which overrides
    ``XLA_FLAGS=--xla_force_host_platform_device_count``. It only affects the CPU platform
    (a GPU / TPU keeps its devices). When the backend has already started, the call is a
    no-op if the CPU platform already has ``n`` devices and raises RuntimeError otherwise.
    With ``n > 1`` it also removes ``jax_impl.xla_cpu``'s convolution flag from ``XLA_FLAGS``
    (XLA's own convolutions were nondeterministic on a split host; YNNPACK's, JAX's default,
    are not: see ``jax_impl/xla_cpu.py``).
    """
    if n == "auto":
        n = os.cpu_count() or 1
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 1:
        raise ValueError(f"n must be an int >= 1 or 'auto', got {n!r}")
    n = int(n)
    started = _backends_started()
    if started:
        try:
            have = len(jax.devices("cpu"))
        except RuntimeError:
            have = None
        if have == n:
            return n
        raise RuntimeError(
            f"configure_host_devices(n={n}): JAX's backend has already started with {have} CPU "
            f"devices; call it before any JAX computation (e.g. first thing in main()), or set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before starting Python")
    try:
        jax.config.update("jax_num_cpu_devices", n)
        if n > 1:
            from jax_impl import xla_cpu

            xla_cpu.drop_cpu_flag()
    except RuntimeError as err:  # started after all (the private probe was unavailable)
        raise RuntimeError(
            f"configure_host_devices(n={n}): JAX's backend has already started; call it before "
            f"any JAX computation") from err
    return n


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def make_mesh(num_devices=None, *, model_parallel=1, devices=None) -> Mesh:
    """A ``Mesh`` with axes ``(DATA_AXIS, MODEL_AXIS)`` of shape
    ``[num_devices // model_parallel, model_parallel]``.

    Args:
      num_devices: how many devices to use (default: all of ``devices``); the first
        ``num_devices`` of them.
      model_parallel: the size of ``MODEL_AXIS`` (must divide ``num_devices``); 1 = pure
        data parallelism.
      devices: the devices (default ``jax.devices()``: every device of every process).
        With several processes the mesh must hold every process's devices.
    Raises:
      ValueError naming ``num_devices`` / ``model_parallel`` / ``devices``.
    """
    if devices is None:
        devices = jax.devices()
    else:
        devices = list(np.asarray(devices, dtype=object).reshape(-1))
        if not devices or not all(isinstance(d, jax.Device) for d in devices):
            raise ValueError(f"devices must be a non-empty sequence of jax devices, got {devices!r}")
        if len({d.id for d in devices}) != len(devices):
            raise ValueError("devices lists a device more than once")
    n = len(devices) if num_devices is None else _check_positive_int("num_devices", num_devices)
    if n > len(devices):
        raise ValueError(f"num_devices={n} but only {len(devices)} devices are available "
                         f"(on CPU, configure_host_devices({n}) before JAX starts)")
    mp = _check_positive_int("model_parallel", model_parallel)
    if n % mp:
        raise ValueError(f"model_parallel={mp} must divide num_devices={n}")
    chosen = list(devices[:n])
    if jax.process_count() > 1:
        missing = sorted({d.process_index for d in jax.devices()} - {d.process_index for d in chosen})
        if missing:
            raise ValueError(f"num_devices={n}: the mesh leaves out every device of process(es) "
                             f"{missing}; with several processes use all devices (or some of each)")
    return Mesh(np.asarray(chosen, dtype=object).reshape(n // mp, mp), (DATA_AXIS, MODEL_AXIS))


def _check_mesh(mesh) -> Mesh:
    if not isinstance(mesh, Mesh) or DATA_AXIS not in mesh.shape:
        raise TypeError(f"mesh must be a jax.sharding.Mesh with a {DATA_AXIS!r} axis (make_mesh), "
                        f"got {type(mesh).__name__}")
    return mesh


def batch_sharding(mesh) -> NamedSharding:
    """Leading dimension split along ``DATA_AXIS``, the rest replicated (``P("data")``)."""
    return NamedSharding(_check_mesh(mesh), P(DATA_AXIS))


def replicated_sharding(mesh) -> NamedSharding:
    """A full copy on every device of ``mesh`` (``P()``)."""
    return NamedSharding(_check_mesh(mesh), P())


def check_divisible(batch_size, mesh, name: str = "batch_size") -> int:
    """``batch_size`` (the GLOBAL batch) as an int; ValueError naming ``name`` unless it is
    an int >= 1 divisible by the size of the mesh's ``DATA_AXIS`` (and by the number of
    processes, which each hold an equal share of the rows)."""
    d = _check_mesh(mesh).shape[DATA_AXIS]
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{name} must be an int >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    if batch_size % d:
        raise ValueError(f"{name}={batch_size} is not divisible by the {d} devices of the mesh's "
                         f"{DATA_AXIS!r} axis (the global batch is split evenly over them)")
    procs = len({dev.process_index for dev in mesh.devices.flat})
    if batch_size % procs:
        raise ValueError(f"{name}={batch_size} is not divisible by the {procs} processes")
    return batch_size


# ----------------------------------------------------------------------- placing


def _mesh_processes(mesh) -> int:
    return len({dev.process_index for dev in mesh.devices.flat})


def shard_batch(batch, mesh):
    """A pytree of PROCESS-LOCAL rows -> global ``jax.Array`` s sharded along ``DATA_AXIS``.

    Every leaf has this process's rows ``[B_local, ...]`` (1 process: the whole batch
    ``[B, ...]``); the result has the global shape ``[B_local * num_processes, ...]``, the
    processes' rows concatenated in process order (``jax.make_array_from_process_local_data``).
    Works for ``x`` and for ``(x, y)``. A leaf that is already a global array (not fully
    addressable, or already sharded like this) is resharded / passed through. ValueError
    naming ``batch_size`` when the global batch does not divide over the data axis, or
    ``batch`` when the leaves disagree on the batch size.
    """
    sharding = batch_sharding(mesh)
    procs = _mesh_processes(mesh)
    leaves, treedef = jax.tree_util.tree_flatten(batch)
    if not leaves:
        raise ValueError("batch has no arrays")
    sizes = set()
    out = []
    for leaf in leaves:
        if isinstance(leaf, jax.Array) and (not leaf.is_fully_addressable or leaf.sharding == sharding):
            if leaf.ndim < 1:
                raise ValueError(f"batch leaves need a leading batch dimension, got shape {leaf.shape}")
            sizes.add(leaf.shape[0])
            check_divisible(leaf.shape[0], mesh, "batch_size")
            out.append(leaf if leaf.sharding == sharding else jax.device_put(leaf, sharding))
            continue
        local = leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)
        if local.ndim < 1:
            raise ValueError(f"batch leaves need a leading batch dimension, got shape {local.shape}")
        global_rows = local.shape[0] * procs
        sizes.add(global_rows)
        check_divisible(global_rows, mesh, "batch_size")
        out.append(jax.make_array_from_process_local_data(
            sharding, local, (global_rows,) + tuple(local.shape[1:])))
    if len(sizes) > 1:
        raise ValueError(f"batch leaves disagree on the batch size: {sorted(sizes)}")
    return jax.tree_util.tree_unflatten(treedef, out)


def _place(tree, shardings):
    """Each leaf of ``tree`` on its sharding (a matching tree of ``NamedSharding``).

    Single process: ``jax.device_put``. Several processes: host values (the same on every
    process) are assembled with ``jax.make_array_from_callback``; global arrays resharded."""
    single = jax.process_count() == 1

    def one(leaf, s):
        if isinstance(leaf, jax.Array) and leaf.sharding == s:
            return leaf
        if single or (isinstance(leaf, jax.Array) and not leaf.is_fully_addressable):
            return jax.device_put(leaf, s)
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

    return jax.tree_util.tree_map(one, tree, shardings)


def replicate(tree, mesh):
    """Every leaf of ``tree`` (arrays of any shape) fully copied to every device of ``mesh``."""
    rep = replicated_sharding(mesh)
    return _place(tree, jax.tree_util.tree_map(lambda _: rep, tree))


def _param_spec(leaf, model_size: int) -> P:
    """``P()`` or MODEL_AXIS on the largest dimension divisible by ``model_size``."""
    shape = tuple(getattr(leaf, "shape", ()))
    if model_size <= 1 or int(np.prod(shape, dtype=np.int64)) < SHARD_MIN_SIZE:
        return P()
    dims = [i for i, s in enumerate(shape) if s % model_size == 0]
    if not dims:
        return P()
    best = max(dims, key=lambda i: (shape[i], i))  # largest, ties to the last dimension
    return P(*([None] * best + [MODEL_AXIS]))


def state_shardings(state, mesh, *, shard_params=False):
    """The ``NamedSharding`` tree ``shard_train_state`` places ``state`` with: everything
    replicated, or with ``shard_params`` every params / opt_state / EMA leaf of at least
    ``SHARD_MIN_SIZE`` elements split along ``MODEL_AXIS`` on its largest dimension that
    the axis size divides (the optimiser's moments shard like their parameters)."""
    mesh = _check_mesh(mesh)
    rep = replicated_sharding(mesh)
    if not isinstance(shard_params, bool):
        raise TypeError(f"shard_params must be a bool, got {type(shard_params).__name__}")
    shardings = jax.tree_util.tree_map(lambda _: rep, state)
    if not shard_params:
        return shardings
    m = mesh.shape.get(MODEL_AXIS, 1)
    split = lambda tree: jax.tree_util.tree_map(  # noqa: E731
        lambda a: NamedSharding(mesh, _param_spec(a, m)), tree)
    return shardings.replace(params=split(state.params), opt_state=split(state.opt_state),
                             ema=split(state.ema))


def _check_state(state):
    from jax_impl.train import TrainState

    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a TrainState (create_train_state), got {type(state).__name__}")
    return state


def shard_train_state(state, mesh, *, shard_params=False):
    """``state`` (a ``train.TrainState``) placed on ``mesh``: every leaf replicated, or with
    ``shard_params`` the large params / opt_state / EMA leaves split along ``MODEL_AXIS``
    (``state_shardings``). The values are unchanged; ``to_host`` reads them back."""
    state = _check_state(state)
    return _place(state, state_shardings(state, mesh, shard_params=shard_params))


def to_host(x):
    """A pytree of (global) arrays -> numpy arrays holding the full values, on every process
    (``multihost_utils.process_allgather`` for arrays spread over processes)."""

    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree_util.tree_map(one, x)


# ----------------------------------------------------------------------- training


def make_sharded_train_step(run_config, mesh, *, shard_params=False):
    """``step(state, batch, rng=None) -> (state, metrics)``: ``train.make_train_step``'s
    update, jitted with the state on ``state_shardings`` and the batch sharded along
    ``DATA_AXIS`` (metrics replicated).

    The update is the same function (``train.draw_randomness`` + ``train.train_step_core``):
    example ``i`` of the GLOBAL batch draws t / noise from ``fold_in(step_key, i)``, the loss
    is the mean over the global batch, dropout masks come from the step's one dropout key
    (jax's partitionable threefry makes them independent of the sharding). ``batch`` is
    ``x`` or ``(x, y)``: process-local rows (numpy or jax; see ``shard_batch``) or global
    arrays already sharded. ``state`` may be unplaced (one process) or from
    ``shard_train_state``; its buffers are donated (do not reuse the state passed in).
    ``step.lower(state, batch, rng=None)`` lowers it ahead of time (``.compile()``).
    ValueError naming ``batch_size`` when the global batch does not divide over the data axis.
    """
    from jax_impl import train as _train

    run_config = _train._check_run_config(run_config)
    mesh = _check_mesh(mesh)
    if not isinstance(shard_params, bool):
        raise TypeError(f"shard_params must be a bool, got {type(shard_params).__name__}")
    mb = run_config.train.training.microbatch
    rep = replicated_sharding(mesh)
    bsh = batch_sharding(mesh)

    def one_step(state, batch, base=None):
        key = jax.random.fold_in(state.rng if base is None else base, state.step)
        t, noise = _train.draw_randomness(key, run_config, state, batch)
        # the label-dropout mask from the same step key as t and the noise (as make_train_step)
        label_drop = _train.draw_label_drop(key, run_config, state, batch)
        return _train.train_step_core(run_config, state, batch, t, noise, label_drop=label_drop)

    cache: dict = {}

    def compiled(state, batch, with_rng: bool):
        sig = (jax.tree_util.tree_structure(state), jax.tree_util.tree_structure(batch), with_rng)
        if sig not in cache:
            sh = state_shardings(state, mesh, shard_params=shard_params)
            ins = (sh, jax.tree_util.tree_map(lambda _: bsh, batch)) + ((rep,) if with_rng else ())
            cache[sig] = (sh, jax.jit(one_step, in_shardings=ins, out_shardings=(sh, rep),
                                      donate_argnums=(0,)))
        return cache[sig]

    def prepare(state, batch, rng):
        state = _check_state(state)
        batch = shard_batch(batch, mesh)
        b = jax.tree_util.tree_leaves(batch)[0].shape[0]
        if mb > 0 and b % mb:
            raise ValueError(f"batch of {b} examples is not a multiple of training.microbatch={mb}")
        sh, fn = compiled(state, batch, rng is not None)
        args = (_place(state, sh), batch) + (() if rng is None else (_place(_train._key_data(rng), rep),))
        return fn, args

    def step(state, batch, rng=None):
        fn, args = prepare(state, batch, rng)
        return fn(*args)

    def lower(state, batch, rng=None):
        """``jax.stages.Lowered`` of the update for these arguments (``.compile()`` it ahead
        of time; the compiled step takes the placed ``state``, the sharded batch (``rng``))."""
        fn, args = prepare(state, batch, rng)
        return fn.lower(*args)

    step.lower = lower
    return step


# ----------------------------------------------------------------------- sampling


def per_sample_random(draw, key, shape, dtype=jnp.float32, *, offset=0) -> jax.Array:
    """``shape = [B, ...]`` whose row ``j`` is ``draw(fold_in(key, offset + j), shape[1:],
    dtype)``, for any ``jax.random`` draw of that signature (``normal``, ``uniform``,
    ``rademacher``): a sample's numbers depend only on ``key`` and its global index
    ``offset + j``, not on ``B``, the other rows, or how the rows are sharded (each device
    computes its own rows). ``offset`` may be a traced int. Under ``shard_sampler`` the
    result is constrained to the batch sharding."""
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise ValueError("shape must have a leading batch dimension, got ()")
    idx = jnp.arange(shape[0], dtype=jnp.uint32) + jnp.asarray(offset).astype(jnp.uint32)
    out = jax.vmap(lambda i: draw(jax.random.fold_in(key, i), shape[1:], dtype))(idx)
    sharding = _TRACE_BATCH_SHARDING.get()
    if sharding is not None and shape[0] % sharding.mesh.shape[DATA_AXIS] == 0:
        out = jax.lax.with_sharding_constraint(out, sharding)
    return out


def per_sample_normal(key, shape, dtype=jnp.float32, *, offset=0) -> jax.Array:
    """Standard normal ``shape = [B, ...]`` whose row ``j`` is
    ``jax.random.normal(fold_in(key, offset + j), shape[1:], dtype)``.

    Row ``j`` depends only on ``key`` and the global sample index ``offset + j``: not on
    ``B``, on the other rows, nor on how the rows are sharded over devices or processes
    (``per_sample_random``). ``offset`` may be a traced int.
    """
    return per_sample_random(jax.random.normal, key, shape, dtype, offset=offset)


@contextlib.contextmanager
def _batch_constraint(sharding):
    token = _TRACE_BATCH_SHARDING.set(sharding)
    try:
        yield
    finally:
        _TRACE_BATCH_SHARDING.reset(token)


def shard_sampler(sampler_fn: Callable[..., Any], mesh, *, batch_size=None) -> Callable[..., Any]:
    """``sampler_fn`` jitted for ``mesh``: its batch inputs and outputs sharded along
    ``DATA_AXIS``.

    ``sampler_fn`` is a driver ``fn(rng, *args, **kwargs)`` returning samples, or a tuple
    such as ``(samples, nfe)``; close over the static parts (SDE / diffusion, score or
    model function, shape, options) and pass what varies (the key, network variables
    placed with ``replicate``, pre-drawn ``x_T`` / ``noise``) as arguments::

        pc   = shard_sampler(lambda rng, v: pc_sample(rng, sde, score(v), (B, *S)), mesh)
        ddpm = shard_sampler(lambda rng, v: ddpm_sample(rng, diffusion, model(v), (B, *S)), mesh)
        ddim = shard_sampler(lambda rng, v: ddim_sample(rng, diffusion, model(v), (B, *S),
                                                        eta=0.0), mesh)
        ode  = shard_sampler(lambda rng, v: ode_sample(rng, sde, score(v), (B, *S),
                                                       method="rk4", num_steps=50), mesh)
        ald  = shard_sampler(lambda rng, v: ald_sample(rng, sigmas, score(v), (B, *S)), mesh)
        edm  = shard_sampler(lambda rng, v: edm_heun_sample(rng, sde, score(v), (B, *S)), mesh)
        inp  = shard_sampler(lambda rng, v, data, mask: pc_inpaint(rng, sde, score(v), data,
                                                                   mask), mesh)
        x, nfe = pc(jax.random.key(0), replicate(variables, mesh))
        given = shard_sampler(lambda rng, v, **kw: ddpm_sample(rng, diffusion, model(v),
                                                               (B, *S), **kw), mesh)
        x, nfe = given(None, v, x_T=x_T, noise=noise)  # pre-drawn, constrained to the data axis

    (``likelihood`` / ``bits_per_dim`` work the same way with ``x`` as a batch argument
    placed by ``shard_batch``.) The returned ``fn(rng, *args, **kwargs)``:

    * is jitted (positional ``args`` after ``rng`` are traced; pass static settings through
      the closure, not as arguments);
    * constrains the keyword batch inputs to the batch sharding: ``x_T [B, ...]`` on its
      leading dimension and, when ``x_T`` is given, every leaf of ``noise`` (an array or a
      dict of ``[*lead, B, ...]`` arrays with x_T's sample dimensions last, e.g. PC's
      ``[N, n_steps, B, ...]``) on its batch dimension (without ``x_T`` the noise keeps
      the placement XLA propagates: the values are the same either way);
    * while tracing, makes ``per_sample_normal`` (every sampler's default prior and step
      noise) produce batch-sharded draws, so the sampler's state is split from step 0;
    * returns every output leaf whose leading dimension is the batch size (``batch_size``,
      default the leading dimension of the first output leaf with one) sharded along
      ``DATA_AXIS`` and the other leaves (``nfe``, scalars) replicated.

    The samples equal ``sampler_fn``'s on one device for the same ``rng`` (to the float32
    reduction order): the default noise is per sample and the Langevin step size's norms
    are averaged over the global batch. ValueError naming ``batch_size`` (when the program
    is traced, before compilation) if it does not divide over the data axis.
    """
    if not callable(sampler_fn):
        raise TypeError(f"sampler_fn must be callable, got {type(sampler_fn).__name__}")
    mesh = _check_mesh(mesh)
    if batch_size is not None:
        batch_size = check_divisible(batch_size, mesh)
    bsh, rep = batch_sharding(mesh), replicated_sharding(mesh)

    def constrain(a, axis: int):
        """``a`` split along DATA_AXIS on its batch ``axis``."""
        check_divisible(a.shape[axis], mesh, "batch_size")
        return jax.lax.with_sharding_constraint(
            a, NamedSharding(mesh, P(*([None] * axis), DATA_AXIS)))

    def traced(rng, *args, **kwargs):
        x_T = kwargs.get("x_T")
        if x_T is not None:
            x_T = kwargs["x_T"] = constrain(jnp.asarray(x_T), 0) if jnp.ndim(x_T) >= 1 else x_T
        if kwargs.get("noise") is not None and x_T is not None and jnp.ndim(x_T) >= 1:
            # a noise leaf is [*lead, B, ...] with x_T's sample dims last
            kwargs["noise"] = jax.tree_util.tree_map(
                lambda z: (constrain(jnp.asarray(z), jnp.ndim(z) - jnp.ndim(x_T))
                           if jnp.ndim(z) >= jnp.ndim(x_T) else z), kwargs["noise"])
        with _batch_constraint(bsh):
            out = sampler_fn(rng, *args, **kwargs)
        leaves, treedef = jax.tree_util.tree_flatten(out)
        b = batch_size
        if b is None:
            b = next((leaf.shape[0] for leaf in leaves if jnp.ndim(leaf) >= 1), None)
        if b is not None:
            check_divisible(b, mesh, "batch_size")
        placed = [jax.lax.with_sharding_constraint(
            leaf, bsh if jnp.ndim(leaf) >= 1 and jnp.shape(leaf)[0] == b else rep) for leaf in leaves]
        return jax.tree_util.tree_unflatten(treedef, placed)

    jitted = jax.jit(traced)

    @functools.wraps(sampler_fn)
    def fn(rng, *args, **kwargs):
        return jitted(rng, *args, **kwargs)

    return fn
