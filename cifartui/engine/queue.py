"""A durable queue of runs, each trained by its own `cifartui train` process.

A queue is a directory; everything it knows is on disk, written atomically, so the
process that drives it can die at any moment (kill -9, SIGHUP, a reboot) and a later
one carries on where it was:

    QUEUE_DIR/
        queue.json        what to run and where: the runs in order, device, parallel, data dir
        .lock             locked (flock) by the one process that drives the queue
        001/
            config.toml   the run's fully resolved recipe, frozen when the queue was made
            entry.json    the client's label, state, run directory, device, exit code, message
            output.log    the child's output
            summary.json  the child's --summary-json, once it finished
            <UTC time>-<preset>/   the run directory, made by the child
        002/ ...

A run's state is pending, running, waiting (another process trains its run directory),
finished, failed, stopped (by the client, e.g. early stopping; it keeps its checkpoints)
or interrupted (its process ended without finishing: the queue process was stopped or
killed, or someone stopped the child; the next drive resumes it from its checkpoint).

Children start in their own session, so a Ctrl-C at the terminal reaches the queue
process alone, which then stops each child exactly once; on Linux each child is also
told to stop (SIGTERM, so it writes a checkpoint) when the queue process dies, and a run
whose directory is still locked by a live process is waited for, never started twice.
What to run and how to judge results belongs to the clients (sweeps, reproductions).
"""

from __future__ import annotations

import copy
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cifartui.config import ConfigError, RunConfig, to_plain
from cifartui.engine.runs import (LOCK_NAME, RunBusy, RunDirError, RunLock, is_locked, read_status,
                                  write_json_atomic, write_text_atomic)

QUEUE_FORMAT = "cifartui-queue-1"
STATES = ("pending", "running", "waiting", "finished", "failed", "stopped", "interrupted")
ENDED_STATES = ("finished", "failed", "stopped")  # a later drive leaves these alone
# What `cifartui train` exits with when a signal stopped it after writing a checkpoint.
SIGNAL_EXIT_CODES = (129, 130, 143)
EXIT_USAGE = 2
TRASH = ".trash"  # where History puts deleted runs and sweeps


class QueueError(RunDirError):
    """A queue directory is missing, damaged, or cannot be driven as asked; the message names the file."""


class QueueBusy(QueueError):
    """Another process drives this queue right now."""


@dataclass(frozen=True)
class PlannedRun:
    """One run as a client plans it: the recipe to train and a label the client reads back."""

    config: RunConfig
    label: Mapping[str, Any]


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


@dataclass
class QueueEntry:
    """One run of the queue and its state, as entry.json and the run's files say."""

    key: str
    directory: Path
    label: dict[str, Any]
    epochs: int
    state: str = "pending"
    run_name: str | None = None
    device: str | None = None
    exit_code: int | None = None
    message: str = ""
    attempts: int = 0
    progress: RunProgress = field(default_factory=RunProgress)
    summary: dict[str, Any] | None = None
    recorded_state: str = "pending"  # the state entry.json holds

    @property
    def run_dir(self) -> Path | None:
        return self.directory / self.run_name if self.run_name else None

    @property
    def config_path(self) -> Path:
        return self.directory / "config.toml"

    @property
    def output_path(self) -> Path:
        return self.directory / "output.log"

    @property
    def summary_path(self) -> Path:
        return self.directory / "summary.json"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "epochs": self.epochs, "state": self.state,
                "run_dir": self.run_name, "device": self.device, "exit_code": self.exit_code,
                "message": self.message, "attempts": self.attempts, "updated": time.time()}


