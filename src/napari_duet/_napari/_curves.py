"""A small native Qt curve plot for live energies and losses.

Painted with QPainter: a redraw costs well under a millisecond, where a
matplotlib canvas took 60-80 ms of the GUI thread per update under Xvfb
while a worker competed for the GIL.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QFontMetrics, QPainter, QPainterPath, QPalette, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

COLORS = ("#4c9be8", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#edc948")
_MARGINS = (10, 22, 30)  # right, top, bottom (pixels); left fits the tick labels


def nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 12))
        t += step
    return ticks


def tick_labels(ticks: list[float]) -> list[str]:
    """Shortest ``g`` formatting (at least 3 digits) that tells all ticks apart."""
    for digits in range(3, 13):
        labels = [f"{t:.{digits}g}" for t in ticks]
        if len(set(labels)) == len(labels):
            return labels
    return labels


class CurvePlot(QWidget):
    """One or more curves against their index (energy per alternation, losses).

    ``plot(curves)`` replaces the curves and schedules a repaint; ``curves``
    keeps the last values (tests and reports read them).
    """

    def __init__(self, title: str, ylabel: str, parent=None, xlabel: str = "alternation"):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(170)
        self.setMinimumWidth(200)
        self._title, self._ylabel, self._xlabel = title, ylabel, xlabel
        self.curves: dict[str, list[float]] = {}

    def plot(self, curves: dict[str, list[float]], xlabel: str | None = None) -> None:
        """Replace the curves; ``xlabel`` None keeps the current axis label."""
        self.curves = {k: [float(v) for v in vals] for k, vals in curves.items()}
        self._xlabel = xlabel or self._xlabel
        self.update()

    # ------------------------------------------------------------------ drawing
    def _ranges(self):
        vals = [v for vals in self.curves.values() for v in vals if math.isfinite(v)]
        n = max((len(v) for v in self.curves.values()), default=0)
        if not vals:
            return None
        lo, hi = min(vals), max(vals)
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            pad = 0.5 * max(abs(hi), 1.0)
            lo, hi = lo - pad, hi + pad
        else:
            pad = 0.05 * (hi - lo)
            lo, hi = lo - pad, hi + pad
        return (1.0, max(float(n), 2.0)), (lo, hi)

    def paintEvent(self, event):  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fg = self.palette().color(QPalette.ColorRole.WindowText)
        grid = QColor(fg)
        grid.setAlpha(60)
        small = QFont(self.font())
        small.setPointSizeF(max(6.0, small.pointSizeF() * 0.8))
        p.setFont(small)
        right, top, bottom = _MARGINS
        ranges = self._ranges()
        yticks = nice_ticks(*ranges[1]) if ranges is not None else []
        labels = tick_labels(yticks)
        metrics = QFontMetrics(small)
        left = 22 + max((metrics.horizontalAdvance(t) for t in labels), default=20)
        area = QRectF(left, top, max(10, self.width() - left - right),
                      max(10, self.height() - top - bottom))
        p.setPen(fg)
        p.drawText(QRectF(0, 0, self.width(), top), Qt.AlignmentFlag.AlignCenter, self._title)
        p.drawText(QRectF(left, self.height() - 14, area.width(), 14),
                   Qt.AlignmentFlag.AlignCenter, self._xlabel)
        p.save()
        p.translate(9, area.center().y())
        p.rotate(-90)
        p.drawText(QRectF(-area.height() / 2, -8, area.height(), 14),
                   Qt.AlignmentFlag.AlignCenter, self._ylabel)
        p.restore()
        p.setPen(QPen(grid, 1))
        p.drawRect(area)
        if ranges is None:
            p.end()
            return
        (x0, x1), (y0, y1) = ranges

        def to_px(x, y):
            return QPointF(area.left() + (x - x0) / (x1 - x0) * area.width(),
                           area.bottom() - (y - y0) / (y1 - y0) * area.height())

        for t, label in zip(yticks, labels, strict=True):
            pt = to_px(x0, t)
            p.setPen(QPen(grid, 1))
            p.drawLine(QPointF(area.left(), pt.y()), QPointF(area.right(), pt.y()))
            p.setPen(fg)
            p.drawText(QRectF(0, pt.y() - 7, left - 4, 14),
                       Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, label)
        for t in nice_ticks(x0, x1):
            if abs(t - round(t)) > 1e-9:
                continue  # integer steps only
            pt = to_px(t, y0)
            p.setPen(fg)
            p.drawText(QRectF(pt.x() - 20, area.bottom() + 1, 40, 12),
                       Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, f"{int(t)}")
        for i, (name, vals) in enumerate(self.curves.items()):
            color = QColor(COLORS[i % len(COLORS)])
            pts = [to_px(k + 1, v) for k, v in enumerate(vals) if math.isfinite(v)]
            if not pts:
                continue
            path = QPainterPath(pts[0])
            for q in pts[1:]:
                path.lineTo(q)
            p.setPen(QPen(color, 1.5))
            p.drawPath(path)
            if len(pts) <= 30:  # markers only on short curves
                p.setBrush(color)
                for q in pts:
                    p.drawEllipse(q, 2.5, 2.5)
                p.setBrush(Qt.BrushStyle.NoBrush)
            if len(self.curves) > 1:
                y = area.top() + 4 + 13 * i
                p.drawLine(QPointF(area.right() - 70, y + 6), QPointF(area.right() - 56, y + 6))
                p.setPen(fg)
                p.drawText(QRectF(area.right() - 52, y, 50, 12),
                           Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, name)
        p.end()
