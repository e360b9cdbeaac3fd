"""One run on screen: progress, charts, LR and dropout sparklines, epoch table, event log."""

from __future__ import annotations

import time
from datetime import timedelta

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import reactive
from textual.widgets import DataTable, ProgressBar, RichLog, Sparkline, Static

from cifartui.engine import events as ev
from cifartui.ui.series import BoundedSeries
from cifartui.ui.widgets.charts import MetricChart
from cifartui.ui.widgets.device import DevicePanel

SPARK_POINTS = 120
# The screen shows the latest epochs and events; the whole history is in metrics.jsonl.
EPOCH_ROWS = 50
LOG_LINES = 300


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds < 0:
        return "-"
    return str(timedelta(seconds=int(seconds)))


def advice_for(error_type: str, message: str) -> str:
    """A suggestion to go with an error a run ended with."""
    text = message.lower()
    if error_type == "OutOfMemoryError" or "out of memory" in text:
        return "The GPU ran out of memory: lower train.batch_size, pick a smaller model, or another GPU."
    if error_type in ("DataUnavailable", "DataError"):
        return "Fix the data folder, point --data-dir at it, or train on the synthetic dataset."
    if error_type in ("ConfigError", "ModelError", "DeviceError"):
        return "Change the setting named above and start the run again."
    if error_type == "CheckpointError":
        return "The checkpoint cannot be used; start a new run."
    return "The traceback is in error.log in the run directory."


