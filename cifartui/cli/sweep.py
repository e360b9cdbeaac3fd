"""`sweep`: many runs of one recipe over a grid or random settings and seeds, ranked as they finish."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cifartui.cli import pbt, search
from cifartui.cli.common import EXIT_FAILED, EXIT_OK, LiveQueueTable, SIGNAL_EXIT, STATE_STYLE, drive, state_cell
from cifartui.cli.ray_option import add_ray_option, new_slots, resumed_queue
from cifartui.cli.training import preset_options
from cifartui.config import ConfigError

# Larger plans take a while to check and write; asked for by --max-runs or --yes.
MAX_RUNS = 1000
# Options that make the plan; a resumed sweep keeps the plan it has.
PLAN_OPTIONS = ("preset", "grid", "range", "random", "seeds", "halving", "sets", "epochs", "dataset", "model",
                "optimizer", "augment", "batch_size", "lr", "seed", "runs_dir", "max_runs")


def add_parsers(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep", help="train a recipe over a grid or random settings and seeds, several runs at once, ranked",
        description="Train PRESET once per setting and seed, several runs at once, and rank the settings by "
        "best validation top-1 (mean and standard deviation over seeds). The sweep directory in the runs "
        "directory keeps the plan and each run's state: `--resume SWEEP_DIR` continues an interrupted sweep.")
    sweep.set_defaults(handler=cmd_sweep)
    preset_options(sweep)
    for action in sweep._actions:  # the preset is not needed with --resume
        if action.dest == "preset":
            action.nargs, action.default = "?", None
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="try each value of a setting, e.g. --grid optimizer.lr=0.01,0.1 (repeatable: "
                       "every combination is tried)")
    sweep.add_argument("--random", type=int, metavar="N", help="try N random settings instead of every "
                       "combination: drawn from --range, picked from --grid lists")
    sweep.add_argument("--range", action="append", default=[], metavar="KEY=LOW:HIGH[:log]",
                       help="with --random: draw a setting uniformly (or log-uniformly) from [LOW, HIGH]")
    sweep.add_argument("--seeds", type=int, metavar="K", help="train each setting K times, with seeds 0..K-1")
    sweep.add_argument("--parallel", type=int, metavar="P", help="runs at once on each device (default 1)")
    sweep.add_argument("--devices", metavar="LIST", help="which GPUs, e.g. 0,1 (default: every visible GPU)")
    sweep.add_argument("--halving", type=int, nargs="?", const=1, metavar="FIRST",
                       help="successive halving: at epochs FIRST, 2*FIRST, 4*FIRST, ... (default FIRST=1) stop "
                       "a run whose best validation top-1 is in the worse half of the runs that got there")
    sweep.add_argument("--max-runs", type=int, metavar="N", help=f"refuse a plan of more than N runs (default "
                       f"{MAX_RUNS}): a plan is made and written whole before the first run starts")
    sweep.add_argument("--yes", action="store_true", help="plan any number of runs (no --max-runs limit)")
    sweep.add_argument("--json", type=Path, metavar="FILE", help="write the ranked table as JSON")
    sweep.add_argument("--resume", type=Path, metavar="SWEEP_DIR", help="continue an interrupted sweep")
    search.add_options(sweep)
    pbt.add_options(sweep)
    add_ray_option(sweep)


def cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.orchestration.sweep import read_plan

    if args.pbt_export is not None:
        return pbt.cmd_export(args, console)
    if pbt.wants_pbt(args):  # --pbt N and its options, or --resume of a PBT sweep's folder
        return pbt.cmd_pbt(args, console, plan_options=PLAN_OPTIONS, display=SweepDisplay)
    if search.wants_search(args):  # --search, --space, ... or --resume of a search's folder
        return search.cmd_search(args, console, plan_options=PLAN_OPTIONS, display=SweepDisplay)
    if args.resume is not None:
        given = [name for name in PLAN_OPTIONS if getattr(args, name) not in (None, [])]
        if given:
            option = {"preset": "a PRESET", "sets": "--set"}.get(given[0], "--" + given[0].replace("_", "-"))
            raise ConfigError("--resume", "", f"a resumed sweep keeps its plan; {option} cannot change it "
                              "(--parallel, --devices, --device, --data-dir and --json can)")
        plan = read_plan(args.resume)
        queue, slots, launcher = resumed_queue(args)
    else:
        if args.preset is None:
            raise ConfigError("sweep", "", "expected a PRESET to sweep, or --resume SWEEP_DIR")
        plan, runs, device = _plan(args, console)
        slots, launcher = new_slots(args, device)  # on Ray: connects, or says why not, before anything is written
        queue = _create(args, plan, runs, device)
    try:
        return _drive(queue, plan, slots, args, console, launcher)
    finally:
        queue.unlock()


def _plan(args: argparse.Namespace, console: Console) -> tuple[dict[str, Any], list[Any], str]:
    """The plan and its runs, every one validated; nothing is written yet."""
    from cifartui.cli.training import _check_model, _config_from_args
    from cifartui.engine.orchestration.sweep import SweepRequest, plan_sweep

    base = _config_from_args(args)  # the recipe with the options of train, as `train` would build it
    explicit = {text.partition("=")[0].strip(): "--set" for text in args.sets}
    for option, key in (("epochs", "train.epochs"), ("batch_size", "train.batch_size"), ("lr", "optimizer.lr")):
        if getattr(args, option) is not None:
            explicit[key] = "--" + option.replace("_", "-")
    if args.max_runs is not None and args.max_runs < 1:
        raise ConfigError("--max-runs", str(args.max_runs), "expected a positive number of runs")
    request = SweepRequest(grids=tuple(args.grid), ranges=tuple(args.range), random=args.random, seeds=args.seeds,
                           halving=args.halving, seed=args.seed, explicit=explicit,
                           max_runs=None if args.yes else args.max_runs or MAX_RUNS)

    def announce(runs: int, settings: int, seeds: int) -> None:
        console.print(f"Planning {runs:,} runs ({settings:,} settings x {seeds:,} seeds)...", highlight=False)

    plan, runs = plan_sweep(base, request, check_model=_check_model, announce=announce)
    return plan, runs, base.train.device


def _create(args: argparse.Namespace, plan: dict[str, Any], runs: list[Any], device: str) -> Any:
    from cifartui.engine.runs.folders import default_runs_dir
    from cifartui.engine.orchestration.sweep import create_sweep

    queue = create_sweep(args.runs_dir or default_runs_dir(), plan, runs, device=device, parallel=args.parallel,
                         devices=args.devices, data_dir=args.data_dir)
    return queue.lock()


def _drive(queue: Any, plan: dict[str, Any], slots: list[str], args: argparse.Namespace, console: Console,
           launcher: Any = None) -> int:
    from cifartui.engine.orchestration.queue import QueueRunner
    from cifartui.engine.orchestration.sweep import SuccessiveHalving, rank_settings, sweep_runs

    halving = SuccessiveHalving(plan["halving"]) if plan.get("halving") else None
    if halving is not None:
        for entry in queue.entries:
            halving.remember(entry.key, entry.progress.best_until, entry.progress.epochs_done, entry.epochs)

    def on_epoch(entry: Any) -> str | None:
        if halving is None:
            return None
        return halving.judge(entry.key, entry.progress.best_until, entry.progress.epochs_done, entry.epochs)

    display = SweepDisplay(console, queue, plan)
    if launcher is not None:
        slots = launcher.slots()
    runner = QueueRunner(queue, slots, listener=display, on_epoch=on_epoch, launcher=launcher)
    where = ", ".join(sorted(set(slots)))
    console.print(f"Sweep of [bold]{escape(plan['preset'])}[/]: {len(queue.entries)} runs, {len(slots)} at once "
                  f"({escape(where)}). Sweep directory: {escape(str(queue.directory))}",
                  highlight=False, soft_wrap=True)
    received = drive(runner, display)
    ranked = rank_settings(sweep_runs(queue.entries))
    console.print(ranked_table(ranked, plan))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results_json(queue, plan, ranked), indent=2) + "\n", encoding="utf-8")
    counts = queue.counts()
    for entry in queue.entries:
        if entry.state == "failed":
            console.print(f"[bold red]run {entry.key} failed:[/] {escape(entry.message)} "
                          f"(output in {escape(str(entry.output_path))})", highlight=False, soft_wrap=True)
        elif entry.state == "stopped" and entry.run_dir is not None:
            console.print(f"run {entry.key} stopped early ({escape(entry.message)}); it goes on with: "
                          f"cifartui resume {escape(str(entry.run_dir))}", highlight=False, soft_wrap=True)
    if received or counts["interrupted"] or counts["pending"] or counts["waiting"]:
        console.print(f"Sweep interrupted. Continue it with: cifartui sweep --resume {escape(str(queue.directory))}",
                      highlight=False, soft_wrap=True)
        return SIGNAL_EXIT.get(received[0], 130) if received else EXIT_FAILED
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def _settings_text(settings: dict[str, Any], varied: list[str]) -> list[str]:
    from cifartui.engine.orchestration.sweep import format_value

    return [format_value(settings[key]) if key in settings else "" for key in varied]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


class SweepDisplay(LiveQueueTable):
    """The sweep's runs as a Rich live table on a terminal; a line per change of state elsewhere (logs, pipes)."""

    def __init__(self, console: Console, queue: Any, plan: dict[str, Any]):
        super().__init__(console, queue)
        self.varied = list(plan.get("varied", []))
        self.recent: list[str] = []  # keys of runs in the order they last changed

    def __call__(self, event: Any) -> None:
        from cifartui.engine.orchestration.queue import EntryChanged

        if isinstance(event, EntryChanged):
            if event.key in self.recent:
                self.recent.remove(event.key)
            self.recent.append(event.key)
            if self.live is None:
                self._print_change(event)
        self.redraw()

    def _print_change(self, event: Any) -> None:
        entry = next(e for e in self.queue.entries if e.key == event.key)
        values = _settings_text(entry.label.get("settings", {}), self.varied)
        what = " ".join(f"{key}={value}" for key, value in zip(self.varied, values))
        seed = f"seed {entry.label.get('seed', 0)}"
        line = Text(f"run {entry.key} ({what + ', ' if what else ''}{seed}): ")
        line.append(event.new, style=STATE_STYLE.get(event.new, ""))
        best = entry.progress.best_val_top1
        if event.new in ("finished", "stopped") and best is not None:
            line.append(f", best val top-1 {best:.2f}%")
        if event.message:
            line.append(f" - {event.message}")
        self.console.print(line, highlight=False, soft_wrap=True)

    def render(self) -> Any:
        table = Table(show_header=True, header_style="bold", expand=False)
        table.add_column("run")
        for key in self.varied:
            table.add_column(key, style="cyan")
        for name in ("seed", "device", "status", "epoch", "best val top-1"):
            table.add_column(name, justify="right" if name in ("seed", "epoch", "best val top-1") else "left")
        entries = self.queue.entries
        room = max(5, self.console.size.height - 6)
        order = {key: i for i, key in enumerate(reversed(self.recent))}
        shown = sorted(entries, key=lambda e: (e.state != "running", e.state not in ("waiting",),
                                               order.get(e.key, len(order)), e.key))[:room]
        for entry in sorted(shown, key=lambda e: e.key):
            epochs = f"{entry.progress.epochs_done}/{entry.epochs}" if entry.state != "pending" else ""
            table.add_row(entry.key, *_settings_text(entry.label.get("settings", {}), self.varied),
                          str(entry.label.get("seed", "")), entry.device or "",
                          state_cell(entry), epochs,
                          _pct(entry.progress.best_val_top1))
        counts = self.queue.counts()
        summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        hidden = len(entries) - len(shown)
        more = f" ({hidden} more not shown)" if hidden > 0 else ""
        return Group(table, Text(f"{summary}{more}", style="dim"))


