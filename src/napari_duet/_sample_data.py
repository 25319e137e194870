"""napari sample data: synthetic noisy nuclei at three noise levels."""

from __future__ import annotations

from .synthetic import synthetic_nuclei

_LEVELS = {"low": 10.0, "medium": 30.0, "high": 50.0}


def _nuclei(level: str):
    sigma = _LEVELS[level]
    data = synthetic_nuclei((256, 256), noise_sigma=sigma, seed=7)
    return [
        (
            data.noisy,
            {"name": f"noisy nuclei (σ={sigma:g})", "colormap": "gray",
             "metadata": {"noise_sigma": sigma, "clean": data.clean}},
            "image",
        ),
        (data.mask, {"name": "nuclei ground truth", "visible": False}, "labels"),
    ]


def nuclei_low_noise():
    """Synthetic nuclei, Gaussian noise σ = 10 (8-bit scale), with the true mask."""
    return _nuclei("low")


def nuclei_medium_noise():
    """Synthetic nuclei, Gaussian noise σ = 30 (8-bit scale), with the true mask."""
    return _nuclei("medium")


def nuclei_high_noise():
    """Synthetic nuclei, Gaussian noise σ = 50 (8-bit scale), with the true mask."""
    return _nuclei("high")
