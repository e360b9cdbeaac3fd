"""Run directories: where a run's config, metrics, checkpoints and status live.

    runs/<UTC time>-<preset>/
        config.json        the fully resolved RunConfig
        metrics.jsonl      one JSON object per event, append-only
        status.json        running / paused / stopped / finished / failed, with the pid
        summary.json       written when the run finishes
        checkpoints/last.pt, checkpoints/best.pt
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cifartui.config import ConfigError, RunConfig, from_mapping


def default_runs_dir() -> Path:
    return Path(os.environ.get("CIFARTUI_RUNS") or "runs")


def new_run_dir(runs_dir: Path, preset: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in preset) or "run"
    base = Path(runs_dir) / f"{stamp}-{safe}"
    candidate, counter = base, 2
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            candidate = base.with_name(f"{base.name}-{counter}")
            counter += 1


def write_json_atomic(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class RunDirError(Exception):
    """A run directory is missing or unreadable; the message names the file."""


def read_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunDirError(f"{path}: missing; is {run_dir} a cifartui run directory?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunDirError(f"{path}: not readable JSON: {error}") from None
    try:
        return from_mapping(RunConfig, data, str(path))
    except ConfigError as error:
        raise RunDirError(str(error)) from None


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    write_json_atomic(Path(run_dir) / "status.json", {
        "status": status, "pid": os.getpid(), "host": socket.gethostname(), "updated": time.time(), **extra})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status; a running or paused run whose process is gone reads as interrupted."""
    path = Path(run_dir) / "status.json"
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"status": "unknown"}
    if (status.get("status") in ("running", "paused") and status.get("host") == socket.gethostname()
            and isinstance(status.get("pid"), int) and not _pid_alive(status["pid"])):
        status["status"] = "interrupted"
    return status


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Events of metrics.jsonl; a partial or corrupt line (a crash mid-write) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    events = []
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and "event" in event:
                    events.append(event)
    except FileNotFoundError:
        pass
    return events


@dataclass(frozen=True)
class RunInfo:
    path: Path
    preset: str
    status: str
    epochs_done: int
    epochs_total: int
    best_val_top1: float | None
    test_top1: float | None
    started: str


def describe_run(run_dir: Path) -> RunInfo:
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    status = read_status(run_dir)
    epochs_done, best, test = 0, None, None
    for event in read_metrics(run_dir):
        if event["event"] == "EpochEnded":
            epochs_done = max(epochs_done, int(event.get("epoch", 0)) + 1)
            value = event.get("val_top1")
            if value is not None and (best is None or value > best):
                best = value
        elif event["event"] == "RunFinished":
            test = event.get("test_top1")
    started = datetime.fromtimestamp((run_dir / "config.json").stat().st_mtime, timezone.utc)
    return RunInfo(run_dir, config.name, status.get("status", "unknown"), epochs_done,
                   config.train.epochs, best, test, started.strftime("%Y-%m-%d %H:%M"))


def list_runs(runs_dir: Path) -> tuple[list[RunInfo], list[str]]:
    """Runs under runs_dir, newest first, and a message for each directory that could not be read."""
    infos, problems = [], []
    root = Path(runs_dir)
    if not root.is_dir():
        return [], []
    for child in sorted(root.iterdir(), reverse=True):
        if child.is_dir() and (child / "config.json").exists():
            try:
                infos.append(describe_run(child))
            except RunDirError as error:
                problems.append(str(error))
    return infos, problems
