"""napari-duet: self-supervised denoising jointly with segmentation and splitting.

The core (everything outside ``_widgets``) never imports napari or Qt, so it
runs in scripts, tests and on GPU servers.  Heavy dependencies (torch) are
imported lazily by the engines that need them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-duet")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from .core.errors import DuetError, DuetInputError, ModelFileError

__all__ = ["DuetError", "DuetInputError", "ModelFileError", "__version__"]
