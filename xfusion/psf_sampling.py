"""Flux-conserving resampling of point-spread functions onto a centred odd grid (core: no I/O).

A PSF is an :class:`xarray.DataArray` with dims ``("psf_x", "psf_y")`` whose coordinates are the
offsets (arcsec) of the pixel centres from the PSF centre; it is odd-sized, centred and sums to 1.
:func:`resample_psf` treats the input as piecewise constant over its pixels and integrates it
exactly over each output pixel (separable overlap-area rebinning), so total flux is conserved up to
what falls outside the output stamp. Used by :func:`xfusion.grid.psf_on_grid` and the PSF readers.
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr


def _uniform_step(coord: np.ndarray, name: str) -> float:
    coord = np.asarray(coord, dtype=np.float64)
    if coord.size < 2:
        raise ValueError(f"PSF coordinate {name!r} needs at least 2 pixels.")
    steps = np.diff(coord)
    step = float(np.mean(steps))
    if step <= 0 or not np.allclose(steps, step, rtol=1e-6, atol=0):
        raise ValueError(
            f"PSF coordinate {name!r} must be uniformly increasing."
        )
    return step


def _odd_size_covering(half_extent: float, pixel_size: float) -> int:
    """Smallest odd n with n * pixel_size / 2 >= half_extent."""
    n = int(math.ceil(2.0 * half_extent / pixel_size - 1e-9))
    n = max(n, 1)
    return n if n % 2 == 1 else n + 1


def _overlap_matrix(in_centres, d_in, out_centres, d_out):
    """W[j, i] = fraction of input pixel i lying inside output pixel j."""
    in_lo = in_centres - 0.5 * d_in
    in_hi = in_centres + 0.5 * d_in
    out_lo = out_centres - 0.5 * d_out
    out_hi = out_centres + 0.5 * d_out
    lo = np.maximum(out_lo[:, None], in_lo[None, :])
    hi = np.minimum(out_hi[:, None], in_hi[None, :])
    return np.clip(hi - lo, 0.0, None) / d_in


def _centred_coords(n: int, pixel_size: float) -> np.ndarray:
    return (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * pixel_size


def _make_psf(values, pixel_size, attrs):
    nx, ny = values.shape
    coord_attrs = {"units": "arcsec"}
    return xr.DataArray(
        values,
        dims=("psf_x", "psf_y"),
        coords={
            "psf_x": xr.Variable("psf_x", _centred_coords(nx, pixel_size), coord_attrs),
            "psf_y": xr.Variable("psf_y", _centred_coords(ny, pixel_size), coord_attrs),
        },
        name="psf",
        attrs=attrs,
    )


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def resample_psf(psf: xr.DataArray, pixel_size: float, size: int | None = None
                 ) -> xr.DataArray:
    """Flux-conserving resampling of a PSF onto a centred odd grid.

    The input image is treated as piecewise constant over its pixels and
    integrated exactly over each output pixel (overlap-area rebinning,
    separable in x and y).  Total flux is conserved up to what falls outside
    the output stamp.

    Parameters
    ----------
    psf : xarray.DataArray, dims ("psf_x", "psf_y")
        Input PSF; coordinates are pixel-centre offsets (arcsec) from the
        PSF centre, uniformly spaced, square pixels.  It need not be
        odd-sized, centred or normalized.
    pixel_size : float
        Output pixel size in arcsec.
    size : int, optional
        Output size in pixels along both axes (must be odd).  Default: the
        smallest odd size covering the whole input image.

    Returns
    -------
    xarray.DataArray, dims ("psf_x", "psf_y"), shape (size, size)
        Sums to 1; centre pixel at offset (0, 0).  ``attrs`` copies the
        input's and sets ``pixel_size`` (arcsec), ``units`` = "1" and
        ``enclosed_fraction`` = fraction of the input flux inside the
        output stamp, multiplied by the input's own ``enclosed_fraction``
        if present (so it always refers to the original image).
    """
    if psf.dims != ("psf_x", "psf_y"):
        psf = psf.transpose("psf_x", "psf_y")
    pixel_size = float(pixel_size)
    if not pixel_size > 0:
        raise ValueError(f"pixel_size must be positive, got {pixel_size!r}.")
    x = np.asarray(psf["psf_x"].values, dtype=np.float64)
    y = np.asarray(psf["psf_y"].values, dtype=np.float64)
    dx = _uniform_step(x, "psf_x")
    dy = _uniform_step(y, "psf_y")
    if not np.isclose(dx, dy, rtol=1e-6):
        raise ValueError(f"PSF pixels must be square (got {dx} x {dy} arcsec).")
    values = np.asarray(psf.values, dtype=np.float64)
    total = float(values.sum())
    if not total > 0:
        raise ValueError("PSF has non-positive total flux; cannot normalize.")
    if size is None:
        half = max(abs(x[0] - dx / 2), abs(x[-1] + dx / 2),
                   abs(y[0] - dy / 2), abs(y[-1] + dy / 2))
        size = _odd_size_covering(half, pixel_size)
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"PSF size must be a positive odd integer, got {size}.")
    out_c = _centred_coords(size, pixel_size)
    wx = _overlap_matrix(x, dx, out_c, pixel_size)
    wy = _overlap_matrix(y, dy, out_c, pixel_size)
    out = wx @ values @ wy.T
    kept = float(out.sum())
    if not kept > 0:
        raise ValueError(
            "No PSF flux falls inside the requested output stamp; increase "
            "`size` or check the PSF coordinates."
        )
    attrs = dict(psf.attrs)
    attrs["units"] = "1"
    attrs["pixel_size"] = pixel_size
    attrs["enclosed_fraction"] = float(attrs.get("enclosed_fraction", 1.0)) * kept / total
    return _make_psf(out / kept, pixel_size, attrs)
