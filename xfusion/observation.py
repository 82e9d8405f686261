"""Observation data model: schema, builder, validation.

One observation is one :class:`xarray.Dataset`:

================  =================================  ========  ==========================================
variable          dims                               units     meaning
================  =================================  ========  ==========================================
``counts``        (x, y, energy)                     count     the data cube (energy last, C-contiguous)
``exposure``      ()                                 s         exposure time
``effective_area``() or (energy_true) or             cm2       ARF: area as a function of TRUE energy;
                  (x, y, energy_true)                          optionally vignetted
``psf``           (psf_x, psf_y) or                  1         spatial response, odd-sized, centred,
                  (psf_energy, psf_x, psf_y)                   sums to 1 (optional); a stack over
                                                               bands at ``psf_energy`` (keV) varies
                                                               with energy (linear interpolation)
``response``      (energy_offset) or                 1         spectral response: a stationary 1D kernel
                  (energy_true, energy)                        (offsets in keV) or a redistribution
                                                               matrix (RMF) (optional)
``mask``          (x, y, energy)                     bool      True where a voxel is valid (optional)
================  =================================  ========  ==========================================

Coordinates: ``x``, ``y`` pixel centres in arcsec (tangent-plane offsets; the pixel size
is ``x.attrs["pixel_size"]``), ``energy`` channel centres in keV with explicit edges
``energy_lo``/``energy_hi``; ``energy_true`` (+ ``energy_true_lo``/``_hi``) for the
model-side energy of the ARF and RMF; ``psf_x``/``psf_y`` offsets of PSF pixel centres in
arcsec; ``energy_offset`` kernel sample offsets in keV. Edges are always stored, never
inferred from centres.

NaN counts are refused: mark invalid voxels with ``mask`` instead (explicit, never
patched). PSFs must be odd-sized and sum to 1 within 1e-3 (refused otherwise, with the fix
in the message): a PSF stamp that lost flux outside its edges should be renormalized by
the user knowingly.
"""
from __future__ import annotations

import numbers

import numpy as np
import xarray as xr

SCHEMA_VERSION = "1"
CUBE_DIMS = ("x", "y", "energy")
PSF_NORM_TOL = 1e-3
REL_TOL = 1e-6


# --------------------------------------------------------------------------- helpers
def _is_lazy(a):
    return hasattr(a, "dask") and hasattr(a, "chunks")


def _edges_coords(edges, dim):
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2:
        raise ValueError(f"{dim} edges must be a 1D array of at least 2 values (keV); got shape {edges.shape}")
    if not np.all(np.isfinite(edges)):
        raise ValueError(f"{dim} edges contain non-finite values; pass finite edges in keV")
    if np.any(np.diff(edges) <= 0):
        i = int(np.argmax(np.diff(edges) <= 0))
        raise ValueError(
            f"{dim} edges must increase strictly; edge {i} = {edges[i]} keV and edge {i+1} = {edges[i+1]} keV. "
            "Sort the channels by energy and remove empty bins."
        )
    lo, hi = edges[:-1], edges[1:]
    attrs = {"units": "keV"}
    return {
        dim: (dim, 0.5 * (lo + hi), attrs),
        f"{dim}_lo": (dim, lo, attrs),
        f"{dim}_hi": (dim, hi, attrs),
    }


def energy_edges(ds_or_da, dim="energy"):
    """Edges (keV, length n+1) of an energy-like dimension, from its stored lo/hi coords."""
    lo = np.asarray(ds_or_da[f"{dim}_lo"].values, dtype=np.float64)
    hi = np.asarray(ds_or_da[f"{dim}_hi"].values, dtype=np.float64)
    if lo.size > 1 and not np.allclose(lo[1:], hi[:-1], rtol=0, atol=REL_TOL * np.min(hi - lo)):
        raise ValueError(f"{dim} bins are not contiguous (gaps between {dim}_hi and the next {dim}_lo)")
    return np.append(lo, hi[-1])


def pixel_size(ds, dim="x"):
    """Pixel size in arcsec stored on the ``x``/``y`` coordinate."""
    return float(ds[dim].attrs["pixel_size"])


def _check_units(da, expected, what):
    units = da.attrs.get("units")
    if units is None:
        raise ValueError(f"{what} has no units attribute; set .attrs['units'] = '{expected}'")
    if units != expected:
        raise ValueError(f"{what} is in '{units}' but xfusion expects '{expected}'; convert it to {expected}")


