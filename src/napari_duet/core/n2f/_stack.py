"""Noise2Fast on every 2D plane of a stack: ``duet n2f`` and the NS-N2N widget's
single-image alternative (for noise independent between pixels, or slices too far
apart for neighbour-based denoising)."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DuetInputError
from ..progress import Progress

__all__ = ["N2FStackProgress", "N2FStackResult", "iter_noise2fast_stack"]


@dataclass(kw_only=True)
class N2FStackProgress(Progress):
    """``done`` of ``total`` planes denoised (stage ``"denoise"``)."""


@dataclass
class N2FStackResult:
    """The denoised stack (float32, the input's shape) and what made it."""

    denoised: np.ndarray
    uncertainty: None = None
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def report(self) -> dict[str, Any]:
        from ..versions import versions

        return {"method": "noise2fast", "parameters": dict(self.settings),
                "shape": list(self.denoised.shape), "seconds": float(self.seconds),
                "versions": versions()}

    def save(self, folder, **kwargs) -> list:
        """Write denoised.tif and report.json into ``folder``."""
        from pathlib import Path

        from ..io import write_json, write_tiff

        folder = Path(folder)
        written = [write_tiff(folder / "denoised.tif", self.denoised,
                              pixel_info=kwargs.get("pixel_info"))]
        rep = self.report()
        rep.update(kwargs.get("report") or {})
        written.append(write_json(folder / "report.json", rep))
        return written


def iter_noise2fast_stack(
    volume, *, steps: int = 300, device: str = "auto", seed: int = 0,
    threads: int | None = None,
) -> Generator[N2FStackProgress, None, N2FStackResult]:
    """Denoise each 2D plane (the last two axes) of ``volume`` with Noise2Fast on its own.

    Yields :class:`N2FStackProgress` after every plane (closing the generator
    stops between planes); returns an :class:`N2FStackResult`.
    """
    import time

    from ._denoise import noise2fast

    arr = np.asarray(volume)
    if arr.ndim < 2:
        raise DuetInputError(f"Noise2Fast needs a 2D image or a stack, got shape {arr.shape}")
    planes = list(np.ndindex(*arr.shape[:-2]))
    out = np.zeros(arr.shape, np.float32)
    t0 = time.perf_counter()
    for i, idx in enumerate(planes):
        out[idx] = noise2fast(arr[idx], steps=steps, device=device, seed=seed + i,
                              threads=threads)
        elapsed = time.perf_counter() - t0
        yield N2FStackProgress(stage="denoise", done=i + 1, total=len(planes), elapsed=elapsed,
                               eta=elapsed / (i + 1) * (len(planes) - i - 1))
    return N2FStackResult(out, settings={"steps": steps, "device": str(device), "seed": seed},
                          seconds=time.perf_counter() - t0)