class RunQueue:
    """A queue directory: its settings and entries. Reading needs no lock; driving does."""

    def __init__(self, directory: Path, settings: dict[str, Any], entries: list[QueueEntry]):
        self.directory = Path(directory)
        self.settings = settings
        self.entries = entries
        self._lock: RunLock | None = None

    # Making and reading -------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, runs: Sequence[PlannedRun], *, kind: str, device: str = "auto",
               parallel: int | None = None, devices: str | None = None,
               data_dir: Path | None = None) -> "RunQueue":
        """Write a new queue into `directory` (existing and empty). queue.json goes last: a
        directory without it is a queue whose making was cut short, and is refused when opened."""
        directory = Path(directory)
        width = max(3, len(str(len(runs))))
        entries = []
        for index, run in enumerate(runs, start=1):
            key = f"{index:0{width}d}"
            entry_dir = directory / key
            entry_dir.mkdir()
            write_text_atomic(entry_dir / "config.toml", toml_document(to_plain(run.config)))
            entry = QueueEntry(key, entry_dir, dict(run.label), run.config.train.epochs)
            write_json_atomic(entry_dir / "entry.json", entry.to_dict())
            entries.append(entry)
        settings = {"format": QUEUE_FORMAT, "kind": kind, "created": time.time(), "device": device,
                    "parallel": parallel, "devices": devices,
                    "data_dir": str(data_dir) if data_dir is not None else None,
                    "entries": [e.key for e in entries]}
        write_json_atomic(directory / "queue.json", settings)
        return cls(directory, settings, entries)

    @classmethod
    def resume(cls, directory: Path, *, device: str | None, devices: str | None, parallel: int | None,
               data_dir: Path | None) -> tuple["RunQueue", list[str]]:
        """An interrupted queue, locked by this process, and its slots: what is given now wins over
        what the queue was made with (a data dir given now serves this drive only)."""
        queue = cls.open(directory)
        settings = queue.settings
        slots = plan_slots(device or settings.get("device") or "auto",
                           devices if devices is not None else settings.get("devices"),
                           parallel if parallel is not None else settings.get("parallel"))
        if data_dir is not None:
            settings["data_dir"] = str(data_dir)
        return queue.lock(), slots

    @classmethod
    def open(cls, directory: Path, *, progress: Callable[[Path], RunProgress] | None = None) -> "RunQueue":
        """Read a queue; an entry whose process is gone reads as interrupted (or finished, if it did).

        `progress` reads a run's progress from its directory (default: the whole
        metrics.jsonl); a reader that opens the queue again and again passes a
        `ProgressTails`, which reads only what each file gained since.
        """
        directory = Path(directory)
        settings = _read_json(directory / "queue.json", f"is {directory} a queue or sweep directory?")
        if settings.get("format") != QUEUE_FORMAT or not isinstance(settings.get("entries"), list):
            raise QueueError(f"{directory / 'queue.json'}: not a cifartui queue (expected format {QUEUE_FORMAT})")
        entries = []
        for key in settings["entries"]:
            if not isinstance(key, str) or not key.isdigit():
                raise QueueError(f"{directory / 'queue.json'}: bad entry name {key!r}")
            entry_dir = directory / key
            data = _read_json(entry_dir / "entry.json", "the queue's entry is damaged")
            try:
                entry = QueueEntry(key, entry_dir, dict(data["label"]), int(data["epochs"]),
                                   state=str(data["state"]), run_name=data.get("run_dir"),
                                   device=data.get("device"), exit_code=data.get("exit_code"),
                                   message=str(data.get("message", "")), attempts=int(data.get("attempts", 0)))
            except (KeyError, TypeError, ValueError) as error:
                raise QueueError(f"{entry_dir / 'entry.json'}: damaged ({error})") from None
            entry.recorded_state = entry.state
            if entry.state not in STATES:
                raise QueueError(f"{entry_dir / 'entry.json'}: unknown state {entry.state!r}")
            if entry.run_name is not None and (not isinstance(entry.run_name, str) or "/" in entry.run_name
                                               or entry.run_name in ("", ".", "..")):
                raise QueueError(f"{entry_dir / 'entry.json'}: bad run directory {entry.run_name!r}")
            if not entry.config_path.is_file():
                raise QueueError(f"{entry.config_path}: missing")
            entries.append(entry)
        queue = cls(directory, settings, entries)
        driven = is_locked(directory)
        for entry in entries:
            queue.refresh(entry, driven=driven, progress=progress or read_progress)
        return queue

    def refresh(self, entry: QueueEntry, *, driven: bool = True,
                progress: Callable[[Path], RunProgress] | None = None) -> None:
        """Bring an entry up to date with its run directory: run name, progress, summary.

        `driven=False` says nobody drives the queue: a run it shows as running or
        waiting is then judged by its own files and lock.
        """
        if entry.run_name is None:
            entry.run_name = _find_run_name(entry.directory)
        if entry.run_dir is not None:
            entry.progress = (progress or read_progress)(entry.run_dir)
        load_summary(entry)
        if not driven and entry.state not in ENDED_STATES:
            entry.state = self.state_on_disk(entry)

    @staticmethod
    def state_on_disk(entry: QueueEntry) -> str:
        """What a run's own files say, for an entry that no child of the queue trains."""
        run_dir = entry.run_dir
        if run_dir is None or not run_dir.is_dir():
            return "pending"
        if is_locked(run_dir):
            return "waiting"
        if read_status(run_dir).get("status") == "finished" and load_summary(entry) is not None:
            return "finished"  # its process finished it after the queue's driver was gone
        if (run_dir / "checkpoints" / "last.pt").is_file():
            return "interrupted"
        return "pending"  # it never wrote a checkpoint: it starts again

    def save(self, entry: QueueEntry) -> None:
        write_json_atomic(entry.directory / "entry.json", entry.to_dict())
        entry.recorded_state = entry.state

    # The driver's lock ----------------------------------------------------------------------

    def lock(self) -> "RunQueue":
        """Take the queue's lock, or raise QueueBusy naming the process that drives it."""
        lock = RunLock(self.directory)
        try:
            lock.acquire(patience_s=0.0)
        except RunBusy:
            raise QueueBusy(f"{self.directory} is being run right now by {lock_holder(self.directory)}; "
                            "one process drives a queue at a time") from None
        self._lock = lock
        return self

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def counts(self) -> dict[str, int]:
        counts = {state: 0 for state in STATES}
        for entry in self.entries:
            counts[entry.state] += 1
        return counts


