"""A run's control channel: requests from other processes, as files in RUN_DIR/control/.

`cifartui control RUN_DIR pause|resume|checkpoint|stop|set|status`, and the app for a
run it did not start, write a request file there; the process that trains the run
takes it at once in a thread of its own (also while a slow step runs, or while paused),
and writes the reply beside it: a change of settings or a checkpoint is carried out at
the next step boundary, and the reply says "queued" when that is more than a few seconds away. The folder is created with mode 0700, so only the run's owner (and root) can put a
request in it, and requests from a file of another owner are ignored.

    control/ID.request.json   written by a client (temporary file, then renamed)
    control/ID.taken.json     the trainer has it (renamed: exactly one taker)
    control/ID.reply.json     the answer, which the client reads and removes

ID holds the client's process id. Replies nobody will read (their client died, gave
up or was never a client) are removed by the run: `remove_stale_files` runs when the
inbox opens and at most every REPLY_SWEEP_S while it takes requests.

A client that gets no answer in time withdraws its request by deleting it; if the
file is already gone, the trainer has it and the client waits for the answer. One
request is handled at a time, and changes are applied in the trainer's own thread in
the order they came, so two controllers at once cannot interleave their changes. This module does not import PyTorch.
"""

from __future__ import annotations

import json
import math
import os
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifartui.engine.runs.folders import is_locked, read_status

CONTROL_DIR = "control"
COMMANDS = ("pause", "resume", "checkpoint", "stop", "set", "status")
# A request older than this when the trainer first sees it was left by a client that gave up.
STALE_REQUEST_S = 120.0
# Replies (and half-written files) whose client is gone, or that nobody read for this long, are removed.
REPLY_KEEP_S = 3600.0
REPLY_SWEEP_S = 10.0
# At most this many replies are kept, the newest; a client waiting for an older one has long given up.
MAX_REPLIES = 64
# A request is a few hundred bytes; a file far larger is not one and is never read.
MAX_REQUEST_BYTES = 1 << 20


class ControlError(Exception):
    """A request could not be delivered or was refused; the message says why."""


class RunNotRunning(ControlError):
    """Nobody trains the run now, so nobody can answer."""


class RequestInterrupted(KeyboardInterrupt):
    """The client was interrupted while it waited; `taken` says whether the run had the request already
    (it may then still apply it) or it was withdrawn (nothing is applied)."""

    def __init__(self, taken: bool):
        super().__init__("taken" if taken else "withdrawn")
        self.taken = taken


@dataclass(frozen=True)
class Request:
    id: str
    command: str
    args: dict[str, Any]
    sent: float
    path: Path  # the taken file


def _write_private_json(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class ControlInbox:
    """The trainer's side: take requests, answer them."""

    def __init__(self, run_dir: Path):
        self.folder = Path(run_dir) / CONTROL_DIR
        self.folder.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.folder, 0o700)  # whatever the umask made of it
        for leftover in self.folder.glob("*.taken.json"):  # a process killed mid-request
            leftover.unlink(missing_ok=True)
        remove_stale_files(self.folder)
        self._swept = time.monotonic()

    def take(self) -> list[Request]:
        """The requests waiting now, oldest first; each is this process's alone once returned."""
        if time.monotonic() - self._swept >= REPLY_SWEEP_S:
            remove_stale_files(self.folder)
            self._swept = time.monotonic()
        try:
            names = sorted(entry.name for entry in os.scandir(self.folder) if entry.name.endswith(".request.json"))
        except OSError:
            return []
        requests = []
        for name in names:
            request_id = name[: -len(".request.json")]
            source = self.folder / name
            taken = self.folder / f"{request_id}.taken.json"
            try:
                info = os.lstat(source)
                if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid()
                        or info.st_size > MAX_REQUEST_BYTES):
                    source.unlink(missing_ok=True)  # not from this run's owner (or no request at all): never acted on
                    continue
                os.rename(source, taken)
            except OSError:
                continue  # withdrawn by its client, or taken by an earlier look
            try:
                data = json.loads(taken.read_text(encoding="utf-8"))
                command, args, sent = data["command"], data.get("args", {}), float(data.get("sent", 0.0))
                if not isinstance(command, str) or not isinstance(args, dict) or not math.isfinite(sent):
                    raise TypeError("malformed request")
            except (OSError, ValueError, KeyError, TypeError):
                self._answer(request_id, taken, {"ok": False, "error": "malformed request"})
                continue
            request = Request(request_id, command, args, sent, taken)
            if time.time() - sent > STALE_REQUEST_S:
                self.reply(request, {"ok": False, "error": "the request expired before the run could take it"})
                continue
            requests.append(request)
        return requests

    def reply(self, request: Request, answer: dict[str, Any]) -> None:
        self._answer(request.id, request.path, answer)

    def _answer(self, request_id: str, taken: Path, answer: dict[str, Any]) -> None:
        try:
            _write_private_json(self.folder / f"{request_id}.reply.json", answer)
        except OSError:
            pass  # a full disk: the client times out and says so
        taken.unlink(missing_ok=True)


