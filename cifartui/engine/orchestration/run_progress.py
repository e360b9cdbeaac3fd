"""How far a queue's runs have got, read from each run's metrics.jsonl (never from the child)."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass
class RunProgress:
    """What a run's metrics.jsonl says so far; read by tailing the file, never from the child."""

    epochs_done: int = 0
    step: int = 0
    val_top1: dict[int, float] = field(default_factory=dict)  # epoch number (1-based) -> validation top-1

    @property
    def best_val_top1(self) -> float | None:
        return max(self.val_top1.values()) if self.val_top1 else None

    def best_until(self, epochs: int) -> float | None:
        values = [v for epoch, v in self.val_top1.items() if epoch <= epochs]
        return max(values) if values else None


def read_progress(run_dir: Path) -> RunProgress:
    progress = RunProgress()
    tail = MetricsTail(Path(run_dir) / "metrics.jsonl")
    for event in tail.read_new():
        progress_update(progress, event)
    return progress


class ProgressTails:
    """The progress of runs read again and again (a screen following sweeps): each read takes
    only the lines a run's metrics.jsonl gained since the last one, so a long run's file is
    read once, not at every look.

    Progress needs the epoch lines, a few in a thousand: only those are parsed, and of
    the step lines the last one of each read (a first read of 32 runs of 20,000 steps
    each takes about a seventh of the time of parsing every line; benchmarks/sweep_view_read.py).
    """

    def __init__(self) -> None:
        self._known: dict[Path, tuple[int, RunProgress]] = {}  # metrics.jsonl -> (bytes read, progress)

    def __call__(self, run_dir: Path) -> RunProgress:
        path = Path(run_dir) / "metrics.jsonl"
        offset, progress = self._known.get(path, (0, RunProgress()))
        try:
            with path.open("rb") as handle:
                if os.fstat(handle.fileno()).st_size < offset:  # made afresh (a run that started again)
                    offset, progress = 0, RunProgress()
                handle.seek(offset)
                data = handle.read()
        except OSError:
            data = b""
        end = data.rfind(b"\n")  # a line still being written waits for the next read
        last_step = None
        for line in data[:end].splitlines() if end >= 0 else []:
            if b'"EpochEnded"' in line:
                _fold_line(progress, line)
            elif b'"StepMetrics"' in line:
                last_step = line
        if last_step is not None:
            _fold_line(progress, last_step)
        self._known[path] = (offset + end + 1, progress)
        return copy.deepcopy(progress)  # the reader's own, so a later read does not change it under it


def _fold_line(progress: RunProgress, line: bytes) -> None:
    try:
        event = json.loads(line)
    except ValueError:
        return  # a line cut off by a crash
    if isinstance(event, dict):
        try:
            progress_update(progress, event)
        except (TypeError, ValueError):
            pass  # a damaged line: a field of the wrong type


def progress_update(progress: RunProgress, event: Mapping[str, Any]) -> bool:
    """Fold one metrics event into a run's progress; True when an epoch ended."""
    kind = event.get("event")
    if kind == "StepMetrics":
        progress.step = max(progress.step, int(event.get("step", 0)))
    elif kind == "EpochEnded":
        epoch = int(event.get("epoch", 0)) + 1
        progress.epochs_done = max(progress.epochs_done, epoch)
        progress.step = max(progress.step, int(event.get("step", 0)))
        value = event.get("val_top1")
        if isinstance(value, (int, float)):
            progress.val_top1[epoch] = float(value)
        return True
    return False


class MetricsTail:
    """Reads the complete lines appended to a metrics.jsonl since the last read."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []  # a line still being written
        self.offset += end + 1
        events = []
        for line in data[:end].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut off by a crash
            if isinstance(event, dict):
                events.append(event)
        return events