def find_queue_dirs(runs_dir: Path, marker: str) -> list[Path]:
    """The folders of a runs directory that hold `marker` (a sweep's or reproduction's plan),
    newest first (their names start with the UTC time); the trash is not looked in."""
    root = Path(runs_dir)
    try:
        children = sorted(root.iterdir(), reverse=True) if root.is_dir() else []
    except OSError:
        return []
    found = []
    for child in children:
        try:
            if child.name != TRASH and child.is_dir() and (child / marker).is_file():
                found.append(child)
        except OSError:
            continue
    return found


def _read_json(path: Path, hint: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QueueError(f"{path}: missing; {hint}") from None
    except (OSError, ValueError) as error:
        raise QueueError(f"{path}: not readable JSON: {error}") from None
    if not isinstance(data, dict):
        raise QueueError(f"{path}: expected a JSON object")
    return data


def lock_holder(directory: Path) -> str:
    """Who holds a queue's or run's lock, as "process PID on HOST" (or "another process")."""
    try:
        data = json.loads((Path(directory) / LOCK_NAME).read_text(encoding="utf-8"))
        return f"process {int(data['pid'])} on {data['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def load_summary(entry: QueueEntry) -> dict[str, Any] | None:
    """The run's summary, once it finished: what its child wrote with --summary-json, or else the
    run directory's own summary.json (a child stopped between writing the one and the other)."""
    candidates = [entry.summary_path] + ([entry.run_dir / "summary.json"] if entry.run_dir is not None else [])
    for path in candidates:
        if entry.summary is not None:
            break
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        entry.summary = data if isinstance(data, dict) else None
    return entry.summary


def _find_run_name(entry_dir: Path) -> str | None:
    """The run directory a child made inside the entry's folder (the only one with a config)."""
    found = sorted(child.name for child in entry_dir.iterdir()
                   if child.is_dir() and (child / "config.json").is_file())
    return found[-1] if found else None


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


# Placement -------------------------------------------------------------------------------------


def plan_slots(device: str, devices: str | None = None, parallel: int | None = None) -> list[str]:
    """The device of each run slot: `parallel` runs at once on each chosen device.

    CPU: one run at a time unless told otherwise. GPUs (device auto or cuda): every
    visible GPU or those `devices` names ("0,2" or "cuda:0,cuda:2"), one run per GPU
    unless told otherwise; the slots alternate between GPUs so that the first runs
    spread out. A device of cuda:N keeps every run on that GPU.
    """
    if parallel is not None and parallel < 1:
        raise ConfigError("--parallel", "", f"expected a positive number of runs per device, got {parallel}")
    per_device = parallel or 1
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError("--device", "", f"unknown device '{device}'; expected auto, cpu, cuda or cuda:N")
    import torch  # only here: reading a queue needs no torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cpu" or (device == "auto" and not visible):
        if devices is not None:
            where = "train.device is 'cpu'" if device == "cpu" else "no CUDA GPU is visible"
            raise ConfigError("--devices", devices, f"names GPUs, but the runs go to the CPU ({where})")
        return ["cpu"] * per_device
    if not visible:
        raise ConfigError("--device", device, "no CUDA GPU is visible; use --device cpu or auto")
    if device.startswith("cuda:"):
        index = device.partition(":")[2]
        if not index.isdigit() or int(index) >= visible:
            raise ConfigError("--device", device, f"no such GPU: {visible} visible (cuda:0..cuda:{visible - 1})")
        if devices is not None:
            raise ConfigError("--devices", devices, f"conflicts with device '{device}'; use --device cuda or "
                              "auto to spread runs over GPUs")
        return [device] * per_device
    chosen = list(range(visible)) if devices is None else _parse_devices(devices, visible)
    return [f"cuda:{index}" for _ in range(per_device) for index in chosen]


def _parse_devices(text: str, visible: int) -> list[int]:
    chosen: list[int] = []
    for item in text.split(","):
        name = item.strip().removeprefix("cuda:")
        if not name.isdigit():
            raise ConfigError("--devices", text, f"'{item.strip()}' is not a GPU; expected GPU numbers such as "
                              "0,1 or cuda:0,cuda:1")
        index = int(name)
        if index >= visible:
            raise ConfigError("--devices", text, f"no GPU {index}: {visible} visible (0..{visible - 1})")
        if index in chosen:
            raise ConfigError("--devices", text, f"GPU {index} is named twice")
        chosen.append(index)
    return chosen


# Driving ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryChanged:
    """A run of the queue changed state (pending -> running -> finished, ...)."""

    key: str
    old: str
    new: str
    message: str


@dataclass(frozen=True)
class EntryEpochEnded:
    key: str
    epochs_done: int
    best_val_top1: float | None


def child_command(entry: QueueEntry, device: str, *, data_dir: str | None = None,
                  resume: bool = False, python: str = sys.executable) -> list[str]:
    """The `cifartui` command line that trains (or resumes) an entry's run on `device`."""
    if resume:
        assert entry.run_dir is not None
        command = [python, "-m", "cifartui.cli", "resume", str(entry.run_dir)]
    else:
        command = [python, "-m", "cifartui.cli", "train", str(entry.config_path), "--runs-dir", str(entry.directory)]
    command += ["--device", device, "--summary-json", str(entry.summary_path)]
    if data_dir:
        command += ["--data-dir", data_dir]
    return command


class QueueRunner:
    """Drives a locked queue: starts runs in free slots, watches them, settles them as they end.

    Everything happens on the calling thread, in `run()`, which polls. `stop()` may be
    called from a signal handler: it only records the request.
    """

    def __init__(self, queue: RunQueue, slots: Sequence[str], *,
                 listener: Callable[[Any], None] = lambda event: None,
                 on_epoch: Callable[[QueueEntry], str | None] = lambda entry: None,
                 poll_s: float = 0.5, python: str = sys.executable):
        self.queue = queue
        self.slots = list(slots)
        self.listener = listener
        self.on_epoch = on_epoch
        self.poll_s = poll_s
        self.python = python
        self.data_dir = queue.settings.get("data_dir")
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._slot_of: dict[str, int] = {}
        self._tails: dict[str, MetricsTail] = {}
        self._stop_reason: dict[str, str] = {}  # entry key -> why the client stopped it
        self._stop_requests = 0
        self._stops_sent = 0
        # Resumed at most once per drive: a run someone else interrupts is not restarted behind their back.
        self._startable = {e.key for e in queue.entries if e.state in ("pending", "interrupted", "waiting")}

    @property
    def stopping(self) -> bool:
        return self._stop_requests > 0

    def stop(self) -> None:
        """Stop the queue: each child checkpoints and ends; a second call makes them leave at once."""
        self._stop_requests += 1

    def stop_entry(self, key: str, reason: str) -> None:
        """Stop one running run for the client (it keeps its checkpoints); it ends as `stopped`."""
        child = self._children.get(key)
        if child is not None and key not in self._stop_reason:
            self._stop_reason[key] = reason
            _signal(child, signal.SIGTERM)

    def run(self) -> None:
        try:
            for entry in self.queue.entries:
                if entry.run_dir is not None:
                    self._tail(entry)
                if entry.state != entry.recorded_state:  # what happened while nobody drove the queue
                    state, entry.state = entry.state, entry.recorded_state
                    self._set_state(entry, state, self._found_message(entry, state))
            while True:
                self._forward_stop()
                self._reap()
                self._watch()
                if not self.stopping:
                    self._start_free_slots()
                if not self._children and (self.stopping or not self._has_work()):
                    return
                time.sleep(self.poll_s)
        finally:
            self._end_children()

    # -- the loop's steps

    def _forward_stop(self) -> None:
        while self._stops_sent < min(self._stop_requests, 2):
            for child in self._children.values():
                _signal(child, signal.SIGTERM)
            self._stops_sent += 1

    def _has_work(self) -> bool:
        return any(e.key in self._startable and e.state in ("pending", "interrupted", "waiting")
                   for e in self.queue.entries)

    def _start_free_slots(self) -> None:
        taken = set(self._slot_of.values())
        free = [slot for slot in range(len(self.slots)) if slot not in taken]
        for entry in self.queue.entries:
            if entry.key not in self._startable or entry.key in self._children:
                continue
            state = self.queue.state_on_disk(entry)
            message = self._waiting_message(entry) if state == "waiting" else entry.message
            if (state, message) != (entry.state, entry.message):
                self._set_state(entry, state, message)
            if state in ENDED_STATES:
                self._startable.discard(entry.key)
            elif state != "waiting" and free:
                self._start(entry, free.pop(0))

    def _found_message(self, entry: QueueEntry, state: str) -> str:
        return {"waiting": self._waiting_message(entry),
                "interrupted": "its process ended without finishing; it resumes from its last checkpoint",
                "pending": "its process ended before a checkpoint; it starts again"}.get(state, "")

    def _waiting_message(self, entry: QueueEntry) -> str:
        return f"its run is being trained by {lock_holder(entry.run_dir)}" if entry.run_dir else ""

    def _start(self, entry: QueueEntry, slot: int) -> None:
        device = self.slots[slot]
        run_dir = entry.run_dir
        resume = run_dir is not None and (run_dir / "checkpoints" / "last.pt").is_file()
        if run_dir is not None and not resume:
            shutil.rmtree(run_dir)  # it never reached a checkpoint: nothing to keep, start afresh
            entry.run_name = None
            entry.progress = RunProgress()
        entry.device = device
        entry.attempts += 1
        entry.exit_code = None
        entry.summary_path.unlink(missing_ok=True)
        entry.summary = None
        self._set_state(entry, "running", f"resumed on {device}" if resume else f"started on {device}")
        command = child_command(entry, device, data_dir=self.data_dir, resume=resume, python=self.python)
        with entry.output_path.open("ab") as output:
            output.write(f"$ {' '.join(command)}\n".encode())
            output.flush()
            self._children[entry.key] = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                env=self._child_environment(device), start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()))
        self._slot_of[entry.key] = slot

    def _child_environment(self, device: str) -> dict[str, str]:
        env = dict(os.environ)
        cpu_slots = self.slots.count("cpu")
        if device == "cpu" and cpu_slots > 1 and "OMP_NUM_THREADS" not in env:
            # Runs sharing the CPU split its cores instead of each claiming all of them.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_slots))
        return env

    def _reap(self) -> None:
        for key, child in list(self._children.items()):
            code = child.poll()
            if code is None:
                continue
            del self._children[key]
            del self._slot_of[key]
            entry = self._entry(key)
            self._settle(entry, code)

    def _settle(self, entry: QueueEntry, code: int) -> None:
        if entry.run_name is None:
            entry.run_name = _find_run_name(entry.directory)
        self._tail(entry)
        load_summary(entry)
        entry.exit_code = code
        reason = self._stop_reason.pop(entry.key, None)
        finished_on_disk = entry.run_dir is not None and read_status(entry.run_dir).get("status") == "finished"
        if entry.summary is not None and (code == 0 or finished_on_disk):
            self._startable.discard(entry.key)
            self._set_state(entry, "finished", "")
        elif code in SIGNAL_EXIT_CODES or code < 0:
            if reason is not None:
                self._startable.discard(entry.key)
                self._set_state(entry, "stopped", reason)
            elif self.stopping:
                self._set_state(entry, "interrupted", "the queue was stopped; it resumes with the queue")
            else:
                self._startable.discard(entry.key)
                how = _signal_name(-code) if code < 0 else f"exit code {code}"
                self._set_state(entry, "interrupted", f"stopped from outside ({how}); it resumes with the queue")
        elif code == EXIT_USAGE and entry.run_dir is not None and is_locked(entry.run_dir):
            self._set_state(entry, "waiting", self._waiting_message(entry))  # someone took it meanwhile
        else:
            self._startable.discard(entry.key)
            self._set_state(entry, "failed", _last_error_line(entry.output_path) or f"exit code {code}")

    def _watch(self) -> None:
        for key in list(self._children):
            entry = self._entry(key)
            if entry.run_name is None:
                entry.run_name = _find_run_name(entry.directory)
                if entry.run_name is None:
                    continue
                self.queue.save(entry)
            if self._tail(entry) and key not in self._stop_reason:
                reason = self.on_epoch(entry)
                if reason:
                    self.stop_entry(key, reason)

    def _tail(self, entry: QueueEntry) -> bool:
        """Read what the entry's run appended; True when an epoch ended."""
        run_dir = entry.run_dir
        if run_dir is None:
            return False
        tail = self._tails.get(entry.key)
        if tail is None or tail.path.parent != run_dir:
            tail = self._tails[entry.key] = MetricsTail(run_dir / "metrics.jsonl")
            entry.progress = RunProgress()
        epoch_ended = False
        for event in tail.read_new():
            epoch_ended |= progress_update(entry.progress, event)
        if epoch_ended:
            self.listener(EntryEpochEnded(entry.key, entry.progress.epochs_done, entry.progress.best_val_top1))
        return epoch_ended

    def _set_state(self, entry: QueueEntry, state: str, message: str) -> None:
        old, old_message = entry.state, entry.message
        entry.state, entry.message = state, message
        self.queue.save(entry)
        if (old, old_message) != (state, message):
            self.listener(EntryChanged(entry.key, old, state, message))

    def _entry(self, key: str) -> QueueEntry:
        return next(e for e in self.queue.entries if e.key == key)

    def _end_children(self) -> None:
        """On the way out (normally none are left; after an error in this process, stop them cleanly)."""
        if not self._children:
            return
        for child in self._children.values():
            _signal(child, signal.SIGTERM)
        for key, child in list(self._children.items()):
            try:
                code = child.wait(timeout=120)
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait()
            del self._children[key]
            self._stop_requests = max(self._stop_requests, 1)
            self._settle(self._entry(key), code)


