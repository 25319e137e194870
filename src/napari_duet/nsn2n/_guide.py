"""Guide images: strongly low-pass-filtered slices used to find matched regions.

The paper filters each slice with non-local means and a 5x5 median; NLM costs
seconds per 512^2 slice on a CPU, so a Gaussian (default) or bilateral filter,
always followed by the median, is offered as the fast option.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._config import NSN2NConfig


def guide_slice(image: np.ndarray, config: NSN2NConfig) -> np.ndarray:
    """Low-pass filter one normalised slice: ``median(lowpass(image))``.

    Parameters
    ----------
    image : ndarray
        (Y, X) float32 slice, normalised to about [0, 1].
    config : NSN2NConfig
        Uses ``guide``, ``guide_sigma`` and ``median_size``.
    """
    img = np.asarray(image, dtype=np.float32)
    if config.guide == "gaussian":
        low = ndimage.gaussian_filter(img, config.guide_sigma, mode="reflect")
    elif config.guide == "bilateral":
        from skimage.restoration import denoise_bilateral

        # Colour sigma from the slice's own noise, so edges survive but noise does not.
        sigma = _noise_sigma(img)
        low = denoise_bilateral(
            img.astype(np.float64), sigma_color=max(3 * sigma, 1e-3),
            sigma_spatial=config.guide_sigma, mode="reflect",
        )
    else:  # nlm
        from skimage.restoration import denoise_nl_means

        sigma = _noise_sigma(img)
        low = denoise_nl_means(
            img, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True
        )
    low = np.asarray(low, dtype=np.float32)
    if config.median_size > 1:
        low = ndimage.median_filter(low, size=config.median_size, mode="reflect")
    return low


def _noise_sigma(img: np.ndarray) -> float:
    """Noise standard deviation of a slice (Immerkaer 1996: mean |Laplacian difference|).

    Needs no wavelets (PyWavelets is not a dependency) and ignores smooth structure.
    """
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    r = ndimage.convolve(np.asarray(img, np.float32), kernel, mode="reflect")[1:-1, 1:-1]
    if r.size == 0:
        return 1e-4
    return float(max(np.sqrt(np.pi / 2) * np.mean(np.abs(r)) / 6.0, 1e-4))


def guide_stack(stack: np.ndarray, config: NSN2NConfig) -> np.ndarray:
    """Guides of all slices of a (Z, Y, X) stack."""
    return np.stack([guide_slice(s, config) for s in stack])
