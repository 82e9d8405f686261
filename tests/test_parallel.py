"""Dask paths: NumPy == Dask threads == LocalCluster, constant task graphs, worker loss, lazy output."""
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

import xfusion
from xfusion import parallel
from xfusion.checkpoints import describe

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def stores(tmp_path_factory, small_toy):
    x, y, _ = small_toy
    d = tmp_path_factory.mktemp("stores")
    xfusion.io.zarr.write(x, d / "x.zarr", chunks={"x": 6, "y": 6})
    xfusion.io.zarr.write(y, d / "y.zarr", chunks={"x": 2, "y": 2})
    return d / "x.zarr", d / "y.zarr"


def lazy(stores):
    return xfusion.io.zarr.open(stores[0], chunks={}), xfusion.io.zarr.open(stores[1], chunks={})


# ``cluster``: the session's 2-worker LocalCluster (tests/conftest.py); its client is not the default scheduler


# explicit settings: nothing is tuned (tests/test_dask_tuning.py covers "auto" on Dask-backed data);
# 12 iterations (25 before session 9; ~0.3 s each on the cluster): FISTA's momentum and line searches act from the
# second iteration on, and a block or halo error shows from the first
RUN = dict(regularization="lowrank_sobolev", progress=False, max_iter=12, tol=None, chunks=(6, 6), rank=10, mu=0.01)
#: settings given per regularization, so that nothing is tuned by thinning (tests/test_dask_tuning.py covers that)
PINNED = {"wavelet2d1d": {"k": 1.0, "n_scales_1d": 5, "null_space": "zero"}, "lowrank_sobolev": {}}


@pytest.fixture(scope="module")
def threads_run(stores):
    """RUN on the lazy stores with Dask's threads (a lazy result: its values are recomputed when read)."""
    return xfusion.fuse(*lazy(stores), **RUN)


def test_numpy_dask_and_cluster_agree(small_toy, stores, threads_run, cluster):
    x, y, _ = small_toy
    ref = xfusion.fuse(x, y, **{k: v for k, v in RUN.items() if k != "chunks"})
    xl, yl = lazy(stores)
    threads = threads_run
    assert threads.attrs["backend"] == "dask" and parallel.is_dask(threads.flux)
    dist = xfusion.fuse(xl, yl, client=cluster[1], **RUN)
    dist = cluster[1].compute(dist).result()  # its lazy variables live on that (non-default) client
    scale = float(np.abs(ref.flux.values).max())
    for r in (threads, dist):
        assert float(np.abs(r.flux.values - ref.flux.values).max()) / scale <= 1e-5
        np.testing.assert_allclose(r.model_spectral.values, ref.model_spectral.values, rtol=1e-4, atol=1e-3)


def test_auto_iterations_on_a_cluster_are_tuned_in_memory(small_toy, stores, cluster):
    """max_iter="auto" of plain RL with a (non-default) client: the lazy stores are computed on that client, thinned
    in this process, and the fit on the cluster equals the in-memory one (tests/test_dask_tuning.py: threads)."""
    x, y, _ = small_toy
    ref = xfusion.fuse(x, y, regularization="none", progress=False)
    dist = xfusion.fuse(*lazy(stores), regularization="none", progress=False, client=cluster[1])
    pr, pd = json.loads(ref.attrs["parameters"]), json.loads(dist.attrs["parameters"])
    assert pd["max_iter"] == pr["max_iter"] and pd["auto_tuning"]["choice"] == pr["auto_tuning"]["choice"]
    assert "tuned in memory" in pd["auto_tuning"]["in_memory"]
    dist = cluster[1].compute(dist).result()
    assert float(np.abs(dist.flux.values - ref.flux.values).max()) <= 1e-5 * float(ref.flux.max())


def test_tasks_per_iteration_constant(stores, monkeypatch):
    """Record the size of every graph the solver actually submits during a 20-iteration run."""
    xl, yl = lazy(stores)
    sizes = []
    original = parallel.DaskPoissonTerm.graph

    def recording(self, a, v, grad=True):
        g = original(self, a, v, grad)
        sizes.append((grad, len(dict(g.__dask_graph__()))))
        return g

    monkeypatch.setattr(parallel.DaskPoissonTerm, "graph", recording)
    xfusion.fuse(xl, yl, **dict(RUN, max_iter=20))
    for grad in (True, False):
        per_kind = {n for gr, n in sizes if gr == grad}
        assert len(per_kind) <= 2  # one size per data cube (X and Y), the same at every iteration
    assert len(sizes) >= 2 * 20  # both terms evaluated at least once per iteration


def test_lazy_result_written_chunk_by_chunk(threads_run, tmp_path):
    r = threads_run
    out = tmp_path / "fused.zarr"
    xfusion.io.zarr.write(r, out)
    back = xfusion.io.zarr.open(out)
    np.testing.assert_array_equal(back.flux.values, r.flux.values)
    assert back.attrs["backend"] == "dask"


