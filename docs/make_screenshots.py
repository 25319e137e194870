"""Regenerate the screenshots used in the docs (run under a display, e.g. ``xvfb-run -a``).

    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python docs/make_screenshots.py

Each screenshot comes from a real napari viewer at a laptop's 1366 x 768, opened
as the Quick start opens it (``scripts/launch_napari.py``: sample, widget docked,
image selected, view reset) and driven through the plugin's widgets, so the
pictures show what users get.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZE = (1366, 768)  # a laptop screen: every widget must fit with its status visible


def _quickstart(title: str, sample: str, widget: str | None = None):
    """A viewer opened as ``scripts/launch_napari.py`` opens the Quick start."""
    import importlib.util

    import napari

    spec = importlib.util.spec_from_file_location(
        "launch_napari", HERE.parent / "scripts" / "launch_napari.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    viewer = napari.Viewer(title=title)
    viewer.window._qt_window.resize(*SIZE)
    dock = launch.open_quickstart(viewer, sample, widget)
    return viewer, dock, launch


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
    from qtpy.QtWidgets import QApplication
    from scipy.ndimage import distance_transform_edt

    viewer, widget, launch = _quickstart("napari-duet: Self2Seg", "nuclei_medium_noise")
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
    viewer.layers.selection.active = viewer.layers["noisy nuclei (σ=30)"]
    viewer.reset_view()
    return _save(viewer, out / "self2seg_widget.png")


def _save(viewer, path: Path) -> Path:
    """Screenshot of the whole window (canvas and docks), then close the viewer."""
    viewer.screenshot(str(path), canvas_only=False)
    viewer.close()
    return path


def nsn2n(out: Path) -> Path:
    """NS-N2N widget after a default run on the ``nsn2n_volume`` sample (noise checked first)."""
    import time

    from qtpy.QtWidgets import QApplication

    viewer, widget, _ = _quickstart("napari-duet: NS-N2N", "nsn2n_volume")
    layer = viewer.layers["noisy volume"]
    widget.device.value = "cpu"
    widget.check_noise()
    t0 = time.perf_counter()
    widget.train()
    _wait_for(widget, QApplication.instance())
    print(f"NS-N2N sample: Train & denoise took {time.perf_counter() - t0:.0f} s")
    for lyr in viewer.layers:  # show the denoised result alone
        if "uncertainty" in lyr.name or lyr is layer:
            lyr.visible = False
    viewer.dims.set_current_step(0, 8)
    viewer.reset_view()
    return _save(viewer, out / "nsn2n_widget.png")


def split(out: Path) -> Path:
    """Split widget after splitting the ``split_demo`` sample with its bundled model."""
    from qtpy.QtWidgets import QApplication

    # split_demo docks the widget with its model
    viewer, widget, _ = _quickstart("napari-duet: denoiSplit", "split_demo")
    mix = viewer.layers["split demo (filaments + puncta)"]
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