class RunPanel(VerticalScroll):
    """Turns a run's events into what is on screen; the only owner of this run's view state."""

    status: reactive[str] = reactive("starting")

    def __init__(self, run_id: str, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="run-panel")
        self.run_id = run_id
        self.title = title
        self.total_steps = 0
        self.step = 0
        self.epoch = 0
        self.images_per_s = 0.0
        self.eta_s = float("nan")
        self.device = "cpu"
        self.reference_top1 = 0.0
        self.alert_text = ""
        self.lr_history = BoundedSeries(SPARK_POINTS * 4)
        self.dropout_history = BoundedSeries(SPARK_POINTS * 4)
        self.dropout_rates: dict[str, float] = {}
        self.last_step_event: ev.StepMetrics | None = None
        self.finished: ev.RunFinished | None = None
        self.lr_note = ""
        self.dropout_note = ""
        self._dirty = False
        self._ready = False
        self._shown_text: dict[str, object] = {}
        self._early: list[ev.Event] = []  # events that arrived before the widgets were mounted

    def compose(self) -> ComposeResult:
        with Vertical(id="run-header"):
            yield Static(id="status-line")
            yield ProgressBar(id="progress", show_eta=False)
            yield Static(id="alert")
            yield DevicePanel(id="device")
        with Horizontal(classes="charts"):
            yield MetricChart("loss", id="loss-chart")
            yield MetricChart("accuracy %", id="accuracy-chart")
        with Horizontal(classes="lower"):
            with Vertical(classes="schedules"):
                yield Static("learning rate", id="lr-label")
                yield Sparkline([], id="lr-spark")
                yield Static("dropout (mean rate)", id="dropout-label")
                yield Sparkline([], id="dropout-spark")
                yield DataTable(id="dropout-table", show_cursor=False)
            yield DataTable(id="epochs-table", show_cursor=False)
        yield RichLog(id="event-log", max_lines=LOG_LINES, wrap=True, markup=True)

    def on_mount(self) -> None:
        self.loss_chart = self.query_one("#loss-chart", MetricChart)
        self.accuracy_chart = self.query_one("#accuracy-chart", MetricChart)
        self.query_one("#epochs-table", DataTable).add_columns(
            "epoch", "train loss", "train top-1", "val loss", "val top-1", "val top-5", "lr", "time")
        self.query_one("#dropout-table", DataTable).add_columns("layer", "rate")
        self.query_one("#alert", Static).display = False
        # The screen is redrawn at a bounded rate, whatever the event rate: once a second,
        # status and charts together. Every redraw repaints a band of the screen across
        # the changed widgets, so one combined redraw costs little more than either alone;
        # on a CPU box that time is taken from training.
        self.set_interval(1.0, self.redraw)
        self._ready = True
        for event in self._early:
            self.apply(event)
        self._early.clear()
        self._render_status()
        self.call_after_refresh(self.redraw)

    @property
    def ready(self) -> bool:
        """True once the widgets exist; events before that wait and are applied then."""
        return self._ready

    # --- events in ----------------------------------------------------------------------------

    def apply(self, event: ev.Event) -> None:
        if not self._ready:
            self._early.append(event)
            return
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event)
            self._dirty = True

    def _log(self, when: float, text: str, style: str = "") -> None:
        # The event's own time: right for live runs, for replayed history and for followed runs.
        stamp = time.strftime("%H:%M:%S", time.localtime(when))
        line = Text(f"{stamp}  ")
        line.append(text, style=style)
        self.query_one("#event-log", RichLog).write(line)

    def _on_RunStarted(self, event: ev.RunStarted) -> None:
        self.total_steps, self.step, self.epoch = event.total_steps, event.step, event.epoch
        self.device = event.device
        self.query_one("#device", DevicePanel).device = event.device
        reference = event.config.get("reference", {})
        self.reference_top1 = reference.get("top1") or 0.0
        chart = self.query_one("#accuracy-chart", MetricChart)
        chart.set_target(self.reference_top1, f"reference {self.reference_top1:g}%")
        self.dropout_rates = dict(event.dropout_rates)
        self._fill_dropout_table()
        summary = event.model_summary
        verb = "resumed" if event.resumed else "started"
        self._log(event.time, f"{verb} on {event.device}: {summary['name']} ({summary['total_parameters']:,} parameters), "
                  f"{event.train_size}/{event.val_size}/{event.test_size} train/val/test images")
        self.status = "running"

    def _on_StepMetrics(self, event: ev.StepMetrics) -> None:
        self.last_step_event = event
        self.step, self.epoch, self.total_steps = event.step, event.epoch, event.total_steps
        self.images_per_s, self.eta_s = event.images_per_s, event.eta_s
        self.loss_chart.add_point("train", event.step, event.loss, "cyan")
        self.accuracy_chart.add_point("train top-1", event.step, event.top1, "cyan")
        self.lr_history.append(event.step, event.lr)
        if self.dropout_rates:
            self.dropout_history.append(event.step, sum(self.dropout_rates.values()) / len(self.dropout_rates))
        if self.status in ("starting", "paused"):
            self.status = "running"

    def _on_EpochEnded(self, event: ev.EpochEnded) -> None:
        loss_chart, accuracy_chart = self.loss_chart, self.accuracy_chart
        if event.val_loss is not None:
            loss_chart.add_point("val", event.step, event.val_loss, "magenta")
            accuracy_chart.add_point("val top-1", event.step, event.val_top1, "magenta")
            accuracy_chart.add_point("val top-5", event.step, event.val_top5, "green")
        table = self.query_one("#epochs-table", DataTable)
        if table.row_count >= EPOCH_ROWS:
            table.remove_row(next(iter(table.rows)))
        table.add_row(
            str(event.epoch + 1), f"{event.train_loss:.4f}", f"{event.train_top1:.2f}",
            "-" if event.val_loss is None else f"{event.val_loss:.4f}",
            "-" if event.val_top1 is None else f"{event.val_top1:.2f}",
            "-" if event.val_top5 is None else f"{event.val_top5:.2f}", f"{event.lr:.3g}", f"{event.seconds:.1f}s")
        self.step = event.step

    def _on_LRChanged(self, event: ev.LRChanged) -> None:
        self._log(event.time, f"step {event.step}: learning rate {event.old:.4g} → {event.new:.4g} ({event.reason})", "yellow")
        self.lr_note = f"  [yellow]since step {event.step:,}[/]"

    def _on_DropoutChanged(self, event: ev.DropoutChanged) -> None:
        changed = [k for k, v in event.new.items() if event.old.get(k) != v]
        self.dropout_rates = dict(event.new)
        self._fill_dropout_table()
        self._log(event.time, f"step {event.step}: dropout changed on {len(changed)} layers "
                  f"(mean {sum(event.old.values()) / max(len(event.old), 1):.3f} → "
                  f"{sum(event.new.values()) / max(len(event.new), 1):.3f})", "yellow")
        self.dropout_note = f"  [yellow]since step {event.step:,}[/]"

    def _on_CheckpointSaved(self, event: ev.CheckpointSaved) -> None:
        name = event.path.rsplit("/", 1)[-1]
        self._log(event.time, f"step {event.step}: checkpoint {name} ({event.reason})", "dim")

    def _on_CheckpointFailed(self, event: ev.CheckpointFailed) -> None:
        self._alert(event.error)
        self._log(event.time, event.error, "bold red")

    def _on_RunPaused(self, event: ev.RunPaused) -> None:
        self.status = "paused"
        self._log(event.time, f"paused at step {event.step}: {event.reason}", "bold yellow")

    def _on_RunResumed(self, event: ev.RunResumed) -> None:
        self.status = "running"
        self._clear_alert()
        self._log(event.time, f"resumed at step {event.step}", "green")

    def _on_LossNotFinite(self, event: ev.LossNotFinite) -> None:
        self._alert(event.message)
        self._log(event.time, event.message, "bold red")

    def _on_MemoryExhausted(self, event: ev.MemoryExhausted) -> None:
        self._alert(event.message)
        self._log(event.time, event.message, "bold red")

    def _on_RunStopped(self, event: ev.RunStopped) -> None:
        self.status = "stopped"
        where = f"checkpoint {event.checkpoint}" if event.checkpoint else "no new checkpoint"
        self._log(event.time, f"stopped at step {event.step} ({event.reason}); {where}", "bold")

    def _on_RunFinished(self, event: ev.RunFinished) -> None:
        self.finished = event
        self.status = "finished"
        self.step = event.steps
        reference = f" (reference {self.reference_top1:g}%)" if self.reference_top1 else ""
        self._log(event.time, f"finished: test top-1 {event.test_top1:.2f}%{reference}, top-5 {event.test_top5:.2f}%, "
                  f"loss {event.test_loss:.4f}", "bold green")

    def _on_RunFailed(self, event: ev.RunFailed) -> None:
        self.fail(event.error_type, event.error)

    def fail(self, error_type: str, message: str) -> None:
        if not self._ready:
            self._early.append(ev.RunFailed(error=message, error_type=error_type, step=self.step, epoch=self.epoch))
            return
        if self.status == "failed":
            return
        self.status = "failed"
        self._alert(f"{error_type}: {message}\n{advice_for(error_type, message)}")
        self._log(time.time(), f"failed: {error_type}: {message}", "bold red")
        self._dirty = True

    def _alert(self, text: str) -> None:
        self.alert_text = text
        alert = self.query_one("#alert", Static)
        alert.update(Text(text, style="bold"))
        alert.display = True

    def _clear_alert(self) -> None:
        self.alert_text = ""
        self.query_one("#alert", Static).display = False

    def _fill_dropout_table(self) -> None:
        table = self.query_one("#dropout-table", DataTable)
        table.clear()
        for name, rate in self.dropout_rates.items():
            if rate or len(self.dropout_rates) <= 8:
                table.add_row(name, f"{rate:.3f}")

    # --- drawing ------------------------------------------------------------------------------

    def watch_status(self, _status: str) -> None:
        if self.is_mounted:
            self._render_status()

    def _render_status(self) -> None:
        styles = {"running": "bold green", "paused": "bold yellow", "failed": "bold red",
                  "finished": "bold cyan", "stopped": "bold", "following": "bold blue", "viewing": "dim"}
        line = Text()
        line.append(f" {self.status.upper()} ", style=f"reverse {styles.get(self.status, '')}")
        line.append(f"  {self.title}  epoch {self.epoch + 1}  step {self.step:,}/{self.total_steps:,}")
        if self.status == "running":
            line.append(f"  {self.images_per_s:,.0f} img/s  ETA {_duration(self.eta_s)}")
        if self.finished:
            line.append(f"  test top-1 {self.finished.test_top1:.2f}%", style="bold")
        self._set_text("#status-line", line)
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=max(self.total_steps, 1), progress=self.step)

    def _set_text(self, selector: str, content: str | Text) -> None:
        """Update a one-line label only when its text changes, without a layout pass.

        These labels have a fixed height of one row (app.tcss), so their size never
        changes; a layout pass of the whole screen per update cost tens of
        milliseconds of the process's CPU, which training threads then wait for.
        """
        if self._shown_text.get(selector) != content:
            self._shown_text[selector] = content
            self.query_one(selector, Static).update(content, layout=False)

    def redraw(self) -> None:
        """Bring everything on screen up to date (on mount, and when the tab is shown)."""
        self.redraw_status()
        self.redraw_charts()

    def redraw_charts(self) -> None:
        if not self.is_on_screen:  # panels in hidden tabs wait and catch up when shown
            return
        for selector, history in (("#lr-spark", self.lr_history), ("#dropout-spark", self.dropout_history)):
            data = list(history.last(SPARK_POINTS))
            if data != self._shown_text.get(selector):
                self._shown_text[selector] = data
                self.query_one(selector, Sparkline).data = data
        for chart in self.query(MetricChart):
            chart.redraw()  # only those with new points

    def redraw_status(self) -> None:
        if not self._dirty or not self.is_on_screen:
            return
        self._dirty = False
        self._render_status()
        if self.lr_history.ys:
            self._set_text("#lr-label", f"learning rate {self.lr_history.ys[-1]:.4g}{self.lr_note}")
        if self.dropout_history.ys:
            self._set_text("#dropout-label", f"dropout mean {self.dropout_history.ys[-1]:.3f}{self.dropout_note}")
