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


#: the test files that take longest, heaviest first (seconds of one process, ``--durations=0`` of the suite without the
#: heavy tier drawn at 3 s, session 77: from 50 s for test_faults_storage.py down to 9 s). ``python3 dev.py test`` hands
#: whole files to two processes in the order of collection (``--dist loadfile --no-loadscope-reorder``), so the longest
#: go first and the short ones fill the end: both processes finish within seconds of each other (longest first, not
#: the default's most tests first)
SLOW_FILES = ("test_faults_storage.py", "test_tuning.py", "test_parallel.py", "test_fuse.py", "test_faults_inputs.py",
              "test_io_files.py", "test_output_safety.py", "test_uncertainty.py", "test_plot.py", "test_cli.py",
              "test_mosaic.py", "test_independent_model.py", "test_parallel_em.py", "test_source_lines.py",
              "test_jwst.py", "test_source_iter.py", "test_suite_figure.py", "test_shape_prior.py", "test_scenes.py")


#: The heavy tier (session 77): ``python3 dev.py test`` (the README's test command) leaves these out, ``python3 dev.py
#: test --heavy`` runs only them, and ``.ci/run`` runs both, the suite first. The rule: every test (each
#: parametrization on its own) that took >= 3 s of one process in session 77's ``--durations=0`` run of the whole suite,
#: except the ones the fast tier keeps as its only check of a standard or of an issue's must-show (below). Each entry
#: names its seconds then and what the suite still runs of the same property. The entries are the heavy measurements
#: (the default end to end on full-size toys and scenes, a benchmark's section), the tests that kill, interrupt or wait
#: on other processes and clusters, and the longer end-to-end checks of single rules. A stale entry (a test renamed or
#: removed) stops the collection. (First drawn at >= 5 s: the suite took 279.0 and 305.8 s in two fresh clones.)
HEAVY = {
    "test_fuse.py::test_default_on_gaussian_rebin_beats_baselines_and_best_richardson_lucy":
        "29.9 s: the default on the paper's 45x45 toy; kept: the selection within 1 dB of the oracle on 3 small "
        "scenes (test_tuning.py), the default against baselines on independently simulated data",
    "test_source_lines.py::test_fuse_source_lines_auto_against_none_on_a_point_source_sky":
        "25.4 s: the default on a point-source sky; kept: the line step's own tests and its one rule",
    "test_source_lines.py::test_a_default_run_with_the_floor_off_a_source_resumes_to_the_same_cube":
        "the same default fit as the entry above (its module fixture)",
    "test_source_lines.py::test_source_lines_on_dask_blocks_agree_with_memory": "5.1 s; kept: the other Dask agreements",
    "test_source_iter.py::test_the_default_runs_on_at_the_compact_sources_of_a_full_size_sky":
        "21.2 s: the default on a full-size sky; kept: the run-on on a small sky",
    "test_source_iter.py::test_run_on_on_dask_blocks_agrees_with_memory": "6.6 s; kept: the other Dask agreements",
    "test_parallel.py::test_client_sigkill_on_a_cluster_then_resume":
        "22.9 and 14.9 s: SIGKILL of a client process and its cluster; kept: test_fuse.py's SIGKILL and resume, "
        "the LocalCluster agreement",
    "test_parallel.py::test_worker_killed_mid_run_does_not_lose_it": "15.4 s: a cluster worker SIGKILLed",
    "test_parallel.py::test_wavelet2d1d_worker_killed_mid_run_does_not_lose_it": "7.0 s: the same with the 2D-1D prior",
    "test_parallel.py::test_wavelet2d1d_numpy_dask_and_cluster_agree":
        "7.0 s; kept: the same agreement with the low-rank prior",
    "test_faults_inputs.py::test_identical_runs_on_a_local_cluster_give_identical_bits":
        "9.6 s; kept: the LocalCluster agreement",
    "test_parallel_em.py::test_vignetted_area_background_and_masks_through_fuse_agree_and_stay_compact":
        "7.9 s (a cluster); kept: the same maths on Dask's threads",
    "test_parallel_em.py::test_local_cluster_agrees_and_checkpoints": "7.7 s; kept: the LocalCluster agreement",
    "test_uncertainty.py::test_one_writer_per_replica_store":
        "15.2 s: a second process's lock; kept: the store's second writer refused (test_faults_storage.py)",
    "test_faults_storage.py::test_interrupt_message_says_where_the_last_checkpoint_is":
        "11.2 s: two CLI processes interrupted; kept: test_fuse.py's SIGKILL and resume",
    "test_faults_storage.py::test_sigkill_inside_a_commit_then_resume":
        "7.2-8.0 s each: a process killed inside a checkpoint's commit; kept: test_fuse.py's SIGKILL and resume",
    "test_notebook.py::test_quickstart_executes": "14.6 s: a Jupyter kernel; kept: the notebook matches its script",
    "test_dask_tuning.py::test_a_mosaic_too_large_is_tuned_on_its_central_subfield":
        "13.6 s; kept: a pair too large for memory tuned on its central subfield",
    "test_cli.py::test_metrics_and_plot_round_trip": "13.5 s: five figures; kept: the summary figure (test_plot.py)",
    "test_cli.py::test_installed_executable_round_trip":
        "11.9 s: the console script in a process; kept: `python -m xfusion.cli` in a process",
    "test_cli.py::test_fuse_out_of_core_and_on_a_scheduler[scheduler]": "7.3 s: a scheduler process",
    "test_cli.py::test_fuse_out_of_core_and_on_a_scheduler[retained]": "6.8 s; kept: the same on Dask's threads",
    "test_cli.py::test_metrics_lists_every_input_and_detector_pixels": "5.5 s",
    "test_shape_prior.py::test_half_fit_is_the_iterate_the_count_was_transferred_from": "8.8 s",
    "test_shape_prior.py::test_auto_and_a_level_0_floor_in_one_fit": "7.8 s",
    "test_shape_prior.py::test_auto_chooses_the_shape_prior_by_thinning[19-long]":
        "6.2 s; kept: the two other scenes of the same test",
    "test_tuning.py::test_zeroed_prior_continuation_stops_once_its_count_is_the_cap": "8.5 s",
    "test_tuning.py::test_thresholded_candidate_run_stops_at_its_cap_read_at_call_time": "6.1 s",
    "test_tuning.py::test_k_walk_goes_past_8_only_while_deviance_and_sharp_spectral_squared_error_fall": "6.0 s",
    "test_suite_figure.py::test_operators_threads_section_runs_and_reports_the_same_numbers":
        "7.3 s: a benchmark's section on a full-size scene",
    # 3-5 s (added when the 5 s rule left the suite at 279-306 s)
    "test_analysis.py::test_gaussian_errors_from_variance_are_the_fits_own": "4.7 s; kept: the other error tests",
    "test_dask_tuning.py::test_auto_on_dask_backed_data_is_tuned_in_memory_and_matches_numpy[auto]":
        "4.6 s; kept: the same with plain RL's count",
    "test_shape_prior.py::test_auto_chooses_the_shape_prior_by_thinning[20-anchor]": "4.6 s; kept: [7-more]",
    "test_tuning.py::test_select_cuts_only_runs_that_cannot_change_the_choice": "4.4 s",
    "test_shape_prior.py::test_shape_prior_with_another_iteration_count_fits_half_the_counts": "4.4 s",
    "test_tuning.py::test_thresholded_candidate_waits_threshold_patience_past_its_minimum": "4.1 s",
    "test_jwst.py::test_general_fuse_takes_jwst_data_tunes_by_fission_and_bootstraps":
        "4.1 s; kept: the JWST readers, the CLI on pipeline files",
    "test_parallel.py::test_auto_iterations_on_a_cluster_are_tuned_in_memory": "4.1 s (a cluster)",
    "test_mosaic.py::test_cli_fuses_three_inputs_and_fingerprints_all_of_them": "4.1 s; kept: three inputs in memory",
    "test_layers.py::test_the_package_loads_its_parts_on_first_use":
        "4.1 s: fresh interpreters; kept: every import checked against the layers",
    "test_output_safety.py::test_a_second_writer_of_the_same_store_is_refused_and_the_first_completes":
        "4.0 s: a second process; kept: the checkpoint's second writer refused",
    "test_faults_storage.py::test_dask_result_with_small_chunks_is_written": "3.7 s",
    "test_mosaic.py::test_mosaic_tiles_on_dask_match_numpy": "3.6 s (a cluster); kept: tiles on NumPy",
    "test_shape_prior.py::test_a_run_with_a_level_0_floor_resumes_and_another_floor_is_refused": "3.5 s",
    "test_parallel_em.py::test_checkpoint_round_trip": "3.5 s; kept: the other checkpoint round trips",
    "test_faults_storage.py::test_a_checkpoint_written_on_dask_resumes_in_memory_and_back": "3.5 s",
    "test_spectral_band_factor.py::test_the_default_thresholds_the_spectral_bands_harder_on_a_continuum_sky":
        "3.5 s; kept: the factor's unit tests",
    "test_bottom_rung.py::test_a_line_sky_keeps_the_transferred_count": "3.4 s",
    "test_jwst.py::test_uncertainty_rebuilds_the_fits_observations_and_refuses_others": "3.2 s",
    "test_faults_inputs.py::test_a_path_or_a_repeated_observation_is_named": "3.2 s",
    "test_dask_tuning.py::test_four_inputs_on_dask_are_tuned_in_memory_like_numpy": "3.2 s",
    "test_export_fit.py::test_gammapy_fits_written_spectrum": "3.1 s; kept: the gammapy fit of an exported line",
}
#: tests of >= 3 s that the suite keeps (the rule above): its only check of a standard or of a must-show, or its one
#: quick check of the summary figure, of a rule or of the stored fresh sets; checked for staleness as :data:`HEAVY` is
KEPT_LONG = {
    "test_parallel.py::test_numpy_dask_and_cluster_agree": "a real LocalCluster (27.5 s, most of it its start)",
    "test_output_safety.py::test_plot_and_demo_refuse_user_files_and_input_stores": "never overwrite a user's file",
    "test_faults_storage.py::test_checkpoint_refuses_an_ordinary_folder_and_leaves_it_intact":
        "never delete a user's folder",
    "test_fuse.py::test_sigkill_then_resume": "a killed run resumes",
    "test_faults_storage.py::test_a_second_writer_is_refused_and_a_dead_ones_lock_recovered": "one writer per store",
    "test_plot.py::test_summary_png": "the summary figure",
    "test_tuning.py::test_selection_lands_within_1_db_of_the_oracle_setting": "issue 13's must-show, 3 small scenes",
    "test_source_iter.py::test_only_the_footprints_take_the_longer_run_and_the_total_is_kept":
        "the compact sources' run-on on a small sky",
    "test_shape_prior.py::test_auto_chooses_the_shape_prior_by_thinning[7-more]": "the shape prior chosen by thinning",
    "test_shape_cost.py::test_fresh_small_rows_read_back": "the fresh sets read back (its first draws the scene table)",
}


