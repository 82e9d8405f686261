"""Command-line helpers shared by the benchmark scripts (session 30 red team).

* :func:`parse_indices`: ``--indices 0,5,7`` or ``20-59`` (inclusive ranges) checked against the suite's size; an
  index out of range or negative is an argparse error (exit 2), not an ``IndexError`` traceback or, for ``-1``,
  silently the last scene.
* :func:`parse_json_dict`: a ``--options``-like JSON object, or an argparse error saying what is wrong.
* :func:`probe_options`, :func:`run_probe` (session 61): the options and the resumable per-scene loop of the factor
  probes (``spectral_bands.py``, ``zero_count.py``), with the output checks below.
* Result files (DESIGN section 9, users' data are sacred): every record a script writes carries the key
  :data:`MARKER` with the script's name. :func:`check_output` runs before any computing and refuses a path that holds
  anything else (a file the script did not write, a directory, a missing or read-only folder); an empty file is
  accepted (nothing to lose). :func:`append_record` appends one JSON line (JSON-lines files keep growing, as
  before); :func:`write_document` rewrites the script's own file through a temporary sibling renamed over it, so an
  interrupted write never leaves a cut-short file. Both check the path again before writing.
"""
from __future__ import annotations

import json
import math
import os
import re
import time

#: key carried by every record (or document) a benchmark script writes; its value is the script's name
MARKER = "xfusion_benchmark"


def parse_indices(parser, text, n, option="--indices"):
    """Indices ``"0,5,7"`` / ``"20-59"`` (inclusive) as a list of ints in ``[0, n)``; ``parser.error`` otherwise."""
    out = []
    for item in str(text).split(","):
        item = item.strip()
        m = re.fullmatch(r"(\d+)-(\d+)", item)
        try:
            vals = list(range(int(m[1]), int(m[2]) + 1)) if m else [int(item)]
        except ValueError:
            vals = []
        if not vals:
            parser.error(f"{option}: expected comma-separated scene indices or ranges like 0,5,7 or 20-59; got {item!r}")
        for v in vals:
            if not 0 <= v < n:
                parser.error(f"{option}: index {v} out of range 0..{n - 1} (the suite has {n} scenes; "
                             f"a larger suite: raise --n)")
        out.extend(vals)
    return out


def add_suite_options(parser, split="tune", size="full"):
    """The options of the scripts that run suite scenes one by one: ``--split``, ``--size`` (``small``: 24x24x600;
    ``full``), ``--n`` (the suite size the indices refer to), ``--indices``, ``--json`` (append one record per scene,
    the script's own file) and ``--summary`` (read such files and print the counts). Defaults ``split`` and
    ``size`` are the script's."""
    parser.add_argument("--split", choices=("tune", "heldout"), default=split)
    parser.add_argument("--size", choices=("small", "full"), default=size,
                        help=f"small (24x24x600) or full (36x36-45x45 x 1600-2400 channels); default {size}")
    parser.add_argument("--n", type=int, default=24,
                        help="suite size the indices refer to, scenes.suite(split, n=N) (default 24)")
    parser.add_argument("--indices", default=None, help="scenes, e.g. 0-23 or 3,5 (default: all)")
    parser.add_argument("--json", default=None, help="append one JSON line per scene to this file (this script's own)")
    parser.add_argument("--summary", nargs="+", default=None, metavar="JSONL",
                        help="print the counts of these files and stop")


def selected_scenes(parser, args):
    """``(specs, indices, size)`` for :func:`add_suite_options`' arguments: the suite's scene specs, the indices to
    run (checked, :func:`parse_indices`) and the size as :func:`xfusion.scenes.from_spec` takes it (None: full)."""
    from xfusion import scenes

    specs = scenes.suite(args.split, n=args.n)
    idx = parse_indices(parser, args.indices, len(specs)) if args.indices else list(range(len(specs)))
    return specs, idx, ("small" if args.size == "small" else None)


