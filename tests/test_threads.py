"""The thread pool (:mod:`xfusion.threads`) and the work that runs on it: results equal to the bit whatever the
number of threads, and equal to the plain (one product per band / per cube) computation."""
import threading

import numpy as np
import pytest

from xfusion import threads
from xfusion.operators import psf as psf_mod
from xfusion.operators import response as response_mod
from xfusion.operators.psf import EnergyDependentSpatial, SpatialMatrix, band_weights
from xfusion.operators.response import ResponseMatrix
from xfusion.regularizers.sparsity import Wavelet2D1D, _gaussian_nearest, gaussian_nearest, gaussian_nearest_every


def _both(monkeypatch, fn):
    """``fn()`` with one thread and with two (the pool engaged)."""
    monkeypatch.setenv("XFUSION_NUM_THREADS", "1")
    one = fn()
    monkeypatch.setenv("XFUSION_NUM_THREADS", "2")
    two = fn()
    return one, two


def test_spans_cover_the_range_in_equal_parts_of_at_most_width():
    for lo, hi, w in [(0, 10, 3), (5, 2405, 1024), (0, 1, 8), (7, 7, 4), (0, 2400, 600)]:
        s = threads.spans(lo, hi, w)
        assert [a for a, _ in s][1:] == [b for _, b in s][:-1]  # contiguous
        if hi > lo:
            assert s[0][0] == lo and s[-1][1] == hi
            sizes = [b - a for a, b in s]
            assert max(sizes) <= w and max(sizes) - min(sizes) <= 1
            assert len(s) == -(-(hi - lo) // w)  # the fewest parts
        else:
            assert s == []
    assert threads.spans(0, 2400, 1024) == [(0, 800), (800, 1600), (1600, 2400)]


def test_run_runs_every_task_once_on_the_pool_and_raises_a_tasks_error(monkeypatch):
    monkeypatch.setenv("XFUSION_NUM_THREADS", "2")
    done, names = [0] * 9, set()

    def task(i):
        done[i] += 1
        names.add(threading.current_thread().name)

    threads.run([lambda i=i: task(i) for i in range(9)], threads.PARALLEL_MIN_BYTES)
    assert done == [1] * 9
    assert all(n.startswith("xfusion-") for n in names)  # on the pool, not in the caller
    names.clear()
    threads.run([lambda i=i: task(i) for i in range(2)], threads.PARALLEL_MIN_BYTES - 1)  # too small: here
    assert names == {threading.current_thread().name}

    def bad():
        raise ValueError("task failed")
    with pytest.raises(ValueError, match="task failed"):
        threads.run([lambda: None, bad, lambda: None], threads.PARALLEL_MIN_BYTES)


def test_a_task_that_runs_tasks_runs_them_in_its_own_thread(monkeypatch):
    """Every pool thread waiting on the pool would deadlock: nested tasks run where they are asked for."""
    monkeypatch.setenv("XFUSION_NUM_THREADS", "2")
    seen = []

    def outer(i):
        me = threading.current_thread().name
        threads.run([lambda j=j: seen.append((i, j, threading.current_thread().name == me)) for j in range(3)],
                    threads.PARALLEL_MIN_BYTES)

    threads.run([lambda i=i: outer(i) for i in range(4)], threads.PARALLEL_MIN_BYTES)
    assert sorted((i, j) for i, j, _ in seen) == [(i, j) for i in range(4) for j in range(3)]
    assert all(same for _, _, same in seen)


def _winged(rng, n=13):
    """A non-separable kernel (no Kronecker factors: the dense products)."""
    k = rng.random((n, n)) + 2.0 * np.outer(np.hanning(n), np.hanning(n))
    return k / k.sum()


@pytest.fixture(scope="module")
def energy_psf():
    rng = np.random.default_rng(5)
    ops = [SpatialMatrix.from_psf(_winged(rng), (30, 30), 3) for _ in range(4)]
    assert all(op.factors is None for op in ops)
    L = 700
    w = band_weights([1.0, 2.0, 3.0, 4.0], np.linspace(0.5, 4.5, L))
    w[:, -40:] = 0.0  # channels no band sees: the operator is zero there
    return EnergyDependentSpatial(ops, w), rng


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_energy_dependent_psf_in_memory_is_the_sum_over_bands_whatever_the_threads(energy_psf, monkeypatch, dtype):
    op, rng = energy_psf
    z = rng.random((30, 30, 700)).astype(dtype)
    u = rng.random((10, 10, 700)).astype(dtype)
    assert z.nbytes >= threads.PARALLEL_MIN_BYTES  # each product's work (its input and output) is on the pool
    monkeypatch.setattr(psf_mod, "PSF_TASK_CHANNELS", 90)  # several tasks per segment
    w = op.weights.astype(dtype)
    ref_f = sum(b.forward(z) * wb for b, wb in zip(op.ops, w))
    ref_a = sum(b.adjoint(u * wb) for b, wb in zip(op.ops, w))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for fn, ref, x in ((op.forward, ref_f, z), (op.adjoint, ref_a, u)):
        one, two = _both(monkeypatch, lambda: fn(x))
        assert one.dtype == dtype and one.shape == ref.shape
        np.testing.assert_array_equal(one, two)
        np.testing.assert_allclose(one, ref, rtol=tol, atol=tol * np.abs(ref).max())
        assert np.all(one[..., -40:] == 0)
    # the adjoint identity on the threaded forms
    lhs = float(np.vdot(op.forward(z).astype(np.float64), u.astype(np.float64)))
    rhs = float(np.vdot(z.astype(np.float64), op.adjoint(u).astype(np.float64)))
    assert abs(lhs - rhs) <= (1e-12 if dtype == np.float64 else 1e-5) * abs(lhs)
    assert not np.shares_memory(op.forward(z), z)


def test_energy_dependent_psf_refuses_all_zero_weights():
    op = EnergyDependentSpatial([SpatialMatrix.from_psf(np.ones((3, 3)) / 9, (6, 6), 3)], np.zeros((1, 5)))
    with pytest.raises(ValueError, match="every band weight is 0"):
        op.forward(np.ones((6, 6, 5)))


def test_dense_response_in_tasks_equals_one_product(monkeypatch):
    rng = np.random.default_rng(2)
    R = ResponseMatrix(rng.random((500, 40)))
    z = rng.random((37, 23, 500))
    u = rng.random((37, 23, 40))
    monkeypatch.setattr(response_mod, "RESPONSE_TASK_ROWS", 100)
    for fn, x, ref in ((R.forward, z, z @ R.matrix), (R.adjoint, u, u @ R.matrix.T)):
        one, two = _both(monkeypatch, lambda: fn(x))
        np.testing.assert_array_equal(one, two)
        np.testing.assert_allclose(one, ref, rtol=1e-12)
        assert one.shape == ref.shape
    z32 = z.astype(np.float32)
    assert R.forward(z32).dtype == np.float32
    np.testing.assert_allclose(R.forward(z32), z32 @ R.matrix.astype(np.float32), rtol=1e-5)


def test_gaussian_smoothing_in_row_blocks_equals_one_transform(monkeypatch):
    rng = np.random.default_rng(3)
    a = rng.random((40, 30, 900)).astype(np.float32)
    one, two = _both(monkeypatch, lambda: gaussian_nearest(a, 25.0))
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, _gaussian_nearest(a, 25.0))
    assert one.dtype == np.float32 and one.shape == a.shape


