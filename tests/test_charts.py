"""The charts' own marks (epoch ends, changes of settings, the cursor) drawn over textual-plot's plot.

MetricChart draws them in an override of textual-plot's `_render_plot`, which is not
public API: pyproject.toml pins textual-plot below its next minor version, and these
tests fail, naming the hook, if an upgrade stops calling it or moves what it draws on.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version

from textual.app import App, ComposeResult
from textual_hires_canvas import Canvas
from textual_plot import PlotWidget

from cifartui.ui.widgets.charts import CHANGE_MARK, CHANGE_MARK_TOP, MetricChart


class ChartApp(App):
    def compose(self) -> ComposeResult:
        yield MetricChart("loss", id="chart")


def draw(marks: dict) -> tuple[MetricChart, Canvas]:
    async def scenario() -> tuple[MetricChart, list[list[str]], dict]:
        app = ChartApp()
        async with app.run_test(size=(80, 20)) as pilot:
            chart = app.query_one(MetricChart)
            for step in range(0, 101):
                chart.add_point("train", float(step), 2.0 - step / 100, "cyan")
            for step in marks.get("epochs", []):
                chart.mark_epoch(float(step))
            for step in marks.get("changes", []):
                chart.mark_change(float(step))
            chart.cursor = marks.get("cursor")
            await pilot.pause()
            chart.redraw(force=True)
            await pilot.pause()
            canvas = chart.query_one("#plot", Canvas)
            region = chart._scale_rectangle
            columns = {name: chart.get_pixel_from_coordinate(float(x), 0)[0]
                       for name, x in marks.get("columns", {}).items()}
            cells = [[canvas.get_pixel(column, row)[0] for column in range(region.right + 1)]
                     for row in range(region.bottom + 1)]
            return chart, cells, {"columns": columns, "top": region.y, "bottom": region.bottom}

    chart, cells, where = asyncio.run(scenario())
    return chart, cells, where


def column_text(cells: list[list[str]], column: int, top: int, bottom: int) -> str:
    return "".join(cells[row][column] for row in range(top, bottom))


def test_textual_plot_is_a_version_whose_render_hook_the_charts_override() -> None:
    major, minor = (int(part) for part in version("textual-plot").split(".")[:2])
    assert (major, minor) == (0, 10), ("MetricChart overrides textual-plot 0.10's PlotWidget._render_plot; "
                                       "check the override against the new version before widening the pin")
    assert "_render_plot" in vars(PlotWidget) and MetricChart._render_plot is not PlotWidget._render_plot


def test_epoch_ends_are_drawn_as_faint_rules_on_empty_cells_only() -> None:
    _, cells, where = draw({"epochs": [25, 50, 75], "columns": {"e1": 25, "e2": 50}})
    for name in ("e1", "e2"):
        text = column_text(cells, where["columns"][name], where["top"], where["bottom"])
        assert set(text) <= {"┊"} | {chr(c) for c in range(0x2800, 0x2900)} | {" "}
        assert text.count("┊") >= (where["bottom"] - where["top"]) // 2  # a rule, not a dot


def test_a_change_of_settings_is_a_rule_with_a_triangle_on_top() -> None:
    chart, cells, where = draw({"changes": [40], "columns": {"change": 40}})
    column = where["columns"]["change"]
    assert chart.change_mark_columns() == [column]
    assert cells[where["top"]][column] == CHANGE_MARK_TOP
    assert column_text(cells, column, where["top"] + 1, where["bottom"]).count(CHANGE_MARK) >= 3


def test_the_cursor_is_drawn_where_it_reads() -> None:
    chart, cells, where = draw({"cursor": 60.0, "columns": {"cursor": 60}})
    column = where["columns"]["cursor"]
    assert column_text(cells, column, where["top"], where["bottom"]).count("│") >= 3
    (name, _, x, y), = chart.readout(60.0)
    assert (name, x) == ("train", 60.0) and abs(y - 1.4) < 1e-9
