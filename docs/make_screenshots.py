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

    viewer = napari.Viewer(title="napari-duet: Self2Seg")
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-duet", "nuclei_medium_noise")
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Self2Seg")
    widget.image_picker.value = viewer.layers[0]
    seeds = widget.new_seeds_layer()
    mask = viewer.layers["nuclei ground truth"].data
    ys, xs = np.nonzero(mask)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    widget.role.value = "foreground"
    seeds.add_rectangles(np.array([[cy - 4, cx - 4], [cy + 4, cx + 4]]))
    widget.role.value = "background"
    seeds.add_rectangles(np.array([[4, 4], [24, 40]]))
    widget.device.value = "cpu"
    widget.run()
    _wait_for(widget, QApplication.instance())
    viewer.layers["nuclei ground truth"].visible = False
    viewer.reset_view()
    path = out / "self2seg_widget.png"
    viewer.screenshot(str(path), canvas_only=False)
    viewer.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(HERE / "images"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(self2seg(out))


if __name__ == "__main__":
    main()
