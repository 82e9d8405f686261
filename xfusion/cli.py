"""Command-line interface: ``xfusion demo | fuse | toy | metrics | plot | jwst``.

Exit codes: 0 success; 2 usage error (bad arguments, from argparse); 3 input error (missing
or unreadable store, invalid observation, unknown option, a refused path, and an output that
cannot be written: no space left on the device, a quota, a read-only or forbidden folder: a
one-line ``xfusion: error:`` message, no traceback); 1 unexpected internal error (traceback
printed); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM): the message says where the last
checkpoint is and its iteration (continue with ``--resume``), or that none exists. A signal that
arrives while the output is being written takes effect once it is complete: the exit code is
still 130 (143), so that a script calling xfusion stops, and the message says that the output
is complete (nothing to rerun). ``toy`` writes its three stores all or none: a run that fails or
is interrupted part way removes those it wrote; a failed run removes the empty folders it created.

Outputs never destroy what xfusion did not write (DESIGN section 9): every command that writes
(``demo``, ``toy``, ``fuse``, ``plot``, ``jwst``) checks all its output paths before any computing.
An existing Zarr store, figure or text file is refused unless ``--overwrite`` is given, and even
then only a store, figure (PNG ``Software`` text ``xfusion VERSION``) or ``metrics.txt`` (first
line ``# xfusion VERSION demo:``) that xfusion wrote is replaced; anything else at the path is always
refused. ``plot -o`` refuses a folder that is, or lies inside, an input store (or any Zarr store).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import signal
import sys
import time
import tomllib
import traceback
from pathlib import Path

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143
#: OSError numbers that are the environment's, not xfusion's bug: a one-line error with exit code 3, no traceback
ENV_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EPERM")
                       if hasattr(errno, n))
CONFIG_KEYS = ("regularization", "method", "max_iter", "tol", "checkpoint", "checkpoint_every", "resume", "dtype",
               "options")
METRIC_NOTE = ("nmse_db: normalised MSE in dB (higher is better); asam_rad: mean spectral angle in radians; "
               "acssim: 1 - mean SSIM per channel; ergas: relative global error (lower is better for these three)")


class InputError(ValueError):
    """A problem with the user's inputs (exit code 3)."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


# ----------------------------------------------------------------------------- helpers
def _open_store(path, what="store", chunks=None):
    """Open a Zarr store (loaded, or lazy with ``chunks``), turning every failure into an InputError naming the path."""
    from .io import zarr as xzarr

    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {str(path)!r} does not exist")
    if not p.is_dir() or not any((p / f).exists() for f in ("zarr.json", ".zgroup", ".zattrs")):
        raise InputError(f"{what} {str(path)!r} is not a Zarr store (no zarr.json/.zgroup inside)")
    try:
        return xzarr.open(p, chunks=chunks)
    except Exception as exc:  # noqa: BLE001 - any reader failure is an input problem here
        raise InputError(f"cannot read {what} {str(path)!r} as a Zarr dataset: {exc}") from exc


def _open_observation(path, lazy=False):
    from .observation import validate

    ds = _open_store(path, "observation store", chunks={} if lazy else None)
    if "counts" not in ds and "flux" in ds:
        kind = "a fused result" if _is_result(ds) else "a flux cube (e.g. a toy's truth.zarr)"
        raise InputError(f"{path} is {kind}, not an observation: `xfusion fuse` takes two observation stores "
                         "with a 'counts' variable (e.g. toy/x.zarr and toy/y.zarr from `xfusion toy`)")
    try:
        return validate(ds)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: invalid observation: {exc}") from exc


def _is_result(ds):
    """A store written from an ``xfusion.fuse`` result (not a bare truth cube)."""
    return "flux" in ds and ("regularization" in ds.attrs or "model_spatial" in ds or "counts_spatial" in ds)


def _open_result(path):
    ds = _open_store(path, "result store")
    if "flux" not in ds:
        hint = " (it is an observation store: fuse it first, `xfusion fuse A.zarr B.zarr -o out.zarr`)" \
            if "counts" in ds else ""
        raise InputError(f"{path}: not an xfusion result (no 'flux' variable; produce one with `xfusion fuse`){hint}")
    return ds


def _check_result_truth_order(result_path, result, truth_path, fix):
    """Refuse a truth given where the result goes and a result given as the truth (arguments swapped)."""
    if _is_result(result):
        return
    truth_ds = _open_store(truth_path, "truth store")
    if _is_result(truth_ds):
        raise InputError(f"the arguments look swapped: {truth_path} is a fused result and {result_path} is not "
                         f"(no fit history or model variables). Give the result first: `{fix.format(result=truth_path, truth=result_path)}`")


def _open_truth(path):
    ds = _open_store(path, "truth store")
    if "flux" in ds:
        return ds["flux"]
    if len(ds.data_vars) == 1:
        return ds[next(iter(ds.data_vars))]
    raise InputError(f"{path}: truth store needs a 'flux' variable (x, y, energy) in ph cm-2 s-1")


def _prepare_output(path, what="output store", inputs=(), overwrite=False):
    """Check an output path before any computing (``xfusion.io.zarr.check_output``): never an input
    store or inside/around one, never a file or a non-Zarr folder, an existing store only if
    ``overwrite`` allows it, and then only one xfusion wrote; the folder must be writable."""
    from .io import zarr as xzarr

    if isinstance(path, (str, os.PathLike)) and os.fspath(path):
        full = Path(os.path.abspath(path))
        for folder in (*full.parents, *full.resolve().parents):
            if xzarr.is_zarr_store(folder) and not any(xzarr.overlaps(folder, src) for src in inputs):  # as plot -o: a store never gets a foreign group inside it
                raise InputError(f"{what} {str(path)!r} lies inside the Zarr store {str(folder)!r}; writing there "
                                 "would change that store: choose a path outside it")
    try:
        return xzarr.check_output(path, inputs=inputs, overwrite=overwrite, what=what)
    except (xzarr.OutputError, TypeError) as exc:
        raise InputError(str(exc)) from exc


