"""Several runs, live or finished, on one chart, ranked, labelled by what differs between them.

Each run is named by the settings that tell it apart (dataset, model, optimizer,
learning rate, ... in that order of importance), and the table shows progress,
training time and speed beside the ranking. Space hides a run from the chart, `p`
pins it to the top of the table, `d` removes it from the comparison, `/` filters.
Live runs are read again every two seconds; the table keeps its scroll position and
cursor, and only files that grew are read again.

A run's settings are its effective ones (its configuration plus the changes made while
it trained). A branch is labelled as one, with the step it left its parent at; with a
branch in the comparison the x axis counts steps (`x` switches to epochs and back), so
the branch's line leaves its parent's where it left the run; `x` also offers the time
spent training (each epoch's training seconds added up, so pauses are left out).

Runs that differ only by their seed (a sweep's seed groups) can be drawn as one line, the
mean over the seeds, inside a faint band of one standard deviation either side (`G`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Header, Input, Select, Static

from cifartui.config import flatten
from cifartui.engine.api import RunDirError, effective_config, read_config, read_metrics
from cifartui.ui.text import plural
from cifartui.ui.widgets.charts import PALETTE, MetricChart
from cifartui.ui.widgets.footer import KeyFooter

METRICS = {"val_top1": "validation top-1 %", "val_loss": "validation loss", "train_loss": "training loss",
           "train_top1": "training top-1 %", "val_top5": "validation top-5 %"}
# Settings in the order that tells runs apart best; the rest follow alphabetically.
IMPORTANCE = ("dataset.name", "dataset.labels", "dataset.classes", "model.name", "optimizer.name", "optimizer.lr",
              "optimizer.schedule.name", "augment.preprocess", "augment.crop_padding", "augment.flip",
              "augment.cutout", "train.batch_size", "train.epochs", "train.max_steps", "optimizer.weight_decay",
              "optimizer.momentum", "model.dropout", "train.seed")
# How a setting appears in a run's label.
SHORT = {"dataset.name": "", "model.name": "", "optimizer.name": "", "optimizer.lr": "lr ",
         "optimizer.schedule.name": "", "train.batch_size": "batch ", "train.epochs": "", "train.seed": "seed "}
LABEL_SETTINGS = 4
RELOAD_EVERY_S = 2.0


def differing_settings(configs: list[dict]) -> list[str]:
    """Keys whose values are not the same in every config, most telling first (names and notes aside)."""
    flats = [flatten(c) for c in configs]
    keys = set().union(*flats) if flats else set()
    skip = {"name", "description", "reference.source", "reference.notes"}
    differing = [k for k in keys if k not in skip and len({repr(f.get(k)) for f in flats}) > 1]
    rank = {key: i for i, key in enumerate(IMPORTANCE)}
    return sorted(differing, key=lambda k: (rank.get(k, len(rank)), k))


def _setting_text(key: str, value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = "+".join(str(v) for v in value) or "none"
    else:
        text = str(value)
    if key in SHORT:
        return f"{SHORT[key]}{text}" + (" ep" if key == "train.epochs" else "")
    return f"{key.rsplit('.', 1)[-1]} {text}"


def run_label(flat: dict[str, Any], differing: list[str], fallback: str) -> str:
    """What tells this run apart: the values of the most important differing settings."""
    parts = [_setting_text(key, flat.get(key)) for key in differing[:LABEL_SETTINGS]]
    return " · ".join(parts) if parts else fallback


X_AXIS_NAMES = {"step": "steps", "epoch": "epochs", "time": "time spent training"}


def training_seconds(epochs: list[dict]) -> dict[int, float]:
    """Seconds of training at the end of each epoch: the epochs' own training times added up.

    An epoch trained again after a resume counts once, as last reported.
    """
    latest: dict[int, float] = {}
    for event in epochs:
        if isinstance(event.get("epoch"), int):
            latest[event["epoch"]] = float(event.get("seconds") or 0.0)
    total, found = 0.0, {}
    for epoch in sorted(latest):
        total += latest[epoch]
        found[epoch] = total
    return found


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class RunSummary:
    path: Path
    config: dict
    epochs: list[dict]
    best_val_top1: float | None
    test_top1: float | None
    epochs_total: int
    train_seconds: float | None
    images_per_s: float | None
    stamp: tuple[int, float]  # metrics.jsonl size and mtime when read
    parent: Path | None = None  # the run a branch left, and the step it left at
    parent_step: int = -1


def summarize_run(path: Path) -> RunSummary | None:
    try:
        config = read_config(path)
    except RunDirError:
        return None
    metrics = path / "metrics.jsonl"
    try:
        stat = metrics.stat()
        stamp = (stat.st_size, stat.st_mtime)
    except OSError:
        stamp = (0, 0.0)
    events = read_metrics(path)  # read when the file changed: a long run's file is large
    config = effective_config(config, events, str(path))
    epochs = [e for e in events if e["event"] == "EpochEnded"]
    finished = [e for e in events if e["event"] == "RunFinished"]
    steps = [e for e in events if e["event"] == "StepMetrics"]
    best = max((e["val_top1"] for e in epochs if e.get("val_top1") is not None), default=None)
    started = [e for e in events if e["event"] == "RunStarted"]
    epochs_total = config.train.epochs
    if started and started[-1].get("steps_per_epoch"):
        epochs_total = math.ceil(started[-1]["total_steps"] / started[-1]["steps_per_epoch"])
    if finished:
        seconds, rate = finished[-1].get("seconds"), finished[-1].get("images_per_s")
    else:
        seconds = sum(float(e.get("seconds", 0.0)) for e in epochs) or None
        rate = steps[-1].get("images_per_s") if steps else None
    branched = next((e for e in started if e.get("parent")), None)
    return RunSummary(path, config.to_dict(), epochs, best, finished[-1]["test_top1"] if finished else None,
                      epochs_total, seconds, rate, stamp,
                      Path(str(branched["parent"])) if branched else None,
                      int(branched.get("parent_step", -1)) if branched else -1)


def branch_label(label: str, summary: RunSummary, parents: dict[Path, str]) -> str:
    """A branch's label says so, and from which run (by its label, when compared too) and step."""
    if summary.parent is None:
        return label
    parent = parents.get(_key(summary.parent), summary.parent.name)
    return f"⑂ {label} (branch of {parent} at step {summary.parent_step:,})"


