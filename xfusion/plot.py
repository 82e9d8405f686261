"""Figures for fused cubes: amplitude maps, spectra, error maps, objective history, summary.

Every function returns a :class:`matplotlib.figure.Figure` (it never calls ``show``), so it
works with any backend, including the non-interactive ``Agg`` one. ``matplotlib.pyplot`` is
imported only when a figure is made.

Conventions: maps are drawn with ``x`` (arcsec) to the right and ``y`` (arcsec) up
(``origin="lower"``, extent = pixel centres +- half a pixel). Fluxes are photon fluxes
(ph cm-2 s-1); spectra are drawn as flux densities per keV so that the fused cube (fine
channels) and the inputs (their own channels) can share one axis.
"""
from __future__ import annotations

import numpy as np

from . import metrics

__all__ = ["amplitude_maps", "line_band", "line_maps", "spectra", "error_maps", "objective_history",
           "summary", "auto_pixels", "velocity_maps", "band_velocity_maps"]

FLUX = r"ph cm$^{-2}$ s$^{-1}$"
FLUX_DENSITY = r"ph cm$^{-2}$ s$^{-1}$ keV$^{-1}$"
_MAP_CMAP = "inferno"


# ----------------------------------------------------------------------------- helpers
def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _root(fig_or_ax):
    """The top-level Figure of an Axes or (Sub)Figure."""
    obj = fig_or_ax
    get = getattr(obj, "get_figure", None)
    if get is not None:
        try:
            fig = get(root=True)
            if fig is not None:
                return fig
        except TypeError:  # matplotlib < 3.10
            pass
    fig = obj if not hasattr(obj, "axes") or hasattr(obj, "savefig") else obj.figure
    while getattr(fig, "figure", fig) is not fig:
        fig = fig.figure
    return fig


def _axes_list(ax, n, figsize):
    """``n`` axes: the ones given (sequence or single Axes) or a new one-row figure."""
    if ax is None:
        fig = _pyplot().figure(figsize=figsize, layout="constrained")
        return list(np.atleast_1d(fig.subplots(1, n)).ravel())
    axes = list(np.atleast_1d(np.asarray(ax, dtype=object)).ravel())
    if len(axes) < n:
        raise ValueError(f"need {n} axes, got {len(axes)}")
    return axes[:n]


def _flux(obj, what="cube"):
    """The ``flux`` DataArray of a result/truth Dataset, or the DataArray itself."""
    if obj is None:
        return None
    if hasattr(obj, "data_vars"):
        if "flux" in obj.data_vars:
            return obj["flux"]
        if len(obj.data_vars) == 1:
            return obj[next(iter(obj.data_vars))]
        raise ValueError(f"{what} Dataset has no 'flux' variable")
    return obj


def _edges_1d(da, dim):
    """Pixel-edge extent (lo, hi) of a regular coordinate, arcsec."""
    c = np.asarray(da[dim].values, dtype=np.float64)
    size = da[dim].attrs.get("pixel_size")
    if size is None:
        size = float(np.diff(c).mean()) if c.size > 1 else 1.0
    return c[0] - size / 2, c[-1] + size / 2


def _sci(axis):
    """Scientific notation with a common multiplier (e.g. x1e-4) for small/large values."""
    from matplotlib.ticker import ScalarFormatter

    fmt = ScalarFormatter(useMathText=True)
    fmt.set_powerlimits((-2, 4))
    axis.set_major_formatter(fmt)


def _show_map(ax, img, xdim="x", ydim="y", **kw):
    """imshow of a 2D DataArray with arcsec axes (x right, y up)."""
    values = np.asarray(img.transpose(ydim, xdim).values, dtype=np.float64)
    x0, x1 = _edges_1d(img, xdim)
    y0, y1 = _edges_1d(img, ydim)
    im = ax.imshow(values, origin="lower", extent=(x0, x1, y0, y1), interpolation="nearest", **kw)
    ax.set_xlabel("x (arcsec)")
    ax.set_ylabel("y (arcsec)")
    return im


def _name(result, obs, key, default):
    if obs is not None and "name" in obs.attrs:
        return str(obs.attrs["name"])
    if result is not None and key in result.attrs:
        return str(result.attrs[key])
    return default


def _spatial_factor(result, x_obs=None, y_obs=None):
    if result is not None and "spatial_factor" in result.attrs:
        return int(result.attrs["spatial_factor"])
    if x_obs is not None and y_obs is not None:
        return int(round(float(y_obs["x"].attrs["pixel_size"]) / float(x_obs["x"].attrs["pixel_size"])))
    return 1


def _looks_spectral(result, obs):
    """True if ``obs`` is the sharp-spectral input of ``result`` (detector pixels, or pixels larger than the fused
    ones, or channels as narrow as the fused ones), False if it is the sharp-spatial one (channels ``factor`` fused
    ones wide, or those the result recorded for the sharp-spatial input), None if undecided."""
    from .observation import energy_edges, is_pixel_observation, pixel_size

    if is_pixel_observation(obs):
        return True
    flux = _flux(result, "result")
    try:
        p, p0 = pixel_size(obs), float(flux["x"].attrs.get("pixel_size", result.attrs.get("pixel_size")))
        if not np.isclose(p, p0, rtol=1e-6):  # the sharp-spatial input has the fused pixels
            return bool(p > p0)
        factor = int(result.attrs.get("spectral_factor", 1))
        w = float(np.median(np.diff(energy_edges(obs))))
        w0 = float(np.median(flux["energy_hi"].values - flux["energy_lo"].values))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if factor > 1 and np.isclose(w, w0, rtol=1e-6):  # the sharp-spectral input has the fused channels
        return True
    if factor > 1 and np.isclose(w, factor * w0, rtol=1e-6):
        return False
    # channels that are no grouping of the fused ones (spectral_model "rmf", session 33): the sharp-spatial input's
    # channels are those the result recorded for its predicted counts
    if "energy_spatial_lo" in result.coords and "energy_spatial_hi" in result.coords:
        rec = np.append(result["energy_spatial_lo"].values, result["energy_spatial_hi"].values[-1:])
        edges = energy_edges(obs)
        if edges.shape == rec.shape and np.allclose(edges, rec, rtol=1e-9, atol=0):
            return False
    return None


def _roles(result, x_obs, y_obs):
    """``(x_obs, y_obs)`` in their roles, whatever order they were given in (session 30: swapped, the plots drew the
    X counts of another pixel and an empty X map without a word): by :func:`xfusion.grid.assign_roles` (smaller pixel
    = sharp-spatial, narrower channels = sharp-spectral) when both are given, as :func:`xfusion.fuse` and
    :mod:`xfusion.baselines` do; a single one is compared with ``result``'s grid."""
    if x_obs is not None and y_obs is not None:
        from .grid import assign_roles

        try:
            x_obs, y_obs, _ = assign_roles(x_obs, y_obs)
        except (KeyError, ValueError):  # e.g. an imager's filter stack (xfusion.jwst): taken as given
            pass
        return x_obs, y_obs
    one = x_obs if x_obs is not None else y_obs
    if one is None or result is None or not hasattr(result, "attrs"):
        return x_obs, y_obs
    spectral = _looks_spectral(result, one)
    if spectral is None:
        return x_obs, y_obs
    return (None, one) if spectral else (one, None)


