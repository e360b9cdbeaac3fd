"""`reproduce`: train the seed recipes as written, several at once, and report reported vs reproduced accuracy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cifartui.cli.common import (EXIT_FAILED, EXIT_OK, LiveQueueTable, SIGNAL_EXIT, STATE_STYLE, check_output_file,
                                 drive, pct, state_cell, write_output)
from cifartui.cli.ray_option import add_ray_option, new_slots, resumed_queue
from cifartui.config import ConfigError
from cifartui.engine.orchestration.reproduce import QUICK_EPOCHS, QUICK_MAX_STEPS, WITHIN_POINTS

# Options that make the plan; a resumed reproduction keeps the plan it has.
PLAN_OPTIONS = ("presets", "quick", "dataset", "sets", "runs_dir")

DESCRIPTION = f"""\
Train the seed recipes (presets whose reference names a write-up in reference.seed; all
of them when no PRESET is named) exactly as written, several runs at once (one per GPU,
one on the CPU, or --parallel per device), and print the reported accuracy beside the
reproduced one: the test top-1 / top-5 for results reported on the test set, the best
validation top-1 for those reported on a validation split. A run within
{WITHIN_POINTS:g} point of the reported top-1 reads "within 1 point", else "below" or
"above" by the difference. The table is also written as report.md and report.json in the
reproduction directory (and to --markdown / --json). --quick trains every recipe for at
most {QUICK_MAX_STEPS} steps ({QUICK_EPOCHS} epoch), so the whole table comes out on a CPU:
it shows that the recipes train, and is marked quick, with no verdicts. --dataset and --set
change every recipe, and the report marks it modified. An interrupted reproduction
continues with --resume DIR: finished runs stay finished, interrupted ones resume from
their checkpoints."""


def add_parsers(commands: Any) -> None:
    reproduce = commands.add_parser(
        "reproduce", help="train the seed recipes as written and compare with their write-ups' results",
        description=DESCRIPTION)
    reproduce.set_defaults(handler=cmd_reproduce)
    reproduce.add_argument("presets", nargs="*", metavar="PRESET",
                           help="recipes to reproduce, in the table's order (default: every seed recipe)")
    reproduce.add_argument("--quick", action="store_true",
                           help=f"train each recipe for at most {QUICK_MAX_STEPS} steps ({QUICK_EPOCHS} epoch) "
                           "instead of its own budget; the report is marked quick and judges nothing")
    reproduce.add_argument("--dataset", help="swap every recipe's dataset part (e.g. synthetic); marks the report "
                           "modified")
    reproduce.add_argument("--set", dest="sets", action="append", default=[], metavar="PART.KEY=VALUE",
                           help="override a setting of every recipe (repeatable); marks the report modified")
    reproduce.add_argument("--parallel", type=int, metavar="P", help="runs at once on each device (default 1)")
    reproduce.add_argument("--devices", metavar="LIST", help="which GPUs, e.g. 0,1 (default: every visible GPU)")
    reproduce.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    reproduce.add_argument("--runs-dir", type=Path, help="where the reproduction directory is made (default ./runs "
                           "or $CIFARTUI_RUNS)")
    reproduce.add_argument("--data-dir", type=Path, help="where CIFAR lives or is downloaded (default: "
                           "$CIFARTUI_DATA or the user cache dir)")
    reproduce.add_argument("--markdown", type=Path, metavar="FILE", help="also write the report as Markdown here")
    reproduce.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON here")
    reproduce.add_argument("--resume", type=Path, metavar="DIR", help="continue an interrupted reproduction")
    add_ray_option(reproduce)


def cmd_reproduce(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.orchestration.reproduce import read_plan

    for path, option in ((args.markdown, "--markdown"), (args.json, "--json")):
        if path is not None:
            check_output_file(path, option)  # before any training, not found unwritable at its end
    if args.resume is not None:
        given = [name for name in PLAN_OPTIONS if getattr(args, name) not in (None, [], False)]
        if given:
            option = {"presets": "a PRESET", "sets": "--set"}.get(given[0], "--" + given[0].replace("_", "-"))
            raise ConfigError("--resume", "", f"a resumed reproduction keeps its plan; {option} cannot change it "
                              "(--parallel, --devices, --device, --data-dir, --markdown and --json can)")
        plan = read_plan(args.resume)
        queue, slots, launcher = resumed_queue(args)
    else:
        plan, runs = _plan(args)
        device = args.device or "auto"
        slots, launcher = new_slots(args, device)  # on Ray: connects, or says why not, before anything is written
        queue = _create(args, plan, runs, device)
    try:
        return _drive(queue, plan, slots, args, console, launcher)
    finally:
        queue.unlock()


def _plan(args: argparse.Namespace) -> tuple[dict[str, Any], list[Any]]:
    """The plan and its runs, every recipe loaded, changed as asked and its model built once; nothing written."""
    from cifartui import presets
    from cifartui.cli.training import _check_model
    from cifartui.engine.orchestration.reproduce import plan_reproduction, select_recipes

    recipes = select_recipes(args.presets, load=presets.load, seed_recipes=presets.seed_recipes)
    plan, runs = plan_reproduction(recipes, compose=presets.compose, quick=args.quick, dataset=args.dataset,
                                   sets=args.sets)
    checked: set[str] = set()
    for run in runs:
        model = repr((run.config.model, run.config.dataset.num_classes))
        if model not in checked:
            _check_model(run.config)
            checked.add(model)
    return plan, runs


def _create(args: argparse.Namespace, plan: dict[str, Any], runs: list[Any], device: str) -> Any:
    from cifartui.cli.common import check_output_dir
    from cifartui.engine.orchestration.reproduce import create_reproduction
    from cifartui.engine.runs.folders import default_runs_dir

    runs_dir = check_output_dir(args.runs_dir or default_runs_dir(), "the runs folder")
    queue = create_reproduction(runs_dir, plan, runs, device=device, parallel=args.parallel, devices=args.devices,
                                data_dir=args.data_dir)
    return queue.lock()


def _drive(queue: Any, plan: dict[str, Any], slots: list[str], args: argparse.Namespace, console: Console,
           launcher: Any = None) -> int:
    from cifartui.engine.orchestration.queue import QueueRunner
    from cifartui.engine.orchestration.reproduce import REPORT_JSON, REPORT_MARKDOWN, render_json, render_markdown, report_rows

    display = ReproduceDisplay(console, queue)
    if launcher is not None:
        slots = launcher.slots()
    runner = QueueRunner(queue, slots, listener=display, launcher=launcher)
    where = ", ".join(sorted(set(slots)))
    quick = " (quick)" if plan.get("quick") else ""
    console.print(f"Reproduction{quick} of {len(queue.entries)} recipes, {len(slots)} at once ({escape(where)}). "
                  f"Reproduction directory: {escape(str(queue.directory))}", highlight=False, soft_wrap=True)
    if plan.get("modified"):
        console.print(f"Modified: {escape(', '.join(plan['modified']))}; the recipes are not trained as written.",
                      highlight=False, soft_wrap=True)
    received = drive(runner, display)
    rows = report_rows(queue.entries, plan)
    console.print(report_table(rows, plan, console.size.width))
    markdown = render_markdown(rows, plan, queue.directory)
    data = json.dumps(render_json(rows, plan, queue.directory), indent=2) + "\n"
    write_output(queue.directory / REPORT_MARKDOWN, markdown, "the Markdown report")
    write_output(queue.directory / REPORT_JSON, data, "the JSON report")
    if args.markdown is not None:
        write_output(args.markdown, markdown, "--markdown")
    if args.json is not None:
        write_output(args.json, data, "--json")
    console.print(f"Report: {escape(str(queue.directory / REPORT_MARKDOWN))} and {REPORT_JSON}", highlight=False,
                  soft_wrap=True)
    counts = queue.counts()
    for entry in queue.entries:
        if entry.state == "failed":
            console.print(f"[bold red]{escape(str(entry.label.get('recipe')))} failed:[/] {escape(entry.message)} "
                          f"(output in {escape(str(entry.output_path))})", highlight=False, soft_wrap=True)
    if received or counts["interrupted"] or counts["pending"] or counts["waiting"] or counts["running"]:
        console.print("Reproduction interrupted. Continue it with: cifartui reproduce --resume "
                      f"{escape(str(queue.directory))}", highlight=False, soft_wrap=True)
        return SIGNAL_EXIT.get(received[0], 130) if received else EXIT_FAILED
    return EXIT_FAILED if counts["failed"] else EXIT_OK


VERDICT_STYLE = {"within": "bold green", "below": "yellow", "above": "cyan", "quick": "dim", "failed": "bold red",
                 "not run": "dim", "interrupted": "yellow", "no result": "magenta"}


# The widest a recipe's name is shown on one line in the report table; longer names break after a hyphen.
RECIPE_WIDTH = 16


def _wrap_at_hyphens(name: str, width: int) -> str:
    lines, line = [], ""
    for part in name.replace("-", "-\0").split("\0"):
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    return "\n".join(lines + [line])


def _narrow_widths(width: int, name_width: int) -> dict[str, int]:
    """Column widths that fit `width`: the recipe's name whole, the numbers as they wrap at their spaces,
    and what is left to the verdict (Rich alone would cut the last columns off)."""
    fixed = {"recipe": name_width, "source": 6, "reported": 7, "reproduced": 7, "epochs": 7, "wall time": 6,
             "device": 6}
    gaps = 2 * (len(fixed) + 1) - 2  # a space each side of a column, but for the table's edges
    fixed["verdict"] = max(6, width - sum(fixed.values()) - gaps)
    return fixed


def report_table(rows: list[Any], plan: dict[str, Any], width: int = 200) -> Table:
    """The report for a terminal `width` columns wide; below 140 the source column shows only the write-up's number."""
    from cifartui.engine.orchestration.reproduce import COLUMNS, row_cells, title

    caption = None
    if plan.get("modified"):
        caption = "modified: " + ", ".join(plan["modified"])
    narrow = width < 140
    table = Table(title=title(plan), caption=caption, show_header=True, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  width=width if narrow else None)
    # Every name whole (up to the longest a narrow terminal has room for, then cut at its hyphens): the other
    # columns wrap instead, for on an 80-column terminal the eight columns fit only so.
    name_width = min(max([len(str(row.recipe)) for row in rows] + [len("recipe")]), RECIPE_WIDTH)
    widths = _narrow_widths(width, name_width) if narrow else {}
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in ("reported", "reproduced", "epochs", "wall time")
                         else "left", overflow="fold", width=widths.get(column))
    for row in rows:
        cells = row_cells(row)
        cells[0] = _wrap_at_hyphens(cells[0], name_width)
        if narrow:  # the write-up by its number alone (NNN of NNN_hash; report.md has it all); the split below
            cells[1] = row.seed.split("_", 1)[0] if row.seed else "-"
            cells[2] = cells[2].replace(" (", "\n(")
        table.add_row(*cells[:-1], Text(cells[-1], style=VERDICT_STYLE.get(row.verdict, "")))
    return table




