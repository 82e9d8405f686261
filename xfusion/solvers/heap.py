r"""Keep freed memory in the process while xfusion fits (glibc only).

Why
---
An in-memory iteration allocates and frees a few dozen cube-sized NumPy temporaries (a
45x45x2400 float32 cube is 19 MB; the 2D-1D starlet's stacked coefficients are 6 such cubes).
glibc's ``malloc`` serves blocks above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and gives them back with ``munmap`` on free, and trims the heap's free top above its trim
threshold. Every fresh page is then faulted in and zeroed by the kernel on its first write, every
iteration again. Measured in session 26 on the 2-core VM (``benchmarks/heap.py``): the fixed
wavelet2d1d fit of suite scene point_sources/500018 (45x45x2400, 50 iterations) spent 8.6 s of
kernel time in 21.4 s wall; with freed memory kept, 0.9 s in 14.1 s; the default ``fuse``
(tuning and final fit) ran in 94.6 s wall (33 s kernel) against 67.9 s (3.8 s kernel), the same cube
to the bit, peak resident memory 888 against 912 MB.

What
----
:func:`retained` is a re-entrant context manager. On the outermost entry it tells glibc (``mallopt``)
to serve every block from the heap (``M_MMAP_MAX = 0``) and to trim the heap only when more than
:data:`TRIM_BYTES` are free at its top, so a freed temporary is reused by the next one of its size.
On the outermost exit it returns the free memory to the system (``malloc_trim(0)``) and leaves glibc
as its own dynamic rule leaves a process that has freed a large block: mmap threshold 32 MiB, trim
threshold 64 MiB, mmap allowed. Nothing else changes: the arithmetic is the same, so results are
identical. With another C library (musl, macOS, Windows), or with the environment variable
``XFUSION_RETAIN_MEMORY=0``, it does nothing.

Dask workers
------------
distributed starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` on purpose: freed memory goes back to the
system at once, so its memory monitor (spill at 60% of ``memory_limit``, pause at 80%, restart at 95%) reads what a
worker really holds. They pay the same page faults (session 27, ``benchmarks/heap.py --fit dask``: 20 iterations
of a 45x45x2400 scene on a 2-worker LocalCluster in 23.4-24.0 s, 14.2-16.8 s with freed memory kept, each worker's
peak resident memory 620 -> 710-727 MB). So xfusion leaves workers
alone unless asked: ``with heap.retained(client=client): xfusion.fuse(x, y, client=client)`` (or the CLI's
``--retain-worker-memory``) keeps it on every worker for the block, for whatever runs there, then restores their
settings and trims. Use it where workers have room: each keeps about its peak working set for the block.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading

__all__ = ["retained", "TRIM_BYTES", "active"]

# mallopt(3) parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
#: free bytes at the heap's top above which glibc gives memory back during a fit (the largest ``int``)
TRIM_BYTES = 2 ** 31 - 1
#: what the outermost exit leaves: glibc's dynamic rule at its ceiling (DEFAULT_MMAP_THRESHOLD_MAX, twice it, its
#: default count of mmapped blocks), or the process's own ``MALLOC_*_`` environment settings where it has them (a
#: Dask worker: distributed sets ``MALLOC_TRIM_THRESHOLD_`` for its memory monitor)
_AFTER = {_M_MMAP_THRESHOLD: 32 * 2 ** 20, _M_TRIM_THRESHOLD: 64 * 2 ** 20, _M_MMAP_MAX: 65536}
_ENV = {_M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_", _M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_",
        _M_MMAP_MAX: "MALLOC_MMAP_MAX_"}

_lock = threading.Lock()
_depth = 0
_applied = False  # whether the outermost entry changed glibc's settings (the exit undoes only what it did)


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library if it is glibc (it has ``gnu_get_libc_version``, ``mallopt`` and ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def _enabled() -> bool:
    return os.environ.get("XFUSION_RETAIN_MEMORY", "1").strip() != "0" and _glibc() is not None


def active() -> bool:
    """True while a :func:`retained` block runs in this process with glibc and the setting enabled."""
    return _applied


def _after(param):
    try:
        return int(os.environ[_ENV[param]])
    except (KeyError, ValueError):
        return _AFTER[param]


def _enter():
    """One entry: the first keeps freed memory (returns whether it is kept in this process)."""
    global _depth, _applied
    with _lock:
        _depth += 1
        if _depth == 1 and _enabled():
            _applied = True
            libc = _glibc()
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES)
        return _applied


def _exit():
    """One exit: the last restores glibc's settings and gives the free memory back (a process never entered, e.g. a
    Dask worker started during the block, is left alone)."""
    global _depth, _applied
    with _lock:
        if _depth == 0:
            return
        _depth -= 1
        if _depth == 0 and _applied:
            _applied = False
            libc = _glibc()
            for param in _AFTER:
                libc.mallopt(param, _after(param))
            libc.malloc_trim(0)


@contextlib.contextmanager
def retained(client=None):
    """Run the block with freed memory kept in the process (module notes); re-entrant and thread-safe (the
    settings are process-wide: they hold from the first entry to the last exit of any thread).

    ``client`` (a ``dask.distributed.Client``, opt-in): the cluster's workers keep theirs too while the block runs
    (each worker as this process: ``XFUSION_RETAIN_MEMORY`` as set there, glibc only), and on exit they get their own
    settings back (distributed's ``MALLOC_TRIM_THRESHOLD_``) and return the free memory. Mind distributed's memory
    monitor: it reads a worker's resident memory, which then includes the memory kept, so a worker near its
    ``memory_limit`` spills, pauses or restarts sooner (module notes, "Dask workers")."""
    _enter()
    on_workers = False
    try:
        if client is not None:
            on_workers = True  # before: a worker entered when another failed is still undone (never entered: no-op)
            client.run(_enter)
        yield
    finally:
        try:
            if on_workers:
                client.run(_exit, on_error="ignore")  # best effort: a worker lost meanwhile has nothing to undo
        finally:
            _exit()
