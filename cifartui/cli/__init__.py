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
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape

from cifartui.cli.common import EXIT_USAGE, user_errors
from cifartui.cli import control, listing, results, sweep, training


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifartui", description="Train CNNs on CIFAR-10/100: presets that reproduce published experiments. "
        "With no command, opens the interactive app.")
    parser.add_argument("--runs-dir", type=Path, help="where the app keeps and finds runs (default ./runs or "
                        "$CIFARTUI_RUNS)")
    parser.add_argument("--data-dir", type=Path, help="where CIFAR lives or is downloaded")
    parser.add_argument("--images", choices=("auto", "sixel", "kitty", "halfblock"),
                        help="how the app draws pictures (default auto, or $CIFARTUI_IMAGES): sixel or kitty "
                        "graphics need the extra cifartui[images], half blocks work in every terminal")
    parser.set_defaults(handler=training.cmd_app)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (training, control, sweep, listing, results):
        module.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=False)
    errors = Console(stderr=True)
    try:
        return args.handler(args, console)
    except user_errors() as error:
        errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, markup=True, soft_wrap=True)
        return EXIT_USAGE


__all__ = ["main", "build_parser"]
