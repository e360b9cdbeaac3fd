"""A queue directory on disk: its settings (queue.json), its entries and their state.

Reading a queue needs no lock and no PyTorch; the driver (queue_driver.py) changes
entries through `RunQueue.save` while it holds the queue's lock. The layout is told in
queue.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cifartui.config import RunConfig, to_plain
from cifartui.engine.orchestration.placement import MAX_PARALLEL, plan_slots
from cifartui.engine.orchestration.run_progress import RunProgress, read_progress
from cifartui.engine.runs.folders import (
    LOCK_NAME,
    RunBusy,
    RunDirError,
    RunLock,
    is_locked,
    read_status,
    write_json_atomic,
    write_text_atomic,
)

QUEUE_FORMAT = "cifartui-queue-1"
STATES = ("pending", "running", "waiting", "finished", "failed", "stopped", "interrupted")
ENDED_STATES = ("finished", "failed", "stopped")  # a later drive leaves these alone
# What `cifartui train` exits with when a signal stopped it after writing a checkpoint.
SIGNAL_EXIT_CODES = (129, 130, 143)
MAX_NODES_LOST = 3  # a run whose machine goes away more often than this waits for the next drive
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
    nodes_lost: int = 0  # times the machine training it went away (a Ray node lost), so it started again
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
                "message": self.message, "attempts": self.attempts, "nodes_lost": self.nodes_lost,
                "updated": time.time()}


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
        for name, kind in (("device", str), ("devices", str), ("data_dir", str), ("parallel", int)):
            value = settings.get(name)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                                      or (name == "parallel" and not 1 <= value <= MAX_PARALLEL)):
                raise QueueError(f"{directory / 'queue.json'}: damaged ('{name}' is {value!r}; expected "
                                 + (f"a number of runs from 1 to {MAX_PARALLEL}" if kind is int else "text")
                                 + " or null)")
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
                                   message=str(data.get("message", "")), attempts=int(data.get("attempts", 0)),
                                   nodes_lost=int(data.get("nodes_lost", 0)))
            except (KeyError, TypeError, ValueError, OverflowError) as error:  # OverflowError: 1e999 reads as inf
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
