"""Input/output: Zarr stores, OGIP responses, event lists, PSF images, export for fitting."""
from . import zarr  # noqa: F401