def _write(ds, path, client=None, inputs=(), overwrite=False, written=None, lock=None):
    """Write through a temporary sibling renamed when complete (``xfusion.io.zarr.write``); an existing store
    is replaced only with ``overwrite`` (the command's ``--overwrite``) and only if xfusion wrote it.

    A full disk, a quota, a read-only or forbidden folder (:data:`ENV_ERRNOS`) is an :class:`InputError` naming
    the path (the incomplete temporary store is removed by the writer). ``written``: a list the path is appended
    to once the store is complete -- also when a Ctrl-C deferred during the write is raised after it. ``lock``:
    the store's writer lock, held by the caller since before its computing (``xfusion.io.zarr.output_lock``)."""
    from .io import zarr as xzarr

    _prepare_output(path, inputs=inputs, overwrite=overwrite)
    try:
        xzarr.write(ds, path, client=client, inputs=inputs, overwrite=overwrite, lock=lock)
    except xzarr.OutputError as exc:
        raise InputError(str(exc)) from exc
    except KeyboardInterrupt as exc:
        if getattr(exc, "written", None) is not None and written is not None:
            written.append(os.fspath(path))
        raise
    except OSError as exc:
        if exc.errno not in ENV_ERRNOS:
            raise
        raise InputError(f"cannot write {str(path)!r}: {_os_error(exc)}; nothing was written there (free some "
                         "space or choose another output folder, then rerun)") from exc
    if written is not None:
        written.append(os.fspath(path))
    return path


@contextlib.contextmanager
def _output_locked(path):
    """Hold the writer lock of the output store ``path`` (``xfusion.io.zarr.output_lock``; nothing if ``path`` is
    empty) from before a command reads and computes to the end of its write, so that a second run on the same
    output is refused at once (it used to be refused only at its write, after its whole fit)."""
    from .io import zarr as xzarr

    if not path:
        yield None
        return
    lock = xzarr.output_lock(path)
    try:
        lock.acquire()
    except xzarr.OutputError as exc:
        raise InputError(str(exc)) from exc
    try:
        yield lock
    finally:
        lock.release()


def _os_error(exc):
    """``strerror (filename)`` of an OSError, for one-line messages."""
    text = exc.strerror or str(exc)
    return f"{text} ({exc.filename})" if exc.filename else text


def _missing_folders(*paths):
    """The folders above ``paths`` (files or stores) that do not exist yet, deepest first."""
    out = set()
    for path in paths:
        if isinstance(path, (str, os.PathLike)) and os.fspath(path):
            for folder in Path(os.path.abspath(path)).parents:
                if folder.exists():
                    break
                out.add(folder)
    return sorted(out, key=lambda f: len(f.parts), reverse=True)


@contextlib.contextmanager
def _new_folders_removed_on_failure(*paths):
    """On any failure of the block, remove the folders above ``paths`` that it created (the writability checks
    create them) and that are still empty; never a folder that existed before or holds anything."""
    new = _missing_folders(*paths)
    try:
        yield
    except BaseException:
        for folder in new:
            with contextlib.suppress(OSError):  # not empty (e.g. a checkpoint to resume from) or gone: kept
                folder.rmdir()
        raise


def _file_by_xfusion(path):
    """True if ``path`` is a figure (PNG ``Software`` text ``xfusion VERSION``) or a text file (first line
    ``# xfusion VERSION demo: ...``, the demo's metrics.txt) that this CLI wrote."""
    p = Path(path)
    if p.suffix.lower() == ".png":
        from .plot import is_xfusion_png

        return is_xfusion_png(p)
    try:
        with open(p, "rb") as fh:
            return re.match(rb"# xfusion \S+ demo: ", fh.readline(200)) is not None
    except OSError:
        return False


def _prepare_files(paths, overwrite, flag="--overwrite"):
    """Refuse, before any computing, output files that would destroy something: an existing path that is
    not a regular file (a folder, a link), an existing file without ``overwrite``, and -- even with it -- a
    file xfusion did not write. The folders must be writable."""
    from .io.safe_files import writable_folder

    for path in paths:
        p = Path(path)
        if p.is_symlink() or (p.exists() and not p.is_file()):
            kind = "a symbolic link" if p.is_symlink() else "a folder"
            raise InputError(f"{str(p)!r} exists and is {kind}; refusing to write a file there: choose another "
                             "output folder (-o)")
        if p.exists():
            if not overwrite:
                raise InputError(f"{str(p)!r} already exists; refusing to overwrite it: choose another output "
                                 f"folder (-o) or pass {flag} to replace the files xfusion wrote there")
            if not _file_by_xfusion(p):
                raise InputError(f"{str(p)!r} exists and was not written by xfusion (no xfusion marker in it); "
                                 f"refusing to replace it even with {flag}: move it away or choose another "
                                 "output folder (-o)")
    for folder in sorted({Path(path).absolute().parent for path in paths}):
        try:
            writable_folder(folder)
        except OSError as exc:
            raise InputError(f"cannot write into the output folder {str(folder)!r} "
                             f"({exc.strerror or exc})") from None


def _write_file(path, text):
    """Write a text file through a temporary sibling renamed when complete."""
    from .io.safe_files import write_via_temporary

    write_via_temporary(path, lambda tmp: tmp.write_text(text))