def test_pixel_block_policy():
    bx, by = parallel.pixel_block((512, 512, 8192), 4, factor=4)
    assert bx % 4 == 0 and by % 4 == 0 and bx * by * 8192 * 4 <= 2 * parallel.TARGET_CHUNK_BYTES
    assert parallel.pixel_block((15, 15, 240), 4, factor=3) == (15, 15)
    # memory: 16 chunk-sized temporaries in 0.25 GB -> chunks of <= 16 MB
    b = parallel.pixel_block((256, 256, 4096), 4, 4, copies=16, memory=0.25e9)
    assert b[0] * b[1] * 4096 * 4 <= 0.25e9 / 16 and b[0] % 4 == 0 and 256 % b[0] == 0
    # kernels: a halo of 12 pixels asks for blocks of >= 48, a multiple of the factor
    b = parallel.pixel_block((300, 300, 4096), 4, 4, copies=16, memory=0.25e9, min_block=48)
    assert b[0] >= 48 and b[0] % 4 == 0


def test_task_memory_reads_the_cluster(cluster):
    per = [w["memory_limit"] / w["nthreads"] for w in cluster[1].scheduler_info()["workers"].values()]
    assert parallel.task_memory(cluster[1]) == pytest.approx(0.5 * min(per))
    assert parallel.task_memory() > 0  # this machine's available RAM per CPU


def test_fuse_picks_blocks_from_psf_and_memory(big_stores):
    """The automatic blocks of a lazy run respect the halo rule; chunks= overrides them."""
    x, y, px, py = big_stores
    xl, yl = xfusion.io.zarr.open(px, chunks={}), xfusion.io.zarr.open(py, chunks={})
    kw = dict(max_iter=1, tol=None, progress=False, regularization="wavelet2d1d", **PINNED["wavelet2d1d"])
    r = xfusion.fuse(xl, yl, **kw)
    assert r.flux.data.chunks[:2] == ((30,), (30,))  # 4 x PSF radius > 30 pixels: one block
    r = xfusion.fuse(xl, yl, chunks=(15, 15), **kw)
    assert r.flux.data.chunks[:2] == ((15, 15), (15, 15))


@pytest.fixture(scope="module")
def big_stores(tmp_path_factory):
    """A 30x30 toy so that 15-pixel blocks really exchange PSF and starlet halos."""
    x, y, _ = xfusion.toy.make("small", x={"shape": [30, 30]}, source={"radius_arcsec": 100.0})
    d = tmp_path_factory.mktemp("big")
    xfusion.io.zarr.write(x, d / "x.zarr", chunks={"x": 15, "y": 15})
    xfusion.io.zarr.write(y, d / "y.zarr", chunks={"x": 5, "y": 5})
    return x, y, d / "x.zarr", d / "y.zarr"


#: explicit 2D-1D settings and 4 iterations on the 30x30 toy (nothing tuned; see the comment of the first user)
BIG_KW = dict(progress=False, max_iter=4, tol=None, k=1.0, n_scales_1d=5, null_space="zero")


@pytest.fixture(scope="module")
def big_threads_run(big_stores):
    """BIG_KW on the lazy 30x30 stores in 15-pixel blocks with Dask's threads: the reference of the cluster run and of
    the worker-kill run (both take it as it is, the same blocks and tasks)."""
    _, _, px, py = big_stores
    return xfusion.fuse(xfusion.io.zarr.open(px, chunks={}), xfusion.io.zarr.open(py, chunks={}), chunks=(15, 15),
                        **BIG_KW)