def suite_rows(parser, args, script, run):
    """The scene loop of the suite benchmarks: refuses a ``--json`` path ``script`` did not write (before any work),
    calls ``run(spec, size)`` on each scene :func:`selected_scenes` selects, adds the row's ``index``, appends it to
    ``--json`` and yields it (for the script to print). A scene whose ``run`` returns None is skipped."""
    check_output(parser, args.json, script)
    specs, idx, size = selected_scenes(parser, args)
    for i in idx:
        row = run(specs[i], size)
        if row is None:
            continue
        row["index"] = i
        if args.json:
            append_record(args.json, row, script)
        yield row


def done_records(path):
    """``{index: record}`` of a resumable JSON-lines output (one record per scene with its suite ``index``; a later
    line replaces an earlier one); empty when the file does not exist yet."""
    try:
        with open(path) as fh:
            return {r["index"]: r for r in map(json.loads, fh)}
    except FileNotFoundError:
        return {}


def pending_rows(parser, args, done):
    """``(index, spec)`` of the suite rows ``args.indices`` names that ``done`` (:func:`done_records`) lacks, from
    ``xfusion.scenes.suite(args.split, n)``; ``args.n == "row"``: each held-out row from its own suite size
    (``tuning.py``'s ``row_n``, the README table's and the fresh sets' rule)."""
    from xfusion import scenes

    if args.n == "row" and args.split != "heldout":
        parser.error("--n row names held-out rows; give --split heldout")
    if args.n == "row":
        from tuning import row_n  # benchmarks/tuning.py (which imports this module)
    for i in parse_indices(parser, args.indices, 10 ** 6 if args.n == "row" else int(args.n)):
        if i not in done:
            yield i, scenes.suite(args.split, n=row_n(i) if args.n == "row" else int(args.n))[i]


def probe_options(parser, factors_help):
    """The options of the per-scene factor probes (``spectral_bands.py``, ``zero_count.py``): ``--split``, ``--n``
    (a suite size, or "row": each held-out row's own), ``--size`` (default or small), ``--indices``, ``--factors``,
    ``--out`` (one JSON line per scene, resumable, the script's own file) and ``--summary``."""
    parser.add_argument("--split", default="tune")
    parser.add_argument("--n", default="48", help="suite size, or 'row': each held-out row's own (tuning.py row_n)")
    parser.add_argument("--size", default="default", choices=("default", "small"))
    parser.add_argument("--indices", help="e.g. 0-23 or 0,4,9")
    parser.add_argument("--factors", default="2", help=factors_help)
    parser.add_argument("--out", help="JSON lines, one per scene (resumable; a file this script wrote, or a new one)")
    parser.add_argument("--summary", metavar="FILE[,FILE]", help="print the summary of stored records and exit")


def run_probe(parser, args, script, measure, summary):
    """The loop of a factor probe (:func:`probe_options`). With ``--summary``: print ``summary(records)`` of those
    files and return. Else (``--indices`` and ``--out`` needed): refuse an ``--out`` that ``script`` did not write
    (before any work), then for each row not yet in ``--out`` append ``{"index", **measure(spec, factors),
    "seconds"}`` (MARKER added), print one line per row and finally the summary of every record."""
    if args.summary:
        recs = [json.loads(line) for fn in args.summary.split(",") for line in open(fn)]
        print("\n".join(summary(recs)))
        return
    if not (args.indices and args.out):
        parser.error("--indices and --out are needed (or --summary)")
    check_output(parser, args.out, script, option="--out")
    factors = tuple(parse_numbers(parser, args.factors, "--factors", "factors", "2,3"))
    done = done_records(args.out)
    for i, spec in pending_rows(parser, args, done):
        t0 = time.perf_counter()
        rec = {"index": i, **measure(spec, factors)}
        rec["seconds"] = time.perf_counter() - t0
        append_record(args.out, rec, script)
        done[i] = rec
        print(f"{spec['name']}: {'measured' if rec.get('result') else 'not measured'} ({rec['seconds']:.0f} s)",
              flush=True)
    print("\n".join(summary(list(done.values()))))


def line_map_changes(dv, dw):
    """``; N with lines: ...``: the median relative velocity- and width-RMS changes of a probe's line skies (arrays
    of ``new / reference - 1``), or "" without line skies."""
    import numpy as np

    if not len(dv):
        return ""
    return (f"; {len(dv)} with lines: velocity RMS median {100 * float(np.median(dv)):+.1f} % (lower on "
            f"{int((np.asarray(dv) < 0).sum())}), width RMS median {100 * float(np.median(dw)):+.1f} %")


