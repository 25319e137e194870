"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must not pick up a GPU/MPS nondeterministically; engines take device="cpu" explicitly.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project, or skip with a clear reason."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real images not found at {SHARED_DATA} (see README: Test data)")
    return SHARED_DATA


@pytest.fixture
def one_torch_thread():
    """Tiny networks run faster on one thread, and far faster on a busy CI machine."""
    from napari_duet.core.devices import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def bad_seed_case(shared_data):
    """Issue 25's silent failure: a noisy DSB image (12aeefb1b522, Gaussian noise σ 30) with a
    foreground box on a nucleus and a background box on a patch slightly brighter than the
    rest (mean 48 against about 25), far from every annotated nucleus.  Cropped to
    188 × 673 pixels around both boxes; with CNN experts the mask collapses to about 0.1 %
    of the image (the automatic start has 21 %).

    Returns ``(noisy image, fg box, bg box, true foreground)``, boxes as Y0 X0 Y1 X1.
    """
    import numpy as np
    import tifffile

    folder = shared_data / "nuclei2d_dsb" / "12aeefb1b522"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    image = tifffile.imread(folder / "image.tif").astype(np.float32)
    truth = tifffile.imread(folder / "foreground.tif") > 0
    noisy = image + np.random.default_rng(0).normal(0, 30, image.shape).astype(np.float32)
    y0, x0, y1, x1 = 16, 35, 204, 708
    fg_box = [35, 628, 45, 638]  # centre of the largest nucleus, in the crop
    bg_box = [133, 25, 163, 55]  # the brighter background patch, in the crop
    return noisy[y0:y1, x0:x1], fg_box, bg_box, truth[y0:y1, x0:x1]


@pytest.fixture
def write_blob(tmp_path):
    """Writes a noisy 8-bit TIFF of one bright disc centred in ``shape``; returns
    ``(path, mask)`` (the CLI tests' input)."""
    import numpy as np
    import tifffile

    def write(shape=(40, 44), radius=10):
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        mask = (yy - shape[0] // 2) ** 2 + (xx - shape[1] // 2) ** 2 < radius**2
        img = (40 + 120 * mask + rng.normal(0, 30, mask.shape)).clip(0, 255).astype(np.uint8)
        path = tmp_path / "img.tif"
        tifffile.imwrite(path, img)
        return path, mask

    return write


@pytest.fixture
def blob_tif(write_blob):
    """A 40 x 44 noisy TIFF of one bright disc (its path)."""
    return write_blob()[0]
