"""`run` (the app with a run), `train` and `resume`: a run headless with a Rich progress bar."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import threading
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cifartui import presets
from cifartui.cli.common import (EXIT_FAILED, EXIT_OK, EXIT_PAUSED_HEADLESS, SIGNAL_EXIT, OutputPathError,
                                 check_output_dir, check_output_file, path_kind, pct as _pct,
                                 user_errors as _user_errors, write_output)
from cifartui.config import ConfigError, RunConfig, replace_path
from cifartui.engine.runs.control import caused_by_interrupt


def run_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--data-dir", type=Path, help="where CIFAR lives or is downloaded (default: "
                     "$CIFARTUI_DATA or the user cache dir)")
    sub.add_argument("--summary-json", type=Path, metavar="FILE", help="write the final metrics as JSON")


def preset_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("preset", help="preset name or path to a TOML file")
    sub.add_argument("--set", dest="sets", action="append", default=[], metavar="PART.KEY=VALUE",
                     help="override any setting, e.g. --set optimizer.lr=0.1 (repeatable)")
    sub.add_argument("--epochs", type=int, help="epochs to train; drops the recipe's own max_steps, while a "
                     "--set train.max_steps given too is kept (the run ends at whichever comes first)")
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
    run.add_argument("--detach", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                     help="train in a process of its own that outlives the app (as before the command)")

    train = commands.add_parser("train", help="train a preset headless, with a progress bar")
    train.set_defaults(handler=cmd_train)
    preset_options(train)
    train.add_argument("--summary-json", type=Path, metavar="FILE", help="write the final metrics as JSON")
    train.add_argument("--run-dir", type=Path, metavar="DIR",
                       help="train into this folder (new, or holding files but no run or folder) "
                       "instead of a new one under "
                       "--runs-dir; the app starts its background runs this way")

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
    from cifartui.engine.train.devices import resolve_device

    resolve_device(config.train.device, "--device" if args.device else "train.device")  # before any run dir
    return config


def cmd_app(args: argparse.Namespace, console: Console) -> int:
    """The interactive app; with `run PRESET`, that run starts training at once."""
    from cifartui.engine.runs.folders import default_runs_dir

    runs_dir = args.runs_dir or default_runs_dir()
    initial = [_config_from_args(args)] if args.command == "run" else []
    if initial:
        check_output_dir(runs_dir, "the runs folder")
    elif path_kind(runs_dir) not in ("folder", "missing"):  # the app lists it at once; training comes later
        raise OutputPathError(f"{runs_dir}: unusable as the runs folder: "
                              f"{'it is a file' if path_kind(runs_dir) == 'file' else path_kind(runs_dir)}")
    from cifartui.ui.graphics import ModeChoice  # textual loads only for the app

    images = ModeChoice(args.images)  # asks the terminal, so before the app owns it
    from cifartui.ui.app import make_app

    image_mode = images.result()
    from cifartui.ui.background import over_ssh

    detach = args.detach if args.detach is not None else over_ssh()
    app = make_app(runs_dir=args.runs_dir, data_dir=args.data_dir, initial=initial, image_mode=image_mode,
                   detach=detach)
    result = app.run()
    if app.return_code:  # 1 when the app crashed (Textual has printed why), or a signal's code
        return app.return_code
    return result if isinstance(result, int) else EXIT_OK


# Run folders this process was given rather than made (train --run-dir).
_GIVEN_RUN_DIRS: set[Path] = set()


def given_run_dir(path: Path) -> Path:
    """A folder someone made for this run (`--run-dir`): writable and holding no run yet; kept if nothing trains."""
    run_dir = check_output_dir(path, "--run-dir")
    _GIVEN_RUN_DIRS.add(run_dir)
    if (run_dir / "config.json").exists():
        raise OutputPathError(f"{run_dir}: --run-dir holds a run already; `cifartui resume {run_dir}` continues it")
    # A run's files go straight into the folder: a runs folder, a sweep or a run's own checkpoints
    # folder would get them mixed into what is there. The app makes the folder with files only.
    if (run_dir.parent / "config.json").exists():
        raise OutputPathError(f"{run_dir}: --run-dir is inside the run {run_dir.parent}; expected a folder of its own")
    try:
        folders = sorted(entry.name for entry in os.scandir(run_dir) if entry.is_dir())
    except OSError as error:
        raise OutputPathError(f"{run_dir}: unusable as --run-dir: {error.strerror or error}") from None
    if folders:
        raise OutputPathError(f"{run_dir}: --run-dir holds folders ({', '.join(folders[:3])}"
                              f"{', ...' if len(folders) > 3 else ''}); expected a new or empty folder for one run "
                              "(--runs-dir makes a run folder inside a folder)")
    return run_dir


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.train.distributed import from_environment
    from cifartui.engine.runs.folders import RunLock, default_runs_dir, new_run_dir

    config = _config_from_args(args)
    distributed = from_environment()  # one process, or this process's place in a torchrun job
    run_dir = None
    if distributed.is_main:
        # Where the results go is checked before any training, not found unwritable at its end.
        if args.summary_json:
            check_output_file(args.summary_json, "--summary-json")
        if args.run_dir is not None:
            run_dir = given_run_dir(args.run_dir)
        else:
            runs_dir = check_output_dir(args.runs_dir or default_runs_dir(), "the runs folder")
            run_dir = new_run_dir(runs_dir, config.name)
    try:
        lock = RunLock(run_dir).acquire() if run_dir is not None else None
        return _run(config, distributed.broadcast_path(run_dir), args, console, resume=False, lock=lock)
    except BaseException:
        if run_dir is not None:
            _discard_if_untrained(run_dir)
        raise


def cmd_resume(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.train.distributed import from_environment
    from cifartui.engine.runs.folders import RunLock
    from cifartui.engine.train.trainer import check_resumable

    run_dir = args.run_dir
    main_process = from_environment().is_main
    # The run's lock before anything else: a second `resume` of the same run stops here.
    lock = RunLock(run_dir).acquire() if main_process else None
    try:
        if main_process:
            check_output_dir(run_dir, "the run folder")
            if (run_dir / "checkpoints").is_dir():
                check_output_dir(run_dir / "checkpoints", "the run's checkpoints folder")
            if args.summary_json:
                check_output_file(args.summary_json, "--summary-json")
        config = check_resumable(run_dir, extending=args.epochs is not None, lock=lock,
                                 locked_by_job=not main_process)
        if args.epochs is not None:
            _check_more_epochs(run_dir, args.epochs)
        if args.device is not None:  # this session's device only; the run's configuration keeps its own
            config = replace_path(config, "train.device", args.device, "--device")
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    # More epochs are a change of the run's settings, recorded with the others (config.json
    # keeps what the run started with).
    changes = {"train.epochs": args.epochs, "train.max_steps": 0} if args.epochs is not None else {}
    return _run(config, run_dir, args, console, resume=True, lock=lock, resume_changes=changes)


def _check_more_epochs(run_dir: Path, epochs: int) -> None:
    """`resume --epochs N` trains up to N epochs in all: N must be past the epochs the last checkpoint holds."""
    from cifartui.engine.runs.checkpoint import load_checkpoint

    progress = load_checkpoint(run_dir / "checkpoints" / "last.pt").get("progress")
    done = int(progress.get("epoch", 0)) if isinstance(progress, dict) else 0
    if epochs <= done:
        mid = f", and epoch {done + 1} is under way" if isinstance(progress, dict) and progress.get("position") else ""
        raise ConfigError("--epochs", str(epochs), f"{run_dir} has {done} epoch{'s' if done != 1 else ''} done{mid}; "
                          f"--epochs is the total to train up to, so expected more than {done}")


def _discard_if_untrained(run_dir: Path) -> bool:
    """Remove a new run's folder when it holds no checkpoint (nothing trained yet); True if removed.

    A folder given with --run-dir stays: whoever made it (the app, for a run in the
    background) reads why the run ended from it.
    """
    if run_dir in _GIVEN_RUN_DIRS or any((run_dir / "checkpoints").glob("*.pt")):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def _check_model(config: RunConfig) -> None:
    """Build the model once on the CPU so option mistakes surface before any data is loaded."""
    from cifartui.engine.train.models import build_model
    from cifartui.engine.train.optim import decay_groups
    from cifartui.engine.train.schedules import DropoutSchedule

    model = build_model(config.model, config.dataset.num_classes)
    DropoutSchedule(config.dropout_schedule, model, steps_per_epoch=1)
    decay_groups(model, config.optimizer)  # every decay pattern matches a parameter
    if config.settings_schedule:  # each dropout.GROUP a scheduled change names is a group of this model
        from cifartui.engine.runs.settings import LiveSettings, parse_assignments
        from cifartui.engine.train.models import dropout_groups

        groups = dropout_groups(model)
        rates = {group: layers[-1][1].rate for group, layers in groups.items()}
        for i, change in enumerate(config.settings_schedule):
            updates = parse_assignments(change.set, f"settings_schedule[{i}].set")
            dropout = {key: value for key, value in updates.items() if key.startswith("dropout.")}
            if dropout:
                LiveSettings(config).check(dropout, f"settings_schedule[{i}].set", rates)


def _run(config: RunConfig, run_dir: Path, args: argparse.Namespace, console: Console, *, resume: bool,
         lock: Any = None, resume_changes: dict[str, Any] | None = None, branch: Any = None) -> int:
    from cifartui.engine.train import distributed
    from cifartui.engine.train.trainer import RunControl, Trainer

    job = distributed.from_environment()
    if not job.is_main:  # under torchrun, rank 0 speaks for the job
        console = Console(file=io.StringIO())
    control = RunControl()
    display = ProgressDisplay(console, control)
    trainer = Trainer(config, run_dir, data_dir=args.data_dir, listeners=[display], control=control,
                      resume=resume, distributed=job, lock=lock, resume_changes=resume_changes, branch=branch,
                      log=lambda text: console.print(text, highlight=False, soft_wrap=True, markup=False))
    if job.enabled:
        processes = f"{job.world_size} process" + ("es" if job.world_size != 1 else "")
        console.print(f"Data parallel: {processes} ({torch_backend()}), "
                      f"global batch {config.train.batch_size}", highlight=False)
    received: list[int] = []
    left_at_once: list[int] = []

    def on_signal(number: int, _frame: Any) -> None:
        if left_at_once:
            return  # already leaving: let the cleanup finish and say what is left
        if received:  # a second signal: leave now; the last checkpoint on disk stays intact
            left_at_once.append(number)
            raise KeyboardInterrupt
        received.append(number)
        control.stop(f"interrupted by {signal.Signals(number).name}")

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for number in SIGNAL_EXIT:
            # An ignored signal stays ignored: `nohup` (SIGHUP) and background jobs of a
            # shell (SIGINT) ask for exactly that, and a run must outlive them.
            if signal.getsignal(number) is signal.SIG_IGN:
                continue
            previous[number] = signal.signal(number, on_signal)
    try:
        result = trainer.run()
    except _user_errors():
        display.close()
        if job.is_main and not resume:
            _discard_if_untrained(run_dir)  # nothing trained yet: leave no empty run behind
        raise
    except KeyboardInterrupt:
        display.close()
        return _interrupted(run_dir, console, received, resume=resume, main=job.is_main)
    except Exception as error:
        display.close()
        if left_at_once or caused_by_interrupt(error):
            # The second signal landed inside a library call (a checkpoint being written),
            # which turned it into an error of its own; the file on disk is the previous one.
            return _interrupted(run_dir, console, received, resume=resume, main=job.is_main)
        try:
            with (run_dir / "error.log").open("a", encoding="utf-8") as handle:
                traceback.print_exc(file=handle)
            where = f"Traceback in {run_dir / 'error.log'}"
        except OSError as log_error:
            where = f"(its traceback could not be written to {run_dir / 'error.log'}: {log_error.strerror})"
        Console(stderr=True).print(f"[bold red]error:[/] {escape(_failure_message(error, config))}\n{escape(where)}",
                                   highlight=False, soft_wrap=True)
        return EXIT_FAILED
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        distributed.shutdown()
    display.close()
    if result.status == "finished":
        _print_summary(console, config, result.summary)
        if args.summary_json and job.is_main:
            write_output(args.summary_json, json.dumps(result.summary, indent=2) + "\n", "--summary-json")
        return EXIT_OK
    how = f"cifartui resume {run_dir}"
    if received:
        console.print(f"Stopped at step {result.summary['step']} with a checkpoint. Resume with: {how}",
                      highlight=False, soft_wrap=True, markup=False)
        return SIGNAL_EXIT[received[0]]
    saved = result.summary.get("saved_step")
    on_disk = (f"The last checkpoint on disk is from step {saved:,}." if saved is not None
               else "No checkpoint of this run is on disk.")
    # `resume` needs a checkpoint: without one, the run can only be trained again.
    then = f"Resume with: {how}" if saved is not None else "There is nothing to resume: train it again."
    if not display.pause_reason:  # stopped on request (`cifartui control RUN stop`), as SIGTERM would
        console.print(f"Stopped at step {result.summary['step']}: {escape(str(control.stop_reason))}. {on_disk}\n"
                      f"{then}", highlight=False, soft_wrap=True)
        return SIGNAL_EXIT[signal.SIGTERM]
    console.print(f"Stopped at step {result.summary['step']}: {escape(display.pause_reason)}\n{on_disk}\n"
                  f"{then}", highlight=False, soft_wrap=True)
    return EXIT_PAUSED_HEADLESS


def _interrupted(run_dir: Path, console: Console, received: list[int], *, resume: bool, main: bool) -> int:
    """A second signal (or one before the handlers were up) left the run at once."""
    code = SIGNAL_EXIT.get(received[0], 130) if received else 130
    if main and not resume and _discard_if_untrained(run_dir):
        console.print("Interrupted before the first checkpoint: nothing to resume, and the run's empty folder "
                      "is removed.", highlight=False, soft_wrap=True, markup=False)
        return code
    if main:
        name = signal.Signals(received[0]).name if received else "SIGINT"
        _mark_interrupted(run_dir, f"interrupted by {name} twice: left without a new checkpoint")
    console.print(f"Interrupted. Resume from the last checkpoint with: cifartui resume {run_dir}",
                  highlight=False, soft_wrap=True, markup=False)
    return code


def _mark_interrupted(run_dir: Path, reason: str) -> None:
    """A run left at once was interrupted, not failed: say so in status.json, under the run's lock."""
    from cifartui.engine.runs.folders import RunDirError, RunLock, write_status

    try:
        status = json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(status, dict) or status.get("status") != "failed":
        return  # a resume that had not begun has put the run's own status back already
    lock = RunLock(run_dir)
    try:
        lock.acquire(patience_s=0.0)
        write_status(run_dir, "interrupted", step=status.get("step"), reason=reason)
    except (RunDirError, OSError):
        pass  # someone else trains it now, or the disk refuses: the status is theirs or stays
    finally:
        lock.release()


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        phrase in text for phrase in ("can't allocate memory", "not enough memory", "out of memory"))


