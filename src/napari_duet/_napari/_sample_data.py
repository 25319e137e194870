"""napari sample data: noisy nuclei (three levels), a noisy volume, a splitting demo."""

from __future__ import annotations

from ..core.synthetic import NSN2N_NOISE, NSN2N_SCALE, synthetic_nuclei, synthetic_volume
from ..denoisplit._demo import split_demo_data, split_demo_model_path

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
