"""The widget base (EngineDock): progress from the common fields, hooks that fail, layer data."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def dock(make_napari_viewer):
    from napari_duet._napari._dock import EngineDock

    class Probe(EngineDock):
        engine_name = "Probe"

        def __init__(self, viewer):
            super().__init__(viewer)
            self.calls = []

        def update_controls(self, running):
            self.calls.append(("controls", running))

        def show_progress(self, job, item):
            self.calls.append(("bar", self.progress.minimum(), self.progress.maximum(),
                               self.progress.value()))

        def show_result(self, job, result):
            self.calls.append(("result", result))
            if result == "bad":
                raise ValueError("cannot show this")

        def after_cancel(self, job):
            self.calls.append(("cancelled", job.kind))

    return Probe(make_napari_viewer())


def _wait(qtbot, dock):
    qtbot.waitUntil(lambda: dock.worker is None, timeout=20_000)


def _gen(fractions, result="ok", endless=False):
    from napari_duet.core.progress import Progress

    for done, total in fractions:
        yield Progress(stage="s", done=done, total=total)
    while endless:
        time.sleep(0.01)
        yield Progress(stage="s")
    return result


def test_bar_follows_the_common_progress_fields(dock, qtbot):
    from napari_duet._napari._dock import Job

    dock.start(Job(kind="test"), _gen, [(0, 0), (1, 4), (4, 4)], threads=1)
    assert dock.start(Job(kind="other"), _gen, []) is None  # one run at a time
    _wait(qtbot, dock)
    bars = [c[1:] for c in dock.calls if c[0] == "bar"]
    assert bars[0][:2] == (0, 0)  # unknown total: a busy bar
    assert bars[1] == (0, 1000, 250) and bars[2] == (0, 1000, 1000)
    assert ("result", "ok") in dock.calls
    assert dock.calls[0] == ("controls", True) and dock.calls[-1] == ("controls", False)


def test_a_result_that_cannot_be_shown_is_a_notification(dock, qtbot, errors):
    from napari_duet._napari._dock import Job

    dock.start(Job(kind="test"), _gen, [(1, 2)], "bad", threads=1)
    _wait(qtbot, dock)
    assert errors == ["Probe: ValueError: cannot show this"]
    assert "could not be shown" in dock.status.text()
    assert dock.calls[-1] == ("controls", False)


def test_cancel_calls_the_hook_and_resets_a_busy_bar(dock, qtbot):
    from napari_duet._napari._dock import Job

    worker = dock.start(Job(kind="long"), _gen, [], endless=True, threads=1)
    worker.yielded.connect(lambda _: dock.cancel())
    _wait(qtbot, dock)
    assert ("cancelled", "long") in dock.calls
    assert dock.progress.maximum() == 1000  # not left spinning
    assert ("result", "ok") not in dock.calls


def test_progress_fraction_reads_old_and_new_progress_types():
    from types import SimpleNamespace as NS

    from napari_duet._napari._dock import progress_fraction
    from napari_duet.core.progress import Progress

    assert progress_fraction(Progress(done=3, total=4)) == 0.75
    assert progress_fraction(Progress()) is None
    assert progress_fraction(NS(iteration=5, iterations=10, done=0, total=0)) == 0.5
    assert progress_fraction(NS(epoch=2, epochs=2, step=5, steps_per_epoch=10)) == 0.75
    assert progress_fraction(NS(done=1, total=2)) == 0.5
    assert progress_fraction(object()) is None


def test_layer_data_and_placement(make_napari_viewer):
    import dask.array as da

    from napari_duet._napari._dock import SourceInfo, is_large, layer_data

    viewer = make_napari_viewer()
    level0 = da.zeros((4, 64, 64), chunks=(1, 64, 64))
    layer = viewer.add_image([level0, level0[:, ::2, ::2]], multiscale=True, name="pyr",
                             scale=(2.0, 0.5, 0.25), translate=(1.0, 2.0, 3.0),
                             axis_labels=("z", "y", "x"), units=("um", "um", "um"))
    assert layer_data(layer) is level0  # level 0 itself, not loaded
    assert is_large(level0) and not is_large(np.zeros((4, 4)))
    assert is_large(np.zeros((4, 4)), limit=8)
    info = SourceInfo.of(layer)
    assert info.shape == (4, 64, 64)
    plane = info.placement(2)
    assert plane["scale"] == (0.5, 0.25) and plane["axis_labels"] == ("y", "x")
    samples = info.placement(4)
    assert samples["scale"] == (1.0, 2.0, 0.5, 0.25)
    assert samples["axis_labels"] == ("sample", "z", "y", "x")
    assert samples["translate"][0] == 0.0 and str(samples["units"][1]) == "micrometer"
    # Default labels ("-2", "-1") are left to napari.
    plain = SourceInfo.of(viewer.add_image(np.zeros((5, 5))))
    assert "axis_labels" not in plain.placement(3)
