"""`run` (the app with a run), `train` and `resume`: a run headless with a Rich progress bar."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import signal
import threading
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cifartui import presets
from cifartui.cli.common import (EXIT_FAILED, EXIT_OK, EXIT_PAUSED_HEADLESS, SIGNAL_EXIT, pct as _pct,
                                 user_errors as _user_errors)
from cifartui.config import RunConfig, replace_path


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


def add_parsers(commands: Any) -> None:
    run = commands.add_parser("run", help="open the app with a preset already training")
    run.set_defaults(handler=cmd_app)
    preset_options(run)
    run.add_argument("--images", choices=("auto", "sixel", "kitty", "halfblock"), default=argparse.SUPPRESS,
                     help="how the app draws pictures (as before the command)")

    train = commands.add_parser("train", help="train a preset headless, with a progress bar")
    train.set_defaults(handler=cmd_train)
    preset_options(train)
    train.add_argument("--summary-json", type=Path, metavar="FILE", help="write the final metrics as JSON")

    resume = commands.add_parser("resume", help="continue a run from its checkpoints/last.pt")
    resume.set_defaults(handler=cmd_resume)
    resume.add_argument("run_dir", type=Path)
    resume.add_argument("--epochs", type=int, help="train up to this many epochs in total")
    resume.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    run_options(resume)


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
    from cifartui.engine.optim import decay_groups
    from cifartui.engine.schedules import DropoutSchedule

    model = build_model(config.model, config.dataset.num_classes)
    DropoutSchedule(config.dropout_schedule, model, steps_per_epoch=1)
    decay_groups(model, config.optimizer)  # every decay pattern matches a parameter


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
