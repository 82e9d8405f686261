"""The compiled starlet passes (:mod:`xfusion.regularizers.starlet_kernels`) give the NumPy passes' numbers to the
bit: transforms of every shape the kernels take (and of those they leave to NumPy), and the 2D-1D prior's prox."""
import numpy as np
import pytest

from xfusion.regularizers import starlet, starlet_kernels
from xfusion.regularizers.sparsity import Wavelet2D1D

pytestmark = pytest.mark.skipif(not starlet_kernels.available,
                                reason="Numba is not installed or XFUSION_NUMBA=0: the NumPy passes run alone")


@pytest.fixture(autouse=True, scope="module")
def _compiled():
    """The kernels compiled for both dtypes, so that the "compiled" side of every comparison here is compiled (a
    process otherwise runs the NumPy passes until :data:`starlet_kernels.COMPILE_AFTER` elements)."""
    starlet_kernels.warm()


def _both(monkeypatch, f):
    """``(compiled, numpy)`` results of ``f()``."""
    fast = f()
    with monkeypatch.context() as m:
        m.setattr(starlet_kernels, "available", False)
        slow = f()
    return fast, slow


def _same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes(), float(np.max(np.abs(a.astype(np.float64) - b)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 2, 5), (5, 7, 9), (13, 4, 2), (20, 21, 300)])
def test_transforms_equal_the_numpy_passes_to_the_bit(monkeypatch, dtype, shape):
    z = (np.random.default_rng(7).random(shape) * 10 - 2).astype(dtype)
    for j in (1, 3, 5):  # dilations up to 16 samples: beyond the short axes (repeated reflection)
        _same_bits(*_both(monkeypatch, lambda: starlet.starlet1d(z, j)))
        _same_bits(*_both(monkeypatch, lambda: starlet.starlet2d(z, j)))
        _same_bits(*_both(monkeypatch, lambda: starlet.starlet2d1d(z, min(j, 2), j)))


def test_non_contiguous_blocks_and_other_axes(monkeypatch):
    z = np.random.default_rng(8).normal(size=(12, 10, 40)).astype(np.float32)
    zt = z.transpose(1, 0, 2)  # a strided view
    _same_bits(*_both(monkeypatch, lambda: starlet.starlet2d1d(zt, 2, 3)))
    # axes the kernels do not take run in NumPy: still the same numbers
    _same_bits(*_both(monkeypatch, lambda: starlet.starlet1d(z, 2, axis=0)))
    _same_bits(*_both(monkeypatch, lambda: starlet.starlet2d(z, 2, axes=(1, 2))))


def test_the_kernels_are_used_for_cubes(monkeypatch):
    calls = []
    for name in ("level_1d", "level_2d", "shrink_add"):
        orig = getattr(starlet_kernels, name)
        monkeypatch.setattr(starlet_kernels, name, lambda *a, _o=orig, _n=name: (calls.append(_n), _o(*a))[1])
    z = np.random.default_rng(9).random((16, 16, 200)).astype(np.float32)
    Wavelet2D1D(n_scales_2d=1, n_scales_1d=2, k=1.0).prox(z)
    assert {"level_1d", "level_2d", "shrink_add"} <= set(calls)


def test_channel_blocks_and_strided_cubes_run_compiled_and_equal_the_numpy_passes(monkeypatch):
    """The 2D transform cuts a cube into blocks of channels that the kernels read and write in the C-contiguous
    parents (a strided block did not vectorize, session 66); a strided cube is copied once so that it runs compiled
    too, and the 1D transform takes strided blocks (the prox's cropped bands) through its contiguous row."""
    spans = []
    orig = starlet_kernels.level_2d
    monkeypatch.setattr(starlet_kernels, "level_2d",
                        lambda c, s, axes, nxt, w, s1, s2, e0=0: (spans.append((e0, s1.shape[2])),
                                                                  orig(c, s, axes, nxt, w, s1, s2, e0))[1])
    z = np.random.default_rng(12).normal(size=(30, 31, 1200)).astype(np.float32)  # 4.5 MB: blocks of <= 2 MiB
    _same_bits(*_both(monkeypatch, lambda: starlet.starlet2d(z, 2)))
    starts = sorted({e0 for e0, _ in spans})
    assert len(starts) >= 3 and starts[0] == 0
    assert sum(nb for e0, nb in set(spans)) == z.shape[2]  # the blocks tile the channels
    spans.clear()
    zt = z[1:-1, ::2].transpose(1, 0, 2)  # strided in both pixel axes
    _same_bits(*_both(monkeypatch, lambda: starlet.starlet2d1d(zt, 1, 2)))
    assert spans
    crop = z[2:-2, 3:-1]  # a cropped band, as the prox passes to the 1D transform
    _same_bits(*_both(monkeypatch, lambda: starlet.starlet1d(crop, 3)))


