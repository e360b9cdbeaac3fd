"""One run on screen: progress, charts, LR and dropout sparklines, epoch table, event log.

Changes of settings mid-run are marked on the charts at their step, listed in the
event log, and summed up under the status line with the run's lineage (a branch names
the run and step it left).
"""

from __future__ import annotations

import math
import time
from collections import deque
from datetime import timedelta
from typing import Callable

import numpy as np
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import reactive
from textual.widgets import DataTable, ProgressBar, RichLog, Sparkline, Static

from cifartui.engine import api
from cifartui.ui.series import BoundedSeries, TrainingClock
from cifartui.ui.steering import change_text, value_text
from cifartui.ui.widgets.charts import MetricChart
from cifartui.ui.widgets.system import SystemPanel

SPARK_POINTS = 120
# The screen shows the latest epochs and events; the whole history is in metrics.jsonl.
EPOCH_ROWS = 50
LOG_LINES = 300
# Dropout rates live in float32 tensors: 0.3 comes back from a checkpoint as
# 0.30000001192092896. Rounded to this many decimals, equal rates compare equal again.
RATE_DECIMALS = 6
# How much of the shown pace is the newest report: smooth enough for a steady ETA, and
# still the current pace (a slowdown shows within a few seconds), not the session average.
PACE_SMOOTHING = 0.3

STATUS_STYLES = {"running": "bold green", "paused": "bold yellow", "failed": "bold red", "finished": "bold cyan",
                 "stopped": "bold", "following": "bold blue", "viewing": "dim", "interrupted": "bold magenta",
                 "starting": "bold"}


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds < 0 or math.isinf(seconds):
        return "-"
    return str(timedelta(seconds=int(seconds)))


def _clean_rates(rates: dict) -> dict[str, float]:
    return {str(name): round(float(rate), RATE_DECIMALS) for name, rate in rates.items()}


def describe_rates(rates: dict[str, float]) -> str:
    """Every dropout layer's rate in a line or two: by layer when few, grouped by rate when many."""
    if not rates:
        return "no dropout layers"
    if len(rates) <= 8:
        return "  ".join(f"{name}:[b]{rate:.2f}[/]" for name, rate in rates.items())  # a pair never wraps apart
    groups: dict[float, int] = {}
    for rate in rates.values():
        groups[rate] = groups.get(rate, 0) + 1
    return "  ".join(f"[b]{rate:.2f}[/] ×{count}" for rate, count in sorted(groups.items())) + f"  ({len(rates)} layers)"


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


