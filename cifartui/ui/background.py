"""Runs that outlive the app: trained by a `cifartui train` process of their own, which the app follows.

A run started in the background trains in a child process in a session of its own,
so neither quitting the app nor a dropped SSH connection (SIGHUP to the terminal's
processes) stops it. The app follows it like any run another process trains (its
metrics.jsonl and status.json) and acts on it through the run's control channel
(pause, resume, checkpoint, stop, settings). `detached.json` in the run directory
marks it, so that the next `cifartui` opens it again in a tab while it trains.
A sweep the app starts (or resumes) is driven the same way, by a `cifartui sweep
--resume` process of its own (`start_driver`). This module does not import PyTorch or
Textual.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cifartui.config import RunConfig
from cifartui.engine.api import drive_in_background, is_locked, toml_document, write_text_atomic

MARKER = "detached.json"
LAUNCH_FILE = "launch.toml"
OUTPUT_FILE = "output.log"

# The sweep processes this app started, by sweep directory. They run in sessions of their
# own and outlive the app; a thread per process reaps it when it ends.
_drivers: dict[Path, Any] = {}


def start_driver(directory: Path) -> Any:
    """Drive a sweep with a `cifartui sweep --resume` process of its own; it outlives the app."""
    process = drive_in_background(directory)
    _drivers[Path(directory)] = process
    threading.Thread(target=process.wait, name=f"cifartui-reap-{process.pid}", daemon=True).start()
    return process


def driver_started_here(directory: Path) -> Any | None:
    return _drivers.get(Path(directory))


def over_ssh(environment: dict[str, str] | None = None) -> bool:
    """Whether this app runs in an SSH session, where runs default to training in the background."""
    environment = os.environ if environment is None else environment
    return bool(environment.get("SSH_CONNECTION") or environment.get("SSH_TTY"))


def start(config: RunConfig | None, run_dir: Path, *, data_dir: Path | None, resume: bool = False,
          device: str | None = None) -> subprocess.Popen:
    """Start training `run_dir` in a process of its own; `config` for a new run, None to resume one.

    The child's output goes to RUN_DIR/output.log. It does not die with the app: it has
    its own session (no SIGHUP from the terminal) and no pipes to the app.
    """
    run_dir = Path(run_dir)
    command = [sys.executable, "-m", "cifartui.cli"]
    if resume:
        command += ["resume", str(run_dir)]
    else:
        assert config is not None
        launch = run_dir / LAUNCH_FILE
        write_text_atomic(launch, toml_document(config.to_dict()))
        command += ["train", str(launch), "--run-dir", str(run_dir)]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    if device is not None:
        command += ["--device", device]
    return _spawn(command, run_dir)


def _spawn(command: list[str], run_dir: Path) -> subprocess.Popen:
    with (run_dir / OUTPUT_FILE).open("ab") as output:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                 start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    write_text_atomic(run_dir / MARKER, json.dumps({"pid": child.pid, "started": time.time(),
                                                    "command": command[3:]}) + "\n")
    return child


def start_branch(parent: Path, checkpoint: Path, changes: dict[str, Any], run_dir: Path, *,
                 data_dir: Path | None) -> subprocess.Popen:
    """Start `cifartui branch` into `run_dir` in a process of its own, as `start` does a run."""
    command = [sys.executable, "-m", "cifartui.cli", "branch", str(parent), "--checkpoint", Path(checkpoint).stem,
               "--run-dir", str(run_dir)]
    for key, value in changes.items():
        command += ["--set", f"{key}={json.dumps(value)}"]  # JSON's numbers, strings and lists read as TOML
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    return _spawn(command, Path(run_dir))


def live_detached_runs(runs_dir: Path) -> list[Path]:
    """Runs started in the background that are still training (their process holds the run's lock)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = []
    try:
        children = sorted(root.iterdir())
    except OSError:
        return []
    for child in children:
        if (child / MARKER).is_file() and is_locked(child):
            found.append(child)
    return found


def last_output(run_dir: Path, lines: int = 3) -> str:
    """The end of a background run's output (for a run that ended before it said anything else)."""
    try:
        text = (Path(run_dir) / OUTPUT_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def describe_answer(command: str, answer: dict[str, Any]) -> str:
    """A control channel's answer in a line, for a notification."""
    step = answer.get("step")
    at = f" at step {step:,}" if isinstance(step, int) else ""
    if command == "pause" and answer.get("state") == "pausing":
        return f"pausing: in a long step{at}, it pauses when the step ends"
    if command == "pause":
        return f"paused{at}"
    if command == "resume":
        return f"resumed{at}"
    if command == "stop":
        return f"stopping{at}, after a checkpoint"
    if command == "checkpoint":
        return f"checkpoint written{at}"
    return f"done{at}"


__all__ = ["over_ssh", "start", "live_detached_runs", "last_output", "describe_answer", "start_driver", "driver_started_here",
           "MARKER"]