def test_wavelet2d1d_numpy_dask_and_cluster_agree(big_stores, big_threads_run, cluster):
    x, y, px, py = big_stores
    # not "auto"; 4 iterations: the backends agree iteration by iteration (the objective of each is compared), and
    # a cluster iteration of this path costs ~0.5-1 s (~90 tasks since session 10; ~385 before)
    kw = BIG_KW
    ref = xfusion.fuse(x, y, **kw)
    xl, yl = xfusion.io.zarr.open(px, chunks={}), xfusion.io.zarr.open(py, chunks={})
    threads = big_threads_run
    dist = xfusion.fuse(xl, yl, chunks=(15, 15), client=cluster[1], **kw)
    assert parallel.is_dask(dist.flux)
    dist = cluster[1].compute(dist).result()  # its lazy variables live on that (non-default) client
    scale = float(np.abs(ref.flux.values).max())
    for r in (threads, dist):
        assert r.attrs["backend"] == "dask"
        assert float(np.abs(r.flux.values - ref.flux.values).max()) / scale <= 1e-5
        np.testing.assert_allclose(r.model_spatial.values, ref.model_spatial.values, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(r.objective.values, ref.objective.values, rtol=1e-3)


CLIENT_SCRIPT = """
import json, sys, time
import distributed, xfusion
px, py, ck, reg, n, pinned = sys.argv[1:7]
def slow(it, state):
    # 0.2 s per iteration; from iteration n - 1 on it waits for the kill, so the run can never finish first (the
    # last checkpoint before the kill is 4 or 6 < n, however loaded the machine) and n can stay small
    time.sleep(0.2 if it < int(n) - 1 else 600)
if __name__ == "__main__":
    # processes=False: scheduler and 2 workers are threads of this process (they write the checkpoint's blocks),
    # so the SIGKILL takes down client and cluster at one instant, as killing the process group of a
    # processes=True cluster did, without paying for 2 worker processes' start-up (~half this script's time)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                                  silence_logs=40) as c, distributed.Client(c) as client:
        x, y = xfusion.io.zarr.open(px, chunks={}), xfusion.io.zarr.open(py, chunks={})
        xfusion.fuse(x, y, regularization=reg, max_iter=int(n), tol=None, progress=False, chunks=(15, 15),
                     checkpoint=ck, checkpoint_every=2, callback=slow, client=client, **json.loads(pinned))
"""


#: iterations of the killed run: it is killed once iteration 4 is checkpointed and cannot pass iteration n - 1
#: (CLIENT_SCRIPT), so the resumed run always has 2 or 4 iterations left
N_KILLED = 8


@pytest.mark.parametrize("reg", ["wavelet2d1d", "lowrank_sobolev"])
def test_client_sigkill_on_a_cluster_then_resume(big_stores, cluster, tmp_path, reg, child_env):
    """SIGKILL of the client process of a LocalCluster run; resuming from its Zarr checkpoint on the session's
    cluster gives the cube of the uninterrupted run."""
    import subprocess
    import sys

    x, y, px, py = big_stores
    ck = tmp_path / "ck.zarr"
    script = tmp_path / "run.py"
    script.write_text(CLIENT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(px), str(py), str(ck), reg, str(N_KILLED),
                             json.dumps(PINNED[reg])],
                            start_new_session=True, env=child_env)
    try:
        t0 = time.time()
        while time.time() - t0 < 120:
            if (describe(ck) or {"iteration": 0})["iteration"] >= 4:
                break
            time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        try:  # anything the killed client started in its session
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL
    done = describe(ck)["iteration"]  # the committed state (a kill inside a commit is repaired on resume)
    assert 4 <= done < N_KILLED
    kw = dict(regularization=reg, max_iter=N_KILLED, tol=None, progress=False, chunks=(15, 15), **PINNED[reg])
    xl, yl = xfusion.io.zarr.open(px, chunks={}), xfusion.io.zarr.open(py, chunks={})
    seen = []
    resumed = xfusion.fuse(xl, yl, checkpoint=ck, checkpoint_every=2, resume=True, client=cluster[1],
                           callback=lambda it, st: seen.append(it), **kw)
    assert seen == list(range(done + 1, N_KILLED + 1))  # only the remaining iterations, from the checkpoint's + 1
    assert resumed.attrs["iterations"] == N_KILLED
    # the uninterrupted run with Dask's threads: the same blocks and tasks as on the cluster (measured: the same
    # bits for both regularizations), at a fraction of a cluster run's scheduling cost
    full = xfusion.fuse(xl, yl, **kw).flux.values
    a = cluster[1].compute(resumed.flux.data).result()
    assert float(np.abs(a - full).max()) / float(np.abs(full).max()) <= 1e-6


# ----------------------------------------------------------------------------- worker SIGKILL (last: see below)
# These two tests SIGKILL a worker of the session's cluster; its nanny starts a new worker process, which imports
# xfusion and compiles the Numba starlet kernels again on its first 2D-1D block (~7 s measured on this machine,
# session 33). They run after every other cluster test of this file, and the 2D-1D one before the low-rank one
# (whose path has no starlet), so that no later test of this file pays that compilation again.
def _kill_a_worker_mid_run(client, xl, yl, kw, at, pause, expected=None):
    """Run fuse on ``client``, SIGKILL one worker at iteration ``at``; return (result, threaded reference): the
    reference is ``expected`` (the flux of the same run with Dask's threads) when given, else it is run here."""
    expected = xfusion.fuse(xl, yl, **kw).flux.values if expected is None else expected
    client.wait_for_workers(2, timeout=60)
    pids = list(client.run(os.getpid).values())
    started = threading.Event()

    def slow(it, state):
        if it == at:
            started.set()
        time.sleep(pause)

    result = {}
    th = threading.Thread(target=lambda: result.setdefault("r", xfusion.fuse(xl, yl, client=client, callback=slow,
                                                                             **kw)))
    th.start()
    assert started.wait(120)
    os.kill(pids[0], signal.SIGKILL)
    th.join(300)
    assert not th.is_alive() and "r" in result
    return client.compute(result["r"].flux.data).result(), expected


