"""Requests to a running trainer (pause, resume, stop, checkpoint now, change settings), safe from any thread.

Kept apart from the trainer so that the app can hold a run's control handle before
PyTorch is imported.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Callable

# While paused, the trainer still looks at its control channel this often.
PAUSED_POLL_S = 0.25


def caused_by_interrupt(error: BaseException) -> bool:
    """A KeyboardInterrupt, or an error a library raised because one arrived inside it
    (torch turns a Ctrl-C during a checkpoint write into a RuntimeError)."""
    seen: BaseException | None = error
    for _ in range(20):  # a chain of causes is short; the bound only guards against a cycle
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class RunControl:
    """Thread-safe requests to a running trainer; each takes effect between two steps."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._pause_requested = False
        self._stop_reason: str | None = None
        self._checkpoint_requested = False
        self._requests: list[tuple[str, dict[str, Any], Future]] = []

    def pause(self) -> None:
        with self._condition:
            self._pause_requested = True
            self._condition.notify_all()

    def resume(self) -> None:
        with self._condition:
            self._pause_requested = False
            self._condition.notify_all()

    def stop(self, reason: str = "stop requested") -> None:
        with self._condition:
            if self._stop_reason is None:
                self._stop_reason = reason
            self._condition.notify_all()

    def checkpoint_now(self) -> None:
        with self._condition:
            self._checkpoint_requested = True
            self._condition.notify_all()

    def submit(self, command: str, args: dict[str, Any] | None = None) -> Future:
        """A request answered by the trainer between steps (also while paused), as the control
        channel's are: `set` with {"updates": {key: value}, "source": ...}, or `status`.

        The future's result is the answer ({"ok": ..., ...}); a run that ends first
        answers {"ok": False, "error": ...}.
        """
        future: Future = Future()
        with self._condition:
            self._requests.append((command, dict(args or {}), future))
            self._condition.notify_all()
        return future

    def take_requests(self) -> list[tuple[str, dict[str, Any], Future]]:
        with self._condition:
            taken, self._requests = self._requests, []
            return taken

    def cancel_requests(self, reason: str) -> None:
        """Answer whatever is still waiting: the run has ended."""
        for _command, _args, future in self.take_requests():
            if not future.done():
                future.set_result({"ok": False, "error": reason})

    @property
    def paused(self) -> bool:
        return self._pause_requested

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    def take_checkpoint_request(self) -> bool:
        with self._condition:
            requested, self._checkpoint_requested = self._checkpoint_requested, False
            return requested

    def wait_while_paused(self, serve: Callable[[], None]) -> None:
        """Block until resumed or stopped, serving requests meanwhile (checkpoints, settings, the channel).

        `serve` runs without the lock held, at once when an in-process request arrives
        and every PAUSED_POLL_S otherwise (for requests from other processes).
        """
        with self._condition:
            while self._pause_requested and self._stop_reason is None:
                self._condition.release()
                try:
                    serve()
                finally:
                    self._condition.acquire()
                if not self._pause_requested or self._stop_reason is not None:
                    break
                if not (self._checkpoint_requested or self._requests):
                    self._condition.wait(PAUSED_POLL_S)