def _failure_message(error: BaseException, config: RunConfig) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0]
    if _is_out_of_memory(error):
        return (f"out of memory ({type(error).__name__}: {first_line}). Lower train.batch_size (now "
                f"{config.train.batch_size}) or train.eval_batch_size (now {config.train.eval_batch_size}), "
                "pick a smaller model or dataset, or free memory, and try again")
    return f"the run failed: {type(error).__name__}: {first_line}"


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
        self.run_dir = ""
        self._header: Any = None  # a branch's RunStarted, printed once its own changes are known
        self._header_steps = 0
        self._header_changes: list[Any] = []

    def __call__(self, event: Any) -> None:
        from cifartui.engine.runs import events as ev

        if isinstance(event, ev.RunStarted):
            self.run_dir = event.run_dir
            if event.parent:  # a branch applies its own changes next: its header waits for their step count
                self._header, self._header_steps, self._header_changes = event, event.total_steps, []
            else:
                self._print_header(event, event.total_steps)
            self.progress.start()
            self._started = True
            self.task = self.progress.add_task("train", total=event.total_steps, completed=event.step, stats="")
        elif self._header is not None and isinstance(event, ev.SettingsChanged):
            self._header_steps = _steps_after(self._header, self._header_steps, event.changes)
            self._header_changes.append(event)
        elif self._header is not None and not isinstance(event, (ev.LRChanged, ev.DropoutChanged)):
            header, self._header = self._header, None
            self._print_header(header, getattr(event, "total_steps", self._header_steps))
            for change in self._header_changes:
                self(change)
            self(event)
        elif isinstance(event, ev.StepMetrics) and self.task is not None:
            self.progress.update(self.task, completed=event.step, total=event.total_steps,
                                 description=f"epoch {event.epoch + 1}",
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
                               highlight=False, soft_wrap=True, markup=False)
        elif isinstance(event, ev.DropoutChanged):
            changed = {k: (event.old[k], v) for k, v in event.new.items() if event.old.get(k) != v}
            text = ", ".join(f"{k} {a:.3g}->{b:.3g}" for k, (a, b) in list(changed.items())[:8])
            more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
            self.console.print(f"step {event.step}: dropout {text}{more}", highlight=False, soft_wrap=True,
                               markup=False)
        elif isinstance(event, (ev.LossNotFinite, ev.MemoryExhausted, ev.CheckpointFailed)):
            text = event.message if hasattr(event, "message") else event.error
            self.console.print(f"[bold red]{escape(text)}[/]", highlight=False, soft_wrap=True)
        elif isinstance(event, ev.RunPaused):
            if event.requested:  # asked for (`cifartui control RUN pause`): wait for `control RUN resume`
                self.console.print(f"step {event.step}: paused ({event.reason}); `cifartui control "
                                   f"{escape(self.run_dir)} resume` continues", highlight=False, soft_wrap=True)
            else:
                self.pause_reason = event.reason
                self.control.stop(event.reason)
        elif isinstance(event, ev.RunResumed):
            self.console.print(f"step {event.step}: resumed", highlight=False, soft_wrap=True)
        elif isinstance(event, ev.SettingsChanged):
            text = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in event.changes.items())
            # Epochs are counted from 1 in every text, as `control` and the app show them.
            self.console.print(f"step {event.step} (epoch {event.epoch + 1}): settings changed by {event.source}: "
                               f"{escape(text)}",
                               highlight=False, soft_wrap=True)

    def _print_header(self, event: Any, total_steps: int) -> None:
        summary = event.model_summary
        verb = "Resuming" if event.resumed else "Branching" if event.parent else "Training"
        self.console.print(
            f"{verb} [bold]{escape(str(event.config['name']))}[/] on {escape(event.device)}: "
            f"{escape(summary['name'])} ({summary['total_parameters']:,} parameters), {event.train_size} train / "
            f"{event.val_size} val / {event.test_size} test images, {total_steps} steps. "
            f"Run directory: {escape(event.run_dir)}",
            highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._header is not None:
            header, self._header = self._header, None
            self._print_header(header, self._header_steps)
        if self._started:
            self.progress.stop()
            self._started = False


def _steps_after(started: Any, total: int, changes: dict[str, Any]) -> int:
    """A run's step count once `changes` (key -> [old, new]) apply: more or fewer epochs of the same length,
    at most train.max_steps."""
    if "train.epochs" in changes:
        old, new = changes["train.epochs"]
        total += (int(new) - int(old)) * started.steps_per_epoch
    if "train.max_steps" in changes and changes["train.max_steps"][1]:
        total = min(total, int(changes["train.max_steps"][1]))
    return max(total, started.step)


def _print_summary(console: Console, config: RunConfig, summary: dict[str, Any]) -> None:
    table = Table(title=f"{escape(config.name)}: finished", show_header=True)
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
    table.add_row("run directory", escape(summary["run_dir"]), "")
    console.print(table)