def ranked_table(ranked: list[Any], plan: dict[str, Any]) -> Table:
    varied = list(plan.get("varied", []))
    seeds = len(plan.get("seeds", [])) or 1
    table = Table(title=f"{plan['preset']}: settings ranked by best validation top-1"
                  + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else ""), show_header=True)
    table.add_column("rank", justify="right")
    for key in varied:
        table.add_column(key, style="cyan")
    table.add_column("runs", justify="right")
    table.add_column("best val top-1", justify="right")
    table.add_column("test top-1", justify="right")
    for result in ranked:
        states = [run.state for run in result.runs]
        runs = str(len(states))
        others = {state: states.count(state) for state in states if state != "finished"}
        if others:
            runs += " (" + ", ".join(f"{n} {state}" for state, n in others.items()) + ")"
        if result.mean is None:
            score = "-"
        elif result.std is None:
            score = f"{result.mean:.2f}%"
        else:
            score = f"{result.mean:.2f} ± {result.std:.2f}%"
        rank = "-" if result.rank is None else (f"★ {result.rank}" if result.best else str(result.rank))
        table.add_row(rank, *_settings_text(result.settings, varied), runs, score, _pct(result.test_mean),
                      style="bold green" if result.best else None)
    return table


def results_json(queue: Any, plan: dict[str, Any], ranked: list[Any]) -> dict[str, Any]:
    from dataclasses import asdict

    from cifartui.engine.orchestration.sweep import sweep_runs

    return {"sweep_dir": str(queue.directory), "preset": plan["preset"], "metric": "best_val_top1",
            "varied": plan.get("varied", []), "seeds": plan.get("seeds", []),
            "settings": [result.to_dict() for result in ranked],
            "runs": [asdict(run) for run in sweep_runs(queue.entries)]}

