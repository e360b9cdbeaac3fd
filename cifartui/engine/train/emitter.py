"""What a run tells the world: metrics.jsonl, status.json, throttled StepMetrics and log lines.

`Emitter` owns the run's metrics file (one JSON line per event, written and flushed in
the training thread, so a line that is written survives a crash), the event bus the app
listens on, writes of status.json, the pace of step metrics (every `train.log_every`
steps, at most every MIN_EMIT_INTERVAL_S) and the one report of a failed write (a full
disk), which pauses the run. The trainer sends every event through `Trainer._emit`,
which lands in `Emitter.emit`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from cifartui.engine.runs import events as ev
from cifartui.engine.runs.folders import write_status

# Step metrics go out at most this often, whatever log_every says.
MIN_EMIT_INTERVAL_S = 0.1


class Emitter:
    """The run's outputs: events to metrics.jsonl and the bus, status.json, log lines, step metrics' pace."""

    def __init__(self, trainer: Any, bus: ev.EventBus, log: Callable[[str], None] | None):
        # `trainer` is the Trainer this serves (not imported here: trainer.py imports this module).
        self.trainer = trainer
        self.bus = bus
        self.log = log
        self.metrics_file = None
        self.write_problem: str | None = None  # the failed write reported, until the user resumes
        # The pace of StepMetrics, reset when a session of training starts.
        self.last_emit = time.monotonic()
        self.steps_since_emit = 0
        self.last_mark: tuple[int, float] | None = None  # (step, training seconds) of the previous emit
        self.session_start: tuple[int, float] = (0, 0.0)

    # --- files ------------------------------------------------------------------------------

    def open(self, run_dir: Path) -> None:
        self.metrics_file = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")

    def close(self) -> None:
        self.bus.close()
        if self.metrics_file is not None:
            try:
                self.metrics_file.close()
            except OSError:
                pass  # a full disk: what could be written was flushed line by line

    def emit(self, event: ev.Event) -> None:
        # metrics.jsonl is written here, in the training thread: events are few (step
        # metrics are throttled) and a line that is written is a line that survives a crash.
        if self.metrics_file is not None:
            try:
                self.metrics_file.write(json.dumps(event.to_json()) + "\n")
                self.metrics_file.flush()
            except OSError as error:
                self.bus.publish(event)
                self.report_write_problem(self.trainer.run_dir / "metrics.jsonl", error)
                return
        self.bus.publish(event)

    def status(self, status: str, **extra: Any) -> None:
        """Write status.json; a failure (a full disk) is reported once and pauses the run, never raises."""
        trainer = self.trainer
        if not trainer.dist.is_main:
            return
        try:
            write_status(trainer.run_dir, status, **extra)
        except OSError as error:
            self.report_write_problem(trainer.run_dir / "status.json", error)

    def report_write_problem(self, path: Path, error: OSError) -> None:
        if self.write_problem is not None:
            return
        saved = self.trainer.checkpoints.saved_step
        on_disk = ("the last checkpoint on disk is intact" if saved is not None
                   else "no checkpoint of this run is on disk yet")
        self.write_problem = (f"could not write {path}: {error.strerror or error}. Free some space, then "
                              f"resume, or stop ({on_disk}).")
        self.bus.publish(ev.CheckpointFailed(path=str(path), step=self.trainer.progress.step,
                                             error=self.write_problem))
        self.trainer.run_control.pause_on_fault(f"write failed: {self.write_problem}")

    def log_line(self, text: str) -> None:
        if self.log is not None:
            self.log(text)

    # --- step metrics -----------------------------------------------------------------------

    def start_session(self, step: int, train_seconds: float) -> None:
        """Training (re)starts here: rates are measured from this step and time on."""
        self.last_emit, self.steps_since_emit = time.monotonic(), 0
        self.session_start = (step, train_seconds)

    def step_taken(self) -> None:
        """One step done; StepMetrics go out when log_every steps and MIN_EMIT_INTERVAL_S have passed."""
        self.steps_since_emit += 1
        now = time.monotonic()
        if (self.steps_since_emit >= self.trainer.config.train.log_every
                and now - self.last_emit >= MIN_EMIT_INTERVAL_S):
            self.emit_step()
            self.last_emit, self.steps_since_emit = now, 0

    def emit_step(self) -> None:
        t = self.trainer
        p = t.progress
        start_step, start_seconds = self.session_start
        # Sync point: once per emitted StepMetrics. Under torchrun these are rank 0's own
        # images: emits are timed, so the processes cannot meet in a collective here.
        loss_sum, correct, count = t.step_state.window.tolist()
        t.step_state.window.zero_()
        elapsed = p.train_seconds + (time.perf_counter() - t._clock if t._clock else 0.0)
        session_steps = p.step - start_step
        rate = (session_steps * t.batch_size) / max(elapsed - start_seconds, 1e-9)
        # The current pace: steps and training time since the previous emit (pauses,
        # evaluations and checkpoints are outside the clock, so they do not count).
        previous_step, previous_elapsed = self.last_mark or (start_step, start_seconds)
        recent_steps, recent_seconds = p.step - previous_step, elapsed - previous_elapsed
        self.last_mark = (p.step, elapsed)
        ms_per_step = 1000.0 * recent_seconds / recent_steps if recent_steps > 0 and recent_seconds > 0 else 0.0
        recent_rate = t.batch_size * 1000.0 / ms_per_step if ms_per_step else rate
        per_step = ms_per_step / 1000.0 if ms_per_step else (
            (elapsed - start_seconds) / session_steps if session_steps else 0.0)
        t._emit(ev.StepMetrics(
            step=p.step, epoch=p.epoch, loss=loss_sum / count if count else float("nan"),
            top1=100.0 * correct / count if count else 0.0, lr=t.current_lr,
            images_per_s=rate, eta_s=per_step * (t.total_steps - p.step), total_steps=t.total_steps,
            recent_images_per_s=recent_rate, ms_per_step=ms_per_step))


__all__ = ["Emitter", "MIN_EMIT_INTERVAL_S"]
