"""What every command shares: exit codes, the errors that are the user's to fix, small formatters."""

from __future__ import annotations

import signal

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PAUSED_HEADLESS = 0, 1, 2, 3
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
if hasattr(signal, "SIGHUP"):
    SIGNAL_EXIT[signal.SIGHUP] = 129


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a mistake in the input: one message, exit 2, no traceback."""
    from cifartui.config import ConfigError
    from cifartui.engine.checkpoint import CheckpointError
    from cifartui.engine.data import DataError
    from cifartui.engine.inspect import InspectError
    from cifartui.engine.models import ModelError
    from cifartui.engine.runs import RunDirError
    from cifartui.engine.trainer import DeviceError, ResumeRefused
    from cifartui.ui.graphics import GraphicsError
    return (ConfigError, DataError, ModelError, DeviceError, CheckpointError, RunDirError, ResumeRefused,
            InspectError, GraphicsError)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"
