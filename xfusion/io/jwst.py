"""Readers for JWST stage-3 products: NIRCam ``*_i2d.fits`` images and NIRSpec IFU ``*_s3d.fits`` cubes.

Layout read (JWST pipeline products, as documented in the JWST Calibration Pipeline "Data
Products" pages): a primary HDU with the observation keywords (``INSTRUME``, ``FILTER``, ``PUPIL``,
``GRATING``, ``TARGNAME``...), then image extensions ``SCI`` (surface brightness,
``BUNIT = 'MJy/sr'``; any surface-brightness unit astropy.units reads, e.g. 'MJy / sr' or 'Jy/sr', is converted
to MJy/sr, ``attrs["bunit_in_file"]``/``["bunit_factor"]`` say so; others are refused),
``ERR`` (1-sigma error, same unit), ``DQ`` (bit flags, 0 = good; s3d
cubes have it, pipeline i2d images do not), ``WHT`` (i2d: drizzle weight, 0 = no data) and
more we do not need. ``SCI`` carries the WCS and ``PIXAR_SR`` (pixel area, sr); its axes 1 and 2 must be RA and
Dec in that order (``CTYPE1 = 'RA---TAN'``, ``CTYPE2 = 'DEC--TAN'`` or another projection) with a pixel scale
(``CDELTi`` or ``CDi_j``): no celestial WCS, no scale, Dec first or other sky frames (galactic, ecliptic) are
refused, naming the keywords. For an
``s3d`` cube the FITS axes are (RA, Dec, wavelength) -- NumPy shape ``(nwave, ny, nx)`` --
with ``CTYPE3 = 'WAVE'``, ``CUNIT3 = 'um'``, ``CRVAL3``/``CDELT3``/``CRPIX3`` (a linear
wavelength grid; tabulated ``WAVE-TAB`` grids are refused with a clear message).

Both readers return Datasets in the layout of :mod:`xfusion.jwst` (``data``, ``variance`` =
ERR**2, ``mask`` = finite SCI/ERR, ERR > 0, DQ == 0 and WHT > 0 where present, coords
``x``/``y`` in arcsec offsets from the reference pixel; NaN values stay in ``data`` but are
masked, never patched). Axis order: ``x`` is FITS axis 1 (columns), ``y`` axis 2 (rows),
oriented as xfusion's grids: x to the west, y to the north. A product whose WCS has x to the east or y to the south (a mirrored or
180-degree rotated image: ``CD1_1 > 0`` or ``CD2_2 < 0``) is flipped to that orientation (its
WCS with it; ``attrs["reoriented"]`` says so); a rotated one is refused (reproject it north-up
first). The celestial WCS (of the array as returned) is kept as the header
text in ``attrs["wcs"]`` (``astropy.wcs.WCS(header)`` rebuilds it) with ``center_ra``/
``center_dec`` of the reference pixel. This module imports only the core (layer rule).
"""
from __future__ import annotations

import re

import numpy as np
import xarray as xr

#: a NIRCam pupil-wheel element that is a filter (F162M, F164N, F323N, F405N, F466N, F470N): it names the bandpass
PUPIL_FILTER = re.compile(r"F\d{3}[WMN]\d?")


def _hdu(hdul, name, path, required=True):
    try:
        return hdul[name]
    except KeyError:
        if not required:
            return None
        raise ValueError(f"{path}: no {name} extension; a JWST i2d/s3d product has SCI and ERR (and DQ or WHT)") \
            from None