def _parse_value(text):
    """Parse an --option value: TOML literal (1, 0.5, true, "s", [1, 2]), none/null -> None, JSON where TOML has no
    word for it (``["auto", null]``: a list holding None), else a string."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    def refuse(name):  # NaN / Infinity stay strings, as before (the option's check then names them)
        raise ValueError(name)

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:
        return text


def _parse_options(items):
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--option expects KEY=VALUE (e.g. --option k=1.5); got {item!r}")
        out[key] = _parse_value(value.strip())
        if out[key] is None and value.strip().lower() == "none" and key in _none_string_options():
            out[key] = "none"  # e.g. stabilize=none: the documented value is the string "none", not None
    return out


def _none_string_options():
    """Options whose documented default is the string "none" (``stabilize``): ``--option KEY=none`` means that."""
    from . import registry

    return {k for name in registry.REGULARIZATIONS for k, (d, *_) in registry.option_docs(name).items()
            if isinstance(d, str) and d == "none"}


def _load_config(path):
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file {str(path)!r} does not exist")
    try:
        cfg = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise InputError(f"config file {str(path)!r}: unknown key(s) {unknown}; valid keys: {list(CONFIG_KEYS)} "
                         "(regularization options go in an [options] table)")
    if not isinstance(cfg.get("options", {}), dict):
        raise InputError(f"config file {str(path)!r}: 'options' must be a table ([options])")
    if "checkpoint" in cfg:
        ck = cfg["checkpoint"]
        if not isinstance(ck, str) or not ck:
            raise InputError(f"config file {str(path)!r}: checkpoint must be a path string (e.g. "
                             f'checkpoint = "run.ckpt.zarr"); got {ck!r}')
        if not os.path.isabs(ck):
            here = p.parent.resolve()
            full = (here / ck).resolve()
            if not full.is_relative_to(here) or full == here:
                raise InputError(f"config file {str(path)!r}: checkpoint {ck!r} resolves to {str(full)!r}, outside "
                                 "the config's folder; a relative checkpoint path must stay inside it (give an "
                                 "absolute path to put it elsewhere)")
            cfg["checkpoint"] = str(p.parent / ck)
    if "resume" in cfg and cfg["resume"] not in (True, False, "auto"):
        raise InputError(f"config file {str(path)!r}: resume must be true, false or \"auto\"; got {cfg['resume']!r}")
    return cfg


def _check_option_keys(options):
    """Refuse a ``fuse`` argument given as a regularization option (``--option max_iter=5``, ``[options] tol``): it
    bypassed the flag's checks, and with the flag too fuse() got it twice (a TypeError)."""
    import inspect

    from .fuse import fuse

    named = [n for n, p in inspect.signature(fuse).parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in options:
        if key in CONFIG_KEYS:
            raise InputError(f"{key} is not a regularization option: give it as --{key.replace('_', '-')} or as a "
                             f"top-level key of the config file (not in --option or [options])")
        if key in named:
            hint = " (--no-progress turns the progress bar off)" if key == "progress" else ""
            raise InputError(f"{key} is an argument of xfusion.fuse that the command line does not set; it is not a "
                             f"regularization option (--option, [options]){hint}")


def _fuse_settings(args):
    """Merge defaults < config file < command-line flags into fuse() keyword arguments."""
    cfg = _load_config(args.config) if args.config else {}
    options = dict(cfg.pop("options", {}) or {})
    options.update(_parse_options(args.option))
    _check_option_keys(options)
    kw = {k: v for k, v in cfg.items()}
    for key in ("regularization", "method", "max_iter", "tol", "checkpoint", "checkpoint_every", "dtype"):
        value = getattr(args, key)
        if value is not None:
            kw[key] = value
    if args.resume and args.resume_or_start:
        raise InputError("--resume (continue, a checkpoint must exist) and --resume-or-start (continue if one "
                         "exists, else start) exclude each other; give one")
    if args.resume:
        kw["resume"] = True
    elif args.resume_or_start:
        kw["resume"] = "auto"
    if kw.get("resume") and not kw.get("checkpoint"):
        raise InputError("--resume needs --checkpoint PATH (the store written by the interrupted run)")
    for key, typ in (("max_iter", int), ("checkpoint_every", int), ("tol", float)):
        if key in kw and kw[key] is not None:
            if key == "max_iter" and kw[key] == "auto":  # fuse's own default for the early-stopped families
                continue
            if isinstance(kw[key], bool) or (typ is int and isinstance(kw[key], float) and not kw[key].is_integer()):
                raise InputError(f"{key} must be {'an integer' if typ is int else 'a number'}; got {kw[key]!r}")
            try:
                kw[key] = typ(kw[key])
            except (TypeError, ValueError) as exc:
                raise InputError(f"{key} must be a number; got {kw[key]!r}") from exc
    if kw.get("checkpoint_every") is not None and kw["checkpoint_every"] < 1:
        raise InputError(f"checkpoint_every must be a positive integer (iterations between checkpoints); "
                         f"got {kw['checkpoint_every']}")
    if kw.get("tol") == 0:  # CLI convention: tol 0 runs all max_iter iterations (fuse's tol=None)
        kw["tol"] = None
    return kw, options


def _table_rows(result, truth, x_obs, y_obs):
    from . import baselines, metrics

    ratio = float(result.attrs["spatial_factor"])
    label = f"fused ({result.attrs['regularization']}/{result.attrs['method']})"
    rows = {label: metrics.report(result, truth)}
    rows["X upsampled in energy"] = metrics.report(baselines.upsample_spatial(x_obs, y_obs), truth, ratio=ratio)
    rows["Y upsampled in space"] = metrics.report(baselines.upsample_spectral(x_obs, y_obs), truth, ratio=ratio)
    return rows


# ----------------------------------------------------------------------------- commands
def cmd_toy(args):
    from . import toy

    out = Path(args.output)
    overwrite = bool(args.overwrite)
    names = ("x.zarr", "y.zarr", "truth.zarr")
    written = getattr(args, "_written", [])
    with _new_folders_removed_on_failure(*(out / name for name in names)):
        for name in names:  # all three before writing any: a refusal leaves the folder as it was
            _prepare_output(out / name, overwrite=overwrite)
        x_obs, y_obs, truth = toy.make(args.name, seed=args.seed)
        try:
            for name, ds in zip(names, (x_obs, y_obs, truth.to_dataset(name="flux"))):
                _write(ds, out / name, overwrite=overwrite, written=written)
        except BaseException as exc:
            if len(written) < len(names):  # all three or none: a pair without its truth is not a toy
                removed = _remove_written(written)
                if isinstance(exc, InputError) and removed:
                    raise InputError(f"{exc} (removed {', '.join(removed)}, written before it by this run: the "
                                     "toy's stores are written all or none)") from exc
            raise
    print(f"wrote {out / 'x.zarr'} ({x_obs.attrs['name']}: {dict(x_obs['counts'].sizes)}, "
          f"{float(x_obs['x'].attrs['pixel_size']):g} arcsec pixels)")
    print(f"wrote {out / 'y.zarr'} ({y_obs.attrs['name']}: {dict(y_obs['counts'].sizes)}, "
          f"{float(y_obs['x'].attrs['pixel_size']):g} arcsec pixels)")
    print(f"wrote {out / 'truth.zarr'} (flux in ph cm-2 s-1 per voxel, {dict(truth.sizes)})")
    return EXIT_OK


def _remove_written(written):
    """Remove the stores this run wrote (listed in ``written``, emptied); return the paths removed."""
    from .io import zarr as xzarr

    removed = []
    while written:
        path = written.pop()
        if xzarr.written_by_xfusion(path):
            with contextlib.suppress(OSError):
                xzarr.remove_marked(path)
                removed.append(path)
    return removed[::-1]


def cmd_fuse(args):
    if getattr(args, "retain_worker_memory", False) and not args.scheduler:
        raise InputError("--retain-worker-memory applies to the workers of a Dask cluster: give --scheduler too")
    kw, options = _fuse_settings(args)
    inputs = (args.a, args.b, *(args.more or ()))
    seen = {}
    for path in inputs:
        if Path(path).resolve() in seen:
            raise InputError(f"the same store {path!r} was given twice: fusion needs different observations, "
                             "one sharp in space (e.g. toy/x.zarr) and one sharp in energy (e.g. toy/y.zarr)")
        seen[Path(path).resolve()] = path
    with _new_folders_removed_on_failure(args.output, kw.get("checkpoint")):
        result = _fuse_and_write(args, kw, options, inputs)
    a = result.attrs
    if len(inputs) > 2 and "grid_explanation" in a:  # which input set which axis, how each one entered the model
        print(a["grid_explanation"])
    print(f"wrote {args.output}: {a['regularization']}/{a['method']}, {a['iterations']} iterations "
          f"({'converged' if a['converged'] else 'not converged: max_iter reached'}), {a['elapsed_s']:.1f} s")
    return EXIT_OK


def _fuse_and_write(args, kw, options, inputs):
    """``cmd_fuse`` after its arguments are parsed: the output and checkpoint checks, the run, the write."""
    _prepare_output(args.output, inputs=inputs, overwrite=bool(args.overwrite))  # before any reading or computing
    with _output_locked(args.output) as lock:
        return _fuse_and_write_locked(args, kw, options, inputs, lock)


def _fuse_and_write_locked(args, kw, options, inputs, lock):
    """:func:`_fuse_and_write` with the output's writer lock held."""
    import inspect

    from .checkpoints import CheckpointError, ZarrCheckpoint, describe
    from .fuse import fuse
    from .solvers import heap

    overwrite = bool(args.overwrite)
    if kw.get("checkpoint"):
        try:  # the same checks fuse() makes, plus the output: refused before the inputs are read
            ZarrCheckpoint(kw["checkpoint"], protect=(*inputs, args.output))
        except (CheckpointError, TypeError) as exc:
            raise InputError(str(exc)) from exc
        args._checkpoint_before = describe(kw["checkpoint"])
    lazy = bool(args.dask or args.scheduler)
    observations = [_open_observation(path, lazy) for path in inputs]
    client = None
    if args.scheduler:
        if "client" not in inspect.signature(fuse).parameters:
            raise InputError("--scheduler is not supported by this xfusion version (fuse() has no client= argument)")
        try:
            from dask.distributed import Client

            client = Client(args.scheduler, timeout="10s")
        except OSError as exc:
            raise InputError(f"cannot connect to the Dask scheduler at {args.scheduler!r}: {exc}") from exc
        kw["client"] = client
    args._checkpoint = kw.get("checkpoint")
    try:
        with heap.retained(client=client if getattr(args, "retain_worker_memory", False) else None):
            result = fuse(*observations, progress=not args.no_progress, **kw, **options)
            # a lazy result is computed chunk by chunk, on the client's cluster
            _write(result, args.output, client, inputs=inputs, overwrite=overwrite,
                   written=getattr(args, "_written", None), lock=lock)
    finally:
        if client is not None:
            client.close()
    return result


def cmd_metrics(args):
    from . import metrics

    result = _open_result(args.result)
    if args.truth:
        _check_result_truth_order(args.result, result, args.truth, "xfusion metrics {result} {truth}")
    a = result.attrs
    print(f"{args.result}: {a.get('regularization', '?')}/{a.get('method', '?')}, {a.get('iterations', '?')} "
          f"iterations, converged={bool(a.get('converged', 0))}")
    if args.truth:
        truth = _open_truth(args.truth)
        try:
            row = metrics.report(result, truth)
        except ValueError as exc:
            raise InputError(f"{args.truth} does not match {args.result}: {exc}") from exc
        print("\nreference-based metrics (vs truth):")
        print(metrics.format_report({"fused": row}))
        print(METRIC_NOTE)
    from .consistency import count_consistency

    rows = count_consistency(result)
    if rows:
        print("\nconsistency of the predicted counts with the data (no truth needed):")
        print(metrics.format_report(rows, name_header="instrument"))
        print("psnr_db, ssim: energy-summed count images (ssim '-' for detector pixels: no image); "
              "mean_spectrum_rel_error: spatially averaged spectra")
    return EXIT_OK


def _parse_pixels(items):
    pixels = []
    for item in items or []:
        try:
            ix, iy = (int(v) for v in item.replace(" ", "").split(","))
        except ValueError as exc:
            raise InputError(f"--pixel expects IX,IY (integer fused-pixel indices); got {item!r}") from exc
        pixels.append((ix, iy))
    return pixels or None


def _save(fig, path, dpi=100, announce=True):
    """Save a figure as PNG marked ``Software = xfusion VERSION`` (so that ``--overwrite`` can tell it from the
    user's files; :func:`xfusion.plot.save_png`), through a temporary sibling renamed when complete."""
    import matplotlib.pyplot as plt

    from .plot import save_png

    try:
        save_png(fig, path, dpi=dpi)
    finally:
        plt.close(fig)
    if announce:
        print(f"wrote {path}")


def _refuse_inside_store(out, inputs, flag="-o"):
    """Refuse a figure folder that is, or lies inside, an input store or any Zarr store."""
    from .io import zarr as xzarr

    full = Path(os.path.abspath(out))
    for src in inputs:
        real = Path(os.path.abspath(src)).resolve()
        if full.resolve() == real or full.resolve().is_relative_to(real):
            raise InputError(f"{flag} {str(out)!r} is or lies inside the input store {str(src)!r}; writing figures "
                             "there would change the input: choose a folder outside it")
    for folder in (full, *full.parents):
        if xzarr.is_zarr_store(folder):
            raise InputError(f"{flag} {str(out)!r} is or lies inside the Zarr store {str(folder)!r}; writing "
                             "figures there would change that store: choose a folder outside it")


def cmd_plot(args):
    import matplotlib

    matplotlib.use("Agg")
    from . import plot

    result = _open_result(args.result)
    if args.truth:
        _check_result_truth_order(args.result, result, args.truth, "xfusion plot {result} --truth {truth} -o DIR")
    truth = _open_truth(args.truth) if args.truth else None
    pixels = _parse_pixels(args.pixel)
    try:
        plot.check_pixels(result, pixels)  # before any figure is written
    except ValueError as exc:
        raise InputError(f"--pixel: {exc}") from None
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {args.output}: a file exists there; -o names a folder for the figures "
                         "(summary.png, spectra.png, ...): give a new or existing folder")
    _refuse_inside_store(out, [p for p in (args.result, args.truth) if p])
    names = ["summary.png", "spectra.png", "maps.png", "history.png"] + (["errors.png"] if truth is not None else [])
    created = [d for d in (out, *out.parents) if not d.exists()]  # the folders this command makes, deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"-o {args.output}: cannot create the figure folder ({exc.strerror})") from None
    try:
        _prepare_files([out / n for n in names], bool(args.overwrite))  # all of them before drawing any
        _save(plot.summary(result, truth, pixels=pixels), out / "summary.png")
        _save(plot.spectra(result, truth, pixels=pixels), out / "spectra.png")
        _save(plot.amplitude_maps(result, truth), out / "maps.png")
        _save(plot.objective_history(result), out / "history.png")
        if truth is not None:
            _save(plot.error_maps(result, truth), out / "errors.png")
    except BaseException:
        for d in created:  # a failure leaves no empty figure folder behind (session 30); a folder with files stays
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return EXIT_OK


