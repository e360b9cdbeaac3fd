"""`control` and `branch`: steer a run another process trains, or start a new run from one of its checkpoints.

`control` talks to the process through the run's control channel (engine/runs/channel.py)
and needs no PyTorch, so it answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cifartui.cli.common import EXIT_OK, EXIT_USAGE, SIGNAL_EXIT
from cifartui.config import ConfigError

ACTIONS = ("pause", "resume", "checkpoint", "stop", "set", "status")


def add_parsers(commands: Any) -> None:
    control = commands.add_parser(
        "control", help="pause, resume, checkpoint, stop or change the settings of a run that is training",
        description="Act on a run trained by `cifartui train` in another shell or by the app. Changes take "
        "effect at the next step (a new batch size at the next epoch) and are recorded in the run.")
    control.set_defaults(handler=cmd_control)
    control.add_argument("run_dir", type=Path)
    control.add_argument("action", choices=ACTIONS)
    control.add_argument("assignments", nargs="*", metavar="KEY=VALUE",
                         help="with set: settings as --set takes them (TOML values), e.g. optimizer.lr=0.01 "
                         "dropout.stack3=0.4")
    control.add_argument("--json", action="store_true", help="print the run's answer as JSON")
    control.add_argument("--timeout", type=_timeout, default=30.0, metavar="SECONDS",
                         help="how long to wait for the run to answer (default 30)")

    branch = commands.add_parser(
        "branch", help="start a new run from a checkpoint of another run, with changes of its own",
        description="The new run starts from the checkpoint's weights, optimizer, schedule and data position, "
        "records the run and step it comes from, and trains headless like `train`.")
    branch.set_defaults(handler=cmd_branch)
    branch.add_argument("run_dir", type=Path, help="the run to branch from")
    branch.add_argument("--checkpoint", default="last", metavar="NAME",
                        help="last (default), best, or a kept one such as epoch-0005 (see train.keep_every)")
    branch.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a change the branch starts with (the keys `control set` takes); repeatable")
    branch.add_argument("--runs-dir", type=Path, help="where the branch's run directory goes (default: beside "
                        "the parent)")
    branch.add_argument("--run-dir", dest="branch_dir", type=Path, metavar="DIR",
                        help="train the branch into this folder (new, or holding files but no run or folder) "
                        "instead of a new one; "
                        "the app starts its background branches this way")
    branch.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the parent's)")
    branch.add_argument("--data-dir", type=Path, help="where CIFAR lives")
    branch.add_argument("--summary-json", type=Path, metavar="FILE", help="write the final metrics as JSON")


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"'{text}': expected a finite number of seconds, 0 or more")
    return value


def _error(message: str) -> int:
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return EXIT_USAGE


def cmd_control(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.runs.channel import ControlError, RequestInterrupted, RunNotRunning, send
    from cifartui.engine.runs.settings import parse_assignments

    request: dict[str, Any] = {}
    if args.action == "set":
        if not args.assignments:
            return _error("set needs at least one KEY=VALUE, for example optimizer.lr=0.01")
        try:
            request["updates"] = parse_assignments(args.assignments, "control set")
            json.dumps(request)
        except ConfigError as error:
            return _error(str(error))
        except (TypeError, ValueError):
            return _error("values must be numbers, booleans, strings or lists of them")
    elif args.assignments:
        return _error(f"{args.action} takes no KEY=VALUE (only set does)")
    received: list[int] = []

    def on_term(number: int, _frame: Any) -> None:
        received.append(number)
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_term)  # withdraw the request as a Ctrl-C does
    try:
        answer = send(args.run_dir, args.action, request, timeout=args.timeout)
    except ControlError as error:
        if args.json:  # a JSON reader gets an object whatever happened, with the exit code of the text form
            sys.stdout.write(json.dumps({"ok": False, "live": not isinstance(error, RunNotRunning),
                                         "error": str(error)}) + "\n")
        return _error(str(error))
    except RequestInterrupted as interrupt:
        where = escape(str(args.run_dir))
        text = (f"Interrupted: {where} had already taken the request, so it may still apply it; `cifartui control "
                f"{where} status` shows the settings in force." if interrupt.taken else
                "Interrupted: the request was withdrawn before the run took it; nothing was applied.")
        Console(stderr=True).print(text, highlight=False, soft_wrap=True)
        return SIGNAL_EXIT[signal.SIGTERM] if received else SIGNAL_EXIT[signal.SIGINT]
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if args.json:
        sys.stdout.write(json.dumps(answer) + "\n")
        return EXIT_OK
    run = escape(str(args.run_dir))
    where = f"step {answer.get('step', 0):,} (epoch {answer.get('epoch', 0) + 1})"
    if args.action == "pause" and answer.get("state") == "pausing":
        console.print(f"{run} is in a long step at {where}: it pauses when the step ends.", highlight=False,
                      soft_wrap=True)
    elif args.action == "pause":
        console.print(f"Paused {run} at {where}.", highlight=False, soft_wrap=True)
    elif args.action == "resume":
        console.print(f"Resumed {run} at {where}.", highlight=False, soft_wrap=True)
    elif args.action == "checkpoint" and answer.get("queued"):
        console.print(f"{run} is in a long step at {where}: it writes {escape(str(answer.get('path')))} when the step "
                      "ends.", highlight=False, soft_wrap=True)
    elif args.action == "checkpoint":
        console.print(f"Wrote {escape(str(answer.get('path')))} at {where}.", highlight=False, soft_wrap=True)
    elif args.action == "stop":
        console.print(f"{run} stops at {where} after writing a checkpoint; `cifartui resume {run}` continues it.",
                      highlight=False, soft_wrap=True)
    elif args.action == "set":
        changes = answer.get("changes") or {}
        if not changes:
            console.print("Nothing changed: those values are already in force.", highlight=False)
        else:
            when = answer.get("when") or {}
            lines = [f"  {key}: {_value(old)} -> {_value(new)}"
                     + (f" ({when[key]})" if when.get(key, "at the next step") != "at the next step" else "")
                     for key, (old, new) in changes.items()]
            verb = (f"Queued for {run}, in a long step at {where}: applies when the step ends"
                    if answer.get("queued") else f"Applied to {run} at {where}")
            console.print(f"{verb}:\n" + escape("\n".join(lines)), highlight=False, soft_wrap=True)
    else:
        _print_status(console, args.run_dir, answer)
    return EXIT_OK


def _value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, float) else f"{value:g}"


def _print_status(console: Console, run_dir: Path, answer: dict[str, Any]) -> None:
    table = Table(title=f"{run_dir.name}: {answer.get('state')}", box=box.SIMPLE_HEAD, show_header=False)
    table.add_column("")
    table.add_column("", overflow="fold")
    total = answer.get("total_steps", 0)
    table.add_row("step", f"{answer.get('step', 0):,} of {total:,} (epoch {answer.get('epoch', 0) + 1})")
    table.add_row("learning rate", f"{answer.get('lr', 0):.4g}")
    table.add_row("batch size", str(answer.get("batch_size")))
    dropout = answer.get("dropout") or {}
    if dropout:
        table.add_row("dropout", ", ".join(f"{group} {rate:g}" for group, rate in dropout.items()))
    table.add_row("device", f"{answer.get('device')}" + (f" ({answer['graphs']})" if answer.get("graphs") else ""))
    table.add_row("changes so far", str(answer.get("changes", 0)))
    settings = answer.get("settings") or {}
    optimizer, train = settings.get("optimizer", {}), settings.get("train", {})
    table.add_row("optimizer", f"{optimizer.get('name')} lr {optimizer.get('lr')} momentum {optimizer.get('momentum')} "
                  f"weight decay {optimizer.get('weight_decay')}; schedule {optimizer.get('schedule', {}).get('name')}")
    table.add_row("length", f"{train.get('epochs')} epochs" + (f", at most {train['max_steps']:,} steps"
                                                                 if train.get("max_steps") else ""))
    console.print(table)


def _parent_checkpoint(parent: Path, name: str, error: type[Exception]) -> Path:
    """The checkpoint `name` (last, best, epoch-0005, with or without .pt) in the parent's own
    checkpoints folder: a path that leads elsewhere would make the branch another run's child."""
    folder = parent / "checkpoints"
    try:
        kept = sorted(p.stem for p in folder.glob("*.pt") if p.is_file() and not p.is_symlink())
    except OSError:
        kept = []
    stem = name[:-3] if name.endswith(".pt") else name
    if stem not in kept or "/" in name or "\\" in name or stem.startswith("."):
        what = "a checkpoint name, not a path" if ("/" in name or "\\" in name) else "no such checkpoint"
        raise error(f"--checkpoint {name}: {what}; {parent} has: {', '.join(kept) or 'none'}")
    return folder / f"{stem}.pt"


def cmd_branch(args: argparse.Namespace, console: Console) -> int:
    from cifartui.cli.training import _run, given_run_dir
    from cifartui.engine.runs.checkpoint import CheckpointError
    from cifartui.engine.runs.folders import RunLock, new_run_dir, read_config
    from cifartui.engine.runs.settings import parse_assignments
    from cifartui.engine.train.trainer import Branch

    parent = args.run_dir
    config = read_config(parent)
    checkpoint = _parent_checkpoint(parent, args.checkpoint, CheckpointError)
    changes = parse_assignments(args.sets, "--set")
    if args.device is not None:
        from cifartui.config import replace_path

        config = replace_path(config, "train.device", args.device, "--device")
    if args.branch_dir is not None:
        run_dir = given_run_dir(args.branch_dir)
    else:
        run_dir = new_run_dir(args.runs_dir or parent.parent, f"{config.name}-branch")
    lock = RunLock(run_dir).acquire()
    branch = Branch(parent=parent, checkpoint=checkpoint, changes=changes)
    return _run(config, run_dir, args, console, resume=False, lock=lock, branch=branch)