def _pixel_scale_arcsec(h, path, shape_xy=None):
    """Pixel size (arcsec) and the celestial WCS, oriented as xfusion's grids (x to the west, y to the north).

    Refuses a WCS whose axes 1-2 are not (RA, Dec) in that order (none, Dec first, galactic or ecliptic), one with
    no pixel scale (no ``CDELTi``/``CDi_j``), non-square or rotated pixels. A pure flip of an axis (``CD1_1 > 0``:
    x grows to the east, a mirrored image; ``CD2_2 < 0``: y grows to the south; both: a 180-degree rotation) is
    undone: returns ``(pixel, wcs, flip_x, flip_y)`` with the WCS of the flipped array (reference pixel and matrix
    column mirrored) -- the reader reverses those array axes. ``shape_xy`` = (nx, ny), needed to flip."""
    from astropy.wcs import WCS

    cd = [k for k in h if re.fullmatch(r"CD\d+_\d+", str(k))]
    pc = [k for k in h if re.fullmatch(r"PC\d+_\d+", str(k))]
    if cd and pc:
        raise ValueError(f"{path}: the WCS mixes the CDi_j form ({', '.join(cd)}) with PCi_j ({', '.join(pc)}), "
                         "which the FITS standard forbids (wcslib then ignores CDi_j); keep one form")
    w = WCS(h, naxis=2)
    ctype = [str(h.get(f"CTYPE{i}", "")).strip() for i in (1, 2)]
    if (w.wcs.lng, w.wcs.lat) != (0, 1) or (w.wcs.lngtyp, w.wcs.lattyp) != ("RA", "DEC"):
        why = ("Dec first: x (axis 1) would be read as RA" if (w.wcs.lng, w.wcs.lat) == (1, 0) else
               "no celestial WCS: the pixel size and orientation are unknown" if w.wcs.lng < 0 else
               f"a {w.wcs.lngtyp}/{w.wcs.lattyp} frame, not RA/Dec: center_ra/center_dec would not be RA/Dec")
        raise ValueError(f"{path}: SCI has CTYPE1={ctype[0]!r}, CTYPE2={ctype[1]!r} ({why}); axes 1 and 2 must be "
                         "RA and Dec in that order (e.g. 'RA---TAN', 'DEC--TAN'), as in JWST products: reproject "
                         "it onto an RA/Dec grid (axis 1 RA, axis 2 Dec) first")
    unscaled = [f"CDELT{j}" for j in (1, 2) if f"CDELT{j}" not in h and not any(f"CD{i}_{j}" in h for i in (1, 2))]
    if unscaled:
        raise ValueError(f"{path}: SCI has no {' and no '.join(unscaled)} and no CD matrix for it: the pixel scale is "
                         "undefined (the FITS default would be 1 degree per pixel); give CDELT1/CDELT2 (with PCi_j) "
                         "or CD1_1..CD2_2 in degrees")
    m = w.pixel_scale_matrix * 3600.0  # deg -> arcsec
    sx, sy = np.hypot(m[0, 0], m[1, 0]), np.hypot(m[0, 1], m[1, 1])
    if not np.isclose(sx, sy, rtol=1e-4):
        raise ValueError(f"{path}: pixels are not square ({sx:.6g}\" x {sy:.6g}\"); resample to square pixels first")
    if abs(m[1, 0]) > 1e-6 * sx or abs(m[0, 1]) > 1e-6 * sx:
        raise ValueError(f"{path}: the image is rotated with respect to RA/Dec (PC/CD off-diagonal terms); "
                         "reproject the imager and the cube onto a north-up grid (x to the west, y to the north; "
                         "e.g. the reproject package) first (SyFu: co-registration)")
    flip_x, flip_y = bool(m[0, 0] > 0), bool(m[1, 1] < 0)  # xfusion: RA decreases with x, Dec increases with y
    if flip_x or flip_y:
        if shape_xy is None:
            raise ValueError(f"{path}: the image is not north-up (x to the west, y to the north)")
        w = w.deepcopy()
        for j, flip in enumerate((flip_x, flip_y)):
            if flip:
                w.wcs.crpix[j] = shape_xy[j] + 1 - w.wcs.crpix[j]
                if w.wcs.has_cd():
                    w.wcs.cd[:, j] *= -1
                else:
                    w.wcs.pc[:, j] *= -1
        w.wcs.set()
    return float(sx), w, flip_x, flip_y


def _flip(arrays, flip_x, flip_y):
    """Reverse the x (last, FITS axis 1) and/or y (FITS axis 2) axes of FITS-ordered arrays."""
    out = []
    for a in arrays:
        if flip_x:
            a = a[..., ::-1]
        if flip_y:
            a = a[..., ::-1, :]
        out.append(np.ascontiguousarray(a))
    return out


def _xy(nx, ny, pixel, crpix1, crpix2):
    a = {"units": "arcsec", "pixel_size": float(pixel)}
    return {"x": ("x", (np.arange(nx) + 1 - crpix1) * pixel, dict(a)),
            "y": ("y", (np.arange(ny) + 1 - crpix2) * pixel, dict(a))}