class EventLog(RichLog):
    """A RichLog that wraps its lines again when its width changes.

    RichLog wraps a line once, at the width it has when the line is written; lines that
    arrive while a tab is being laid out were wrapped too narrow for good.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=LOG_LINES, wrap=True, markup=True)
        self.texts: deque[Text] = deque(maxlen=LOG_LINES)
        self._wrapped_at = 0

    def add(self, line: Text) -> None:
        self.texts.append(line)
        self._write(line)

    def _write(self, line: Text) -> None:
        # The width is given: RichLog otherwise measures lines against the console's
        # width, which need not be the log's.
        width = self.scrollable_content_region.width
        self.write(line, width=width if self._size_known and width else None)

    def on_resize(self, event: events.Resize) -> None:
        super().on_resize(event)
        width = self.scrollable_content_region.width
        if width and width != self._wrapped_at:
            self._wrapped_at = width
            self.clear()
            for line in self.texts:
                self._write(line)


class RunPanel(VerticalScroll):
    """Turns a run's events into what is on screen; the only owner of this run's view state."""

    # The footer offers some keys only for a run in some states (t while it trains).
    status: reactive[str] = reactive("starting", bindings=True)

    def __init__(self, run_id: str, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="run-panel")
        self.run_id = run_id
        self.title = title
        self.total_steps = 0
        self.steps_per_epoch = 0
        self.epochs_total = 0
        self.step = 0
        self.epoch = 0
        self.images_per_s = 0.0  # the current pace, smoothed a little
        self.ms_per_step = 0.0
        self.eta_s = float("nan")
        self.device = "cpu"
        self.reference_top1 = 0.0
        self.alert_text = ""
        self.phase: tuple[str, str, float] | None = None  # what a starting run is busy with, and since when
        self.process_note = ""  # for a followed run: whose process trains it
        self.lr_history = BoundedSeries(SPARK_POINTS * 4)
        self.dropout_history = BoundedSeries(SPARK_POINTS * 4)
        self.clock = TrainingClock()  # seconds of training (pauses left out) at each step, for the time axis
        self.last_event_time = 0.0
        self.dropout_rates: dict[str, float] = {}
        self.last_step_event: api.StepMetrics | None = None
        self.finished: api.RunFinished | None = None
        self.lr_note = ""
        self.dropout_note = ""
        self.x_axis = "step"
        self.smoothing = 0.6
        self.log_scale = False
        self._dirty = False
        self._ready = False
        self._shown_text: dict[str, object] = {}
        # Events (and calls) that arrived before the widgets were mounted, applied on mount.
        self._early: list[api.Event | Callable[[], None]] = []
        self._process: int | None = None  # the pid that trains this run, for the system line
        self._epochs_follow = True  # the epoch table shows its newest row until the user scrolls back
        self._epoch_scroll_seen = 0.0
        # Lineage and changes of settings: the run a branch left (and at which step), and
        # every SettingsChanged (step, source, {key: [old, new]}) in order.
        self.parent_run = ""
        self.parent_step = -1
        self.changes: list[tuple[int, str, dict]] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="run-header"):
            yield Static(id="status-line")
            yield ProgressBar(id="progress", show_eta=False)
            yield Static(id="alert")
            yield Static(id="settings-line")
            yield SystemPanel(id="device")
        with Horizontal(classes="charts"):
            yield MetricChart("loss", id="loss-chart")
            yield MetricChart("accuracy %", id="accuracy-chart")
        with Horizontal(classes="lower"):
            with Vertical(classes="schedules"):
                yield Static("learning rate", id="lr-label")
                yield Sparkline([], id="lr-spark")
                yield Static("dropout (mean rate)", id="dropout-label")
                yield Sparkline([], id="dropout-spark")
                yield Static(id="dropout-rates")
            yield DataTable(id="epochs-table", show_cursor=False)
        yield EventLog(id="event-log")

    def on_mount(self) -> None:
        self.loss_chart = self.query_one("#loss-chart", MetricChart)
        self.accuracy_chart = self.query_one("#accuracy-chart", MetricChart)
        self.query_one("#device", SystemPanel).pid = self._process
        self.apply_chart_settings()
        self.query_one("#epochs-table", DataTable).add_columns(
            "epoch", "train loss", "train top-1", "val loss", "val top-1", "val top-5", "lr", "time")
        self.query_one("#alert", Static).display = False
        self.query_one("#settings-line", Static).display = False
        # The screen is redrawn at a bounded rate, whatever the event rate: once a second,
        # status and charts together. Every redraw repaints a band of the screen across
        # the changed widgets, so one combined redraw costs little more than either alone;
        # on a CPU box that time is taken from training.
        self.set_interval(1.0, self.redraw)
        self._ready = True
        for early in self._early:
            early() if callable(early) else self.apply(early)
        self._early.clear()
        self._render_status()
        self.call_after_refresh(self.redraw)

    @property
    def ready(self) -> bool:
        """True once the widgets exist; events before that wait and are applied then."""
        return self._ready

    def watch_process(self, pid: int | None) -> None:
        """Show the CPU and memory of this process (the trainer's), or of none."""
        self._process = pid
        if self._ready:
            self.query_one("#device", SystemPanel).pid = pid

    # --- chart settings -----------------------------------------------------------------------

    def steps_to_axis(self, steps: np.ndarray) -> np.ndarray:
        """Steps as the chosen x axis shows them: steps, epochs, or seconds of training (pauses left out)."""
        if self.x_axis == "epoch" and self.steps_per_epoch:
            return steps / self.steps_per_epoch
        if self.x_axis == "time" and len(self.clock):
            return self.clock.seconds_at(steps)
        return steps

    def apply_chart_settings(self) -> None:
        axis = self.x_axis if (self.x_axis != "epoch" or self.steps_per_epoch) else "step"
        for chart in (self.loss_chart, self.accuracy_chart):
            chart.configure(x_axis=axis, x_transform=self.steps_to_axis, smoothing=self.smoothing)
        self.loss_chart.configure(log_scale=self.log_scale)
        self._shown_text.pop("#lr-spark", None)
        self._dirty = True

    # --- events in ----------------------------------------------------------------------------

    def apply(self, event: api.Event) -> None:
        if not self._ready:
            self._early.append(event)
            return
        self.last_event_time = max(self.last_event_time, event.time)
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event)
            self._dirty = True

    def _log(self, when: float, text: str, style: str = "") -> None:
        # The event's own time: right for live runs, for replayed history and for followed runs.
        stamp = time.strftime("%H:%M:%S", time.localtime(when))
        line = Text(f"{stamp}  ")
        line.append(text, style=style)
        self.query_one("#event-log", EventLog).add(line)

    def _on_PhaseStarted(self, event: api.PhaseStarted) -> None:
        self.phase = (event.phase, event.detail, event.time)
        detail = f" ({event.detail})" if event.detail else ""
        self._log(event.time, f"{event.phase}{detail}…", "dim")

    def _on_RunStarted(self, event: api.RunStarted) -> None:
        self.clock.started(event.time, resumed=event.resumed)
        self.total_steps, self.step, self.epoch = event.total_steps, event.step, event.epoch
        self.steps_per_epoch = event.steps_per_epoch
        train = event.config.get("train", {})
        self.epochs_total = math.ceil(event.total_steps / event.steps_per_epoch) if event.steps_per_epoch else int(
            train.get("epochs", 0))
        self.device = event.device
        self.query_one("#device", SystemPanel).device = event.device
        reference = event.config.get("reference", {})
        self.reference_top1 = reference.get("top1") or 0.0
        self.accuracy_chart.set_target(self.reference_top1, f"reference {self.reference_top1:g}%")
        self.dropout_rates = _clean_rates(event.dropout_rates)
        self._fill_dropout_rates()
        if event.parent and not self.parent_run:
            self.parent_run, self.parent_step = event.parent, event.parent_step
            self._log(event.time, f"branch of {event.parent.rstrip('/').rsplit('/', 1)[-1]}, from its step "
                      f"{event.parent_step:,}", "bold")
            self._show_settings_line()
        summary = event.model_summary
        if event.resumed:
            # Training goes on from the checkpoint, which may be older than the last report
            # (a killed run): what came after it is redone, so it leaves the screen.
            self._forget_after(event.step, event.epoch)
            self.finished = None
            self._clear_alert()
        verb = f"resumed at step {event.step:,}" if event.resumed else "started"
        self._log(event.time, f"{verb} on {event.device}: {summary['name']} ({summary['total_parameters']:,} parameters), "
                  f"{event.train_size}/{event.val_size}/{event.test_size} train/val/test images")
        self.apply_chart_settings()
        if self.phase is None or self.status not in ("starting",):
            self.status = "running"

    def _forget_after(self, step: int, epoch: int) -> None:
        for chart in (self.loss_chart, self.accuracy_chart):
            chart.truncate_after(step)
        self.changes = [change for change in self.changes if change[0] <= step]
        self._show_settings_line()
        for series in (self.lr_history, self.dropout_history, self.clock):
            series.truncate_after(step)
        table = self.query_one("#epochs-table", DataTable)
        for key in [k for k in table.rows if k.value is not None and int(k.value) >= epoch]:
            table.remove_row(key)

    def _on_StepMetrics(self, event: api.StepMetrics) -> None:
        self.last_step_event = event
        self.phase = None
        self.step, self.epoch, self.total_steps = event.step, event.epoch, event.total_steps
        recent_rate = event.recent_images_per_s or event.images_per_s
        recent_ms = event.ms_per_step
        if self.ms_per_step and recent_ms:
            self.ms_per_step += PACE_SMOOTHING * (recent_ms - self.ms_per_step)
            self.images_per_s += PACE_SMOOTHING * (recent_rate - self.images_per_s)
        else:
            self.ms_per_step, self.images_per_s = recent_ms, recent_rate
        remaining = max(event.total_steps - event.step, 0)
        self.eta_s = remaining * self.ms_per_step / 1000.0 if self.ms_per_step else event.eta_s
        self.clock.at(event.step, event.time)
        self.loss_chart.add_point("train", event.step, event.loss, "cyan", smooth=True)
        self.accuracy_chart.add_point("train top-1", event.step, event.top1, "cyan", smooth=True)
        self.lr_history.append(event.step, event.lr)
        if self.dropout_rates:
            self.dropout_history.append(event.step, round(sum(self.dropout_rates.values()) / len(self.dropout_rates),
                                                          RATE_DECIMALS))
        if self.status in ("starting", "paused"):
            self.status = "running"

    def _on_EpochEnded(self, event: api.EpochEnded) -> None:
        loss_chart, accuracy_chart = self.loss_chart, self.accuracy_chart
        self.clock.at(event.step, event.time)
        if event.val_loss is not None:
            loss_chart.add_point("val", event.step, event.val_loss, "magenta")
            accuracy_chart.add_point("val top-1", event.step, event.val_top1, "magenta")
            accuracy_chart.add_point("val top-5", event.step, event.val_top5, "green")
        for chart in (loss_chart, accuracy_chart):
            chart.mark_epoch(event.step)
        table = self.query_one("#epochs-table", DataTable)
        key = str(event.epoch)
        if key in table.rows:
            table.remove_row(key)
        if table.row_count >= EPOCH_ROWS:
            table.remove_row(next(iter(table.rows)))
        table.add_row(
            str(event.epoch + 1), f"{event.train_loss:.4f}", f"{event.train_top1:.2f}",
            "-" if event.val_loss is None else f"{event.val_loss:.4f}",
            "-" if event.val_top1 is None else f"{event.val_top1:.2f}",
            "-" if event.val_top5 is None else f"{event.val_top5:.2f}", f"{event.lr:.3g}", f"{event.seconds:.1f}s",
            key=key)
        self.step = max(self.step, event.step)

    def _on_LRChanged(self, event: api.LRChanged) -> None:
        self._log(event.time, f"step {event.step:,}: learning rate {event.old:.4g} → {event.new:.4g} ({event.reason})",
                  "yellow")
        self.lr_note = f"  [yellow]since step {event.step:,}[/]"

    def _on_SettingsChanged(self, event: api.SettingsChanged) -> None:
        changes = dict(event.changes)
        self.changes.append((event.step, event.source, changes))
        for chart in (self.loss_chart, self.accuracy_chart):
            chart.mark_change(event.step)
        self._log(event.time, f"step {event.step:,}: settings changed by {event.source}: {change_text(changes)}",
                  "bold dark_orange")
        self._show_settings_line()

    def settings_summary(self) -> Text:
        """The run's lineage and what its settings are now where they differ from the start."""
        line = Text(no_wrap=True, overflow="ellipsis")
        if self.parent_run:
            name = self.parent_run.rstrip("/").rsplit("/", 1)[-1]
            line.append(f"⑂ branch of {name} at step {self.parent_step:,}", style="bold")
        net: dict[str, list] = {}  # key -> [value at the start, value now]
        for _step, _source, changes in self.changes:
            for key, pair in changes.items():
                old, new = pair if isinstance(pair, (list, tuple)) and len(pair) == 2 else (None, pair)
                net[key] = [net[key][0] if key in net else old, new]
        net = {key: pair for key, pair in net.items() if pair[0] != pair[1]}
        if net:
            if line:
                line.append("  ·  ")
            count = len(self.changes)
            line.append(f"{count} change{'s' if count != 1 else ''}, now: ", style="dark_orange")
            line.append(", ".join(f"{key} {value_text(new)} (was {value_text(old)})"
                                  for key, (old, new) in net.items()))
        return line

    def _show_settings_line(self) -> None:
        line = self.settings_summary()
        widget = self.query_one("#settings-line", Static)
        widget.update(line)
        widget.display = bool(line)

    def _on_DropoutChanged(self, event: api.DropoutChanged) -> None:
        old, new = _clean_rates(event.old), _clean_rates(event.new)
        self.dropout_rates = new
        self._fill_dropout_rates()
        changed = [k for k, v in new.items() if old.get(k) != v]
        if not changed:
            return  # the same rates, up to float32 rounding
        self._log(event.time, f"step {event.step:,}: dropout changed on {len(changed)} layers "
                  f"(mean {sum(old.values()) / max(len(old), 1):.3f} → "
                  f"{sum(new.values()) / max(len(new), 1):.3f})", "yellow")
        self.dropout_note = f"  [yellow]since step {event.step:,}[/]"

    def _on_CheckpointSaved(self, event: api.CheckpointSaved) -> None:
        name = event.path.rsplit("/", 1)[-1]
        self._log(event.time, f"step {event.step:,}: checkpoint {name} ({event.reason})", "dim")

    def _on_CheckpointFailed(self, event: api.CheckpointFailed) -> None:
        self._alert(event.error)
        self._log(event.time, event.error, "bold red")

    def _on_RunPaused(self, event: api.RunPaused) -> None:
        self.step = event.step
        self.status = "paused"
        self.clock.paused(event.time)
        self._log(event.time, f"paused at step {event.step:,}: {event.reason}", "bold yellow")

    def _on_RunResumed(self, event: api.RunResumed) -> None:
        self.step = event.step
        self.status = "running"
        self.clock.resumed(event.time)
        self._clear_alert()
        self._log(event.time, f"resumed at step {event.step:,}", "green")

    def _on_LossNotFinite(self, event: api.LossNotFinite) -> None:
        self._alert(event.message)
        self._log(event.time, event.message, "bold red")

    def _on_MemoryExhausted(self, event: api.MemoryExhausted) -> None:
        self._alert(event.message)
        self._log(event.time, event.message, "bold red")

    def _on_RunStopped(self, event: api.RunStopped) -> None:
        self.step = event.step  # the status line says the step the log and the checkpoint say
        self.phase = None
        self.status = "stopped"
        self.clock.paused(event.time)
        where = f"checkpoint {event.checkpoint.rsplit('/', 1)[-1]}" if event.checkpoint else "no new checkpoint"
        self._log(event.time, f"stopped at step {event.step:,} ({event.reason}); {where}", "bold")

    def _on_RunFinished(self, event: api.RunFinished) -> None:
        self.finished = event
        self.phase = None
        self.step = event.steps
        self.status = "finished"
        reference = f" (reference {self.reference_top1:g}%)" if self.reference_top1 else ""
        self._log(event.time, f"finished: test top-1 {event.test_top1:.2f}%{reference}, top-5 {event.test_top5:.2f}%, "
                  f"loss {event.test_loss:.4f}", "bold green")

    def _on_RunFailed(self, event: api.RunFailed) -> None:
        self.step = max(self.step, event.step)
        self.fail(event.error_type, event.error)

    def fail(self, error_type: str, message: str) -> None:
        if not self._ready:
            self._early.append(api.RunFailed(error=message, error_type=error_type, step=self.step, epoch=self.epoch))
            return
        if self.status == "failed":
            return
        self.phase = None
        self.status = "failed"
        self._alert(f"{error_type}: {message}\n{advice_for(error_type, message)}")
        self._log(time.time(), f"failed: {error_type}: {message}", "bold red")
        self._dirty = True

    def interrupted(self, message: str, when: float | None = None) -> None:
        """The process that trained this followed run is gone (last heard of at `when`)."""
        if not self._ready:
            self._early.append(lambda: self.interrupted(message, when))
            return
        self.phase = None
        self.status = "interrupted"
        self._alert(message)
        self._log(when or self.last_event_time or time.time(), message, "bold magenta")
        self._dirty = True

    def _alert(self, text: str) -> None:
        self.alert_text = text
        alert = self.query_one("#alert", Static)
        alert.update(Text(text, style="bold"))
        alert.display = True

    def _clear_alert(self) -> None:
        self.alert_text = ""
        self.query_one("#alert", Static).display = False

    def _fill_dropout_rates(self) -> None:
        text = describe_rates(self.dropout_rates)
        if self._shown_text.get("#dropout-rates") != text:
            self._shown_text["#dropout-rates"] = text
            # One line or two, depending on the layers: this label's height follows its text.
            self.query_one("#dropout-rates", Static).update(text)

    # --- drawing ------------------------------------------------------------------------------

    def watch_status(self, _status: str) -> None:
        if self.is_mounted:
            self._render_status()

    def status_segments(self) -> list[tuple[str, str, int]]:
        """The status line as (text, style, priority) pieces; the least important go first when narrow."""
        status = self.status
        pieces: list[tuple[str, str, int]] = []
        if self.total_steps:  # unknown until the run has started
            epochs = f"/{self.epochs_total}" if self.epochs_total else ""
            pieces.append((f"epoch {min(self.epoch + 1, self.epochs_total or self.epoch + 1)}{epochs}", "", 2))
            pieces.append((f"step {self.step:,}/{self.total_steps:,}", "", 0))
        if status == "starting" and self.phase is not None:
            phase, detail, since = self.phase
            detail = f" ({detail})" if detail else ""
            pieces.append((f"{phase}{detail} {_duration(time.time() - since)}", "italic", 0))
        elif status in ("running", "following"):
            pieces.append((f"{self.images_per_s:,.0f} img/s", "", 1))
            if self.ms_per_step:
                pieces.append((f"{self.ms_per_step:,.1f} ms/step", "", 3))
            pieces.append((f"ETA {_duration(self.eta_s)}", "", 0))
        elif status == "interrupted":
            pieces.append(("process gone: r resumes", "magenta", 0))
        if self.finished:
            pieces.append((f"test top-1 {self.finished.test_top1:.2f}%", "bold", 0))
        if self.process_note:
            pieces.append((self.process_note, "dim", 4))
        return pieces

    def _render_status(self) -> None:
        label = f" {self.status.upper()} "
        pieces = self.status_segments()
        width = self.content_region.width or self.app.size.width - 2
        # Drop the least important pieces until the line fits; what is left is never cut.
        while pieces and len(label) + sum(len(text) + 2 for text, _, _ in pieces) > width:
            least = max(range(len(pieces)), key=lambda i: (pieces[i][2], i))
            if pieces[least][2] == 0:
                break
            pieces.pop(least)
        line = Text()
        line.append(label, style=f"reverse {STATUS_STYLES.get(self.status, '')}")
        for text, style, _ in pieces:
            line.append("  ")
            line.append(text, style=style)
        self._set_text("#status-line", line)
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=max(self.total_steps, 1), progress=self.step)

    def _set_text(self, selector: str, content: str | Text) -> None:
        """Update a label only when its text changes, without a layout pass.

        These labels have a fixed height (app.tcss), so their size never changes; a
        layout pass of the whole screen per update cost tens of milliseconds of the
        process's CPU, which training threads then wait for.
        """
        if self._shown_text.get(selector) != content:
            self._shown_text[selector] = content
            self.query_one(selector, Static).update(content, layout=False)

    def redraw(self) -> None:
        """Bring everything on screen up to date (on mount, and when the tab is shown)."""
        if self.status == "starting" and self.phase is not None:
            self._dirty = True  # the phase's elapsed time moves on
        self.redraw_status()
        self.redraw_charts()

    def redraw_charts(self) -> None:
        if not self.is_on_screen:  # panels in hidden tabs wait and catch up when shown
            return
        lr = self.lr_history.last(SPARK_POINTS)
        if self.log_scale:
            lr = tuple(math.log10(v) for v in lr if v > 0)
        for selector, data in (("#lr-spark", list(lr)), ("#dropout-spark", list(self.dropout_history.last(SPARK_POINTS)))):
            if data != self._shown_text.get(selector):
                self._shown_text[selector] = data
                self.query_one(selector, Sparkline).data = data
        for chart in self.query(MetricChart):
            chart.redraw()  # only those with new points
        self._follow_epoch_table()

    def _follow_epoch_table(self) -> None:
        """Keep the newest epoch in view, unless the user scrolled back to older ones."""
        table = self.query_one("#epochs-table", DataTable)
        if table.scroll_y >= table.max_scroll_y:
            self._epochs_follow = True  # at the newest row: follow it
        elif table.scroll_y < self._epoch_scroll_seen:
            self._epochs_follow = False  # the user scrolled up: leave the table where they put it
        if self._epochs_follow and table.scroll_y < table.max_scroll_y:
            table.scroll_end(animate=False, immediate=True)
        self._epoch_scroll_seen = table.scroll_y

    def redraw_status(self) -> None:
        if not self._dirty or not self.is_on_screen:
            return
        self._dirty = False
        self._render_status()
        if self.lr_history.ys:
            scale = " (log)" if self.log_scale else ""
            self._set_text("#lr-label", f"learning rate{scale} {self.lr_history.ys[-1]:.4g}{self.lr_note}")
        if self.dropout_history.ys:
            self._set_text("#dropout-label", f"dropout mean {self.dropout_history.ys[-1]:.3f}{self.dropout_note}")

    def on_resize(self) -> None:
        self._render_status()  # what fits the new width

    def on_show(self) -> None:
        self.refresh_bindings()  # this tab's run is the one the keys act on now
