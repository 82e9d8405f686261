import collections
import importlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import pytest

from xfusion import toy

#: real instrument files, ``../shared/data`` relative to the repository root
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: set to 1 to let the real-file tests skip (e.g. a checkout without the data); otherwise they FAIL
ALLOW_MISSING_ENV = "XFUSION_ALLOW_MISSING_DATA"


def missing_data_allowed():
    return os.environ.get(ALLOW_MISSING_ENV, "") == "1"


def _missing_message(what):
    return (f"real instrument data {what} not found (expected ../shared/data relative to the repository root, "
            f"i.e. {SHARED_DATA}). Put the files there, or set {ALLOW_MISSING_ENV}=1 to skip the real-file tests "
            "knowingly.")


def require_data(*paths):
    """Fail (or skip when ``XFUSION_ALLOW_MISSING_DATA=1``) unless every path exists."""
    missing = [Path(p) for p in paths if not Path(p).exists()]
    if not SHARED_DATA.is_dir():
        missing = missing or [SHARED_DATA]
    if missing:
        msg = _missing_message(", ".join(p.name for p in missing))
        if missing_data_allowed():
            pytest.skip(msg)
        pytest.fail(msg, pytrace=False)


#: the test files that take longest, heaviest first (seconds of one process, ``--durations=0``, session 67: from 67 s
#: for test_parallel.py down to 4 s). ``python3 dev.py test`` hands whole files to two processes in the order of
#: collection (``--dist loadfile --no-loadscope-reorder``), so the longest go first and the short ones fill the end:
#: both processes finish within seconds of each other (longest first, not the default's most tests first)
SLOW_FILES = ("test_parallel.py", "test_faults_storage.py", "test_tuning.py", "test_cli.py", "test_fuse.py",
              "test_faults_inputs.py", "test_source_iter.py", "test_shape_prior.py", "test_source_lines.py",
              "test_uncertainty.py", "test_parallel_em.py", "test_dask_tuning.py", "test_jwst.py", "test_mosaic.py",
              "test_output_safety.py", "test_adjoints.py", "test_suite_figure.py", "test_notebook.py",
              "test_independent_model.py", "test_plot.py", "test_io_files.py", "test_heap.py", "test_analysis.py")


def pytest_collection_modifyitems(config, items):
    """The files of :data:`SLOW_FILES` first, in its order; the others after them as collected (a stable sort: the
    tests of a file keep their order)."""
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))


@pytest.fixture(autouse=True, scope="session")
def _starlet_kernels_compiled():
    """Each test process compiles the Numba starlet kernels once, at its start. A user's process compiles them only
    after enough work (:data:`xfusion.regularizers.starlet_kernels.COMPILE_AFTER`: a short fit never pays it), but a
    test process runs hundreds of fits, so compiling first costs it least; the NumPy passes give the same numbers
    (tests/test_starlet_kernels.py checks both, and a fit that switches from one to the other part way)."""
    from xfusion.regularizers import starlet_kernels

    starlet_kernels.warm()


#: the benchmark scripts, importable by :func:`bench_module`
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def bench_module(monkeypatch):
    """``bench_module("line_stealing")`` imports ``benchmarks/line_stealing.py``; every module it brought in from
    ``benchmarks/`` is dropped again after the test (they are scripts, not a package)."""
    monkeypatch.syspath_prepend(str(BENCH))
    before = set(sys.modules)
    yield importlib.import_module
    for name in set(sys.modules) - before:
        if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(BENCH)):
            sys.modules.pop(name, None)


@pytest.fixture(scope="session")
def child_env():
    """The environment of the Python processes that the kill, lock and resume tests start, with Numba's starlet
    kernels off (``XFUSION_NUMBA=0``). A new process compiles them once its NumPy passes have done enough work (4-6 s
    of CPU; until session 63 on first use, which was most of each such test's time); these tests are about
    processes, locks and files, the NumPy passes give the kernels' numbers to the bit
    (tests/test_starlet_kernels.py), and this process keeps the kernels, so a resume across the two paths is checked
    too (the session cluster's workers run the NumPy passes as well: :func:`_start_cluster`)."""
    return dict(os.environ, XFUSION_NUMBA="0")


@pytest.fixture(scope="session")
def small_toy():
    return toy.make("small", seed=0)


@pytest.fixture(scope="session")
def gaussian_rebin_toy():
    """``toy.make("gaussian_rebin")`` (the paper's 45x45x2400 scene; drawing it costs ~2 s), made once for the
    tests that only read it (xfusion never modifies its inputs)."""
    return toy.make("gaussian_rebin")


