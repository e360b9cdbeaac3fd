"""`control` and `branch`: steer a run another process trains, or start a new run from one of its checkpoints.

`control` talks to the process through the run's control channel (engine/channel.py)
and needs no PyTorch, so it answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cifartui.cli.common import EXIT_OK, EXIT_USAGE
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
    control.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
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
    branch.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the parent's)")
    branch.add_argument("--data-dir", type=Path, help="where CIFAR lives")
    branch.add_argument("--summary-json", type=Path, metavar="FILE", help="write the final metrics as JSON")


def _error(message: str) -> int:
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return EXIT_USAGE


def cmd_control(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.channel import ControlError, send
    from cifartui.engine.settings import parse_assignments

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
    try:
        answer = send(args.run_dir, args.action, request, timeout=args.timeout)
    except ControlError as error:
        return _error(str(error))
    if args.json:
        sys.stdout.write(json.dumps(answer) + "\n")
        return EXIT_OK
    run = escape(str(args.run_dir))
    where = f"step {answer.get('step', 0):,} (epoch {answer.get('epoch', 0) + 1})"
    if args.action == "pause":
        console.print(f"Paused {run} at {where}.", highlight=False, soft_wrap=True)
    elif args.action == "resume":
        console.print(f"Resumed {run} at {where}.", highlight=False, soft_wrap=True)
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
            console.print(f"Applied to {run} at {where}:\n" + escape("\n".join(lines)), highlight=False,
                          soft_wrap=True)
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


def cmd_branch(args: argparse.Namespace, console: Console) -> int:
    from cifartui.cli.training import _run
    from cifartui.engine.checkpoint import CheckpointError
    from cifartui.engine.runs import RunLock, new_run_dir, read_config
    from cifartui.engine.settings import parse_assignments
    from cifartui.engine.trainer import Branch

    parent = args.run_dir
    config = read_config(parent)
    name = args.checkpoint if args.checkpoint.endswith(".pt") else f"{args.checkpoint}.pt"
    checkpoint = parent / "checkpoints" / name
    if not checkpoint.is_file():
        kept = sorted(p.stem for p in (parent / "checkpoints").glob("*.pt")) if (parent / "checkpoints").is_dir() else []
        raise CheckpointError(f"{checkpoint}: no such checkpoint; {parent} has: {', '.join(kept) or 'none'}")
    changes = parse_assignments(args.sets, "--set")
    if args.device is not None:
        from cifartui.config import replace_path

        config = replace_path(config, "train.device", args.device, "--device")
    run_dir = new_run_dir(args.runs_dir or parent.parent, f"{config.name}-branch")
    lock = RunLock(run_dir).acquire()
    branch = Branch(parent=parent, checkpoint=checkpoint, changes=changes)
    return _run(config, run_dir, args, console, resume=False, lock=lock, branch=branch)
