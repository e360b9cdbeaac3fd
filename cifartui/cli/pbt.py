"""`sweep --pbt N`: population-based training of N members, and `sweep --pbt-export` of a member's schedule."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cifartui.cli.common import EXIT_FAILED, EXIT_OK, SIGNAL_EXIT, drive
from cifartui.config import ConfigError

PBT_OPTIONS = ("pbt", "pbt_interval", "pbt_quantile", "pbt_epochs")
# Options of sweep that plan other sweeps, which PBT replaces.
OTHER_PLANS = {"grid": "--grid", "range": "--range", "random": "--random", "seeds": "--seeds",
               "halving": "--halving", "search": "--search", "trials": "--trials", "pruner": "--pruner",
               "pruner_min_epochs": "--pruner-min-epochs", "pruner_factor": "--pruner-factor"}


def add_options(sweep: argparse.ArgumentParser) -> None:
    sweep.add_argument("--pbt", type=int, metavar="N", help="population-based training: N members train at once; "
                       "every --pbt-interval epochs a member in the worst quantile copies the weights and settings "
                       "of one in the best, and perturbs them (x0.8 or x1.2, or drawn again from --space)")
    sweep.add_argument("--pbt-interval", type=int, metavar="K", help="with --pbt: compare members every K epochs")
    sweep.add_argument("--pbt-quantile", type=float, metavar="Q", help="with --pbt: the fraction of members that "
                       "copy (the worst) and are copied (the best) (default 0.25)")
    sweep.add_argument("--pbt-epochs", type=int, metavar="E", help="with --pbt: epochs each member trains "
                       "(default the recipe's)")
    sweep.add_argument("--pbt-export", nargs=2, type=Path, metavar=("SWEEP_DIR", "OUT"),
                       help="write the best member's settings over its epochs, across its lineage, as a recipe "
                       "that trains that schedule from scratch (a settings_schedule)")


def wants_pbt(args: argparse.Namespace) -> bool:
    """Whether `sweep` was asked for PBT: a PBT option, or --resume of a PBT sweep's folder."""
    if any(getattr(args, name) is not None for name in PBT_OPTIONS):
        return True
    if args.resume is not None:
        from cifartui.engine.orchestration.pbt import is_pbt_plan
        from cifartui.engine.orchestration.queue import QueueError
        from cifartui.engine.orchestration.sweep import read_plan

        try:
            return is_pbt_plan(read_plan(args.resume))
        except QueueError:
            return False
    return False


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.orchestration.pbt import write_export
    from cifartui.engine.orchestration.sweep import format_value

    directory, out = args.pbt_export
    if out.exists() and out.is_dir():
        raise ConfigError("--pbt-export", str(out), "is a folder; expected a file name for the recipe")
    key, schedule = write_export(directory, out)
    console.print(f"Member {key}'s schedule written to {escape(str(out))}:", highlight=False, soft_wrap=True)
    for epoch, settings in schedule:
        what = ", ".join(f"{k}={format_value(v)}" for k, v in settings.items())
        console.print(f"  from epoch {epoch}: {escape(what)}", highlight=False, soft_wrap=True)
    console.print(f"Train it with: cifartui train {escape(str(out))}", highlight=False, soft_wrap=True)
    return EXIT_OK


def cmd_pbt(args: argparse.Namespace, console: Console, *, plan_options: tuple[str, ...],
            display: Callable[[Console, Any, dict[str, Any]], Any]) -> int:
    from cifartui.engine.orchestration.pbt import create_pbt, is_pbt_plan
    from cifartui.engine.orchestration.queue import RunQueue, plan_slots
    from cifartui.engine.orchestration.sweep import read_plan

    if getattr(args, "ray", False):
        raise ConfigError("--ray", "", "PBT runs its members on this machine; expected no --ray with --pbt")
    if args.resume is not None:
        given = [name for name in plan_options + PBT_OPTIONS + ("space",) if getattr(args, name) not in (None, [])]
        if given:
            option = {"preset": "a PRESET", "sets": "--set"}.get(given[0], "--" + given[0].replace("_", "-"))
            raise ConfigError("--resume", "", f"a resumed sweep keeps its plan; {option} cannot change it "
                              "(--parallel, --devices, --device, --data-dir and --json can)")
        plan = read_plan(args.resume)
        if not is_pbt_plan(plan):
            raise ConfigError("--resume", str(args.resume), "not a PBT sweep; resume it without the --pbt options")
        queue, slots = RunQueue.resume(args.resume, device=args.device, devices=args.devices,
                                       parallel=args.parallel, data_dir=args.data_dir)
    else:
        if args.preset is None:
            raise ConfigError("sweep", "", "expected a PRESET to train with --pbt, or --resume SWEEP_DIR")
        plan, base, runs = _plan(args)
        population = plan["pbt"]["population"]
        parallel = args.parallel if args.parallel is not None else population
        slots = plan_slots(base.train.device, args.devices, parallel)  # before anything is written
        from cifartui.engine.runs.folders import default_runs_dir

        queue = create_pbt(args.runs_dir or default_runs_dir(), plan, base, runs, device=base.train.device,
                           parallel=parallel, devices=args.devices, data_dir=args.data_dir).lock()
    try:
        return _drive(queue, plan, slots, args, console, display)
    finally:
        queue.unlock()