def cmd_demo(args):
    import matplotlib

    matplotlib.use("Agg")

    from . import metrics, plot, toy
    from .fuse import fuse

    t0 = time.perf_counter()
    out = Path(args.output)
    overwrite = bool(args.overwrite)
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {args.output}: a file exists there; -o names the demo's output folder: give a new "
                         "or existing folder")
    _refuse_inside_store(out, [])
    for name in ("fused.zarr", "truth.zarr", "x.zarr", "y.zarr"):  # every output before any computing
        _prepare_output(out / name, overwrite=overwrite)
    _prepare_files([out / "summary.png", out / "metrics.txt"], overwrite)
    print(f"building the {args.toy!r} toy (seed {args.seed}) ...", flush=True)
    x_obs, y_obs, truth = toy.make(args.toy, seed=args.seed)
    kw = {} if args.max_iter is None else {"max_iter": args.max_iter}
    result = fuse(x_obs, y_obs, progress=not args.no_progress, **kw)
    _write(result, out / "fused.zarr", overwrite=overwrite)
    _write(truth.to_dataset(name="flux"), out / "truth.zarr", overwrite=overwrite)
    _write(x_obs, out / "x.zarr", overwrite=overwrite)
    _write(y_obs, out / "y.zarr", overwrite=overwrite)
    vel = (None, None)
    if args.replicas:  # error bars of the velocity map from refitted replicas (xfusion.uncertainty)
        from .uncertainty import uncertainty

        vel = plot.band_velocity_maps(uncertainty(result, x_obs, y_obs, n=args.replicas), truth, x_obs=x_obs)
    _save(plot.summary(result, truth, x_obs=x_obs, y_obs=y_obs, velocity=vel[0], velocity_truth=vel[1]),
          out / "summary.png", announce=False)
    rows = _table_rows(result, truth, x_obs, y_obs)
    table = metrics.format_report(rows)
    a = result.attrs
    header = (f"# xfusion {a['xfusion_version']} demo: toy {args.toy!r} (seed {args.seed}); "
              f"{a['regularization']}/{a['method']}, {a['iterations']} iterations, "
              f"converged={bool(a['converged'])}\n# parameters: {a['parameters']}\n# {METRIC_NOTE}\n")
    _write_file(out / "metrics.txt", header + table + "\n")
    wall = time.perf_counter() - t0
    print(f"\noutput folder: {out.resolve()}")
    print("  fused.zarr, truth.zarr, x.zarr, y.zarr, summary.png, metrics.txt")
    print(f"wall time: {wall:.1f} s (fusion {a['elapsed_s']:.1f} s)\n")
    print(table)
    print(f"\nnext: xfusion metrics {out / 'fused.zarr'} {out / 'truth.zarr'}")
    return EXIT_OK


