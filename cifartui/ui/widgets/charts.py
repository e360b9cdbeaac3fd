"""Line charts of a run's metrics, drawn with textual-plot from bounded series."""

from __future__ import annotations

from textual_plot import HiResMode, LegendLocation, PlotWidget

from cifartui.ui.series import BoundedSeries

# Distinct colours that survive a 256-colour terminal.
PALETTE = ("cyan", "magenta", "green", "yellow", "bright_blue", "red", "bright_white", "orange3")


class MetricChart(PlotWidget):
    """Named series plus an optional horizontal target line; redrawn only when asked and dirty.

    Series are named in the border title in their own colours, which costs no plot
    area; `legend=True` also draws textual-plot's legend box inside the plot.
    """

    def __init__(self, title: str, *, id: str | None = None, limit: int = 600, legend: bool = False) -> None:
        super().__init__(id=id, allow_pan_and_zoom=False)
        # Tick labels need a row below and a few columns left; the rest is plot.
        # set_reactive: no watchers yet, the plot's grid is built from these on mount.
        self.set_reactive(PlotWidget.margin_top, 0)
        self.set_reactive(PlotWidget.margin_bottom, 2)
        self.set_reactive(PlotWidget.margin_left, 7)
        self.chart_title = title
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
        if all_x and self.legend:
            self.show_legend(LegendLocation.TOPRIGHT)
        names = [f"[{self.styles_by_name[n]}]{n}[/]" for n in self.series if len(self.series[n])]
        if self.target and all_x:
            names.append(f"[yellow]{self.target[1]}[/]")
        self.border_title = f"{self.chart_title}: " + "  ".join(names) if names else self.chart_title
