"""The driver of a locked queue: one `cifartui train` child process per run, started in a free slot,
watched through its metrics file and settled by its exit code (the states are told in queue.py).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from cifartui.engine.orchestration.queue_store import (
    ENDED_STATES,
    EXIT_USAGE,
    MAX_NODES_LOST,
    SIGNAL_EXIT_CODES,
    QueueEntry,
    RunQueue,
    _find_run_name,
    load_summary,
    lock_holder,
)
from cifartui.engine.orchestration.run_progress import (
    MetricsTail,
    RunProgress,
    progress_update,
)
from cifartui.engine.runs.folders import is_locked, read_status


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

    A `launcher` starts runs elsewhere than as local children (ray_backend.RayLauncher):
    `start(entry, command)` gives a handle with a child process's poll, send_signal,
    kill and wait, plus `where` (the machine it runs on) and `lost` (why it ended with
    its machine rather than by itself: the run then starts again from its checkpoint).
    """

    def __init__(self, queue: RunQueue, slots: Sequence[str], *,
                 listener: Callable[[Any], None] = lambda event: None,
                 on_epoch: Callable[[QueueEntry], str | None] = lambda entry: None,
                 poll_s: float = 0.5, python: str = sys.executable, launcher: Any = None):
        self.queue = queue
        self.launcher = launcher
        self.slots = list(slots)
        self.listener = listener
        self.on_epoch = on_epoch
        self.poll_s = poll_s
        self.python = python
        self.data_dir = queue.settings.get("data_dir")
        self._children: dict[str, Any] = {}  # key -> subprocess.Popen, or the launcher's handle
        self._slot_of: dict[str, int] = {}
        self._tails: dict[str, MetricsTail] = {}
        self._stop_reason: dict[str, str] = {}  # entry key -> why the client stopped it
        self._lost: set[str] = set()  # entries whose machine went away while they trained
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
        how = f"resumed on {device}" if resume else f"started on {device}"
        if entry.key in self._lost:
            how = f"restarted after node lost; {how}"
        self._set_state(entry, "running", how)
        child_device = self.launcher.child_device if self.launcher is not None else device
        command = self._command(entry, child_device, resume)
        with entry.output_path.open("ab") as output:
            output.write(f"$ {' '.join(command)}\n".encode())
            output.flush()
            if self.launcher is not None:
                self._children[entry.key] = self.launcher.start(entry, command)
                self._slot_of[entry.key] = slot
                return
            self._children[entry.key] = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                env=self._child_environment(device), start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()))
        self._slot_of[entry.key] = slot

    def _command(self, entry: QueueEntry, device: str, resume: bool) -> list[str]:
        """The child's command line; a subclass may start an entry otherwise (PBT starts a branch)."""
        return child_command(entry, device, data_dir=self.data_dir, resume=resume, python=self.python)

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
            self._settle(entry, code, lost=getattr(child, "lost", None))

    def _settle(self, entry: QueueEntry, code: int, lost: str | None = None) -> None:
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
        elif lost is not None and reason is None:
            entry.nodes_lost += 1
            if self.stopping or entry.nodes_lost > MAX_NODES_LOST:
                self._startable.discard(entry.key)
                self._set_state(entry, "interrupted", f"{lost}; it resumes with the queue")
            else:  # started again at once, from its last checkpoint, wherever there is room
                self._lost.add(entry.key)
                self._set_state(entry, "interrupted", f"{lost}; it restarts from its last checkpoint")
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
        for key, child in list(self._children.items()):
            entry = self._entry(key)
            where = getattr(child, "where", None)
            if where and entry.device != where:
                entry.device = where
                self.queue.save(entry)
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