# ----------------------------------------------------------------------------- parser
def _number_or_auto(cast, flag, kind):
    """An argparse ``type``: ``cast(text)`` (e.g. ``float`` for ``xfusion jwst --mu``, ``int`` for ``xfusion fuse
    --max-iter``) or the string "auto" (as the config file's value)."""
    def parse(text):
        if text == "auto":
            return text
        try:
            return cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes {kind} or 'auto'; got {text!r}") from None
    return parse


def cmd_jwst(args):
    """Fuse NIRCam i2d images with a NIRSpec s3d cube (or the JWST toy) and print SyFu's validation."""
    from . import jwst
    from .io import jwst as iojwst

    if args.toy:
        imager, ifu, _ = jwst.make_toy(seed=args.seed)
    else:
        if not args.imager or not args.ifu:
            raise InputError("give --imager I2D.fits [...] and --ifu S3D.fits, or --toy")
        for f in list(args.imager) + [args.ifu]:
            if not Path(f).is_file():
                raise InputError(f"{f!r} does not exist")
        imager = iojwst.stack_filters([iojwst.read_nircam_i2d(f) for f in args.imager])
        ifu = iojwst.read_nirspec_s3d(args.ifu)
    inputs = [f for f in list(args.imager or []) + [args.ifu] if f and not args.toy]
    names = [str(f) for f in imager["filter"].values]
    held = list(args.held_out or [])
    try:  # before any computing (the fusion takes a while)
        keep = jwst.check_held_out(names, held) if held else names
    except ValueError as exc:
        raise InputError(f"--held-out: {exc}") from None
    if args.output:
        _prepare_output(args.output, inputs=inputs, overwrite=bool(args.overwrite))
    with _output_locked(args.output) as lock:
        return _jwst_fuse_and_report(args, imager, ifu, keep, held, inputs, lock)