def _spatial_coord(n, size, values, dim):
    if values is None:
        values = (np.arange(n) - (n - 1) / 2.0) * size
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (n,):
        raise ValueError(f"coordinate {dim} has {values.size} values for {n} pixels")
    if n > 1:
        d = np.diff(values)
        if not np.allclose(d, size, rtol=REL_TOL, atol=0):
            raise ValueError(
                f"coordinate {dim} must be increasing with uniform spacing equal to pixel_size={size} arcsec; "
                f"found spacings between {d.min()} and {d.max()}. Regrid the cube onto a regular grid."
            )
    return (dim, values, {"units": "arcsec", "pixel_size": float(size)})


def _psf_dataarray(psf, psf_pixel_size):
    if isinstance(psf, xr.DataArray) and "psf_energy" in psf.dims:
        # energy-dependent PSF: a stack over bands, linearly interpolated in energy by the model
        if "psf_energy" not in psf.coords:
            raise ValueError("an energy-dependent psf needs a 'psf_energy' coordinate (keV) giving the band energies")
        _check_units(psf["psf_energy"], "keV", "psf coordinate psf_energy")
        e = np.asarray(psf["psf_energy"].values, dtype=np.float64)
        if e.size < 1 or np.any(np.diff(e) <= 0):
            raise ValueError(f"psf_energy must increase strictly; got {e}")
        bands = [_psf_dataarray(psf.isel(psf_energy=i).drop_vars("psf_energy"), psf_pixel_size) for i in range(e.size)]
        out = xr.concat(bands, dim="psf_energy")
        return out.assign_coords(psf_energy=("psf_energy", e, {"units": "keV"})).transpose("psf_energy", "psf_x", "psf_y")
    if isinstance(psf, xr.DataArray):
        if set(psf.dims) != {"psf_x", "psf_y"}:
            raise ValueError(f"psf DataArray must have dims ('psf_x', 'psf_y'); got {psf.dims}")
        psf = psf.transpose("psf_x", "psf_y")
        values = np.asarray(psf.values, dtype=np.float64)
        sizes = []
        for d in ("psf_x", "psf_y"):
            if d in psf.coords and psf.sizes[d] > 1:
                _check_units(psf[d], "arcsec", f"psf coordinate {d}")
                sizes.append(float(np.diff(psf[d].values).mean()))
        if sizes:
            if psf_pixel_size is not None and not np.isclose(sizes[0], psf_pixel_size, rtol=REL_TOL):
                raise ValueError(f"psf coords give a {sizes[0]} arcsec pixel but psf_pixel_size={psf_pixel_size}")
            psf_pixel_size = sizes[0]
    else:
        values = np.array(psf, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"psf must be a 2D image (psf_x, psf_y); got {values.ndim} dimensions")
    if values.shape[0] % 2 == 0 or values.shape[1] % 2 == 0:
        raise ValueError(
            f"psf has even shape {values.shape}; xfusion needs an odd-sized PSF centred on its middle pixel. "
            "Crop one row/column (or pad with zeros) so the peak sits in the central pixel."
        )
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("psf contains negative or non-finite values; PSFs must be finite and >= 0")
    total = values.sum()
    if not np.isclose(total, 1.0, rtol=0, atol=PSF_NORM_TOL):
        raise ValueError(
            f"psf sums to {total:.6g}, not 1; xfusion refuses unnormalized PSFs. Pass psf / psf.sum() "
            "(or xfusion.io.read_psf, which normalizes) if the stamp contains all the flux."
        )
    if psf_pixel_size is None:
        raise ValueError("psf given without psf_pixel_size (arcsec) and without psf_x/psf_y coordinates")
    nx, ny = values.shape
    attrs = {"units": "arcsec", "pixel_size": float(psf_pixel_size)}
    return xr.DataArray(
        values,
        dims=("psf_x", "psf_y"),
        coords={
            "psf_x": ("psf_x", (np.arange(nx) - nx // 2) * psf_pixel_size, attrs),
            "psf_y": ("psf_y", (np.arange(ny) - ny // 2) * psf_pixel_size, attrs),
        },
        attrs={"units": "1"},
    )


def _energy_true_dataarray(da, what):
    """Validate a DataArray on ``energy_true`` (with edges) and return it in float64."""
    if "energy_true" not in da.dims:
        raise ValueError(f"{what} DataArray must have an 'energy_true' dim; got {da.dims}")
    for c in ("energy_true_lo", "energy_true_hi"):
        if c not in da.coords:
            raise ValueError(f"{what} needs explicit true-energy edges: coordinate '{c}' (keV) is missing")
    edges = energy_edges(da, "energy_true")
    if np.any(np.diff(edges) <= 0):
        raise ValueError(f"{what}: energy_true edges must increase strictly")
    return da


# --------------------------------------------------------------------------- builder
def observation(
    counts,
    *,
    energy_edges,
    pixel_size,
    exposure,
    effective_area=None,
    psf=None,
    psf_pixel_size=None,
    response=None,
    response_spacing=None,
    dims=None,
    name=None,
    mask=None,
) -> xr.Dataset:
    """Build and validate one observation Dataset (see module docstring for the schema).

    Parameters
    ----------
    counts : ndarray or DataArray
        Counts cube. A NumPy array needs ``dims`` naming its axes (a permutation of
        ``("x", "y", "energy")``); a DataArray must carry those dims (any order). Stored
        transposed to (x, y, energy), energy contiguous. Must be finite and >= 0.
    energy_edges : array (n_energy + 1,), keV
        Channel edges, strictly increasing.
    pixel_size : float, arcsec
        Spatial pixel size (square pixels).
    exposure : float, s
        Exposure time, > 0.
    effective_area : None, float, array (n_energy,), or DataArray, cm2
        Effective area as a function of true energy. A float is flat; a 1D array is taken
        on the channel grid; a DataArray over ``energy_true`` (with ``energy_true_lo/hi``
        edge coords, e.g. from :func:`xfusion.io.read_arf`) keeps its own grid and is
        interpolated onto the fused grid later; a DataArray over (x, y, energy_true)
        describes vignetting. ``None`` means 1 cm2 (counts are then per cm2).
    psf : None, 2D array or DataArray (psf_x, psf_y) or (psf_energy, psf_x, psf_y)
        Spatial response (odd size, sums to 1); ``psf_pixel_size`` (arcsec) gives its
        sampling for plain arrays (default ``pixel_size``). A stack over ``psf_energy``
        (keV) is an energy-dependent PSF, interpolated linearly between bands.
    response : None, 1D array, or DataArray (energy_true, energy)
        Spectral response: a stationary kernel (odd length, sums to 1) sampled every
        ``response_spacing`` keV, or an RMF matrix whose ``energy`` columns are the
        channels of ``counts`` (or an integer grouping of them, summed here).
    mask : None or bool array like counts
        True where voxels are valid; invalid voxels are excluded from the likelihood.
    name : str, optional
        Label (e.g. "XMM/EPIC-pn").
    """
    if isinstance(counts, xr.DataArray):
        missing = set(CUBE_DIMS) - set(counts.dims)
        if missing or counts.ndim != 3:
            raise ValueError(f"counts DataArray must have dims {CUBE_DIMS} (any order); got {counts.dims}")
        da = counts.transpose(*CUBE_DIMS)
        values = da.data if _is_lazy(da.data) else np.asarray(da.values)
        xcoord = da["x"].values if "x" in da.coords else None
        ycoord = da["y"].values if "y" in da.coords else None
    else:
        values = np.asarray(counts)
        if dims is None:
            raise ValueError("counts is a plain array: pass dims=, e.g. dims=('energy', 'y', 'x')")
        dims = tuple(dims)
        if sorted(dims) != sorted(CUBE_DIMS) or values.ndim != 3:
            raise ValueError(f"dims must be a permutation of {CUBE_DIMS} matching counts.ndim=3; got {dims}")
        values = np.transpose(values, [dims.index(d) for d in CUBE_DIMS])
        xcoord = ycoord = None
    if not _is_lazy(values):  # Dask arrays stay lazy (validated when read); NumPy: a copy-or-view, never written to
        values = np.ascontiguousarray(values)
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"counts must be numeric; got dtype {values.dtype}")
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)

    for label, v in (("pixel_size", pixel_size), ("exposure", exposure)):
        if v is None:
            raise ValueError(f"{label} is required ({'arcsec' if label == 'pixel_size' else 's'})")
        if not isinstance(v, numbers.Real) or not np.isfinite(v) or v <= 0:
            raise ValueError(f"{label} must be a positive finite number; got {v!r}")

    nx, ny, ne = values.shape
    coords = {
        "x": _spatial_coord(nx, float(pixel_size), xcoord, "x"),
        "y": _spatial_coord(ny, float(pixel_size), ycoord, "y"),
    }
    coords.update(_edges_coords(energy_edges, "energy"))
    if coords["energy"][1].size != ne:
        raise ValueError(
            f"energy_edges has {coords['energy'][1].size + 1} values but counts has {ne} energy channels; "
            f"pass {ne + 1} edges"
        )
    ds = xr.Dataset(coords=coords)
    ds["counts"] = (CUBE_DIMS, values, {"units": "count"})
    ds["exposure"] = ((), float(exposure), {"units": "s"})

    # effective area
    if effective_area is None:
        ds["effective_area"] = ((), 1.0, {"units": "cm2", "note": "not given: 1 cm2 assumed"})
    elif isinstance(effective_area, xr.DataArray):
        area = _energy_true_dataarray(effective_area, "effective_area")
        if area.ndim == 3:
            area = area.transpose("x", "y", "energy_true")
            if area.shape[:2] != (nx, ny):
                raise ValueError(f"vignetted effective_area has spatial shape {area.shape[:2]}, counts {(nx, ny)}")
            area = area.drop_vars(["x", "y"], errors="ignore")
        elif area.dims != ("energy_true",):
            raise ValueError(f"effective_area dims must be (energy_true,) or (x, y, energy_true); got {area.dims}")
        units = area.attrs.get("units", "cm2")
        if units not in ("cm2", "cm**2", "cm^2"):
            raise ValueError(f"effective_area is in '{units}'; convert to cm2")
        ds["effective_area"] = area.astype(np.float64).assign_attrs(units="cm2")
    elif np.ndim(effective_area) == 0:
        ds["effective_area"] = ((), float(effective_area), {"units": "cm2"})
    else:
        arr = np.asarray(effective_area, dtype=np.float64)
        if arr.shape != (ne,):
            raise ValueError(
                f"effective_area has shape {arr.shape} but counts has {ne} channels; pass one value per channel, "
                "or a DataArray over energy_true with its own edges (e.g. from xfusion.io.read_arf)"
            )
        ds = ds.assign_coords(_edges_coords(np.append(coords["energy_lo"][1], coords["energy_hi"][1][-1]), "energy_true"))
        ds["effective_area"] = (("energy_true",), arr, {"units": "cm2"})

    if psf is not None:
        ds["psf"] = _psf_dataarray(psf, psf_pixel_size if psf_pixel_size is not None else (
            None if isinstance(psf, xr.DataArray) else float(pixel_size)))

    if response is not None:
        ds = _add_response(ds, response, response_spacing)

    if mask is not None:
        m = np.asarray(mask.transpose(*CUBE_DIMS).values if isinstance(mask, xr.DataArray) else mask)
        if m.shape != values.shape or m.dtype != bool:
            raise ValueError(f"mask must be a boolean array of shape {values.shape} (x, y, energy)")
        ds["mask"] = (CUBE_DIMS, m)

    ds.attrs.update({"xfusion_schema": SCHEMA_VERSION, "name": name or "observation"})
    return validate(ds)


def _add_response(ds, response, spacing):
    if isinstance(response, xr.DataArray) and response.ndim == 2:
        rmf = _energy_true_dataarray(response, "response").transpose("energy_true", "energy")
        if "energy_lo" not in rmf.coords:
            raise ValueError("response matrix needs channel edges 'energy_lo'/'energy_hi' coordinates (keV)")
        ch_edges = energy_edges(rmf, "energy")
        data_edges = energy_edges(ds, "energy")
        n_r, n_d = ch_edges.size - 1, data_edges.size - 1
        if n_r % n_d != 0:
            raise ValueError(
                f"response has {n_r} channels and counts {n_d}; channels must match or group by an integer factor"
            )
        g = n_r // n_d
        if not np.allclose(ch_edges[::g], data_edges, rtol=0, atol=REL_TOL * np.min(np.diff(data_edges))):
            raise ValueError(
                "response channel edges (coordinate energy) do not line up with the counts' energy_edges: "
                f"first edges {ch_edges[:3]} vs {data_edges[:3]} keV. Bin the counts on the RMF's EBOUNDS channels."
            )
        mat = np.asarray(rmf.values, dtype=np.float64)
        if g > 1:
            mat = mat.reshape(mat.shape[0], n_d, g).sum(axis=-1)
        if not np.all(np.isfinite(mat)) or np.any(mat < 0):
            raise ValueError("response matrix contains negative or non-finite values")
        et = energy_edges(rmf, "energy_true")
        if "energy_true" in ds.dims:
            ds_et = energy_edges(ds, "energy_true")
            if ds_et.size != et.size or not np.allclose(ds_et, et):
                # put the area on the RMF grid: an ARF normally shares the RMF grid already
                area = ds["effective_area"]
                new = np.interp(0.5 * (et[1:] + et[:-1]), ds["energy_true"].values, area.values)
                ds = ds.drop_vars(["effective_area", "energy_true", "energy_true_lo", "energy_true_hi"])
                ds = ds.assign_coords(_edges_coords(et, "energy_true"))
                ds["effective_area"] = (("energy_true",), new, {"units": "cm2", "note": "interpolated onto RMF grid"})
        else:
            ds = ds.assign_coords(_edges_coords(et, "energy_true"))
        ds["response"] = (("energy_true", "energy"), mat, {"units": "1", "kind": "matrix"})
        return ds
    kernel = np.array(response.values if isinstance(response, xr.DataArray) else response, dtype=np.float64)
    if isinstance(response, xr.DataArray) and "energy_offset" in response.coords and spacing is None:
        spacing = float(np.diff(response["energy_offset"].values).mean())
    if kernel.ndim != 1:
        raise ValueError("response must be a 1D kernel or a 2D (energy_true, energy) DataArray")
    if spacing is None or not np.isfinite(spacing) or spacing <= 0:
        raise ValueError("a 1D response kernel needs response_spacing (keV between samples), > 0")
    if kernel.size % 2 == 0:
        raise ValueError(f"response kernel has even length {kernel.size}; use an odd, centred kernel")
    if not np.all(np.isfinite(kernel)) or np.any(kernel < 0):
        raise ValueError("response kernel contains negative or non-finite values")
    if not np.isclose(kernel.sum(), 1.0, rtol=0, atol=PSF_NORM_TOL):
        raise ValueError(f"response kernel sums to {kernel.sum():.6g}, not 1; pass kernel / kernel.sum()")
    off = (np.arange(kernel.size) - kernel.size // 2) * float(spacing)
    ds = ds.assign_coords(energy_offset=("energy_offset", off, {"units": "keV", "spacing": float(spacing)}))
    ds["response"] = (("energy_offset",), kernel, {"units": "1", "kind": "kernel"})
    return ds


# --------------------------------------------------------------------------- validation
def validate(ds: xr.Dataset) -> xr.Dataset:
    """Check an observation Dataset against the schema; return it unchanged or raise ValueError.

    Works on NumPy- or Dask-backed datasets (value checks on Dask counts are skipped here
    to avoid a full pass; they are done when the data are first read by ``fuse``).
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"an observation is an xarray.Dataset; got {type(ds).__name__}. Build one with xfusion.observation")
    for v in ("counts", "exposure"):
        if v not in ds:
            fix = "set ds['exposure'] = ((), seconds, {'units': 's'})" if v == "exposure" else "add a counts cube"
            raise ValueError(f"observation '{ds.attrs.get('name', '?')}' has no '{v}' variable; {fix}")
    if ds["counts"].dims != CUBE_DIMS:
        raise ValueError(f"counts dims must be {CUBE_DIMS}; got {ds['counts'].dims}. Use .transpose{CUBE_DIMS}")
    for d in ("x", "y"):
        _check_units(ds[d], "arcsec", f"coordinate {d}")
        if "pixel_size" not in ds[d].attrs:
            raise ValueError(f"coordinate {d} has no 'pixel_size' attribute (arcsec)")
    for c in ("energy", "energy_lo", "energy_hi"):
        if c not in ds.coords:
            raise ValueError(f"coordinate '{c}' is missing; energies need explicit edges (energy_lo, energy_hi in keV)")
        _check_units(ds[c], "keV", f"coordinate {c}")
    energy_edges(ds, "energy")
    _check_units(ds["exposure"], "s", "exposure")
    t = float(ds["exposure"].values)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"exposure must be > 0 s; got {t}")
    if "effective_area" in ds:
        _check_units(ds["effective_area"], "cm2", "effective_area")
        a = np.asarray(ds["effective_area"].values)
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError("effective_area contains negative or non-finite values")
    counts = ds["counts"].data
    if isinstance(counts, np.ndarray):
        if not np.all(np.isfinite(counts)):
            raise ValueError(
                "counts contain NaN or inf; xfusion never patches them silently. Set those voxels to 0 and pass "
                "mask= (False where invalid) to exclude them from the fit"
            )
        if np.any(counts < 0):
            raise ValueError(f"counts contain negative values (min {counts.min()}); counts must be >= 0")
    return ds
