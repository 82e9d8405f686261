"""Input/output: Zarr stores, OGIP responses and spectra (read and write), event lists, PSF images, FITS cubes.

One file per kind of file: ``ogip_read`` / ``ogip_write`` (RMF, ARF, PHA), ``events`` (event lists),
``psf`` (PSF images), ``fits_cube`` (a fused cube as a FITS image cube), ``observation_files`` (an
observation from instrument files, and alignment of two), ``zarr`` (stores), ``jwst`` (i2d/s3d), ``safe_files``
(writing a file without destroying what xfusion did not create).
"""
from . import (events, fits_cube, fits_output, observation_files, ogip_read, ogip_write, psf, safe_files,  # noqa: F401
               zarr)
from .events import read_events  # noqa: F401
from .fits_cube import write_fits_cube  # noqa: F401
from .observation_files import (align, background_counts, background_from_pha, common_channel_edges,  # noqa: F401
                                observation_from_files)
from .ogip_read import read_arf, read_pha, read_rmf  # noqa: F401
from .ogip_write import (write_arf, write_pha, write_pha2, write_pha2_from_result, write_pha_from_result,  # noqa: F401
                         write_rmf)
from .psf import read_psf, read_psf_stack, resample_psf  # noqa: F401
from . import jwst  # noqa: F401,E402
from .jwst import read_nircam_i2d, read_nirspec_s3d, stack_filters  # noqa: F401,E402