def _jwst_fuse_and_report(args, imager, ifu, keep, held, inputs, lock):
    """:func:`cmd_jwst` once its inputs are read and its output checked (and locked)."""
    from . import jwst, metrics

    opts = {k: v for k, v in (("mu", args.mu), ("rank", args.rank), ("gamma", args.gamma), ("max_iter", args.max_iter))
            if v is not None}
    result = jwst.fuse_jwst(imager, ifu, filters=keep, **opts)
    a = result.attrs
    print(f"fused {len(keep)} filters ({', '.join(keep)}) with {ifu.sizes['energy']} IFU channels: rank {a['rank']}, "
          f"mu {a['mu']:g}, gamma {a['gamma']:g}, {a['n_iter']} iterations, {a['elapsed_s']:.1f} s")
    print("cross-calibration factors (SyFu eq. 7): " + ", ".join(
        f"{f} {c:.4f}" for f, c in zip(keep, result["cross_calibration"].values)))
    ym = imager.sel(filter=keep)["data"].transpose("x", "y", "filter").values
    v = metrics.jwst_validation(ym, ifu["data"].transpose("x", "y", "energy").values, result["flux"].values,
                                result["response"].values, filters=keep, factor=int(a["spatial_factor"]),
                                imager_mask=imager.sel(filter=keep)["mask"].transpose("x", "y", "filter").values,
                                ifu_mask=ifu["mask"].transpose("x", "y", "energy").values)
    rows = {f: dict(v["filters"][f], used="yes") for f in keep}
    if held:
        for f, row in jwst.held_out_scores(imager, ifu, result["flux"].values, held).items():
            rows[f] = dict(row, used="held out")
    print(metrics.format_report(rows, name_header="filter"))
    print(f"mean spectrum vs the IFU: max relative error {v['mean_spectrum_max_rel_error']:.4f}")
    if args.output:
        _write(result, args.output, inputs=inputs, overwrite=bool(args.overwrite), lock=lock)
        print(f"wrote {args.output}")
    return EXIT_OK