class ReproduceDisplay(LiveQueueTable):
    """The runs as a Rich live table on a terminal; a line per change of state elsewhere (logs, pipes)."""

    def __call__(self, event: Any) -> None:
        from cifartui.engine.orchestration.queue import EntryChanged

        if self.live is not None:
            self.redraw()
        elif isinstance(event, EntryChanged):
            entry = next(e for e in self.queue.entries if e.key == event.key)
            line = Text(f"{entry.label.get('recipe', entry.key)}: ")
            line.append(event.new, style=STATE_STYLE.get(event.new, ""))
            if event.message:
                line.append(f" - {event.message}")
            self.console.print(line, highlight=False, soft_wrap=True)

    def render(self) -> Any:
        table = Table(show_header=True, header_style="bold", expand=False)
        for name in ("recipe", "device", "status", "epoch", "best val top-1"):
            table.add_column(name, justify="right" if name in ("epoch", "best val top-1") else "left")
        entries = self.queue.entries
        room = max(5, self.console.size.height - 6)
        shown = sorted(entries, key=lambda e: (e.state != "running", e.key))[:room]
        for entry in sorted(shown, key=lambda e: e.key):
            epochs = f"{entry.progress.epochs_done}/{entry.epochs}" if entry.state != "pending" else ""
            table.add_row(str(entry.label.get("recipe", entry.key)), entry.device or "",
                          state_cell(entry), epochs,
                          pct(entry.progress.best_val_top1))
        counts = self.queue.counts()
        summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        hidden = len(entries) - len(shown)
        more = f" ({hidden} more not shown)" if hidden > 0 else ""
        return Group(table, Text(f"{summary}{more}", style="dim"))
