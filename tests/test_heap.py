"""Freed memory is kept in the process while xfusion fits (:mod:`xfusion.solvers.heap`).

Read through glibc's own accounting (``mallinfo2``: bytes in mmapped blocks, bytes of the heap), so the tests
skip with another C library or a glibc older than 2.33.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

import xfusion
from xfusion.solvers import heap


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mallinfo():
    libc = heap._glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2); with another C library heap.retained does nothing")
    libc.mallinfo2.restype = _Mallinfo2
    return libc.mallinfo2()


BIG = 64 * 2 ** 20  # above glibc's largest mmap threshold (32 MiB): mmapped unless mmap is switched off


def _mmapped_by(nbytes):
    """Bytes glibc serves by mmap for a fresh block of ``nbytes`` (written so it is really allocated)."""
    before = _mallinfo().hblkhd
    a = np.ones(nbytes // 8)
    grown = _mallinfo().hblkhd - before
    del a
    return grown


@pytest.fixture(autouse=True)
def _enabled(monkeypatch):
    monkeypatch.delenv("XFUSION_RETAIN_MEMORY", raising=False)


def test_large_blocks_come_from_the_heap_inside_and_are_mmapped_outside():
    assert _mmapped_by(BIG) >= BIG
    with heap.retained():
        assert heap.active()
        assert _mmapped_by(BIG) == 0
    assert not heap.active()
    assert _mmapped_by(BIG) >= BIG


def test_nested_blocks_keep_the_setting_until_the_outermost_exit_which_trims():
    with heap.retained():
        with heap.retained():
            a = np.ones(4 * BIG // 8)
        assert heap.active()
        assert _mmapped_by(BIG) == 0
        del a  # 256 MiB free at the heap's top: kept while the block runs
        kept = _mallinfo().arena
    after = _mallinfo().arena
    assert kept - after >= 3 * BIG, (kept, after)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("XFUSION_RETAIN_MEMORY", "0")
    with heap.retained():
        assert not heap.active()
        assert _mmapped_by(BIG) >= BIG


def test_fuse_runs_with_memory_kept_and_gives_the_same_cube(monkeypatch, small_toy):
    _mallinfo()
    x, y = small_toy[0], small_toy[1]
    seen = []

    def callback(it, state):
        seen.append((heap.active(), _mmapped_by(BIG)))
        return False

    kw = dict(regularization="wavelet2d1d", k=1.0, max_iter=4, progress=False)
    kept = xfusion.fuse(x, y, callback=callback, **kw)
    assert seen and all(active and grown == 0 for active, grown in seen)
    monkeypatch.setenv("XFUSION_RETAIN_MEMORY", "0")
    seen.clear()
    plain = xfusion.fuse(x, y, callback=callback, **kw)
    assert seen and all(not active and grown >= BIG for active, grown in seen)
    np.testing.assert_array_equal(kept["flux"].values, plain["flux"].values)
    assert not heap.active()
