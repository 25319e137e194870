"""Dtype handling and invertible intensity normalisation.

Engines work on float32 images scaled to a standard range and give results
back in the input's intensity scale; :class:`Normalizer` stores the affine
map so it can be saved in a model file and applied to other images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import DuetInputError

_SUPPORTED_KINDS = "biuf"  # bool, signed int, unsigned int, float


def as_float_image(image, *, name: str = "image") -> np.ndarray:
    """Return ``image`` as a float32 array, rejecting what cannot be an image.

    Accepts numpy arrays and array-likes (dask, zarr, xarray are materialised).

    Raises
    ------
    DuetInputError
        For complex or object dtypes, empty arrays, and non-finite values.
    """
    arr = np.asarray(image)
    if arr.dtype.kind not in _SUPPORTED_KINDS:
        raise DuetInputError(f"{name} has unsupported dtype {arr.dtype}; use integers or floats")
    if arr.size == 0:
        raise DuetInputError(f"{name} is empty (shape {arr.shape})")
    out = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(out)):
        raise DuetInputError(f"{name} contains NaN or infinite values")
    return out


@dataclass(frozen=True)
class Normalizer:
    """Affine intensity map ``y = (x - offset) / scale`` and its inverse."""

    offset: float
    scale: float

    def forward(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.offset) / self.scale).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float32) * self.scale + self.offset).astype(np.float32)

    def inverse_scale(self, y: np.ndarray) -> np.ndarray:
        """Map a spread (std, error) back to input units: no offset."""
        return (np.asarray(y, dtype=np.float32) * abs(self.scale)).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        return cls(offset=float(d["offset"]), scale=float(d["scale"]))


def fit_normalizer(
    image: np.ndarray, mode: str = "percentile", low: float = 0.1, high: float = 99.9
) -> Normalizer:
    """Fit a :class:`Normalizer` to ``image``.

    Parameters
    ----------
    mode : {"percentile", "minmax", "meanstd"}
        ``percentile`` maps the ``low``/``high`` percentiles to 0/1 (robust to
        hot pixels), ``minmax`` maps min/max to 0/1, ``meanstd`` standardises.
    """
    x = np.asarray(image, dtype=np.float32)
    if mode == "percentile":
        lo, hi = np.percentile(x, [low, high])
    elif mode == "minmax":
        lo, hi = float(x.min()), float(x.max())
    elif mode == "meanstd":
        lo, hi = float(x.mean()), float(x.mean() + x.std())
    else:
        raise DuetInputError(f"unknown normalisation mode {mode!r}")
    scale = float(hi - lo)
    if not np.isfinite(scale) or scale <= 1e-12 * max(1.0, abs(float(lo))):
        # A constant image still round-trips; only its offset matters.
        scale = 1.0
    return Normalizer(offset=float(lo), scale=scale)
