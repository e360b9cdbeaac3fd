"""The `cifartui` command: the headless subcommands, with Rich output.

Exit codes: 0 finished; 1 the run failed unexpectedly (traceback in the run's
error.log); 2 a user mistake (preset, option, data, checkpoint, device), reported in
one message with no traceback; 3 the run stopped on a non-finite loss or a
checkpoint it could not write; 130 / 143 / 129 stopped by SIGINT / SIGTERM / SIGHUP
after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cifartui import presets
from cifartui.config import ConfigError, RunConfig, field_docs, replace_path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PAUSED_HEADLESS = 0, 1, 2, 3
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
if hasattr(signal, "SIGHUP"):
    SIGNAL_EXIT[signal.SIGHUP] = 129


def _user_errors() -> tuple[type[BaseException], ...]:
    from cifartui.engine.checkpoint import CheckpointError
    from cifartui.engine.data import DataError
    from cifartui.engine.inspect import InspectError
    from cifartui.engine.models import ModelError
    from cifartui.engine.runs import RunDirError
    from cifartui.engine.trainer import DeviceError, ResumeRefused
    from cifartui.ui.graphics import GraphicsError
    return (ConfigError, DataError, ModelError, DeviceError, CheckpointError, RunDirError, ResumeRefused,
            InspectError, GraphicsError)


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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def run_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--data-dir", type=Path, help="where CIFAR lives or is downloaded (default: "
                         "$CIFARTUI_DATA or the user cache dir)")
        sub.add_argument("--summary-json", type=Path, metavar="FILE", help="write the final metrics as JSON")

    def preset_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("preset", help="preset name or path to a TOML file")
        sub.add_argument("--set", dest="sets", action="append", default=[], metavar="PART.KEY=VALUE",
                         help="override any setting, e.g. --set optimizer.lr=0.1 (repeatable)")
        sub.add_argument("--epochs", type=int)
        sub.add_argument("--dataset", help="swap the dataset part (cifar10, cifar100, cifar100-coarse, synthetic)")
        sub.add_argument("--model", help="swap the model part for a model preset")
        sub.add_argument("--optimizer", help="swap the optimizer part (with its schedule)")
        sub.add_argument("--augment", help="swap the augmentation part")
        sub.add_argument("--batch-size", type=int)
        sub.add_argument("--lr", type=float)
        sub.add_argument("--device", help="auto, cpu, cuda or cuda:N")
        sub.add_argument("--seed", type=int)
        sub.add_argument("--runs-dir", type=Path, help="parent of run directories (default ./runs or $CIFARTUI_RUNS)")
        sub.add_argument("--data-dir", type=Path, help="where CIFAR lives or is downloaded (default: "
                         "$CIFARTUI_DATA or the user cache dir)")

    run = commands.add_parser("run", help="open the app with a preset already training")
    preset_options(run)
    run.add_argument("--images", choices=("auto", "sixel", "kitty", "halfblock"), default=argparse.SUPPRESS,
                     help="how the app draws pictures (as before the command)")

    train = commands.add_parser("train", help="train a preset headless, with a progress bar")
    preset_options(train)
    train.add_argument("--summary-json", type=Path, metavar="FILE", help="write the final metrics as JSON")

    resume = commands.add_parser("resume", help="continue a run from its checkpoints/last.pt")
    resume.add_argument("run_dir", type=Path)
    resume.add_argument("--epochs", type=int, help="train up to this many epochs in total")
    resume.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    run_options(resume)

    listing = commands.add_parser("presets", help="list presets, or show one resolved with its model summary")
    listing.add_argument("name", nargs="?")
    listing.add_argument("--settings", action="store_true", help="document every setting a preset can hold")

    runs = commands.add_parser("runs", help="list runs with status, epochs and best accuracy")
    runs.add_argument("--runs-dir", type=Path)

    inspect = commands.add_parser("inspect", help="test-set accuracy per class and the confusion matrix")
    inspect.add_argument("run_dir", type=Path)
    inspect.add_argument("--checkpoint", choices=("best", "last"), default="best")
    inspect.add_argument("--json", action="store_true", help="print JSON (confusion_matrix: rows = true class)")
    inspect.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    inspect.add_argument("--data-dir", type=Path, help="where CIFAR lives (default: $CIFARTUI_DATA or the cache)")

    predict = commands.add_parser("predict", help="top-5 classes for image files of any size")
    predict.add_argument("run_dir", type=Path)
    predict.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    predict.add_argument("--checkpoint", choices=("best", "last"), default="best")
    predict.add_argument("--json", action="store_true")
    predict.add_argument("--data-dir", type=Path, help="where CIFAR lives (its training split fits the "
                         "preprocessing)")

    export = commands.add_parser("export", help="the metrics history as CSV, JSON, TensorBoard files or a PNG plot")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--format", choices=("csv", "json", "tensorboard", "png"), required=True)
    export.add_argument("-o", "--output", type=Path, help="file to write (csv, json: default standard output; "
                        "png: default RUN_DIR/metrics.png) or folder (tensorboard: default RUN_DIR/tensorboard)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=False)
    errors = Console(stderr=True)
    handlers = {None: cmd_app, "run": cmd_app, "train": cmd_train, "resume": cmd_resume, "presets": cmd_presets,
                "runs": cmd_runs, "export": cmd_export, "inspect": cmd_inspect, "predict": cmd_predict}
    try:
        return handlers[args.command](args, console)
    except _user_errors() as error:
        errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, markup=True, soft_wrap=True)
        return EXIT_USAGE


# --- train and resume ---------------------------------------------------------------------------

def _config_from_args(args: argparse.Namespace) -> RunConfig:
    config = presets.compose(
        presets.load(args.preset), dataset=args.dataset, model=args.model, optimizer=args.optimizer,
        augment=args.augment, sets=args.sets, epochs=args.epochs, seed=args.seed, device=args.device,
        batch_size=args.batch_size, lr=args.lr)
    _check_model(config)
    return config


def cmd_app(args: argparse.Namespace, console: Console) -> int:
    """The interactive app; with `run PRESET`, that run starts training at once."""
    initial = [_config_from_args(args)] if args.command == "run" else []
    from cifartui.ui.graphics import ModeChoice  # textual loads only for the app

    images = ModeChoice(args.images)  # asks the terminal, so before the app owns it
    from cifartui.ui.app import make_app

    image_mode = images.result()
    app = make_app(runs_dir=args.runs_dir, data_dir=args.data_dir, initial=initial, image_mode=image_mode)
    return app.run() or EXIT_OK


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.distributed import from_environment
    from cifartui.engine.runs import default_runs_dir, new_run_dir

    config = _config_from_args(args)
    distributed = from_environment()  # one process, or this process's place in a torchrun job
    run_dir = new_run_dir(args.runs_dir or default_runs_dir(), config.name) if distributed.is_main else None
    return _run(config, distributed.broadcast_path(run_dir), args, console, resume=False)


def cmd_resume(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.runs import write_json_atomic
    from cifartui.engine.trainer import check_resumable

    run_dir = args.run_dir
    config = check_resumable(run_dir, extending=args.epochs is not None)
    if args.epochs is not None:
        config = replace_path(config, "train.epochs", args.epochs, "--epochs")
        config = replace_path(config, "train.max_steps", 0, "--epochs")
    if args.device is not None:
        config = replace_path(config, "train.device", args.device, "--device")
    from cifartui.engine.distributed import from_environment

    if from_environment().is_main:
        write_json_atomic(run_dir / "config.json", config.to_dict())
    return _run(config, run_dir, args, console, resume=True)


def _check_model(config: RunConfig) -> None:
    """Build the model once on the CPU so option mistakes surface before any data is loaded."""
    from cifartui.engine.models import build_model
    from cifartui.engine.schedules import DropoutSchedule

    model = build_model(config.model, config.dataset.num_classes)
    DropoutSchedule(config.dropout_schedule, model, steps_per_epoch=1)


def _run(config: RunConfig, run_dir: Path, args: argparse.Namespace, console: Console, *, resume: bool) -> int:
    from cifartui.engine import distributed
    from cifartui.engine.trainer import RunControl, Trainer

    job = distributed.from_environment()
    if not job.is_main:  # under torchrun, rank 0 speaks for the job
        console = Console(file=io.StringIO())
    control = RunControl()
    display = ProgressDisplay(console, control)
    trainer = Trainer(config, run_dir, data_dir=args.data_dir, listeners=[display], control=control,
                      resume=resume, log=lambda text: console.print(text, highlight=False, soft_wrap=True),
                      distributed=job)
    if job.enabled:
        console.print(f"Data parallel: {job.world_size} processes ({torch_backend()}), "
                      f"global batch {config.train.batch_size}", highlight=False)
    received: list[int] = []

    def on_signal(number: int, _frame: Any) -> None:
        if received:  # a second signal: leave now; the last checkpoint on disk stays intact
            raise KeyboardInterrupt
        received.append(number)
        control.stop(f"interrupted by {signal.Signals(number).name}")

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for number in SIGNAL_EXIT:
            previous[number] = signal.signal(number, on_signal)
    try:
        result = trainer.run()
    except _user_errors():
        display.close()
        if job.is_main and not resume and not any((run_dir / "checkpoints").glob("*.pt")):
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing trained yet: leave no empty run behind
        raise
    except KeyboardInterrupt:
        display.close()
        console.print(f"Interrupted. Resume from the last checkpoint with: cifartui resume {run_dir}",
                      highlight=False, soft_wrap=True)
        return SIGNAL_EXIT.get(received[0], 130) if received else 130
    except Exception as error:
        display.close()
        with (run_dir / "error.log").open("a", encoding="utf-8") as handle:
            traceback.print_exc(file=handle)
        Console(stderr=True).print(f"[bold red]error:[/] the run failed: {type(error).__name__}: {error}\n"
                                   f"Traceback in {run_dir / 'error.log'}", highlight=False, soft_wrap=True)
        return EXIT_FAILED
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        distributed.shutdown()
    display.close()
    if result.status == "finished":
        _print_summary(console, config, result.summary)
        if args.summary_json and job.is_main:
            args.summary_json.parent.mkdir(parents=True, exist_ok=True)
            args.summary_json.write_text(json.dumps(result.summary, indent=2) + "\n", encoding="utf-8")
        return EXIT_OK
    how = f"cifartui resume {run_dir}"
    if received:
        console.print(f"Stopped at step {result.summary['step']} with a checkpoint. Resume with: {how}",
                      highlight=False, soft_wrap=True)
        return SIGNAL_EXIT[received[0]]
    reason = display.pause_reason or control.stop_reason
    console.print(f"Stopped at step {result.summary['step']}: {reason}\nResume with: {how}",
                  highlight=False, soft_wrap=True)
    return EXIT_PAUSED_HEADLESS


def torch_backend() -> str:
    import torch.distributed

    return torch.distributed.get_backend()


class ProgressDisplay:
    """Rich progress bar and epoch lines for a headless run; called on the event thread.

    Headless there is nobody to press resume, so a run that pauses itself (a
    non-finite loss, a checkpoint that could not be written) is stopped instead.
    """

    def __init__(self, console: Console, control: Any):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = console
        self.control = control
        self.pause_reason = ""
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=console, transient=False)
        self.task = None
        self._started = False

    def __call__(self, event: Any) -> None:
        from cifartui.engine import events as ev

        if isinstance(event, ev.RunStarted):
            summary = event.model_summary
            verb = "Resuming" if event.resumed else "Training"
            self.console.print(
                f"{verb} [bold]{event.config['name']}[/] on {event.device}: {summary['name']} "
                f"({summary['total_parameters']:,} parameters), {event.train_size} train / {event.val_size} val / "
                f"{event.test_size} test images, {event.total_steps} steps. Run directory: {event.run_dir}",
                highlight=False, soft_wrap=True)
            self.progress.start()
            self._started = True
            self.task = self.progress.add_task("train", total=event.total_steps, completed=event.step, stats="")
        elif isinstance(event, ev.StepMetrics) and self.task is not None:
            self.progress.update(self.task, completed=event.step, description=f"epoch {event.epoch + 1}",
                                 stats=f"loss {event.loss:.4f}  acc {event.top1:5.1f}%  lr {event.lr:.3g}  "
                                       f"{event.images_per_s:,.0f} img/s")
        elif isinstance(event, ev.EpochEnded):
            val = (f"  val loss {event.val_loss:.4f}  val top-1 {event.val_top1:.2f}%  top-5 {event.val_top5:.2f}%"
                   if event.val_loss is not None else "")
            self.console.print(f"epoch {event.epoch + 1}: train loss {event.train_loss:.4f}  "
                               f"top-1 {event.train_top1:.2f}%{val}  lr {event.lr:.3g}  ({event.seconds:.1f}s)",
                               highlight=False, soft_wrap=True)
            if self.task is not None:
                self.progress.update(self.task, completed=event.step)
        elif isinstance(event, ev.LRChanged):
            self.console.print(f"step {event.step}: learning rate {event.old:.4g} -> {event.new:.4g} ({event.reason})",
                               highlight=False, soft_wrap=True)
        elif isinstance(event, ev.DropoutChanged):
            changed = {k: (event.old[k], v) for k, v in event.new.items() if event.old.get(k) != v}
            text = ", ".join(f"{k} {a:.3g}->{b:.3g}" for k, (a, b) in list(changed.items())[:8])
            more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
            self.console.print(f"step {event.step}: dropout {text}{more}", highlight=False, soft_wrap=True)
        elif isinstance(event, (ev.LossNotFinite, ev.MemoryExhausted, ev.CheckpointFailed)):
            self.console.print(f"[bold red]{event.message if hasattr(event, 'message') else event.error}[/]",
                               highlight=False, soft_wrap=True)
        elif isinstance(event, ev.RunPaused):
            self.pause_reason = event.reason
            self.control.stop(event.reason)

    def close(self) -> None:
        if self._started:
            self.progress.stop()
            self._started = False


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _print_summary(console: Console, config: RunConfig, summary: dict[str, Any]) -> None:
    table = Table(title=f"{config.name}: finished", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("reference", justify="right")
    reference = config.reference
    table.add_row("test top-1", _pct(summary["test_top1"]), _pct(reference.top1 or None))
    table.add_row("test top-5", _pct(summary["test_top5"]), _pct(reference.top5 or None))
    table.add_row("test loss", f"{summary['test_loss']:.4f}", "")
    table.add_row("best val top-1", _pct(summary["best_val_top1"]), "")
    table.add_row("epochs / steps", f"{summary['epochs']} / {summary['steps']}", "")
    table.add_row("images/s (training)", f"{summary['images_per_s']:,.0f}", "")
    table.add_row("run directory", summary["run_dir"], "")
    console.print(table)


# --- presets, runs, export -------------------------------------------------------------------------

def cmd_presets(args: argparse.Namespace, console: Console) -> int:
    if args.settings:
        table = Table(title="Preset settings", show_lines=False)
        for column in ("key", "type", "default", "meaning"):
            table.add_column(column, overflow="fold")
        for key, kind, doc, default in field_docs(RunConfig):
            table.add_row(key, kind, json.dumps(default), doc)
        console.print(table)
        return EXIT_OK
    if args.name:
        return _show_preset(args.name, console)
    table = Table(title="Presets")
    table.add_column("name", no_wrap=True)
    for column in ("dataset", "model", "optimizer", "schedule", "epochs", "reference"):
        table.add_column(column, overflow="fold")
    problems = []
    for name, entry in presets.available().items():
        try:
            config = presets.load(str(entry.path))
        except ConfigError as error:
            problems.append(str(error))
            continue
        reference = config.reference
        ref = " / ".join(part for part in (f"top-1 {reference.top1:g}%" if reference.top1 else "",
                                           f"top-5 {reference.top5:g}%" if reference.top5 else "") if part)
        steps = f"{config.train.max_steps} it" if config.train.max_steps else str(config.train.epochs)
        table.add_row(name + ("" if entry.builtin else " (user)"), config.dataset.name, config.model.name,
                      config.optimizer.name, config.optimizer.schedule.name, steps, ref or "-")
    console.print(table)
    for part in ("dataset", "model", "optimizer", "augment"):
        names = ", ".join(presets.available(part)) or "-"
        console.print(f"[bold]{part} parts:[/] {names}", highlight=False, soft_wrap=True)
    for problem in problems:
        Console(stderr=True).print(f"[yellow]skipped:[/] {problem}", highlight=False, soft_wrap=True)
    return EXIT_OK


def _show_preset(name: str, console: Console) -> int:
    from cifartui.engine.models import build_model, summarize

    config = presets.load(name)
    console.print(f"[bold]{config.name}[/]: {config.description}", highlight=False, soft_wrap=True)
    table = Table(show_header=True, title="Resolved configuration")
    table.add_column("key")
    table.add_column("value", overflow="fold")

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                flatten(f"{prefix}.{key}" if prefix else key, child)
        else:
            table.add_row(prefix, json.dumps(value))
    flatten("", config.to_dict())
    console.print(table)
    summary = summarize(build_model(config.model, config.dataset.num_classes), config.model.name)
    layers = Table(title=f"Model {summary.name}: {summary.total_parameters:,} parameters")
    for column in ("layer", "kind", "output shape", "parameters"):
        layers.add_column(column, justify="right" if column == "parameters" else "left")
    for row in summary.layers:
        layers.add_row(row.name, row.kind, "x".join(map(str, row.output_shape)), f"{row.parameters:,}")
    console.print(layers)
    return EXIT_OK


def cmd_runs(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.runs import default_runs_dir, list_runs

    runs_dir = args.runs_dir or default_runs_dir()
    infos, problems = list_runs(runs_dir)
    if not infos and not problems:
        console.print(f"No runs in {runs_dir}. Start one with: cifartui train demo-synthetic", highlight=False, soft_wrap=True)
        return EXIT_OK
    table = Table(title=f"Runs in {runs_dir}", box=box.SIMPLE_HEAD)
    # The run directory's name already holds the UTC start time and the preset.
    table.add_column("run", no_wrap=True)
    for column in ("status", "epochs", "best val", "test"):
        table.add_column(column, no_wrap=True, justify="left" if column == "status" else "right")
    for info in infos:
        table.add_row(info.path.name, info.status, f"{info.epochs_done}/{info.epochs_total}",
                      _pct(info.best_val_top1), _pct(info.test_top1))
    console.print(table)
    for problem in problems:
        Console(stderr=True).print(f"[yellow]unreadable run:[/] {problem}", highlight=False, soft_wrap=True)
    return EXIT_OK


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.runs import read_config, read_metrics

    config = read_config(args.run_dir)  # a clear error when this is not a run directory
    events = read_metrics(args.run_dir)
    if args.format in ("tensorboard", "png"):
        from cifartui.exports import ExportUnavailable, export_png, export_tensorboard

        try:
            if args.format == "tensorboard":
                written = export_tensorboard(events, args.output or args.run_dir / "tensorboard")
                console.print(f"Wrote TensorBoard event files to {written}; view them with: "
                              f"tensorboard --logdir {written}", highlight=False, soft_wrap=True)
            else:
                written = export_png(events, args.output or args.run_dir / "metrics.png",
                                     title=f"{config.name}: {args.run_dir.name}")
                console.print(f"Wrote {written}", highlight=False, soft_wrap=True)
        except ExportUnavailable as error:
            Console(stderr=True).print(f"[bold red]error:[/] {escape(str(error))}", highlight=False,
                                       soft_wrap=True)
            return EXIT_USAGE
        return EXIT_OK
    if args.format == "json":
        text = json.dumps(events, indent=2) + "\n"
    else:
        rows = [e for e in events if e["event"] in ("StepMetrics", "EpochEnded", "RunFinished")]
        columns: list[str] = []
        for row in rows:
            columns += [key for key, value in row.items()
                        if key not in columns and not isinstance(value, (dict, list))]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        console.print(f"Wrote {args.output}", highlight=False, soft_wrap=True)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.inspect import inspect_run
    from cifartui.engine.trainer import resolve_device

    result = inspect_run(args.run_dir, checkpoint=args.checkpoint, data_dir=args.data_dir,
                         device=str(resolve_device(args.device)))
    if args.json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
        return EXIT_OK
    images = int(result.confusion.sum())
    console.print(f"[bold]{args.run_dir}[/]: checkpoint {result.checkpoint}.pt (step {result.step:,}), "
                  f"{images:,} test images: top-1 [bold]{result.top1:.2f}%[/], top-5 {result.top5:.2f}%",
                  highlight=False, soft_wrap=True)
    per_class = result.per_class_accuracy
    table = Table(title="accuracy per class, worst first", box=box.SIMPLE_HEAD)
    table.add_column("class")
    if result.superclass_of:
        table.add_column("superclass")
    table.add_column("images", justify="right")
    table.add_column("top-1", justify="right")
    table.add_column("most often taken for")
    for c in sorted(range(len(per_class)), key=lambda c: (np.nan_to_num(per_class[c], nan=101.0), c)):
        confused = result.taken_for(c)
        cells = [result.class_names[c]]
        if result.superclass_of:
            cells.append(result.superclass_names[result.superclass_of[c]])
        cells += [f"{int(result.confusion[c].sum())}", _pct(None if np.isnan(per_class[c]) else per_class[c]),
                  confused]
        table.add_row(*cells)
    console.print(table)
    supers = result.superclass_confusion()
    if supers is not None:
        table = Table(title="accuracy per superclass (a prediction counts when it lands in the right superclass)",
                      box=box.SIMPLE_HEAD)
        table.add_column("superclass")
        table.add_column("top-1", justify="right")
        for i, name in enumerate(result.superclass_names):
            total = supers[i].sum()
            table.add_row(name, _pct(100.0 * supers[i, i] / total if total else None))
        console.print(table)
    if len(result.class_names) <= 20:
        matrix = Table(title="confusion matrix (rows: true class, columns: predicted)", box=box.SIMPLE_HEAD)
        matrix.add_column("")
        for name in result.class_names:
            matrix.add_column(name[:5], justify="right")
        for c, name in enumerate(result.class_names):
            matrix.add_row(name, *[f"[bold]{n}[/]" if c == p else (str(n) if n else "[dim]0[/]")
                                   for p, n in enumerate(result.confusion[c].tolist())])
        console.print(matrix)
    else:
        console.print("The 100x100 confusion matrix is in --json (confusion_matrix) and in the app's Inspect view.",
                      highlight=False)
    return EXIT_OK


def cmd_predict(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.inspect import load_trained, predict_images

    loaded = load_trained(args.run_dir, checkpoint=args.checkpoint, data_dir=args.data_dir)
    results = predict_images(loaded, args.images)
    if args.json:
        sys.stdout.write(json.dumps([{"image": str(path), "top5": [{"class": n, "probability": p} for n, p in top]}
                                     for path, top in zip(args.images, results)]) + "\n")
        return EXIT_OK
    for path, top in zip(args.images, results):
        table = Table(title=str(path), box=box.SIMPLE_HEAD, title_justify="left")
        table.add_column("class")
        table.add_column("probability", justify="right")
        for name, probability in top:
            table.add_row(name, f"{100 * probability:.1f}%")
        console.print(table)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
