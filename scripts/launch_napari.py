"""Open napari with a napari-duet widget and a sample image.

``--sample`` picks the sample key and ``--widget`` the dock widget (its
display name or a short name: self2seg, nsn2n, split); without ``--widget``
the sample's own workflow opens (Self2Seg for the nuclei, NS-N2N for
``nsn2n_volume``, Split with its bundled model for ``split_demo``).
``--screenshot PATH`` saves a picture of the window after opening and exits
(useful on headless machines).
"""

from __future__ import annotations

import argparse

SAMPLES = ("nuclei_low_noise", "nuclei_medium_noise", "nuclei_high_noise", "nsn2n_volume",
           "split_demo")
WIDGETS = {"self2seg": "Self2Seg", "nsn2n": "Slice denoising (NS-N2N)",
           "split": "Split (denoiSplit)"}
SAMPLE_WIDGET = {"nsn2n_volume": "nsn2n", "split_demo": "split"}


def widget_name(widget: str | None, sample: str) -> str:
    """The display name of the dock widget to open for ``--widget`` and ``--sample``."""
    if widget is None:
        widget = SAMPLE_WIDGET.get(sample, "self2seg")
    return WIDGETS.get(widget.lower(), widget)


def prepare_view(viewer) -> None:
    """What the Quick start shows first: the sample's image selected (not a hidden
    ground-truth layer, whose layer controls would offer paint tools) and the whole
    image in view once the dock widget has taken its room."""
    from napari.layers import Image

    images = [ly for ly in viewer.layers if isinstance(ly, Image) and ly.visible]
    if images:
        viewer.layers.selection.active = images[0]
    viewer.reset_view()


def open_quickstart(viewer, sample: str, widget: str | None = None):
    """Open ``sample`` with its widget docked, the image selected and the view reset
    (also after the dock's first layout, which narrows the canvas).  Returns the widget."""
    from qtpy.QtCore import QTimer

    viewer.open_sample("napari-duet", sample)
    # split_demo docks the Split widget itself (with its model); napari then
    # returns that dock instead of adding a second one.
    _, dock = viewer.window.add_plugin_dock_widget("napari-duet", widget_name(widget, sample))
    if hasattr(dock, "image_picker"):  # the image the sample is about
        images = [ly for ly in viewer.layers if ly.visible and ly in dock.image_picker.choices]
        if images:
            dock.image_picker.value = images[0]
    prepare_view(viewer)
    QTimer.singleShot(0, lambda: prepare_view(viewer))  # after the dock's first layout
    return dock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", default="nuclei_medium_noise",
                        help="sample key: " + ", ".join(SAMPLES))
    parser.add_argument("--widget", default=None,
                        help="dock widget to open: " + ", ".join(WIDGETS) +
                        " or a display name (default: the sample's workflow)")
    parser.add_argument("--screenshot", default=None, help="save a PNG of the window and exit")
    args = parser.parse_args()

    import napari

    viewer = napari.Viewer(title="napari-duet")
    open_quickstart(viewer, args.sample, args.widget)
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
