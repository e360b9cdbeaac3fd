"""`presets`, `runs` and `export`: what can be trained, what has been, and its history as files."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cifartui import presets
from cifartui.cli.common import (EXIT_OK, EXIT_USAGE, OutputPathError, check_output_dir, check_output_file,
                                 pct as _pct, write_output)
from cifartui.config import ConfigError, RunConfig, field_docs


def add_parsers(commands: Any) -> None:
    listing = commands.add_parser("presets", help="list presets, or show one resolved with its model summary")
    listing.set_defaults(handler=cmd_presets)
    listing.add_argument("name", nargs="?")
    listing.add_argument("--settings", action="store_true", help="document every setting a preset can hold")

    runs = commands.add_parser("runs", help="list runs with status, epochs and best accuracy")
    runs.set_defaults(handler=cmd_runs)
    runs.add_argument("--runs-dir", type=Path)

    export = commands.add_parser("export", help="the metrics history as CSV, JSON, TensorBoard files or a PNG plot")
    export.set_defaults(handler=cmd_export)
    export.add_argument("run_dir", type=Path)
    export.add_argument("--format", choices=("csv", "json", "tensorboard", "png"), required=True)
    export.add_argument("-o", "--output", type=Path, help="file to write (csv, json: default standard output; "
                        "png: default RUN_DIR/metrics.png) or folder (tensorboard: default RUN_DIR/tensorboard)")


def cmd_presets(args: argparse.Namespace, console: Console) -> int:
    if args.settings:
        table = Table(title="Preset settings", show_lines=False)
        for column in ("key", "type", "default", "meaning"):
            table.add_column(column, overflow="fold")
        for key, kind, doc, default in field_docs(RunConfig):
            table.add_row(key, escape(kind), escape(json.dumps(default)), escape(doc))
        console.print(table)
        return EXIT_OK
    if args.name:
        return _show_preset(args.name, console)
    # Four columns whose text wraps between words, so the table reads at 80 columns.
    table = Table(title="Presets", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("model, data", min_width=14)  # the longest model name and its comma, unbroken
    table.add_column("optimizer, length")
    table.add_column("reference")
    problems = []
    for name, entry in presets.available().items():
        try:
            config = presets.load(str(entry.path))
        except ConfigError as error:
            problems.append(str(error))
            continue
        reference = config.reference
        ref = ", ".join(part for part in (f"{reference.top1:g}%" if reference.top1 else "",
                                          f"top-5 {reference.top5:g}%" if reference.top5 else "") if part)
        if ref and reference.measured_on == "validation":
            ref += " (validation)"
        steps = (f"{config.train.max_steps / 1000:g}k it" if config.train.max_steps else f"{config.train.epochs} epochs")
        schedule = config.optimizer.schedule.name
        optimizer = config.optimizer.name + (f" {schedule}" if schedule != "constant" else "")
        table.add_row(escape(name) + ("" if entry.builtin else " (user)"), escape(f"{config.model.name}, {config.dataset.name}"),
                      f"{optimizer}, {steps}", ref or "-")
    console.print(table)
    for part in ("dataset", "model", "optimizer", "augment"):
        names = ", ".join(presets.available(part)) or "-"
        console.print(f"[bold]{part} parts:[/] {escape(names)}", highlight=False, soft_wrap=True)
    for problem in problems:
        Console(stderr=True).print(f"[yellow]skipped:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    return EXIT_OK


def _show_preset(name: str, console: Console) -> int:
    from cifartui.engine.train.models import build_model, summarize

    config = presets.load(name)
    console.print(f"[bold]{escape(config.name)}[/]: {escape(config.description)}", highlight=False, soft_wrap=True)
    reference = config.reference
    if reference.top1 or reference.top5 or reference.source:
        reported = ", ".join(part for part in (f"top-1 {reference.top1:g}%" if reference.top1 else "",
                                               f"top-5 {reference.top5:g}%" if reference.top5 else "") if part)
        seed = f"; write-up {reference.seed}" if reference.seed else ""
        console.print(f"[bold]Reference:[/] {reported or 'no number'} on the {reference.measured_on} set, "
                      f"{escape(reference.source)}{seed}", highlight=False)
    if reference.notes:
        console.print(f"[bold]What the recipe follows and assumes:[/] {escape(reference.notes.strip())}",
                      highlight=False)
    table = Table(show_header=True, title="Resolved configuration")
    table.add_column("key")
    table.add_column("value", overflow="fold")

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                flatten(f"{prefix}.{key}" if prefix else key, child)
        else:
            table.add_row(prefix, escape(json.dumps(value)))
    flatten("", config.to_dict())
    console.print(table)
    model = build_model(config.model, config.dataset.num_classes)
    summary = summarize(model, config.model.name)
    layers = Table(title=f"Model {escape(summary.name)}: {summary.total_parameters:,} parameters")
    for column in ("layer", "kind", "output shape", "parameters"):
        layers.add_column(column, justify="right" if column == "parameters" else "left")
    for row in summary.layers:
        layers.add_row(escape(row.name), escape(row.kind), "x".join(map(str, row.output_shape)), f"{row.parameters:,}")
    console.print(layers)
    console.print(_decay_table(model, config))
    return EXIT_OK


def _decay_table(model: Any, config: RunConfig) -> Table:
    """Which parameters decay how much: a parameter is named by its layer, then .weight or .bias."""
    from cifartui.engine.train.optim import decay_groups

    optimizer = config.optimizer
    keras = optimizer.decay_convention == "keras-l2"
    table = Table(title="Weight decay per parameter group" + (" (Keras l2(x): 2x in the gradient)" if keras else ""))
    for column in ("group", "matches", "tensors", "parameters", "decay in the gradient", "first parameter"):
        table.add_column(column, justify="right" if column in ("tensors", "parameters") else "left",
                         overflow="fold")
    for group in decay_groups(model, optimizer):
        index = group.label.removeprefix("decay_groups[").removesuffix("]")
        matches = ", ".join(optimizer.decay_groups[int(index)].match) if index.isdigit() else "-"
        table.add_row(group.label, matches, str(len(group.names)), f"{group.size:,}", f"{group.weight_decay:g} * w",
                      group.names[0] if group.names else "-")
    return table


def cmd_runs(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.runs.folders import default_runs_dir, list_runs

    from cifartui.engine.orchestration.sweep import find_sweeps

    runs_dir = args.runs_dir or default_runs_dir()
    infos, problems = list_runs(runs_dir)
    sweeps = find_sweeps(runs_dir)
    from cifartui.engine.orchestration.reproduce import find_reproductions

    reproductions = find_reproductions(runs_dir)
    if not infos and not problems and not sweeps and not reproductions:
        console.print(f"No runs in {runs_dir}. Start one with: cifartui train demo-synthetic", highlight=False,
                      soft_wrap=True, markup=False)
        return EXIT_OK
    if infos or problems:
        _print_runs(runs_dir, infos, console)
    for sweep_dir in sweeps:
        problem = _print_sweep(sweep_dir, console)
        if problem:
            problems.append(problem)
    for reproduction_dir in reproductions:
        problem = _print_reproduction(reproduction_dir, console)
        if problem:
            problems.append(problem)
    for problem in problems:
        Console(stderr=True).print(f"[yellow]unreadable run:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    return EXIT_OK


def _print_reproduction(directory: Path, console: Console) -> str:
    """A reproduction's report as its files say now (its runs live inside it); a problem, if unreadable."""
    from cifartui.cli.reproduce import report_table
    from cifartui.engine.orchestration.queue import QueueError
    from cifartui.engine.orchestration.reproduce import read_reproduction
    from cifartui.engine.runs.folders import RunDirError

    try:
        plan, rows = read_reproduction(directory)
    except (QueueError, RunDirError) as error:
        return str(error)
    console.print(f"Reproduction {escape(directory.name)}:", highlight=False, soft_wrap=True)
    console.print(report_table(rows, plan, console.size.width))
    return ""


