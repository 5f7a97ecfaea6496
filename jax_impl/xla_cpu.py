"""XLA:CPU settings the library applies by default (issue 11): convolutions without YNNPACK.

One-sided module: JAX only, with no ``torch_ref`` twin. It sets an XLA compiler flag
(``XLA_FLAGS``) before JAX's backend starts; torch has no XLA compiler to configure.

jax 0.10's XLA:CPU hands convolutions (and dots) to YNNPACK library fusions
(``ynn_fusion`` in a profile). On the 2-core machine this project is measured on, XLA's own
convolution is faster: with ``--xla_cpu_experimental_ynn_fusion_type`` limited to
``LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`` (YNNPACK keeps stand-alone dots, not convolutions),
one network evaluation took, in alternating processes on 2026-12-02 (medians of 5, two
rounds):

=============================  =================  ===================
network (benchmarks.cases)      default            convolutions in XLA
=============================  =================  ===================
DDPM U-Net 32x32, batch 4       32.7 / 24.2 ms     21.8 / 15.1 ms
DDPM U-Net 8x8, batch 64        24-28 ms           12-13 ms (all YNN off)
NCSN++ 32x32, batch 8           23-28 ms           14-18 ms (all YNN off)
MLP Euler-Maruyama N=1000, b64  217.7 / 207.4 ms   218.5 / 198.8 ms
=============================  =================  ===================

``configure_cpu_convolutions()`` adds that flag to ``XLA_FLAGS`` before JAX's backend
starts. The ``scorediff`` command line and ``python -m benchmarks.run`` call it; a library
user may call it first thing, or set the flag themselves. It changes nothing when
``XLA_FLAGS`` already names the flag (the user's choice wins), when
``SCOREDIFF_XLA_CPU_CONVOLUTIONS=ynn`` asks for JAX's default, or when the backend has
already started (XLA reads its flags once). Outputs differ from the default only by float32
rounding (another convolution algorithm): the benchmark suite's agreement checks and the
test suite run with it. It only affects the CPU backend.

Since 2026-12-03 the library's own 2-D float32 convolutions (``xla_cpu_layers.Conv``) run as
oneDNN custom calls on a one-device CPU (``jax_impl/onednn.py``); this flag still decides the
convolutions XLA keeps: the 1-D convolutions of the attention blocks, NCSN's dilated ones,
FIR kernels that are not separable, everything when ``SCOREDIFF_ONEDNN=0``.

One device only. With the CPU host split into several devices
(``jax_impl.sharding.configure_host_devices(n > 1)``), XLA's own convolutions gave
nondeterministic results (2026-12-03, jax 0.10.2, 2 host devices, the DDPM U-Net 8x8 DDIM
50-step sampler of ``benchmarks.cases``, batch 64 sharded 32 + 32): three identical calls
differed from each other by up to 0.03 and from the one-device samples by 0.67, always in
the examples at the edges of a shard (0, 1, 31, 32, 33, 63), while YNNPACK's convolutions
gave the one-device samples bit for bit. So ``configure_host_devices`` with ``n > 1``
removes this flag again (``drop_cpu_flag``), and ``configure_cpu_convolutions`` adds nothing
once the host has been split.
"""

from __future__ import annotations

import os

__all__ = ["YNN_FLAG", "CONVOLUTIONS_ENV", "cpu_flag", "configure_cpu_convolutions", "drop_cpu_flag"]

#: the XLA flag (a list of library fusion kinds YNNPACK may take)
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
#: ``xla`` (default): convolutions in XLA's own emitter; ``ynn``: JAX's default
CONVOLUTIONS_ENV = "SCOREDIFF_XLA_CPU_CONVOLUTIONS"
_VALUE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


def cpu_flag() -> str:
    """The flag ``configure_cpu_convolutions`` adds: ``--xla_cpu_experimental_ynn_fusion_type=...``."""
    return f"{YNN_FLAG}={_VALUE}"


def configure_cpu_convolutions() -> bool:
    """Run XLA:CPU convolutions in XLA's own emitter (YNNPACK keeps stand-alone dots).

    Returns True when the flag was added to ``XLA_FLAGS`` now. ValueError naming
    ``SCOREDIFF_XLA_CPU_CONVOLUTIONS`` for a value other than ``xla`` / ``ynn``."""
    choice = os.environ.get(CONVOLUTIONS_ENV, "xla").strip().lower()
    if choice not in ("xla", "ynn"):
        raise ValueError(f"{CONVOLUTIONS_ENV}={os.environ[CONVOLUTIONS_ENV]!r} must be 'xla' "
                         "(XLA's own convolutions, the default) or 'ynn' (JAX's default, YNNPACK)")
    from jax_impl.sharding import _backends_started

    flags = os.environ.get("XLA_FLAGS", "")
    if choice == "ynn" or YNN_FLAG in flags or _backends_started() or _host_split():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {cpu_flag()}".strip()
    return True


def _host_split() -> bool:
    import jax

    return int(getattr(jax.config, "jax_num_cpu_devices", -1) or -1) > 1


def drop_cpu_flag() -> bool:
    """Remove ``cpu_flag()`` from ``XLA_FLAGS`` (before JAX's backend starts): what
    ``configure_host_devices(n > 1)`` does, as XLA's own convolutions are nondeterministic
    on a split host (module docstring). Returns True when the flag was there."""
    flags = os.environ.get("XLA_FLAGS", "")
    kept = [f for f in flags.split() if f != cpu_flag()]
    if len(kept) == len(flags.split()):
        return False
    os.environ["XLA_FLAGS"] = " ".join(kept)
    return True
