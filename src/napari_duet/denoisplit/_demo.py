"""The denoiSplit demo: a small pre-trained model shipped with the package and its data."""

from __future__ import annotations

from pathlib import Path

SPLIT_DEMO_SHAPE = (256, 256)
SPLIT_DEMO_SEED = 7  # the bundled model was trained on another field (seed 101)


def split_demo_model_path() -> Path:
    """The small pre-trained denoiSplit model shipped with the package."""
    return Path(__file__).with_name("_samples") / "split_demo.safetensors"


def split_demo_data():
    """The demo's superimposed image and its two clean structures (filaments, puncta)."""
    from ._synthetic import synthetic_split

    d = synthetic_split(SPLIT_DEMO_SHAPE, seed=SPLIT_DEMO_SEED)
    return d.noisy_a + d.noisy_b, d.clean_a, d.clean_b