def _heavy_key(item):
    """The entry of :data:`HEAVY` that names ``item`` (by its name with parameters, else all its parametrizations)."""
    for key in (f"{item.path.name}::{item.name}", f"{item.path.name}::{item.originalname}"):
        if key in HEAVY:
            return key
    return None


@pytest.hookimpl(tryfirst=True)  # before -k and -m deselect: every test of a collected file is seen
def pytest_collection_modifyitems(config, items):
    """Mark the tests of :data:`HEAVY` ``heavy`` (when whole files are collected, an entry naming none of their tests
    stops the run); then the files of :data:`SLOW_FILES` first, in its order; the others after them as collected (a
    stable sort: the tests of a file keep their order)."""
    used, files = set(), {item.path.name for item in items}
    for item in items:
        key = _heavy_key(item)
        if key is not None:
            item.add_marker(pytest.mark.heavy)
            used.add(key)
        used.update((f"{item.path.name}::{item.originalname}", f"{item.path.name}::{item.name}"))  # KEPT_LONG
    stale = [k for k in (*HEAVY, *KEPT_LONG) if k.split("::")[0] in files and k not in used]
    if stale and not any("::" in str(a) for a in config.args):
        raise pytest.UsageError(f"tests/conftest.py HEAVY or KEPT_LONG names tests that were not collected: {stale}")
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))


