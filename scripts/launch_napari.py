"""Open napari with the napari-duet Self2Seg widget and a sample image.

``--screenshot PATH`` saves a picture of the window after opening and exits
(useful on headless machines); ``--sample`` picks the sample key.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sample", default="nuclei_medium_noise",
                        help="sample key: nuclei_low_noise, nuclei_medium_noise, nuclei_high_noise")
    parser.add_argument("--widget", default="Self2Seg", help="dock widget to open")
    parser.add_argument("--screenshot", default=None, help="save a PNG of the window and exit")
    args = parser.parse_args()

    import napari

    viewer = napari.Viewer(title="napari-duet")
    viewer.open_sample("napari-duet", args.sample)
    viewer.window.add_plugin_dock_widget("napari-duet", args.widget)
    if args.screenshot:
        from qtpy.QtCore import QTimer

        def _shoot():
            viewer.screenshot(args.screenshot, canvas_only=False)
            print(f"saved {args.screenshot}")
            viewer.close()

        QTimer.singleShot(1500, _shoot)
    napari.run()


if __name__ == "__main__":
    main()