def build_parser():
    from . import __version__
    from . import registry
    from .toy import NAMES

    p = argparse.ArgumentParser(
        prog="xfusion", formatter_class=_Formatter,
        description="Hyperspectral fusion of two X-ray observations (one sharp in space, one sharp in energy).\n"
                    "Spatial coordinates are in arcsec, energies in keV, exposures in s, fluxes in ph cm-2 s-1.",
        epilog="exit codes: 0 ok, 2 usage error, 3 input error, 1 internal error, 130 interrupted, "
               "143 terminated.\n"
               "Run `xfusion COMMAND --help` for the options of each command.")
    p.add_argument("--version", action="version", version=f"xfusion {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "demo", formatter_class=_Formatter, help="fuse a toy supernova remnant end to end (about a minute)",
        description="Build a toy pair of observations, fuse them with the default settings ('auto': tuned\n"
                    "wavelet2d1d or plain RL by Poisson thinning; EM),\n"
                    "and write fused.zarr, truth.zarr, x.zarr, y.zarr, summary.png and metrics.txt.\n"
                    "The toy's maps are in arcsec, spectra in keV, flux in ph cm-2 s-1 per voxel.")
    d.add_argument("-o", "--output", default="xfusion-demo", metavar="DIR",
                   help="output folder (default: ./xfusion-demo)")
    d.add_argument("--toy", default="gaussian_rebin", choices=NAMES, metavar="NAME",
                   help=f"toy model, one of {', '.join(NAMES)} (default: gaussian_rebin: X 45x45 pixels of "
                        "10 arcsec x 60 channels of 15 eV; Y 15x15 pixels of 30 arcsec x 2400 channels of 0.375 eV)")
    d.add_argument("--seed", type=int, default=0, help="random seed of the Poisson draws (default: 0)")
    d.add_argument("--max-iter", type=int, default=None, metavar="N",
                   help="maximum number of iterations (default: the method's, 50 for EM)")
    d.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    d.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier demo in DIR (stores, summary.png, metrics.txt written "
                        "by xfusion); without it any existing one is refused. Never replaces what xfusion did "
                        "not write")
    d.add_argument("--replicas", type=int, default=2, metavar="N",
                   help="bootstrap replicas behind the velocity error map of the summary (default 2: a rough "
                        "map; 20 for numbers you quote; 0: no velocity row)")
    d.set_defaults(func=cmd_demo)

    f = sub.add_parser(
        "fuse", formatter_class=_Formatter, help="fuse two (or more) observation Zarr stores",
        description="Fuse two observations (Zarr stores of the xfusion observation schema: counts (x, y, energy),\n"
                    "x/y in arcsec, energy edges in keV, exposure in s, effective area in cm2) into one cube\n"
                    "of photon flux per voxel (ph cm-2 s-1) on the sharp-spatial pixels and the sharp-spectral\n"
                    "channels. Order does not matter. Settings: defaults < --config file < command-line flags.",
        epilog="config file (TOML) example:\n"
               '  regularization = "wavelet2d1d"\n  method = "em"\n  max_iter = 50\n  tol = 1e-4\n'
               '  checkpoint = "run.ckpt.zarr"   # relative to the config file\n  checkpoint_every = 10\n'
               "  [options]\n  k = 1.0\n  n_scales_1d = 5\n\n" + registry.help_text())
    f.add_argument("a", metavar="A.zarr", help="first observation store")
    f.add_argument("b", metavar="B.zarr", help="second observation store")
    f.add_argument("more", metavar="C.zarr", nargs="*",
                   help="further observation stores, any number (e.g. MOS1, MOS2 beside pn, the other pointings "
                        "of a Resolve mosaic): on the fused pixels, on the fused channels, or detector-pixel tiles; "
                        "their Poisson terms join the likelihood (in memory, or on Dask with --dask/--scheduler for the "
                        "full-cube regularizations). The grid comes from the input "
                        "with the smallest pixels and the one with the narrowest channels (printed)")
    f.add_argument("-o", "--output", required=True, metavar="OUT.zarr",
                   help="result store to write (new; written to a temporary sibling and renamed when complete)")
    f.add_argument("--overwrite", action="store_true",
                   help="replace an existing Zarr store at --output (never an input, a file or a non-Zarr folder)")
    f.add_argument("--config", metavar="FILE.toml",
                   help="TOML file with keys regularization, method, max_iter, tol, checkpoint, checkpoint_every, "
                        "resume, dtype and an [options] table")
    f.add_argument("--regularization", choices=registry.REGULARIZATIONS + ("auto",), default=None,
                   help="prior on the fused cube (default: 'auto', tuned wavelet2d1d -- sparsity in 2D x 1D "
                        "starlets -- or none, plain RL stopped early, whichever predicts held-out counts best; a "
                        "wavelet --option selects wavelet2d1d; see the list below)")
    f.add_argument("--method", choices=registry.METHODS, default=None,
                   help="solver: " + "; ".join(f"{', '.join(registry.methods_for(fam))} for the {fam}-cube "
                                               f"regularizations (default {registry.methods_for(fam)[0]})"
                                               for fam in (registry.FULL, registry.SUBSPACE)))
    f.add_argument("--max-iter", dest="max_iter", type=_number_or_auto(int, "--max-iter", "an integer"), default=None,
                   metavar="N",
                   help="maximum number of iterations, or 'auto' (chosen by Poisson thinning; for auto, none, "
                        "lowrank and lowrank_local) (default per method: em 50, ista 2000, fista 300; none and "
                        "lowrank_local: chosen by Poisson thinning; lowrank: 30)")
    f.add_argument("--tol", type=float, default=None, metavar="T",
                   help="stop when the relative change between iterations (of the cube for EM with a prior, "
                        "else of the objective) is <= T for 5 iterations (dimensionless; default 1e-4; 0 runs all "
                        "iterations)")
    f.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="Zarr store where the iterate is saved every --checkpoint-every iterations (new, or one "
                        "written by xfusion's checkpoint writer; never an input or the output)")
    f.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=None, metavar="K",
                   help="save a checkpoint every K iterations (default 10)")
    f.add_argument("--resume", action="store_true", default=None,
                   help="continue an interrupted run from --checkpoint (same inputs and settings required; "
                        "an error if there is no checkpoint)")
    f.add_argument("--resume-or-start", dest="resume_or_start", action="store_true",
                   help="continue from --checkpoint if it exists, else start a new run that writes it")
    f.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="floating-point precision of the iterate (default float32)")
    f.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="address of a Dask distributed scheduler (e.g. tcp://host:8786) to run on; the "
                        "workers read the input stores (shared file system) and the fused cube is written "
                        "chunk by chunk")
    f.add_argument("--retain-worker-memory", action="store_true",
                   help="with --scheduler: the workers keep freed memory while this run lasts (faster "
                        "iterations; each worker holds about its peak working set, which distributed's memory "
                        "monitor counts: use where workers have room; see xfusion.solvers.heap)")
    f.add_argument("--dask", action="store_true",
                   help="out of core on this machine: open the inputs lazily with their stored Zarr chunks "
                        "and run block-wise with Dask's threads (bounded memory for large fields; settings "
                        "left 'auto' are tuned in memory when that fits xfusion.tuning.IN_MEMORY_BYTES, 4 GiB)")
    f.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    f.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="regularization/solver option, repeatable: e.g. k=1.5 (threshold in noise sigmas), "
                        "n_scales_2d=1, n_scales_1d=5 (wavelet scales), rank=10 (spectral components), "
                        "mu=0.03 (Sobolev weight), step=... (ista). Values are TOML literals (or JSON, for a list "
                        "holding null: shape_prior='[\"auto\", null]'); unknown keys are an error")
    f.set_defaults(func=cmd_fuse)

    t = sub.add_parser(
        "toy", formatter_class=_Formatter, help="write a toy pair of observations and its truth",
        description="Write the toy supernova remnant NAME as DIR/x.zarr (sharp in space), DIR/y.zarr (sharp in\n"
                    "energy) and DIR/truth.zarr (variable flux, ph cm-2 s-1 per voxel). Pixel sizes are in\n"
                    "arcsec, energy edges in keV, exposure in s, effective areas in cm2.")
    t.add_argument("name", choices=NAMES, metavar="NAME", help=f"toy model: {', '.join(NAMES)} "
                   "(small: X 15x15 pixels of 10 arcsec x 12 channels of 75 eV, Y 5x5 pixels of 30 arcsec "
                   "x 240 channels of 3.75 eV; 0.5-1.4 keV)")
    t.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created if needed)")
    t.add_argument("--seed", type=int, default=0, help="random seed of the sky and the Poisson draws (default: 0)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace existing DIR/x.zarr, y.zarr, truth.zarr written by xfusion (including your own "
                        "observations saved with xfusion.io.zarr.write!); without it any existing one is refused "
                        "and nothing is written. Never a file, a non-Zarr folder or a store xfusion did not write")
    t.set_defaults(func=cmd_toy)

    m = sub.add_parser(
        "metrics", formatter_class=_Formatter, help="quality metrics of a fused result",
        description="Print quality metrics of a fused result. With TRUTH.zarr: NMSE (dB), aSAM (rad), acSSIM\n"
                    "and ERGAS against the true flux (ph cm-2 s-1 per voxel, same x/y grid in arcsec and energy\n"
                    "grid in keV). Always: consistency of the predicted counts with the observed counts of\n"
                    "both instruments (PSNR in dB, SSIM, relative error of the mean spectrum).")
    m.add_argument("result", metavar="OUT.zarr", help="result store written by `xfusion fuse`")
    m.add_argument("truth", metavar="TRUTH.zarr", nargs="?", default=None,
                   help="optional truth store with variable flux (x, y, energy), e.g. from `xfusion toy`")
    m.set_defaults(func=cmd_metrics)

    pl = sub.add_parser(
        "plot", formatter_class=_Formatter, help="figures of a fused result",
        description="Write summary.png, spectra.png, maps.png and history.png (and errors.png with --truth)\n"
                    "into DIR. Maps have x/y axes in arcsec; spectra are flux densities in ph cm-2 s-1 keV-1\n"
                    "against energy in keV; the history is the objective against iterations.")
    pl.add_argument("result", metavar="OUT.zarr", help="result store written by `xfusion fuse`")
    pl.add_argument("-o", "--output", required=True, metavar="DIR",
                    help="output folder (created if needed; never an input store, inside one or inside any Zarr "
                         "store)")
    pl.add_argument("--overwrite", action="store_true",
                    help="replace figures of these names in DIR that xfusion wrote (PNG marked Software=xfusion); "
                         "without it any existing one is refused. Never replaces a file xfusion did not write")
    pl.add_argument("--truth", metavar="TRUTH.zarr", default=None,
                    help="truth store (variable flux in ph cm-2 s-1 per voxel) to compare with")
    pl.add_argument("--pixel", action="append", metavar="IX,IY",
                    help="fused-pixel indices whose spectra to show, repeatable (default: the brightest and a "
                         "typical source pixel)")
    pl.set_defaults(func=cmd_plot)

    j = sub.add_parser(
        "jwst", formatter_class=_Formatter, help="fuse JWST NIRCam images with a NIRSpec IFU cube",
        description="Fuse co-registered NIRCam i2d images (resampled to 1/k of the NIRSpec spaxel, k an integer,\n"
                    "e.g. SyFu's 0.1/3\"; same field) with a NIRSpec s3d cube (MJy/sr, wavelength in um), or the\n"
                    "JWST toy (--toy), and print SyFu's checks: cross-calibration factors, PSNR (dB) and SSIM of\n"
                    "every filter image of the fused cube against NIRCam (held-out filters too), the mean spectrum\n"
                    "against NIRSpec.")
    j.add_argument("--imager", nargs="+", metavar="I2D.fits", help="NIRCam images, one per filter")
    j.add_argument("--ifu", metavar="S3D.fits", help="NIRSpec IFU cube")
    j.add_argument("--toy", action="store_true", help="use the JWST toy (xfusion.jwst.make_toy) instead of files")
    j.add_argument("--seed", type=int, default=0, help="seed of the toy (default: 0)")
    j.add_argument("--held-out", nargs="+", metavar="FILTER", help="filters left out of the fusion and predicted")
    j.add_argument("--mu", type=_number_or_auto(float, "--mu", "a number"), default=None,
                   help="Sobolev weight, or 'auto' (chosen by Gaussian data fission; default: xfusion.jwst.DEFAULT_MU)")
    j.add_argument("--rank", type=int, default=None, help="subspace rank (default: min(5, filters + 1))")
    j.add_argument("--gamma", type=float, default=None, help="relative weight of the IFU data term (default: 1)")
    j.add_argument("--max-iter", type=int, default=None, help="iteration limit (default: 300)")
    j.add_argument("-o", "--output", metavar="OUT.zarr", default=None,
                   help="write the fused result (a new store; written to a temporary sibling and renamed when "
                        "complete)")
    j.add_argument("--overwrite", action="store_true",
                   help="replace an existing Zarr store at --output that xfusion wrote (never an input, a file, a "
                        "non-Zarr folder or a store xfusion did not write)")
    j.set_defaults(func=cmd_jwst)
    return p


