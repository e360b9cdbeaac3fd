"""The training loop: data on the device, a pure LR schedule, events out, control in.

`Trainer.run()` trains in the calling thread (the headless CLI); `Trainer.start()`
in a background thread (the app). Either way the loop reads top to bottom: draw a
batch from the epoch's permutation, preprocess and augment it on the device, take one
step (`engine/step.py`: forward, backward, update, statistics; on a GPU replayed as a
CUDA graph), and between steps serve requests: pause, stop, checkpoint, and changes of
settings from the app or the run's control channel (`engine/channel.py`), applied
through the run's live settings (`engine/settings.py`).
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from cifartui.config import ConfigError, RunConfig, flatten, from_mapping, replace_path, to_plain
from cifartui.engine import events as ev
from cifartui.engine.augment import Augmenter, Preprocessor
from cifartui.engine.channel import ControlInbox
from cifartui.engine.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, capture_rng, load_checkpoint,
                                        restore_rng, save_checkpoint)
from cifartui.engine.control import RunControl, caused_by_interrupt
from cifartui.engine.data import load_dataset, split_validation
from cifartui.engine.devices import DeviceError, activate, resolve_device
from cifartui.engine.distributed import Distributed
from cifartui.engine.identity import check_same, data_identity, model_identity
from cifartui.engine.models import build_model, dropout_rates, summarize
from cifartui.engine.optim import build_optimizer
from cifartui.engine.runs import (RunBusy, RunLock, is_locked, read_config, read_status, write_json_atomic,
                                  write_status)
from cifartui.engine.schedules import DropoutSchedule, LRSchedule
from cifartui.engine.settings import (CHANGEABLE, OPTIMIZER_HYPERPARAMETERS, Change, LiveSettings, parse_assignments,
                                      when_applied)
from cifartui.engine.step import (CudaGraphBackend, GraphedSteps, NonFiniteWatch, StepState, TrainStep,
                                  graph_plan)

# Step metrics go out at most this often, whatever log_every says.
MIN_EMIT_INTERVAL_S = 0.1
# Under torchrun the processes agree on stop requests every this many steps, so that all
# of them leave the loop at the same step.
AGREE_EVERY = 20
# How often the run looks for requests from other processes while it trains.
CONTROL_POLL_S = 0.2


@dataclass(frozen=True)
class RunResult:
    status: str  # finished, stopped or failed
    run_dir: Path
    summary: dict[str, Any]


@dataclass(frozen=True)
class Branch:
    """Start a new run from a checkpoint of another one, with changes of its own."""

    parent: Path  # the parent's run directory
    checkpoint: Path
    changes: Mapping[str, Any]


@dataclass
class _Progress:
    """Counters that, with the RNG states, say exactly where the run is."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # batches done in the current epoch
    best_val_loss: float = math.inf
    best_val_top1: float | None = None
    train_seconds: float = 0.0
    train_images: int = 0
    batch_size: int = 0  # of the current epoch (a new batch size waits for the next epoch)


