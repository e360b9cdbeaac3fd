"""Run directories: where a run's config, metrics, checkpoints and status live.

    runs/<UTC time>-<preset>/
        config.json        the fully resolved RunConfig
        metrics.jsonl      one JSON object per event, append-only
        status.json        starting / running / paused / stopped / finished / failed, with the pid
        summary.json       written when the run finishes
        checkpoints/last.pt, checkpoints/best.pt
        .lock              locked (flock) by the one process that trains the run

Whether a run is being trained is decided by the lock alone, not by the pid in
status.json: a pid can be reused (after a container restart the new process may even
get the old one), and a process that was killed holds no lock.
"""

from __future__ import annotations

import errno
import json
import math
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


# A run folder's name is the UTC time, the preset's name and perhaps a counter; the
# preset's part is cut to this many bytes so that the whole stays under the 255 bytes
# file systems allow (the full name stays in config.json).
MAX_NAME_BYTES = 200


def new_run_dir(runs_dir: Path, preset: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in preset) or "run"
    safe = safe.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", errors="ignore")
    base = Path(runs_dir) / f"{stamp}-{safe}"
    candidate, counter = base, 2
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            if not Path(runs_dir).is_dir():
                raise RunDirError(f"{runs_dir}: the runs folder is not a folder") from None
            candidate = base.with_name(f"{base.name}-{counter}")
            counter += 1
        except OSError as error:
            raise RunDirError(f"{candidate}: cannot create the run folder: {error.strerror or error}") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file so that a reader sees the old content or the new, never part of it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


class RunDirError(Exception):
    """A run directory is missing or unreadable; the message names the file."""


class RunBusy(RunDirError):
    """Another process (or another run of this app) trains this run right now."""


LOCK_NAME = ".lock"
# Someone only looking (history, `cifartui runs`) holds the lock shared for a moment;
# a process that wants to train waits this long for such a look to end.
LOCK_PATIENCE_S = 1.0

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]


class RunLock:
    """The exclusive lock of a run directory, held for as long as a process trains the run.

    An OS lock (flock) on `RUN_DIR/.lock`: the kernel drops it when the process ends,
    however it ends, so a lock is never stale. Locks belong to an open file, so two
    threads of one process (two tabs of the app) exclude each other as two processes do.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, patience_s: float = LOCK_PATIENCE_S) -> "RunLock":
        """Take the lock, or raise RunBusy naming who holds it (RunDirError if it cannot be taken)."""
        if self._fd is not None:
            return self
        if not self.run_dir.is_dir():
            raise RunDirError(f"{self.run_dir}: no such run directory")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise RunDirError(f"{self.run_dir}: cannot lock the run directory to train it: "
                              f"{error.strerror or error} (is it read-only?)") from None
        if fcntl is None:  # pragma: no cover
            self._fd = fd
            return self
        deadline = time.monotonic() + patience_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise RunBusy(f"{self.run_dir} is being trained right now by {holder}; stop it first "
                                  f"(or `cifartui control {self.run_dir} stop`)") from None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the lock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"process {int(data['pid'])} on {data['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def is_locked(run_dir: Path) -> bool:
    """Whether some process holds the run's lock, i.e. trains it now. Never raises.

    It asks by taking a shared lock for an instant: a process that wants the exclusive
    lock at that very moment waits for it (LOCK_PATIENCE_S) rather than failing.
    """
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None:  # pragma: no cover
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # no lock file: nobody has trained it since locks existed, or it is unreadable
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock, if it was taken
    return False


def read_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunDirError(f"{path}: missing; is {run_dir} a cifartui run directory?")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise RunDirError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except (OSError, ValueError, RecursionError) as error:
        raise RunDirError(f"{path}: not readable JSON: {error}") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object (the run's settings), found {_json_kind(data)}")
    try:
        return from_mapping(RunConfig, data, str(path))
    except ConfigError as error:
        raise RunDirError(str(error)) from None
    except RecursionError:
        raise RunDirError(f"{path}: nested too deeply to be a run's settings") from None


def _json_kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "true or false", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    write_json_atomic(Path(run_dir) / "status.json", {
        "status": status, "pid": os.getpid(), "host": socket.gethostname(), "updated": time.time(), **extra})


LIVE_STATUSES = ("starting", "running", "paused")


def read_status(run_dir: Path, *, assume_unlocked: bool = False) -> dict[str, Any]:
    """The run's status; a live status whose run nobody trains any more reads as interrupted.

    `assume_unlocked` is for the process that holds the lock itself, about to train the run.
    Never raises: a status.json that is missing or damaged reads as "unknown".
    """
    path = Path(run_dir) / "status.json"
    try:
        status = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {"status": "unknown"}
    if not isinstance(status, dict) or not isinstance(status.get("status"), str):
        return {"status": "unknown"}
    if status["status"] in LIVE_STATUSES and (assume_unlocked or not is_locked(run_dir)):
        status["status"] = "interrupted"
    return status


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Events of metrics.jsonl; a partial or corrupt line (a crash mid-write) is skipped.

    A run without the file has no events; a file that exists but cannot be read is a
    RunDirError naming it.
    """
    path = Path(run_dir) / "metrics.jsonl"
    events = []
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    event = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if isinstance(event, dict) and isinstance(event.get("event"), str) and well_formed_event(event):
                    events.append(event)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise RunDirError(f"{path}: cannot read: {error.strerror or error}") from None
    return events


