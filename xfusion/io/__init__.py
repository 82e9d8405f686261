"""Input/output: Zarr stores, OGIP responses, event lists, PSF images, export for spectral fitting."""
from . import events, export, files, fits_export, ogip, psf, zarr  # noqa: F401
from .events import read_events  # noqa: F401
from .export import write_arf, write_pha, write_pha2, write_pha2_from_result, write_pha_from_result, write_rmf  # noqa: F401
from .files import align, background_counts, common_channel_edges, observation_from_files  # noqa: F401
from .fits_export import write_fits_cube  # noqa: F401
from .ogip import read_arf, read_pha, read_rmf  # noqa: F401
from .psf import read_psf, read_psf_stack, resample_psf  # noqa: F401
from . import jwst  # noqa: F401,E402
from .jwst import read_nircam_i2d, read_nirspec_s3d, stack_filters  # noqa: F401,E402