class _Recent(logging.Handler):
    """The last distributed ERROR records of this process (the nannies and the scheduler of a LocalCluster log
    here), for the warning of :func:`cluster` when it replaces the cluster."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.lines = collections.deque(maxlen=8)

    def emit(self, record):
        self.lines.append(f"{record.name}: {record.getMessage()}"[:300])


_RECENT = _Recent()


#: distributed's own diagnostics, slowed for the session's cluster (session 76): an idle 2-worker LocalCluster with
#: distributed's defaults kept 17 % of a core busy (5.2 s of CPU in 30 s: the workers' statistical profiler every
#: 10 ms, the memory monitors every 100 ms, the system monitor every 500 ms, the event-loop tick every 20 ms), and
#: each test process holds its cluster for the whole run; with these, 0.6 s in 30 s. None of them is read by xfusion
#: or decides where a task runs (the kill tests' nannies still restart a killed worker; no test here sets a memory
#: limit on this cluster)
QUIET_CLUSTER = {"distributed.worker.profile.enabled": False, "distributed.admin.system-monitor.interval": "5s",
                 "distributed.admin.tick.interval": "500ms", "distributed.worker.memory.monitor-interval": "1s"}


def _start_cluster():
    import dask
    import distributed

    # the workers run the starlet's NumPy passes (XFUSION_NUMBA=0, see :func:`child_env`): a new worker process
    # compiles the Numba kernels on its first 2D-1D block (~7-15 s of CPU on this 2-core machine, the tests'
    # largest fixed cost), paid by both workers of each xdist process's cluster and again by every worker a kill
    # test's nanny restarts. The kernels give the NumPy passes' numbers to the bit (tests/test_starlet_kernels.py),
    # so every cluster result is still compared with this process's kernel path at the same tolerance, which now
    # checks the two paths against each other as well.
    with dask.config.set(QUIET_CLUSTER):  # read by the scheduler, the nannies and (passed on) their workers
        c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                     silence_logs=40, env={"XFUSION_NUMBA": "0"})
    log = logging.getLogger("distributed")
    if _RECENT not in log.handlers:  # added after the start: silence_logs mutes the handlers present then
        log.addHandler(_RECENT)
    return c, distributed.Client(c, set_as_default=False)


@pytest.fixture(scope="session")
def local_cluster():
    """``{"pair": (cluster, client)}``: ONE real 2-worker ``distributed.LocalCluster`` (processes) for the whole
    session, shared by the Dask tests (starting one costs seconds: two Python processes importing the stack). The
    client is not the default scheduler, so tests without ``client=`` really use Dask's threads. A test that
    kills a worker leaves the nanny to restart it; tests wait for both workers before use (:func:`cluster`)."""
    pytest.importorskip("distributed")
    holder = {"pair": _start_cluster()}
    yield holder
    c, client = holder["pair"]
    client.close()
    c.close()


def _stopped_nannies(c):
    """Names of the cluster's nannies that closed (a nanny whose worker restart failed closes itself and never
    starts another worker; its error is logged at ERROR level, hidden here by silence_logs=40)."""
    from distributed.core import Status

    return [n for n, w in c.workers.items() if w.status in (Status.closing, Status.closed, Status.failed)]


@pytest.fixture
def cluster(local_cluster):
    """``(cluster, client)``: the session's LocalCluster with both workers up (a worker killed by an earlier test is
    back), or a new one as soon as a nanny is seen closed (or after 30 s)."""
    c, client = local_cluster["pair"]
    # seen in CI runs (`dev.py test`: -n 2 --dist loadfile) of sessions 26 (3 of 4) and 27: after test_parallel's
    # kill tests the SIGKILLed worker did not come back (session 27: its nanny not closed, no distributed ERROR
    # logged, 1 of 2 workers up after 60 s); never with test_parallel.py alone, nor in 5 full runs with -n 2 and
    # the default distribution. A restart takes 0.6-1.3 s (session 27 logs), so 30 s means it will not come.
    deadline = time.monotonic() + 30
    while True:
        try:
            client.wait_for_workers(2, timeout=1)
            return local_cluster["pair"]
        except TimeoutError:
            stopped = _stopped_nannies(c)
            if stopped or time.monotonic() > deadline:
                break
    states = {n: (str(w.status), getattr(w.process, "status", None) and str(w.process.status),
                  w.process is not None and w.process.is_alive()) for n, w in c.workers.items()}
    warnings.warn(f"session LocalCluster replaced: nannies {stopped} closed, "
                  f"{len(client.scheduler_info()['workers'])} of 2 workers up; nanny, worker process, alive: "
                  f"{states}; distributed's last errors: {list(_RECENT.lines) or 'none'}")
    client.close()
    c.close()
    local_cluster["pair"] = _start_cluster()
    local_cluster["pair"][1].wait_for_workers(2, timeout=120)
    return local_cluster["pair"]


@pytest.fixture(scope="session")
def shared_data():
    require_data(SHARED_DATA)
    return SHARED_DATA


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A real-file test that skips because ``../shared/data`` (or a file in it) is missing FAILS instead,
    unless ``XFUSION_ALLOW_MISSING_DATA=1``: CI without the data must go red, not silently green.

    Recognized by the skip reason naming the shared data directory (every real-file test's skip message
    does); other skips (optional packages, no Jupyter kernel) are left alone.
    """
    outcome = yield
    rep = outcome.get_result()
    if not rep.skipped or missing_data_allowed() or not isinstance(rep.longrepr, tuple):
        return
    reason = str(rep.longrepr[2])
    if str(SHARED_DATA) in reason or "shared/data" in reason:
        rep.outcome = "failed"
        rep.longrepr = (f"{reason}\n{_missing_message('files')} (this test skipped; {ALLOW_MISSING_ENV} is not set, "
                        "so the skip is reported as a failure)")