def _raised_in_xfusion(exc):
    """True if the exception was raised by xfusion's own code (a deliberate input check)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    name = last.tb_frame.f_globals.get("__name__", "") if last is not None else ""
    return name == "xfusion" or name.startswith("xfusion.")


def main(argv=None) -> int:
    """Entry point of the ``xfusion`` command; returns the exit code."""
    if (sys.argv[1:] if argv is None else list(argv)) == ["--version"]:  # before the parser, which loads the registry
        from . import __version__

        print(f"xfusion {__version__}")
        return EXIT_OK
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args._checkpoint = args._checkpoint_before = None
    args._written = []  # output stores written completely (for the message after a Ctrl-C)
    previous = _on_sigterm()
    try:
        return int(args.func(args) or EXIT_OK)
    except KeyboardInterrupt as exc:
        print(_interrupt_message(args, exc), file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into e.g. `head`, which exited early: not an error of ours
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK
    except InputError as exc:
        print(f"xfusion: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (ValueError, TypeError, FileNotFoundError) as exc:
        if _raised_in_xfusion(exc):
            print(f"xfusion: error: {exc}", file=sys.stderr)
            return EXIT_INPUT
        traceback.print_exc()
        print("xfusion: internal error (please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL
    except OSError as exc:
        if exc.errno in ENV_ERRNOS:  # a full disk, a quota, a read-only folder: the environment, not a bug
            print(f"xfusion: error: {_os_error(exc)}", file=sys.stderr)
            return EXIT_INPUT
        traceback.print_exc()
        print("xfusion: internal error (please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        print("xfusion: internal error (please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so that the run stops the same way as on Ctrl-C."""


def _on_sigterm():
    """Install the SIGTERM handler (main thread only); return the previous one (None if not installed)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise _Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _interrupt_message(args, exc):
    """Where the run can be continued from: the last committed checkpoint and its iteration, or that none exists."""
    what = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
    msg = f"xfusion: {what}"
    written = getattr(args, "_written", None)
    if written:  # the signal came during the final write, which finished first: the run's work is complete
        return (f"{msg} after the output was written: {', '.join(written)} "
                f"{'is' if len(written) == 1 else 'are'} complete (nothing left to do or resume; the exit code "
                "still says that the run was interrupted)")
    ckpt = getattr(args, "_checkpoint", None)
    if ckpt:
        from .checkpoints import describe

        last = describe(ckpt)
        if last is None:
            msg += (f"; no checkpoint exists at {ckpt} (none was written before the interruption): rerun the same "
                    "command to start again")
        else:
            msg += (f"; the last checkpoint is {ckpt} at iteration {last['iteration']}: rerun the same command "
                    "with --resume to continue from it")
            if last == getattr(args, "_checkpoint_before", None) and not getattr(args, "resume", None):
                msg += " (it was written by an earlier run: this run had not saved one yet)"
    elif args.command == "fuse":
        msg += "; no checkpoint was written (use --checkpoint PATH so that a run can be resumed with --resume)"
    return msg


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
