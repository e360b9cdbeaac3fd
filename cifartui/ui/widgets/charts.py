"""Line charts of a run's metrics, drawn with textual-plot from bounded series."""

from __future__ import annotations

from textual_plot import HiResMode, LegendLocation, PlotWidget

from cifartui.ui.series import BoundedSeries

# Distinct colours that survive a 256-colour terminal.
PALETTE = ("cyan", "magenta", "green", "yellow", "bright_blue", "red", "bright_white", "orange3")


class MetricChart(PlotWidget):
    """Named series plus an optional horizontal target line; redrawn only when asked and dirty."""

    def __init__(self, title: str, *, id: str | None = None, limit: int = 600,
                 legend: LegendLocation = LegendLocation.TOPRIGHT) -> None:
        super().__init__(id=id, allow_pan_and_zoom=False)
        self.legend = legend
        self.border_title = title
        self.limit = limit
        self.series: dict[str, BoundedSeries] = {}
        self.styles_by_name: dict[str, str] = {}
        self.target: tuple[float, str] | None = None
        self.dirty = False

    def add_point(self, name: str, x: float, y: float, style: str) -> None:
        if name not in self.series:
            self.series[name] = BoundedSeries(self.limit)
            self.styles_by_name[name] = style
        self.series[name].append(x, y)
        self.dirty = True

    def set_series(self, name: str, xs: list[float], ys: list[float], style: str) -> None:
        series = BoundedSeries(self.limit)
        for x, y in zip(xs, ys):
            series.append(x, y)
        self.series[name] = series
        self.styles_by_name[name] = style
        self.dirty = True

    def set_target(self, value: float | None, label: str) -> None:
        self.target = (value, label) if value else None
        self.dirty = True

    def redraw(self) -> None:
        if not self.dirty or not self.is_mounted:
            return
        self.dirty = False
        self.clear()
        all_x: list[float] = []
        for name, series in self.series.items():
            if not len(series):
                continue
            style = self.styles_by_name[name]
            all_x += [series.xs[0], series.xs[-1]]
            if len(series) == 1:
                self.scatter(series.xs, series.ys, marker="●", marker_style=style, label=name)
            else:
                self.plot(series.xs, series.ys, line_style=style, hires_mode=HiResMode.BRAILLE, label=name)
        if self.target and all_x:
            value, label = self.target
            self.plot([min(all_x), max(all_x)], [value, value], line_style="yellow", label=label)
        if all_x:
            self.show_legend(self.legend)