def _plan(args: argparse.Namespace) -> tuple[dict[str, Any], Any, list[Any]]:
    from cifartui.cli.training import _config_from_args
    from cifartui.engine.orchestration.pbt import PbtRequest, check_request, plan_pbt
    from cifartui.engine.orchestration.search import ALL_GROUPS, parse_space

    if args.pbt is None:
        given = next(name for name in PBT_OPTIONS if getattr(args, name) is not None)
        raise ConfigError("--" + given.replace("_", "-"), str(getattr(args, given)), "needs --pbt N")
    for name, option in OTHER_PLANS.items():
        if getattr(args, name) not in (None, []):
            raise ConfigError(option, "", "cannot be combined with --pbt: PBT trains one population, each member "
                              "one run that copies and perturbs the others' settings")
    base = _config_from_args(args)
    explicit = {text.partition("=")[0].strip(): "--set" for text in args.sets}
    for option, key in (("epochs", "train.epochs"), ("batch_size", "train.batch_size"), ("lr", "optimizer.lr")):
        if getattr(args, option) is not None:
            explicit[key] = "--" + option.replace("_", "-")
    request = PbtRequest(population=args.pbt, interval=args.pbt_interval,
                         quantile=args.pbt_quantile if args.pbt_quantile is not None else 0.25,
                         epochs=args.pbt_epochs, space=tuple(args.space), seed=args.seed, explicit=explicit)
    # The numbers first: a wrong --pbt is named before any model is built.
    check_request(request, request.epochs if request.epochs is not None else base.train.epochs)
    groups: list[str] = []
    if any(parse_space(text).key == ALL_GROUPS for text in args.space):
        groups = _dropout_groups(base)
    return plan_pbt(base, request, groups)


def _dropout_groups(base: Any) -> list[str]:
    from cifartui.engine.train.models import ModelError, build_model, dropout_groups

    try:
        return list(dropout_groups(build_model(base.model, base.dataset.num_classes)))
    except ModelError as error:
        raise ConfigError("--space", "dropout", str(error)) from None


def _drive(queue: Any, plan: dict[str, Any], slots: list[str], args: argparse.Namespace, console: Console,
           make_display: Callable[[Console, Any, dict[str, Any]], Any]) -> int:
    from cifartui.engine.orchestration.pbt import PbtRunner, PopulationTraining

    pbt = PopulationTraining(queue, plan)
    pbt.reconcile()
    display = make_display(console, queue, plan)
    runner = PbtRunner(queue, slots, pbt, listener=display)
    spec = plan["pbt"]
    console.print(f"PBT of [bold]{escape(plan['preset'])}[/]: {spec['population']} members, every "
                  f"{spec['interval']} epochs the worst {spec['quantile']:g} copy the best; {len(slots)} at once. "
                  f"Sweep directory: {escape(str(queue.directory))}", highlight=False, soft_wrap=True)
    received = drive(runner, display)
    console.print(members_table(queue, plan))
    for message in pbt.messages:
        console.print(escape(message), style="dim", highlight=False, soft_wrap=True)
    if args.json is not None:
        import json

        from cifartui.engine.orchestration.pbt import read_log, read_members

        args.json.parent.mkdir(parents=True, exist_ok=True)
        members = [{"member": m.key, "settings": m.settings, "exploits": len(m.lineage)}
                   for m in read_members(queue.directory, queue.entries)]
        args.json.write_text(json.dumps({"sweep_dir": str(queue.directory), "preset": plan["preset"],
                                         "members": members, "log": read_log(queue.directory)}, indent=2) + "\n",
                             encoding="utf-8")
    counts = queue.counts()
    for entry in queue.entries:
        if entry.state == "failed":
            console.print(f"[bold red]member {entry.key} failed:[/] {escape(entry.message)} "
                          f"(output in {escape(str(entry.output_path))})", highlight=False, soft_wrap=True)
    if received or counts["interrupted"] or counts["pending"] or counts["waiting"]:
        console.print(f"PBT interrupted. Continue it with: cifartui sweep --resume {escape(str(queue.directory))}",
                      highlight=False, soft_wrap=True)
        return SIGNAL_EXIT.get(received[0], 130) if received else EXIT_FAILED
    console.print(f"Export the best member's schedule with: cifartui sweep --pbt-export "
                  f"{escape(str(queue.directory))} OUT.toml", highlight=False, soft_wrap=True)
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def members_table(queue: Any, plan: dict[str, Any]) -> Table:
    from cifartui.engine.orchestration.pbt import read_members
    from cifartui.engine.orchestration.sweep import format_value

    keys = list(plan["pbt"]["keys"])
    table = Table(title=f"{plan['preset']}: PBT members", show_header=True)
    for name in ("member", *keys, "state", "epochs", "best val top-1", "lineage"):
        table.add_column(name, style="cyan" if name in keys else None)
    entries = {e.key: e for e in queue.entries}
    for member in read_members(queue.directory, queue.entries):
        entry = entries[member.key]
        best = entry.progress.best_val_top1
        table.add_row(member.key, *(format_value(member.settings.get(k, "")) for k in keys), entry.state,
                      f"{entry.progress.epochs_done}/{entry.epochs}", "-" if best is None else f"{best:.2f}%",
                      member.lineage_text())
    return table