def test_backend_totals_are_block_shares_summed_in_order_whatever_the_threads(monkeypatch):
    """The in-memory backend's ``total`` (the EM step's sums): a cube's rows cut into blocks of about
    ``SPLIT_BYTES``, each block's share computed on the pool, the shares added in block order -- the same float on
    one thread and on two, within rounding of the one-call sum; arguments that broadcast along the rows (a scalar,
    an (1, 1, L) array) are passed whole; small or 1D inputs are one call."""
    from xfusion.solvers import backend
    from xfusion.solvers.em import _sq_diff, _weighted_total

    rng = np.random.default_rng(5)
    z, s = (rng.gamma(2.0, 1.0, size=(45, 45, 600)).astype(np.float32) for _ in range(2))
    B = backend.NumpyBackend()
    parts = backend._row_spans((s, z))[1]
    assert len(parts) > 2 and parts[0][0] == 0 and parts[-1][1] == 45
    for f, args in ((_weighted_total, (s, z)), (_sq_diff, (z, s)), (_weighted_total, (s[:1, :1], z))):
        one, two = _both(monkeypatch, lambda: B.total(f, *args))
        assert one == two
        blocks = 0.0
        for r0, r1 in parts:
            blocks += f(*(a if a.shape[0] == 1 else a[r0:r1] for a in args))
        assert one == blocks and one == pytest.approx(f(*args), rel=1e-12)
    seen = []
    B.total(lambda a: seen.append(a.shape) or 0.0, z[:5, :5])  # below PARALLEL_MIN_BYTES: one call
    B.total(lambda a: seen.append(a.shape) or 0.0, z.ravel())  # 1D: one call
    assert seen == [(5, 5, 600), (z.size,)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smoothing_at_every_step_th_channel_is_the_full_smoothing_sampled(monkeypatch, dtype):
    """``gaussian_nearest_every`` (the line part's statistic, session 69): the full smoothing at channels 0, step,
    ... within rounding (the inverse summed over the bins whose Gaussian transfer is >= eps^2), the same to the bit
    on one thread and two; where the sum would not pay (small sigma, step 1) exactly the full smoothing sampled."""
    rng = np.random.default_rng(6)
    a = (rng.gamma(2.0, 1.0, size=(20, 9, 2400)) - 2.0).astype(dtype)
    eps = 16 * np.finfo(dtype).eps
    for sigma, step in ((132.9, 19), (60.0, 40), (300.0, 7)):
        one, two = _both(monkeypatch, lambda: gaussian_nearest_every(a, sigma, step))
        np.testing.assert_array_equal(one, two)
        full = gaussian_nearest(a, sigma)[..., ::step]
        assert one.shape == full.shape and one.dtype == dtype
        assert np.abs(one.astype(np.float64) - full).max() <= eps * np.abs(a).max()
        assert not np.array_equal(one, full) or dtype == np.float64  # really the short sum, not the fallback
    for sigma, step in ((3.0, 5), (132.9, 1)):
        np.testing.assert_array_equal(gaussian_nearest_every(a, sigma, step), gaussian_nearest(a, sigma)[..., ::step])
    np.testing.assert_allclose(gaussian_nearest_every(a[0, 0], 132.9, 19), gaussian_nearest(a[0, 0], 132.9)[::19],
                               rtol=0, atol=eps * np.abs(a[0, 0]).max())


@pytest.mark.parametrize("noise", ["mad", "poisson"])
def test_prior_statistics_are_the_same_whatever_the_threads(monkeypatch, noise):
    rng = np.random.default_rng(4)
    z = rng.gamma(2.0, 3.0, size=(40, 40, 400)).astype(np.float32)
    reg = Wavelet2D1D(n_scales_2d=2, n_scales_1d=2, noise=noise)
    monkeypatch.setattr(threads, "PARALLEL_MIN_BYTES", 0)  # with two threads every split runs on the pool
    one, two = _both(monkeypatch, lambda: reg.statistics(z))
    assert one == two
    assert set(one["sigma"]) == set(reg._needed()) and all(v > 0 for v in one["sigma"].values())


@pytest.mark.parametrize("bad", ["two", "0", "-1", "1.5"])
def test_a_bad_thread_count_in_the_environment_is_a_clear_error(monkeypatch, bad):
    """``XFUSION_NUM_THREADS`` that is not a whole number >= 1 was ignored without a word; it names itself now."""
    monkeypatch.setenv("XFUSION_NUM_THREADS", bad)
    with pytest.raises(ValueError, match="XFUSION_NUM_THREADS must be a whole number"):
        threads.num_threads()
    monkeypatch.setenv("XFUSION_NUM_THREADS", " 3 ")
    assert threads.num_threads() == 3


def test_a_background_job_runs_beside_the_caller_and_hands_back_its_result_or_error(monkeypatch):
    """:func:`xfusion.threads.background` (session 62: plain RL's half-data run beside the k ladder): with two
    threads the call runs on its own thread, in the caller's context (NumPy's error state travels along), and
    :meth:`Job.result` gives its value or raises its error; with one thread nothing runs until the result is asked
    for, in the caller's thread."""
    monkeypatch.setenv("XFUSION_NUM_THREADS", "2")
    seen = []

    def add(a, b=0):
        seen.append(threading.current_thread().name)
        return a + b

    assert threads.background(add, 2, b=3).result() == 5 and seen == ["xfusion-background"]

    def bad():
        raise ValueError("job failed")

    with pytest.raises(ValueError, match="job failed"):
        threads.background(bad).result()
    with np.errstate(divide="raise"):
        job = threads.background(lambda: np.float64(1.0) / np.float64(0.0))
    with pytest.raises(FloatingPointError):
        job.result()
    monkeypatch.setenv("XFUSION_NUM_THREADS", "1")
    seen.clear()
    job = threads.background(add, 1)
    assert seen == []  # not started
    assert job.result() == 1 and seen == [threading.current_thread().name]


def test_a_cancelled_background_loop_stops_at_its_next_check(monkeypatch):
    """A job whose result is no longer wanted (the tuning failed under it) stops at its next
    :func:`~xfusion.threads.check_cancelled`; :meth:`Job.cancel` returns once its thread has ended."""
    import time

    monkeypatch.setenv("XFUSION_NUM_THREADS", "2")
    started, laps = threading.Event(), [0]

    def loop():
        started.set()
        while True:
            threads.check_cancelled()
            laps[0] += 1
            time.sleep(0.001)

    job = threads.background(loop)
    assert started.wait(10)
    job.cancel()
    assert not job._thread.is_alive() and laps[0] >= 1
    with pytest.raises(threads.Cancelled):
        job.result()
    threads.check_cancelled()  # the caller's own thread runs no job: nothing to do
    monkeypatch.setenv("XFUSION_NUM_THREADS", "1")
    never = threads.background(loop)
    never.cancel()  # not started: it never runs
    with pytest.raises(threads.Cancelled):
        never.result()