def _check_truth(result, truth):
    """Refuse a truth on another grid than the fused cube (reversed, shifted or cropped axes; session 30: plot.spectra
    drew another pixel's truth), as :mod:`xfusion.metrics` does."""
    flux, tr = _flux(result, "result"), _flux(truth, "truth")
    if flux is None or tr is None:
        return
    metrics._same_grid(tr, flux, ("truth", "result"))
    for d in ("x", "y", "energy"):
        if d in tr.dims and d in flux.dims and tr.sizes[d] != flux.sizes[d]:
            raise ValueError(f"truth has {tr.sizes[d]} values along {d} but the fused cube has {flux.sizes[d]}: give "
                             f"the truth on the fused grid (e.g. truth.sel({d}=result.{d}))")


def _xy_map(flux, values):
    """An ``(x, y)`` map (e.g. :func:`xfusion.metrics.sam_map`) labelled with the fused cube's x, y coordinates, by
    name whatever the cube's dim order (session 30: pasted into a template in the cube's order, an (energy, y, x)
    result was drawn transposed)."""
    import xarray as xr

    return xr.DataArray(np.asarray(values), dims=("x", "y"), coords={"x": flux["x"], "y": flux["y"]})


def _per_detector_pixel(yc):
    """True for sharp-spectral counts over detector pixels (``pixel``, ``energy``): no sky map of their own."""
    return yc is not None and "pixel" in yc.dims


def _pixel_note(name, yc):
    """The note drawn in place of a Y map of detector pixels."""
    return (f"{name}:\n{yc.sizes['pixel']} detector pixels\n(counts per detector pixel, not a sky image:\n"
            "no map drawn; see xfusion.predict and the\nresult's counts_spectral / model_spectral)")


def _note_panel(ax, title, text):
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8.5, transform=ax.transAxes, wrap=True)


def _x_counts(result, x_obs):
    """Sharp-spatial counts as (x, y, energy_spatial) with edges coords ``energy_spatial_lo/hi``."""
    if x_obs is not None:
        c = x_obs["counts"]
        if "energy" not in c.dims:  # an imager's filter stack (xfusion.jwst): no channel spectrum
            return None
        return c.rename({"energy": "energy_spatial", "energy_lo": "energy_spatial_lo",
                         "energy_hi": "energy_spatial_hi"})
    if result is not None and "counts_spatial" in result and "energy_spatial" in result["counts_spatial"].dims:
        return result["counts_spatial"]
    return None


def _y_counts(result, y_obs):
    """Sharp-spectral counts as (x_spectral, y_spectral, energy), or (pixel, energy) for detector pixels."""
    if y_obs is not None:
        if "pixel" in y_obs["counts"].dims:
            return y_obs["counts"]
        return y_obs["counts"].rename({"x": "x_spectral", "y": "y_spectral"})
    if result is not None and "counts_spectral" in result:
        return result["counts_spectral"]
    return None


def _amplitude(flux):
    return flux.sum("energy")


def _source_mask(amp):
    """Pixels of the source: energy-integrated flux >= half the mean over the field."""
    amp = np.asarray(amp, dtype=np.float64)
    m = np.isfinite(amp) & (amp >= 0.5 * np.nanmean(amp))
    return m if m.any() else np.isfinite(amp)


def auto_pixels(result):
    """A bright and a typical pixel of the fused amplitude map: ``[(ix, iy), (ix, iy)]``.

    The brightest pixel, and the pixel whose energy-integrated flux is closest to the median
    over the source (pixels at least half as bright as the field average), chosen at least
    two sharp-spectral pixels away from the brightest one when possible.
    """
    amp = np.asarray(_amplitude(_flux(result)).transpose("x", "y").values, dtype=np.float64)
    bright = np.unravel_index(int(np.nanargmax(amp)), amp.shape)
    src = _source_mask(amp)
    med = np.nanmedian(amp[src])
    ii, jj = np.indices(amp.shape)
    far = np.hypot(ii - bright[0], jj - bright[1]) >= 2 * _spatial_factor(result)
    cand = src & far if (src & far).any() else src
    dist = np.where(cand, np.abs(amp - med), np.inf)
    faint = np.unravel_index(int(np.argmin(dist)), amp.shape)
    return [tuple(int(i) for i in bright), tuple(int(i) for i in faint)]


# ----------------------------------------------------------------------------- maps
def amplitude_maps(result=None, truth=None, x_obs=None, y_obs=None, *, ax=None):
    """Energy-integrated maps of the inputs, the fused cube and the truth.

    Panels (those available, in this order): the sharp-spatial input X and the
    sharp-spectral input Y as **counts per pixel** (each with its own colour bar; taken from
    ``x_obs``/``y_obs`` if given, else from ``counts_spatial``/``counts_spectral`` of
    ``result``), then the fused flux and the truth summed over energy, in ph cm-2 s-1 per
    fused pixel, with a shared colour scale and one colour bar. All maps use a square-root
    stretch (from 0 to the maximum) so that faint structure stays visible next to bright knots.

    ``ax``: optional sequence of Axes, one per panel. Returns the Figure.
    """
    x_obs, y_obs = _roles(result, x_obs, y_obs)
    panels = []
    xc, yc = _x_counts(result, x_obs), _y_counts(result, y_obs)
    if xc is not None:
        name = _name(result, x_obs, "spatial_obs", "X")
        panels.append(("counts", f"{name}\ninput counts", xc.sum("energy_spatial"), "x", "y"))
    if _per_detector_pixel(yc):
        name = _name(result, y_obs, "spectral_obs", "Y")
        panels.append(("note", f"{name}\ninput counts", _pixel_note(name, yc), None, None))
    elif yc is not None:
        name = _name(result, y_obs, "spectral_obs", "Y")
        panels.append(("counts", f"{name}\ninput counts", yc.sum("energy"), "x_spectral", "y_spectral"))
    fused = _flux(result, "result")
    tr = _flux(truth, "truth")
    if fused is not None:
        reg = result.attrs.get("regularization", "") if hasattr(result, "attrs") else ""
        panels.append(("flux", "fused flux" + (f" ({reg})" if reg else ""), _amplitude(fused), "x", "y"))
    if tr is not None:
        panels.append(("flux", "truth", _amplitude(tr), "x", "y"))
    return _root(_map_panels(ax, panels, result, "flux per pixel")[0])


