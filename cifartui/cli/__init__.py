"""The `cifartui` command: the app, and the headless subcommands with Rich output.

One module per group of commands; each adds its subparsers and names its handler.

Exit codes: 0 finished; 1 the run failed unexpectedly (traceback in the run's
error.log); 2 a user mistake (preset, option, data, checkpoint, device), reported in
one message with no traceback; 3 the run stopped on a non-finite loss or a
checkpoint it could not write; 130 / 143 / 129 stopped by SIGINT / SIGTERM / SIGHUP
after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from cifartui.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, user_errors

# Everything else is imported inside main(), where a Ctrl-C is caught: the time before
# main() runs is the only time an early Ctrl-C still ends in a traceback.


def build_parser() -> argparse.ArgumentParser:
    from cifartui.cli import control, listing, reproduce, results, sweep, training

    parser = argparse.ArgumentParser(
        prog="cifartui", description="Train CNNs on CIFAR-10/100: presets that reproduce published experiments. "
        "With no command, opens the interactive app.")
    parser.add_argument("--runs-dir", type=Path, help="where the app keeps and finds runs (default ./runs or "
                        "$CIFARTUI_RUNS)")
    parser.add_argument("--data-dir", type=Path, help="where CIFAR lives or is downloaded")
    parser.add_argument("--images", choices=("auto", "sixel", "kitty", "halfblock"),
                        help="how the app draws pictures (default auto, or $CIFARTUI_IMAGES): sixel or kitty "
                        "graphics need the extra cifartui[images], half blocks work in every terminal")
    parser.add_argument("--detach", action=argparse.BooleanOptionalAction, default=None,
                        help="runs started in the app train in a process of their own, which quitting the app or "
                        "losing the connection leaves training (default: on over SSH, off otherwise)")
    parser.set_defaults(handler=training.cmd_app)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (training, control, sweep, reproduce, listing, results):
        module.add_parsers(commands)
    # A command's own --runs-dir (or --data-dir, ...) not given must not overwrite the one given
    # before the command (`cifartui --runs-dir DIR run PRESET`): argparse lets a subcommand's
    # default win over the value the main parser read.
    before_command = {action.dest for action in parser._actions if action.option_strings}
    for command in commands.choices.values():
        for action in command._actions:
            if action.dest in before_command and action.option_strings and action.default is None:
                action.default = argparse.SUPPRESS
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from rich.console import Console
        from rich.markup import escape

        parser = build_parser()
        args = parser.parse_args(argv)
        console = Console(stderr=False)
        errors = Console(stderr=True)
        try:
            return args.handler(args, console)
        except user_errors() as error:
            errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, markup=True, soft_wrap=True)
            return EXIT_USAGE
    except KeyboardInterrupt:
        # Ctrl-C before a command could set up its own handling (while PyTorch loads, for
        # instance) or in a command that has none: nothing was being saved, so just leave.
        sys.stderr.write("Interrupted.\n")
        _forget_unhandled_interrupt()
        return EXIT_INTERRUPTED


# Headless commands that load PyTorch before they do anything (the app draws its first
# screen first and loads it later; listing, control and CSV/JSON export never do).
TORCH_COMMANDS = frozenset({"train", "resume", "branch", "inspect", "predict", "sweep", "reproduce"})


def run() -> None:
    """The `cifartui` command and `python -m cifartui[.cli]`: main(), safe to Ctrl-C at any moment.

    A KeyboardInterrupt raised while PyTorch's C++ code imports itself, or while its
    finalizers run as the interpreter exits, cannot be caught: it aborts the process or
    is printed and dropped. So while PyTorch loads a Ctrl-C is only noted (and ends the
    command with 130 once it has loaded), and after main() has returned one ends the
    process with 130 at once. A SIGINT the command was started with ignored (a
    background job) stays ignored.
    """
    import signal

    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if not ignored and _interrupted_while_torch_loads(sys.argv[1:]):
        sys.stderr.write("Interrupted.\n")
        sys.exit(EXIT_INTERRUPTED)
    code = main()
    if not ignored:
        signal.signal(signal.SIGINT, _leave_interrupted)
    sys.exit(code)


def _interrupted_while_torch_loads(argv: Sequence[str]) -> bool:
    """Load PyTorch with Ctrl-C only noted, for commands that need it; whether one came."""
    import signal

    if not TORCH_COMMANDS.intersection(argv) or {"-h", "--help"}.intersection(argv):
        return False
    noted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, _frame: noted.append(number))
    try:
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001 - main() reports a broken installation in its own words
        pass
    finally:
        signal.signal(signal.SIGINT, previous)
    return bool(noted)


def _leave_interrupted(_number: int, _frame: object) -> None:
    """Ctrl-C once the command is done and the interpreter exits: 130, without a traceback."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(EXIT_INTERRUPTED)


def _forget_unhandled_interrupt() -> None:
    """Let the interpreter exit with our code after a Ctrl-C that was handled.

    When a KeyboardInterrupt passes through code that an extension runs with
    PyRun_String (PyTorch's import does), CPython notes it as unhandled and, at exit,
    kills the process with SIGINT instead of returning 130, however the interrupt was
    caught later. Every PyRun_String call starts by clearing that note, so an empty one
    clears it.
    """
    try:
        import ctypes

        ctypes.pythonapi.PyRun_SimpleString(b"")
    except (ImportError, AttributeError, OSError):  # not CPython: nothing noted, nothing to clear
        pass


__all__ = ["main", "run", "build_parser"]
