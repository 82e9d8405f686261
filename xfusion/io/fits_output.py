"""Safe writing of FITS files (DESIGN section 9: never overwrite what xfusion did not create).

Every FITS file xfusion writes carries ``CREATOR = 'xfusion VERSION'`` in its primary header
(:func:`primary_hdu`); files of earlier versions carry ``CREATOR = 'xfusion.io...'`` in the primary
header or in their first extension. :func:`check_fits_output` refuses, before anything is written:

* ``overwrite=False``: any existing path (:class:`FileExistsError`, as astropy's ``writeto``);
* ``overwrite=True``: a symbolic link, a folder, and any file that is not a FITS file written by
  xfusion (:class:`xfusion.io.zarr.OutputError`, a ``ValueError``) -- e.g. the instrument's own
  ``.rmf``/``.arf``, a text file; only xfusion's own files are replaced.

:func:`writeto` writes an ``HDUList`` to a hidden temporary sibling and renames it onto the path
when complete, so a killed write never leaves a truncated file (or an emptied old one) there.
"""
from __future__ import annotations

import os
from pathlib import Path

from astropy.io import fits

from .safe_files import write_via_temporary
from .zarr import OutputError

__all__ = ["creator", "primary_hdu", "written_by_xfusion", "check_fits_output", "writeto"]

_MARK = "xfusion"
_HDUS_CHECKED = 3  # the primary header and the first extensions: where xfusion puts CREATOR


def creator() -> str:
    """The ``CREATOR`` value of the files written by this version: ``'xfusion VERSION'``."""
    from .. import __version__

    return f"{_MARK} {__version__}"


def primary_hdu(data=None) -> fits.PrimaryHDU:
    """A primary HDU whose header carries xfusion's ``CREATOR`` (the marker :func:`written_by_xfusion` reads)."""
    hdu = fits.PrimaryHDU(data)
    hdu.header["CREATOR"] = (creator(), "software that created this file")
    return hdu


def _is_mark(value) -> bool:
    return isinstance(value, str) and (value == _MARK or value.startswith((_MARK + " ", _MARK + ".")))


def written_by_xfusion(path) -> bool:
    """True if ``path`` is a FITS file whose primary header (or one of its first extensions' headers) has a
    ``CREATOR`` written by xfusion (``'xfusion VERSION'`` or, from older versions, ``'xfusion.io...'``)."""
    p = Path(path)
    if p.is_symlink() or not p.is_file():
        return False
    try:
        with fits.open(p, memmap=False, lazy_load_hdus=True) as hdul:
            for i in range(_HDUS_CHECKED):
                try:
                    header = hdul[i].header
                except IndexError:
                    break
                if _is_mark(header.get("CREATOR")):
                    return True
    except Exception:  # noqa: BLE001 - not a FITS file (or an unreadable one): not ours
        return False
    return False


def check_fits_output(path, overwrite: bool, what: str = "output file") -> Path:
    """Refuse a FITS output ``path`` that would destroy something (see the module docstring); return it."""
    p = Path(os.fspath(path))
    if not p.absolute().parent.is_dir():
        raise FileNotFoundError(f"{what} {str(p)!r}: its folder {str(p.absolute().parent)!r} does not exist; create "
                                "it first or choose another path")
    if not (p.exists() or p.is_symlink()):
        return p
    if not overwrite:
        raise FileExistsError(f"{what} {str(p)!r} already exists; choose another path, or pass overwrite=True to "
                              "replace a file that xfusion wrote")
    if p.is_symlink():
        raise OutputError(f"{what} {str(p)!r} is a symbolic link (to {os.readlink(p)!r}); xfusion does not replace "
                          "files through links: pass the real path. Nothing was written")
    if not p.is_file():
        raise OutputError(f"{what} {str(p)!r} exists and is not a file; refusing to replace it: choose another path")
    if not written_by_xfusion(p):
        raise OutputError(f"{what} {str(p)!r} exists and was not written by xfusion (not a FITS file with "
                          f"CREATOR = '{_MARK} ...'); refusing to replace it even with overwrite=True (it may be "
                          "your instrument's file or other data): choose another path or move it away")
    return p


def writeto(hdul, path, overwrite: bool = False, what: str = "output file") -> Path:
    """Write ``hdul`` (an ``HDUList`` or a list of HDUs) to ``path`` after :func:`check_fits_output`, through a
    hidden temporary sibling renamed onto ``path`` when complete."""
    p = check_fits_output(path, overwrite, what)
    if not isinstance(hdul, fits.HDUList):
        hdul = fits.HDUList(list(hdul))
    return write_via_temporary(p, lambda tmp: hdul.writeto(tmp))  # (the suffix is kept: astropy's .gz)