def _map_panels(ax, panels, result, flux_label):
    """Draw map panels ``(kind, title, image, x dim, y dim)`` side by side: ``"counts"`` each on its own square-root
    scale and colour bar, ``"flux"`` on one shared square-root scale (0 to their maximum) with one colour bar
    labelled ``flux_label (unit, sqrt scale)``, ``"note"`` a text panel. Returns the Axes."""
    if not panels:
        raise ValueError("nothing to plot: pass result, truth, x_obs or y_obs")
    axes = _axes_list(ax, len(panels), (4.2 * len(panels), 3.9))
    from matplotlib.colors import PowerNorm

    vmax = max([float(np.nanmax(p[2].values)) for p in panels if p[0] == "flux"] + [1e-30])
    flux_axes, flux_im = [], None
    for a, (kind, title, img, xd, yd) in zip(axes, panels):
        if kind == "note":
            _note_panel(a, title, img)
        elif kind == "counts":
            top = max(float(np.nanmax(img.values)), 1e-30)
            im = _show_map(a, img, xd, yd, cmap=_MAP_CMAP, norm=PowerNorm(0.5, vmin=0, vmax=top))
            a.figure.colorbar(im, ax=a, shrink=0.85).set_label(f"{_data_label(result)} (sqrt scale)")
        else:
            flux_im = _show_map(a, img, xd, yd, cmap=_MAP_CMAP, norm=PowerNorm(0.5, vmin=0, vmax=vmax))
            flux_axes.append(a)
        a.set_title(title, fontsize=10)
    if flux_im is not None:
        cb = flux_axes[0].figure.colorbar(flux_im, ax=flux_axes, shrink=0.85)
        cb.set_label(f"{flux_label} ({_flux_unit(_flux(result, 'result'))}, sqrt scale)")
        _sci(cb.ax.yaxis)
    return axes


# ----------------------------------------------------------------------------- spectra
def _as_slice(s, n):
    if isinstance(s, slice):
        return s
    if np.ndim(s) == 0:
        i = int(s)
        return slice(i, i + 1)
    lo, hi = s
    return slice(lo, hi)


def _is_label_slice(s):
    return any(isinstance(v, (float, np.floating)) for v in (s.start, s.stop))


def _region_indices(flux, xs, ys):
    """Index ranges (start, stop) along x and y for a region given as index or arcsec slices."""
    out = []
    for dim, s in (("x", xs), ("y", ys)):
        s = _as_slice(s, flux.sizes[dim])
        c = np.asarray(flux[dim].values)
        if _is_label_slice(s):
            lo = -np.inf if s.start is None else float(s.start)
            hi = np.inf if s.stop is None else float(s.stop)
            idx = np.flatnonzero((c >= lo) & (c <= hi))
            if idx.size == 0:
                raise ValueError(f"region {dim} in [{lo}, {hi}] arcsec contains no pixel")
            out.append((int(idx[0]), int(idx[-1]) + 1))
        else:
            start, stop, _ = s.indices(flux.sizes[dim])
            if stop <= start:
                raise ValueError(f"empty region along {dim}: {s}")
            out.append((start, stop))
    return out


def _axis(flux):
    """``(quantity, unit, fine unit, factor)`` of a cube's spectral axis: X-ray energy (keV, eV) or
    wavelength (um, nm; :mod:`xfusion.jwst`)."""
    if str(flux["energy"].attrs.get("units", "keV")) == "um":
        return "wavelength", "um", "nm", 1000.0
    return "energy", "keV", "eV", 1000.0


def _flux_unit(flux):
    """Unit label of a cube's values: photon flux, or the data units of a wavelength cube (e.g. MJy/sr)."""
    u = None if flux is None else flux.attrs.get("units")
    return FLUX if u in (None, "", "ph cm-2 s-1") else str(u)


def _data_label(result):
    """Colour-bar label of the input maps: counts, or the data units of a wavelength result."""
    u = getattr(result, "attrs", {}).get("flux_units") if result is not None else None
    return "counts per pixel" if u in (None, "ph cm-2 s-1") else f"data per pixel ({u})"


def _density(values, lo, hi):
    return np.asarray(values, dtype=np.float64) / (np.asarray(hi) - np.asarray(lo))


MAX_DISPLAY_BINS = 400


def _group(values, lo, hi, factor):
    """Sum groups of ``factor`` consecutive channels (the last group may be shorter)."""
    if factor <= 1:
        return np.asarray(values, dtype=np.float64), np.asarray(lo), np.asarray(hi)
    n = len(lo)
    idx = np.arange(0, n, factor)
    last = np.minimum(idx + factor, n) - 1
    return np.add.reduceat(np.asarray(values, dtype=np.float64), idx), np.asarray(lo)[idx], np.asarray(hi)[last]


def _step(ax, lo, hi, dens, **kw):
    """Histogram-like step line over explicit bin edges."""
    edges = np.append(lo, hi[-1])
    return ax.stairs(dens, edges, baseline=None, **kw)


def check_pixels(result, pixels):
    """Refuse fused-pixel indices ``(ix, iy)`` outside the result's grid (a negative index would wrap around)."""
    flux = _flux(result, "result")
    nx, ny = flux.sizes["x"], flux.sizes["y"]
    for ix, iy in pixels or []:
        if not (0 <= ix < nx and 0 <= iy < ny):
            raise ValueError(f"pixel ({ix}, {iy}) is outside the fused grid {nx} x {ny}")