@pytest.mark.parametrize("null_space", ["zero", "threshold"])
def test_prox_equals_the_numpy_prox_to_the_bit(monkeypatch, null_space):
    rng = np.random.default_rng(10)
    z = rng.gamma(2.0, 3.0, size=(24, 24, 400)).astype(np.float32)
    reg = Wavelet2D1D(n_scales_2d=1, n_scales_1d=2, k=1.5, null_space=null_space)
    (a, pa), (b, pb) = _both(monkeypatch, lambda: reg.prox(z, step=0.7, with_penalty=True))
    _same_bits(a, b)
    assert pa == pb


def test_negative_threshold_refused(monkeypatch):
    z = np.random.default_rng(11).random((16, 16, 200)).astype(np.float32)
    reg = Wavelet2D1D(n_scales_2d=1, n_scales_1d=2, k=1.0)
    for available in (True, False):
        monkeypatch.setattr(starlet_kernels, "available", available)
        with pytest.raises(ValueError, match="non-negative"):
            reg.prox(z, step=-1.0)


def test_shape_prior_ladder_equals_the_numpy_shrinkage_to_the_bit(monkeypatch):
    from xfusion.regularizers.shape import SpectralShape, shrink_ladder

    z = np.random.default_rng(5).gamma(0.5, 3.0, (11, 9, 140))
    z[2, 3] = 0.0  # an empty pixel: a flat shape
    for n_scales in (1, 2, 3):
        fast, slow = _both(monkeypatch, lambda: dict(shrink_ladder(z, 1e6, (10.0, 1e3, 3e7), n_scales=n_scales)))
        assert list(fast) == list(slow)
        for n0 in fast:
            _same_bits(fast[n0], slow[n0])
    prior = SpectralShape(300.0, 1e6)
    _same_bits(*_both(monkeypatch, lambda: prior.prox(z.astype(np.float32))))  # the fit's prox (float32 cube)


def _cold(monkeypatch, after):
    """This process's kernels as if never compiled (a new process), compiling once ``after`` elements of a dtype
    went through the NumPy passes (compiling what is compiled already takes no time)."""
    monkeypatch.setattr(starlet_kernels, "_ready", set())
    monkeypatch.setattr(starlet_kernels, "_work", {})
    monkeypatch.setattr(starlet_kernels, "_jobs", {})
    monkeypatch.setattr(starlet_kernels, "COMPILE_AFTER", after)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_the_numpy_passes_run_until_enough_work_then_the_kernels(monkeypatch, threads):
    monkeypatch.setenv("XFUSION_NUM_THREADS", threads)
    z = np.random.default_rng(12).random((16, 16, 200)).astype(np.float32)
    _cold(monkeypatch, 3.5 * z.size)
    calls = []
    orig = starlet_kernels.level_2d
    monkeypatch.setattr(starlet_kernels, "level_2d", lambda *a: (calls.append(1), orig(*a))[1])
    assert not starlet_kernels.takes(z) and not starlet_kernels.takes(z, z)  # 2 blocks of the 3.5 declined
    ref = starlet.starlet2d1d(z, 1, 2)  # declines more: compiling starts once 3.5 blocks were declined
    assert not calls and starlet_kernels._work["float32"] >= 3.5 * z.size
    job = starlet_kernels._jobs["float32"]
    if threads == "1":
        assert job is None  # compiled in the caller, at once
    else:
        assert job.name == "xfusion-compile-float32"
        job.join(timeout=120)
    assert "float32" in starlet_kernels._ready and "float64" not in starlet_kernels._jobs
    _same_bits(starlet.starlet2d1d(z, 1, 2), ref)
    assert calls  # now the kernels ran
    assert starlet_kernels.takes(z) and not starlet_kernels.takes(z.astype(np.float64))


