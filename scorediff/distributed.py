"""Processes for the command line: ``jax.distributed`` start-up and the host-device split.

``scorediff train|sample ... --coordinator HOST:PORT --num-processes N --process-id I
[--init-timeout SECONDS]`` runs one process of an N-process job (one per host, or several
on one host): every process runs the same command with its own ``--process-id``, and
:func:`initialize` calls ``jax.distributed.initialize`` before any JAX computation, so
``jax.devices()`` lists the devices of all processes and the training loop / the sampler
run one program over all of them (``jax_impl.sharding``). ``--coordinator auto`` leaves
the addresses to jax.distributed's cluster auto-detection (Cloud TPU pod slices, SLURM,
...; ``--num-processes`` / ``--process-id`` are then optional). Without ``--coordinator``
the command runs as one process, as always.

What is checked, and when (every failure is one ``UsageError`` line, exit status 2):

* before anything starts: ``--num-processes`` >= 1, ``--process-id`` in ``0..N-1``,
  ``--coordinator`` of the form ``HOST:PORT`` (IPv6 as ``[ADDR]:PORT``, port 1..65535),
  ``--init-timeout`` > 0, the flags given together;
* while connecting: a coordinator that never answers (or processes that never join) ends
  the process after ``--init-timeout`` seconds with ``scorediff <command>: error: ...``
  (jax's own timeout is set a few seconds later, so the runtime never aborts first and no
  process hangs).

On CPU the processes exchange data through gloo (``jax_cpu_collectives_implementation``),
so the whole multi-process path runs on one machine: ``SCOREDIFF_HOST_DEVICES=2`` and two
processes on localhost give one 4-device mesh.

``SCOREDIFF_HOST_DEVICES`` (environment; "1" = no split, an int >= 1, or "auto" = one
device per CPU core): :func:`configure_host_devices` splits the CPU host into that many
XLA devices at start-up (``jax_impl.sharding.configure_host_devices``); it affects the CPU
platform only and must run before JAX starts. "1" leaves JAX's own setting (``XLA_FLAGS``)
alone.

When the variable is unset the command chooses (``default=`` of :func:`configure_host_devices`,
computed by ``scorediff.cli``): a single-process ``sample`` or ``evaluate`` of an MLP (or
of a conv net where oneDNN's kernels cannot run, ``jax_impl.onednn.expected()``) splits the
host into :func:`default_host_devices` devices, the largest count <= the usable cores that
divides the batch; a conv net with oneDNN and ``train`` stay on one device. Measured on 2
cores (2026-12-04, ``benchmarks/results/cpu-20261204T040541Z.json`` and
``scaleout-cpu-2026-12-04-late.md``): a split host gives up oneDNN's convolutions and dense
products and the C++ GroupNorm (a custom call does not follow a sharding), and the conv-net
samplers ran 1-10% faster on one device in every configuration, the digits U-Net 0.98x
split; the MLP's samplers still gain (batch 64 Euler-Maruyama 1.4x, the digits MLP 1.04x);
split training steps ran 0.5-0.8x. Results equal the one-device run's to float32 reduction
order (per-sample noise, global batch statistics). A backend that has already started (the
CLI called in-process after JAX ran) keeps its devices without an error.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import threading

__all__ = [
    "DEFAULT_HOST_DEVICES",
    "DEFAULT_INIT_TIMEOUT",
    "HOST_DEVICES_ENV",
    "LaunchSpec",
    "add_launch_flags",
    "all_agree",
    "configure_host_devices",
    "default_host_devices",
    "initialize",
    "is_primary",
    "launch_spec",
    "parse_coordinator",
    "usable_cores",
]

#: the environment variable of the host-device split
HOST_DEVICES_ENV = "SCOREDIFF_HOST_DEVICES"
#: the split when the variable is unset and the command gives no ``default=`` ("1": none)
DEFAULT_HOST_DEVICES = "1"
#: seconds a process waits for the coordinator / the other processes (``--init-timeout``)
DEFAULT_INIT_TIMEOUT = 300.0
#: jax's own initialization_timeout is ours plus this, so our one-line error comes first
_JAX_TIMEOUT_MARGIN_S = 5


class LaunchError(ValueError):
    """Bad launch flags or a failed start-up (the command line prints it as one line)."""


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
    """The validated process flags: ``coordinator`` is ``"HOST:PORT"``, ``"auto"`` or None
    (one process, no jax.distributed); ``num_processes`` / ``process_id`` None only with
    ``"auto"`` (detected) or without a coordinator; ``init_timeout`` in seconds."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    init_timeout: float = DEFAULT_INIT_TIMEOUT

    @property
    def distributed(self) -> bool:
        return self.coordinator is not None