def _spectrum_panel(ax, result, truth, ranges, x_obs=None, y_obs=None, legend=True, rebin=None, inputs=True):
    flux = _flux(result, "result")
    (x0, x1), (y0, y1) = ranges
    reg = dict(x=slice(x0, x1), y=slice(y0, y1))
    lo0 = np.asarray(flux["energy_lo"].values)
    hi0 = np.asarray(flux["energy_hi"].values)
    factor = int(rebin) if rebin else max(1, int(np.ceil(lo0.size / MAX_DISPLAY_BINS)))
    fused, lo, hi = _group(flux.isel(reg).sum(("x", "y")).values, lo0, hi0, factor)
    total = float(fused.sum())
    v = _spatial_factor(result, x_obs, y_obs)
    quantity, unit, fine, per = _axis(flux)
    n_mean = (x1 - x0) * (y1 - y0) * max(factor, 1)

    def dens(values, lo_, hi_):  # surface brightness (e.g. MJy/sr): the region's mean per bin, not a density
        return np.asarray(values, dtype=np.float64) / n_mean if quantity == "wavelength" else _density(values, lo_, hi_)

    yc = _y_counts(result, y_obs) if inputs else None
    if _per_detector_pixel(yc):  # no (x, y) grid to pick the pixels under the region from: said in the legend
        lab = _name(result, y_obs, "spectral_obs", "Y").split(" (")[0]
        ax.plot([], [], " ", label=f"{lab}: detector pixels, counts not drawn")
    elif yc is not None:
        ys = yc.isel(x_spectral=slice(x0 // v, (x1 - 1) // v + 1), y_spectral=slice(y0 // v, (y1 - 1) // v + 1))
        ysum = ys.sum(("x_spectral", "y_spectral")).values.astype(np.float64)
        if ysum.sum() > 0 and total > 0:
            ysum, ylo, yhi = _group(ysum, ys["energy_lo"].values, ys["energy_hi"].values, factor)
            npx = ys.sizes["x_spectral"] * ys.sizes["y_spectral"]
            lab = _name(result, y_obs, "spectral_obs", "Y").split(" (")[0]
            _step(ax, ylo, yhi, dens(ysum * total / ysum.sum(), ylo, yhi), color="tab:blue", alpha=0.35,
                  lw=0.7, label=f"{lab} counts, {npx} px (rescaled)")
    xc = _x_counts(result, x_obs) if inputs else None
    if xc is not None:
        xsum = xc.isel(reg).sum(("x", "y")).values.astype(np.float64)
        if xsum.sum() > 0 and total > 0:
            xlo = np.asarray(xc["energy_spatial_lo"].values)
            xhi = np.asarray(xc["energy_spatial_hi"].values)
            lab = _name(result, x_obs, "spatial_obs", "X").split(" (")[0]
            _step(ax, xlo, xhi, dens(xsum * total / xsum.sum(), xlo, xhi), color="tab:orange", lw=1.5,
                  label=f"{lab} counts (rescaled)")
    tr = _flux(truth, "truth")
    if tr is not None:
        t = _group(tr.transpose("x", "y", "energy").isel(reg).sum(("x", "y")).values, lo0, hi0, factor)[0]
        _step(ax, lo, hi, dens(t, lo, hi), color="black", lw=1.0, ls="--", label="truth")
    _step(ax, lo, hi, dens(fused, lo, hi), color="tab:red", lw=1.1, label="fused")
    if factor > 1:
        width = per * float(np.median(hi - lo))
        ax.set_xlabel(f"{quantity} ({unit}), shown in {width:.3g} {fine} bins ({factor} channels each)")
    else:
        ax.set_xlabel(f"{quantity} ({unit})")
    if quantity == "wavelength":
        ax.set_ylabel(f"mean surface brightness ({flux.attrs.get('units', '')})")
    else:
        ax.set_ylabel(f"flux density ({FLUX_DENSITY})")
    ax.set_xlim(lo[0], hi[-1])
    ax.set_ylim(bottom=0)
    _sci(ax.yaxis)
    xv, yv = flux["x"].values, flux["y"].values
    if x1 - x0 == 1 and y1 - y0 == 1:
        title = f"pixel ({x0}, {y0}): x={xv[x0]:g}, y={yv[y0]:g} arcsec"
    else:
        title = (f"region x {xv[x0]:g}..{xv[x1 - 1]:g}, y {yv[y0]:g}..{yv[y1 - 1]:g} arcsec "
                 f"({(x1 - x0) * (y1 - y0)} px)")
    ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(fontsize=7, loc="lower left", framealpha=0.85)


def spectra(result, truth=None, pixels=None, regions=None, *, x_obs=None, y_obs=None, ax=None, rebin=None):
    """Spectra of fused pixels or regions, with the truth and the inputs.

    Parameters
    ----------
    result : fused Dataset (:func:`xfusion.fuse`).
    truth : optional DataArray/Dataset (x, y, energy) in ph cm-2 s-1 per voxel.
    pixels : list of ``(ix, iy)`` fused-pixel indices. Default: a bright and a typical pixel
        (:func:`auto_pixels`).
    regions : list of ``(x_slice, y_slice)``; integer slices are pixel indices (stop
        excluded), float slices are arcsec ranges (both ends included). Spectra are summed
        over the region.
    x_obs, y_obs : optional observations to take the input counts from (default: the
        ``counts_spatial``/``counts_spectral`` stored in ``result``).
    ax : optional sequence of Axes, one per pixel/region.
    rebin : group this many fused channels per displayed bin (fused, truth and Y alike;
        the x label says so). Default: the smallest factor giving at most 400 bins; 1 shows
        every channel.

    Each panel shows flux densities in ph cm-2 s-1 keV-1 against energy (keV): the fused
    spectrum and the truth summed over the pixel/region, and the input counts of X (same
    pixels) and of Y (the Y pixels containing them: index ``ix // spatial_factor``), both
    **rescaled** so that their integral equals the fused one (shape comparison only).
    """
    flux = _flux(result, "result").transpose("x", "y", "energy")
    _check_truth(result, truth)
    x_obs, y_obs = _roles(result, x_obs, y_obs)
    if pixels is None and regions is None:
        pixels = auto_pixels(result)
    items = []
    check_pixels(result, pixels)
    for ix, iy in pixels or []:
        items.append(((int(ix), int(ix) + 1), (int(iy), int(iy) + 1)))
    for xs, ys in regions or []:
        items.append(tuple(_region_indices(flux, xs, ys)))
    if not items:
        raise ValueError("no pixel or region to plot")
    if ax is None:
        n = len(items)
        ncol = min(n, 2)
        nrow = -(-n // ncol)
        fig = _pyplot().figure(figsize=(6.2 * ncol, 4.0 * nrow), layout="constrained")
        axes = list(np.atleast_1d(fig.subplots(nrow, ncol)).ravel())
        for a in axes[n:]:
            a.set_visible(False)
    else:
        axes = _axes_list(ax, len(items), None)
    for a, rng in zip(axes, items):
        _spectrum_panel(a, result, truth, rng, x_obs=x_obs, y_obs=y_obs, rebin=rebin)
    return _root(axes[0])


# ----------------------------------------------------------------------------- errors
def _sam_panel(ax, result, truth):
    sam = metrics.sam_map(_flux(truth, "truth"), _flux(result, "result"))
    flux = _flux(result, "result")
    img = _xy_map(flux, sam)
    amp = np.asarray(_amplitude(_flux(truth, "truth")).transpose("x", "y").values, dtype=np.float64)
    src = np.isfinite(sam) & _source_mask(amp)
    # colour limit from the source: the empty borders have large, uninformative angles
    top = float(np.percentile(sam[src], 99)) if src.any() else float(np.nanmax(sam))
    extend = "max" if np.nanmax(sam) > top else "neither"
    im = _show_map(ax, img, cmap="viridis", vmin=0, vmax=top)
    cb = ax.figure.colorbar(im, ax=ax, shrink=0.85, extend=extend)
    cb.set_label("spectral angle (rad)")
    ax.set_title(f"spectral angle to truth (mean {np.nanmean(sam):.3f} rad)", fontsize=10)
    return im


def _relerr_panel(ax, result, truth):
    rel = metrics.relative_error_map(_flux(truth, "truth"), _flux(result, "result"))
    flux = _flux(result, "result")
    img = _xy_map(flux, rel)
    finite = np.abs(rel[np.isfinite(rel)])
    # colour limit from the source (truth amplitude >= half its mean), not from the faint
    # borders where tiny amplitudes give huge relative errors; clipped values use the end colours
    amp = np.asarray(_amplitude(_flux(truth, "truth")).transpose("x", "y").values, dtype=np.float64)
    src = np.abs(rel[np.isfinite(rel) & _source_mask(amp)])
    lim = float(np.percentile(src, 95)) if src.size else (float(np.percentile(finite, 95)) if finite.size else 1.0)
    lim = float(np.clip(lim, 1.0, 100.0))
    im = _show_map(ax, img, cmap="RdBu_r", vmin=-lim, vmax=lim)
    cb = ax.figure.colorbar(im, ax=ax, shrink=0.85, extend="both")
    cb.set_label("relative amplitude error (%)")
    med = np.median(finite) if finite.size else np.nan
    ax.set_title(f"amplitude error (fused - truth) / truth\n(median |error| {med:.1f} %)", fontsize=10)
    return im


def error_maps(result, truth, *, ax=None):
    """SAM map (radians) and relative amplitude error map (%) of ``result`` against ``truth`` (same grid, any dim
    order)."""
    _check_truth(result, truth)
    axes = _axes_list(ax, 2, (9.5, 4.0))
    _sam_panel(axes[0], result, truth)
    _relerr_panel(axes[1], result, truth)
    return _root(axes[0])


# ----------------------------------------------------------------------------- history
def objective_history(result, *, ax=None):
    """Objective, data term and penalty against iteration (log y axis if the objective is > 0)."""
    a = _axes_list(ax, 1, (6.0, 4.0))[0]
    it = np.asarray(result["iteration"].values) if "iteration" in result.coords else None
    styles = {"objective": dict(color="black", lw=2.0), "data_term": dict(color="tab:blue", ls="--"),
              "penalty": dict(color="tab:green", ls=":")}
    labels = {"objective": "objective (data + penalty)", "data_term": "data term (half the Poisson deviance)",
              "penalty": "penalty"}
    obj = None
    for k in ("objective", "data_term", "penalty"):
        if k not in result:
            continue
        v = np.asarray(result[k].values, dtype=np.float64)
        x = it if it is not None else np.arange(v.size)
        a.plot(x, v, marker="." if v.size < 60 else None, label=labels[k], **styles[k])
        if k == "objective":
            obj = v
    if obj is not None:
        fin = obj[np.isfinite(obj)]
        if fin.size and np.all(fin > 0):
            a.set_yscale("log", nonpositive="mask")
    a.set_xlabel("iteration")
    a.set_ylabel("objective value (nats, dimensionless)")
    attrs = getattr(result, "attrs", {})
    reg, meth = attrs.get("regularization", "?"), attrs.get("method", "?")
    n, conv = attrs.get("iterations"), attrs.get("converged")
    title = f"convergence: {reg} / {meth}"
    if n is not None:
        title += f"\n{n} iterations, " + ("converged" if conv else "not converged (max_iter reached)")
    a.set_title(title, fontsize=10)
    a.legend(fontsize=8)
    a.grid(alpha=0.3, which="both")
    return _root(a)


# ----------------------------------------------------------------------------- line maps
def _x_channel_edges(result, x_obs):
    """Channel edges (keV) of the sharp-spatial data, or None."""
    xc = _x_counts(result, x_obs)
    if xc is None:
        return None
    return np.append(np.asarray(xc["energy_spatial_lo"].values), float(xc["energy_spatial_hi"].values[-1]))


def line_band(result, *, x_obs=None, width=None):
    """Energy band ``(lo, hi)`` in keV of the brightest emission line of the fused field.

    The line is the largest excess of the field-summed fused spectrum over its running
    median (the continuum; window of 10 sharp-spatial channels), found without any truth.
    The band is the sharp-spatial channel that contains it (so the X map of the band is
    exactly one X channel and all four maps cover the same energies), or, with ``width``
    (keV), a band of that width centred on the line, snapped to the fused channel edges.
    """
    from scipy.ndimage import median_filter

    x_obs = _roles(result, x_obs, None)[0]
    flux = _flux(result, "result").transpose("x", "y", "energy")
    lo = np.asarray(flux["energy_lo"].values, dtype=np.float64)
    hi = np.asarray(flux["energy_hi"].values, dtype=np.float64)
    spec = np.asarray(flux.sum(("x", "y")).values, dtype=np.float64) / (hi - lo)
    factor = int(result.attrs.get("spectral_factor", 1)) if hasattr(result, "attrs") else 1
    window = min(max(10 * factor + 1, 5), 2 * (spec.size // 2) - 1 if spec.size > 2 else 1)
    excess = spec - median_filter(spec, size=max(window, 1), mode="nearest")
    k = int(np.nanargmax(excess))
    e0 = 0.5 * (lo[k] + hi[k])
    if width is None:
        xe = _x_channel_edges(result, x_obs)
        if xe is not None and xe[0] <= e0 <= xe[-1]:
            j = int(np.clip(np.searchsorted(xe, e0) - 1, 0, xe.size - 2))
            return float(xe[j]), float(xe[j + 1])
        width = factor * float(hi[k] - lo[k])
    i0 = int(np.searchsorted(hi, e0 - width / 2, side="right"))
    i1 = int(np.searchsorted(lo, e0 + width / 2, side="left"))
    i0, i1 = min(i0, k), max(i1, k + 1)
    return float(lo[i0]), float(hi[i1 - 1])


def _in_band(lo, hi, band):
    """Channels whose centre lies inside ``band``."""
    c = 0.5 * (np.asarray(lo) + np.asarray(hi))
    return (c >= band[0]) & (c <= band[1])


def _check_band(cube, band):
    """Refuse a band ``(lo, hi)`` that holds no channel centre of ``cube`` (session 30: a band in eV, outside the
    cube, reversed or narrower than a channel drew all-zero maps without a word)."""
    if cube is None:
        return
    lo, hi = np.asarray(cube["energy_lo"].values, float), np.asarray(cube["energy_hi"].values, float)
    if _in_band(lo, hi, band).any():
        return
    unit = _axis(cube)[1]
    why = (" (lo > hi: give it as (lo, hi))" if band[0] > band[1] else
           " (narrower than the channels: no channel centre inside)" if lo.min() <= band[0] <= hi.max() else
           f" (outside the cube's range{'; in ' + _axis(cube)[2] + '?' if band[0] > 100 * hi.max() else ''})")
    raise ValueError(f"band {band[0]:g}-{band[1]:g} selects no channel of the cube{why}: its channels span "
                     f"{lo.min():.4g}-{hi.max():.4g} {unit}; give band=(lo, hi) in {unit}, containing at least one "
                     f"channel centre")


def line_maps(result=None, truth=None, x_obs=None, y_obs=None, *, band=None, ax=None):
    """Narrow-band maps of one emission line: X and Y counts, fused and true flux in the band.

    ``band`` (keV): default :func:`line_band` (the sharp-spatial channel holding the
    brightest line). Panels: X counts in its channels inside the band, Y counts in the band
    (its large pixels), then the fused and the true flux summed over the band, in ph cm-2
    s-1 per fused pixel with one shared colour scale. Square-root stretch. The band is in
    every title. Returns the Figure.
    """
    x_obs, y_obs = _roles(result, x_obs, y_obs)
    band = tuple(band) if band is not None else line_band(result, x_obs=x_obs)
    _check_band(_flux(result, "result") if result is not None else _flux(truth, "truth"), band)
    unit = _axis(_flux(result, "result"))[1] if result is not None else "keV"
    btxt = f"{band[0]:.4g}-{band[1]:.4g} {unit}"
    panels = []
    xc, yc = _x_counts(result, x_obs), _y_counts(result, y_obs)
    if xc is not None:
        sel = _in_band(xc["energy_spatial_lo"].values, xc["energy_spatial_hi"].values, band)
        if sel.any():
            name = _name(result, x_obs, "spatial_obs", "X")
            panels.append(("counts", f"{name}\ncounts in {btxt} ({int(sel.sum())} channel{'s' if sel.sum() > 1 else ''})",
                           xc.isel(energy_spatial=np.flatnonzero(sel)).sum("energy_spatial"), "x", "y"))
    if _per_detector_pixel(yc):
        name = _name(result, y_obs, "spectral_obs", "Y")
        panels.append(("note", f"{name}\ncounts in {btxt}", _pixel_note(name, yc), None, None))
    elif yc is not None:
        sel = _in_band(yc["energy_lo"].values, yc["energy_hi"].values, band)
        name = _name(result, y_obs, "spectral_obs", "Y")
        panels.append(("counts", f"{name}\ncounts in {btxt}", yc.isel(energy=np.flatnonzero(sel)).sum("energy"),
                       "x_spectral", "y_spectral"))
    for obj, title in ((result, "fused flux"), (truth, "true flux")):
        f = _flux(obj, title)
        if f is not None:
            sel = _in_band(f["energy_lo"].values, f["energy_hi"].values, band)
            reg = obj.attrs.get("regularization", "") if title == "fused flux" and hasattr(obj, "attrs") else ""
            panels.append(("flux", f"{title}{f' ({reg})' if reg else ''}\nin {btxt}",
                           f.isel(energy=np.flatnonzero(sel)).sum("energy"), "x", "y"))
    fig = _root(_map_panels(ax, panels, result, "flux in the band per pixel")[0])
    fig._xfusion_band = band  # for summary(): the band actually drawn
    return fig


# ----------------------------------------------------------------------------- velocity maps
def velocity_maps(maps, truth=None, *, ax=None, vlim=None):
    """Line-centroid velocity, its error and the true velocity, side by side (km/s colour bars).

    ``maps``: a Dataset of :func:`xfusion.analysis.line_map` with errors (``velocity`` and
    ``velocity_err``, km/s; e.g. from :func:`xfusion.analysis.line_map_errors`). ``truth``:
    optional Dataset with a ``velocity`` map (km/s) on the same (x, y) pixels -- a scene's
    truth or ``line_map`` of the true cube. Panels: velocity and true velocity on one
    symmetric diverging scale (``vlim`` km/s, default the 98th percentile of ``abs(v)``), the 1-sigma
    error on its own scale; grey: no valid line (NaN). Returns the Figure.
    """
    if "velocity" not in maps or "velocity_err" not in maps:
        raise ValueError("velocity_maps needs line maps with errors (velocity and velocity_err): use "
                         "xfusion.analysis.line_map_errors(uncertainty, ...) or line_map(..., replicas=)")
    if truth is not None and "velocity" not in truth:
        raise ValueError("truth must be a Dataset with a 'velocity' map (km/s)")
    import matplotlib

    panels = [("velocity", maps["velocity"], "fused: line-centroid velocity"),
              ("error", maps["velocity_err"], f"fused: velocity error (1 sigma, {maps.attrs.get('n_replicas', '?')} "
                                              "replicas)")]
    if truth is not None:
        panels.append(("velocity", truth["velocity"], "truth: line-centroid velocity"))
    axes = _axes_list(ax, len(panels), (4.4 * len(panels), 3.9))
    vel = [np.asarray(p[1].values, float) for p in panels if p[0] == "velocity"]
    finite = np.concatenate([v[np.isfinite(v)] for v in vel]) if vel else np.zeros(0)
    lim = float(vlim) if vlim is not None else (float(np.percentile(np.abs(finite), 98)) if finite.size else 1.0)
    lim = max(lim, 1e-3)
    div = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.82")
    seq = matplotlib.colormaps["viridis"].with_extremes(bad="0.82")
    name = maps.attrs.get("name", "line")
    for a, (kind, img, title) in zip(axes, panels):
        if kind == "velocity":
            im = _show_map(a, img, cmap=div, vmin=-lim, vmax=lim)
            a.figure.colorbar(im, ax=a, shrink=0.85).set_label("velocity (km/s, + receding)")
        else:
            e = np.asarray(img.values, float)
            top = float(np.percentile(e[np.isfinite(e)], 98)) if np.isfinite(e).any() else 1.0
            im = _show_map(a, img, cmap=seq, vmin=0, vmax=max(top, 1e-3))
            a.figure.colorbar(im, ax=a, shrink=0.85, extend="max").set_label("velocity error (km/s)")
        a.set_title(f"{title}\n{name}", fontsize=9)
    return _root(axes[0])


def band_velocity_maps(uncertainty, truth=None, *, x_obs=None, band=None):
    """Velocity maps with errors of the brightest line of a fused cube, and of the truth (for :func:`summary`).

    ``uncertainty``: the Dataset of :func:`xfusion.uncertainty`. The line window is ``band``
    (default :func:`line_band`, the sharp-spatial channel holding the brightest line; in the cube's
    spectral unit, keV or um), the rest energy (wavelength) its centre (velocities are relative to it),
    the continuum the two side bands of the same width. Returns ``(maps, truth_maps)`` (line maps
    with ``velocity_err``; ``truth_maps`` None without a truth cube).

    A band holding a single fused channel is refused: the centroid of one channel is its centre, so every
    velocity and error would be exactly 0. The default band is one channel when the cube has no sharp-spatial
    channels spanning several fused ones (a JWST result of :func:`xfusion.jwst.fuse_jwst`: the imager has
    filters, not channels); give ``band=(lo, hi)`` spanning the line there (the error suggests one).
    """
    from . import analysis

    lo, hi = tuple(band) if band is not None else line_band(uncertainty, x_obs=x_obs)
    flux = _flux(uncertainty, "uncertainty")
    e_lo, e_hi = np.asarray(flux["energy_lo"].values, float), np.asarray(flux["energy_hi"].values, float)
    inside = np.flatnonzero(_in_band(e_lo, e_hi, (lo, hi)))
    if inside.size == 1:
        k, unit = int(inside[0]), _axis(flux)[1]
        a, b = e_lo[max(k - 3, 0)], e_hi[min(k + 3, e_lo.size - 1)]
        why = ("given band=" if band is not None else
               "the default: the cube has no sharp-spatial channel spanning several fused ones")
        raise ValueError(f"the line band {lo:.6g}-{hi:.6g} {unit} holds a single fused channel ({why}): the centroid "
                         "of one channel is its centre, so every velocity and its error would be exactly 0. Give "
                         f"band=(lo, hi) in {unit} spanning the line over several channels, e.g. band=({a:.6g}, "
                         f"{b:.6g}) (7 channels around this one)")
    w = hi - lo
    e = uncertainty["energy"].values
    cont = [b for b in ((lo - w, lo), (hi, hi + w)) if b[0] >= e[0] and b[1] <= e[-1]]
    kw = {"window": (lo, hi), "continuum": cont or [(e[0], lo)],
          "name": f"line at {0.5 * (lo + hi):.4g} {_axis(uncertainty)[1]}"}
    maps = analysis.line_map_errors(uncertainty, 0.5 * (lo + hi), **kw)
    tmaps = None if truth is None else analysis.line_map(_flux(truth, "truth"), 0.5 * (lo + hi), **kw)
    return maps, tmaps


# ----------------------------------------------------------------------------- summary
def _baselines(x_obs, y_obs):
    """Naive reference cubes on the fused grid (needs both observations), or {}."""
    if x_obs is None or y_obs is None:
        return {}
    from . import baselines

    return {"X upsampled in energy": baselines.upsample_spatial(x_obs, y_obs),
            "Y upsampled in space": baselines.upsample_spectral(x_obs, y_obs)}


def _summary_spectrum(ax, result, truth, pixel, base, band, x_obs, y_obs):
    """Spectrum of one fused pixel: fused, truth, the baselines (same flux units), line band shaded."""
    ix, iy = pixel
    rng = ((ix, ix + 1), (iy, iy + 1))
    if base:
        _spectrum_panel(ax, result, truth, rng, legend=False, inputs=False)
        flux = _flux(result, "result")
        lo0, hi0 = np.asarray(flux["energy_lo"].values), np.asarray(flux["energy_hi"].values)
        factor = max(1, int(np.ceil(lo0.size / MAX_DISPLAY_BINS)))
        styles = {"X upsampled in energy": dict(color="tab:orange", lw=1.3),
                  "Y upsampled in space": dict(color="tab:blue", lw=0.8, alpha=0.6)}
        for name, cube in base.items():
            v, lo, hi = _group(cube.transpose("x", "y", "energy").values[ix, iy], lo0, hi0, factor)
            _step(ax, lo, hi, _density(v, lo, hi), label=f"baseline: {name}", **styles.get(name, {}))
    else:  # no observations: the input counts, rescaled (shape only)
        _spectrum_panel(ax, result, truth, rng, x_obs=x_obs, y_obs=y_obs, legend=False)
    ax.axvspan(band[0], band[1], color="0.5", alpha=0.18, lw=0, label="line band of the maps")
    tr = _flux(truth, "truth")
    if tr is not None:
        ax.set_title(ax.get_title() + "\n" + _peak_note(_flux(result, "result"), tr, ix, iy, band), fontsize=8.5)
    ax.legend(fontsize=6.5, loc="upper right", framealpha=0.8)


def _peak_note(flux, truth, ix, iy, band):
    """Fused / true flux of pixel (ix, iy) in the line band and at the highest true line peak."""
    from scipy.ndimage import median_filter

    f = np.asarray(flux.transpose("x", "y", "energy").values[ix, iy], dtype=np.float64)
    t = np.asarray(truth.transpose("x", "y", "energy").values[ix, iy], dtype=np.float64)
    sel = _in_band(flux["energy_lo"].values, flux["energy_hi"].values, band)
    parts = []
    if t[sel].sum() > 0:
        parts.append(f"fused/true flux in the line band {f[sel].sum() / t[sel].sum():.2f}")
    if t.size >= 5:
        cont = median_filter(t, size=min(2 * (t.size // 2) - 1, 4 * max(t.size // 60, 1) + 1), mode="nearest")
        k = int(np.argmax(t - cont))
        if t[k] > cont[k]:
            e = 0.5 * float(flux["energy_lo"].values[k] + flux["energy_hi"].values[k])
            parts.append(f"fused/true peak of the strongest line ({e:.4g} keV) {f[k] / t[k]:.2f}")
    return "\n".join(parts)


def _masked_sam_panel(ax, result, truth, threshold=0.5):
    """SAM map on the pixels with signal (true flux >= threshold x the field mean); grey elsewhere."""
    tr, fu = _flux(truth, "truth"), _flux(result, "result")
    sam = metrics.sam_map(tr, fu)
    amp = np.asarray(_amplitude(tr).transpose("x", "y").values, dtype=np.float64)
    signal = np.isfinite(sam) & (amp >= threshold * np.nanmean(amp))
    img = _xy_map(fu, np.where(signal, sam, np.nan))
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.82")
    top = float(np.percentile(sam[signal], 99)) if signal.any() else 1.0
    im = _show_map(ax, img, cmap=cmap, vmin=0, vmax=max(top, 1e-6))
    ax.figure.colorbar(im, ax=ax, shrink=0.85, extend="max").set_label("spectral angle to truth (rad)")
    mean = float(np.mean(sam[signal])) if signal.any() else float("nan")
    ax.set_title(f"spectral angle to truth: mean {mean:.3f} rad over {int(signal.sum())} px with signal\n"
                 f"(grey: true flux < {threshold:g} x field mean, masked)", fontsize=9)
    return mean


#: prefix of the PNG ``Software`` text of the figures xfusion writes (:func:`save_png`)
PNG_SOFTWARE = "xfusion"


def png_software(path):
    """The ``Software`` text of a PNG file (None if absent or not a PNG)."""
    import struct
    import zlib

    try:
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    return None
                size, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND") or size > 1 << 20:
                    return None
                data = fh.read(size)
                fh.read(4)  # CRC
                if kind not in (b"tEXt", b"zTXt", b"iTXt"):
                    continue
                key, _, value = data.partition(b"\0")
                if key != b"Software":
                    continue
                if kind == b"zTXt":
                    value = zlib.decompress(value[1:])
                elif kind == b"iTXt":  # compression flag, method, language \0 translated keyword \0 text
                    flag, rest = value[0], value[2:].split(b"\0", 2)[-1]
                    value = zlib.decompress(rest) if flag else rest
                return value.decode("latin-1", "replace")
    except (OSError, zlib.error, struct.error, IndexError):
        return None


def is_xfusion_png(path):
    """True if ``path`` is a PNG whose ``Software`` text is ``xfusion VERSION`` (a figure xfusion wrote)."""
    return (png_software(path) or "").startswith(PNG_SOFTWARE + " ")


def save_png(fig, path, dpi=100):
    """Save ``fig`` as PNG at ``path``, marked ``Software = xfusion VERSION``, through a temporary sibling renamed
    when complete. An existing file is replaced only if it is such a figure (DESIGN section 9: nothing xfusion did not
    write is overwritten); anything else at ``path`` (the user's own figure, a folder, a link) is refused with a
    ValueError."""
    from pathlib import Path

    from . import __version__
    from .io.safe_files import write_via_temporary

    p = Path(path)
    if p.is_symlink() or (p.exists() and not p.is_file()):
        raise ValueError(f"{str(p)!r} is {'a symbolic link' if p.is_symlink() else 'a folder'}; refusing to write a "
                         "figure there: choose another path")
    if p.exists() and not is_xfusion_png(p):
        raise ValueError(f"{str(p)!r} exists and is not a figure xfusion wrote (no PNG Software = 'xfusion ...' "
                         "text); refusing to replace it: move it away or choose another path")
    write_via_temporary(p, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png",
                                                   metadata={"Software": f"{PNG_SOFTWARE} {__version__}"}))


def summary(result, truth=None, path=None, pixels=None, *, x_obs=None, y_obs=None, band=None, dpi=100,
            velocity=None, velocity_truth=None):
    """One-page overview that shows what fusion gained.

    Top row: narrow-band maps of the brightest line (:func:`line_maps`; the band, in keV, is
    in every title and in the figure title): X and Y counts, the fused flux and the truth.
    Bottom row: the spectra of two fused pixels (``pixels``, default :func:`auto_pixels`:
    the brightest and a typical source pixel) with the truth and, when ``x_obs`` and
    ``y_obs`` are given, the naive baselines (X spread over the fine channels, Y spread over
    the small pixels; :mod:`xfusion.baselines`) in the same flux units, the line band shaded
    and the fused/true flux ratio in the band; the convergence history; with a truth, the
    spectral-angle map masked where there is no signal. The figure title gives NMSE and aSAM
    of the fused cube and of the baselines. With ``velocity`` (line maps with errors, see
    :func:`velocity_maps`) a third row shows the velocity map, its error map and
    ``velocity_truth`` (a Dataset with a ``velocity`` map, km/s). With ``path`` the figure is
    saved as PNG at ``dpi`` (:func:`save_png`: an existing file is replaced only if xfusion wrote it). Returns the
    Figure.
    """
    plt = _pyplot()
    _check_truth(result, truth)
    x_obs, y_obs = _roles(result, x_obs, y_obs)
    pixels = list(pixels) if pixels is not None else auto_pixels(result)
    check_pixels(result, pixels)
    band = tuple(band) if band is not None else line_band(result, x_obs=x_obs)
    _check_band(_flux(result, "result"), band)
    n_top = 3 + (truth is not None)
    n_bottom = len(pixels) + 1 + (truth is not None)
    ncol = max(n_top, n_bottom)
    rows = 2 + (velocity is not None)
    fig = plt.figure(figsize=(4.8 * ncol, 5.0 * rows), layout="constrained")
    subs = fig.subfigures(rows, 1, height_ratios=[1.0, 1.05, 1.0][:rows])
    top, bottom = subs[0], subs[1]
    if velocity is not None:
        nv = 2 + (velocity_truth is not None)
        velocity_maps(velocity, velocity_truth, ax=subs[2].subplots(1, nv))
    line_maps(result, truth, x_obs, y_obs, band=band, ax=top.subplots(1, n_top))
    axb = list(np.atleast_1d(bottom.subplots(1, n_bottom)).ravel())
    base = _baselines(x_obs, y_obs)
    for a, px in zip(axb, pixels):
        _summary_spectrum(a, result, truth, px, base, band, x_obs, y_obs)
    objective_history(result, ax=axb[len(pixels)])
    if truth is not None:
        _masked_sam_panel(axb[-1], result, truth)
    flux = _flux(result, "result")
    marked = [a for a in top.axes if a.get_title().startswith("fused")]
    if truth is not None:
        marked.append(axb[-1])
    for k, (ix, iy) in enumerate(pixels):
        for a in marked:
            a.plot(flux["x"].values[ix], flux["y"].values[iy], marker="s", mfc="none", mec="cyan", ms=9, mew=1.5)
            a.annotate(str(k + 1), (flux["x"].values[ix], flux["y"].values[iy]), color="cyan", fontsize=9,
                       xytext=(6, 6), textcoords="offset points")
    for k, a in enumerate(axb[:len(pixels)]):
        a.set_title(f"[{k + 1}] " + a.get_title(), fontsize=a.title.get_fontsize())
    attrs = getattr(result, "attrs", {})
    head = (f"xfusion {attrs.get('xfusion_version', '')}: {attrs.get('regularization', '?')} / "
            f"{attrs.get('method', '?')}, {attrs.get('iterations', '?')} iterations, "
            f"{float(attrs.get('elapsed_s', np.nan)):.1f} s; line maps in {band[0]:.4g}-{band[1]:.4g} "
            f"{_axis(_flux(result, 'result'))[1]}")
    if truth is not None:
        ratio = _spatial_factor(result, x_obs, y_obs)
        tr = _flux(truth, "truth")
        m = metrics.report(result, tr, ratio=ratio)
        head += (f"\nvs truth: fused NMSE {m['nmse_db']:.1f} dB, aSAM {m['asam_rad']:.3f} rad, "
                 f"acSSIM {m['acssim']:.3f}, ERGAS {m['ergas']:.1f}")
        for name, cube in base.items():
            b = metrics.report(cube, tr, ratio=ratio)
            head += f"  |  {name}: {b['nmse_db']:.1f} dB, {b['asam_rad']:.3f} rad"
    fig.suptitle(head, fontsize=12)
    if path is not None:
        save_png(fig, path, dpi=dpi)
    return fig