class EvaluationInterrupted(Exception):
    """A stop was requested while the run evaluated; it ends as stopped, resumable."""


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, *, data_dir: Path | None = None,
                 listeners: list[ev.Listener] | None = None, control: RunControl | None = None,
                 resume: bool = False, log: Callable[[str], None] | None = None,
                 distributed: Distributed | None = None, lock: RunLock | None = None,
                 resume_changes: Mapping[str, Any] | None = None, branch: Branch | None = None):
        self.dist = distributed or Distributed()
        self.settings = LiveSettings(config)
        self.run_dir = Path(run_dir)
        self.data_dir = data_dir
        self.control = control or RunControl()
        self.resume = resume
        # Changes a resume asks for (more epochs), recorded like any other change.
        self.resume_changes = dict(resume_changes or {})
        self.branch = branch
        self.log = log
        self.bus = ev.EventBus(listeners)
        self.progress = _Progress()
        self.thread: threading.Thread | None = None
        self.result: RunResult | None = None
        # The run directory's lock, taken before anything else in run() unless the caller
        # already holds it; released when the run ends, however it ends.
        self.lock = lock
        self._metrics_file = None
        self._inbox: ControlInbox | None = None
        self._write_problem: str | None = None

    @property
    def config(self) -> RunConfig:
        """The configuration the run trains with now: as started, plus the changes since."""
        return self.settings.config

    # --- public ------------------------------------------------------------------------------

    def start(self) -> threading.Thread:
        """Train in a background thread; errors end as a RunFailed event, never an exception."""
        self.thread = threading.Thread(target=self._run_quietly, name=f"cifartui-run-{self.run_dir.name}",
                                       daemon=True)
        self.thread.start()
        return self.thread

    def run(self) -> RunResult:
        """Train in the calling thread. Raises what made the run fail, after RunFailed is out.

        A run that another process trains raises RunBusy at once and touches nothing.
        """
        previous_status: dict[str, Any] = {}
        if self.dist.is_main:  # under torchrun only rank 0 writes the run directory
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                self.lock = (self.lock or RunLock(self.run_dir)).acquire()
            except RunBusy:
                self.bus.close()
                raise
            if self.resume:  # with the lock ours, a live status left in the file is a process that died
                previous_status = read_status(self.run_dir, assume_unlocked=True)
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
            # A process killed while writing leaves its temporary file; the checkpoint beside it is whole.
            for stale in (self.run_dir / "checkpoints").glob(".*.tmp"):
                stale.unlink(missing_ok=True)
            self._metrics_file = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self._training_began = False
        self._saved_step: int | None = None
        try:
            self._status("starting", step=self.progress.step)
            self.result = self._train()
            return self.result
        except BaseException as error:
            self._emit(ev.RunFailed(error=str(error) or type(error).__name__, error_type=type(error).__name__,
                                    step=self.progress.step, epoch=self.progress.epoch))
            if caused_by_interrupt(error):  # a second Ctrl-C: left at once, the last checkpoint is the previous one
                self._status("interrupted", step=self._saved_step if self._saved_step is not None else
                             self.progress.step, reason="left at once without a new checkpoint")
            elif self.resume and not self._training_began and previous_status.get("status") not in (None, "unknown"):
                # Resuming failed before a step was taken: the run is where it was, not failed.
                self._status(previous_status["status"], **{k: v for k, v in previous_status.items() if k not in (
                    "status", "pid", "host", "updated")}, resume_error=str(error))
            else:
                self._status("failed", error=str(error), step=self.progress.step)
            self.result = RunResult("failed", self.run_dir, {"error": str(error)})
            raise
        finally:
            self.control.cancel_requests("the run has ended")
            self.bus.close()
            if self._metrics_file is not None:
                try:
                    self._metrics_file.close()
                except OSError:
                    pass  # a full disk: what could be written was flushed line by line
            if self.lock is not None:
                self.lock.release()

    # --- setup -------------------------------------------------------------------------------

    def _run_quietly(self) -> None:
        try:
            self.run()
        except BaseException:
            try:
                with (self.run_dir / "error.log").open("a", encoding="utf-8") as handle:
                    traceback.print_exc(file=handle)
            except OSError:
                pass

    def _status(self, status: str, **extra: Any) -> None:
        """Write status.json; a failure (a full disk) is reported once and pauses the run, never raises."""
        if not self.dist.is_main:
            return
        try:
            write_status(self.run_dir, status, **extra)
        except OSError as error:
            self._report_write_problem(self.run_dir / "status.json", error)

    def _report_write_problem(self, path: Path, error: OSError) -> None:
        if self._write_problem is not None:
            return
        self._write_problem = (f"could not write {path}: {error.strerror or error}. Free some space, then "
                               "resume, or stop (the last checkpoint on disk is intact).")
        self.bus.publish(ev.CheckpointFailed(path=str(path), step=self.progress.step, error=self._write_problem))
        self._pause(f"write failed: {self._write_problem}")

    def _emit(self, event: ev.Event) -> None:
        # metrics.jsonl is written here, in the training thread: events are few (step
        # metrics are throttled) and a line that is written is a line that survives a crash.
        if self._metrics_file is not None:
            try:
                self._metrics_file.write(json.dumps(event.to_json()) + "\n")
                self._metrics_file.flush()
            except OSError as error:
                self.bus.publish(event)
                self._report_write_problem(self.run_dir / "metrics.jsonl", error)
                return
        self.bus.publish(event)

    def _load_start_state(self) -> tuple[dict[str, Any], Path] | None:
        """The checkpoint a resumed run or a branch starts from, with the settings it was saved with."""
        if self.resume:
            path = self.run_dir / "checkpoints" / "last.pt"
        elif self.branch is not None:
            path = self.branch.checkpoint
        else:
            return None
        state = load_checkpoint(path)
        try:
            saved = state.get("settings")
            settings = (LiveSettings.from_state(saved, str(path)) if isinstance(saved, Mapping)
                        else LiveSettings(from_mapping(RunConfig, state["config"], str(path))))
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: incomplete or damaged (settings: {error})") from None
        launched = self.config
        if self.resume:
            for part in ("model", "dataset"):  # config.json edited after the run started
                if getattr(launched, part) != getattr(settings.config, part):
                    raise CheckpointError(
                        f"{path}: the run's config.json describes another {part} than the one it was trained "
                        f"with ({_describe_part(getattr(launched, part))} in config.json, "
                        f"{_describe_part(getattr(settings.config, part))} in the checkpoint)")
            edited = _edited_after_start(launched, settings.config)
            if edited:
                key, in_file, trained = edited
                raise CheckpointError(
                    f"{path}: cannot resume: the run's config.json sets {key} = {in_file!r}, but the run was trained "
                    f"with {trained!r}, and {key} cannot change in the middle of a run; put config.json back, "
                    "or start a new run (or a branch) with the new value")
        # The device is this session's choice, not part of the run's settings.
        settings.config = replace_path(settings.config, "train.device", launched.train.device, "--device")
        self.settings = settings
        changes = dict(self.resume_changes if self.resume else self.branch.changes)  # type: ignore[union-attr]
        early = {key: value for key, value in changes.items() if not key.startswith("dropout.")}
        if early:  # refuse before loading data (dropout groups are checked once the model exists)
            self.settings.check(early, "--set" if self.branch else "resume")
        return state, path

    def _setup(self) -> None:
        config = self.config
        seed = config.train.seed
        rank = self.dist.rank
        self.device = resolve_device(self.dist.device_name(config.train.device))
        activate(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN time its algorithms once
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

        self._emit(ev.PhaseStarted("loading data", config.dataset.name))
        if not self.dist.is_main:
            self.dist.barrier()  # rank 0 downloads and checks the data first
        dataset = load_dataset(config.dataset, self.data_dir, log=self.log)
        if self.dist.is_main:
            self.dist.barrier()
        self.dataset = dataset
        train_index, val_index = split_validation(len(dataset.train_labels), config.dataset.val_fraction, seed)
        self.data_identity = data_identity(config.dataset.name, dataset.train_labels, dataset.test_labels,
                                           len(val_index))

        def on_device(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.from_numpy(np.ascontiguousarray(images)).to(self.device),
                    torch.from_numpy(labels).to(self.device))

        # The whole dataset lives on the training device as uint8, converted once.
        self.train_x, self.train_y = on_device(dataset.train_images[train_index], dataset.train_labels[train_index])
        self.val_x, self.val_y = on_device(dataset.train_images[val_index], dataset.train_labels[val_index])
        self.test_x, self.test_y = on_device(dataset.test_images, dataset.test_labels)
        self.preprocess = Preprocessor(config.augment.preprocess, config.augment.zca_epsilon)
        self.preprocess.fit(self.train_x, seed).to(self.device)
        self.augment = Augmenter(config.augment)

        self._emit(ev.PhaseStarted("building model", config.model.name))
        self.model = build_model(config.model, dataset.num_classes).to(self.device)
        if hasattr(self.model, "init_from_data"):  # layers set from the data, such as patch whitening
            self.model.init_from_data(self.preprocess(self.train_x[:5000]))
        self.summary = summarize(self.model, config.model.name)
        self.model_identity = model_identity(self.model, config.model.name, dataset.num_classes)
        # channels_last lets cuDNN use its NHWC convolution kernels (tensor cores under bf16).
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        precision = config.train.precision
        use_bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.optimizer = build_optimizer(self.model, config.optimizer, self.device)
        self.forward = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            torch.manual_seed(seed + rank)  # same initial weights everywhere, different dropout masks
        if config.train.compile:
            self.forward = torch.compile(self.forward)
        self.batch_size = config.train.batch_size
        self.steps_per_epoch = math.ceil(len(self.train_y) / self.batch_size)
        self.total_steps = self._total_steps()
        self.lr_schedule = LRSchedule(config.optimizer, self.steps_per_epoch, self.total_steps)
        self.dropout_schedule = DropoutSchedule(config.dropout_schedule, self.model, self.steps_per_epoch)
        self.order_generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.augment_generator = torch.Generator(device=self.device).manual_seed(seed + 2 + 1000 * rank)
        self.order = torch.empty(0, dtype=torch.long, device=self.device)
        self.current_lr = self.lr_schedule.lr_at(0)

        # The step, and on a GPU its replay as CUDA graphs.
        self.step_state = StepState(self.device, self.current_lr, config.train.label_smoothing)
        agree = None
        if self.dist.enabled:  # every process skips the same steps
            def agree(found_inf: torch.Tensor) -> None:
                self.dist.all_reduce_(found_inf, torch.distributed.ReduceOp.MAX)
        self.train_step = TrainStep(self.model, self.forward, self.optimizer, self.step_state,
                                    autocast_dtype=self.autocast_dtype, device=self.device, agree_on_skip=agree)
        self.graphed, self.graphs_note = graph_plan(
            self.device.type, setting=config.train.cuda_graphs, distributed=self.dist.enabled,
            compiled=config.train.compile, optimizer=self.optimizer)
        self.run_step: Callable[[torch.Tensor, torch.Tensor], None] = self.train_step
        if self.graphed:
            self._lr_in_tensor()
            self.run_step = GraphedSteps(self.train_step, CudaGraphBackend(), log=self._log_line)
            self.graphs_note = "cuda graphs"
        self.non_finite = NonFiniteWatch(self.step_state, self.device)
        # The model's float parameters and buffers, as tensors sharing their storage (loading
        # a checkpoint copies into them, so the list stays valid), and lookahead's slow copy.
        self.lookahead_fast: list[torch.Tensor] = []
        self.lookahead_slow: list[torch.Tensor] = []
        if config.train.lookahead_every:
            self.lookahead_fast = [t for t in self.model.state_dict().values() if t.is_floating_point()]
            self.lookahead_slow = [t.detach().clone() for t in self.lookahead_fast]

    def _lr_in_tensor(self) -> None:
        """Graphed steps read the learning rate from the step's tensor, which changes in place."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.step_state.lr

    def _log_line(self, text: str) -> None:
        if self.log is not None:
            self.log(text)

    def _total_steps(self) -> int:
        """Steps of the whole run: those of past epochs, this one, and the epochs still to come."""
        p, train = self.progress, self.config.train
        steps_next = math.ceil(len(self.train_y) / train.batch_size)  # a new batch size starts with an epoch
        remaining = train.epochs - p.epoch
        total = p.step - p.position
        if remaining > 0:
            total += self.steps_per_epoch + (remaining - 1) * steps_next
        elif p.position:  # fewer epochs than already begun: end with this one
            total += self.steps_per_epoch
        if train.max_steps:
            total = min(total, train.max_steps)
        return total

    def _lookahead(self, decay: float) -> None:
        """Pull the slow weights toward the fast ones by 1 - decay, then restart the fast from them."""
        torch._foreach_lerp_(self.lookahead_slow, self.lookahead_fast, 1.0 - decay)
        torch._foreach_copy_(self.lookahead_fast, self.lookahead_slow)

    # --- checkpoints -------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        p = self.progress
        optimizer = self.optimizer.state_dict()
        for group in optimizer["param_groups"]:  # a tensor LR (graphed steps) is saved as a number
            if torch.is_tensor(group.get("lr")):
                group["lr"] = float(group["lr"])
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "settings": self.settings.to_state(),
            "identity": {"model": self.model_identity, "data": self.data_identity},
            "model": self.model.state_dict(),
            "optimizer": optimizer,
            "lr_schedule": self.lr_schedule.state_dict(),
            "dropout_rates": dropout_rates(self.model),
            "amp_scaler": None,  # training runs in fp32 or bf16 autocast, neither needs a scaler
            "progress": asdict(p),
            "order": self.order.cpu(),
            "epoch_stats": self.step_state.epoch.cpu(),
            "lookahead_slow": [t.cpu() for t in self.lookahead_slow],
            "rng": capture_rng(),
            "order_generator": self.order_generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
        }

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        check_same(str(path), state.get("identity"), {"model": self.model_identity, "data": self.data_identity},
                   str(self.data_dir or "the default data directory"))
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr_schedule.load_state_dict(state["lr_schedule"])
            progress = dict(state["progress"])
            epoch_images = progress.pop("epoch_images", 0)  # checkpoints before image counts moved to the device
            self.progress = _Progress(**progress)
            order = state["order"]
            stats = state["epoch_stats"]
            rng, order_state, augment_state = state["rng"], state["order_generator"], state["augment_generator"]
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CheckpointError(f"{path}: incomplete, damaged or from another model: {detail}") from None
        if self.graphed:
            self._lr_in_tensor()  # loading replaced the groups' learning rates with numbers
        p = self.progress
        if not p.batch_size:  # checkpoints from before batch sizes could change mid-run
            p.batch_size = self.config.train.batch_size
        if p.batch_size != self.batch_size:  # the epoch in progress keeps the batch size it began with
            self.batch_size = p.batch_size
            self.steps_per_epoch = math.ceil(len(self.train_y) / self.batch_size)
        self.order = order.to(self.device)
        stats = stats.to(self.device)
        if len(stats) == 2:
            stats = torch.cat([stats, stats.new_tensor([epoch_images])])
        self.step_state.epoch.copy_(stats)
        self.step_state.set_steps_taken(p.step)
        if self.lookahead_slow and state.get("lookahead_slow"):
            self.lookahead_slow = [t.to(self.device) for t in state["lookahead_slow"]]
        restore_rng(rng)
        self.order_generator.set_state(order_state)
        if self.dist.is_main:
            self.augment_generator.set_state(augment_state)
        else:  # the checkpoint holds rank 0's streams; the others start fresh ones
            self.augment_generator.manual_seed(self.config.train.seed + 2 + 1000 * self.dist.rank + p.step)
            torch.manual_seed(self.config.train.seed + self.dist.rank + p.step)
        self.total_steps = self._total_steps()
        self.lr_schedule.set_total(self.total_steps)
        self.dropout_schedule.rebase(p.step - p.position, p.epoch, self.steps_per_epoch)
        self.current_lr = self.lr_schedule.lr_at(p.step)
        self._saved_step = p.step

    def _checkpoint(self, reason: str, *, best: bool = False, keep: bool = False) -> bool:
        """Write last.pt (and best.pt, and a kept copy); on failure report it, pause, keep the old file."""
        if not self.dist.is_main:
            return True
        clock_was_running = self._clock is not None
        self._clock_stop()
        paths = [self.run_dir / "checkpoints" / "last.pt"]
        if best:
            paths.append(self.run_dir / "checkpoints" / "best.pt")
        if keep:
            paths.append(self.run_dir / "checkpoints" / f"epoch-{self.progress.epoch:04d}.pt")
        state = self._state()
        ok = True
        for path in paths:
            try:
                save_checkpoint(state, path)
            except OSError as error:
                on_disk = (f"checkpoints/last.pt holds step {self._saved_step:,}" if self._saved_step is not None
                           else "no checkpoint of this run is on disk yet")
                message = (f"could not write {path}: {error.strerror or error}. The previous checkpoint is intact "
                           f"({on_disk}); free some space and resume, or stop.")
                self._emit(ev.CheckpointFailed(path=str(path), step=self.progress.step, error=message))
                self._pause(f"checkpoint failed: {message}")
                ok = False
                break
            if path.name == "last.pt":
                self._saved_step = self.progress.step
            self._emit(ev.CheckpointSaved(path=str(path), step=self.progress.step,
                                          epoch=self.progress.epoch, reason="kept" if path.name.startswith("epoch-")
                                          else reason))
        self._last_checkpoint_ok = ok
        if ok:
            self.last_checkpoint_time = time.monotonic()
            if keep:
                self._limit_kept_checkpoints()
        if clock_was_running:
            self._clock_start()
        return ok

    def _limit_kept_checkpoints(self) -> None:
        """Remove the oldest kept checkpoints while they take more than train.keep_max_mib (the newest stays)."""
        kept = sorted((self.run_dir / "checkpoints").glob("epoch-*.pt"))
        sizes = [path.stat().st_size for path in kept]
        limit = self.config.train.keep_max_mib * 2**20
        while len(kept) > 1 and sum(sizes) > limit:
            kept.pop(0).unlink(missing_ok=True)
            sizes.pop(0)

    # --- timing of training steps (evaluation, pauses and checkpoints excluded) -----------------

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # sync point: only around evaluation, checkpoints, pauses

    def _clock_start(self) -> None:
        self._clock = time.perf_counter()

    def _clock_stop(self) -> None:
        if self._clock is not None:
            self._sync()
            self.progress.train_seconds += time.perf_counter() - self._clock
            self._clock = None

    # --- control -----------------------------------------------------------------------------

    def _pause(self, reason: str) -> None:
        """The run pauses itself on a fault; headless, that stops it (see RunPaused.requested)."""
        if self.dist.enabled:  # nobody can resume a process of a torchrun job by hand
            self.control.stop(reason)
            return
        self.control.pause()
        self._paused_reason = reason
        self._paused_on_fault = True

    def _between_steps(self) -> bool:
        """Serve requests; False when the run must stop now."""
        control = self.control
        self._serve()
        if self.dist.enabled:
            if control.take_checkpoint_request():
                self._checkpoint("requested")
            # Every process must leave the loop at the same step or the next collective hangs.
            if self.progress.step % AGREE_EVERY or not self.dist.agree(control.stop_reason is not None):
                return True
            control.stop("stopped with the other processes")
            return False
        if control.take_checkpoint_request():
            self._checkpoint("requested")
        if control.paused and control.stop_reason is None:
            self._clock_stop()
            bad = self.non_finite.drain()  # what the device skipped before the pause, reported before it
            if bad:
                self._non_finite(*bad)
            reason = getattr(self, "_paused_reason", None) or "pause requested"
            self._status("paused", step=self.progress.step, reason=reason)
            if self._paused_on_fault:  # also when writing that status was what failed
                reason = self._paused_reason or reason
            on_fault = self._paused_on_fault
            self._paused_reason, self._paused_on_fault = None, False
            self._emit(ev.RunPaused(step=self.progress.step, epoch=self.progress.epoch, reason=reason,
                                    requested=not on_fault))
            control.wait_while_paused(self._serve_while_paused)
            if control.stop_reason is None:
                self._write_problem = None  # resumed: the user freed space; a new failure is reported again
                self._status("running", step=self.progress.step)
                self._emit(ev.RunResumed(step=self.progress.step, epoch=self.progress.epoch))
            self._clock_start()
        return control.stop_reason is None

    def _serve_while_paused(self) -> None:
        self._serve(force=True)
        if self.control.take_checkpoint_request():
            self._checkpoint("requested")

    def _serve(self, force: bool = False) -> None:
        """Answer requests from the app (in this process) and from the control channel (other processes)."""
        for command, args, future in self.control.take_requests():
            answer = self._handle(command, args, str(args.get("source") or "app"))
            if not future.done():
                future.set_result(answer)
        if self._inbox is None:
            return
        now = time.monotonic()
        if not force and now - self._last_control_poll < CONTROL_POLL_S:
            return
        self._last_control_poll = now
        for request in self._inbox.take():
            self._inbox.reply(request, self._handle(request.command, request.args, "control"))

    def _handle(self, command: str, args: Mapping[str, Any], source: str) -> dict[str, Any]:
        p, control = self.progress, self.control
        here = {"step": p.step, "epoch": p.epoch}
        if command == "status":
            return {"ok": True, **self.status_report()}
        if command == "pause":
            if self.dist.enabled:
                return {"ok": False, "error": "a torchrun job cannot pause; stop it and resume it later"}
            control.pause()
            self._paused_reason = f"paused by {source}"
            return {"ok": True, "state": "paused", **here}
        if command == "resume":
            control.resume()
            return {"ok": True, "state": "running", **here}
        if command == "stop":
            control.stop(str(args.get("reason") or f"stopped by {source}"))
            return {"ok": True, "state": "stopping", **here}
        if command == "checkpoint":
            if self._checkpoint(f"requested by {source}"):
                return {"ok": True, "path": str(self.run_dir / "checkpoints" / "last.pt"), **here}
            return {"ok": False, "error": self._paused_reason or "the checkpoint could not be written", **here}
        if command == "set":
            try:
                updates = args.get("updates")
                if not isinstance(updates, Mapping):
                    updates = parse_assignments(args.get("assignments") or [], source)
            except ConfigError as error:
                return {"ok": False, "error": str(error), "key": error.key}
            return self.apply_settings(dict(updates), source)
        return {"ok": False, "error": f"unknown command '{command}'"}

    def status_report(self) -> dict[str, Any]:
        """Where the run is and what it trains with now (the answer to `control status`)."""
        p = self.progress
        return {"state": "paused" if self.control.paused else "running", "step": p.step, "epoch": p.epoch,
                "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch, "lr": self.current_lr,
                "batch_size": self.batch_size, "dropout": self.dropout_schedule.group_rates(),
                "settings": self.config.to_dict(), "changes": len(self.settings.history),
                "run_dir": str(self.run_dir), "device": str(self.device), "graphs": self.graphs_note}

    # --- live settings -------------------------------------------------------------------------

    def apply_settings(self, updates: dict[str, Any], source: str) -> dict[str, Any]:
        """Validate and apply a change of settings now (a step boundary); the answer says what changed.

        Called in the training thread only. An invalid value refuses the whole change.
        """
        p = self.progress
        if self.dist.enabled:
            return {"ok": False, "error": "settings cannot change while a torchrun job trains; stop it, then "
                                          "resume with the change"}
        try:
            config, diff = self.settings.check(updates, source, self.dropout_schedule.group_rates())
        except ConfigError as error:
            return {"ok": False, "error": str(error), "key": error.key, "step": p.step, "epoch": p.epoch}
        if diff:
            config = self._take_effect(config, diff, source)
            self.settings.apply(config, Change(p.step, p.epoch, source, diff))
            self._emit(ev.SettingsChanged(step=p.step, epoch=p.epoch, source=source, changes=diff))
            self._after_change(diff, source)
        return {"ok": True, "step": p.step, "epoch": p.epoch, "changes": diff,
                "when": {key: when_applied(key) for key in diff}}

    def _take_effect(self, config: RunConfig, diff: dict[str, list[Any]], source: str) -> RunConfig:
        """Make the objects the loop uses follow `config`; returns it (completed where a change implies more)."""
        p, keys = self.progress, set(diff)
        optimizer = config.optimizer
        if keys & OPTIMIZER_HYPERPARAMETERS:
            previous = self.config.optimizer
            for group in self.optimizer.param_groups:
                if "optimizer.momentum" in keys and "momentum" in group:
                    group["momentum"] = optimizer.momentum
                if "optimizer.nesterov" in keys and "nesterov" in group:
                    group["nesterov"] = optimizer.nesterov
                if "optimizer.betas" in keys and "betas" in group:
                    group["betas"] = tuple(optimizer.betas)
                if "optimizer.eps" in keys and "eps" in group:
                    group["eps"] = optimizer.eps
                if "optimizer.alpha" in keys and "alpha" in group:
                    group["alpha"] = optimizer.alpha
                # Groups kept free of decay (norms, biases) stay free of it.
                if "optimizer.weight_decay" in keys and group.get("weight_decay") == previous.weight_decay:
                    group["weight_decay"] = optimizer.weight_decay
            if isinstance(self.run_step, GraphedSteps):
                self.run_step.invalidate()  # the recorded kernels hold the old values
        if "optimizer.schedule.name" in keys:
            # A new schedule from this step on, starting from the LR in force now unless one was given.
            if "optimizer.lr" not in keys and self.current_lr != config.optimizer.lr:
                config = replace_path(config, "optimizer.lr", self.current_lr, source)
                diff["optimizer.lr"] = [self.config.optimizer.lr, self.current_lr]
            self.lr_schedule = self.lr_schedule.replace(config.optimizer, p.step)
        elif any(key == "optimizer.lr" or key.startswith("optimizer.schedule.") or key == "optimizer.inverse_time_decay"
                 for key in keys):
            self.lr_schedule.reconfigure(config.optimizer)
        if "train.label_smoothing" in keys:
            self.step_state.label_smoothing.fill_(config.train.label_smoothing)
        if any(key.startswith("augment.") for key in keys):
            self.augment = Augmenter(config.augment)
        for key in keys:
            if key.startswith("dropout."):
                self.dropout_schedule.set_group_rate(key[len("dropout."):], diff[key][1])
        return config

    def _after_change(self, diff: dict[str, list[Any]], source: str) -> None:
        """Consequences that need the new settings in force: the run's length, the LR now, dropout events."""
        p = self.progress
        self.total_steps = self._total_steps()
        self.lr_schedule.set_total(self.total_steps)
        self._set_lr(self.lr_schedule.lr_at(p.step), f"changed by {source}")
        dropout_keys = [key for key in diff if key.startswith("dropout.")]
        if dropout_keys:
            old = dropout_rates(self.model)
            for key in dropout_keys:  # the rates before this change, to report old and new whole
                group = key[len("dropout."):]
                name = self.dropout_schedule.groups[group][-1][0]
                old[name] = diff[key][0]
            self._emit(ev.DropoutChanged(step=p.step, epoch=p.epoch, old=old, new=dropout_rates(self.model)))

    # --- the loop ----------------------------------------------------------------------------

    def _set_lr(self, lr: float, reason: str) -> None:
        p = self.progress
        if lr != self.current_lr:
            if self.lr_schedule.discrete or reason != "schedule":
                self._emit(ev.LRChanged(step=p.step, epoch=p.epoch, old=self.current_lr, new=lr, reason=reason))
            self.current_lr = lr
        if self.graphed:
            if self._lr_in_tensor_value != lr:
                self.step_state.lr.fill_(lr)
                self._lr_in_tensor_value = lr
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def _apply_schedules(self) -> None:
        p = self.progress
        self._set_lr(self.lr_schedule.lr_at(p.step), "schedule")
        if p.step == self._dropout_applied_at:
            return  # a retried step (after running out of memory) must not apply its events twice
        self._dropout_applied_at = p.step
        change = self.dropout_schedule.apply_due(p.step)
        if change:
            self._emit(ev.DropoutChanged(step=p.step, epoch=p.epoch, old=change.old, new=change.new))

    def _begin_epoch(self) -> None:
        """A new epoch: a new batch size takes effect here, then a new permutation of the data."""
        p = self.progress
        if self.config.train.batch_size != self.batch_size:
            self.batch_size = self.config.train.batch_size
            self.steps_per_epoch = math.ceil(len(self.train_y) / self.batch_size)
            self.total_steps = self._total_steps()
            self.lr_schedule.rebase(p.step, self.steps_per_epoch, self.total_steps)
            self.dropout_schedule.rebase(p.step, p.epoch, self.steps_per_epoch)
        p.batch_size = self.batch_size
        self.order = torch.randperm(len(self.train_y), generator=self.order_generator, device=self.device)
        self.step_state.epoch.zero_()

    def _train(self) -> RunResult:
        self._clock = None
        self._last_emit_mark: tuple[int, float] | None = None
        self._dropout_applied_at = -1
        self._paused_reason = None
        self._paused_on_fault = False
        self._last_checkpoint_ok = True
        self._last_control_poll = 0.0
        self._lr_in_tensor_value: float | None = None
        start = self._load_start_state()
        if self.dist.is_main and not self.resume:
            write_json_atomic(self.run_dir / "config.json", self.config.to_dict())
        self._setup()
        if start is not None:
            self._restore(*start)
        self._lr_in_tensor_value = None  # the tensor was made with the first LR; set it from the step's
        self._set_lr(self.current_lr, "schedule")
        if self.dist.is_main:
            self._inbox = ControlInbox(self.run_dir)
        config, p = self.config, self.progress
        self._training_began = True
        self._status("running", step=p.step)
        self._emit(ev.RunStarted(
            run_dir=str(self.run_dir), config=config.to_dict(), model_summary=self.summary.to_dict(),
            device=str(self.device), step=p.step, epoch=p.epoch, total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch, train_size=len(self.train_y), val_size=len(self.val_y),
            test_size=len(self.test_y), resumed=self.resume, dropout_rates=dropout_rates(self.model),
            parent=str(self.branch.parent) if self.branch else "",
            parent_step=p.step if self.branch else -1, graphs=self.graphs_note))
        if self.graphs_note and not self.graphed:
            self._log_line(self.graphs_note)
        if start is not None:
            changes = self.resume_changes if self.resume else dict(self.branch.changes)  # type: ignore[union-attr]
            if changes:
                answer = self.apply_settings(dict(changes), "resume" if self.resume else "branch")
                if not answer["ok"]:  # checked before the data loaded; a refusal here is a bug, not input
                    raise ConfigError("resume" if self.resume else "--set", answer.get("key", ""), answer["error"])
            if self.branch is not None:
                self._checkpoint("branched")  # the branch's own last.pt, so it can be resumed at once
        self._emit(ev.PhaseStarted("warming up", "capturing CUDA graphs" if self.graphed else "first steps"))
        last_emit, steps_since_emit = time.monotonic(), 0
        self.last_checkpoint_time = time.monotonic()
        session_start_step, session_start_seconds = p.step, p.train_seconds
        self._clock_start()

        while p.step < self.total_steps:
            if p.position == 0:
                # Before the epoch's permutation is drawn: a stop here saves the generator as it
                # was, so the resumed run draws the same order as an uninterrupted one.
                if not self._between_steps():
                    return self._stopped()
                self._begin_epoch()
            epoch_started = time.monotonic()
            while p.position < self.steps_per_epoch and p.step < self.total_steps:
                if not self._between_steps():
                    return self._stopped()
                self._apply_schedules()
                batch_size = self.batch_size
                index = self.order[p.position * batch_size:(p.position + 1) * batch_size]
                if self.dist.enabled:  # this process's share of the global batch
                    index = index[self.dist.rank::self.dist.world_size]
                images = self.augment(self.preprocess(self.train_x[index]), self.augment_generator)
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                labels = self.train_y[index]
                try:
                    self.run_step(images, labels)
                    every = self.config.train.lookahead_every
                    if every and (p.step + 1) % every == 0:
                        self._lookahead(0.95 ** every * ((p.step + 1) / self.total_steps) ** 3)
                except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
                    if not _is_out_of_memory(error):
                        raise
                    if self.dist.enabled:
                        raise  # the other processes wait in a collective: the job cannot skip a step
                    images = labels = None
                    self._out_of_memory(error)
                    continue  # the same batch again once resumed
                p.train_images += len(labels) * self.dist.world_size
                bad = self.non_finite.poll()
                if bad:
                    self._non_finite(*bad)
                p.position += 1
                p.step += 1
                steps_since_emit += 1
                now = time.monotonic()
                if steps_since_emit >= self.config.train.log_every and now - last_emit >= MIN_EMIT_INTERVAL_S:
                    self._emit_step(session_start_step, session_start_seconds)
                    last_emit, steps_since_emit = now, 0
                minutes = self.config.train.checkpoint_minutes
                if minutes and now - self.last_checkpoint_time >= minutes * 60:
                    self._checkpoint("periodic")
            if not self._between_steps():
                return self._stopped()
            if not self._end_epoch(time.monotonic() - epoch_started):
                return self._stopped()
            self._clock_start()
        if not self._between_steps():
            return self._stopped()
        if not self._last_checkpoint_ok and not self._checkpoint_or_stop("before finishing"):
            return self._stopped()
        return self._finish()

    def _checkpoint_or_stop(self, reason: str) -> bool:
        """Write the checkpoint, waiting (paused) for the user to free space as often as it fails.

        Headless, a failed write stops the run instead (nobody can press resume); False then.
        """
        while not self._checkpoint(reason):
            if self.dist.enabled or not self._between_steps():
                return False
        return True

    def _emit_step(self, start_step: int, start_seconds: float) -> None:
        p = self.progress
        # Sync point: once per emitted StepMetrics. Under torchrun these are rank 0's own
        # images: emits are timed, so the processes cannot meet in a collective here.
        loss_sum, correct, count = self.step_state.window.tolist()
        self.step_state.window.zero_()
        elapsed = p.train_seconds + (time.perf_counter() - self._clock if self._clock else 0.0)
        session_steps = p.step - start_step
        rate = (session_steps * self.batch_size) / max(elapsed - start_seconds, 1e-9)
        # The current pace: steps and training time since the previous emit (pauses,
        # evaluations and checkpoints are outside the clock, so they do not count).
        previous_step, previous_elapsed = self._last_emit_mark or (start_step, start_seconds)
        recent_steps, recent_seconds = p.step - previous_step, elapsed - previous_elapsed
        self._last_emit_mark = (p.step, elapsed)
        ms_per_step = 1000.0 * recent_seconds / recent_steps if recent_steps > 0 and recent_seconds > 0 else 0.0
        recent_rate = self.batch_size * 1000.0 / ms_per_step if ms_per_step else rate
        per_step = ms_per_step / 1000.0 if ms_per_step else (
            (elapsed - start_seconds) / session_steps if session_steps else 0.0)
        self._emit(ev.StepMetrics(
            step=p.step, epoch=p.epoch, loss=loss_sum / count if count else float("nan"),
            top1=100.0 * correct / count if count else 0.0, lr=self.current_lr,
            images_per_s=rate, eta_s=per_step * (self.total_steps - p.step), total_steps=self.total_steps,
            recent_images_per_s=recent_rate, ms_per_step=ms_per_step))

    def _non_finite(self, step: int, value: float) -> None:
        epoch = self.progress.epoch
        message = (f"loss became {value} at step {step} (epoch {epoch + 1}); the update was skipped and "
                   "the weights are unchanged. Lower the learning rate or check the data, then resume or stop.")
        self._emit(ev.LossNotFinite(step=step, epoch=epoch, loss=value, message=message))
        self._pause(f"non-finite loss: {message}")

    def _out_of_memory(self, error: BaseException) -> None:
        """Release what the failed step held and pause; resuming retries the same batch."""
        p = self.progress
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
        message = (f"out of memory at step {p.step} (batch size {self.batch_size}): {first_line}. "
                   "The step was not applied and its memory released. Lower train.batch_size or pick a smaller "
                   "model, then resume or stop.")
        self._emit(ev.MemoryExhausted(step=p.step, epoch=p.epoch, message=message))
        self._pause(f"out of memory: {message}")

    def _end_epoch(self, seconds: float) -> bool:
        """Validation, the epoch's line and its checkpoint; False if a stop came during validation."""
        p = self.progress
        self._clock_stop()
        bad = self.non_finite.drain()
        if bad:
            self._non_finite(*bad)
        epoch_stats = self.step_state.epoch
        self.dist.all_reduce_(epoch_stats)  # all processes reach every epoch end
        loss_sum, correct, count = epoch_stats.tolist()  # sync point: once per epoch
        val_loss = val_top1 = val_top5 = None
        if len(self.val_y):
            try:
                val_loss, val_top1, val_top5 = self.evaluate(self.val_x, self.val_y, interruptible=True)
            except EvaluationInterrupted:
                return False  # the checkpoint of the stop keeps this epoch's end to do again
            if self.lr_schedule.observe_validation_loss(val_loss):
                self._set_lr(self.lr_schedule.lr_at(p.step), f"validation loss did not improve for "
                             f"{self.config.optimizer.schedule.patience + 1} epochs")
        self._emit(ev.EpochEnded(
            epoch=p.epoch, step=p.step, train_loss=loss_sum / count if count else float("nan"),
            train_top1=100.0 * correct / count if count else 0.0, val_loss=val_loss, val_top1=val_top1,
            val_top5=val_top5, lr=self.current_lr, seconds=seconds))
        improved = val_loss is not None and val_loss < p.best_val_loss
        if improved:
            p.best_val_loss = val_loss
        if val_top1 is not None and (p.best_val_top1 is None or val_top1 > p.best_val_top1):
            p.best_val_top1 = val_top1
        if p.position >= self.steps_per_epoch:
            p.epoch += 1
            p.position = 0
        every = self.config.train.keep_every
        self._checkpoint("epoch end", best=improved, keep=bool(every) and p.position == 0 and p.epoch % every == 0)
        return True

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, *,
                 interruptible: bool = False) -> tuple[float, float, float]:
        """Loss, top-1 and top-5 (percent) without augmentation.

        With `interruptible`, a stop request ends it between batches (EvaluationInterrupted),
        so Ctrl-C during a long evaluation is answered in a batch's time, not the whole pass's.
        """
        self.model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        k = min(5, self.dataset.num_classes)
        batch_size = self.config.train.eval_batch_size
        interruptible = interruptible and not self.dist.enabled  # processes must evaluate alike
        for start in range(0, len(labels), batch_size):
            if interruptible and self.control.stop_reason is not None:
                raise EvaluationInterrupted
            x = self.preprocess(images[start:start + batch_size])
            y = labels[start:start + batch_size]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = self.model(x).float()
                if self.config.train.test_time_flip:
                    logits = (logits + self.model(x.flip(3)).float()) / 2
            top = logits.topk(k, dim=1).indices
            totals += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                                   (top[:, 0] == y).sum().double(), (top == y[:, None]).any(1).sum().double()])
        loss_sum, top1, top5 = totals.tolist()  # sync point: once per evaluation
        count = max(len(labels), 1)
        return loss_sum / count, 100.0 * top1 / count, 100.0 * top5 / count

    def _autocast(self):  # noqa: ANN202
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _stopped(self) -> RunResult:
        p = self.progress
        reason = self.control.stop_reason or self._paused_reason or "stopped"
        path = self.run_dir / "checkpoints" / "last.pt"
        saved = self._checkpoint(f"stop: {reason}")
        self._status("stopped", step=p.step, reason=reason, saved_step=self._saved_step)
        self._emit(ev.RunStopped(step=p.step, epoch=p.epoch, reason=reason, checkpoint=str(path) if saved else "",
                                 saved_step=-1 if self._saved_step is None else self._saved_step))
        return RunResult("stopped", self.run_dir, {"step": p.step, "epoch": p.epoch, "checkpoint": saved,
                                                   "saved_step": self._saved_step})

    def _finish(self) -> RunResult:
        p = self.progress
        self._clock_stop()
        if self.lookahead_slow:
            self._lookahead(1.0)  # end on the slow weights (again after a resume: then a no-op), and keep them
            if not self._checkpoint_or_stop("finished"):
                return self._stopped()
            self._clock_stop()
        self._emit(ev.PhaseStarted("testing", f"{len(self.test_y):,} test images"))
        try:
            test_loss, test_top1, test_top5 = self.evaluate(self.test_x, self.test_y, interruptible=True)
        except EvaluationInterrupted:
            return self._stopped()  # resuming evaluates again and finishes
        rate = p.train_images / p.train_seconds if p.train_seconds else 0.0
        finished = ev.RunFinished(
            test_loss=test_loss, test_top1=test_top1, test_top5=test_top5, best_val_top1=p.best_val_top1,
            best_val_loss=None if math.isinf(p.best_val_loss) else p.best_val_loss, epochs=p.epoch,
            steps=p.step, images_per_s=rate, seconds=p.train_seconds)
        summary = {
            "status": "finished", "preset": self.config.name, "run_dir": str(self.run_dir),
            "test_loss": test_loss, "test_top1": test_top1, "test_top5": test_top5,
            "best_val_top1": p.best_val_top1, "best_val_loss": finished.best_val_loss,
            "epochs": p.epoch, "steps": p.step, "images_per_s": rate, "train_seconds": p.train_seconds,
            "device": str(self.device), "parameters": self.summary.total_parameters,
            "reference_top1": self.config.reference.top1 or None,
            "reference_top5": self.config.reference.top5 or None,
            "graphs": self.graphs_note,
        }
        if self.device.type == "cuda":
            summary["peak_gpu_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.dist.enabled:
            summary["processes"] = self.dist.world_size
            summary["replicas_identical"] = self._replicas_identical()
        while self.dist.is_main:
            try:
                write_json_atomic(self.run_dir / "summary.json", summary)
                break
            except OSError as error:
                self._report_write_problem(self.run_dir / "summary.json", error)
                if not self._between_steps():
                    return self._stopped()
        self._status("finished", step=p.step)
        self._emit(finished)
        return RunResult("finished", self.run_dir, summary)

    def _replicas_identical(self) -> bool:
        """Whether every process ends with the same weights, as averaged gradients promise."""
        with torch.no_grad():
            flat = torch.cat([t.detach().double().flatten() for t in self.model.state_dict().values()
                              if t.is_floating_point()])
            checksum = torch.stack([flat.sum(), (flat * flat).sum()]).to(self.device)
            lowest, highest = checksum.clone(), checksum.clone()
            self.dist.all_reduce_(lowest, torch.distributed.ReduceOp.MIN)
            self.dist.all_reduce_(highest, torch.distributed.ReduceOp.MAX)
            return bool(torch.equal(lowest, highest))


def _is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError / MemoryError for the same."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return "can't allocate memory" in text or "DefaultCPUAllocator" in text


def _edited_after_start(launched: RunConfig, trained: RunConfig) -> tuple[str, Any, Any] | None:
    """A setting config.json holds that differs from the trained one and could not have changed mid-run.

    Settings that change mid-run live in the checkpoint and win over config.json (which keeps
    the launch values); names, notes and the device are the session's to change.
    """
    ours, theirs = flatten(to_plain(launched)), flatten(to_plain(trained))
    for key in sorted(set(ours) | set(theirs)):
        if key in CHANGEABLE or key in ("name", "description", "train.device") or key.startswith("reference."):
            continue
        if ours.get(key) != theirs.get(key):
            return key, ours.get(key), theirs.get(key)
    return None


def _describe_part(part: Any) -> str:
    plain = to_plain(part)
    name = plain.get("name", "?")
    extra = {k: v for k, v in plain.items() if k != "name" and v not in ((), [], 0, 0.0, False, "default", "")}
    return f"{name}" + (f" {extra}" if extra and len(str(extra)) < 80 else "")


class ResumeRefused(ValueError):
    """The run cannot be resumed as asked; the message says why and what to do."""


def check_resumable(run_dir: Path, *, extending: bool = False, lock: RunLock | None = None,
                    locked_by_job: bool = False) -> RunConfig:
    """The run's config when it can be resumed; else ResumeRefused, RunDirError or CheckpointError.

    One rule for the command line and the app: no second writer in a run directory, a
    last checkpoint that loads, and a finished run only when it is given more epochs.
    `lock` is the run's lock when the caller holds it; `locked_by_job` says that another
    process of the same torchrun job (rank 0) does.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if lock is None and not locked_by_job and is_locked(run_dir):
        probe = RunLock(run_dir)
        try:
            probe.acquire(patience_s=0.0)  # raises RunBusy naming the process that holds it
        finally:
            probe.release()  # it was let go in the meantime: nobody trains it
    status = read_status(run_dir, assume_unlocked=lock is not None or locked_by_job)
    load_checkpoint(run_dir / "checkpoints" / "last.pt")
    if status.get("status") == "finished" and not extending:
        raise ResumeRefused(f"{run_dir} already finished; `cifartui resume {run_dir} --epochs N` trains it further")
    return config


__all__ = ["Trainer", "Branch", "RunControl", "RunResult", "resolve_device", "DeviceError", "CheckpointError",
           "ResumeRefused", "RunBusy", "check_resumable"]