def _to_mjy_per_sr(unit, path):
    """The factor taking SCI/ERR in ``BUNIT`` = ``unit`` to MJy/sr: any spelling astropy.units reads as a surface
    brightness ('MJy/sr', 'MJy / sr', 'MJy sr-1', 'Jy/sr', 'Jy/arcsec2'...; the pipeline's 'MJy/str' is MJy/sr).
    Anything else -- a flux density per pixel (MJy), count rates (DN/s), no BUNIT -- is refused."""
    import warnings

    from astropy import units as u

    text = unit[:-3] + "sr" if unit.endswith("/str") else unit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", u.UnitsWarning)  # e.g. several slashes: read all the same
            parsed = u.Unit(text, parse_strict="raise") if text else None
    except (ValueError, TypeError):
        parsed = None
    if parsed is None or not parsed.is_equivalent(u.MJy / u.sr):
        kind = "" if parsed is None else f", {parsed.physical_type}"
        raise ValueError(f"{path}: SCI has BUNIT={unit!r}{kind}; expected a surface brightness (e.g. MJy/sr, "
                         "Jy/sr). Convert the product to MJy/sr (PIXAR_SR gives the pixel solid angle) before fusing")
    return float(parsed.to(u.MJy / u.sr))


def _common(hdul, path, ndim):
    sci = _hdu(hdul, "SCI", path)
    err = _hdu(hdul, "ERR", path)
    dq = _hdu(hdul, "DQ", path, required=False)  # pipeline i2d products have none: WHT and NaN say what is masked
    wht = _hdu(hdul, "WHT", path, required=False)
    h = sci.header
    unit = str(h.get("BUNIT", "")).strip()
    scale = _to_mjy_per_sr(unit, path)
    d = np.asarray(sci.data, dtype=np.float64) * scale
    e = np.asarray(err.data, dtype=np.float64) * scale
    if d.ndim != ndim or e.shape != d.shape:
        raise ValueError(f"{path}: SCI {d.shape} and ERR {e.shape} must be {ndim}D arrays of one shape")
    mask = np.isfinite(d) & np.isfinite(e) & (e > 0)
    for name, hdu, ok in (("DQ", dq, lambda a: a == 0), ("WHT", wht, lambda a: np.isfinite(a) & (a > 0))):
        if hdu is None or hdu.data is None:
            continue
        a = np.asarray(hdu.data)
        if a.shape != d.shape:
            raise ValueError(f"{path}: {name} {a.shape} must have the shape of SCI {d.shape}")
        mask &= ok(a)
    return h, d, e, mask, (unit, scale)


def _attrs(hdul, h, unit, w, path, flips=(False, False)):
    """The Dataset attrs; ``unit`` = (the file's BUNIT, the factor applied to reach MJy/sr)."""
    p = hdul[0].header
    ra, dec = (float(v) for v in w.wcs.crval[:2])
    attrs = {"name": str(p.get("TARGNAME", path)), "instrument": str(p.get("INSTRUME", "")),
             "bunit": "MJy/sr", "source_file": str(path), "wcs": w.to_header_string(),
             "center_ra": ra, "center_dec": dec}
    if "PIXAR_SR" in h:
        attrs["pixar_sr"] = float(h["PIXAR_SR"])
    if unit[1] != 1.0:  # SCI and ERR were multiplied by bunit_factor
        attrs.update(bunit_in_file=unit[0], bunit_factor=unit[1])
    flips = [a for a, f in zip(("x (east-west)", "y (north-south)"), flips) if f]
    if flips:
        attrs["reoriented"] = "flipped " + " and ".join(flips) + " to x west, y north (the file is not north-up)"
    return attrs


