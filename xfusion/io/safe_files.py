"""Writing files without destroying what xfusion did not create (DESIGN section 9).

* :func:`writable_folder`: create a folder if needed and check that a file can be written in it (a hidden probe,
  written and removed), before any computing.
* :func:`write_via_temporary`: write a file to a hidden temporary sibling ``.NAME.xfusion-tmp-PID[.suffix]`` and
  rename it onto the path only when complete, so a killed write never leaves a truncated file (or an emptied old
  one) at the path. A file already at the temporary name is not xfusion's: refused, never overwritten or removed;
  only the temporary file this call created is removed if the write fails.

Whether the path itself may be replaced (only files xfusion wrote and marked) is the caller's check (e.g.
:func:`xfusion.io.fits_output.check_fits_output`, :func:`xfusion.plot.save_png`, the CLI's ``--overwrite``).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


def writable_folder(folder, tag=""):
    """Create ``folder`` (and its parents) if needed and check that a file can be written in it, by writing and
    removing a hidden probe ``.{tag}xfusion-probe-PID``; raises OSError otherwise."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".{tag}xfusion-probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def write_via_temporary(path, write):
    """``write(tmp)`` writes the file at ``tmp`` (a hidden sibling of ``path`` keeping its suffix: writers that choose
    a format by extension, e.g. astropy's ``.gz``, see it); then ``tmp`` is renamed onto ``path``. Returns ``path``
    as a ``Path``."""
    p = Path(path)
    tmp = p.with_name(f".{p.stem}.xfusion-tmp-{os.getpid()}{p.suffix}")
    if tmp.exists() or tmp.is_symlink():
        raise FileExistsError(f"{str(tmp)!r} is in the way of writing {str(p)!r} (xfusion's temporary name, but not "
                              "a file this run created): move it away")
    try:
        write(tmp)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)  # only ours: refused above if it was there before
    return p


@contextlib.contextmanager
def signals_deferred():
    """Defer SIGINT and SIGTERM (main thread only) until the block ends, then deliver the first one.

    A checkpoint commit or a store's write must not be cut inside Zarr's asynchronous writer (its
    pending chunk writes go on in Zarr's thread and can recreate a folder the cleanup just removed:
    session 29, a replica store left an unmarked ``.replica_00001.xfusion-tmp`` that blocked every
    later run): the first signal is recorded and re-delivered to the previous handler after the
    block (so Ctrl-C still stops the run, right after a consistent write); a second signal during the
    block is delivered at once.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in sigs}

    def record(signum, frame):
        if pending:  # second signal: do not wait any longer
            _deliver(previous[signum], signum, frame)
        pending.append((signum, frame))

    for s in sigs:
        signal.signal(s, record)
    try:
        yield
    finally:
        for s in sigs:
            signal.signal(s, previous[s])
    if pending:
        _deliver(previous[pending[0][0]], *pending[0])


def _deliver(handler, signum, frame):
    import signal

    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL and signum == signal.SIGINT:
        raise KeyboardInterrupt
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
