"""The native curve plot of the widgets: tick choice and that curves are really painted."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-3.5e5, -2.7e5), (0.0213, 0.0561), (7.0, 7.0)])
def test_nice_ticks_are_round_and_inside_the_range(lo, hi):
    from napari_duet._napari._curves import nice_ticks

    ticks = nice_ticks(lo, hi)
    assert ticks and all(lo - 1e-9 <= t <= hi + 1e-9 for t in ticks)
    if hi > lo:
        steps = np.diff(ticks)
        assert 2 <= len(ticks) <= 8 and np.allclose(steps, steps[0])
        mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]))
        assert any(np.isclose(mantissa, m) for m in (1, 2, 2.5, 5))


def test_tick_labels_tell_close_ticks_apart():
    from napari_duet._napari._curves import nice_ticks, tick_labels

    labels = tick_labels(nice_ticks(-33695.9, -33650.2))  # energies differing in digit 4
    assert len(set(labels)) == len(labels) >= 2
    assert tick_labels([0.0, 0.5, 1.0]) == ["0", "0.5", "1"]


def test_curves_are_painted_in_their_colours(qtbot):
    from qtpy.QtGui import QColor

    from napari_duet._napari._curves import COLORS, CurvePlot

    plot = CurvePlot("Energy per alternation", "energy")
    qtbot.addWidget(plot)
    plot.resize(360, 170)
    plot.plot({"a": [3.0, 1.0, 0.5], "b": [2.0, 2.5, float("nan")]})
    assert plot.curves["a"] == [3.0, 1.0, 0.5]
    img = plot.grab().toImage()
    rgb = np.array([[img.pixelColor(x, y).getRgb()[:3] for x in range(img.width())]
                    for y in range(img.height())], float)
    for c in COLORS[:2]:  # tolerance: the test screen may have 16-bit colour
        target = np.array(QColor(c).getRgb()[:3], float)
        assert (np.abs(rgb - target).max(axis=-1) < 10).sum() > 20, c