def well_formed_event(data: dict[str, Any]) -> bool:
    """Whether a metrics.jsonl object of a known event has every field, each of its type.

    Lines that are not (an edited or damaged file) are skipped like lines cut off by a
    crash, so that whoever reads the events can trust them. Unknown events pass: a
    newer cifartui may write more kinds.
    """
    from cifartui.engine.runs.events import EVENT_TYPES

    kind = EVENT_TYPES.get(data.get("event")) if isinstance(data.get("event"), str) else None
    if kind is None:
        return True
    for name, (expected, required) in _event_fields(kind).items():
        if name not in data:
            if required:
                return False
        elif not _of_type(data[name], expected) or (isinstance(data[name], dict)
                                                    and not _dict_content_ok(name, data[name])):
            return False
    return True


def _dict_content_ok(name: str, value: dict[str, Any]) -> bool:
    """The parts of an event's tables that readers format as numbers hold numbers."""
    if name in ("dropout_rates", "old", "new"):  # rates by dropout layer
        return all(_number(rate) is not None for rate in value.values())
    if name == "model_summary":
        return isinstance(value.get("name"), str) and _number(value.get("total_parameters")) is not None
    if name == "config":
        reference = value.get("reference", {})
        return isinstance(reference, dict) and all(
            reference.get(key) is None or _number(reference.get(key)) is not None for key in ("top1", "top5"))
    return True


_EVENT_FIELDS: dict[type, dict[str, tuple[Any, bool]]] = {}


def _event_fields(kind: type) -> dict[str, tuple[Any, bool]]:
    if kind not in _EVENT_FIELDS:
        import dataclasses
        import typing

        hints = typing.get_type_hints(kind)
        _EVENT_FIELDS[kind] = {
            f.name: (hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(kind)}
    return _EVENT_FIELDS[kind]


def _of_type(value: Any, expected: Any) -> bool:
    import typing

    options = typing.get_args(expected) if typing.get_origin(expected) is not None else (expected,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is bool and isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option in (str, dict, list) and isinstance(value, option):
            return True
    return False


def _number(value: Any) -> float | None:
    """A finite number from metrics.jsonl, or None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class RunInfo:
    path: Path
    preset: str
    status: str  # as in status.json, "interrupted", "unknown", or "broken" when config.json is unusable
    epochs_done: int
    epochs_total: int
    best_val_top1: float | None
    test_top1: float | None
    started: str
    problem: str = ""  # why the run is broken, naming the file


def describe_run(run_dir: Path) -> RunInfo:
    """What a run folder holds. Never raises: a run whose files are damaged is "broken"."""
    run_dir = Path(run_dir)
    try:
        started = datetime.fromtimestamp((run_dir / "config.json").stat().st_mtime, timezone.utc)
        started_text = started.strftime("%Y-%m-%d %H:%M")
    except (OSError, ValueError, OverflowError):
        started_text = ""
    try:
        config = read_config(run_dir)
        events = read_metrics(run_dir)
    except RunDirError as error:
        return RunInfo(run_dir, run_dir.name, "broken", 0, 0, None, None, started_text, problem=str(error))
    status = read_status(run_dir)
    epochs_done, best, test = 0, None, None
    epochs_total = config.train.epochs  # as launched; changes while training are in the metrics
    for event in events:
        if event["event"] in ("RunStarted", "SettingsChanged"):
            epochs_total = _epochs_target(event, epochs_total)
        elif event["event"] == "EpochEnded":
            epoch = _number(event.get("epoch"))
            if epoch is not None and 0 <= epoch < 2**62:
                epochs_done = max(epochs_done, int(epoch) + 1)
            value = _number(event.get("val_top1"))
            if value is not None and (best is None or value > best):
                best = value
        elif event["event"] == "RunFinished":
            test = _number(event.get("test_top1"))
    return RunInfo(run_dir, config.name, status["status"], epochs_done, epochs_total, best, test,
                   started_text)


def _epochs_target(event: dict[str, Any], current: int) -> int:
    """train.epochs as a RunStarted (a resume starts from its checkpoint's settings) or a SettingsChanged sets it."""
    if event["event"] == "RunStarted":
        train = event.get("config", {}).get("train") if isinstance(event.get("config"), dict) else None
        value = train.get("epochs") if isinstance(train, dict) else None
    else:
        changes = event.get("changes")
        pair = changes.get("train.epochs") if isinstance(changes, dict) else None
        value = pair[1] if isinstance(pair, list) and len(pair) == 2 else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else current


def list_runs(runs_dir: Path) -> tuple[list[RunInfo], list[str]]:
    """Runs under runs_dir, newest first, and a message for each that could not be read.

    A run whose files are damaged is listed too, with status "broken", so that it can
    be seen; its message names the file.
    """
    infos, problems = [], []
    root = Path(runs_dir)
    try:
        children = sorted(root.iterdir(), reverse=True) if root.is_dir() else []
    except OSError as error:
        return [], [f"{root}: cannot list the runs folder: {error.strerror or error}"]
    for child in children:
        try:
            is_run = child.is_dir() and (child / "config.json").exists()
        except OSError:
            continue
        if is_run:
            info = describe_run(child)
            infos.append(info)
            if info.problem:
                problems.append(info.problem)
    return infos, problems
