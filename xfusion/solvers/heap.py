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
#: default count of mmapped blocks)
_AFTER = {_M_MMAP_THRESHOLD: 32 * 2 ** 20, _M_TRIM_THRESHOLD: 64 * 2 ** 20, _M_MMAP_MAX: 65536}

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
    """True while a :func:`retained` block runs with glibc and the setting enabled."""
    return _applied


@contextlib.contextmanager
def retained():
    """Run the block with freed memory kept in the process (module notes); re-entrant and thread-safe (the
    settings are process-wide: they hold from the first entry to the last exit of any thread)."""
    global _depth, _applied
    with _lock:
        _depth += 1
        if _depth == 1 and _enabled():
            _applied = True
            libc = _glibc()
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _applied:
                _applied = False
                libc = _glibc()
                for param, value in _AFTER.items():
                    libc.mallopt(param, value)
                libc.malloc_trim(0)
