"""The process's small thread pool: independent NumPy work (which releases the GIL) on the machine's cores.

In memory a fit runs one BLAS thread (:data:`xfusion.solvers.backend.BLAS_THREADS`: BLAS threads spin while they
wait, and cost a lot on a busy machine); the cores are used instead by splitting work into independent tasks that
run here, on threads that sleep while idle. The starlet transforms, the 2D-1D prior's thresholding, band medians
and line-step smoothing, the energy-dependent PSF and the dense spectral responses do so (session 56: the slowest
45x45x2400 held-out scene tuned and fused in 54.8-59.1 s instead of 83.5 s, the same cube to the bit).

Results do not depend on the number of threads: callers split their work into tasks by fixed sizes (never by the
thread count), every task writes its own part of the output, and sums across tasks are made in task order. Set the
environment variable ``XFUSION_NUM_THREADS`` to limit the threads (1: everything runs in the calling thread).
"""
from __future__ import annotations

import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor

#: below this many bytes of work, tasks run in the calling thread (a pool round trip costs tens of microseconds)
PARALLEL_MIN_BYTES = 1 << 21

_lock = threading.Lock()
#: one pool per worker count (at most 8 sizes), never shut down while the process runs: another thread may be
#: submitting to a pool at any time (replacing a pool of another size under it made its submit raise)
_pools: dict[int, ThreadPoolExecutor] = {}
_local = threading.local()


def num_threads() -> int:
    """Threads to use: ``XFUSION_NUM_THREADS`` when set (a whole number >= 1; anything else is a ``ValueError``
    saying so, rather than a setting silently ignored), else the CPUs this process may run on (at most 8)."""
    env = os.environ.get("XFUSION_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"the environment variable XFUSION_NUM_THREADS must be a whole number of threads >= 1 "
                             f"(1: no threads); got {env!r}. Set it to e.g. 2, or unset it to use the CPUs this "
                             "process may run on")
        return n
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _mark_worker():
    _local.worker = True


def pool(n: int) -> ThreadPoolExecutor:
    """The shared pool of ``n`` worker threads (created once per size; threads sleep between calls)."""
    with _lock:
        p = _pools.get(n)
        if p is None:
            p = _pools[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"xfusion-{n}",
                                               initializer=_mark_worker)
        return p


def run(tasks, nbytes: int) -> None:
    """Run the zero-argument callables ``tasks`` (each independent of the others), on the pool when there are two
    or more, ``nbytes`` (the work's size) reaches :data:`PARALLEL_MIN_BYTES` and :func:`num_threads` is above 1;
    else one after the other here. Each thread takes a contiguous group of tasks (neighbouring memory). A task
    that itself calls :func:`run` runs its tasks in its own thread (a worker waiting on the pool could deadlock
    it). The first exception of a task is raised here once every group has finished."""
    tasks = list(tasks)
    n = num_threads()
    if n == 1 or len(tasks) < 2 or nbytes < PARALLEL_MIN_BYTES or getattr(_local, "worker", False):
        for t in tasks:
            t()
        return
    n = min(n, len(tasks))
    groups = [tasks[i * len(tasks) // n:(i + 1) * len(tasks) // n] for i in range(n)]

    def work(group):
        for t in group:
            t()

    futures = [pool(n).submit(work, g) for g in groups]
    errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None:
            raise e


def spans(lo: int, hi: int, width: int):
    """``[lo, hi)`` cut into the fewest equal parts (to one) of at most ``width``: a list of ``(a, b)`` pairs that
    depends on its arguments only (tasks of fixed size, whatever the threads)."""
    n = max(1, -(-(hi - lo) // max(int(width), 1)))
    edges = [lo + i * (hi - lo) // n for i in range(n + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class Cancelled(Exception):
    """Raised inside a :func:`background` job whose result is no longer wanted (:meth:`Job.cancel`)."""


def check_cancelled() -> None:
    """Raise :class:`Cancelled` when the current thread runs a :func:`background` job that was cancelled (long
    loops call it once per iteration; elsewhere it does nothing)."""
    event = getattr(_local, "cancel", None)
    if event is not None and event.is_set():
        raise Cancelled("background job cancelled")


class Job:
    """A call running on its own thread (:func:`background`); :meth:`result` waits for it."""

    def __init__(self, fn, args, kwargs, start):
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._event = threading.Event()
        self._done, self._value, self._error = False, None, None
        self._thread = None
        if start:
            ctx = contextvars.copy_context()  # the caller's NumPy error state and other context travel along
            self._thread = threading.Thread(target=ctx.run, args=(self._body,), daemon=True,
                                            name="xfusion-background")
            self._thread.start()

    def _body(self):
        _local.cancel = self._event
        try:
            self._value = self._fn(*self._args, **self._kwargs)
        except BaseException as e:  # handed to the caller of result()
            self._error = e
        finally:
            _local.cancel = None

    def result(self):
        """The call's return value (its exception is raised here). Not started (one thread): runs it now, here."""
        if not self._done:
            if self._thread is None:
                self._body()
            else:
                self._thread.join()
            self._done = True
        if self._error is not None:
            raise self._error
        return self._value

    def cancel(self) -> None:
        """Ask the job to stop at its next :func:`check_cancelled` and wait for its thread (its result is then
        not available); nothing to do for a job that has finished or never started."""
        self._event.set()
        if self._thread is not None:
            self._thread.join()
        self._done = True
        if self._error is None and self._thread is None:
            self._error = Cancelled("background job cancelled before it ran")


def background(fn, *args, **kwargs) -> Job:
    """Start ``fn(*args, **kwargs)`` on its own thread and return its :class:`Job` (its :meth:`Job.result` waits).

    For two independent computations whose serial parts leave the cores idle: both submit their parallel work to the
    same pool (:func:`run`), so the cores are busier, and each gives the result it would give alone (every
    computation here is deterministic whatever the threads). With :func:`num_threads` 1 nothing runs until
    :meth:`Job.result` is called, in the caller's thread."""
    return Job(fn, args, kwargs, start=num_threads() > 1)