def test_wavelet2d1d_worker_killed_mid_run_does_not_lose_it(big_stores, big_threads_run, cluster):
    """Full-cube path: the persisted iterate lives on the workers; a SIGKILLed worker's share is recomputed."""
    _, _, px, py = big_stores
    xl, yl = xfusion.io.zarr.open(px, chunks={}), xfusion.io.zarr.open(py, chunks={})
    # killed at iteration 2 of 4: iteration 3 recomputes the lost share, iteration 4 runs on the recovered state
    # (8 iterations, killed at 4, checked nothing more; each iteration after the loss costs ~2-4 s on the cluster);
    # the reference is the same run (BIG_KW, 15-pixel blocks) with Dask's threads
    kw = dict(BIG_KW, chunks=(15, 15))
    got, expected = _kill_a_worker_mid_run(cluster[1], xl, yl, kw, at=2, pause=0.2,
                                           expected=big_threads_run.flux.values)
    assert float(np.abs(got - expected).max()) / float(np.abs(expected).max()) <= 1e-5


def test_worker_killed_mid_run_does_not_lose_it(small_toy, stores, cluster):
    # 8 iterations, killed at 3: the iteration after the loss recomputes the lost blocks, 4 more run on the
    # recovered state (25 iterations before session 9 checked nothing more and cost ~0.4 s per cluster iteration)
    got, expected = _kill_a_worker_mid_run(cluster[1], *lazy(stores), dict(RUN, max_iter=8), at=3, pause=0.1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_randomized_basis_honours_explained():
    """Above COVARIANCE_MAX_CHANNELS the Dask path uses the randomized PCA: it picks r from ``explained`` like
    the covariance route (it used to ignore ``explained`` and keep ``rank``)."""
    import dask.array as da

    from xfusion.regularizers.lowrank import pca_basis, pca_basis_randomized, spectral_moments

    r = np.random.default_rng(0)
    sp = r.gamma(2, 1, (2000, 4)) @ r.random((4, 300)) + 0.01 * r.standard_normal((2000, 300))
    d = da.from_array(sp, chunks=(500, -1))
    for explained, n in ((0.9, 4), (0.999, 5)):
        exact = pca_basis(moments=spectral_moments(sp), explained=explained)
        fast = pca_basis_randomized(d, explained=explained)
        assert exact.shape == fast.shape == (n, 300)
        np.testing.assert_allclose(np.abs(exact[:3] @ fast[:3].T), np.eye(3), atol=1e-8)
    assert pca_basis_randomized(d, rank=3).shape == (3, 300)
    with pytest.raises(ValueError, match="rank= or explained="):
        pca_basis_randomized(d)


def test_a_result_whose_client_closed_is_refused_clearly(small_toy, tmp_path):
    """Session 29 (red team): a fuse(..., client=) result written or used as init= after its client closed failed
    inside Dask ("Missing dependency ('_rescaled-...', 0, 0, 0)"), and a closed client passed to fuse gave
    "IOLoop is closed". Now each names the closed client and the fix."""
    import distributed

    x, y, _ = small_toy
    kw = dict(regularization="wavelet2d1d", k=1.0, n_scales_1d=2, null_space="zero", max_iter=2, tol=None,
              progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                                  silence_logs=40) as c, distributed.Client(c) as client:
        r = xfusion.fuse(x, y, client=client, **kw)
        xfusion.io.zarr.write(r, tmp_path / "open.zarr", client=client)  # fine while the client is open
    with pytest.raises(ValueError, match="holds data computed on a Dask cluster whose client is now closed"):
        xfusion.io.zarr.write(r, tmp_path / "closed.zarr")
    assert not (tmp_path / "closed.zarr").exists()
    with pytest.raises(ValueError, match="init= holds data computed on a Dask cluster whose client is now closed"):
        xfusion.fuse(x, y, init=r, **kw)
    with pytest.raises(ValueError, match="the Dask client is closed: pass an open client"):
        xfusion.fuse(x, y, client=client, **kw)
    done = xfusion.io.zarr.open(tmp_path / "open.zarr")
    xfusion.fuse(x, y, init=done, **kw)  # the written result is a fine warm start


def test_ista_on_dask_says_what_to_do(small_toy):
    """Session 29 (red team): the refusal of method='ista' on Dask-backed data named no fix."""
    x, y, _ = small_toy
    with pytest.raises(NotImplementedError, match=r"method='em' \(got 'ista'\): use method='em'.*\.load\(\)"):
        xfusion.fuse(x.chunk(), y.chunk(), regularization="wavelet2d1d", method="ista", k=1.0, n_scales_1d=2,
                     null_space="zero", max_iter=2, tol=None, progress=False)
