"""Requests to a running trainer (pause, resume, stop, checkpoint now), safe from any thread.

Kept apart from the trainer so that the app can hold a run's control handle before
PyTorch is imported.
"""

from __future__ import annotations

import threading
from typing import Callable


class RunControl:
    """Thread-safe requests to a running trainer; each takes effect between two steps."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._pause_requested = False
        self._stop_reason: str | None = None
        self._checkpoint_requested = False

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

    def wait_while_paused(self, on_wake: Callable[[], None]) -> None:
        """Block without spinning until resumed or stopped; serve checkpoint requests meanwhile."""
        with self._condition:
            while self._pause_requested and self._stop_reason is None:
                if self._checkpoint_requested:
                    self._checkpoint_requested = False
                    self._condition.release()
                    try:
                        on_wake()
                    finally:
                        self._condition.acquire()
                    continue
                self._condition.wait()