def _print_runs(runs_dir: Path, infos: list[Any], console: Console) -> None:
    table = Table(title=f"Runs in {escape(str(runs_dir))}", box=box.SIMPLE_HEAD)
    # The run directory's name already holds the UTC start time and the preset.
    table.add_column("run", no_wrap=True)
    for column in ("status", "epochs", "best val", "test"):
        table.add_column(column, no_wrap=True, justify="left" if column == "status" else "right")
    for info in infos:
        table.add_row(escape(info.path.name), escape(info.status), f"{info.epochs_done}/{info.epochs_total}",
                      _pct(info.best_val_top1), _pct(info.test_top1))
    console.print(table)


def _print_sweep(sweep_dir: Path, console: Console) -> str:
    """A sweep's runs as one table (their directories live inside the sweep's); a problem, if unreadable."""
    from cifartui.engine.orchestration.queue import ProgressTails, QueueError
    from cifartui.engine.runs.folders import RunDirError
    from cifartui.engine.orchestration.sweep import format_value, read_sweep

    def plural_runs(count: int) -> str:
        return f"{count} run" + ("" if count == 1 else "s")

    def settings_text(settings: dict[str, Any], keys: list[str]) -> str:
        """Each varied setting by the last part of its key, unless two keys end alike."""
        ends = [key.rsplit(".", 1)[-1] for key in keys]
        return " ".join(f"{end if ends.count(end) == 1 else key}={format_value(settings[key])}"
                        for key, end in zip(keys, ends) if key in settings) or "-"

    try:
        status = read_sweep(sweep_dir, progress=ProgressTails())  # parses only the lines progress needs
    except (QueueError, RunDirError) as error:
        return str(error)
    varied = status.varied
    best = next((result for result in status.ranked if result.best), None)
    title = (f"Sweep {escape(sweep_dir.name)}: {escape(str(status.plan.get('preset', '')))}, "
             f"{plural_runs(len(status.runs))}, {status.state}")
    table = Table(title=title, box=box.SIMPLE_HEAD)
    wide = console.width >= 110  # room for each run's directory (NNN/<run>) beside its settings
    for column in ("run", "settings", "seed", "status", "epochs", "best val", "test") + (("directory",) if wide else ()):
        table.add_column(column, no_wrap=True, justify="right" if column in ("seed", "epochs", "best val", "test")
                         else "left")
    for entry, run in zip(status.entries, status.runs):
        row = [entry.key, escape(settings_text(run.settings, varied)), str(run.seed), escape(run.state),
               f"{run.epochs_done}/{run.epochs}", _pct(run.best_val_top1), _pct(run.test_top1)]
        if wide:
            row.append(escape(f"{entry.key}/{entry.run_name}" if entry.run_name else "-"))
        table.add_row(*row)
    console.print(table)
    if best is not None and best.mean is not None:
        settings = " ".join(f"{key}={format_value(best.settings[key])}" for key in varied if key in best.settings)
        spread = f" ± {best.std:.2f}" if best.std is not None else ""
        counted = sum(1 for run in best.runs if run.best_val_top1 is not None)
        console.print(f"  best: {escape(settings or 'the recipe')}, best val top-1 {best.mean:.2f}{spread}% "
                      f"over {plural_runs(counted)}", highlight=False, soft_wrap=True)
    return ""


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.runs.folders import RunDirError, read_config, read_metrics

    config = read_config(args.run_dir)  # a clear error when this is not a run directory
    output = _export_output(args)
    events = read_metrics(args.run_dir)
    metrics = args.run_dir / "metrics.jsonl"
    rows = [e for e in events if e["event"] in ("StepMetrics", "EpochEnded", "RunFinished")]
    if not metrics.is_file():
        raise RunDirError(f"{metrics}: missing, so there is nothing to export (the run has no metrics yet)")
    if not (events if args.format == "json" else rows):
        raise RunDirError(f"{metrics}: no metrics to export yet (the run has not logged a training step)")
    if args.format in ("tensorboard", "png"):
        from cifartui.exports import ExportUnavailable, export_png, export_tensorboard

        try:
            if args.format == "tensorboard":
                written = export_tensorboard(events, output)
                console.print(f"Wrote TensorBoard event files to {written}; view them with: "
                              f"tensorboard --logdir {written}", highlight=False, soft_wrap=True, markup=False)
            else:
                written = export_png(events, output, title=f"{config.name}: {args.run_dir.name}")
                console.print(f"Wrote {written}", highlight=False, soft_wrap=True, markup=False)
        except ExportUnavailable as error:
            Console(stderr=True).print(f"[bold red]error:[/] {escape(str(error))}", highlight=False,
                                       soft_wrap=True)
            return EXIT_USAGE
        except OSError as error:  # the disk filled or the folder went away meanwhile
            raise OutputPathError(f"{output}: cannot write the export: {error.strerror or error}") from None
        return EXIT_OK
    if args.format == "json":
        text = json.dumps(events, indent=2) + "\n"
    else:
        columns: list[str] = []
        for row in rows:
            columns += [key for key, value in row.items()
                        if key not in columns and not isinstance(value, (dict, list))]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    if output is not None:
        write_output(output, text, f"the {args.format.upper()} export")
        console.print(f"Wrote {output}", highlight=False, soft_wrap=True, markup=False)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _export_output(args: argparse.Namespace) -> Path | None:
    """Where the export goes, checked before anything is computed; None for standard output."""
    output = args.output
    if args.format == "tensorboard":
        return check_output_dir(output or args.run_dir / "tensorboard", "the TensorBoard folder")
    if args.format == "png":
        output = output or args.run_dir / "metrics.png"
        if not output.suffix and not output.is_dir():
            output = output.with_name(output.name + ".png")  # the name that will be written, and said
        elif output.suffix.lower() != ".png" and not output.is_dir():
            raise OutputPathError(f"{output}: --format png writes a PNG image; give a file name ending in "
                                  ".png (or none, and .png is added)")
        return check_output_file(output, "the plot")
    return check_output_file(output, f"the {args.format.upper()} export") if output is not None else None