def add_launch_flags(parser) -> None:
    """Add ``--coordinator``, ``--num-processes``, ``--process-id``, ``--init-timeout`` to an
    argparse (sub)parser."""
    g = parser.add_argument_group("processes (jax.distributed; see docs/scale-out.md)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="the address of process 0's coordinator (every process gives the same); "
                        "'auto': detect the cluster (Cloud TPU, SLURM). Default: one process")
    g.add_argument("--num-processes", dest="num_processes", type=int, metavar="N",
                   help="how many processes take part (with --coordinator)")
    g.add_argument("--process-id", dest="process_id", type=int, metavar="I",
                   help="this process's index, 0..N-1 (0 runs the coordinator)")
    g.add_argument("--init-timeout", dest="init_timeout", type=float, default=DEFAULT_INIT_TIMEOUT,
                   metavar="SECONDS", help=f"give up when the coordinator / the other processes do "
                                           f"not answer within this many seconds (default "
                                           f"{DEFAULT_INIT_TIMEOUT:g})")


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>[0-9]+)$")


def parse_coordinator(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (or ``"[IPv6]:PORT"``) -> ``(host, port)``; LaunchError naming
    ``--coordinator`` otherwise."""
    if not isinstance(address, str):
        raise LaunchError(f"--coordinator must be HOST:PORT, got {address!r}")
    m = _HOST_PORT.match(address.strip())
    if m is None:
        raise LaunchError(f"--coordinator {address!r} is not of the form HOST:PORT (e.g. 10.0.0.1:1234, "
                          f"localhost:1234, [::1]:1234) or 'auto'")
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        raise LaunchError(f"--coordinator {address!r}: the port must be 1..65535, got {port}")
    return (m.group("v6") or m.group("host")), port


def launch_spec(coordinator=None, num_processes=None, process_id=None,
                init_timeout=DEFAULT_INIT_TIMEOUT) -> LaunchSpec:
    """Validate the process flags (before anything starts); returns a :class:`LaunchSpec`.

    Raises LaunchError naming the flag: ``--num-processes`` < 1, ``--process-id`` outside
    ``0..N-1``, a malformed ``--coordinator``, ``--init-timeout`` <= 0, or process flags
    without ``--coordinator`` (or a HOST:PORT coordinator without both of them).
    """
    for name, value in (("--num-processes", num_processes), ("--process-id", process_id)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise LaunchError(f"{name} must be an integer, got {value!r}")
    if isinstance(init_timeout, bool) or not isinstance(init_timeout, (int, float)) \
            or not math.isfinite(init_timeout) or init_timeout <= 0:
        raise LaunchError(f"--init-timeout must be a number of seconds > 0, got {init_timeout!r}")
    if num_processes is not None and num_processes < 1:
        raise LaunchError(f"--num-processes must be >= 1, got {num_processes}")
    if process_id is not None and process_id < 0:
        raise LaunchError(f"--process-id must be >= 0, got {process_id}")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise LaunchError(f"--process-id {process_id} is out of range for --num-processes {num_processes} "
                          f"(0..{num_processes - 1})")
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            given = [f for f, v in (("--num-processes", num_processes), ("--process-id", process_id))
                     if v is not None]
            raise LaunchError(f"{' and '.join(given)} need --coordinator HOST:PORT (or --coordinator auto)")
        return LaunchSpec(init_timeout=float(init_timeout))
    if coordinator != "auto":
        parse_coordinator(coordinator)
        missing = [f for f, v in (("--num-processes", num_processes), ("--process-id", process_id)) if v is None]
        if missing:
            raise LaunchError(f"--coordinator {coordinator} needs {' and '.join(missing)} (or use "
                              f"--coordinator auto on a detected cluster)")
    return LaunchSpec(coordinator, num_processes, process_id, float(init_timeout))


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where
    the platform has none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover -- macOS / Windows
        return os.cpu_count() or 1


def default_host_devices(batch: int, cores: int | None = None) -> int:
    """The host split chosen for a batch of ``batch`` examples on ``cores`` cores (default
    :func:`usable_cores`): the largest ``d <= cores`` dividing ``batch`` (1 = no split), so
    every device holds ``batch / d`` examples. E.g. batch 64 on 2 cores: 2; 359 on 2: 1."""
    from scorediff.sampling import shard_devices  # the same rule the sampler shards by

    return shard_devices(int(batch), usable_cores() if cores is None else int(cores))


def configure_host_devices(value: str | None = None, *, default: int | None = None) -> int | None:
    """Apply ``SCOREDIFF_HOST_DEVICES`` (or ``value``): "1" does nothing (JAX's default /
    ``XLA_FLAGS`` decide), an int n > 1 or "auto" splits the CPU host into n devices.
    Returns the count set, or None. LaunchError naming the variable for a bad value or a
    JAX that has already started.

    ``default``: the count to use when neither ``value`` nor the variable is given (the
    command's own choice, see the module docstring); applied quietly: if JAX has already
    started, or ``XLA_FLAGS`` already sets a host device count, nothing changes."""
    if value is None and HOST_DEVICES_ENV not in os.environ and default is not None:
        if int(default) <= 1 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
            return None
        from jax_impl import sharding

        try:
            return sharding.configure_host_devices(int(default))
        except (RuntimeError, ValueError):
            return None  # JAX already runs (an in-process call): keep its devices
    raw = os.environ.get(HOST_DEVICES_ENV, DEFAULT_HOST_DEVICES) if value is None else value
    text = str(raw).strip().lower()
    if text == "auto":
        n = "auto"
    else:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or n < 1:
            raise LaunchError(f"{HOST_DEVICES_ENV}={raw!r} must be 'auto' or an integer >= 1 "
                              f"(1 = one device per host)")
        if n == 1:
            return None
    from jax_impl import sharding

    try:
        return sharding.configure_host_devices(n)
    except (RuntimeError, ValueError) as e:
        raise LaunchError(f"{HOST_DEVICES_ENV}={raw!r}: {e}") from None


class _Watchdog:
    """Ends the process with one error line when start-up takes longer than ``seconds``
    (jax.distributed's own timeout aborts with a C++ stack trace, which we never reach)."""

    def __init__(self, seconds: float, message: str, prog: str):
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(seconds, message, prog), daemon=True)
        self._thread.start()

    def _run(self, seconds, message, prog):
        if not self._done.wait(seconds):
            try:
                sys.stdout.flush()
                print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
            finally:
                os._exit(2)

    def cancel(self) -> None:
        self._done.set()


def initialize(spec: LaunchSpec, *, prog: str = "scorediff") -> bool:
    """Start ``jax.distributed`` for ``spec`` (a no-op returning False without a coordinator).

    Sets gloo CPU collectives, then ``jax.distributed.initialize`` (addresses from ``spec``,
    or auto-detected for ``"auto"``) with a watchdog: if the coordinator or the other
    processes do not answer within ``spec.init_timeout`` seconds, prints ``{prog}: error:
    ...`` on stderr and exits with status 2. Must run before any JAX computation. Returns
    True once connected. LaunchError when ``"auto"`` finds no cluster or JAX has started.
    """
    if not spec.distributed:
        return False
    import jax

    try:
        from jax._src import xla_bridge
        started = bool(xla_bridge.backends_are_initialized())
    except Exception:  # noqa: BLE001 -- a private probe; initialize reports it anyway
        started = False
    if started:
        raise LaunchError("--coordinator: JAX has already started computing in this process; "
                          "jax.distributed must be initialised first")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = dict(initialization_timeout=int(math.ceil(spec.init_timeout)) + _JAX_TIMEOUT_MARGIN_S)
    if spec.coordinator == "auto":
        where = "the auto-detected coordinator"
        if spec.num_processes is not None:
            kwargs["num_processes"] = spec.num_processes
        if spec.process_id is not None:
            kwargs["process_id"] = spec.process_id
    else:
        where = f"the coordinator {spec.coordinator}"
        kwargs.update(coordinator_address=spec.coordinator, num_processes=spec.num_processes,
                      process_id=spec.process_id)
    if spec.process_id == 0:
        wait = (f"process 0 (the coordinator, {spec.coordinator}) waited {spec.init_timeout:g} s for the "
                f"other {spec.num_processes - 1} process(es) to join; start every process with the same "
                f"--coordinator and --num-processes, or raise --init-timeout")
    else:
        wait = (f"{where} did not answer within --init-timeout {spec.init_timeout:g} s (is process 0 "
                f"running, and reachable at that address?); no JAX computation was started")
    dog = _Watchdog(spec.init_timeout, wait, prog)
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as e:
        text = " ".join(str(e).split())
        if spec.coordinator == "auto":
            raise LaunchError(f"--coordinator auto: jax.distributed found no cluster to join ({text[:300]}); "
                              f"on Cloud TPU / SLURM run inside the job, elsewhere give --coordinator "
                              f"HOST:PORT --num-processes N --process-id I") from None
        raise LaunchError(f"--coordinator {spec.coordinator}: jax.distributed.initialize failed "
                          f"({text[:300]})") from None
    finally:
        dog.cancel()
    return True


def is_primary() -> bool:
    """True in process 0 (the one that writes logs and files), or when JAX runs one process."""
    import jax

    return jax.process_index() == 0


def all_agree(ok: bool) -> bool:
    """True when every process passes ``ok=True`` (a collective: every process must call
    it, in the same order); one process only: ``ok`` itself."""
    import jax

    if jax.process_count() == 1:
        return bool(ok)
    import numpy as np
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(int(bool(ok)), np.int32))
    return bool(np.all(np.asarray(flags) == 1))
