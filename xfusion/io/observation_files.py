"""Observations from instrument files, and alignment of two observations by cropping.

:func:`observation_from_files` bins an event list (:func:`xfusion.io.events.read_events`)
on a tangent-plane grid and attaches the instrument's OGIP responses
(:func:`xfusion.io.ogip_read.read_rmf`, :func:`xfusion.io.ogip_read.read_arf`) and PSF image
(:func:`xfusion.io.psf.read_psf`), returning a validated :func:`xfusion.observation`.

:func:`align` crops two such observations onto grids that :func:`xfusion.fusion_grid`
accepts (integer pixel and channel factors with coinciding edges), or explains which
re-binning is needed when cropping cannot do it.

Energy grid and response
------------------------
The counts are binned on whole RMF channels: without ``energy_edges`` the grid is the
RMF's EBOUNDS channels inside ``band`` (grouped ``group`` at a time); explicit
``energy_edges`` must fall on EBOUNDS edges (they are snapped to them when within 1% of
a channel width). The RMF columns are summed over each group, so any grouping of whole
channels is allowed (not only a uniform factor). RMF rows (true energies) that do not
overlap the band are dropped: the fused model only has photons inside the band, so they
are never used (this keeps e.g. a 12000 x 12000 microcalorimeter RMF small); small negative
elements left in the kept rows (calibration noise, e.g. EPIC-pn at 0.17-0.23 keV) are set to 0
with a warning (:func:`xfusion.observation.clip_negative_rows`). Integer PI events are binned
by RMF channel index (``PI // k``, ``k`` inferred from EBOUNDS), never by comparing energies
with the float32 EBOUNDS. ``grouping=`` (OGIP +1/-1 flags) chooses channel groups of any
widths, e.g. the coarse channels whose edges are also channel edges of the other instrument
(:func:`common_channel_edges`), which is what :func:`align` suggests when cropping cannot
align two grids.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import xarray as xr

from ..grid import _tangent_point, assign_roles, check_tangent_points, fusion_grid, has_matrix_response
from ..observation import (NEST_TOL, REL_TOL, _center_degrees, _full_response_refused, clip_negative_rows,
                           edge_tolerance, energy_edges as _edges_of, is_full_response, is_pixel_observation,
                           observation, pixel_size as _pixel_size, seam_gaps, split_full_response)
from .events import INSTRUMENTS, _detect_instrument, _events_hdu, read_events
from .ogip_read import SparseRMF, edges_coords, read_arf, read_rmf
from .psf import read_psf

__all__ = ["observation_from_files", "align", "common_channel_edges", "background_counts", "background_from_pha"]

_GRID_KEYS = ("energy_edges", "pixel_size", "center", "shape")
#: snapping tolerance of user energy edges onto EBOUNDS edges, in channel widths
_SNAP = 0.01


# --------------------------------------------------------------------------- responses
def _sparse_rmf(rmf):
    if isinstance(rmf, SparseRMF):
        return rmf
    if isinstance(rmf, xr.DataArray):
        import scipy.sparse

        da = rmf.transpose("energy_true", "energy")
        ch = da["channel"].values if "channel" in da.coords else np.arange(da.sizes["energy"])
        return SparseRMF(
            matrix=scipy.sparse.csr_array(np.asarray(da.values, dtype=np.float64)),
            energy_true_edges=np.stack([da["energy_true_lo"].values, da["energy_true_hi"].values], axis=1),
            energy_edges=np.stack([da["energy_lo"].values, da["energy_hi"].values], axis=1),
            channel=np.asarray(ch), attrs=dict(da.attrs))
    return read_rmf(rmf, sparse=True)


def _ebounds(sp):
    """EBOUNDS channel edges (keV, n + 1): every ``E_MIN`` and the last ``E_MAX``.

    A seam where ``E_MAX[i]`` and ``E_MIN[i + 1]`` differ by float32 rounding
    (:func:`xfusion.observation.seam_gaps`) is accepted, ``E_MIN[i + 1]`` kept; a real gap or
    overlap is refused, naming the channel and the size of the gap.
    """
    lo, hi = sp.energy_edges[:, 0], sp.energy_edges[:, 1]
    gap, bad = seam_gaps(lo, hi)
    if bad.size:
        i = int(bad[0])
        ch = np.asarray(sp.channel)
        c0, c1 = (int(ch[i]), int(ch[i + 1])) if ch.size == lo.size else (i, i + 1)
        raise ValueError(
            f"RMF {sp.attrs.get('file', '')!r}: EBOUNDS channels are not contiguous: channel {c0} ends at "
            f"{hi[i]:.9g} keV and channel {c1} starts at {lo[i + 1]:.9g} keV, a {'gap' if gap[i] > 0 else 'overlap'} "
            f"of {abs(gap[i]):.3g} keV ({abs(gap[i]) / (hi[i] - lo[i]):.3g} of a channel; {bad.size} such seam(s)), "
            "more than float32 rounding. Counts cannot be binned on them: use the EBOUNDS that belong to this RMF "
            "(E_MAX of each channel equal to E_MIN of the next)"
        )
    return np.append(lo, hi[-1])


def _channel_indices(edges, eb, label):
    """Indices of EBOUNDS edges ``eb`` matching the requested ``edges`` (snapped within _SNAP channel)."""
    if edges.ndim != 1 or edges.size < 2:
        raise ValueError(
            f"{label}: energy_edges must hold at least 2 increasing energies (keV), the edges of the counts channels "
            f"among the RMF's EBOUNDS edges; got {edges.size} value(s) {edges.ravel()[:2].tolist()}. (An empty "
            "common_channel_edges(...) means this RMF has no channels whose edges fall on the other grid in its band; "
            "its warning says why.) Give 2 or more EBOUNDS edges, or omit energy_edges and use band=(emin, emax) "
            "with group= or grouping="
        )
    idx = np.clip(np.searchsorted(eb, edges), 1, eb.size - 1)
    idx = np.where(np.abs(eb[idx - 1] - edges) <= np.abs(eb[idx] - edges), idx - 1, idx)
    width = np.diff(eb)[np.clip(idx, 0, eb.size - 2)]
    bad = np.flatnonzero(np.abs(eb[idx] - edges) > _SNAP * width)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{label}: energy edge {edges[i]:.6g} keV is not a channel edge of the RMF (nearest EBOUNDS edge "
            f"{eb[idx[i]]:.6g} keV). The counts must be binned on whole RMF channels: choose energy_edges among the "
            "EBOUNDS edges, or omit energy_edges and use band=(emin, emax) and group=."
        )
    if np.any(np.diff(idx) <= 0):
        raise ValueError(f"{label}: energy_edges map to empty RMF channel groups; use strictly increasing edges "
                         "at least one RMF channel apart")
    return idx


def _rmf_on_channels(sp, idx):
    """``(response, area)``: dense RMF DataArray with columns summed over the channel groups ``idx`` and rows
    cropped to the band; ``area`` is None, or for a full response (RMF x ARF in cm2,
    :func:`xfusion.observation.is_full_response`) the effective area (energy_true, cm2) it is split into: the
    sums of its kept rows over ALL EBOUNDS channels, the response then being each row divided by its sum
    (:func:`xfusion.observation.split_full_response`)."""
    eb = _ebounds(sp)
    e0, e1 = eb[idx[0]], eb[idx[-1]]
    t_lo, t_hi = sp.energy_true_edges[:, 0], sp.energy_true_edges[:, 1]
    rows = np.flatnonzero((t_hi > e0) & (t_lo < e1))
    if rows.size == 0 or t_lo[rows[0]] > e0 or t_hi[rows[-1]] < e1:
        raise ValueError(
            f"RMF {sp.attrs.get('file', '')!r} covers true energies {t_lo[0]:.4g}-{t_hi[-1]:.4g} keV, not the "
            f"band {e0:.4g}-{e1:.4g} keV; narrow the band"
        )
    m = sp.matrix[rows[0]:rows[-1] + 1][:, idx[0]:idx[-1]]
    m = np.asarray(m.toarray(), dtype=np.float64)
    m = np.add.reduceat(m, idx[:-1] - idx[0], axis=1)
    # rows outside the band are already dropped; tiny negative elements left are clipped with a warning
    m = clip_negative_rows(m, np.append(t_lo[rows[0]:rows[-1] + 1], t_hi[rows[-1]]),
                           f"RMF {sp.attrs.get('file', '')!r}")
    coords = edges_coords("energy_true", t_lo[rows[0]:rows[-1] + 1], t_hi[rows[0]:rows[-1] + 1])
    attrs = {k: v for k, v in sp.attrs.items() if isinstance(v, (str, int, float, bool))}
    area = None
    if is_full_response(sp):
        note = f"split from the full response (RMF x ARF, cm2) {sp.attrs.get('file', '')!r}"
        m, a = split_full_response(m, np.asarray(sp.matrix[rows[0]:rows[-1] + 1].sum(axis=1)).ravel())
        area = xr.DataArray(a, dims=("energy_true",), coords=dict(coords), name="arf",
                            attrs={"units": "cm2", "note": f"row sums of the response {note}"})
        attrs.update(units="1", arf_folded=False, note=f"rows divided by their sums (effective_area): {note}")
    coords.update(edges_coords("energy", eb[idx[:-1]], eb[idx[1:]]))
    return xr.DataArray(m, dims=("energy_true", "energy"), coords=coords, name="rmf", attrs=attrs), area


def _pi_per_channel(sp, kev_per_unit):
    """PI values per RMF channel if EBOUNDS channel ``c`` holds PI ``[c k, (c + 1) k)``, else None.

    ``k = E_MAX[-1] / (unit * (CHANNEL[-1] + 1))`` must be a whole number and the upper half of
    the channels must start within 1 % of a channel of ``c k`` PI units (EPIC-pn EBOUNDS depart
    from 5 eV x channel below 3 keV: the nominal energies there are not the channel boundaries
    of the PI values, which is why the events are binned by channel, not by energy).
    """
    ch = np.asarray(sp.channel, dtype=np.int64)
    lo, hi = sp.energy_edges[:, 0], sp.energy_edges[:, 1]
    k = float(hi[-1]) / kev_per_unit / float(ch[-1] + 1)
    if not k > 0.5 or abs(k - round(k)) > 1e-3:
        return None
    k = int(round(k))
    upper = slice(ch.size // 2, None)
    if np.max(np.abs(lo[upper] / (kev_per_unit * k) - ch[upper])) > 0.01:
        return None
    return k


def common_channel_edges(rmf, obs):
    """EBOUNDS edges (keV) of ``rmf`` that coincide with channel edges of observation ``obs``.

    Use them as ``energy_edges=`` of :func:`observation_from_files` for the coarse
    instrument so that its channels group whole channels of the fine one. Edges coincide
    within 1 % of a fine channel (:data:`xfusion.observation.NEST_TOL`, the tolerance of
    :func:`align` and :func:`xfusion.fusion_grid`; float32 EBOUNDS and e.g. EPIC-pn's edges
    a few meV off a 1 eV grid match). Where no RMF edge nests (EPIC-pn below 3 keV against a
    1 eV grid: edges up to 0.5 eV off), fewer edges come back, and fewer than 2 with a warning.
    """
    sp = _sparse_rmf(rmf)
    eb = _ebounds(sp)
    ef = _edges_of(obs)
    w = float(np.min(np.diff(ef)))
    tol = edge_tolerance(eb, w, NEST_TOL)
    j = np.clip(np.searchsorted(ef, eb), 1, ef.size - 1)
    near = np.minimum(np.abs(ef[j - 1] - eb), np.abs(ef[j] - eb))
    common = eb[near <= tol]
    if common.size < 2:
        band = (eb >= ef[0]) & (eb <= ef[-1])
        widths = np.diff(eb)[np.clip(np.flatnonzero(band), 0, eb.size - 2)]
        grid = (f"{band.sum()} EBOUNDS edges, channels {widths.min():.4g}-{widths.max():.4g} keV, the nearest "
                f"{near[band].min() / w:.3g} fine channel off" if band.any() else "no EBOUNDS edge")
        warnings.warn(
            f"common_channel_edges: {common.size} channel edge(s) of RMF {sp.attrs.get('file', '')!r} coincide "
            f"with channel edges of '{obs.attrs.get('name', 'obs')}' ({ef.size - 1} channels of {w:.4g} keV, "
            f"{ef[0]:.6g}-{ef[-1]:.6g} keV; the RMF has {grid} there) within {NEST_TOL:.0%} of a fine channel: no "
            "channel of this RMF groups whole channels of the other observation in this band, and fewer than 2 edges "
            "are no energy_edges= (observation_from_files refuses them). Fuse a band where the two instruments' "
            "channel edges coincide",
            stacklevel=2,
        )
    return common


def _in_counts_layout(arr, counts, what, dims):
    """``arr`` as a float/bool NumPy array in the layout of ``counts``: a DataArray is transposed by its dim names
    (which must be among ``dims``, the counts' dims it may have) and its ``x``/``y``/``pixel`` coordinates, if any,
    must equal the counts'; anything else is taken as is (positionally, in the counts' order)."""
    if not isinstance(arr, xr.DataArray):
        return np.asarray(arr)
    extra = [d for d in arr.dims if d not in dims]
    if extra:
        raise ValueError(f"{what} DataArray has dims {arr.dims}; expected some of {tuple(dims)} (any order), named "
                         "like the counts' so it can be placed by name (rename them, e.g. .rename(dim_0='y', "
                         "dim_1='x'), or pass a plain array in the counts' (x, y, ...) order)")
    da = arr.transpose(*[d for d in counts.dims if d in arr.dims])
    for d in ("x", "y", "pixel"):
        if d in da.coords and d in counts.coords:
            own, ref = np.asarray(da[d].values, dtype=np.float64), np.asarray(counts[d].values, dtype=np.float64)
            if own.shape != ref.shape or not np.allclose(own, ref, rtol=0, atol=REL_TOL * max(np.ptp(ref), 1.0)):
                raise ValueError(f"{what}: its coordinate {d} ({own[:3]}...) differs from the counts' ({ref[:3]}...); "
                                 f"give {what} on the counts' pixels")
    return np.asarray(da.values)


def background_counts(counts, background):
    """Expected background counts per voxel (shaped like ``counts``) from a background description.

    ``counts``: DataArray (x, y, energy) or (pixel, energy) of binned events. ``background``:

    * an array shaped like ``counts``: expected background counts per voxel, taken as is;
    * an array (n_energy,): the background spectrum (counts) of the whole field (or array),
      spread uniformly per unit area: each of the ``n`` equal pixels gets ``spectrum / n``;
    * ``{"region": mask}`` (sky binning): ``mask`` bool (nx, ny) True on a source-free region
      of the same events; every pixel gets the region's mean spectrum per pixel,
      ``B[x, y, e] = sum_region counts[., ., e] / n_region`` -- the region spectrum scaled by
      the area ratio pixel / region (what a BACKSCAL ratio records; equal exposure assumed:
      same events). The region's counts stay in the data (they are also explained by B).
    """
    c = np.asarray(counts.values, dtype=np.float64)
    spatial = c.shape[:-1]
    if isinstance(background, dict):
        if set(background) != {"region"}:
            raise ValueError(f"background dict takes 'region' (a bool mask over {spatial}) or, in "
                             f"observation_from_files, 'pha' and 'backscal'; got {list(background)}")
        m = _in_counts_layout(background["region"], counts, "background region", counts.dims[:-1])
        if m.dtype != bool or m.shape != spatial:
            raise ValueError(f"background region must be a bool mask of shape {spatial} (the counts' pixels); got "
                             f"{m.dtype} {m.shape}")
        if not m.any():
            raise ValueError("background region is empty; mark the source-free pixels True")
        per_pixel = c[m].sum(axis=0) / m.sum()
        return np.broadcast_to(per_pixel, c.shape).copy()
    b = np.asarray(_in_counts_layout(background, counts, "background", counts.dims), dtype=np.float64)
    if b.shape == c.shape:
        return b.copy()
    if b.shape == c.shape[-1:]:
        return np.broadcast_to(b / int(np.prod(spatial)), c.shape).copy()
    raise ValueError(f"background must be counts per voxel {c.shape}, a spectrum ({c.shape[-1]},) or "
                     f"{{'region': mask}}; got shape {b.shape}")


def background_from_pha(background, energy_edges, exposure, channels=None):
    """Background spectrum (counts per counts channel, the whole extraction) from a background PHA file.

    ``background``: ``{"pha": path or read_pha Dataset (type I, or one row of a type II),
    "backscal": B_s}`` with ``B_s`` the BACKSCAL of the source extraction (the whole field or
    pixel array of the counts) in the units of the file's BACKSCAL (e.g. the file's own value
    for an NXB spectrum of the same pixels). Each background channel is scaled as OGIP
    fitting tools do:

        B = C_b * (B_s / BACKSCAL_b) * (t_s / EXPOSURE_b) / AREASCAL_b

    (``C_b`` counts, or RATE x EXPOSURE_b; ``t_s`` = ``exposure``, s, the source exposure;
    the source AREASCAL is 1), then summed over the background channels inside each counts
    channel: by channel number when ``channels`` (the (n + 1,) RMF channel numbers bounding
    the counts channels) is given, else by the file's EBOUNDS energies, which must tile
    ``energy_edges`` (keV). Channels in use with QUALITY != 0 are refused.
    Returns ``(spectrum (n,), description)``.
    """
    from .ogip_read import read_pha

    if set(background) != {"pha", "backscal"}:
        raise ValueError("a background PHA is given as {'pha': path, 'backscal': B_s}, B_s the BACKSCAL of the "
                         "source extraction (the whole field / pixel array of the counts) in the units of the "
                         f"file's BACKSCAL; got keys {sorted(background)}")
    src = background["pha"]
    ds = src if isinstance(src, xr.Dataset) else read_pha(src)
    label = os.path.basename(str(ds.attrs.get("file", src)))
    if "spectrum" in ds.dims:
        raise ValueError(f"{label} is a type-II PHA with {ds.sizes['spectrum']} spectra; pass one row: "
                         "{'pha': xfusion.io.read_pha(path, spectrum=i), ...}")
    b_s = float(background["backscal"])
    if not np.isfinite(b_s) or b_s <= 0:
        raise ValueError(f"background backscal must be a positive number (the source extraction's BACKSCAL); "
                         f"got {background['backscal']!r}")
    t_b = ds["exposure"].values
    if not np.all(np.isfinite(t_b)) or np.any(t_b <= 0):
        raise ValueError(f"{label}: no positive EXPOSURE; the background cannot be scaled to the source exposure")
    c_b = ds["counts"].values if "counts" in ds else ds["rate"].values * t_b
    scaled = c_b * (b_s / ds["backscal"].values) * (float(exposure) / t_b) / ds["areascal"].values
    n = len(energy_edges) - 1
    if channels is not None:
        ch = ds["channel"].values
        which = np.searchsorted(np.asarray(channels), ch, side="right") - 1
        inside = (ch >= channels[0]) & (ch < channels[-1])
        missing = np.setdiff1d(np.arange(channels[0], channels[-1]), ch[inside])
        if missing.size:
            raise ValueError(f"{label}: channels {missing[:5].tolist()}... of the counts are not in the background "
                             "PHA; it must cover the band on the RMF's channels")
    else:
        if "energy_lo" not in ds.coords:
            raise ValueError(f"{label}: no EBOUNDS (in the file or its RESPFILE) and no rmf= given: the background "
                             "channels cannot be matched to the counts channels")
        e = np.asarray(energy_edges, dtype=np.float64)
        lo, hi = ds["energy_lo"].values, ds["energy_hi"].values
        which = np.searchsorted(e, 0.5 * (lo + hi), side="right") - 1
        inside = (which >= 0) & (which < n)
        width = np.bincount(which[inside], weights=(hi - lo)[inside], minlength=n)
        if not np.allclose(width, np.diff(e), rtol=1e-3, atol=0):
            raise ValueError(f"{label}: its EBOUNDS channels do not tile the counts channels "
                             f"{e[0]:.6g}-{e[-1]:.6g} keV; use a background on the same channels")
    bad = inside & (ds["quality"].values != 0)
    if bad.any():
        raise ValueError(f"{label}: {int(bad.sum())} channel(s) in use have QUALITY != 0 (e.g. channel "
                         f"{int(ds['channel'].values[bad][0])}); narrow the band or fix the background file")
    spec = np.bincount(which[inside], weights=scaled[inside], minlength=n)
    desc = (f"{label}: counts x BACKSCAL ratio {b_s:.6g}/{float(np.median(ds['backscal'].values)):.6g} x EXPOSURE "
            f"ratio {float(exposure):.6g}/{float(np.median(t_b)):.6g} s / AREASCAL, spread per unit area")
    return spec, desc


def _exposure_map(emap, area, edges, counts):
    """Per-pixel effective area (x, y, energy_true) = emap * ARF (cropped to the band) and the mask of emap > 0."""
    if counts.dims != ("x", "y", "energy"):
        raise ValueError("exposure_map applies to sky binning; detector pixels take a per-pixel exposure array")
    m = np.asarray(_in_counts_layout(emap, counts, "exposure_map", ("x", "y")), dtype=np.float64)
    if m.shape != counts.shape[:2] or not np.all(np.isfinite(m)) or np.any(m < 0) or np.any(m > 1 + 1e-6):
        raise ValueError(f"exposure_map must be relative exposures in [0, 1] of shape {counts.shape[:2]} (x, y): "
                         f"divide an exposure map in seconds by the exposure; got shape {m.shape}")
    if area is None:
        raise ValueError("exposure_map scales the effective area: pass arf= as well")
    et = _edges_of(area, "energy_true")
    keep = np.flatnonzero((et[1:] > edges[0]) & (et[:-1] < edges[-1]))
    if keep.size == 0:  # (partial coverage is judged against the response by xfusion.observation)
        raise ValueError(f"the ARF covers {et[0]:.4g}-{et[-1]:.4g} keV but the band is {edges[0]:.4g}-{edges[-1]:.4g} "
                         "keV: pass an ARF covering the band (xfusion does not extrapolate an ARF)")
    keep = np.arange(max(keep[0] - 1, 0), min(keep[-1] + 2, et.size - 1))  # one bin margin for interpolation
    a = area.isel(energy_true=keep)
    vign = (xr.DataArray(m, dims=("x", "y")) * a).transpose("x", "y", "energy_true")
    vign = vign.assign_attrs(units=area.attrs.get("units", "cm2"))
    mask = np.broadcast_to((m > 0)[:, :, None], counts.shape).copy()
    return vign, mask


#: header values that name no instrument
_UNNAMED = {"", "UNKNOWN", "NONE", "N/A", "NULL"}


def _check_files_match_events(events, label, files):
    """Compare the events' ``TELESCOP`` / ``INSTRUME`` with those of each response file (``files``: ``(what,
    attrs)`` with attrs ``telescope`` / ``instrument`` / ``file`` as :func:`read_rmf` / :func:`read_arf` give them).
    Same telescope, another instrument (EPIC-pn events with a MOS RMF or ARF): refused, it is never right. Another
    telescope: a warning (a stand-in response for a simulation is legitimate, e.g. an XRS microcalorimeter RMF for
    simulated Resolve events). Values naming nothing (empty, UNKNOWN, NONE) are not compared. Session 33: any
    response was taken without a look at whose it was."""
    from astropy.io import fits

    with fits.open(events, memmap=False) as hdul:
        head = _events_hdu(hdul, "EVENTS", label).header
    ev_tel, ev_ins = (str(head.get(k, "")).strip().upper() for k in ("TELESCOP", "INSTRUME"))
    for what, attrs in files:
        tel, ins = (str(attrs.get(k, "")).strip().upper() for k in ("telescope", "instrument"))
        name = attrs.get("file", what)
        if ev_tel in _UNNAMED or tel in _UNNAMED:
            continue
        if tel != ev_tel:
            warnings.warn(f"{label}: the events are from TELESCOP={ev_tel!r} but the {what} {name!r} is for "
                          f"TELESCOP={tel!r}; fluxes and line shapes are only right with the response made for these "
                          f"events (ignore this for a deliberate stand-in in a simulation)", stacklevel=3)
        elif ev_ins not in _UNNAMED and ins not in _UNNAMED and ins != ev_ins:
            raise ValueError(f"{label}: the events are from {ev_tel} {ev_ins} but the {what} {name!r} is for "
                             f"{tel} {ins}: pass the {what} made for {ev_ins} (each camera has its own response)")


def _arf(arf):
    return arf if isinstance(arf, xr.DataArray) else read_arf(arf)


def _pixel_arfs(arf, counts):
    """Per-pixel effective area (pixel, energy_true) for the counts' detector pixels, chosen by pixel number.

    ``arf``: ``{pixel number: ARF path or DataArray (energy_true,)}`` (all on the same true-energy
    grid) or a DataArray (pixel, energy_true) with a ``pixel`` coordinate of detector numbers;
    pixels the counts do not hold (calibration, excluded) are dropped, missing ones refused.
    """
    if "pixel" not in counts.dims:
        raise ValueError("per-pixel ARFs (a dict, or an ARF over pixel) need bin_by='pixel'; sky binning takes "
                         "one ARF and exposure_map= for position-dependent area")
    if isinstance(arf, dict):
        parts = {int(k): _arf(v) for k, v in arf.items()}
        first = next(iter(parts.values()), None)
        if first is None or any(a.dims != ("energy_true",) for a in parts.values()):
            raise ValueError("per-pixel ARFs: give {pixel number: ARF path or DataArray over energy_true}")
        for k, a in parts.items():
            for c in ("energy_true_lo", "energy_true_hi"):
                if a[c].shape != first[c].shape or not np.array_equal(a[c].values, first[c].values):
                    raise ValueError(f"the ARF of pixel {k} has another true-energy grid than pixel "
                                     f"{next(iter(parts))}; per-pixel ARFs must share their ENERG_LO/ENERG_HI")
        arf = xr.concat([a.drop_vars([c for c in a.coords if c not in a.dims and not c.startswith("energy_true")])
                         for a in parts.values()], dim="pixel").assign_coords(pixel=list(parts))
        arf.attrs = dict(first.attrs)
    if "pixel" not in arf.coords:
        raise ValueError("a per-pixel ARF DataArray needs a 'pixel' coordinate of detector pixel numbers")
    want = np.asarray(counts["pixel"].values)
    missing = np.setdiff1d(want, arf["pixel"].values)
    if missing.size:
        raise ValueError(f"no ARF for detector pixel(s) {missing.tolist()} of the counts; give one per pixel used "
                         "or exclude those pixels (exclude_pixels=)")
    return arf.sel(pixel=want).transpose("pixel", "energy_true")


def _psf(psf, psf_pixel_size):
    if psf is None or isinstance(psf, xr.DataArray):
        if isinstance(psf, xr.DataArray) and psf_pixel_size is not None:
            from .psf import resample_psf

            src = float(np.diff(psf["psf_x"].values).mean())
            if not np.isclose(src, psf_pixel_size, rtol=REL_TOL):
                psf = resample_psf(psf, psf_pixel_size)
        return psf
    return read_psf(psf, pixel_size=psf_pixel_size)


# --------------------------------------------------------------------------- builder
def observation_from_files(
    *,
    events,
    rmf=None,
    arf=None,
    psf=None,
    grid=None,
    energy_edges=None,
    pixel_size=None,
    center=None,
    shape=None,
    psf_pixel_size=None,
    name=None,
    filters=None,
    instrument=None,
    band=None,
    group=1,
    grouping=None,
    exposure=None,
    bin_by="sky",
    exclude_pixels=None,
    background=None,
    exposure_map=None,
) -> xr.Dataset:
    """Build an observation from an event list and the instrument's response files.

    Parameters
    ----------
    events : str or os.PathLike
        Event file (XMM EPIC, Chandra ACIS or XRISM Resolve columns; see
        :func:`xfusion.io.events.read_events`).
    rmf, arf : path, DataArray (or SparseRMF for ``rmf``), optional
        OGIP redistribution matrix and ancillary response. The RMF becomes ``response``
        (its channels grouped like the counts, see the module docstring), the ARF
        ``effective_area``. Without an RMF, ``energy_edges`` is required. With
        ``bin_by="pixel"``, ``arf`` may also be per-pixel ARFs: ``{pixel number: path or
        DataArray}`` (same true-energy grid) or a DataArray (pixel, energy_true) with a
        ``pixel`` coordinate; those of the pixels kept are used, by pixel number.
        A full response (RMF x ARF in cm2, e.g. a ``.rsp``: ``SPECRESP MATRIX`` with
        ``HDUCLAS3 = 'FULL'``, which ``read_rmf`` labels ``units = "cm2"``) already holds the
        effective area: with ``arf`` it is refused (the area would count twice); alone it is
        split exactly (:func:`xfusion.observation.split_full_response`): ``effective_area`` =
        its row sums over all EBOUNDS channels (cm2), ``response`` = each row divided by its
        sum (``exposure_map`` then scales that area). Their ``TELESCOP`` / ``INSTRUME`` are
        compared with the events': another camera of the same telescope (pn events, a MOS
        RMF) is refused; another telescope (a stand-in response for a simulation) is
        warned about.
    psf : path, DataArray or None
        PSF image (FITS with a celestial WCS or a pixel-size keyword; read with
        :func:`xfusion.io.psf.read_psf`, odd, centred on its peak, normalized).
    grid : dict, optional
        ``{"energy_edges", "pixel_size", "center", "shape"}``; the alternative to the
        individual keywords below (giving both is an error).
    energy_edges : array (n + 1,), keV, optional
        Channel edges of the counts; default: the RMF's EBOUNDS channels inside ``band``.
    pixel_size : float, arcsec
        Pixel size of the counts cube.
    center : (float, float) deg, (Quantity, Quantity) or astropy SkyCoord
        (RA, Dec) of the tangent point; pixel centres are at
        ``(i - (n - 1) / 2) * pixel_size`` (x towards the west, y north). Recorded in
        ``attrs["center_ra"]``/``attrs["center_dec"]`` and used by :func:`align`.
    shape : (int, int)
        (nx, ny) pixels.
    psf_pixel_size : float, arcsec, optional
        Sampling of the returned PSF (flux-conserving resampling). Default: the image's
        native sampling (no interpolation); :func:`xfusion.fusion_grid` resamples it to
        the fused pixel when needed. Pass the sharp-spatial instrument's pixel size to
        resample once here.
    name : str, optional
        Observation label; default "<instrument> (<events file>)".
    filters, instrument : passed to :func:`read_events` (event screening, instrument).
    band : (emin, emax), keV, optional
        Band of the default energy grid: RMF channels lying entirely inside it. Default:
        all EBOUNDS channels.
    group : int
        Number of consecutive RMF channels per counts channel for the default grid (a
        trailing incomplete group is dropped).
    grouping : array of int (+1 / -1), optional
        OGIP ``GROUPING`` of the RMF channels inside ``band`` (all EBOUNDS channels if no
        band): ``+1`` starts a counts channel, ``-1`` continues it, so channel groups of any
        widths can be chosen, e.g. coarse channels whose edges coincide with the other
        instrument's (see :func:`common_channel_edges`). Replaces ``group``.
    exposure : float, s, optional
        Override the exposure of :func:`read_events` (sum of the GTIs of the events' CCD times
        the mission's dead-time correction, or the EXPOSURE/LIVETIME/ONTIME keyword when the
        file has no GTI extension); how it was obtained is in ``attrs["exposure_source"]``.
    bin_by : {"sky", "pixel"}
        ``"pixel"``: a detector-pixel observation (XRISM Resolve) binned by ``PIXEL``
        (:func:`xfusion.io.events.read_events`, ``bin_by="pixel"``: calibration pixel 12 and
        ``exclude_pixels`` left out, ``ITYPE == 0`` by default, roll from ``PA_NOM``, array
        centre from ``RA_PNT``/``DEC_PNT``); ``pixel_size`` (default 30 arcsec for Resolve) is
        the detector pixel side and ``shape`` is not used.
    exclude_pixels : sequence of int, optional
        Detector pixels to leave out with ``bin_by="pixel"`` (default: the calibration pixel).
    background : None, array, or {"region": mask}, optional
        Known additive background (expected counts = forward(Z) + B), see
        :func:`background_counts`: an array shaped like the counts (counts per voxel), an
        array (n_energy,) (the background spectrum of the whole field / array, spread per
        unit area), or ``{"region": bool (nx, ny)}`` (sky binning: a source-free region of
        the same events; its spectrum per pixel, i.e. scaled by the area ratio that BACKSCAL
        records, is the background of every pixel), or ``{"pha": path, "backscal": B_s}``: a
        background PHA (e.g. an XMM background region or a Resolve NXB spectrum) scaled to the
        source by the BACKSCAL ratio (``B_s`` the source extraction's, i.e. of the whole field or
        pixel array) and the exposure ratio, see :func:`background_from_pha`
        (``attrs["background_source"]`` records the scaling). A DataArray (the background or
        the region mask) is placed by its dim names, any order (e.g. ("y", "x", "energy")).

    exposure_map : array (nx, ny) or DataArray over ("x", "y") in any order, optional (sky binning only)
        Relative exposure of each pixel in [0, 1]: vignetting x chip gaps x bad columns (e.g. an
        ``eexpmap`` / ``fluximage`` exposure map regridded to this grid and divided by the exposure).
        The ARF becomes a per-pixel effective area ``exposure_map[x, y] * A(E)`` (the ARF cropped
        to the band's true energies first); pixels with 0 (chip gaps, bad columns) are masked
        (``mask`` False), so their counts are excluded explicitly. The low-rank regularizations
        need a position-independent area and refuse such observations.

    Returns
    -------
    xarray.Dataset
        A validated observation (see :mod:`xfusion.observation`), with attrs
        ``center_ra``, ``center_dec`` (deg), ``events_file``, ``instrument``, ``n_binned``,
        ``exposure_source`` and ``energy_binning`` (``"channel"``: integer PI binned by RMF
        channel index, ``PI // k`` with ``k`` PI values per channel inferred from EBOUNDS, e.g.
        5 for EPIC-pn and 1 for Resolve; ``"pi"``/``"energy"`` otherwise, see
        :func:`xfusion.io.events.read_events`).
    """
    if grid is not None:
        given = [k for k, v in (("energy_edges", energy_edges), ("pixel_size", pixel_size), ("center", center),
                                ("shape", shape)) if v is not None]
        if given:
            raise ValueError(f"give the grid either as grid= or as keywords, not both (also got {given})")
        unknown = set(grid) - set(_GRID_KEYS)
        if unknown:
            raise ValueError(f"unknown grid key(s) {sorted(unknown)}; grid takes {list(_GRID_KEYS)}")
        energy_edges, pixel_size = grid.get("energy_edges"), grid.get("pixel_size")
        center, shape = grid.get("center"), grid.get("shape")
    if bin_by == "pixel":
        if shape is not None:
            raise ValueError("shape= defines a sky grid; detector-pixel binning (bin_by='pixel') has no shape")
        shape = ()
    elif exclude_pixels is not None:
        raise ValueError("exclude_pixels= applies to bin_by='pixel' only")
    for label, v in (("pixel_size", pixel_size), ("center", center), ("shape", shape)):
        if v is None and not (label == "pixel_size" and bin_by == "pixel"):
            raise ValueError(f"{label} is required (pass it as a keyword or in grid=)")
    center = _center_degrees(center)  # numbers (deg), Quantities or a SkyCoord, as xfusion.observation takes
    label = os.path.basename(os.fspath(events))

    response = response_area = None
    if rmf is not None:
        sp = _sparse_rmf(rmf)
        if is_full_response(sp) and arf is not None:   # refused before any event is read
            raise _full_response_refused(sp, "arf=")
        eb = _ebounds(sp)
        if energy_edges is None:
            lo_b, hi_b = (eb[0], eb[-1]) if band is None else (float(band[0]), float(band[1]))
            tol = 1e-3 * np.diff(eb)  # band limits within 0.1% of a channel of an edge (float32 EBOUNDS)
            inside = np.flatnonzero((eb[:-1] >= lo_b - tol) & (eb[1:] <= hi_b + tol))
            if np.any(np.diff(inside) != 1):
                raise ValueError("RMF channels inside the band are not consecutive")
            if grouping is not None:
                if group != 1:
                    raise ValueError("give either group= (uniform) or grouping= (OGIP +1/-1 flags), not both")
                gr = np.asarray(grouping)
                if gr.shape != inside.shape or not np.all(np.isin(gr, (1, -1))) or (gr.size and gr[0] != 1):
                    raise ValueError(
                        f"grouping must hold one flag per RMF channel inside the band ({inside.size} channels, "
                        f"{eb[inside[0]] if inside.size else float('nan'):.6g}-"
                        f"{eb[inside[-1] + 1] if inside.size else float('nan'):.6g} keV): +1 starts a group, -1 "
                        f"continues it, the first is +1; got shape {gr.shape}"
                    )
                idx = np.append(inside[np.flatnonzero(gr == 1)], inside[-1] + 1)
            else:
                if isinstance(group, bool) or not isinstance(group, (int, np.integer)):
                    raise ValueError(f"group must be a positive integer (RMF channels per fused channel); got "
                                     f"{group!r}")
                g = int(group)
                if g < 1:
                    raise ValueError(f"group must be a positive integer; got {group!r}")
                n = inside.size // g
                if n == 0:
                    raise ValueError(
                        f"no group of {g} RMF channel(s) lies inside band {band} keV (EBOUNDS span "
                        f"{eb[0]:.4g}-{eb[-1]:.4g} keV); widen the band"
                    )
                idx = inside[0] + g * np.arange(n + 1)
        else:
            if band is not None or group != 1 or grouping is not None:
                raise ValueError("band=, group= and grouping= define the default energy grid; omit them with "
                                 "energy_edges=")
            idx = _channel_indices(np.asarray(energy_edges, dtype=np.float64), eb, label)
        energy_edges = eb[idx]
        response, response_area = _rmf_on_channels(sp, idx)
    elif energy_edges is None:
        raise ValueError("energy_edges is required when no rmf is given")
    elif band is not None or group != 1 or grouping is not None:
        raise ValueError("band=, group= and grouping= select RMF channels; without an rmf pass energy_edges only")
    energy_edges = np.asarray(energy_edges, dtype=np.float64)

    # integer PI binned by RMF channel index when the RMF's channels are PI // k (exact; EBOUNDS give energies)
    chan_kw = {}
    if response is not None:
        from astropy.io import fits

        ins = instrument
        if ins is None:
            with fits.open(events, memmap=False) as hdul:
                ins = _detect_instrument(_events_hdu(hdul, "EVENTS", label).header, label)[0]
        cfg = INSTRUMENTS.get(ins, {})
        if cfg.get("pi"):
            k = _pi_per_channel(sp, cfg["kev_per_unit"])
            if k is not None:
                chan_kw = {"channel_edges": np.asarray(sp.channel, dtype=np.int64)[0] + idx.astype(np.int64),
                           "pi_per_channel": k}
    if bin_by == "pixel":
        counts = read_events(events, energy_edges=energy_edges, center=tuple(center), filters=filters,
                             instrument=instrument, bin_by="pixel", exclude_pixels=exclude_pixels,
                             detector_pixel_size=pixel_size, **chan_kw)
        pixel_size = counts.attrs["detector_pixel_size"]
    else:
        counts = read_events(events, energy_edges=energy_edges, pixel_size=float(pixel_size),
                             center=tuple(center), shape=tuple(shape), filters=filters, instrument=instrument,
                             **chan_kw)
    exposure_given = exposure is not None
    if exposure is None:
        exposure = float(counts.attrs["exposure"])
        if not np.isfinite(exposure):
            raise ValueError(f"{label}: no GTI extension and no EXPOSURE/LIVETIME/ONTIME keyword; pass exposure= (s)")
    if isinstance(arf, dict) or (isinstance(arf, xr.DataArray) and "pixel" in arf.dims):
        area = _pixel_arfs(arf, counts)
    else:
        area = _arf(arf) if arf is not None else response_area  # (a full response's own area, or None)
    checked = [("RMF", sp.attrs)] if rmf is not None else []
    checked += [("ARF", area.attrs)] if arf is not None and area is not None and "pixel" not in area.dims else []
    _check_files_match_events(events, label, checked)
    mask = None
    if exposure_map is not None:
        area, mask = _exposure_map(exposure_map, area, energy_edges, counts)
    psf_da = _psf(psf, psf_pixel_size)
    bkg_desc = None
    if isinstance(background, dict) and "pha" in background:
        chans = None if response is None else np.asarray(sp.channel, dtype=np.int64)[0] + idx.astype(np.int64)
        background, bkg_desc = background_from_pha(background, energy_edges, exposure, chans)
    obs = observation(
        counts, energy_edges=energy_edges, pixel_size=float(pixel_size), exposure=float(exposure),
        effective_area=area, psf=psf_da, response=response,
        name=name or f"{counts.attrs['instrument']} ({label})",
        background=None if background is None else background_counts(counts, background), mask=mask,
    )
    obs.attrs.update({
        "center_ra": float(center[0]), "center_dec": float(center[1]),
        "events_file": label, "instrument": counts.attrs["instrument"],
        "n_binned": int(counts.attrs["n_binned"]),
        "exposure_source": "argument exposure=" if exposure_given else counts.attrs["exposure_source"],
        "energy_binning": counts.attrs["energy_binning"],
    })
    if bkg_desc is not None:
        obs.attrs["background_source"] = bkg_desc
    return obs


# --------------------------------------------------------------------------- align
def _name(o, default):
    return o.attrs.get("name", default)


def _check_centers(a, b):
    ca = _tangent_point(a)
    check_tangent_points(a, b, "the observations", "Re-bin both event lists with the same center= (e.g. "
                         f"{ca})")


def _spatial_crop(fine, coarse, dim, v):
    """Index slices (fine, coarse) along ``dim`` so the coarse pixels tile the fine ones."""
    pf, pc = _pixel_size(fine), _pixel_size(coarse)
    f0 = float(fine[dim].values[0]) - pf / 2
    c0 = float(coarse[dim].values[0]) - pc / 2
    nf, nc = fine.sizes[dim], coarse.sizes[dim]
    shift = (c0 - f0) / pf
    tol = 1e-6
    if abs(shift - round(shift)) > tol:
        frac = (shift - round(shift)) * pf
        nf_, nc_ = _name(fine, "fine"), _name(coarse, "coarse")
        if abs(abs(frac) - pf / 2) <= tol * pf:
            # both grids centred on the tangent point (read_events): edges meet when nf and nc * v share parity.
            # Shifting center= instead would change the tangent point, which align refuses.
            alt = f", or '{nc_}' with {nc - 1} or {nc + 1}" if v % 2 else ""
            fix = (f"Both grids are centred on the tangent point, so their edges meet only when the fine pixels "
                   f"({nf}) and the coarse ones times {v} ({nc * v}) are both even or both odd: re-bin '{nf_}' with "
                   f"{nf - 1} or {nf + 1} pixels along {dim} (shape=){alt}, about the same center=")
        else:
            fix = (f"The grids are not both centred on their tangent point (as read_events bins them): rebuild "
                   f"'{nc_}' so that its pixel edges fall on those of '{nf_}' (coordinates {dim} = a fine pixel edge "
                   f"+ (j + 0.5) x {pc} arcsec), keeping the same center= (a shifted center= is another tangent "
                   "point, which align refuses)")
        raise ValueError(
            f"coordinate {dim}: the pixel edges of '{nc_}' ({pc} arcsec) fall {frac:+.4g} arcsec off the edges of "
            f"'{nf_}' ({pf} arcsec pixels); cropping cannot align them. {fix}"
        )
    s = int(round(shift))  # first coarse edge, in fine pixels from the first fine edge
    j0 = max(0, int(np.ceil((-s) / v - tol)))              # first coarse pixel starting inside the fine field
    j1 = min(nc, int(np.floor((nf - s) / v + tol)))        # end of the last coarse pixel inside it
    if j1 <= j0:
        raise ValueError(
            f"coordinate {dim}: the fields of '{_name(fine, 'fine')}' and '{_name(coarse, 'coarse')}' do not "
            f"overlap by a whole {pc}-arcsec pixel; re-bin the events on a common field (same center=, larger shape=)"
        )
    i0 = s + j0 * v
    return slice(i0, i0 + (j1 - j0) * v), slice(j0, j1)


def _spectral_crop(sharp, coarse):
    """Channel slices (sharp-spectral, coarse) on the common band with coinciding edges; a coarse observation with
    a full RMF (:func:`xfusion.grid.has_matrix_response`) keeps every channel inside the common band, edges lined up
    or not (its RMF maps the fused channels onto them), and the fine channels are those overlapping its channels."""
    ef, ec = _edges_of(sharp), _edges_of(coarse)
    tols = edge_tolerance(ec, np.min(np.diff(ef)), NEST_TOL)  # within 1% of a fine channel (NEST_TOL)
    tol = float(tols.max())
    if has_matrix_response(coarse):
        inside = np.flatnonzero((ec[:-1] >= ef[0] - tol) & (ec[1:] <= ef[-1] + tol))
        if inside.size == 0:
            raise ValueError(
                f"coordinate energy: no channel of '{_name(coarse, 'coarse')}' ({ec[0]:.4g}-{ec[-1]:.4g} keV) lies "
                f"inside the band of '{_name(sharp, 'sharp')}' ({ef[0]:.4g}-{ef[-1]:.4g} keV): give observations "
                "of one band (band= of observation_from_files)")
        k0, k1 = int(inside[0]), int(inside[-1]) + 1
        f0 = int(np.searchsorted(ef, ec[k0] + tol, side="left")) - 1
        f1 = int(np.searchsorted(ef, ec[k1] - tol, side="right"))
        return slice(max(f0, 0), min(f1, ef.size - 1)), slice(k0, k1)
    pos = np.searchsorted(ef, ec)
    idx = np.full(ec.size, -1)
    for k, (e, p) in enumerate(zip(ec, pos)):
        for q in (p - 1, p):
            if 0 <= q < ef.size and abs(ef[q] - e) <= tols[k]:
                idx[k] = q
    # longest run of consecutive matched coarse edges holding a constant number of fine channels
    best, k = (0, 0), 0
    while k < ec.size - 1:
        if idx[k] < 0 or idx[k + 1] < 0:
            k += 1
            continue
        v = idx[k + 1] - idx[k]
        m = k + 1
        while m < ec.size - 1 and idx[m + 1] >= 0 and idx[m + 1] - idx[m] == v:
            m += 1
        if m - k > best[1] - best[0]:
            best = (k, m)
        k = m
    k0, k1 = best
    if k1 == k0:
        raise ValueError(
            f"coordinate energy: no channel edge of '{_name(coarse, 'coarse')}' ({ec[0]:.4g}-{ec[-1]:.4g} keV) "
            f"coincides with a pair of channel edges of '{_name(sharp, 'sharp')}' ({ef[0]:.4g}-{ef[-1]:.4g} keV); "
            "cropping cannot align them. Rebuild the coarse observation with observation_from_files(..., "
            "energy_edges=common_channel_edges(<its rmf>, <the sharp-spectral observation>)) or with grouping= "
            "(OGIP +1/-1 flags over its RMF channels) so that its channel edges fall on fine channel edges"
        )
    # coarse channels of the common band that had to be dropped (edges not aligned)
    common = (ec[:-1] >= ef[0] - tol) & (ec[1:] <= ef[-1] + tol)
    kept = np.zeros(ec.size - 1, bool)
    kept[k0:k1] = True
    if np.any(common & ~kept):
        warnings.warn(
            f"align: {int(np.sum(common & ~kept))} channel(s) of '{_name(coarse, 'coarse')}' inside the common band "
            f"were dropped because their edges do not coincide with whole groups of '{_name(sharp, 'sharp')}' "
            f"channels; kept {ec[k0]:.4g}-{ec[k1]:.4g} keV. Those of its RMF channel edges that lie within 1% of a "
            f"fine channel of '{_name(sharp, 'sharp')}' channel edges are kept by rebuilding "
            f"'{_name(coarse, 'coarse')}' with observation_from_files(..., "
            "energy_edges=xfusion.io.observation_files.common_channel_edges(<its rmf>, "
            f"<'{_name(sharp, 'sharp')}'>)) (it warns when fewer than 2 do)",
            stacklevel=3,
        )
    return slice(int(idx[k0]), int(idx[k1])), slice(k0, k1)


def align(obs_a, obs_b):
    """Crop two observations onto grids accepted by :func:`xfusion.fusion_grid`.

    The sharp-spatial observation (smaller pixels) and the sharp-spectral one (narrower
    channels) are recognised as in :func:`xfusion.grid.assign_roles`. Spatially, both are
    cropped to the largest field tiled by whole coarse pixels whose edges coincide with
    fine pixel edges (fine = factor x coarse pixels along x and y). In energy, both are
    cropped to the longest run of coarse channels whose edges coincide with fine channel
    edges (within 1 % of a fine channel, :data:`xfusion.observation.NEST_TOL`), each holding
    the same number of fine channels (usually the common band; a warning names channels of
    the common band dropped for misaligned edges). Every
    variable sharing the cropped dims (counts, mask, vignetted area, RMF columns) is
    cropped with them. A detector-pixel observation (``bin_by="pixel"``) is placed on the
    sky by its pixels' footprints, so only the band is cropped.

    Returns
    -------
    (obs_a_cropped, obs_b_cropped), in the order given.

    Raises
    ------
    ValueError
        Non-integer pixel-size ratio, pixel edges offset by a fraction of a fine pixel,
        no common field or band, different tangent points (``center_ra``/``center_dec``
        attrs from :func:`observation_from_files`), non-square pixels; the message says
        what to re-bin.
    """
    x_obs, y_obs, order = assign_roles(obs_a, obs_b)
    _check_centers(x_obs, y_obs)
    if is_pixel_observation(x_obs) or is_pixel_observation(y_obs):
        return _align_band_only(x_obs, y_obs, order)
    px, py = _pixel_size(x_obs), _pixel_size(y_obs)
    for o in (x_obs, y_obs):
        if not np.isclose(_pixel_size(o, "x"), _pixel_size(o, "y"), rtol=REL_TOL):
            raise ValueError(f"'{_name(o, '?')}' has non-square pixels; re-bin the events with square pixels")
    ratio = py / px
    v = int(round(ratio))
    if v < 1 or not np.isclose(ratio, v, rtol=REL_TOL, atol=0):
        lo, hi = max(int(np.floor(ratio)), 1), int(np.ceil(ratio))
        raise ValueError(
            f"pixel sizes {py} arcsec ('{_name(y_obs, 'Y')}') and {px} arcsec ('{_name(x_obs, 'X')}') have a "
            f"non-integer ratio {ratio:.6g}; cropping cannot fix that. Re-bin the events of '{_name(x_obs, 'X')}' "
            f"with pixel_size={py / hi:.6g} (or {py / lo:.6g}) arcsec, or those of '{_name(y_obs, 'Y')}' with "
            f"pixel_size={px * lo:.6g} (or {px * hi:.6g}) arcsec"
        )
    sx = {}
    sy = {}
    for d in ("x", "y"):
        sx[d], sy[d] = _spatial_crop(x_obs, y_obs, d, v)
    ey, ex = _spectral_crop(y_obs, x_obs)
    x_new = x_obs.isel(x=sx["x"], y=sx["y"], energy=ex)
    y_new = y_obs.isel(x=sy["x"], y=sy["y"], energy=ey)
    for new, old in ((x_new, x_obs), (y_new, y_obs)):
        new.attrs = dict(old.attrs)
        new.attrs["cropped_from"] = f"x {old.sizes['x']}, y {old.sizes['y']}, energy {old.sizes['energy']}"
    fusion_grid(x_new, y_new)  # raises if anything is still inconsistent
    return (x_new, y_new) if order == "ab" else (y_new, x_new)


def _align_band_only(x_obs, y_obs, order):
    """:func:`align` for a pair with a detector-pixel observation (``bin_by="pixel"``, counts over ``("pixel",
    "energy")``): its pixels are placed on the sky by their footprints (any offset, roll and size), so no spatial
    crop is needed or possible; only the band is cropped as for sky-binned pairs. Session 33 (red team s32): such a
    pair failed with KeyError 'x'."""
    ey, ex = _spectral_crop(y_obs, x_obs)
    x_new, y_new = x_obs.isel(energy=ex), y_obs.isel(energy=ey)
    for new, old in ((x_new, x_obs), (y_new, y_obs)):
        new.attrs = dict(old.attrs)
        new.attrs["cropped_from"] = ", ".join(f"{d} {old.sizes[d]}" for d in old["counts"].dims)
    fusion_grid(x_new, y_new)  # raises if anything is still inconsistent
    return (x_new, y_new) if order == "ab" else (y_new, x_new)
