"""A run's charts one at a time on the whole screen, with a cursor that reads values off them.

Here the arrow keys belong to the chart: left and right move the cursor (shift: ten
times as far, home and end: to the ends), and the line below the chart gives every
series' value at the cursor, and what changed there when the cursor is on a change of
settings. In the run's tab the charts take no keys at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Header, Static

from cifartui.ui.steering import change_text
from cifartui.ui.widgets.charts import (
    CHANGE_MARK_STYLE,
    SMOOTHING_STEPS,
    X_AXES,
    MetricChart,
    format_duration,
    format_value,
)
from cifartui.ui.widgets.footer import KeyFooter

if TYPE_CHECKING:
    from cifartui.ui.widgets.run_panel import RunPanel

CHARTS = ("loss", "accuracy", "learning rate")


class ChartScreen(Screen[None]):
    BINDINGS = [
        Binding("escape,z,q", "app.pop_screen", "Back"),
        Binding("tab", "next_chart", "Next chart"),
        Binding("left", "move(-1)", "Cursor ←", show=False),
        Binding("right", "move(1)", "Cursor →", show=False),
        Binding("shift+left", "move(-10)", "Cursor ← 10", show=False),
        Binding("shift+right", "move(10)", "Cursor → 10", show=False),
        Binding("home", "jump(0)", "Start", show=False),
        Binding("end", "jump(1)", "End", show=False),
        Binding("e", "smoothing", "Smoothing"),
        Binding("l", "log_scale", "Log scale"),
        Binding("x", "x_axis", "X axis"),
    ]

    def __init__(self, panel: RunPanel, chart: str = "loss") -> None:
        super().__init__()
        self.panel = panel
        self.chart_name = chart
        self.cursor_column: int | None = None  # columns from the right end; None: follow the newest point
        self._readout_lines = 1

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="chart-keys")
        yield MetricChart("loss", id="big-chart")
        yield Static(id="readout")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.sub_title = f"Charts of {self.panel.title}"
        self.query_one("#chart-keys", Static).update(
            "[b]tab[/] next chart   [b]←/→[/] cursor (shift: ×10, home/end)   [b]e[/] smoothing   "
            "[b]l[/] log scale   [b]x[/] steps/epochs/time   [b]esc[/] back")
        self.show_chart()
        self.set_interval(1.0, self.refresh_chart)

    @property
    def chart(self) -> MetricChart:
        return self.query_one("#big-chart", MetricChart)

    def show_chart(self) -> None:
        """Point the big chart at the panel's series (the same objects: it sees new points)."""
        big, panel = self.chart, self.panel
        if self.chart_name == "learning rate":
            big.chart_title = "learning rate"
            big.series = {"learning rate": panel.lr_history}
            big.styles_by_name = {"learning rate": "yellow"}
            big.smoothed, big.target, big.epoch_marks = set(), None, panel.loss_chart.epoch_marks
            big.change_marks = panel.loss_chart.change_marks
            big.configure(log_scale=panel.log_scale)
        else:
            source = panel.loss_chart if self.chart_name == "loss" else panel.accuracy_chart
            big.chart_title = source.chart_title
            big.series, big.styles_by_name, big.smoothed = source.series, source.styles_by_name, source.smoothed
            big.target, big.epoch_marks = source.target, source.epoch_marks
            big.change_marks = source.change_marks
            big.configure(log_scale=source.log_scale)
        axis = panel.loss_chart.x_axis
        big.configure(x_axis=axis, x_transform=panel.steps_to_axis, smoothing=panel.smoothing)
        self.refresh_chart()

    def refresh_chart(self) -> None:
        big = self.chart
        big.target = (self.panel.loss_chart if self.chart_name == "loss" else self.panel.accuracy_chart).target \
            if self.chart_name != "learning rate" else None
        big.redraw(force=True)  # first the limits, which place the cursor
        self._place_cursor()
        big.redraw(force=True)
        self._show_readout()

    def _place_cursor(self) -> None:
        big = self.chart
        span = big.x_range()
        if span is None:
            big.cursor = None
            return
        low, high = span
        width, _ = big._plot_size()
        per_column = (high - low) / max(width - 1, 1)
        columns = self.cursor_column or 0
        big.cursor = max(low, high - columns * per_column)

    def _show_readout(self) -> None:
        big = self.chart
        if big.cursor is None:
            self.query_one("#readout", Static).update("no points yet")
            return
        axis = big.x_axis
        where = format_duration(big.cursor) if axis == "time" else (
            f"{big.cursor:,.0f}" if axis == "step" else f"{big.cursor:.2f}")
        line = Text(f"{axis} {where}:", style="bold")
        for name, style, x, y in big.readout(big.cursor):
            at = format_duration(x) if axis == "time" else (f"{x:,.0f}" if axis == "step" else f"{x:.2f}")
            line.append(f"   {name} ", style=style)
            line.append(format_value(y), style=f"bold {style}")
            line.append(f" (at {at})", style="dim")
        for step, source, changes in self._changes_at_cursor():
            line.append(f"\n▼ step {step:,}, by {source}: ", style=f"bold {CHANGE_MARK_STYLE}")
            line.append(change_text(changes))
        readout = self.query_one("#readout", Static)
        lines = len(line.plain.splitlines())
        if lines != self._readout_lines:  # the chart gets taller or shorter: its ticks are placed again
            self._readout_lines = lines
            self.call_after_refresh(self.refresh_chart)
        readout.update(line)

    def _changes_at_cursor(self) -> list[tuple[int, str, dict]]:
        """The changes of settings whose rule is in the cursor's column."""
        big, panel = self.chart, self.panel
        span = big.x_range()
        if span is None or big.cursor is None or not panel.changes:
            return []
        width, _ = big._plot_size()
        half_column = (span[1] - span[0]) / max(width - 1, 1) / 2
        steps = np.asarray([change[0] for change in panel.changes], dtype=float)
        positions = panel.steps_to_axis(steps)
        return [change for change, x in zip(panel.changes, positions) if abs(x - big.cursor) <= half_column]

    def action_next_chart(self) -> None:
        self.chart_name = CHARTS[(CHARTS.index(self.chart_name) + 1) % len(CHARTS)]
        self.show_chart()

    def action_move(self, columns: int) -> None:
        width, _ = self.chart._plot_size()
        current = self.cursor_column or 0
        self.cursor_column = min(max(current - columns, 0), width - 1)
        self.refresh_chart()

    def action_jump(self, end: int) -> None:
        width, _ = self.chart._plot_size()
        self.cursor_column = 0 if end else width - 1
        self.refresh_chart()

    def _panel_setting(self, action: str) -> None:
        app = self.app
        getattr(app, f"action_{action}")()
        self.show_chart()

    def action_smoothing(self) -> None:
        self._panel_setting("smoothing")

    def action_log_scale(self) -> None:
        self._panel_setting("log_scale")

    def action_x_axis(self) -> None:
        self._panel_setting("x_axis")


__all__ = ["ChartScreen", "CHARTS", "SMOOTHING_STEPS", "X_AXES"]
