"""xfusion: hyperspectral image fusion for X-ray astronomy (HIFReD, Lascar, Bobin & Acero 2025).

``import xfusion`` gives the whole public surface: :func:`fuse`, :func:`observation`,
:func:`validate`, :func:`fusion_grid`, :func:`predict`, :func:`celestial_wcs` and the
modules :mod:`xfusion.toy`, :mod:`xfusion.io`, :mod:`xfusion.metrics`, :mod:`xfusion.plot`
:mod:`xfusion.baselines`, :mod:`xfusion.scenes` (randomized scenes with truth maps),
:func:`xfusion.tune`, :mod:`xfusion.analysis` (line maps) and :mod:`xfusion.consistency` (does the result predict
each input's counts) (``matplotlib.pyplot`` is imported only when a figure is made).
"""
__version__ = "0.1.0"

from . import io, toy  # noqa: E402,F401
from .grid import fusion_grid  # noqa: E402
from .observation import celestial_wcs, observation, validate  # noqa: E402
from .operators.model import predict  # noqa: E402

__all__ = ["observation", "validate", "celestial_wcs", "fusion_grid", "predict", "toy", "io", "__version__"]
from . import metrics  # noqa: E402,F401
from .fuse import fuse, settings_of  # noqa: E402
from .tuning import tune  # noqa: E402
from . import analysis, baselines, consistency, plot, scenes  # noqa: E402,F401
from .uncertainty import uncertainty  # noqa: E402

__all__ += ["fuse", "settings_of", "tune", "metrics", "plot", "baselines", "scenes", "analysis", "uncertainty"]
from . import gaussian, jwst, syfu  # noqa: E402,F401  (JWST imager + IFU fusion: docs/jwst.rst)

__all__ += ["gaussian", "jwst", "syfu"]
