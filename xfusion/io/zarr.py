"""Zarr storage of observations and results (no pickle: arrays + JSON attributes).

Writing never destroys what xfusion did not create (DESIGN section 9):

* :func:`check_output` refuses, before any computing, an output path that is or lies inside
  an input store (or contains one), an existing file or non-Zarr folder, an existing Zarr
  store unless ``overwrite`` allows it, and a folder that cannot be written;
* :func:`write` writes to a hidden temporary sibling (``.NAME.xfusion-tmp``) and renames it
  onto ``path`` only when every chunk is written, so a killed write never leaves a store that
  looks complete at ``path``; the replaced store is removed only after the rename;
* one writer at a time: :func:`write` holds the lock file ``.NAME.xfusion-lock`` (a
  :class:`xfusion.io.writer_lock.WriterLock`) from its first check to the last rename, so a second
  process writing the same path is refused with an error naming the first one, and the temporary
  store of a live writer is never taken for a killed write's leftover and deleted;
* a store is replaced (``overwrite=True``) only if it holds nothing but what xfusion wrote there:
  the root attribute ``xfusion_entries`` records the names written (the variables, and the root
  ``zarr.json``); an array, folder or file added inside the store afterwards is named in the
  refusal, never deleted;
* a symbolic link is never written through, at ``path`` or at its temporary siblings: renaming
  and removing a link's target would reach another folder (the link's target could be emptied
  through the link); the real path must be given. Nothing is deleted in that case.

Every store written here carries the root attribute ``xfusion_store`` (the writer's version),
so xfusion can tell its own stores from the user's: only those are ever replaced.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import xarray as xr

from .safe_files import signals_deferred, writable_folder
from .writer_lock import WriterLock

#: root attribute marking a store written by :func:`write`
MARKER = "xfusion_store"
#: root attribute listing the top-level entries :func:`write` created (JSON list of names)
ENTRIES = "xfusion_entries"
_ZARR_FILES = ("zarr.json", ".zgroup", ".zarray")


class OutputError(ValueError):
    """An output path that xfusion refuses to write (it would destroy or hide someone's data)."""


def is_zarr_store(path) -> bool:
    """True if ``path`` is a folder with Zarr (v2 or v3) root metadata."""
    p = Path(path)
    return p.is_dir() and any((p / f).exists() for f in _ZARR_FILES)


def written_by_xfusion(path) -> bool:
    """True if ``path`` is a Zarr v3 store whose root attributes carry xfusion's marker."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
        return MARKER in (meta.get("attributes") or {})
    except (OSError, ValueError, AttributeError):
        return False


def foreign_entries(path) -> list:
    """Top-level entries of the xfusion store ``path`` that xfusion did not write: names not in its root attribute
    ``xfusion_entries`` (the variables :func:`write` wrote, and ``zarr.json``), except child stores that carry
    xfusion's own marker (e.g. the replicas of :func:`xfusion.uncertainty`). A store written before that attribute
    existed: every entry that is not a Zarr node (a file, a folder without ``zarr.json``) counts as foreign."""
    p = Path(path)
    try:
        attrs = json.loads((p / "zarr.json").read_text()).get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        attrs = {}
    recorded = attrs.get(ENTRIES)
    known = set(recorded) | {"zarr.json"} if isinstance(recorded, list) else None
    out = []
    for child in sorted(p.iterdir(), key=lambda c: c.name):
        if known is not None and child.name in known:
            continue
        if child.is_dir() and not child.is_symlink() and written_by_xfusion(child):
            continue
        if known is None and (child.name == "zarr.json" or (child.is_dir() and not child.is_symlink()
                                                              and (child / "zarr.json").is_file())):
            continue
        out.append(child.name)
    return out


def remove_marked(path, missing_ok=False):
    """Delete a store xfusion wrote and marked (the caller has checked the marker), its root ``zarr.json``
    -- which carries the marker -- LAST: a deletion killed mid-way leaves a folder that is still marked (or
    empty), so the next run can finish it instead of refusing a folder it cannot tell from a user's.
    A symbolic link is refused (:class:`OutputError`, nothing deleted): its target is not the store here."""
    p = Path(path)
    if p.is_symlink():
        raise OutputError(_link_message(p, "delete"))
    if not p.exists() and missing_ok:
        return
    for child in p.iterdir():
        if child.name == "zarr.json":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    (p / "zarr.json").unlink(missing_ok=True)
    p.rmdir()


def _link_message(p, verb="write"):
    p = Path(p)
    try:
        target = os.readlink(p)
    except OSError:  # pragma: no cover - raced away
        target = "?"
    real = _resolved(p) if p.exists() else None
    hint = f"pass the real path {str(real)!r} instead" if real is not None else \
        "it points nowhere (dangling); move it away or pass a real path"
    return (f"{str(p)!r} is a symbolic link (to {target!r}); xfusion does not {verb} through links (renaming or "
            f"removing the store would act on the link, not on its target): {hint}. Nothing was changed")


def _resolved(path) -> Path:
    return Path(os.path.abspath(os.fspath(path))).resolve()


def overlaps(a, b) -> bool:
    """True if paths ``a`` and ``b`` are equal or one lies inside the other (after resolving links)."""
    a, b = _resolved(a), _resolved(b)
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def sources(*datasets):
    """Store paths the datasets were read from (xarray's ``encoding["source"]``), for overlap checks."""
    out = []
    for ds in datasets:
        for obj in [ds, *getattr(ds, "variables", {}).values()]:
            src = getattr(obj, "encoding", {}).get("source")
            if isinstance(src, (str, os.PathLike)) and os.path.exists(src):
                out.append(os.fspath(src))
    return sorted(set(out))


def same_store_counts(a, b) -> bool:
    """Whether observations ``a`` and ``b`` hold the counts of one store, read unchanged, on the same pixels and
    channels: the same ``encoding["source"]`` (after resolving links), ``counts`` still carrying the encoding the
    store gave it (a recomputed variable has none), and equal ``x``/``y``/``energy`` coordinates. It reads no data:
    the same store opened with other ``chunks=``, or once in memory and once lazily, is recognised; two regions of
    one store are not the same (their coordinates differ)."""
    src = [ds.encoding.get("source") for ds in (a, b)]
    if not all(isinstance(v, (str, os.PathLike)) for v in src) or _resolved(src[0]) != _resolved(src[1]):
        return False
    if not all("counts" in ds and ds["counts"].encoding.get("dtype") is not None for ds in (a, b)):
        return False
    return all(c in a.coords and c in b.coords and a[c].shape == b[c].shape
               and np.array_equal(np.asarray(a[c].values), np.asarray(b[c].values)) for c in ("x", "y", "energy"))


def check_output(path, *, inputs=(), overwrite=False, what="output store"):
    """Refuse an output ``path`` that would destroy data; return it as a ``Path`` (parents created).

    A symbolic link at ``path`` is always refused (pass the real path).
    ``inputs``: store paths that must stay untouched (refused if ``path`` equals one, lies
    inside one or contains one). ``overwrite``: False (an existing store is refused) or True
    (an existing store written by xfusion may be replaced if it holds nothing xfusion did not
    write there, :func:`foreign_entries`; any other store, file or folder at ``path`` is always
    refused). The
    parent folder must be writable (checked by creating and removing a probe file).
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise TypeError(f"{what} must be a path (str or os.PathLike); got {path!r}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False; got {overwrite!r}")
    p = Path(os.fspath(path))
    if p.is_symlink():  # before anything else: even an "overwrite" must never act through a link
        raise OutputError(f"{what} " + _link_message(p))
    for src in inputs:
        if overlaps(p, src):
            raise OutputError(f"{what} {str(path)!r} is, contains or lies inside the input store {str(src)!r}; "
                              "writing there would destroy the input: choose another path")
    if p.exists() or p.is_symlink():
        if not is_zarr_store(p):
            kind = "a file" if not p.is_dir() else "a folder that is not a Zarr store"
            raise OutputError(f"{what} {str(path)!r} exists and is {kind}; refusing to overwrite it: "
                              "choose another path")
        if overwrite is False:
            raise OutputError(f"{what} {str(path)!r} already exists; choose another path or allow replacing it "
                              "(overwrite=True, CLI --overwrite)")
        if not written_by_xfusion(p):  # xfusion replaces only its own stores, whatever ``overwrite`` says
            raise OutputError(f"{what} {str(path)!r} exists and was not written by xfusion; refusing to replace "
                              "it: choose another path")
        foreign = foreign_entries(p)
        if foreign:  # replacing the store would delete what someone added to it
            shown = ", ".join(repr(n) for n in foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10
                                                                 else "")
            raise OutputError(f"{what} {str(path)!r} was written by xfusion but now also holds {shown}, which "
                              "xfusion did not write; refusing to replace it (that would delete them): move them "
                              "out of the store, or choose another path")
    parent = p.absolute().parent
    try:
        writable_folder(parent, p.name + ".")
    except OSError as exc:
        raise OutputError(f"cannot write {what} {str(path)!r}: folder {str(parent)!r} is not writable "
                          f"({exc.strerror or exc})") from exc
    return p


def uniform_chunks(v):
    """Zarr needs equal chunks except the last one on every axis: rechunk a Dask array that has others."""
    chunks = tuple(c if len(c) < 2 or len(set(c[:-1])) == 1 and c[-1] <= c[0] else (max(c),) for c in v.chunks)
    return v if chunks == v.chunks else v.rechunk(tuple(c[0] for c in chunks))


def _for_writing(ds: xr.Dataset, chunks=None) -> xr.Dataset:
    """A shallow copy without the encodings inherited from the inputs (e.g. their Zarr chunking) and
    with Zarr-compatible Dask chunks; the caller's Dataset is not modified."""
    ds = ds.copy(deep=False)
    if chunks:
        ds = ds.chunk({k: v for k, v in chunks.items() if k in ds.dims})
    rechunked = {}
    for name, var in ds.variables.items():
        var.encoding = {}
        if _is_dask(var.data):
            data = uniform_chunks(var.data)
            if data is not var.data:
                rechunked[name] = var.copy(data=data)
    for name, var in rechunked.items():
        ds[name] = var
    return ds


def _is_dask(v):
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover
        return False
    return isinstance(v, da.Array)


def store(ds: xr.Dataset, path, *, mode="w", client=None, compute=True, marker=None):
    """Write ``ds`` to a Zarr v3 store as is (no checks, no temporary sibling): the raw writer used by
    :func:`write` and by the checkpoint writer. ``compute=False`` returns the delayed chunk writes.

    ``marker`` (dict, with ``mode="w"``): attributes written to the new, empty root group BEFORE any
    variable, so that a store killed mid-write already says who wrote it (its writer may then clean
    it up; anything unmarked is never deleted)."""
    path = os.fspath(path)
    if marker is not None and mode == "w":
        import zarr

        zarr.open_group(path, mode="w", zarr_format=3, attributes=dict(marker))
        mode = "a"
    if not compute:
        return ds.to_zarr(path, mode=mode, consolidated=False, compute=False)
    if client is not None:
        client.compute(ds.to_zarr(path, mode=mode, consolidated=False, compute=False)).result()
    else:
        ds.to_zarr(path, mode=mode, consolidated=False)
    return path


def _zarr_source(v, depth=8):
    """``(store root, array path)`` of the Zarr array a Dask graph value reads (xarray's lazy indexing adapters
    around a ``zarr.Array``), or None."""
    for _ in range(depth):
        store = getattr(v, "store", None)
        root = getattr(store, "root", None)
        if root is not None and isinstance(getattr(v, "path", None), str):
            return os.fspath(root), v.path
        nxt = getattr(v, "array", None)
        if nxt is None:
            nxt = getattr(v, "_array", None)
        if nxt is None or nxt is v:
            return None
        v = nxt
    return None


def require_live(obj, what="the data"):
    """Refuse a lazy Dataset/DataArray whose data can no longer be read: its Dask graph holds data of a
    ``distributed`` cluster that is gone (its futures cancelled or their client closed), e.g. a
    ``fuse(..., client=client)`` result used after the client was closed (session 29: this failed inside Dask with
    "Missing dependency ..."), or reads a Zarr store (or an array of it) that no longer exists (session 31: its
    chunks read back as the fill value, NaN, and a warm start was refused for "NaN/inf values"). In-memory data
    pass."""
    arrays = [v.data for v in obj.variables.values()] if isinstance(obj, xr.Dataset) else [getattr(obj, "data", obj)]
    for a in arrays:
        graph = getattr(a, "__dask_graph__", None)
        if graph is None or graph() is None:
            continue
        for v in dict(graph()).values():
            src = _zarr_source(v)
            if src is not None and not os.path.isdir(os.path.join(src[0], src[1])):
                gone = src[0] if not os.path.isdir(src[0]) else os.path.join(src[0], src[1])
                raise ValueError(f"{what} is read lazily from the Zarr store {src[0]!r}, but {gone!r} no longer "
                                 "exists (deleted or moved): its data cannot be read. Load it into memory while the "
                                 "store exists (e.g. result = result.load()), or open it again from where it is now")
            status = getattr(v, "status", None)
            client = getattr(getattr(v, "client", None), "status", "running")
            if type(v).__name__ == "Future" and (status in ("cancelled", "lost", "error") or client != "running"):
                raise ValueError(f"{what} holds data computed on a Dask cluster whose client is now {client} (its "
                                 f"results are {status}): write or load it while the client is open "
                                 "(xfusion.io.zarr.write(result, path, client=client), or client.compute(result)"
                                 ".result()), or fuse again")


def output_lock(path):
    """The writer lock of the output store ``path``: the lock file ``.NAME.xfusion-lock`` beside it (a
    :class:`~xfusion.io.writer_lock.WriterLock`; :class:`OutputError` when another writer holds it). A caller that
    computes what it will write (the CLI's ``fuse``) takes it before reading its inputs and hands it to
    :func:`write` (``lock=``), so that a second run on the same output is refused at once, not after its fit."""
    p = Path(path)
    return WriterLock(p.absolute().parent / f".{p.name}.xfusion-lock", f"output store {str(path)!r}", OutputError)


def write(ds: xr.Dataset, path, *, chunks=None, client=None, overwrite=False, inputs=None, lock=None):
    """Write a Dataset to a new Zarr store (format 3), lazy variables chunk by chunk.

    ``ds``: an ``xarray.Dataset`` (a DataArray is refused with a TypeError: convert it with
    ``da.to_dataset(name="flux")``). ``chunks``: optional dict dim -> size. ``client``: the
    ``distributed.Client`` that holds the result's data (a lazy ``fuse(..., client=client)`` result);
    default: the active Dask scheduler. ``overwrite``: replace an existing store at ``path`` if xfusion
    wrote it and it holds nothing else (True), or refuse any existing store (False, default).
    ``inputs``: store paths that must not be touched (default: the stores ``ds`` was read from). See
    :func:`check_output` for what is refused; the checks run before any computing.

    The store is written to a temporary sibling and renamed onto ``path`` when complete;
    encodings copied from the inputs (chunks, compressors) are dropped. The lock file
    ``.NAME.xfusion-lock`` beside ``path`` is held meanwhile: a second writer of the same path (another
    process, or another thread of this one) is refused with :class:`OutputError` naming the holder.
    ``lock``: that lock, already held by the caller (:func:`output_lock`), who also releases it.
    A first Ctrl-C (or SIGTERM) during the write takes effect when the store is in place; a second one
    at once. The KeyboardInterrupt raised then, after the store is complete at ``path``, carries the
    attribute ``written`` (``path``), so that a caller can say the output is complete.
    """
    if not isinstance(ds, xr.Dataset):
        fix = (" (e.g. result['flux'] or a toy's truth): convert it with da.to_dataset(name='flux')"
               if isinstance(ds, xr.DataArray) else "")
        kind = type(ds).__qualname__ if type(ds).__module__ == "builtins" else \
            f"{type(ds).__module__}.{type(ds).__qualname__}"
        raise TypeError(f"xfusion.io.zarr.write takes an xarray.Dataset; got {kind}{fix}")
    if chunks is not None and not isinstance(chunks, dict):
        raise TypeError(f"chunks must be a dict dim -> size; got {chunks!r}")
    inputs = sources(ds) if inputs is None else inputs
    # the checks before taking the lock (they create the parent folder the lock lives in) and again under it
    p = check_output(path, inputs=inputs, overwrite=overwrite)
    tmp, old = (p.absolute().parent / f".{p.name}.xfusion-{s}" for s in ("tmp", "old"))
    if lock is not None:
        mine = output_lock(p)
        if not (lock.held and lock.path.absolute() == mine.path.absolute()):
            raise ValueError(f"lock= must be output_lock({str(path)!r}), acquired; got the lock {str(lock.path)!r}"
                             f"{'' if lock.held else ' (not held)'}")
    written = False
    with output_lock(p) if lock is None else contextlib.nullcontext():
        try:
            _recover(p, tmp, old)
            p = check_output(path, inputs=inputs, overwrite=overwrite)
            require_live(ds, "the Dataset to write")
            out = _for_writing(ds, chunks)
            out.attrs[MARKER] = _version()
            out.attrs[ENTRIES] = sorted(map(str, out.variables))
            # Ctrl-C / SIGTERM wait until the store is written and in place (a second signal does not wait): an
            # interrupt inside Zarr's asynchronous writer left chunk writes running after the cleanup, which
            # recreated an unmarked temporary folder in the way of every later write (session 29)
            with signals_deferred():
                try:
                    store(out, tmp, client=client, marker={MARKER: out.attrs[MARKER], ENTRIES: out.attrs[ENTRIES]})
                except BaseException:
                    with contextlib.suppress(OSError):  # the write's own error is the one to report
                        remove_marked(tmp, missing_ok=True)
                    raise
                if p.exists():
                    os.replace(p, old)
                os.replace(tmp, p)
                written = True
                remove_marked(old, missing_ok=True)
        except KeyboardInterrupt as exc:  # a deferred interrupt, delivered once the store was in place
            if written:
                exc.written = os.fspath(path)
            raise
    return path


def _recover(p, tmp, old):
    """Clean up after a write killed mid-way: an unfinished temporary sibling is removed (only if it
    is ours: marked, or an empty folder); a store moved aside but not yet replaced is put back.
    A symbolic link at ``p`` or at a sibling is refused before anything is moved or deleted (xfusion
    never creates links there: one is the user's, or the trace of a write through a link)."""
    if p.is_symlink():
        raise OutputError(_link_message(p))
    for q in (tmp, old):
        if q.is_symlink():
            raise OutputError(f"{str(q)!r} is a symbolic link (to {os.readlink(q)!r}) in the way of writing "
                              f"{str(p)!r}; xfusion never puts one there (it is someone's link, or the trace of a "
                              "write through a link by an older xfusion): check its target and move the link away. "
                              "Nothing was changed")
    if old.exists() and not p.exists() and not p.is_symlink():
        os.replace(old, p)  # killed between the two renames: the previous store is restored
    for leftover in (tmp, old):
        if not leftover.exists():
            continue
        if leftover.is_dir() and not any(leftover.iterdir()):
            leftover.rmdir()
        elif written_by_xfusion(leftover):
            remove_marked(leftover)
        else:
            raise OutputError(f"{str(leftover)!r} is in the way of writing {str(p)!r} and was not written by "
                              "xfusion; move it away")


def _version():
    from .. import __version__

    return __version__


def open(path, *, chunks=None) -> xr.Dataset:  # noqa: A001 - mirrors xarray's verb
    """Open a Zarr store lazily (Dask-backed when ``chunks`` is given, e.g. ``{}`` for the stored chunks)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no Zarr store at {path}")
    ds = xr.open_zarr(path, chunks=chunks, consolidated=False)
    for key in (MARKER, ENTRIES):  # bookkeeping of the writer, not part of the data
        ds.attrs.pop(key, None)
    return ds if chunks is not None else ds.load()
