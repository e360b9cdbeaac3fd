"""What every command shares: exit codes, the errors that are the user's to fix, small formatters."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PAUSED_HEADLESS = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
if hasattr(signal, "SIGHUP"):
    SIGNAL_EXIT[signal.SIGHUP] = 129

# Exceptions that mean a mistake in the input, by the module that defines them.
USER_ERRORS = {
    "cifartui.config": ("ConfigError",),
    "cifartui.engine.runs.checkpoint": ("CheckpointError",),
    "cifartui.engine.train.data": ("DataError",),
    "cifartui.engine.train.inspect": ("InspectError",),
    "cifartui.engine.train.models": ("ModelError",),
    "cifartui.engine.runs.folders": ("RunDirError",),
    "cifartui.engine.train.trainer": ("DeviceError", "ResumeRefused"),
    "cifartui.ui.graphics": ("GraphicsError",),
    "cifartui.cli.common": ("OutputPathError",),
}


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a mistake in the input: one message, exit 2, no traceback.

    Only modules already imported are asked: an exception cannot come from a module
    that never ran. Importing here would be wrong, because this is evaluated in an
    `except` clause, also while a KeyboardInterrupt propagates out of a half-finished
    `import torch`; importing torch again then crashes the interpreter.
    """
    found: list[type[BaseException]] = []
    for module_name, names in USER_ERRORS.items():
        module = sys.modules.get(module_name)
        for name in names:
            kind = getattr(module, name, None)
            if isinstance(kind, type) and issubclass(kind, BaseException):
                found.append(kind)
    return tuple(found)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


class OutputPathError(ValueError):
    """A file or folder the command would write cannot be written; the message names it."""


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def path_kind(path: Path) -> str:
    """"folder", "file", "missing", or why the path cannot even be looked at."""
    try:
        return "folder" if path.is_dir() else "file" if path.exists() else "missing"
    except OSError as error:  # a name too long, a loop of links, ...
        return _reason(error)


def _folder_problem(path: Path) -> str:
    """Why files cannot be written in folder `path` (created when missing), or "" when they can.

    Found out by writing: permissions, read-only mounts and pseudo file systems all
    answer the same way then, also for root.
    """
    kind = path_kind(path)
    if kind == "file":
        return f"{path} is a file, not a folder"
    if kind not in ("folder", "missing"):
        return kind
    if kind == "missing":
        for parent in path.parents:
            parent_kind = path_kind(parent)
            if parent_kind == "file":
                return f"{parent} is a file, not a folder"
            if parent_kind == "folder":
                break
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            return f"cannot create it: {_reason(error)}"
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".cifartui-write-test-", dir=path)
    except OSError as error:
        return f"cannot write into it: {_reason(error)}"
    os.close(descriptor)
    os.unlink(probe)
    return ""


def check_output_dir(path: Path, what: str) -> Path:
    """`path` as a folder the command can write into, created if missing; else OutputPathError."""
    path = Path(path)
    problem = _folder_problem(path)
    if problem:
        raise OutputPathError(f"{path}: unusable as {what}: {problem}")
    return path


def check_output_file(path: Path, what: str) -> Path:
    """`path` as a file the command can write (its folder created if missing); else OutputPathError."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise OutputPathError(f"{path}: {what} needs a file name")
    if len(os.fsencode(path.name)) > 255:
        raise OutputPathError(f"{str(path)[:60]}...: unusable as {what}: the file name is longer than 255 bytes")
    kind = path_kind(path)
    if kind == "folder":
        raise OutputPathError(f"{path}: unusable as {what}: it is a folder; expected a file name")
    if kind not in ("file", "missing"):
        raise OutputPathError(f"{path}: unusable as {what}: {kind}")
    problem = _folder_problem(path.parent)
    if problem:
        raise OutputPathError(f"{path}: unusable as {what}: its folder {path.parent}: {problem}"
                              if not problem.startswith(str(path.parent)) else
                              f"{path}: unusable as {what}: {problem}")
    if kind == "file" and not os.access(path, os.W_OK):
        raise OutputPathError(f"{path}: unusable as {what}: the file exists and is not writable")
    return path


def write_output(path: Path, text: str, what: str) -> None:
    """Write a finished result; a failure (a disk that filled meanwhile) is an OutputPathError."""
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as error:
        raise OutputPathError(f"{path}: cannot write {what}: {_reason(error)}") from None


STATE_STYLE = {"pending": "dim", "running": "bold cyan", "waiting": "yellow", "finished": "green",
               "failed": "bold red", "stopped": "magenta", "interrupted": "yellow"}


def state_cell(entry: Any) -> Any:
    """A run's state for a live table, saying so when it started again because its machine went away."""
    from rich.text import Text

    text = Text(entry.state, style=STATE_STYLE.get(entry.state, ""))
    if getattr(entry, "nodes_lost", 0):
        times = f" {entry.nodes_lost}x" if entry.nodes_lost > 1 else ""
        text.append(f" (restarted after node lost{times})", style="yellow")
    return text


class LiveQueueTable:
    """A queue's runs as a Rich live table on a terminal (`render` draws it); elsewhere (logs,
    pipes) nothing is redrawn and the subclass prints a line per change of state."""

    def __init__(self, console: Any, queue: Any):
        from rich.live import Live

        self.console = console
        self.queue = queue
        self.live = Live(console=console, auto_refresh=False, transient=False) if console.is_terminal else None

    def render(self) -> Any:
        raise NotImplementedError

    def redraw(self) -> None:
        if self.live is not None:
            self.live.update(self.render(), refresh=True)

    def __enter__(self) -> "LiveQueueTable":
        if self.live is not None:
            self.live.start()
            self.redraw()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.live is not None:
            self.redraw()
            self.live.stop()


def drive(runner: Any, display: Any) -> list[int]:
    """Run a queue's runner under its live display; the signals that came, in order.

    SIGINT and SIGTERM stop the runner (its runs checkpoint and stop; a second signal makes
    them leave at once, their last checkpoints intact). The handlers before are put back.
    """
    received: list[int] = []

    def on_signal(number: int, _frame: Any) -> None:
        received.append(number)
        runner.stop()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for number in SIGNAL_EXIT:
            previous[number] = signal.signal(number, on_signal)
    try:
        with display:
            runner.run()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return received
