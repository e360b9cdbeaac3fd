"""`sweep --search`: a model-based search (Optuna) over --space, with asynchronous early stopping."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cifartui.cli.common import EXIT_FAILED, EXIT_OK, SIGNAL_EXIT, drive
from cifartui.cli.ray_option import new_slots, resumed_queue
from cifartui.config import ConfigError

SEARCH_OPTIONS = ("search", "trials", "space", "pruner", "pruner_min_epochs", "pruner_factor")
# Options of sweep that plan a grid or random draws, which a search replaces.
GRID_OPTIONS = {"grid": "--grid", "range": "--range", "random": "--random", "seeds": "--seeds",
                "halving": "--halving"}


def add_options(sweep: argparse.ArgumentParser) -> None:
    sweep.add_argument("--search", metavar="SAMPLER", help="model-based search instead of a grid: tpe "
                       "(the default once --space or --trials is given), cmaes or random; the study is kept "
                       "in the sweep directory (study.journal)")
    sweep.add_argument("--trials", type=int, metavar="N", help="with --search: how many trials to run")
    sweep.add_argument("--space", action="append", default=[], metavar="KEY=RANGE",
                       help="with --search: a searched setting: KEY=LOW..HIGH, KEY=log:LOW..HIGH, "
                       "KEY=int:LOW..HIGH or KEY=A,B,C; KEY is a dotted key or lr, wd, dropout (every dropout "
                       "group's rate) (repeatable)")
    sweep.add_argument("--pruner", metavar="NAME", help="with --search: stop bad trials early: asha "
                       "(asynchronous successive halving), hyperband or none (default)")
    sweep.add_argument("--pruner-min-epochs", type=int, metavar="E",
                       help="the pruner's first rung, in epochs (default 1)")
    sweep.add_argument("--pruner-factor", type=int, metavar="R",
                       help="the pruner's reduction factor: a trial goes on if in the best 1/R at its rung "
                       "(default 3)")


def wants_search(args: argparse.Namespace) -> bool:
    """Whether `sweep` was asked for a search: a search option, or --resume of a search folder."""
    if any(getattr(args, name) not in (None, []) for name in SEARCH_OPTIONS):
        return True
    if args.resume is not None:
        from cifartui.engine.orchestration.queue import QueueError
        from cifartui.engine.orchestration.search import is_search_plan
        from cifartui.engine.orchestration.sweep import read_plan

        try:
            return is_search_plan(read_plan(args.resume))
        except QueueError:
            return False  # the sweep's own resume says what is wrong with the folder
    return False


def cmd_search(args: argparse.Namespace, console: Console, *, plan_options: tuple[str, ...],
               display: Callable[[Console, Any, dict[str, Any]], Any]) -> int:
    """`sweep` with a search: `plan_options` are sweep's options that a resumed sweep refuses, and
    `display` makes the live table of the runs (sweep's own)."""
    from cifartui.engine.orchestration.search import create_search, is_search_plan
    from cifartui.engine.orchestration.sweep import read_plan

    if args.resume is not None:
        given = [name for name in plan_options + SEARCH_OPTIONS if getattr(args, name) not in (None, [])]
        if given:
            option = {"preset": "a PRESET", "sets": "--set"}.get(given[0], "--" + given[0].replace("_", "-"))
            raise ConfigError("--resume", "", f"a resumed sweep keeps its plan; {option} cannot change it "
                              "(--parallel, --devices, --device, --data-dir and --json can)")
        plan = read_plan(args.resume)
        if not is_search_plan(plan):  # only reached with a search option given, refused above
            raise ConfigError("--resume", str(args.resume), "not a search")
        queue, slots, launcher = resumed_queue(args)
    else:
        if args.preset is None:
            raise ConfigError("sweep", "", "expected a PRESET to search, or --resume SWEEP_DIR")
        plan, base = _plan(args)
        slots, launcher = new_slots(args, base.train.device)  # on Ray: connects, or says why not, first
        from cifartui.engine.runs.folders import default_runs_dir

        queue = create_search(args.runs_dir or default_runs_dir(), plan, base, device=base.train.device,
                              parallel=args.parallel, devices=args.devices, data_dir=args.data_dir).lock()
    try:
        return _drive(queue, plan, slots, args, console, display, launcher)
    finally:
        queue.unlock()


def _plan(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from cifartui.cli.training import _config_from_args
    from cifartui.engine.orchestration.search import SearchRequest, plan_search

    for name, option in GRID_OPTIONS.items():
        if getattr(args, name) not in (None, []):
            hint = " (use --pruner asha for early stopping)" if name == "halving" else ""
            raise ConfigError(option, "", f"cannot be combined with --search/--space/--trials: a search "
                              f"proposes its own settings, one run each{hint}")
    base = _config_from_args(args)
    explicit = {text.partition("=")[0].strip(): "--set" for text in args.sets}
    for option, key in (("epochs", "train.epochs"), ("batch_size", "train.batch_size"), ("lr", "optimizer.lr")):
        if getattr(args, option) is not None:
            explicit[key] = "--" + option.replace("_", "-")
    request = SearchRequest(space=tuple(args.space), trials=args.trials, sampler=(args.search or "tpe").lower(),
                            pruner=(args.pruner or "none").lower(),
                            min_epochs=args.pruner_min_epochs if args.pruner_min_epochs is not None else 1,
                            reduction_factor=args.pruner_factor if args.pruner_factor is not None else 3,
                            seed=args.seed, explicit=explicit)
    return plan_search(base, request)


def _drive(queue: Any, plan: dict[str, Any], slots: list[str], args: argparse.Namespace, console: Console,
           make_display: Callable[[Console, Any, dict[str, Any]], Any], launcher: Any = None) -> int:
    from cifartui.engine.orchestration.search import Search, SearchRunner, search_results

    search = Search(queue, plan)
    search.reconcile()
    display = make_display(console, queue, plan)

    def listener(event: Any) -> None:
        search(event)  # the study hears of an ended trial before the table shows it
        display(event)

    runner = SearchRunner(queue, slots, search, listener=listener, launcher=launcher)
    spec = plan["search"]
    console.print(f"Search of [bold]{escape(plan['preset'])}[/] ({spec['sampler']}, pruner {spec['pruner']}): "
                  f"{spec['trials']} trials, {len(slots)} at once. Sweep directory: "
                  f"{escape(str(queue.directory))}", highlight=False, soft_wrap=True)
    received = drive(runner, display)
    for entry in queue.entries:  # a trial that ended as the driver stopped
        if entry.state in ("finished", "stopped", "failed"):
            search.tell(entry)
    results = search_results(search.study, queue.entries)
    console.print(results_table(results, plan))
    for message in search.messages:
        console.print(f"[bold red]{escape(message)}[/]", highlight=False, soft_wrap=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {"sweep_dir": str(queue.directory), "preset": plan["preset"], "search": spec["sampler"],
                    "pruner": spec["pruner"], "metric": "best_" + spec["metric"], "varied": plan["varied"],
                    "trials": [result.to_dict() for result in results]}
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    counts = queue.counts()
    if received or counts["interrupted"] or counts["pending"] or counts["waiting"] or search.trials_left():
        console.print(f"Search interrupted. Continue it with: cifartui sweep --resume {escape(str(queue.directory))}",
                      highlight=False, soft_wrap=True)
        return SIGNAL_EXIT.get(received[0], 130) if received else EXIT_FAILED
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def results_table(results: list[Any], plan: dict[str, Any]) -> Table:
    from cifartui.engine.orchestration.sweep import format_value

    varied = list(plan.get("varied", []))
    metric = "best val top-1" if plan["search"]["metric"] == "val_top1" else "test top-1"
    table = Table(title=f"{plan['preset']}: trials ranked by {metric}", show_header=True)
    for name in ("rank", "trial", *varied, "state", "epochs", metric, "test top-1"):
        table.add_column(name, justify="left" if name in varied or name == "state" else "right",
                         style="cyan" if name in varied else None)
    for result in results:
        rank = "-" if result.rank is None else (f"★ {result.rank}" if result.rank == 1 else str(result.rank))
        value = "-" if result.value is None else f"{result.value:.2f}%"
        test = "-" if result.test_top1 is None else f"{result.test_top1:.2f}%"
        epochs = f"{result.epochs_done}/{result.epochs}" if result.epochs else ""
        table.add_row(rank, str(result.number), *(format_value(result.params[k]) if k in result.params else ""
                                                  for k in varied),
                      result.state, epochs, value, test, style="bold green" if result.rank == 1 else None)
    return table
