"""A run's Inspect view: confusion heatmap, per-class accuracy, sample images, model summary.

The test set is evaluated with the run's best checkpoint (or its last when it has no
best) in a thread worker, so the screen and any training stay responsive meanwhile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ItemGrid, VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    DataTable,
    Header,
    ProgressBar,
    Select,
    Static,
    TabbedContent,
    TabPane,
)

from cifartui.ui.graphics import picture_tile
from cifartui.ui.widgets.footer import KeyFooter
from cifartui.ui.widgets.pictures import heatmap

ALL_CLASSES, SUPERCLASSES = "all", "superclasses"
MISTAKES, RANDOM = "mistakes", "random"
SAMPLES_SHOWN = 12
EVALUATION_BATCH = 500  # test images per step of the progress bar


def evaluate_with_progress(run_dir: Path, checkpoint: str, data_dir: Path | None, progress: Any) -> Any:
    """The engine's inspection, in batches of EVALUATION_BATCH that report `progress(phase, done, total)`.

    Called in a worker thread.
    """
    from cifartui.engine.api import inspect_run

    return inspect_run(run_dir, checkpoint=checkpoint, data_dir=data_dir, batch_size=EVALUATION_BATCH,
                       progress=progress)


class InspectScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("r", "reload", "Re-evaluate"),
        Binding("1", "show_tab('tab-confusion')", "Confusion"),
        Binding("2", "show_tab('tab-classes')", "Per class"),
        Binding("3", "show_tab('tab-samples')", "Samples"),
        Binding("4", "show_tab('tab-model')", "Model"),
        Binding("d", "draw_samples", "Draw samples"),
    ]

    def __init__(self, run_dir: Path, *, data_dir: Path | None = None, checkpoint: str = "best") -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.data_dir = data_dir
        self.checkpoint = checkpoint
        self.result: Any = None
        self.shown: list[int] = []  # test indices in the Samples tab
        self._draws = 0
        self._sorted_by: tuple[str, bool] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("evaluating the test set…", id="inspect-title")
        yield ProgressBar(id="inspect-progress", show_eta=True)
        with TabbedContent(id="inspect-tabs"):
            with TabPane("Confusion", id="tab-confusion"):
                yield Select([("all classes", ALL_CLASSES)], value=ALL_CLASSES, id="confusion-view",
                             allow_blank=False)
                with VerticalScroll(id="heatmap-scroll"):
                    yield Static(id="heatmap")
            with TabPane("Per class", id="tab-classes"):
                yield DataTable(id="per-class", cursor_type="row", zebra_stripes=True)
                yield Static(id="most-confused")
            with TabPane("Samples", id="tab-samples"):
                yield Select([("most confident mistakes", MISTAKES), ("random test images (d draws again)", RANDOM)],
                             value=MISTAKES, id="samples-view", allow_blank=False)
                with VerticalScroll():
                    yield ItemGrid(id="samples", min_column_width=34)
            with TabPane("Model", id="tab-model"):
                with VerticalScroll():
                    yield Static(id="model-summary")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.sub_title = f"Inspect {self.run_dir.name}"
        self.query_one("#confusion-view", Select).display = False
        self.action_reload()

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#inspect-tabs", TabbedContent).active = tab

    def action_reload(self) -> None:
        self.query_one("#inspect-title", Static).update(f"evaluating the test set with {self.checkpoint}.pt…")
        bar = self.query_one("#inspect-progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True
        self._evaluate()

    def _progress(self, phase: str, done: int, total: int) -> None:
        if not self.is_attached:
            return  # the user left before the evaluation ended
        self.query_one("#inspect-title", Static).update(
            f"{phase} with {self.checkpoint}.pt…" + (f" {done:,}/{total:,} images" if total else ""))
        self.query_one("#inspect-progress", ProgressBar).update(total=total or None, progress=done)

    @work(thread=True, exclusive=True, group="inspect", exit_on_error=False)
    def _evaluate(self) -> None:
        from cifartui.engine.api import (CheckpointError, DataError, InspectError, RunDirError, build_model,
                                         read_config, summarize)

        def progress(phase: str, done: int, total: int) -> None:
            self.app.call_from_thread(self._progress, phase, done, total)

        try:
            result = evaluate_with_progress(self.run_dir, self.checkpoint, self.data_dir, progress)
            config = read_config(self.run_dir)
            summary = summarize(build_model(config.model, len(result.class_names)), config.model.name)
        except (RunDirError, CheckpointError, DataError, InspectError) as error:
            self.app.call_from_thread(self._show_error, str(error))
            return
        except Exception as error:  # noqa: BLE001 - shown on screen, the app stays up
            self.app.call_from_thread(self._show_error, f"{type(error).__name__}: {error}")
            return
        self.app.call_from_thread(self._show, result, summary)

    def _show_error(self, message: str) -> None:
        if not self.is_attached:
            return
        self.query_one("#inspect-progress", ProgressBar).display = False
        self.query_one("#inspect-title", Static).update(Text(message, style="red"))

    # --- filling the tabs ---------------------------------------------------------------------

    def _show(self, result: Any, summary: Any) -> None:
        if not self.is_attached:
            return
        self.query_one("#inspect-progress", ProgressBar).display = False
        self.result = result
        images = int(result.confusion.sum())
        self.query_one("#inspect-title", Static).update(
            f"{result.checkpoint}.pt, step {result.step:,}: top-1 [b]{result.top1:.2f}%[/], top-5 {result.top5:.2f}% "
            f"on {images:,} test images")
        select = self.query_one("#confusion-view", Select)
        if result.superclass_of:
            options = [("all 20 superclasses", SUPERCLASSES), ("all 100 classes", ALL_CLASSES)]
            options += [(f"inside: {name}", str(i)) for i, name in enumerate(result.superclass_names)]
            select.set_options(options)
            select.value = SUPERCLASSES
            select.display = True
        self._draw_heatmap(SUPERCLASSES if result.superclass_of else ALL_CLASSES)
        self._fill_per_class()
        self._fill_samples(self.query_one("#samples-view", Select).value)
        self._fill_summary(summary)

    @on(Select.Changed, "#confusion-view")
    def _view_changed(self, event: Select.Changed) -> None:
        if self.result is not None and isinstance(event.value, str):
            self._draw_heatmap(event.value)

    def _draw_heatmap(self, view: str) -> None:
        result = self.result
        if view == SUPERCLASSES:
            matrix, labels = result.superclass_confusion(), list(result.superclass_names)
        elif view == ALL_CLASSES:
            matrix, labels = result.confusion, list(result.class_names)
        else:
            members = result.classes_in_superclass(int(view))
            matrix = result.confusion[members][:, members]
            labels = [result.class_names[c] for c in members]
        self.query_one("#heatmap", Static).update(heatmap(matrix, labels))

    def _fill_per_class(self) -> None:
        result = self.result
        table = self.query_one("#per-class", DataTable)
        table.clear(columns=True)
        has_supers = bool(result.superclass_of)
        table.add_column("class", key="class")
        if has_supers:
            table.add_column("superclass", key="superclass")
        table.add_column("images", key="images")
        table.add_column("top-1 %", key="top1")
        table.add_column("most often taken for", key="confused")
        accuracy = result.per_class_accuracy
        for c, name in enumerate(result.class_names):
            confused = result.taken_for(c)
            cells: list[Any] = [name]
            if has_supers:
                cells.append(result.superclass_names[result.superclass_of[c]])
            cells += [int(result.confusion[c].sum()), round(float(accuracy[c]), 2) if accuracy[c] == accuracy[c]
                      else -1.0, confused]
            table.add_row(*cells, key=name)
        table.sort("top1")  # worst first; click a column header to sort by it
        self._sorted_by = ("top1", False)
        pairs = result.most_confused(10)
        lines = Text("Most confused (true → predicted, images):\n", style="bold")
        for true, predicted, count in pairs:
            lines.append(f"  {result.class_names[true]} → {result.class_names[predicted]}: {count}\n")
        if has_supers:
            supers = result.superclass_confusion()
            lines.append("\nAccuracy per superclass (right superclass counts):\n", style="bold")
            for i, name in enumerate(result.superclass_names):
                total = supers[i].sum()
                lines.append(f"  {name}: {100.0 * supers[i, i] / total:.1f}%\n" if total else f"  {name}: -\n")
        self.query_one("#most-confused", Static).update(lines)

    @on(DataTable.HeaderSelected, "#per-class")
    def _sort_by_header(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        reverse = self._sorted_by == (key, False)
        event.data_table.sort(event.column_key, reverse=reverse)
        self._sorted_by = (key, reverse)

    @on(Select.Changed, "#samples-view")
    def _samples_view_changed(self, event: Select.Changed) -> None:
        if self.result is not None and isinstance(event.value, str):
            self._fill_samples(event.value)

    def action_draw_samples(self) -> None:
        self.action_show_tab("tab-samples")
        select = self.query_one("#samples-view", Select)
        if select.value != RANDOM:
            select.value = RANDOM  # fills the tab through Select.Changed
        elif self.result is not None:
            self._fill_samples(RANDOM)

    def _fill_samples(self, view: object) -> None:
        result = self.result
        if view == RANDOM:
            generator = np.random.default_rng(self._draws)
            self._draws += 1
            count = min(SAMPLES_SHOWN, len(result.labels))
            self.shown = generator.choice(len(result.labels), size=count, replace=False).tolist()
        else:
            self.shown = result.confident_mistakes(SAMPLES_SHOWN)
        grid = self.query_one("#samples", ItemGrid)
        grid.remove_children()
        tiles = []
        for index in self.shown:
            true, said = int(result.labels[index]), int(result.predictions[index])
            caption = Text.assemble(
                (f"true {result.class_names[true]}\n", "bold"),
                (f"said {result.class_names[said]} {100 * result.confidence[index]:.0f}%",
                 "green" if said == true else "red"))
            tiles.append(picture_tile(result.images[index], caption, self.app.image_mode, classes="sample"))
        if not tiles:
            tiles.append(Static("No mistakes on the test set."))
        grid.mount_all(tiles)

    def _fill_summary(self, summary: Any) -> None:
        table = Table(title=f"{summary.name}: {summary.total_parameters:,} parameters "
                            f"({summary.trainable_parameters:,} trainable)", title_justify="left")
        table.add_column("layer")
        table.add_column("type")
        table.add_column("output shape")
        table.add_column("parameters", justify="right")
        for layer in summary.layers:
            table.add_row(layer.name, layer.kind, "x".join(map(str, layer.output_shape)), f"{layer.parameters:,}")
        self.summary_table = table
        self.query_one("#model-summary", Static).update(table)


__all__ = ["InspectScreen"]