#: a test of the suite (not heavy, not in :data:`KEPT_LONG`) whose call takes at least this many seconds is named at the
#: end of the run: a candidate for :data:`HEAVY` or for a smaller check. Only the call is counted: a process's first
#: test also pays the session's fixtures in its setup (the Numba kernels, 5-20 s). Timings vary with the machine's
#: load, so it is a note, not a failure
SUITE_NOTE_SECONDS = 8.0
_seconds: dict = collections.defaultdict(float)
_heavy_seen: set = set()


def pytest_runtest_logreport(report):
    """Each test's call seconds (with pytest-xdist the workers' reports reach the controller here too)."""
    if report.when == "call":
        _seconds[report.nodeid] += report.duration
    if "heavy" in report.keywords:
        _heavy_seen.add(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    """Name the suite's tests of :data:`SUITE_NOTE_SECONDS` or more (see there)."""
    long = []
    for nodeid, sec in _seconds.items():
        name = nodeid.split("/")[-1]
        if (sec >= SUITE_NOTE_SECONDS and nodeid not in _heavy_seen and name not in KEPT_LONG
                and name.split("[")[0] not in KEPT_LONG):
            long.append((sec, nodeid))
    if long:
        terminalreporter.write_sep("-", f"suite tests whose call took >= {SUITE_NOTE_SECONDS:.0f} s (tests/conftest.py HEAVY: "
                                        "move them to the heavy tier or make them smaller)")
        for sec, nodeid in sorted(long, reverse=True):
            terminalreporter.write_line(f"{sec:6.1f} s  {nodeid}")


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
