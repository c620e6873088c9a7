"""A small live plot of the training loss and the validation score, drawn with QPainter."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor(255, 153, 51)
SCORE_COLOR = QColor(80, 200, 255)


class TrainingPlot(QWidget):
    """Loss per step (left axis, its own range) and validation score per epoch (right
    axis, 0 to 1), against the step number."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.losses: list[tuple[int, float]] = []
        self.scores: list[tuple[int, float]] = []
        self.setMinimumHeight(130)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip(
            "Orange: training loss per step (left axis). "
            "Blue: validation score (mean foreground Dice) per epoch (right axis)."
        )

    def clear(self) -> None:
        self.losses.clear()
        self.scores.clear()
        self.update()

    def add_loss(self, step: int, loss: float) -> None:
        if math.isfinite(loss):
            self.losses.append((step, loss))
            self.update()

    def add_score(self, step: int, score: float | None) -> None:
        if score is not None and math.isfinite(score):
            self.scores.append((step, score))
            self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().windowText().color()
        grid = QColor(text)
        grid.setAlpha(60)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        metrics = painter.fontMetrics()
        margin_x = metrics.horizontalAdvance("0.000") + 6
        top, bottom = metrics.height() + 4, metrics.height() + 4
        area = QRectF(margin_x, top, self.width() - 2 * margin_x, self.height() - top - bottom)
        if area.width() < 20 or area.height() < 20:
            return

        painter.setPen(QPen(grid, 1))
        painter.drawRect(area)
        painter.setPen(LOSS_COLOR)
        painter.drawText(QPointF(area.left(), top - 4), "loss")
        painter.setPen(SCORE_COLOR)
        label = "validation score"
        painter.drawText(QPointF(area.right() - metrics.horizontalAdvance(label), top - 4), label)
        if not self.losses:
            painter.setPen(text)
            painter.drawText(area, Qt.AlignmentFlag.AlignCenter, "no training yet")
            return

        last_step = max(self.losses[-1][0], self.scores[-1][0] if self.scores else 1, 1)
        losses = self._smoothed(self.losses)
        low, high = 0.0, max(max(v for _, v in losses), 1e-6)

        def point(step: float, value: float, lo: float, hi: float) -> QPointF:
            x = area.left() + area.width() * step / last_step
            y = area.bottom() - area.height() * (value - lo) / (hi - lo)
            return QPointF(x, y)

        painter.setPen(text)
        painter.drawText(QPointF(2, area.top() + metrics.ascent()), f"{high:.3g}")
        painter.drawText(QPointF(2, area.bottom()), "0")
        painter.drawText(QPointF(area.right() + 3, area.top() + metrics.ascent()), "1")
        painter.drawText(QPointF(area.right() + 3, area.bottom()), "0")
        step_label = f"step {last_step}"
        painter.drawText(
            QPointF(
                area.right() - metrics.horizontalAdvance(step_label),
                area.bottom() + metrics.ascent() + 2,
            ),
            step_label,
        )

        painter.setPen(QPen(LOSS_COLOR, 1.5))
        painter.drawPath(self._path(losses, point, low, high))
        if self.scores:
            painter.setPen(QPen(SCORE_COLOR, 2))
            painter.drawPath(self._path(self.scores, point, 0.0, 1.0))
            painter.setBrush(SCORE_COLOR)
            for step, value in self.scores:
                painter.drawEllipse(point(step, value, 0.0, 1.0), 2.5, 2.5)

    @staticmethod
    def _smoothed(series: list[tuple[int, float]], width: int = 9) -> list[tuple[int, float]]:
        """A running mean over ``width`` steps: the per-step loss is noisy."""
        out, total = [], 0.0
        for i, (step, value) in enumerate(series):
            total += value
            if i >= width:
                total -= series[i - width][1]
            out.append((step, total / min(i + 1, width)))
        return out

    @staticmethod
    def _path(series, point, low: float, high: float) -> QPainterPath:
        path = QPainterPath(point(*series[0], low, high))
        for step, value in series[1:]:
            path.lineTo(point(step, value, low, high))
        return path
