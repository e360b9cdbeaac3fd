"""Line charts of a run's metrics, drawn with textual-plot from bounded series.

The chart decides its own axis limits and ticks on every redraw instead of leaving
them to textual-plot's autoscaling: the plot's keyboard pan and zoom switch that
autoscaling off for good (even with `allow_pan_and_zoom=False`), which left a chart
that had the focus frozen at its first point while the others went on. Charts here
take no focus and no keys; the full-screen chart view moves a cursor over them.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from textual_hires_canvas import Canvas
from textual_plot import HiResMode, LegendLocation, PlotWidget
from textual_plot.axis_formatter import AxisFormatter

from cifartui.ui.series import BoundedSeries

# Distinct colours that survive a 256-colour terminal.
PALETTE = ("cyan", "magenta", "green", "yellow", "bright_blue", "red", "bright_white", "orange3")
# What the x axis counts: training steps, epochs (fractional within one), or time spent training.
X_AXES = ("step", "epoch", "time")
# Exponential moving average weights the smoothing key steps through (TensorBoard's slider).
SMOOTHING_STEPS = (0.0, 0.6, 0.8, 0.9, 0.95, 0.99)
TARGET_STYLE = "yellow"
EPOCH_MARK_STYLE = "grey42"
# A change of settings mid-run: a rule across the plot, a triangle at its top.
CHANGE_MARK_STYLE = "dark_orange"
CHANGE_MARK = "│"
CHANGE_MARK_TOP = "▼"
CURSOR_STYLE = "bold bright_white"

XTransform = Callable[[np.ndarray], np.ndarray]


# --- ticks and their labels ---------------------------------------------------------------------

def nice_spacing(span: float, max_ticks: int, *, integer: bool = False) -> float:
    """A tick spacing of 1, 2 or 5 times a power of ten giving at most `max_ticks` ticks."""
    max_ticks = max(max_ticks, 1)
    if not span > 0 or not math.isfinite(span):
        return 1.0
    raw = span / max_ticks
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0, 10.0):
        spacing = factor * power
        if spacing >= raw:
            break
    if integer:
        spacing = max(1.0, round(spacing))
    return spacing


DURATION_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def duration_spacing(span: float, max_ticks: int) -> float:
    raw = span / max(max_ticks, 1)
    for spacing in DURATION_STEPS:
        if spacing >= raw:
            return float(spacing)
    return nice_spacing(span / 86400, max_ticks) * 86400


def ticks_between(low: float, high: float, spacing: float) -> list[float]:
    first = math.ceil(low / spacing - 1e-9)
    last = math.floor(high / spacing + 1e-9)
    return [round(i * spacing, 12) for i in range(first, last + 1)]


def format_number(value: float, spacing: float) -> str:
    """A tick label with as many decimals as the spacing needs and no more (no 9.9999995)."""
    if value == 0:
        return "0"
    if spacing >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if spacing >= 1000:
        return f"{value / 1000:g}k"
    if spacing >= 1:
        return f"{value:,.0f}"
    decimals = min(max(0, -math.floor(math.log10(spacing) + 1e-9)), 8)
    return f"{value:.{decimals}f}"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}:{minutes:02d}:{secs:02d}" if secs else f"{sign}{hours}:{minutes:02d}h"
    return f"{sign}{minutes}:{secs:02d}"


def format_value(value: float) -> str:
    """A data value for a readout: four significant digits."""
    if value != value:
        return "-"
    if value and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.4g}"


class FixedLabels(AxisFormatter):
    """Labels for ticks the chart chose; textual-plot asks, the chart already knows."""

    def __init__(self, labels: dict[float, str] | None = None) -> None:
        self.labels = labels or {}

    def get_ticks(self, min_: float, max_: float, max_ticks: int = 8) -> list[float]:
        return [t for t in self.labels if min_ <= t <= max_]

    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        return [self.labels.get(t, format_value(t)) for t in ticks]


def x_ticks(low: float, high: float, axis: str, width: int) -> dict[float, str]:
    """Ticks for the x axis that fit `width` columns without running together."""
    span = high - low
    widest = max(len(format_duration(high)) if axis == "time" else len(f"{high:,.0f}"), 3) + 2
    max_ticks = max(2, width // (widest + 2))
    if axis == "time":
        spacing = duration_spacing(span, max_ticks)
        return {t: format_duration(t) for t in ticks_between(low, high, spacing)}
    spacing = nice_spacing(span, max_ticks, integer=axis == "step" or (axis == "epoch" and span >= 4))
    return {t: format_number(t, spacing) for t in ticks_between(low, high, spacing)}


def y_ticks(low: float, high: float, rows: int, *, log: bool) -> dict[float, str]:
    max_ticks = max(2, rows // 2)
    if log:  # positions are log10 of the values
        decades = high - low
        spacing = nice_spacing(decades, max_ticks) if decades > 1 else 1.0
        ticks = ticks_between(low, high, max(spacing, 1.0))
        if len(ticks) < 2:  # less than a decade shown: label 1-2-5 steps inside it
            values = [m * 10.0 ** e for e in range(math.floor(low) - 1, math.ceil(high) + 1) for m in (1, 2, 5)]
            ticks = [math.log10(v) for v in values if low <= math.log10(v) <= high]
        return {t: format_value(10.0 ** t) for t in ticks}
    spacing = nice_spacing(high - low, max_ticks)
    return {t: format_number(t, spacing) for t in ticks_between(low, high, spacing)}


# --- smoothing --------------------------------------------------------------------------------

def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average (the first points are not pulled to 0)."""
    if weight <= 0 or len(values) == 0:
        return values
    out = np.empty_like(values)
    last, count = 0.0, 0
    for i, value in enumerate(values):
        if not math.isfinite(value):
            out[i] = last / (1 - weight ** count) if count else value
            continue
        last = last * weight + (1 - weight) * value
        count += 1
        out[i] = last / (1 - weight ** count)
    return out