def _signal(child: subprocess.Popen[bytes], number: int) -> None:
    try:
        child.send_signal(number)
    except ProcessLookupError:
        pass


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_LIBC: Any = None


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to send the child SIGTERM when this process dies.

    SIGTERM, not SIGKILL: `cifartui train` answers it by writing a checkpoint, so a
    queue process killed with -9 leaves runs that resume exactly. Elsewhere the child
    outlives the queue process; the next drive waits for its lock instead.
    """
    global _LIBC
    if not sys.platform.startswith("linux"):
        return None
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: no loading between fork and exec
        except OSError:
            return None
    prctl = _LIBC.prctl
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG

    def hook() -> None:
        prctl(set_parent_death_signal, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request was made
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def _last_error_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        text = line.strip()
        if text.startswith("error:"):
            return text.removeprefix("error:").strip()
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return ""


# Small file helpers ----------------------------------------------------------------------------


def toml_document(table: Mapping[str, Any]) -> str:
    """A TOML file for a plain config (as `to_plain` gives), one top-level key per line."""
    return "".join(f"{key} = {toml_value(value)}\n" for key, value in table.items())


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # round-trips exactly; configs hold no inf or nan
    if isinstance(value, str):
        # JSON's escapes are TOML's, except that TOML also wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")  # a programming error


__all__ = ["RunQueue", "QueueRunner", "QueueEntry", "PlannedRun", "RunProgress", "ProgressTails", "QueueError",
           "QueueBusy", "EntryChanged", "EntryEpochEnded", "plan_slots", "child_command", "lock_holder", "STATES",
           "ENDED_STATES"]
