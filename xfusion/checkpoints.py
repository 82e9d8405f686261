"""Checkpoint stores for :func:`xfusion.solvers.loop.run`: own their path, verified before use.

``fuse`` builds a :class:`ZarrCheckpoint` and hands it to the solver loop, which only calls
``open()``, ``load()``, ``save()`` and ``close()`` (``solvers/`` stays free of I/O).

On disk, a checkpoint at ``PATH`` is a Zarr v3 store plus three siblings, all created by xfusion:

* ``PATH`` -- the last committed state: the solver's state arrays (``state_*``), the objective
  history (``history_*``), a root attribute ``xfusion_checkpoint`` (format) written with the
  first metadata and a marker array ``xfusion_checkpoint`` (its own ``zarr.json``, a valid Zarr
  node), so that xfusion recognises its own stores, even partial ones or ones whose root
  metadata is damaged, and never touches anything else;
* ``PATH.tmp`` -- the next state while it is written; ``PATH.old`` -- the previous state for
  the instant between the two renames of a commit; ``PATH.lock`` -- the writer's lock.

**Commit.** A state is written to ``PATH.tmp``; once every chunk is on disk, the root attributes
get the manifest (iteration, fingerprint, scalars, per-array SHA-256 digests) with its own
SHA-256 and ``complete = 1``; then ``PATH -> PATH.old``, ``PATH.tmp -> PATH`` (atomic renames)
and ``PATH.old`` is removed. :meth:`ZarrCheckpoint.open` repairs whatever a kill at any instant
left: ``PATH.old`` next to ``PATH`` is removed; ``PATH.old`` without ``PATH`` is put back, or
replaced by a complete ``PATH.tmp``; an unfinished ``PATH.tmp`` is removed.

**Checksums.** Each state and history array is hashed chunk by chunk: a NumPy array as one
block, a Dask array block by block on its scheduler (the hashes travel, not the data), in the
same pass that writes it. The digest of a block is SHA-256 over its dtype, shape and C-order
bytes, so a flipped byte, a truncated or a missing chunk (read back as Zarr's fill value) does
not match. :meth:`ZarrCheckpoint.load` checks the marker, ``complete``, the manifest digest, the
fingerprint and every array digest before returning a state; any failure raises
:class:`CheckpointError` naming the store (never a raw ``JSONDecodeError``/``KeyError``).

**Lock.** ``PATH.lock`` is created with ``O_CREAT | O_EXCL`` and holds the writer's pid and host.
A lock whose pid is dead on this host (a killed run) is recovered; any other is an error naming
the holder. Two processes that find the same stale lock at the same instant may both recover it
(a narrow race, documented). The lock is :class:`xfusion.io.writer_lock.WriterLock`, shared with the
replica store of :func:`xfusion.uncertainty`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .io import zarr as xzarr
from .io.safe_files import signals_deferred, writable_folder
from .io.writer_lock import WriterLock
from .parallel import compute_many, is_dask

FORMAT = 1
MARKER_ATTR = "xfusion_checkpoint"
MARKER_ARRAY = "xfusion_checkpoint"


class CheckpointError(ValueError):
    """A checkpoint path xfusion refuses, or a stored state that fails verification."""


def _held(layout):
    """``layout`` (:func:`xfusion.fuse._layout`) in words: "in memory" or "on Dask in N block(s) (chunks ...)"."""
    if all(b != "dask" for b, _ in layout):
        return "in memory"
    parts = []
    for b, c in layout:
        if b == "dask":
            n = int(np.prod([len(x) for x in c]))
            parts.append(f"{n} Dask block(s) (chunks {tuple(tuple(x) for x in c)})")
        else:
            parts.append("in memory")
    return "on Dask: " + ", ".join(parts)


_FIX = "; it cannot be used: delete it (it was written by xfusion) or rerun without resume to start a new one"


# --------------------------------------------------------------------------- digests
def _block_sha(block) -> str:
    b = np.ascontiguousarray(block)
    h = hashlib.sha256(f"{b.dtype.str}{b.shape}".encode())
    h.update(memoryview(b).cast("B") if b.size else b"")
    return h.hexdigest()


def _digest_tasks(a):
    """Delayed per-block SHA-256 of a Dask array (C order of the block grid)."""
    import dask

    blocks = a.to_delayed().ravel()
    return [dask.delayed(_block_sha, pure=True)(b) for b in blocks]


def array_digest(a, client=None) -> list:
    """SHA-256 digests of an array: ``[digest]`` for NumPy, one per block (C order) for Dask,
    computed where the blocks live (``client`` when given)."""
    if is_dask(a):
        return list(compute_many(_digest_tasks(a), client))
    return [_block_sha(np.asarray(a))]


# --------------------------------------------------------------------------- ownership
def _is_ours(p: Path) -> bool:
    """A store (or partial store) written by the checkpoint writer: marker file or marker attribute."""
    if not p.is_dir():
        return False
    if (p / MARKER_ARRAY / "zarr.json").is_file():
        return True
    try:
        meta = json.loads((p / "zarr.json").read_text())
        return MARKER_ATTR in (meta.get("attributes") or {})
    except (OSError, ValueError, AttributeError):
        return False


def _empty_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink() and not any(p.iterdir())


def _attrs(p: Path) -> dict:
    meta = json.loads((p / "zarr.json").read_text())
    attrs = meta.get("attributes")
    if not isinstance(attrs, dict):
        raise ValueError("root zarr.json has no attributes")
    return attrs


def describe(path):
    """``{"path", "iteration"}`` of the committed checkpoint at ``path`` (or of ``path.old`` when a
    kill interrupted a commit), or None if there is none: for messages (e.g. after Ctrl-C)."""
    for p in (Path(path), Path(f"{path}.old")):
        try:
            attrs = _attrs(p)
            if attrs.get("complete") == 1 and MARKER_ATTR in attrs:
                return {"path": os.fspath(path), "iteration": int(attrs["iteration"])}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


# --------------------------------------------------------------------------- the store
class ZarrCheckpoint:
    """Checkpoint store at ``path`` for the run identified by ``fingerprint``.

    The constructor refuses, before any computing: a path that is not a str/PathLike; a path
    that equals, lies inside or contains one of ``protect`` (the input stores, the output); an
    existing file or folder at ``path`` (or ``path.tmp`` / ``path.old``) not written by this
    writer (an empty folder is accepted); a symbolic link at any of them; a parent folder that cannot be written.
    """

    def __init__(self, path, fingerprint="", *, protect=()):
        if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise TypeError(f"checkpoint must be a path (str or os.PathLike) to a Zarr store; got {path!r}")
        self.path = Path(os.path.abspath(os.fspath(path)))
        self.given = os.fspath(path)
        self.fingerprint = fingerprint
        #: identity of the request (inputs and arguments as given, "auto" unresolved) and the settings "auto" chose
        #: for it, kept in the manifest so that a resumed run reuses them instead of tuning again (``fuse``)
        self.request, self.choice = "", None
        #: digest of the observations as given (:func:`xfusion.fuse`) and the settings of the run (JSON, without
        #: ``max_iter``), kept in the manifest so that a resume with other inputs or settings is refused before any
        #: computing (:meth:`committed_manifest`), not only by the fingerprint once the run is set up
        self.inputs, self.settings = "", None
        #: fingerprints also accepted (those earlier versions computed for the same run, ``fuse``); how the counts
        #: were held (:func:`xfusion.fuse._layout`) and their digests, kept in the manifest to say why a fingerprint
        #: differs; the warm start's record (``init``, not in the fingerprint: a resume takes precedence over it),
        #: replaced by the checkpoint's on :meth:`load`
        self.accepted, self.layout, self.counts, self.init = set(), None, None, None
        self.tmp, self.old, self.lock = (Path(f"{self.path}{s}") for s in (".tmp", ".old", ".lock"))
        self._lock = WriterLock(self.lock, f"checkpoint {self.given!r}", CheckpointError)
        for src in protect:
            if xzarr.overlaps(self.path, src):
                raise CheckpointError(f"checkpoint {self.given!r} is, contains or lies inside {os.fspath(src)!r} "
                                      "(an input or the output); a checkpoint store is replaced at every commit: "
                                      "choose another path")
        self._check_owned()
        try:
            writable_folder(self.path.parent, self.path.name + ".")
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {self.given!r}: folder {str(self.path.parent)!r} is not "
                                  f"writable ({exc.strerror or exc})") from exc

    def __str__(self):
        return self.given

    def __repr__(self):
        return f"ZarrCheckpoint({self.given!r})"

    def _check_owned(self):
        for p in (self.path, self.tmp, self.old):
            if p.is_symlink():  # a commit renames and removes these paths: it would act on the link, not its target
                raise CheckpointError(
                    f"checkpoint {self.given!r}: {str(p)!r} is a symbolic link (to {os.readlink(p)!r}); xfusion does "
                    "not write checkpoints through links: pass the real path instead. Nothing was changed")
            if (p.exists() or p.is_symlink()) and not (_is_ours(p) or _empty_dir(p)):
                kind = "a file" if not p.is_dir() else "a folder"
                raise CheckpointError(
                    f"checkpoint {self.given!r}: {str(p)!r} exists and is {kind} not written by xfusion's checkpoint "
                    f"writer (no {MARKER_ATTR!r} marker); xfusion never replaces it: choose a new checkpoint path "
                    "or move it away yourself")

    # ---------------------------------------------------------------- protocol used by loop.run
    def open(self):
        """Take the lock and repair what a kill left (see the module notes)."""
        self._check_owned()
        self._lock.acquire()
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    def close(self):
        """Release the lock (only if this object holds it)."""
        self._lock.release()

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    def _recover(self):
        if self.old.exists():
            if self.path.exists():
                self._remove_ours(self.old)  # killed after the commit's second rename
            elif self.tmp.exists() and self._complete(self.tmp):
                os.replace(self.tmp, self.path)  # killed between the two renames, new state complete
                self._remove_ours(self.old)
            else:
                os.replace(self.old, self.path)
        if self.tmp.exists():
            self._remove_ours(self.tmp)  # an unfinished write

    def _remove_ours(self, p):
        """Delete ``p`` (a ``.tmp``/``.old`` sibling) only if this writer made it: an empty folder or a
        store carrying the checkpoint marker; anything else is refused, never deleted."""
        if not (_is_ours(p) or _empty_dir(p)):  # the constructor's rule, checked again under the lock
            raise CheckpointError(f"{str(p)!r} is in the way of checkpoint {str(self.path)!r} and was not written "
                                  "by xfusion's checkpoint writer; move it away (xfusion deletes only its own files)")
        xzarr.remove_marked(p)

    @staticmethod
    def _complete(p):
        try:
            return _attrs(p).get("complete") == 1
        except (OSError, ValueError):
            return False

    def exists(self):
        return self.path.exists()

    def stored_choice(self, request):
        """The settings "auto" chose in the run that wrote this checkpoint (the dict given as ``choice``), if its
        manifest is intact and records the same request (``request()``: its digest, computed only when the store
        holds a choice); else None (no store, an older or damaged one, another request: :meth:`load` reports what
        is wrong with a store when the run resumes)."""
        for p in (self.path, self.old):  # the old state stands in for a commit a kill interrupted
            try:
                attrs = _attrs(p)
                manifest = attrs.get("manifest")
                if (attrs.get("complete") != 1 or not isinstance(manifest, str)
                        or hashlib.sha256(manifest.encode()).hexdigest() != attrs.get("manifest_sha256")):
                    continue
                stored = json.loads(manifest)
            except (OSError, ValueError, TypeError):
                continue
            if isinstance(stored.get("choice"), dict) and stored.get("request") == request():
                return stored["choice"]
            return None
        return None

    def committed_manifest(self):
        """The verified manifest (dict) of the committed state -- at the path, or at ``PATH.old`` when a kill
        interrupted a commit -- or None if there is none (nothing, or an empty folder, at both). Raises
        :class:`CheckpointError` for a store that is not a complete checkpoint of xfusion with an intact manifest.
        Reads only the root metadata (no array): for the checks before any computing (``fuse(..., resume=...)``);
        :meth:`load` verifies the arrays too."""
        for p in (self.path, self.old):
            if p.exists() and not _empty_dir(p):
                return self._manifest(p)[0]
        return None

    def _manifest(self, p):
        """``(manifest dict, its JSON text)`` of the store ``p`` after checking marker, completeness and checksum."""
        where = f"checkpoint {self.given!r}"
        if not _is_ours(p):
            raise CheckpointError(f"{where} was not written by xfusion's checkpoint writer" + _FIX)
        try:
            attrs = _attrs(p)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{where} has unreadable metadata (zarr.json: {exc})" + _FIX) from exc
        if attrs.get("complete") != 1:
            raise CheckpointError(f"{where} is incomplete (its writer stopped before the end)" + _FIX)
        manifest_s = attrs.get("manifest")
        if not isinstance(manifest_s, str) or \
                hashlib.sha256(manifest_s.encode()).hexdigest() != attrs.get("manifest_sha256"):
            raise CheckpointError(f"{where} has a missing or altered manifest (checksum mismatch)" + _FIX)
        try:
            manifest = json.loads(manifest_s)
            if not isinstance(manifest, dict):
                raise TypeError("not a JSON object")
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{where} has an unreadable manifest ({type(exc).__name__}: {exc})" + _FIX) from exc
        return manifest, manifest_s

    def save(self, state, history, iteration, client=None):
        """Write ``state`` (flat dict of NumPy arrays, Dask arrays and JSON scalars) and ``history``
        (name -> list of floats) as iteration ``iteration``, then commit by rename."""
        import xarray as xr

        data, lazy, scalars = {}, [], {}
        for k, v in state.items():
            if isinstance(v, np.ndarray):
                data[f"state_{k}"] = ([f"{k}_d{i}" for i in range(v.ndim)], v)
            elif is_dask(v):
                data[f"state_{k}"] = ([f"{k}_d{i}" for i in range(v.ndim)], xzarr.uniform_chunks(v))
                lazy.append(k)
            else:
                scalars[k] = v.item() if isinstance(v, np.generic) else v
        for k, v in history.items():
            data[f"history_{k}"] = (("iteration",), np.asarray(v, dtype=np.float64))
        data[MARKER_ARRAY] = ((), np.int8(FORMAT))
        ds = xr.Dataset(data, attrs={MARKER_ATTR: FORMAT, "complete": 0})
        # Ctrl-C / SIGTERM wait until the commit is done, so an interrupt never lands inside Zarr's
        # asynchronous writer (it left pending-task noise on stderr); a second signal is not deferred
        with signals_deferred():
            if self.tmp.exists():
                self._remove_ours(self.tmp)
            try:
                delayed = xzarr.store(ds, self.tmp, compute=False, marker={MARKER_ATTR: FORMAT})
                names = sorted(n for n in data if n != MARKER_ARRAY)
                tasks = [_digest_tasks(ds[n].data) if is_dask(ds[n].data) else None for n in names]
                flat = [t for ts in tasks if ts for t in ts]
                got = compute_many([delayed, *flat], client if lazy else None)[1:]
                digests, i = {}, 0
                for n, ts in zip(names, tasks):
                    if ts:
                        digests[n], i = got[i:i + len(ts)], i + len(ts)
                    else:
                        digests[n] = [_block_sha(ds[n].values)]
                arrays = {n: {"shape": list(ds[n].shape), "dtype": ds[n].dtype.str, "sha256": digests[n]}
                          for n in names}
                manifest = json.dumps({"format": FORMAT, "iteration": int(iteration), "fingerprint": self.fingerprint,
                                       "scalars": scalars, "dask_state": lazy, "arrays": arrays,
                                       "request": self.request, "choice": self.choice, "inputs": self.inputs,
                                       "settings": self.settings, "layout": self.layout,
                                       "counts_sha256": self.counts, "init": self.init}, sort_keys=True, default=str)
                import zarr

                zarr.open_group(os.fspath(self.tmp), mode="r+").attrs.update({
                    "iteration": int(iteration), "fingerprint": self.fingerprint, "scalars": json.dumps(scalars),
                    "dask_state": json.dumps(lazy), "manifest": manifest,
                    "manifest_sha256": hashlib.sha256(manifest.encode()).hexdigest(), "complete": 1})
            except BaseException:
                with contextlib.suppress(OSError):  # the write's own error is the one to report
                    xzarr.remove_marked(self.tmp, missing_ok=True)
                raise
            if self.path.exists():
                if self.old.exists():
                    self._remove_ours(self.old)
                os.replace(self.path, self.old)
            os.replace(self.tmp, self.path)
            xzarr.remove_marked(self.old, missing_ok=True)

    def load(self, client=None):
        """The verified ``(state, history, iteration)`` stored at the path, or None if there is none.

        NumPy state arrays are loaded; Dask state arrays are read lazily with their stored chunks
        (their digests are checked by one read pass on ``client``): the solver must consume them
        before the next :meth:`save` replaces the store.
        """
        if not self.path.exists() or _empty_dir(self.path):
            return None
        where, fix = f"checkpoint {self.given!r}", _FIX
        manifest, _ = self._manifest(self.path)
        try:
            arrays, iteration = manifest["arrays"], int(manifest["iteration"])
            scalars, lazy = dict(manifest["scalars"]), set(manifest["dask_state"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{where} has an unreadable manifest ({type(exc).__name__}: {exc})" + fix) from exc
        if manifest.get("fingerprint") != self.fingerprint and manifest.get("fingerprint") not in self.accepted:
            raise CheckpointError(self._mismatch(manifest, where))
        if manifest.get("init") is not None:  # the run continued is the warm-started one
            self.init = manifest["init"]
        import xarray as xr

        try:
            ds = xr.open_zarr(os.fspath(self.path), consolidated=False, chunks={})
            state, history, checks = {}, {}, []
            for n, meta in arrays.items():
                if n not in ds:
                    raise CheckpointError(f"{where}: array {n!r} is missing" + fix)
                v = ds[n]
                if list(v.shape) != meta["shape"] or v.dtype.str != meta["dtype"]:
                    raise CheckpointError(f"{where}: array {n!r} has shape {v.shape} / dtype {v.dtype}, the manifest "
                                          f"says {tuple(meta['shape'])} / {meta['dtype']}" + fix)
                name = n.split("_", 1)[1]
                if n.startswith("state_") and name in lazy:
                    checks.append((n, v.data, meta["sha256"]))
                    state[name] = v.data
                else:
                    values = np.ascontiguousarray(v.values)
                    self._verify(n, [_block_sha(values)], meta["sha256"], where, fix)
                    if n.startswith("state_"):
                        state[name] = values
                    else:
                        history[name] = [float(x) for x in values]
            if checks:
                got = compute_many([t for _, a, _ in checks for t in _digest_tasks(a)], client)
                i = 0
                for n, a, expected in checks:
                    m = len(a.to_delayed().ravel())
                    self._verify(n, got[i:i + m], expected, where, fix)
                    i += m
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged store
            raise CheckpointError(f"{where} cannot be read ({type(exc).__name__}: {exc})" + fix) from exc
        state.update(scalars)
        return state, history, iteration

    def _mismatch(self, manifest, where):
        """Why the manifest's fingerprint is not this run's, as far as the manifest tells: the settings, the inputs,
        the backend and Dask blocks of the counts (their digests are per block), the counts' values."""
        stored = manifest.get("settings")
        if isinstance(stored, dict) and isinstance(self.settings, dict):
            diff = sorted(k for k in set(stored) | set(self.settings) if stored.get(k) != self.settings.get(k))
            if diff:
                shown = "; ".join(f"{k}={stored.get(k)!r} there, {k}={self.settings.get(k)!r} now" for k in diff)
                return (f"{where} was written by a run with other settings: {shown}; use the same settings to resume "
                        "(only max_iter may change), or start a new run (without resume, or another checkpoint path)")
        if manifest.get("inputs") and self.inputs and manifest["inputs"] != self.inputs:
            return (f"{where} was written by a run with different inputs (masks, exposures, areas, PSFs, responses, "
                    "their attributes or the counts' dims, shape or dtype); delete it or use the same inputs to resume")
        there = manifest.get("layout")
        if self.layout is not None:
            if there is None:  # an older manifest: only whether its state was on Dask
                was, now = bool(manifest.get("dask_state")), any(b == "dask" for b, _ in self.layout)
                moved = was != now
                there_s = "on Dask" if was else "in memory"
            else:
                moved, there_s = there != self.layout, _held(there)
            if moved:
                chunks = (stored or {}).get("chunks")
                return (f"{where} was written with the counts {there_s}; they are {_held(self.layout)} now. The "
                        "counts' checksums are taken per Dask block, so a checkpoint resumes on the backend and pixel "
                        "blocks it was written with: pass the observations as then (in memory, or on Dask: "
                        f".chunk()) with the same chunks= option (chunks={chunks!r} there), or start a new run")
        if manifest.get("counts_sha256") is not None and self.counts is not None \
                and manifest["counts_sha256"] != self.counts:
            return (f"{where} was written by a run with different inputs: the counts differ (their checksums); delete "
                    "it or use the same observations to resume")
        return (f"{where} was written by a run with different inputs or parameters (counts, masks, exposures, "
                "areas, PSFs, responses or options other than max_iter; for a checkpoint written by an earlier "
                "xfusion version also the warm start init= and the counts' backend and Dask blocks); delete it or use "
                "the same inputs and settings to resume")

    @staticmethod
    def _verify(name, got, expected, where, fix):
        if len(got) != len(expected):
            raise CheckpointError(f"{where}: array {name!r} has {len(got)} chunks, the manifest lists "
                                  f"{len(expected)}" + fix)
        bad = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
        if bad:
            raise CheckpointError(f"{where}: array {name!r} fails its checksum in chunk(s) {bad[:5]} (missing, "
                                  "truncated or altered data)" + fix)