def read_nircam_i2d(path, filter=None):
    """One NIRCam ``i2d`` image as a one-filter imager Dataset (x, y, filter).

    ``data`` MJy/sr, ``variance`` (MJy/sr)**2 = ERR**2, ``mask`` (finite, ERR > 0, DQ == 0 and WHT > 0 where present:
    pipeline i2d products have WHT and no DQ).
    The image is named by the primary header's ``FILTER``, or by ``PUPIL`` when that holds a filter: NIRCam's
    pupil-wheel filters (F162M, F164N, F323N, F405N, F466N, F470N) are crossed with a wide filter in the filter
    wheel (e.g. ``FILTER = 'F150W2'``, ``PUPIL = 'F162M'``) and give the bandpass; a ``PUPIL`` of CLEAR, CLEARP, a
    grism or a mask leaves ``FILTER`` as the name. Both keywords are kept in ``attrs["filter_keyword"]`` /
    ``["pupil_keyword"]``. ``filter`` overrides the name. Stack several filters
    (same WCS) with :func:`stack_filters`.
    """
    from astropy.io import fits

    with fits.open(path) as hdul:
        h, d, e, mask, unit = _common(hdul, path, 2)
        pixel, w, flip_x, flip_y = _pixel_scale_arcsec(h, path, d.shape[::-1])
        d, e, mask = _flip((d, e, mask), flip_x, flip_y)
        keys = {k: str(hdul[0].header.get(k, "")).strip() for k in ("FILTER", "PUPIL")}
        name = filter or (keys["PUPIL"] if PUPIL_FILTER.fullmatch(keys["PUPIL"].upper()) else keys["FILTER"])
        if not name:
            raise ValueError(f"{path}: no FILTER keyword in the primary header; pass filter=")
        attrs = _attrs(hdul, h, unit, w, path, (flip_x, flip_y))
        attrs.update({f"{k.lower()}_keyword": v for k, v in keys.items() if v})
        crpix1, crpix2 = (float(v) for v in w.wcs.crpix[:2])
    ny, nx = d.shape
    ds = xr.Dataset(coords={**_xy(nx, ny, pixel, crpix1, crpix2), "filter": ("filter", [name])})
    tr = (1, 0)  # FITS (row=y, col=x) -> (x, y)
    ds["data"] = (("x", "y", "filter"), d.transpose(tr)[..., None], {"units": "MJy/sr"})
    ds["variance"] = (("x", "y", "filter"), np.where(mask, e * e, np.nan).transpose(tr)[..., None],
                      {"units": "(MJy/sr)2"})
    ds["mask"] = (("x", "y", "filter"), mask.transpose(tr)[..., None])
    ds.attrs.update(attrs, spectral_unit="um", data_term="gaussian")
    return ds


def _sky_shift(ref, im):
    """(dx, dy) arcsec: where ``im``'s grid sits in ``ref``'s frame relative to its own offsets (x west, y north),
    from the tangent points ``center_ra``/``center_dec`` (small field); (0, 0) without them."""
    keys = ("center_ra", "center_dec")
    if not all(k in d.attrs for d in (ref, im) for k in keys):
        return 0.0, 0.0
    ra0, dec0, ra1, dec1 = (float(d.attrs[k]) for d in (ref, im) for k in keys)
    dra = (ra1 - ra0 + 180.0) % 360.0 - 180.0
    return -dra * np.cos(np.deg2rad(dec0)) * 3600.0, (dec1 - dec0) * 3600.0


#: attrs that describe one file (its keywords, its unit conversion), not the stack: per-filter coordinates
PER_FILE_ATTRS = ("source_file", "filter_keyword", "pupil_keyword", "bunit_in_file", "bunit_factor", "reoriented")
#: attrs of the stack's pixel grid: the first image's (the others are checked to be the same pixels of the sky)
_GRID_ATTRS = ("wcs", "center_ra", "center_dec")


def _per_filter(images):
    """``(attrs, coords)`` of the stack: ``coords`` holds a (filter,) array for every attr of ``PER_FILE_ATTRS`` that
    an image has and every other attr whose value is not the same in all images (an image's own per-filter
    coordinates are taken as they are); numbers as float (NaN where missing, ``bunit_factor`` 1.0), else str
    ('' where missing). ``attrs``: the rest, equal in all images, and the first image's grid attrs; differing
    ``name``s are joined."""
    def values(im, key):
        if key in im.coords and im[key].dims == ("filter",):
            return list(im[key].values)
        return [im.attrs.get(key)] * im.sizes["filter"]

    keys = dict.fromkeys(k for im in images for k in [*im.attrs, *(c for c in im.coords if c != "filter"
                                                                   and im[c].dims == ("filter",))])
    attrs, coords = {k: images[0].attrs[k] for k in _GRID_ATTRS if k in images[0].attrs}, {}
    for key in keys:
        if key in _GRID_ATTRS:
            continue
        vals = [v for im in images for v in values(im, key)]
        same = all(v is not None and type(v) is type(vals[0]) and v == vals[0] for v in vals)
        if key == "name" and not same:
            attrs[key] = ", ".join(dict.fromkeys(str(v) for v in vals if v is not None))
        elif same and key not in PER_FILE_ATTRS:
            attrs[key] = vals[0]
        elif all(v is None or (isinstance(v, (int, float, np.number)) and not isinstance(v, bool)) for v in vals):
            fill = 1.0 if key == "bunit_factor" else np.nan
            coords[key] = ("filter", np.array([fill if v is None else float(v) for v in vals]))
        else:
            coords[key] = ("filter", np.array(["" if v is None else str(v) for v in vals]))
    return attrs, coords