def send(run_dir: Path, command: str, args: dict[str, Any] | None = None, *,
         timeout: float = 30.0) -> dict[str, Any]:
    """Deliver one request to the process training `run_dir` and return its answer.

    Raises RunNotRunning when nobody trains the run, ControlError when no answer came
    (the request is then withdrawn: nothing was applied) or the answer is a refusal.
    """
    run_dir = Path(run_dir)
    if command not in COMMANDS:
        raise ControlError(f"unknown command '{command}'; expected one of: {', '.join(COMMANDS)}")
    if not (run_dir / "config.json").is_file():
        raise ControlError(f"{run_dir}: not a cifartui run directory (no config.json)")
    folder = run_dir / CONTROL_DIR
    if not is_locked(run_dir):
        raise RunNotRunning(_not_running(run_dir))
    if not folder.is_dir():
        pid = read_status(run_dir).get("pid")
        who = f"another process (pid {pid})" if isinstance(pid, int) else "another process"
        raise ControlError(f"{run_dir}: {who} trains it but takes no requests (the run has no {CONTROL_DIR}/ "
                           "folder); pause or stop it where it was started")
    request_id = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    request_path = folder / f"{request_id}.request.json"
    reply_path = folder / f"{request_id}.reply.json"
    try:
        _write_private_json(request_path, {"command": command, "args": args or {}, "sent": time.time()})
    except OSError as error:
        raise ControlError(f"{folder}: cannot write a request: {error.strerror or error}") from None
    try:
        return _wait_for_reply(run_dir, request_path, reply_path, timeout)
    except KeyboardInterrupt:
        raise RequestInterrupted(taken=not _withdraw(request_path)) from None
    except BaseException:
        _withdraw(request_path)
        raise


def _withdraw(request_path: Path) -> bool:
    """Delete a request the run has not taken; False when it is gone already (the run has it)."""
    try:
        request_path.unlink()
    except FileNotFoundError:
        return False
    except OSError:
        pass
    return True


def _wait_for_reply(run_dir: Path, request_path: Path, reply_path: Path, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    taken_deadline: float | None = None
    while True:
        if reply_path.exists():
            try:
                answer = json.loads(reply_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                time.sleep(0.02)  # being renamed into place
                continue
            reply_path.unlink(missing_ok=True)
            if not isinstance(answer, dict):
                raise ControlError(f"{reply_path}: the answer is not a JSON object")
            if not answer.get("ok"):
                raise ControlError(str(answer.get("error") or "refused"))
            return answer
        now = time.monotonic()
        if taken_deadline is None and (now >= deadline or not is_locked(run_dir)):
            try:
                request_path.unlink()  # withdrawn before the run took it: nothing was applied
            except FileNotFoundError:
                taken_deadline = now + timeout  # the run has it: wait for the answer
            else:
                if not is_locked(run_dir):
                    raise RunNotRunning(_not_running(run_dir))
                raise ControlError(f"no answer from {run_dir} within {timeout:g} s (it may be loading data, "
                                   "evaluating or writing a checkpoint); nothing was applied, try again")
        if taken_deadline is not None and now >= taken_deadline:
            raise ControlError(f"{run_dir} took the request but did not answer within {2 * timeout:g} s; it may "
                               f"still apply at the next step: `cifartui control {run_dir} status` shows what is "
                               "in force")
        time.sleep(0.02)


def _client_pid(name: str) -> int | None:
    """The client's process id in a file name ID.reply.json, ID = TIME-PID-RANDOM; None if there is none."""
    parts = name.split(".", 1)[0].split("-")
    if len(parts) == 3 and parts[1].isdigit():
        return int(parts[1])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: it exists
        return True
    return True


def remove_stale_files(folder: Path, *, now: float | None = None) -> list[str]:
    """Remove the replies no client will read from a run's control folder; the names removed.

    A reply goes when the process that asked is gone, when its name carries no process
    (not written for a client of this module), or when it is older than REPLY_KEEP_S;
    beyond MAX_REPLIES the oldest go too. Half-written files (.NAME.PID.tmp) of a dead
    writer go as well. Requests are left to `ControlInbox.take`, which answers or drops them.
    """
    now = time.time() if now is None else now
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    replies = []
    for entry in entries:
        name = entry.name
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        age = now - info.st_mtime
        stale = False
        if name.endswith(".reply.json"):
            pid = _client_pid(name)
            stale = (pid is None and age > 1.0) or (pid is not None and not _alive(pid)) or age > REPLY_KEEP_S
            if not stale:
                replies.append((info.st_mtime, name))
        elif name.startswith(".") and name.endswith(".tmp"):
            writer = name.rsplit(".", 2)[-2]
            stale = age > STALE_REQUEST_S or (writer.isdigit() and not _alive(int(writer)) and age > 1.0)
        if stale:
            _remove(folder / name, removed)
    for _, name in sorted(replies)[:-MAX_REPLIES] if len(replies) > MAX_REPLIES else []:
        _remove(folder / name, removed)
    return removed


def _remove(path: Path, removed: list[str]) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError:
        return
    removed.append(path.name)


def _not_running(run_dir: Path) -> str:
    status = read_status(run_dir).get("status", "unknown")
    if status == "finished":
        advice = ""
    elif not (Path(run_dir) / "checkpoints" / "last.pt").is_file():
        advice = "; it wrote no checkpoint, so there is nothing to resume"
    else:
        advice = f"; `cifartui resume {run_dir}` continues it"
    return f"{run_dir} is not training now (status: {status}){advice}"


__all__ = ["ControlInbox", "Request", "send", "ControlError", "RunNotRunning", "RequestInterrupted",
           "remove_stale_files", "COMMANDS", "CONTROL_DIR"]