class MetricChart(PlotWidget, can_focus=False, inherit_bindings=False):
    """Named series plus an optional horizontal target line; redrawn only when asked and dirty.

    Series are named in the border title in their own colours, which costs no plot area;
    the x axis, smoothing and scale are named in the bottom border. `legend=True` also
    draws textual-plot's legend box inside the plot.
    """

    def __init__(self, title: str, *, id: str | None = None, limit: int = 600, legend: bool = False,
                 y_title: str | None = None) -> None:
        super().__init__(id=id, allow_pan_and_zoom=False)
        # Tick labels need a row below and a few columns left; the rest is plot.
        # set_reactive: no watchers yet, the plot's grid is built from these on mount.
        self.set_reactive(PlotWidget.margin_top, 0)
        self.set_reactive(PlotWidget.margin_bottom, 1)
        self.set_reactive(PlotWidget.margin_left, 7)
        self.chart_title = title
        self.y_title = y_title or title
        self.legend = legend
        self.border_title = title
        self.limit = limit
        self.series: dict[str, BoundedSeries] = {}
        self.styles_by_name: dict[str, str] = {}
        self.smoothed: set[str] = set()  # noisy series: drawn faint, with their moving average on top
        self.hidden: set[str] = set()
        # name -> (xs, lows, highs): a band drawn faint around the series (mean +- std of a seed group)
        self.bands: dict[str, tuple[list[float], list[float], list[float]]] = {}
        self.target: tuple[float, str] | None = None
        self.x_axis = "step"
        self.x_transform: XTransform | None = None  # steps to the axis' unit; None: x is already that unit
        self.smoothing = 0.6
        self.log_scale = False
        self.epoch_marks: list[float] = []  # steps at which epochs ended
        self.change_marks: list[float] = []  # steps at which settings changed (sorted)
        self.cursor: float | None = None  # an x on the axis' unit, shown by the full-screen view
        self.limits: tuple[float, float, float, float] | None = None  # x_min, x_max, y_min, y_max drawn
        self._shown: list[tuple[str, np.ndarray, np.ndarray]] = []  # what the readout reads
        self.dirty = False

    # --- data in ------------------------------------------------------------------------------

    def add_point(self, name: str, x: float, y: float, style: str, *, smooth: bool = False) -> None:
        if name not in self.series:
            self.series[name] = BoundedSeries(self.limit)
            self.styles_by_name[name] = style
            if smooth:
                self.smoothed.add(name)
        self.series[name].append(x, y)
        self.dirty = True

    def set_series(self, name: str, xs: list[float], ys: list[float], style: str) -> None:
        series = BoundedSeries(self.limit)
        for x, y in zip(xs, ys):
            series.append(x, y)
        self.series[name] = series
        self.styles_by_name[name] = style
        self.dirty = True

    def set_band(self, name: str, xs: list[float], lows: list[float], highs: list[float]) -> None:
        """A faint band from `lows` to `highs` around the series `name`, in its colour."""
        self.bands[name] = (list(xs), list(lows), list(highs))
        self.dirty = True

    def truncate_after(self, x: float) -> None:
        """Forget points past `x`: a resumed run goes on from its checkpoint, not its last report."""
        for series in self.series.values():
            series.truncate_after(x)
        self.epoch_marks = [m for m in self.epoch_marks if m <= x]
        self.change_marks[:] = [m for m in self.change_marks if m <= x]  # in place: the big chart shares it
        self.dirty = True

    def set_target(self, value: float | None, label: str) -> None:
        self.target = (value, label) if value else None
        self.dirty = True

    def mark_epoch(self, step: float) -> None:
        if not self.epoch_marks or step > self.epoch_marks[-1]:
            self.epoch_marks.append(step)
            self.dirty = True

    def mark_change(self, step: float) -> None:
        """A vertical rule at `step`: the run's settings changed there."""
        if step not in self.change_marks:
            self.change_marks.append(step)
            self.change_marks.sort()
            self.dirty = True

    def configure(self, *, x_axis: str | None = None, x_transform: XTransform | None | bool = False,
                  smoothing: float | None = None, log_scale: bool | None = None) -> None:
        if x_axis is not None:
            self.x_axis = x_axis
        if x_transform is not False:
            self.x_transform = x_transform  # type: ignore[assignment]
        if smoothing is not None:
            self.smoothing = smoothing
        if log_scale is not None:
            self.log_scale = log_scale
        self.dirty = True

    def on_resize(self) -> None:
        # Ticks and the half row of room are chosen for the plot's size: once it changes
        # (a readout line more below it), choose them again rather than stretch the old ones.
        self.dirty = True
        self.call_after_refresh(self.redraw)

    # --- drawing ------------------------------------------------------------------------------

    def _to_axis(self, xs: np.ndarray) -> np.ndarray:
        return self.x_transform(xs) if self.x_transform is not None else xs

    def _plot_size(self) -> tuple[int, int]:
        width = max(self.content_region.width - self.margin_left - 2, 10)
        height = max(self.content_region.height - self.margin_bottom - 2, 3)
        return width, height

    def redraw(self, force: bool = False) -> None:
        if not (self.dirty or force) or not self.is_mounted:
            return
        self.dirty = False
        self.clear()
        shown: list[tuple[str, np.ndarray, np.ndarray]] = []
        for name, series in self.series.items():
            if not len(series) or name in self.hidden:
                continue
            xs = self._to_axis(np.asarray(series.xs, dtype=float))
            ys = np.asarray(series.ys, dtype=float)
            if self.log_scale:
                keep = ys > 0
                xs, ys = xs[keep], np.log10(ys[keep])
            if len(xs):
                shown.append((name, xs, ys))
        self._shown = shown
        names = [f"[{self.styles_by_name[n]}]{n}[/]" for n, *_ in shown]
        target = self.target
        if target is not None and self.log_scale:
            target = (math.log10(target[0]), target[1]) if target[0] > 0 else None
        if target is not None and shown:
            names.append(f"[{TARGET_STYLE}]{target[1]}[/]")
        if self.change_marks and shown and self._marks_in(shown):
            names.append(f"[{CHANGE_MARK_STYLE}]{CHANGE_MARK} changed[/]")
        self.border_title = f"{self.chart_title}: " + "  ".join(names) if names else self.chart_title
        self.border_subtitle = self._subtitle()
        if not shown:
            self.limits = None
            return
        width, rows = self._plot_size()
        x_low = min(float(xs.min()) for _, xs, _ in shown)
        x_high = max(float(xs.max()) for _, xs, _ in shown)
        minimum_span = {"step": 2.0, "epoch": 0.1, "time": 2.0}.get(self.x_axis, 1.0)
        if x_high - x_low < minimum_span:
            middle = (x_high + x_low) / 2
            x_low, x_high = middle - minimum_span / 2, middle + minimum_span / 2
        ys_all = [ys for _, _, ys in shown]
        band_lines = self._band_lines(shown)
        ys_all += [ys for _, _, ys, _ in band_lines]
        y_low = min(float(np.nanmin(ys)) if len(ys) else math.inf for ys in ys_all)
        y_high = max(float(np.nanmax(ys)) if len(ys) else -math.inf for ys in ys_all)
        if target is not None:
            y_low, y_high = min(y_low, target[0]), max(y_high, target[0])
        if not (math.isfinite(y_low) and math.isfinite(y_high)):
            y_low, y_high = 0.0, 1.0
        span = y_high - y_low
        if span <= 0:
            span = max(abs(y_high) * 0.1, 1e-3)
            y_low, y_high = y_low - span / 2, y_high + span / 2
        # Half a row of room above and below: a value at the top (100%) stays off the frame.
        pad = span / max(rows - 1, 1)
        y_low, y_high = y_low - pad, y_high + pad
        self.limits = (x_low, x_high, y_low, y_high)
        self.set_xlimits(x_low, x_high)
        self.set_ylimits(y_low, y_high)

        for name, xs, ys, style in band_lines:
            self.plot(xs, ys, line_style=f"dim {style}", hires_mode=HiResMode.BRAILLE)
        for name, xs, ys in shown:
            style = self.styles_by_name[name]
            if len(xs) == 1:
                self.scatter(xs, ys, marker="●", marker_style=style, label=name)
                continue
            if name in self.smoothed and self.smoothing > 0:
                self.plot(xs, ys, line_style=f"dim {style}", hires_mode=HiResMode.BRAILLE)
                self.plot(xs, ema(ys, self.smoothing), line_style=style, hires_mode=HiResMode.BRAILLE, label=name)
            else:
                self.plot(xs, ys, line_style=style, hires_mode=HiResMode.BRAILLE, label=name)
        y_labels = y_ticks(y_low, y_high, rows, log=self.log_scale)
        if target is not None:
            # The target is drawn in whole cells on the row its own tick labels, so the
            # label beside the line is its value (a half-block line between two ticks
            # read as the nearer tick's value).
            self.plot([x_low, x_high], [target[0], target[0]], line_style=TARGET_STYLE, label=target[1])
            row_height = (y_high - y_low) / max(rows, 1)
            y_labels = {t: label for t, label in y_labels.items() if abs(t - target[0]) > row_height * 1.5}
            y_labels[target[0]] = format_value(10.0 ** target[0] if self.log_scale else target[0])
        self.set_yticks(sorted(y_labels))
        self.set_y_formatter(FixedLabels(y_labels))
        x_labels = x_ticks(x_low, x_high, self.x_axis, width)
        self.set_xticks(sorted(x_labels))
        self.set_x_formatter(FixedLabels(x_labels))
        if self.legend:
            self.show_legend(LegendLocation.TOPRIGHT)

    def _band_lines(self, shown: list[tuple[str, np.ndarray, np.ndarray]]) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
        """The edges of the bands of shown series, on the axis and scale drawn."""
        lines = []
        for name, *_ in shown:
            if name not in self.bands:
                continue
            band_xs, lows, highs = (np.asarray(values, dtype=float) for values in self.bands[name])
            for edge in (lows, highs):
                xs, ys = self._to_axis(band_xs), edge
                if self.log_scale:
                    keep = ys > 0
                    xs, ys = xs[keep], np.log10(ys[keep])
                if len(xs) > 1:
                    lines.append((name, xs, ys, self.styles_by_name[name]))
        return lines

    def _subtitle(self) -> str:
        parts = [{"step": "x: step", "epoch": "x: epoch", "time": "x: time"}.get(self.x_axis, f"x: {self.x_axis}")]
        if self.smoothed & set(self.series) and self.smoothing > 0:
            parts.append(f"EMA {self.smoothing:g}")
        if self.log_scale:
            parts.append("log")
        return " · ".join(parts)

    def _render_plot(self) -> None:
        # textual-plot draws data, frame and ticks; epoch boundaries and the cursor go on
        # top: boundaries faint and only on empty cells, so they never hide a line.
        super()._render_plot()
        if self.limits is None:
            return
        try:
            canvas = self.query_one("#plot", Canvas)
        except Exception:
            return
        region = self._scale_rectangle
        if not region.width:
            return
        x_low, x_high = self.limits[0], self.limits[1]
        marks = self._to_axis(np.asarray(self.epoch_marks, dtype=float)) if self.epoch_marks else []
        columns = {self.get_pixel_from_coordinate(m, 0)[0] for m in marks if x_low < m < x_high}
        if len(columns) <= region.width // 4:  # closer would be a grey wall, not marks
            for column in columns:
                for row in range(region.y, region.bottom):
                    if canvas.get_pixel(column, row)[0] == " ":
                        canvas.set_pixel(column, row, "┊", style=EPOCH_MARK_STYLE)
        self._draw_change_marks(canvas, region, x_low, x_high)
        if self.cursor is not None and x_low <= self.cursor <= x_high:
            column = self.get_pixel_from_coordinate(self.cursor, 0)[0]
            for row in range(region.y, region.bottom):
                if canvas.get_pixel(column, row)[0] == " ":
                    canvas.set_pixel(column, row, "│", style=CURSOR_STYLE)

    def _marks_in(self, shown: list[tuple[str, np.ndarray, np.ndarray]]) -> bool:
        """Whether a change of settings falls within the x range of the shown series."""
        low = min(float(xs.min()) for _, xs, _ in shown)
        high = max(float(xs.max()) for _, xs, _ in shown)
        marks = self._to_axis(np.asarray(self.change_marks, dtype=float))
        return bool(((marks >= low) & (marks <= high)).any())

    def _draw_change_marks(self, canvas: Canvas, region, x_low: float, x_high: float) -> None:  # noqa: ANN001
        """Rules where settings changed: over empty cells, so they never hide a curve, with a triangle on top."""
        if not self.change_marks:
            return
        marks = self._to_axis(np.asarray(self.change_marks, dtype=float))
        columns = sorted({self.get_pixel_from_coordinate(m, 0)[0] for m in marks if x_low <= m <= x_high})
        for column in columns:
            canvas.set_pixel(column, region.y, CHANGE_MARK_TOP, style=CHANGE_MARK_STYLE)
            for row in range(region.y + 1, region.bottom):
                if canvas.get_pixel(column, row)[0] in (" ", "┊"):
                    canvas.set_pixel(column, row, CHANGE_MARK, style=CHANGE_MARK_STYLE)

    def change_mark_columns(self) -> list[int]:
        """The plot's columns that carry a change rule now (for tests and the full-screen readout)."""
        if self.limits is None or not self.change_marks:
            return []
        x_low, x_high = self.limits[0], self.limits[1]
        marks = self._to_axis(np.asarray(self.change_marks, dtype=float))
        return sorted({self.get_pixel_from_coordinate(m, 0)[0] for m in marks if x_low <= m <= x_high})

    # --- reading values back ------------------------------------------------------------------

    def readout(self, x: float) -> list[tuple[str, str, float, float]]:
        """(name, style, x, y) of each shown series' point nearest `x` on the axis, y in data units."""
        found = []
        for name, xs, ys in self._shown:
            index = int(np.abs(xs - x).argmin())
            y = float(ys[index])
            found.append((name, self.styles_by_name[name], float(xs[index]), 10.0 ** y if self.log_scale else y))
        return found

    def x_range(self) -> tuple[float, float] | None:
        return None if self.limits is None else (self.limits[0], self.limits[1])


__all__ = ["MetricChart", "CHANGE_MARK", "CHANGE_MARK_STYLE", "PALETTE", "X_AXES", "SMOOTHING_STEPS", "ema", "format_number", "format_duration",
           "format_value", "nice_spacing", "x_ticks", "y_ticks"]
