"""One writer at a time: the lock file ``PATH.lock`` of a store xfusion writes in several steps.

Used by the checkpoints (:class:`xfusion.checkpoints.ZarrCheckpoint`) and the replica store of
:func:`xfusion.uncertainty`. The lock file is created with ``O_CREAT | O_EXCL`` and holds the writer's pid and host
(JSON). A lock whose pid is dead on this host (a killed run) is recovered; a half-written one (empty, or cut inside
that JSON) older than :data:`LOCK_GRACE_S` is recovered too; any other lock is an error naming the holder (its pid
and host, or "an unknown process"); a file at the lock's name that is not an xfusion lock is refused, never removed.
The holder's own process counts as alive: a second writer in the same process is refused as well. Two processes that
find the same stale lock at the same instant may both recover it (a narrow race, documented).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

#: seconds after which an unreadable (half-written) lock file counts as stale
LOCK_GRACE_S = 10.0


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` runs on this host (this process included, or it exists but is not ours)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriterLock:
    """The lock file ``path`` of the store described by ``what`` (e.g. ``"checkpoint 'ck.zarr'"``, the start of every
    message); ``error``: the exception class raised when the lock is held by another writer.

    :meth:`acquire` takes it (or raises), :meth:`release` removes it if this process holds it; also a context
    manager."""

    def __init__(self, path, what, error=ValueError):
        self.path = Path(path)
        self.what = what
        self.error = error
        self.held = False

    def acquire(self):
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None and not self._half_written():  # someone's file at our lock's name: never removed
                    raise self.error(f"{self.what}: {str(self.path)!r} exists and is not an xfusion lock file; "
                                     "xfusion does not remove it: move it away (or choose another path)") from None
                if holder is None or holder.get("host") != me["host"] or pid_alive(int(holder["pid"])):
                    who = "an unknown process" if holder is None else f"process {holder['pid']} on {holder['host']}"
                    if holder is None and time.time() - self._mtime() > LOCK_GRACE_S:
                        self._unlink()
                        continue
                    raise self.error(
                        f"{self.what} is in use by {who} (lock file {str(self.path)!r}); wait for that run to finish, "
                        "or, if it is gone, delete the lock file") from None
                self._unlink()  # a killed run on this host: its lock is stale
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
                self.held = True
            except BaseException:  # e.g. Ctrl-C between creating and filling it: leave no half-written lock
                self._unlink()
                raise
            return
        raise self.error(f"{self.what}: could not take the lock {str(self.path)!r}")

    def release(self):
        """Remove the lock file if this object holds it (and it still names this process)."""
        if self.held:
            h = self.holder()
            if h is not None and h.get("pid") == os.getpid():
                self._unlink()
            self.held = False

    def holder(self):
        """The lock file's ``{"pid", "host", "since"}``, or None if it is missing or unreadable."""
        try:
            h = json.loads(self.path.read_text())
            return h if isinstance(h, dict) and isinstance(h.get("pid"), int) and "host" in h else None
        except (OSError, ValueError):
            return None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def _half_written(self):
        """Whether an unreadable lock file is one of ours cut short (created with O_EXCL, killed before or while
        ``json.dump`` wrote ``{"pid": ...``): empty, or a prefix of that text."""
        try:
            head = self.path.read_bytes()[:8]
        except OSError:
            return True  # gone meanwhile: nothing to remove
        return b'{"pid": '.startswith(head) or head.startswith(b'{"pid": ')

    def _mtime(self):
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    def _unlink(self):
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