def _key(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path


class CompareScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("space", "toggle_visible", "Show/hide"),
        Binding("p", "pin", "Pin"),
        Binding("d,delete", "remove", "Remove"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("x", "x_axis", "X axis", show=False),
        Binding("g", "reload", "Reload", show=False),
        Binding("c", "colour_by", "Colour by"),
        Binding("G", "group_seeds", "Mean of seeds"),
    ]

    def __init__(self, run_dirs: list[Path], *, colour_keys: Sequence[str] = ()) -> None:
        super().__init__()
        self.run_dirs = list(run_dirs)
        # Settings the runs may be coloured by (a sweep's varied keys): runs with the same value share a colour.
        self.colour_keys = list(colour_keys)
        self.colour_by: str | None = self.colour_keys[0] if self.colour_keys else None
        self.metric = "val_top1"
        self.hidden: set[Path] = set()
        self.pinned: set[Path] = set()
        self.filter_text = ""
        self.summaries: dict[Path, RunSummary] = {}
        self.rows: list[RunSummary] = []
        self._columns: tuple[str, ...] = ()
        self.x_axis: str | None = None  # None: steps when a branch is compared, else epochs
        self.group_seeds = False  # runs that differ only by seed drawn as their mean +- std

    def compose(self) -> ComposeResult:
        yield Header()
        yield Select([(label, key) for key, label in METRICS.items()], value=self.metric, allow_blank=False,
                     id="metric")
        yield MetricChart(METRICS[self.metric], id="compare-chart", legend=True)
        yield Static(id="compare-note")
        yield Input(placeholder="filter runs: part of a name or a setting, enter to keep, escape to clear",
                    id="compare-filter")
        yield DataTable(id="rank-table", cursor_type="row")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.sub_title = "Compare runs"
        self.query_one("#compare-filter", Input).display = False
        chart = self.query_one("#compare-chart", MetricChart)
        chart.configure(x_axis="epoch")
        self.action_reload()
        self.query_one("#rank-table", DataTable).focus()
        self.set_interval(RELOAD_EVERY_S, self.action_reload)  # live runs keep appending to their metrics

    @on(Select.Changed, "#metric")
    def metric_changed(self, event: Select.Changed) -> None:
        self.metric = str(event.value)
        chart = self.query_one("#compare-chart", MetricChart)
        chart.chart_title = METRICS[self.metric]
        self.action_reload(force=True)

    def _read(self) -> bool:
        """Summaries of the runs whose metrics changed; True when any did."""
        changed = False
        for path in self.run_dirs:
            known = self.summaries.get(path)
            try:
                stat = (path / "metrics.jsonl").stat()
                stamp = (stat.st_size, stat.st_mtime)
            except OSError:
                stamp = (0, 0.0)
            if known is not None and known.stamp == stamp:
                continue
            summary = summarize_run(path)
            if summary is not None:
                self.summaries[path] = summary
                changed = True
        for path in [p for p in self.summaries if p not in self.run_dirs]:
            del self.summaries[path]
            changed = True
        return changed

    def action_reload(self, force: bool = False) -> None:
        if not self._read() and not force:
            return  # nothing new: the table stays exactly as the user left it
        summaries = [self.summaries[p] for p in self.run_dirs if p in self.summaries]
        differing = differing_settings([s.config for s in summaries])
        labels = {s.path: run_label(flatten(s.config), differing, s.path.name) for s in summaries}
        if len(set(labels.values())) < len(labels):  # the same settings twice: the directory tells them apart
            labels = {p: f"{label} ({p.name[:15]})" for p, label in labels.items()}
        parents = {_key(s.path): labels[s.path] for s in summaries}
        labels = {s.path: branch_label(labels[s.path], s, parents) for s in summaries}
        colours = {s.path: PALETTE[i % len(PALETTE)] for i, s in enumerate(summaries)}
        if self.colour_by is not None:
            colours = self._colours_by_setting(summaries)
        needle = self.filter_text.lower()
        shown = [s for s in summaries if not needle or needle in labels[s.path].lower() or needle in s.path.name.lower()
                 or any(needle in str(v).lower() for v in flatten(s.config).values())]

        chart = self.query_one("#compare-chart", MetricChart)
        chart.series.clear()
        chart.styles_by_name.clear()
        chart.bands.clear()
        axis = self.axis(summaries)
        chart.configure(x_axis=axis)
        by_path = {_key(s.path): s for s in summaries}
        grouped = self._draw_seed_groups(chart, [s for s in shown if s.path not in self.hidden], differing,
                                         axis, colours) if self.group_seeds else set()
        for summary in shown:
            if summary.path in self.hidden or summary.path in grouped:
                continue
            points = self._points(summary, axis)
            parent = by_path.get(_key(summary.parent)) if summary.parent is not None else None
            if points and parent is not None:
                # The branch's line starts on its parent's, at the last point before it left.
                before = [e for e in parent.epochs if e.get(self.metric) is not None
                          and e.get("step", 0) <= summary.parent_step]
                if before:
                    points = self._points(parent, axis, [before[-1]]) + points
            if points:
                chart.set_series(labels[summary.path], [p[0] for p in points], [p[1] for p in points],
                                 colours[summary.path])
        chart.redraw(force=True)

        ranked = sorted(shown, key=lambda s: (s.path not in self.pinned, -(s.best_val_top1 if s.best_val_top1
                                                                             is not None else -1)))
        self.rows = ranked
        self._fill_table(ranked, differing, labels, colours)
        datasets = sorted({str(flatten(s.config).get("dataset.name")) for s in shown})
        if len(shown) < 2:
            note = Text("Add runs from history (h, then a) or start several; live runs are included.")
        else:
            note = Text(f"{plural(len(shown), 'run')}, labelled by what differs; ranked by best validation top-1"
                        + (f"; filter '{self.filter_text}'" if self.filter_text else "") + ".")
        if self.group_seeds:
            note.append("\nRuns that differ only by seed: their mean, in a faint band of ± one standard "
                        "deviation (G: each run again).")
        if self.colour_by is not None:
            note.append(f"\nColoured by {self.colour_by}" + (" (c: the next varied setting)"
                                                              if len(self.colour_keys) > 1 else "") + ": ")
            for value, colour in self._value_colours(summaries).items():
                note.append("■ ", style=colour)
                note.append(f"{value}  ")
        if len(datasets) > 1:
            note.append(f"\n⚠ These runs train on different datasets ({', '.join(datasets)}): "
                        "their accuracies do not rank against each other.", style="bold yellow")
        self.query_one("#compare-note", Static).update(note)

    def _value_colours(self, summaries: list[RunSummary]) -> dict[str, str]:
        """A colour for each value of the setting runs are coloured by, in the order the runs come."""
        colours: dict[str, str] = {}
        for summary in summaries:
            value = _setting_text(self.colour_by or "", flatten(summary.config).get(self.colour_by or ""))
            colours.setdefault(value, PALETTE[len(colours) % len(PALETTE)])
        return colours

    def _colours_by_setting(self, summaries: list[RunSummary]) -> dict[Path, str]:
        by_value = self._value_colours(summaries)
        return {s.path: by_value[_setting_text(self.colour_by or "", flatten(s.config).get(self.colour_by or ""))]
                for s in summaries}

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "colour_by":
            return bool(self.colour_keys)  # only for runs that vary settings, such as a sweep's
        if action == "group_seeds":
            summaries = [self.summaries[p] for p in self.run_dirs if p in self.summaries]
            return "train.seed" in differing_settings([s.config for s in summaries])
        return True

    def action_group_seeds(self) -> None:
        self.group_seeds = not self.group_seeds
        self.action_reload(force=True)

    def _draw_seed_groups(self, chart: MetricChart, summaries: list[RunSummary], differing: list[str], axis: str,
                          colours: dict[Path, str]) -> set[Path]:
        """Each group of two or more runs that differ only by seed as its mean and a band of +- one std.

        Only the points every run of a group has are drawn (a live run that is behind
        shortens its group's line). The runs drawn this way are returned.
        """
        keys = [k for k in differing if k != "train.seed"]
        groups: dict[tuple, list[RunSummary]] = {}
        for summary in summaries:
            if summary.parent is None:  # a branch has a history of its own
                flat = flatten(summary.config)
                groups.setdefault(tuple(repr(flat.get(k)) for k in keys), []).append(summary)
        drawn: set[Path] = set()
        for members in groups.values():
            if len(members) < 2:
                continue
            curves = [dict(self._points(member, axis)) for member in members]
            xs = sorted(set.intersection(*(set(curve) for curve in curves)))
            if not xs:
                continue
            values = [[curve[x] for curve in curves] for x in xs]
            means = [statistics.fmean(v) for v in values]
            spreads = [statistics.stdev(v) for v in values]
            label = run_label(flatten(members[0].config), keys, "all runs") + f" · mean of {len(members)} seeds"
            chart.set_series(label, xs, means, colours[members[0].path])
            chart.set_band(label, xs, [m - d for m, d in zip(means, spreads)],
                           [m + d for m, d in zip(means, spreads)])
            drawn.update(member.path for member in members)
        return drawn

    def action_colour_by(self) -> None:
        if self.colour_keys:
            index = self.colour_keys.index(self.colour_by) if self.colour_by in self.colour_keys else -1
            self.colour_by = self.colour_keys[(index + 1) % len(self.colour_keys)]
            self.action_reload(force=True)

    def axis(self, summaries: list[RunSummary]) -> str:
        if self.x_axis is not None:
            return self.x_axis
        return "step" if any(s.parent is not None for s in summaries) else "epoch"

    def _points(self, summary: RunSummary, axis: str, epochs: list[dict] | None = None) -> list[tuple[float, float]]:
        if axis == "time":
            trained = training_seconds(summary.epochs)
            x = lambda e: trained.get(e.get("epoch"), math.nan)  # noqa: E731
        else:
            x = (lambda e: e["step"]) if axis == "step" else (lambda e: e["epoch"] + 1)
        points = [(x(e), e[self.metric]) for e in (summary.epochs if epochs is None else epochs)
                  if e.get(self.metric) is not None and isinstance(e.get("step"), int)]
        return [point for point in points if not math.isnan(point[0])]

    def action_x_axis(self) -> None:
        summaries = [self.summaries[p] for p in self.run_dirs if p in self.summaries]
        self.x_axis = {"step": "epoch", "epoch": "time", "time": "step"}[self.axis(summaries)]
        self.notify(f"x axis: {X_AXIS_NAMES[self.x_axis]}", timeout=2)
        self.action_reload(force=True)

    def _fill_table(self, ranked: list[RunSummary], differing: list[str], labels: dict[Path, str],
                    colours: dict[Path, str]) -> None:
        table = self.query_one("#rank-table", DataTable)
        columns = ("#", "run", "best val top-1", "test top-1", "epochs", "time", "images/s", *differing)
        rows = []
        for rank, summary in enumerate(ranked, start=1):
            flat = flatten(summary.config)
            mark = ("📌 " if summary.path in self.pinned else "") + ("(hidden) " if summary.path in self.hidden else "")
            style = f"dim {colours[summary.path]}" if summary.path in self.hidden else colours[summary.path]
            cells = [str(rank), Text(mark + labels[summary.path], style=style),
                     "-" if summary.best_val_top1 is None else f"{summary.best_val_top1:.2f}%",
                     "-" if summary.test_top1 is None else f"{summary.test_top1:.2f}%",
                     f"{len(summary.epochs)}/{summary.epochs_total}", _duration(summary.train_seconds),
                     "-" if not summary.images_per_s else f"{summary.images_per_s:,.0f}"]
            cells += [Text(_setting_text(key, flat.get(key)), style="bold yellow") for key in differing]
            rows.append((str(summary.path), cells))
        cursor_row, scroll_x, scroll_y = table.cursor_row, table.scroll_x, table.scroll_y
        same_shape = columns == self._columns and [key for key, _ in rows] == [k.value for k in table.rows]
        if same_shape:
            # Same runs, same columns: change the cells only; cursor and scrolling stay put.
            for key, cells in rows:
                for column, cell in zip(table.columns, cells):
                    table.update_cell(key, column, cell)
            return
        table.clear(columns=columns != self._columns)
        if columns != self._columns:
            table.add_column("#")
            # Styled cells do not widen an auto-sized column, so size the names' column up front.
            table.add_column("run", width=max([len(labels[s.path]) + 4 for s in ranked] + [3]))
            table.add_columns(*columns[2:])
            self._columns = columns
        for key, cells in rows:
            table.add_row(*cells, key=key)
        if table.row_count:
            table.move_cursor(row=min(cursor_row, table.row_count - 1), animate=False)
        table.scroll_to(scroll_x, scroll_y, animate=False, immediate=True)

    def _selected(self) -> RunSummary | None:
        table = self.query_one("#rank-table", DataTable)
        if not table.row_count or not 0 <= table.cursor_row < len(self.rows):
            return None
        return self.rows[table.cursor_row]

    def action_toggle_visible(self) -> None:
        if (summary := self._selected()) is not None:
            self.hidden.symmetric_difference_update({summary.path})
            self.action_reload(force=True)

    def action_pin(self) -> None:
        if (summary := self._selected()) is not None:
            self.pinned.symmetric_difference_update({summary.path})
            self.action_reload(force=True)

    def action_remove(self) -> None:
        if (summary := self._selected()) is None:
            return
        self.run_dirs.remove(summary.path)
        comparison = getattr(self.app, "comparison", None)
        if isinstance(comparison, list) and summary.path in comparison:
            comparison.remove(summary.path)
        self.notify(f"{summary.path.name} left the comparison.")
        self.action_reload(force=True)

    def action_filter(self) -> None:
        field = self.query_one("#compare-filter", Input)
        field.display = True
        field.focus()

    @on(Input.Changed, "#compare-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.action_reload(force=True)

    @on(Input.Submitted, "#compare-filter")
    def filter_kept(self) -> None:
        self.query_one("#rank-table", DataTable).focus()

    def action_back(self) -> None:
        field = self.query_one("#compare-filter", Input)
        if field.has_focus:
            field.value = ""
            field.display = False
            self.query_one("#rank-table", DataTable).focus()
            return
        self.app.pop_screen()
