"""napari sample data: noisy nuclei (three levels), a noisy volume, a splitting demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


# ----------------------------------------------------------------- NS-N2N volume
#: Voxel size (z, y, x) of the NS-N2N sample: slices twice as far apart as pixels.
NSN2N_SCALE = (2.0, 1.0, 1.0)
# Small enough that the automatic CPU training budget of NS-N2N stays under a minute
# (it grows with the square root of the volume: 52 s for 16 x 96 x 96).
NSN2N_SHAPE = (16, 96, 96)
NSN2N_NOISE = 0.12  # std of the noise, on a [0, 1] signal


def synthetic_volume(shape: tuple[int, int, int] = NSN2N_SHAPE, *, noise: float = NSN2N_NOISE,
                     seed: int = 11):
    """A noisy 3D stack of cells and its clean version, both float32 in about [0, 1].

    Ellipsoidal nuclei (flattened along z, as in an anisotropic stack) with a
    textured interior and a brighter rim, over a dim smooth background; the
    noise is Gaussian, correlated within each slice (about 1 px) and
    independent between slices, which is the noise NS-N2N removes and
    pixel-wise blind-spot methods cannot.  Returns ``(noisy, clean)``.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    clean = np.zeros(shape, np.float32)
    anis = NSN2N_SCALE[0] / NSN2N_SCALE[1]
    for _ in range(max(4, ny * nx // 300)):
        cz, cy, cx = rng.uniform(0, nz), rng.uniform(0, ny), rng.uniform(0, nx)
        ry, rx = rng.uniform(7, 14, 2)
        rz = rng.uniform(6, 12) / anis
        z0, z1 = max(0, int(cz - rz) - 1), min(nz, int(cz + rz) + 2)
        y0, y1 = max(0, int(cy - ry) - 1), min(ny, int(cy + ry) + 2)
        x0, x1 = max(0, int(cx - rx) - 1), min(nx, int(cx + rx) + 2)
        if z0 >= z1 or y0 >= y1 or x0 >= x1:
            continue
        zz, yy, xx = np.ogrid[z0:z1, y0:y1, x0:x1]
        r = np.sqrt(((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        inside = r <= 1
        value = rng.uniform(0.45, 0.8) * (1 + 0.35 * (r > 0.8))  # brighter nuclear rim
        box = clean[z0:z1, y0:y1, x0:x1]
        box[inside] = np.maximum(box[inside], np.broadcast_to(value, r.shape)[inside])
    texture = ndi.gaussian_filter(rng.standard_normal(shape), (0.7, 1.5, 1.5))
    texture /= texture.std()
    clean *= 1 + 0.15 * texture
    background = ndi.gaussian_filter(rng.random(shape), (4, 16, 16))
    background = 0.08 + 0.1 * (background - background.min()) / np.ptp(background)
    clean = ndi.gaussian_filter(np.maximum(clean, background), (0.5, 0.8, 0.8))
    clean = np.clip(clean / clean.max(), 0, 1).astype(np.float32)
    n = ndi.gaussian_filter(rng.standard_normal(shape), (0, 1.0, 1.0))
    n /= n.std()
    noisy = (clean + noise * n).astype(np.float32)
    return noisy, clean


def nsn2n_volume():
    """A noisy (16, 96, 96) stack for slice denoising (NS-N2N), z scale 2."""
    noisy, clean = synthetic_volume()
    return [
        (noisy, {"name": "noisy volume", "colormap": "gray", "scale": NSN2N_SCALE,
                 "metadata": {"noise_sigma": NSN2N_NOISE, "noise": "in-plane correlated",
                              "voxel_size_zyx": NSN2N_SCALE, "clean": clean}},
         "image"),
        (clean, {"name": "clean volume (ground truth)", "colormap": "gray",
                 "scale": NSN2N_SCALE, "visible": False}, "image"),
    ]


# ---------------------------------------------------------------- denoiSplit demo
SPLIT_DEMO_SHAPE = (256, 256)
SPLIT_DEMO_SEED = 7  # the bundled model was trained on another field (seed 101)


def split_demo_model_path() -> Path:
    """The small pre-trained denoiSplit model shipped with the package."""
    return Path(__file__).with_name("_samples") / "split_demo.safetensors"


def split_demo_data():
    """The demo's superimposed image and its two clean structures (filaments, puncta)."""
    from .denoisplit._synthetic import synthetic_split

    d = synthetic_split(SPLIT_DEMO_SHAPE, seed=SPLIT_DEMO_SEED)
    return d.noisy_a + d.noisy_b, d.clean_a, d.clean_b


def split_demo():
    """Filaments and puncta imaged together; docks the Split widget with a bundled model."""
    image, clean_a, clean_b = split_demo_data()
    _dock_split_widget()
    return [
        (image, {"name": "split demo (filaments + puncta)", "colormap": "gray"}, "image"),
        (clean_a, {"name": "true filaments", "colormap": "green", "blending": "additive",
                   "visible": False}, "image"),
        (clean_b, {"name": "true puncta", "colormap": "magenta", "blending": "additive",
                   "visible": False}, "image"),
    ]


def _dock_split_widget():
    """Dock the Split widget in the current viewer and load the bundled model there."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # no napari / no Qt: the data alone still loads
        return None
    if viewer is None:
        return None
    from ._reader import WIDGETS

    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", WIDGETS["denoisplit"])
    if widget.load_model(split_demo_model_path()):
        widget.status.setText("Demo model loaded: press Split to split the demo image.")
    return widget