def stack_filters(images):
    """Concatenate one-filter imager Datasets (same pixel grid on the same sky) along ``filter``.

    The images must cover the same pixels of the sky: same size and pixel, and the same sky position of every
    pixel (from their ``x``/``y`` offsets and tangent points ``center_ra``/``center_dec``, to 1 % of a pixel;
    reference pixels may differ). The result keeps the first image's ``x``/``y`` coordinates and grid attrs
    (``wcs``, ``center_ra``, ``center_dec``). What describes each file is kept per filter, as coordinates along
    ``filter``: ``source_file``, ``filter_keyword``, ``pupil_keyword``, ``bunit_in_file``, ``bunit_factor`` and
    ``reoriented`` (``PER_FILE_ATTRS``; '' where an image has none, ``bunit_factor`` 1.0: not converted), and any
    other attr whose value differs between the images (e.g. ``pixar_sr``; NaN or '' where missing); attrs equal in
    all images stay attrs (differing ``name``s are joined). ``st["pupil_keyword"].sel(filter="F162M")`` reads
    one. Each filter must appear once."""
    images = list(images)
    if not images:
        raise ValueError("no images to stack")
    ref = images[0]
    src = [str(im.attrs.get("source_file", f"image {i}")) for i, im in enumerate(images)]
    seen = {}
    for i, im in enumerate(images):
        for f in (str(v) for v in im["filter"].values):
            if f in seen:
                raise ValueError(f"filter {f} appears twice ('{seen[f]}' and '{src[i]}'): give each filter once")
            seen[f] = src[i]
    px = float(ref["x"].attrs.get("pixel_size", np.nan))
    out_images = [ref]
    for i, im in enumerate(images[1:], 1):
        for c in ("x", "y"):
            a, b = ref[c].values, im[c].values
            if im.sizes[c] != ref.sizes[c] or not np.allclose(b - b[0], a - a[0], atol=1e-6):
                raise ValueError(f"images '{src[0]}' and '{src[i]}' are not on the same {c} grid ({ref.sizes[c]} vs "
                                 f"{im.sizes[c]} pixels); resample them onto one grid first")
        sx, sy = _sky_shift(ref, im)
        dx = float(im["x"].values[0]) + sx - float(ref["x"].values[0])
        dy = float(im["y"].values[0]) + sy - float(ref["y"].values[0])
        tol = 0.01 * px if np.isfinite(px) else 1e-6
        if np.hypot(dx, dy) > tol:
            raise ValueError(f"images '{src[0]}' and '{src[i]}' are on different pixels of the sky: the second is "
                             f"offset by ({dx:.4g}\", {dy:.4g}\") = ({dx / px:.3g}, {dy / px:.3g}) pixels to the west "
                             "and north (from their WCS: reference pixel and CRVAL). Resample them onto one "
                             "pixel grid first (e.g. the JWST pipeline's resample step with one output WCS)")
        out_images.append(im.assign_coords(x=ref["x"], y=ref["y"]))
    attrs, per_filter = _per_filter(images)
    out_images = [im.drop_vars([c for c in im.coords if c != "filter" and im[c].dims == ("filter",)])
                  for im in out_images]
    out = xr.concat(out_images, dim="filter", data_vars="minimal", coords="minimal", compat="override",
                    combine_attrs="drop").assign_coords(per_filter)
    out.attrs.update(attrs)
    if len(images) > 1:
        out.attrs["source_files"] = ", ".join(src)
    return out


