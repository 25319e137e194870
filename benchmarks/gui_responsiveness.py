"""How responsive the viewer stays while Self2Seg trains in its worker thread.

Opens a real napari viewer (needs a display; use ``xvfb-run -a``), runs the
Self2Seg widget on a synthetic image with CNN experts, and ticks a 10 ms
QTimer on the GUI thread.  Prints the worst gap between ticks and the time
spent in the per-alternation layer updates, and writes JSON.

    xvfb-run -a python benchmarks/gui_responsiveness.py [--size 256] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--experts", default="cnn")
    parser.add_argument("--out", default="benchmarks/results/gui_responsiveness.json")
    args = parser.parse_args()

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_duet.core.synthetic import synthetic_nuclei

    viewer = napari.Viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", "Self2Seg")
    data = synthetic_nuclei((args.size, args.size), noise_sigma=30, seed=3)
    layer = viewer.add_image(data.noisy, name="noisy")
    widget.image_picker.value = layer
    widget.experts.value = args.experts
    widget.device.value = "cpu"

    handler_s: list[float] = []
    original = widget._on_yield

    def timed(item):
        t0 = time.perf_counter()
        original(item)
        handler_s.append(time.perf_counter() - t0)

    widget._on_yield = timed
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    result: dict = {}

    def check():
        if widget.worker is None and ticks:
            gaps = np.diff(ticks)
            result.update(
                size=args.size, experts=args.experts, run_s=ticks[-1] - ticks[0],
                worst_gap_ms=float(gaps.max() * 1000), p99_gap_ms=float(
                    np.percentile(gaps, 99) * 1000),
                gaps_over_100ms=int((gaps > 0.1).sum()),
                yield_handler_ms=[round(h * 1000, 1) for h in handler_s],
            )
            viewer.close()
            QApplication.quit()

    widget.run()  # set-up on the GUI thread (layers, torch warm-up), then the worker runs
    timer.start()
    poll = QTimer()
    poll.setInterval(100)
    poll.timeout.connect(check)
    poll.start()
    napari.run()
    print(f"{'size':>6} {'experts':>8} {'run s':>7} {'worst gap ms':>13} {'p99 ms':>7} "
          f"{'>100ms':>7}  handler ms")
    print(f"{result['size']:>6} {result['experts']:>8} {result['run_s']:>7.1f} "
          f"{result['worst_gap_ms']:>13.0f} {result['p99_gap_ms']:>7.0f} "
          f"{result['gaps_over_100ms']:>7}  {result['yield_handler_ms']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