def parse_numbers(parser, text, option, what, example):
    """Comma-separated finite numbers >= 0 (``what``, e.g. "pseudo-counts", like ``example``) as a list of floats;
    ``parser.error`` otherwise."""
    try:
        vals = [float(v) for v in str(text).split(",")]
    except ValueError:
        vals = []
    if not vals or any(not (math.isfinite(v) and v >= 0) for v in vals):
        parser.error(f"{option}: expected comma-separated {what} like {example}; got {text!r}")
    return vals


def parse_json_dict(parser, text, option):
    """A JSON object given on the command line, or ``parser.error`` naming ``option``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        parser.error(f"{option} is not valid JSON ({exc}); e.g. {option} '{{\"max_iter\": 50}}'")
    if not isinstance(value, dict):
        parser.error(f"{option} must be a JSON object, e.g. '{{\"max_iter\": 50}}'; got {text!r}")
    return value


def parse_records(text):
    """The records of a JSON document (an object, or a list of objects) or of JSON lines; None if unreadable."""
    try:
        doc = json.loads(text)
        return [doc] if isinstance(doc, dict) else doc if isinstance(doc, list) else None
    except json.JSONDecodeError:
        pass
    lines = [ln for ln in text.split("\n") if ln.strip()]
    out = []
    for i, ln in enumerate(lines):
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            # a last line cut short by a killed run (no newline after it) of an otherwise readable file
            if i == len(lines) - 1 and not text.endswith("\n") and out:
                break
            return None
    return out


def why_not_ours(path, script):
    """None if ``path`` may be written by ``script`` (absent, empty, or only records carrying MARKER == script);
    otherwise the reason it is refused."""
    if not os.path.lexists(path):
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            return f"its folder {folder} does not exist"
        if not os.access(folder, os.W_OK):
            return f"its folder {folder} is not writable"
        return None
    if not os.path.isfile(path) or os.path.islink(path):
        return "it exists and is not a regular file"
    if not os.access(path, os.W_OK):
        return "it is not writable"
    with open(path, "rb") as fh:
        raw = fh.read()
    if not raw.strip():
        return None
    try:
        recs = parse_records(raw.decode("utf-8"))
    except UnicodeDecodeError:
        recs = None
    if not recs or not all(isinstance(r, dict) and r.get(MARKER) == script for r in recs):
        return (f"it exists and was not written by benchmarks/{script} (its records carry no "
                f"{MARKER!r}: {script!r} key)")
    return None


def check_output(parser, path, script, option="--json"):
    """Refuse (``parser.error``, before any computing) a result path that ``script`` may not write."""
    if path is None:
        return
    why = why_not_ours(path, script)
    if why:
        parser.error(f"{option} {path}: refused: {why}. Nothing was computed; choose a new file name (or a file "
                     f"this script wrote, to add to it)")


def _recheck(path, script):
    why = why_not_ours(path, script)
    if why:
        raise RuntimeError(f"{path}: not written: {why} (it changed while the benchmark ran)")


def append_record(path, record, script):
    """Append ``record`` (a dict; MARKER added) as one JSON line to ``script``'s own file ``path``."""
    _recheck(path, script)
    line = json.dumps({MARKER: script, **record}, default=str) + "\n"
    with open(path, "a+") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell():
            fh.seek(fh.tell() - 1)
            if fh.read(1) != "\n":  # after a line cut short by a killed run
                line = "\n" + line
        fh.write(line)
        fh.flush()


def write_document(path, doc, script, **dump_kw):
    """Rewrite ``script``'s own file ``path`` with ``doc`` (a dict: MARKER added; a list: added to each dict record),
    through a temporary sibling renamed over it."""
    _recheck(path, script)
    if isinstance(doc, dict):
        doc = {MARKER: script, **doc}
    else:
        doc = [{MARKER: script, **r} for r in doc]
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            json.dump(doc, fh, **dump_kw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