def _wavelengths(h, n, path):
    """Channel centres (um) and step of the linear wavelength axis 3, from the full WCS (astropy.wcs) as the FITS
    standard defines it: ``CRVAL3 + CDELT3 PC3_3 (i + 1 - CRPIX3)`` or ``CD3_3`` in place of ``CDELT3 PC3_3``."""
    import warnings

    from astropy import units as u
    from astropy.wcs import WCS

    unit = str(h.get("CUNIT3", "")).strip()
    if unit not in ("um", "micron", "m", "nm"):
        raise ValueError(f"{path}: CUNIT3={h.get('CUNIT3')!r}; expected um (or m, nm)")
    if "CRVAL3" not in h or not any(k in h for k in ("CDELT3", "CD3_3", "PC3_3")):
        raise ValueError(f"{path}: SCI has no CRVAL3 or no CDELT3 / CD3_3 / PC3_3: the wavelength grid is undefined")
    h = h.copy()
    h["CUNIT3"] = "um" if unit == "micron" else unit  # wcslib does not read 'micron'
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's FITSFixedWarning about the JWST headers' non-standard keys
        w = WCS(h, naxis=3)
    m = w.pixel_scale_matrix
    if np.any(m[2, :2] != 0) or np.any(m[:2, 2] != 0):
        raise ValueError(f"{path}: the wavelength axis is coupled to the spatial axes (PC3_1, PC3_2, PC1_3, PC2_3 or "
                         "CD3_1...): resample the cube onto a separable grid first")
    scale = u.Unit(str(w.wcs.cunit[2])).to(u.um)  # wcslib works in SI (m)
    centres = w.sub([3]).all_pix2world(np.arange(n, dtype=np.float64), 0)[0] * scale
    step = float(m[2, 2]) * scale
    if not step > 0:
        raise ValueError(f"{path}: the wavelength step (CDELT3 x PC3_3, or CD3_3) is {step:.4g} um <= 0; "
                         "wavelengths must increase")
    return centres, step


def read_nirspec_s3d(path):
    """A NIRSpec IFU ``s3d`` cube as an IFU Dataset (x, y, energy) with ``energy`` = wavelength (um).

    Wavelength edges from the linear WCS of axis 3 (astropy.wcs: ``CRVAL3 + (i + 1 - CRPIX3) CDELT3 PC3_3``,
    or ``CD3_3``, at channel centres, edges half a step either side); ``CUNIT3`` must be um (or m, nm,
    converted). ``data`` MJy/sr, ``variance`` = ERR**2, ``mask`` from DQ and finiteness.
    """
    from astropy.io import fits

    with fits.open(path) as hdul:
        h, d, e, mask, unit = _common(hdul, path, 3)
        ctype3 = str(h.get("CTYPE3", "")).strip().upper()
        if ctype3 != "WAVE":
            raise ValueError(f"{path}: CTYPE3={ctype3!r}; only a linear wavelength axis ('WAVE') is supported "
                             "(a 'WAVE-TAB' grid: resample the cube onto a linear grid)")
        centres, step = _wavelengths(h, d.shape[0], path)
        pixel, w, flip_x, flip_y = _pixel_scale_arcsec(h, path, d.shape[:0:-1])
        d, e, mask = _flip((d, e, mask), flip_x, flip_y)
        attrs = _attrs(hdul, h, unit, w, path, (flip_x, flip_y))
        p = hdul[0].header
        attrs.update(grating=str(p.get("GRATING", "")), filter=str(p.get("FILTER", "")))
        crpix1, crpix2 = (float(v) for v in w.wcs.crpix[:2])
    edges = np.append(centres - step / 2, centres[-1] + step / 2)
    a = {"units": "um", "long_name": "wavelength"}
    nw, ny, nx = d.shape
    ds = xr.Dataset(coords={**_xy(nx, ny, pixel, crpix1, crpix2),
                            "energy": ("energy", centres, a), "energy_lo": ("energy", edges[:-1], dict(a)),
                            "energy_hi": ("energy", edges[1:], dict(a))})
    tr = (2, 1, 0)  # (wave, y, x) -> (x, y, wave)
    ds["data"] = (("x", "y", "energy"), d.transpose(tr), {"units": "MJy/sr"})
    ds["variance"] = (("x", "y", "energy"), np.where(mask, e * e, np.nan).transpose(tr), {"units": "(MJy/sr)2"})
    ds["mask"] = (("x", "y", "energy"), mask.transpose(tr))
    ds.attrs.update(attrs, spectral_unit="um", data_term="gaussian")
    return ds
