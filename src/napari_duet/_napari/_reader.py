"""npe2 reader for napari-duet model files (``*.duet``) and the bioimage.io zips it exports.

Dropping a model file on the viewer docks the widget that uses it (denoiSplit
or NS-N2N) and loads the model there; no layer is added.  A damaged or foreign
file gives a notification from that widget and changes nothing.  A bioimage.io
package written by ``duet export-bmz`` carries its ``.duet`` file, which is
extracted and opened the same way; other zips are left to other readers.
"""

from __future__ import annotations

from pathlib import Path

WIDGETS = {"denoisplit": "Split (denoiSplit)", "nsn2n": "Slice denoising (NS-N2N)"}


def get_reader(path):
    """Return a reader for a single ``.duet`` file or napari-duet bioimage.io zip, else None."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    suffix = Path(str(path)).suffix.lower()
    if suffix == ".duet":
        return open_model_file
    if suffix == ".zip":
        from ..core.bmz import duet_package_entry

        if duet_package_entry(path) is not None:
            return open_model_file
    return None


def model_kind(path) -> str | None:
    """The engine a model file belongs to, or None if its header is unreadable."""
    from ..core.errors import ModelFileError
    from ..core.modelfile import read_model_header

    try:
        return read_model_header(path)["kind"]
    except ModelFileError:
        return None


def open_model_file(path):
    """Dock the matching widget and load the model into it.

    A package's model file is extracted (bounded) into a temporary folder that is
    removed once the model is loaded; a damaged package gives one notification line.
    """
    if isinstance(path, list | tuple):
        path = path[0]
    if Path(str(path)).suffix.lower() == ".zip":
        from napari.utils.notifications import show_error

        from ..core.bmz import package_model
        from ..core.errors import DuetError

        try:
            with package_model(path) as extracted:
                return _open_model(extracted)
        except DuetError as exc:
            show_error(f"cannot open {Path(str(path)).name}: {exc}")
            return [(None,)]
    return _open_model(path)


def _open_model(path):
    import napari

    viewer = napari.current_viewer()
    kind = model_kind(path)
    widget_name = WIDGETS.get(kind or "", WIDGETS["denoisplit"])
    _, widget = viewer.window.add_plugin_dock_widget("napari-duet", widget_name)
    widget.load_model(path)
    return [(None,)]
