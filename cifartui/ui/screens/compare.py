"""Several runs, live or finished, on one chart, ranked, with the settings that differ highlighted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Select, Static

from cifartui.engine.runs import RunDirError, read_config, read_metrics
from cifartui.ui.widgets.charts import PALETTE, MetricChart

METRICS = {"val_top1": "validation top-1 %", "val_loss": "validation loss", "train_loss": "training loss",
           "train_top1": "training top-1 %", "val_top5": "validation top-5 %"}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, child in value.items():
            flat.update(flatten(child, f"{prefix}.{key}" if prefix else key))
        return flat
    return {prefix: value}


def differing_settings(configs: list[dict]) -> list[str]:
    """Keys whose values are not the same in every config (names and descriptions aside)."""
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    skip = {"name", "description", "reference.source", "reference.notes"}
    return [k for k in keys if k not in skip and len({repr(f.get(k)) for f in flats}) > 1]


class CompareScreen(Screen[None]):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("g", "reload", "Reload")]

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = run_dirs
        self.metric = "val_top1"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Select([(label, key) for key, label in METRICS.items()], value=self.metric, allow_blank=False,
                     id="metric")
        yield MetricChart(METRICS[self.metric], id="compare-chart", legend=True)
        yield Static(id="compare-note")
        yield DataTable(id="rank-table", show_cursor=False)
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()
        self.set_interval(2.0, self.action_reload)  # live runs keep appending to their metrics

    @on(Select.Changed, "#metric")
    def metric_changed(self, event: Select.Changed) -> None:
        self.metric = str(event.value)
        chart = self.query_one("#compare-chart", MetricChart)
        chart.chart_title = METRICS[self.metric]
        self.action_reload()

    def action_reload(self) -> None:
        chart = self.query_one("#compare-chart", MetricChart)
        chart.series.clear()
        rows = []
        for index, run_dir in enumerate(self.run_dirs):
            try:
                config = read_config(run_dir)
            except RunDirError:
                continue
            events = read_metrics(run_dir)  # read once per refresh: a long run's file is large
            epochs = [e for e in events if e["event"] == "EpochEnded"]
            finished = [e for e in events if e["event"] == "RunFinished"]
            points = [(e["epoch"] + 1, e[self.metric]) for e in epochs if e.get(self.metric) is not None]
            colour = PALETTE[index % len(PALETTE)]
            if points:
                chart.set_series(run_dir.name, [p[0] for p in points], [p[1] for p in points], colour)
            best = max((e["val_top1"] for e in epochs if e.get("val_top1") is not None), default=None)
            rows.append((best, run_dir, config.to_dict(), colour, len(epochs),
                         finished[-1]["test_top1"] if finished else None))
        chart.dirty = True
        chart.redraw()
        rows.sort(key=lambda row: -1 if row[0] is None else row[0], reverse=True)
        differing = differing_settings([row[2] for row in rows])
        table = self.query_one("#rank-table", DataTable)
        table.clear(columns=True)
        table.add_column("#")
        # Styled cells do not widen an auto-sized column, so size the names' column up front.
        table.add_column("run", width=max([len(row[1].name) for row in rows] + [3]))
        table.add_columns("best val top-1", "test top-1", "epochs", *differing)
        for rank, (best, run_dir, config, colour, epochs, test) in enumerate(rows, start=1):
            flat = flatten(config)
            cells = [Text(str(flat.get(key)), style="bold yellow") for key in differing]
            table.add_row(str(rank), Text(run_dir.name, style=colour), "-" if best is None else f"{best:.2f}%",
                          "-" if test is None else f"{test:.2f}%", str(epochs), *cells)
        note = ("Add runs from history (h, then a) or start several; live runs are included."
                if len(rows) < 2 else f"{len(rows)} runs; settings that differ are highlighted.")
        self.query_one("#compare-note", Static).update(note)
