"""The host allocator setting the command line applies (issue 11): freed memory is kept.

One-sided module: JAX only, with no ``torch_ref`` twin (it changes how the process's C
allocator, glibc's malloc, hands memory back to the operating system; torch's kernels run
on the same allocator and are measured with it in the benchmarks).

Why. XLA:CPU allocates each call's temporary buffers with ``malloc`` and frees them at the
end of the call. glibc serves allocations above its mmap threshold with fresh ``mmap``
pages and gives freed memory back to the system (``munmap``, heap trimming), so every call
touches new pages and pays a page fault per 4 KiB: in the DDPM U-Net 32 x 32 training step
37,650 faults per step (torch 8,400). For the MLP's training step at batch 4096 (2026-12-04,
2 cores, medians of 40 in one process each) the step took 27.4 ms with glibc's defaults
and 18.3 ms with ``configure_host_allocator()`` (peak RSS 395 -> 405 MiB); in the benchmark
run the row went 31 -> 20 ms (torch eager 27 -> 26 ms).

What. ``configure_host_allocator()`` calls glibc's ``mallopt``: ``M_MMAP_MAX = 0`` (every
allocation from the heaps, none from ``mmap``) and ``M_TRIM_THRESHOLD`` at its maximum (the
heaps are not trimmed), so memory a call frees is reused by the next call. The cost: the
process keeps its peak heap until it exits (it does not shrink after a large call). It can
run at any time (it affects allocations made afterwards); the ``scorediff`` command line and
``python -m benchmarks.run`` (both of its processes, so torch's rows run on the same
allocator) call it at start, a library user may call it first thing.

``SCOREDIFF_MALLOC``: ``keep`` (unset: the setting above) or ``system`` (glibc's defaults,
nothing changes). Nothing changes either where the C library is not glibc, or where
``GLIBC_TUNABLES`` already sets a ``glibc.malloc.*`` tunable (the user's choice wins).
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["ENV", "check_environment", "configure_host_allocator", "state"]

#: ``keep`` (default): freed memory stays with the process; ``system``: glibc's defaults
ENV = "SCOREDIFF_MALLOC"
_CHOICES = ("keep", "system")
# glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_MAX = 2**31 - 1  # the largest value mallopt takes (an int)

_state = {"applied": False, "why": "not configured"}


def check_environment() -> str:
    """``SCOREDIFF_MALLOC``'s value (``keep`` when unset); ValueError naming the variable for
    anything else."""
    raw = os.environ.get(ENV, "keep")
    choice = raw.strip().lower()
    if choice not in _CHOICES:
        raise ValueError(f"{ENV}={raw!r} must be 'keep' (freed memory stays with the process, "
                         "the default) or 'system' (glibc's defaults)")
    return choice


def configure_host_allocator() -> bool:
    """Apply the setting of the module docstring; True when it was applied now or before.
    ValueError for a bad ``SCOREDIFF_MALLOC``. ``state()`` says what happened."""
    choice = check_environment()
    if _state["applied"]:
        return True
    if choice == "system":
        _state.update(applied=False, why=f"{ENV}=system")
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        _state.update(applied=False, why="GLIBC_TUNABLES sets glibc.malloc.* (the user's choice)")
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _state.update(applied=False, why=f"the C library is not glibc ({platform.system()} {platform.libc_ver()[0]})")
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as err:
        _state.update(applied=False, why=f"no mallopt ({err})")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, _TRIM_MAX) != 1:
        _state.update(applied=False, why="mallopt refused the setting")
        return False
    _state.update(applied=True, why=None)
    return True


def state() -> dict:
    """``{"applied": bool, "why": str | None}``: whether the setting is in force, and why not."""
    return dict(_state)