@pytest.mark.parametrize("voxels_needed", [54000, 54001])
def test_fuse_of_a_large_cube_starts_compiling_before_any_pass(monkeypatch, small_toy, voxels_needed):
    """``fuse`` tells the kernels the fused cube's size first: at least ``COMPILE_NOW_VOXELS`` voxels (here the small
    toy's 15x15x240 = 54000 against a threshold set around it) start the compilation before any NumPy pass ran;
    fewer leave the lazy rule (never reached here). The cube is the same either way."""
    import xfusion

    x, y, _ = small_toy
    _cold(monkeypatch, 1e30)
    monkeypatch.setattr(starlet_kernels, "COMPILE_NOW_VOXELS", voxels_needed)
    started = []
    orig = starlet_kernels._start
    monkeypatch.setattr(starlet_kernels, "_start",
                        lambda name: (started.append((name, dict(starlet_kernels._work))), orig(name))[1])
    r = xfusion.fuse(x, y, progress=False, regularization="wavelet2d1d", k=1.0, max_iter=3)
    if voxels_needed <= 54000:
        assert started[0] == ("float32", {})  # before any pass
        job = starlet_kernels._jobs["float32"]
        if job is not None:
            job.join(timeout=120)
        assert "float32" in starlet_kernels._ready
    else:
        assert not started and not starlet_kernels._jobs and starlet_kernels._work["float32"] > 0
    ref = xfusion.fuse(x, y, progress=False, regularization="wavelet2d1d", k=1.0, max_iter=3)
    _same_bits(r.flux.values, ref.flux.values)


def test_a_fit_that_switches_to_the_kernels_midway_gives_the_numpy_cube(monkeypatch, small_toy):
    """Whenever the kernels become ready during a fit (here on their own thread, part way through the tuning), the
    fused cube is the NumPy passes' one to the bit."""
    import xfusion

    x, y, _ = small_toy
    with monkeypatch.context() as m:
        m.setattr(starlet_kernels, "available", False)
        slow = xfusion.fuse(x, y, progress=False)
    monkeypatch.setenv("XFUSION_NUM_THREADS", "2")
    _cold(monkeypatch, 2e6)
    calls = []
    orig = starlet_kernels.level_1d
    monkeypatch.setattr(starlet_kernels, "level_1d", lambda *a: (calls.append(1), orig(*a))[1])
    fast = xfusion.fuse(x, y, progress=False)
    assert "float32" in starlet_kernels._jobs and starlet_kernels._work["float32"] >= 2e6  # NumPy first
    assert calls  # then the kernels
    starlet_kernels._jobs["float32"].join(timeout=120)
    _same_bits(fast.flux.values, slow.flux.values)
    assert fast.attrs["parameters"] == slow.attrs["parameters"]


def test_a_numba_that_does_not_import_turns_the_kernels_off(monkeypatch):
    """Numba is imported only when the kernels are compiled (session 68). One that is installed but fails to import
    then turns them off with a warning, and the transforms run the NumPy passes: the same coefficients."""
    import sys

    z = np.random.default_rng(3).random((12, 12, 40)).astype(np.float32)
    before = starlet.starlet2d(z, 2)
    monkeypatch.setattr(starlet_kernels, "_defined", False)  # as in a process that has not compiled them yet
    monkeypatch.setattr(starlet_kernels, "available", True)  # so that the flag _define turns off is restored after
    monkeypatch.setitem(sys.modules, "numba", None)  # "import numba" now raises ImportError
    with pytest.warns(RuntimeWarning, match="could not import Numba"):
        assert starlet_kernels.warm(("float32",)) == 0.0
    assert not starlet_kernels.available and not starlet_kernels.takes(z)
    for a, b in zip(starlet.starlet2d(z, 2), before):
        _same_bits(a, b)


def test_the_kernels_are_back_after_the_broken_numba_test():
    """The test above leaves the module as it found it (kernels on, Numba's dispatchers in place)."""
    assert starlet_kernels.available and starlet_kernels._defined and "float32" in starlet_kernels._ready
    assert type(starlet_kernels._level1).__module__.startswith("numba")
