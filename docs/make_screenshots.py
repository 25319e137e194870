"""Regenerate the screenshots used in the docs (run under a display, e.g. ``xvfb-run -a``).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py

Each screenshot comes from a real napari viewer driven through the plugin's
widgets, so the pictures show what users get.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _wait_for(widget, app, timeout_s: float = 900.0) -> None:
    import time

    t0 = time.perf_counter()
    while widget.worker is not None:
        app.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError("run did not finish")
    app.processEvents()


def self2seg(out: Path) -> Path:
    """Self2Seg widget after a run seeded with two boxes on the σ = 30 sample."""
    import napari
    from qtpy.QtWidgets import QApplication
    from scipy.ndimage import distance_transform_edt

    viewer = napari.Viewer(title="napari-duet: Self2Seg")
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-duet", "nuclei_medium_noise")
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Self2Seg")
    widget.image_picker.value = viewer.layers[0]
    seeds = widget.new_seeds_layer()
    # One box deep inside a nucleus, one far from every nucleus (the ground truth says where).
    mask = np.asarray(viewer.layers["nuclei ground truth"].data) > 0
    cy, cx = np.unravel_index(np.argmax(distance_transform_edt(mask)), mask.shape)
    by, bx = np.unravel_index(np.argmax(distance_transform_edt(~mask)), mask.shape)
    by, bx = (int(np.clip(v, 8, n - 9)) for v, n in zip((by, bx), mask.shape, strict=True))
    widget.role.value = "foreground"
    seeds.add_rectangles(np.array([[cy - 4, cx - 4], [cy + 4, cx + 4]]))
    widget.role.value = "background"
    seeds.add_rectangles(np.array([[by - 8, bx - 8], [by + 8, bx + 8]]))
    widget.device.value = "cpu"
    widget.run()
    _wait_for(widget, QApplication.instance())
    viewer.layers["nuclei ground truth"].visible = False
    viewer.reset_view()
    return _save(viewer, out / "self2seg_widget.png")


def _save(viewer, path: Path) -> Path:
    """Screenshot of the whole window (canvas and docks), then close the viewer."""
    viewer.screenshot(str(path), canvas_only=False)
    viewer.close()
    return path


def nsn2n(out: Path) -> Path:
    """NS-N2N widget after a default run on the ``nsn2n_volume`` sample (noise checked first)."""
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-duet: NS-N2N")
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-duet", "nsn2n_volume")
    layer = viewer.layers["noisy volume"]
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Slice denoising (NS-N2N)")
    widget.image_picker.value = layer
    widget.device.value = "cpu"
    widget.check_noise()
    widget.train()
    _wait_for(widget, QApplication.instance())
    for lyr in viewer.layers:  # show the denoised result alone
        if "uncertainty" in lyr.name or lyr is layer:
            lyr.visible = False
    viewer.dims.set_current_step(0, 8)
    viewer.reset_view()
    return _save(viewer, out / "nsn2n_widget.png")


def split(out: Path) -> Path:
    """Split widget after splitting the ``split_demo`` sample with its bundled model."""
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-duet: denoiSplit")
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-duet", "split_demo")  # docks the widget with the model
    widget = viewer.window.dock_widgets["Split (denoiSplit) (napari-duet)"]
    mix = viewer.layers["split demo (filaments + puncta)"]
    widget.image_picker.value = mix
    widget.split()
    _wait_for(widget, QApplication.instance())
    mix.visible = False
    return _save(viewer, out / "split_widget.png")


SHOTS = {"self2seg": self2seg, "nsn2n": nsn2n, "split": split}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(HERE / "images"))
    parser.add_argument("which", nargs="*", help=f"any of {', '.join(SHOTS)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.which) - set(SHOTS)
    if unknown:
        parser.error(f"unknown screenshot(s): {', '.join(sorted(unknown))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.which or SHOTS:
        print(SHOTS[name](out))


if __name__ == "__main__":
    main()
