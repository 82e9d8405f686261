"""xfusion: hyperspectral image fusion for X-ray astronomy (HIFReD, Lascar, Bobin & Acero 2025)."""
__version__ = "0.1.0"

from . import io, toy  # noqa: E402,F401
from .grid import fusion_grid  # noqa: E402
from .observation import observation, validate  # noqa: E402
from .operators.model import predict  # noqa: E402

__all__ = ["observation", "validate", "fusion_grid", "predict", "toy", "io", "__version__"]
from . import metrics  # noqa: E402,F401
from .fuse import fuse  # noqa: E402

__all__ += ["fuse", "metrics"]
