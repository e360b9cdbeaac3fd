"""What a run reports: small frozen dataclasses of plain Python values, never tensors.

Facts are past tense. Every event is one line of `metrics.jsonl` (`to_json`), and
`EventBus` hands events to listeners on its own thread, so a slow listener never
slows training: queued `StepMetrics` are coalesced (only the newest waits), every
other event is delivered.

Every `epoch` field is the index of the epoch in progress, counted from 0 (the field of
metrics.jsonl since its first version); every text a person reads (the app, the log
lines of `train`, the replies of `control`) shows it counted from 1, as epoch + 1.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Event:
    time: float = field(default_factory=time.time, kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class RunStarted(Event):
    run_dir: str
    config: dict
    model_summary: dict
    device: str
    step: int
    epoch: int
    total_steps: int
    steps_per_epoch: int
    train_size: int
    val_size: int
    test_size: int
    resumed: bool
    dropout_rates: dict
    # A branch starts from a checkpoint of another run: that run's directory and step.
    parent: str = ""
    parent_step: int = -1
    graphs: str = ""  # how steps run on a GPU: "cuda graphs", or why they run eagerly


@dataclass(frozen=True)
class PhaseStarted(Event):
    """What a run is busy with before and around its first steps, which can take a while."""

    phase: str  # "loading data", "building model", "warming up"
    detail: str = ""


@dataclass(frozen=True)
class StepMetrics(Event):
    step: int
    epoch: int
    loss: float
    top1: float
    lr: float
    images_per_s: float  # since this session of the run started
    eta_s: float  # from the current rate
    total_steps: int
    # Since the previous StepMetrics: what the run is doing now, not on average.
    recent_images_per_s: float = 0.0
    ms_per_step: float = 0.0


@dataclass(frozen=True)
class EpochEnded(Event):
    epoch: int
    step: int
    train_loss: float
    train_top1: float
    val_loss: float | None
    val_top1: float | None
    val_top5: float | None
    lr: float
    seconds: float


@dataclass(frozen=True)
class LRChanged(Event):
    step: int
    epoch: int
    old: float
    new: float
    reason: str


@dataclass(frozen=True)
class SettingsChanged(Event):
    """Settings changed while the run trains: by the app, the control channel or a resume."""

    step: int
    epoch: int
    source: str  # "app", "control", "resume"
    changes: dict  # key -> [old, new]


@dataclass(frozen=True)
class DropoutChanged(Event):
    step: int
    epoch: int
    old: dict
    new: dict


@dataclass(frozen=True)
class CheckpointSaved(Event):
    path: str
    step: int
    epoch: int
    reason: str


@dataclass(frozen=True)
class CheckpointFailed(Event):
    path: str
    step: int
    error: str


@dataclass(frozen=True)
class RunPaused(Event):
    step: int
    epoch: int
    reason: str
    # False when the run paused itself (a non-finite loss, a failed write, out of memory);
    # headless, such a pause stops the run, while a pause someone asked for waits for resume.
    requested: bool = True


@dataclass(frozen=True)
class RunResumed(Event):
    step: int
    epoch: int


@dataclass(frozen=True)
class LossNotFinite(Event):
    step: int
    epoch: int
    loss: float
    message: str


@dataclass(frozen=True)
class MemoryExhausted(Event):
    step: int
    epoch: int
    message: str


@dataclass(frozen=True)
class RunStopped(Event):
    step: int
    epoch: int
    reason: str
    checkpoint: str  # written at this stop; "" when it could not be
    saved_step: int = -1  # the step of the checkpoint on disk (-1: none yet)


@dataclass(frozen=True)
class RunFinished(Event):
    test_loss: float
    test_top1: float
    test_top5: float
    best_val_top1: float | None
    best_val_loss: float | None
    epochs: int
    steps: int
    images_per_s: float
    seconds: float


@dataclass(frozen=True)
class RunFailed(Event):
    error: str
    error_type: str
    step: int
    epoch: int


EVENT_TYPES = {cls.__name__: cls for cls in (
    PhaseStarted, RunStarted, StepMetrics, EpochEnded, LRChanged, SettingsChanged, DropoutChanged, CheckpointSaved, CheckpointFailed,
    RunPaused, RunResumed, LossNotFinite, MemoryExhausted, RunStopped, RunFinished, RunFailed)}

Listener = Callable[[Event], None]


class EventBus:
    """Delivers events to listeners on one daemon thread; `publish` never blocks."""

    def __init__(self, listeners: list[Listener] | None = None):
        self.listeners = list(listeners or [])
        self._queue: deque[Event] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._deliver, name="cifartui-events", daemon=True)
        self._thread.start()

    def publish(self, event: Event) -> None:
        with self._ready:
            if isinstance(event, StepMetrics) and self._queue and isinstance(self._queue[-1], StepMetrics):
                self._queue[-1] = event  # the listener is behind: only the newest step matters
            else:
                self._queue.append(event)
            self._ready.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout)

    def _deliver(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
                event = self._queue.popleft()
            for listener in self.listeners:
                try:
                    listener(event)
                except Exception as error:  # a broken listener must not take the run down
                    self.errors.append(error)
