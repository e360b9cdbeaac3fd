"""The training loop: data on the device, a pure LR schedule, events out, control in.

`Trainer.run()` trains in the calling thread (the headless CLI); `Trainer.start()`
in a background thread (the app). `Trainer._train` reads top to bottom: draw a batch
from the epoch's permutation, preprocess and augment it on the device, take one step
(`step.py`: forward, backward, update, statistics; on a GPU replayed as a CUDA graph),
and between steps let the run's units do their part:

    run_control.py    RunController: pause, resume, stop, requests of the app and of the
                      control channel, live changes of settings
    checkpointing.py  Checkpointer: what a checkpoint holds, restoring it, kept copies
    emitter.py        Emitter: metrics.jsonl, status.json, throttled StepMetrics, log lines
"""

from __future__ import annotations

import math
import random
import threading
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from cifartui.config import ConfigError, RunConfig
from cifartui.engine.runs import events as ev
from cifartui.engine.runs.checkpoint import CheckpointError
from cifartui.engine.runs.control import RunControl, caused_by_interrupt
from cifartui.engine.runs.folders import RunBusy, RunLock, read_status, write_json_atomic
from cifartui.engine.runs.identity import data_identity, model_identity
from cifartui.engine.runs.settings import LiveSettings
from cifartui.engine.train.augment import Augmenter, Preprocessor
from cifartui.engine.train.checkpointing import Checkpointer, Progress, ResumeRefused, check_resumable
from cifartui.engine.train.data import load_dataset, split_validation
from cifartui.engine.train.devices import DeviceError, activate, autocast_dtype, resolve_device, seed_torch
from cifartui.engine.train.distributed import Distributed
from cifartui.engine.train.evaluation import (EvaluationInterrupted, evaluate, evaluation_batch_size,
                                              replicas_identical)
from cifartui.engine.train.emitter import MIN_EMIT_INTERVAL_S, Emitter
from cifartui.engine.train.models import build_model, dropout_rates, summarize
from cifartui.engine.train.optim import build_optimizer, lookahead_tensors, prepare_for_graphs
from cifartui.engine.train.run_control import AGREE_EVERY, CONTROL_POLL_S, RunController
from cifartui.engine.train.schedules import DropoutSchedule, LRSchedule
from cifartui.engine.train.step import (CudaGraphBackend, GraphedSteps, NonFiniteWatch, StepState, TrainStep,
                                        graph_plan, is_out_of_memory)


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
        self.progress = Progress()
        self.thread: threading.Thread | None = None
        self.result: RunResult | None = None
        # The run directory's lock, taken before anything else in run() unless the caller
        # already holds it; released when the run ends, however it ends.
        self.lock = lock
        self._clock: float | None = None  # when the training clock started, while it runs
        self.emitter = Emitter(self, self.bus, log)
        self.run_control = RunController(self)
        self.checkpoints = Checkpointer(self)

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
            self.emitter.open(self.run_dir)
        self._training_began = False
        try:
            self._status("starting", step=self.progress.step)
            self.result = self._train()
            return self.result
        except BaseException as error:
            self._emit(ev.RunFailed(error=str(error) or type(error).__name__, error_type=type(error).__name__,
                                    step=self.progress.step, epoch=self.progress.epoch))
            if caused_by_interrupt(error):  # a second Ctrl-C: left at once, the last checkpoint is the previous one
                saved_step = self.checkpoints.saved_step
                self._status("interrupted", step=saved_step if saved_step is not None else self.progress.step,
                             reason="left at once without a new checkpoint")
            elif self.resume and not self._training_began and previous_status.get("status") not in (None, "unknown"):
                # Resuming failed before a step was taken: the run is where it was, not failed.
                self._status(previous_status["status"], **{k: v for k, v in previous_status.items() if k not in (
                    "status", "pid", "host", "updated")}, resume_error=str(error))
            else:
                self._status("failed", error=str(error), step=self.progress.step)
            self.result = RunResult("failed", self.run_dir, {"error": str(error)})
            raise
        finally:
            self.run_control.close_channel()
            self.control.cancel_requests("the run has ended")
            self.emitter.close()
            if self.lock is not None:
                self.lock.release()

    # --- the loop ----------------------------------------------------------------------------

    def _train(self) -> RunResult:
        self._prepare()
        p, steps = self.progress, self.run_control
        while p.step < self.total_steps:
            if p.position == 0:
                # Before the epoch's permutation is drawn: a stop here saves the generator as it
                # was, so the resumed run draws the same order as an uninterrupted one.
                if not steps.between_steps():
                    return self._stopped()
                self._begin_epoch()
            epoch_started = time.monotonic()
            while p.position < self.steps_per_epoch and p.step < self.total_steps:
                if not steps.between_steps():
                    return self._stopped()
                self._apply_schedules()
                if not self._take_step():
                    continue  # out of memory: the same batch again once resumed
                p.position += 1
                p.step += 1
                self.emitter.step_taken()
                self.checkpoints.periodic()
            if not steps.between_steps():
                return self._stopped()
            if not self._end_epoch(time.monotonic() - epoch_started):
                return self._stopped()
            self._clock_start()
        if not steps.between_steps():
            return self._stopped()
        if not self.checkpoints.last_ok and not self.checkpoints.save_or_stop("before finishing"):
            return self._stopped()
        return self._finish()

    def _take_step(self) -> bool:
        """One training step on the next batch of the epoch's order; False if it ran out of memory."""
        p = self.progress
        index = self.order[p.position * self.batch_size:(p.position + 1) * self.batch_size]
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
            self.run_control.out_of_memory(error)
            return False
        p.train_images += len(labels) * self.dist.world_size
        bad = self.non_finite.poll()
        if bad:
            self.run_control.non_finite_loss(*bad)
        return True

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
        self.emitter.status(status, **extra)

    def _emit(self, event: ev.Event) -> None:
        """Every event of the run goes out through here (metrics.jsonl, then the listeners)."""
        self.emitter.emit(event)

    def _log_line(self, text: str) -> None:
        self.emitter.log_line(text)

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
        seed_torch(seed, self.device)

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
        self.autocast_dtype, precision_note = autocast_dtype(config.train.precision, self.device)
        if precision_note:
            self._log_line(precision_note)
        self.optimizer = build_optimizer(self.model, config.optimizer, self.device)
        self.forward = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            seed_torch(seed + rank, self.device)  # same initial weights everywhere, different dropout masks
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
            self.run_step = GraphedSteps(self.train_step, CudaGraphBackend(self.device), log=self._log_line,
                                         on_label=lambda label: setattr(self, "graphs_note", label))
            self.graphs_note = "cuda graphs"
        self.non_finite = NonFiniteWatch(self.step_state, self.device)
        # The model's float parameters and buffers, as tensors sharing their storage (loading
        # a checkpoint copies into them, so the list stays valid), and lookahead's slow copy.
        self.lookahead_fast: list[torch.Tensor] = []
        self.lookahead_slow: list[torch.Tensor] = []
        if config.train.lookahead_every:
            self.lookahead_fast = lookahead_tensors(self.model)
            self.lookahead_slow = [t.detach().clone() for t in self.lookahead_fast]

    def _lr_in_tensor(self) -> None:
        """Graphed steps read the learning rate from the step's tensor, which changes in place."""
        prepare_for_graphs(self.optimizer, self.step_state.lr)

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

    # --- timing of training steps (evaluation, pauses and checkpoints excluded) -----------------

    def _clock_start(self) -> None:
        self._clock = time.perf_counter()

    def _clock_stop(self) -> None:
        if self._clock is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # sync point: only around evaluation, checkpoints, pauses
            self.progress.train_seconds += time.perf_counter() - self._clock
            self._clock = None

    # --- what the units do, as the rest of the project knows it ---------------------------------

    def apply_settings(self, updates: dict[str, Any], source: str) -> dict[str, Any]:
        """Validate and apply a change of settings now (a step boundary); see RunController.apply_settings."""
        return self.run_control.apply_settings(updates, source)

    def status_report(self) -> dict[str, Any]:
        return self.run_control.status_report()

    # --- schedules --------------------------------------------------------------------------

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
        self.run_control.apply_scheduled(p.epoch)  # before the batch size is read: the schedule may change it
        if self.config.train.batch_size != self.batch_size:
            self.batch_size = self.config.train.batch_size
            self.steps_per_epoch = math.ceil(len(self.train_y) / self.batch_size)
            self.total_steps = self._total_steps()
            self.lr_schedule.rebase(p.step, self.steps_per_epoch, self.total_steps)
            self.dropout_schedule.rebase(p.step, p.epoch, self.steps_per_epoch)
            if isinstance(self.run_step, GraphedSteps):
                self.run_step.forget_shapes()  # free the graphs of the old batch size
        p.batch_size = self.batch_size
        self.order = torch.randperm(len(self.train_y), generator=self.order_generator, device=self.device)
        self.step_state.epoch.zero_()

    def _prepare(self) -> None:
        """Everything before the first step: the start state, data, model, events of the start."""
        self._clock = None
        self._dropout_applied_at = -1
        self._lr_in_tensor_value: float | None = None
        start = self.checkpoints.load_start_state()
        if self.dist.is_main and not self.resume:
            write_json_atomic(self.run_dir / "config.json", self.config.to_dict())
        self._setup()
        if start is not None:
            self.checkpoints.restore(*start)
        self._lr_in_tensor_value = None  # the tensor was made with the first LR; set it from the step's
        self._set_lr(self.current_lr, "schedule")
        if self.dist.is_main:
            self.run_control.open_channel()
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
                write_json_atomic(self.run_dir / "config.json", self.config.to_dict())  # with its own --set
                every = self.config.train.keep_every  # and its own copy of a kept epoch it starts at
                self.checkpoints.save("branched", keep=bool(every) and p.position == 0 and p.epoch % every == 0)
        self.checkpoints.save_settings()  # as the run starts: the checkpoint's settings and the changes since
        self._emit(ev.PhaseStarted("warming up", "capturing CUDA graphs" if self.graphed else "first steps"))
        self.checkpoints.last_time = time.monotonic()
        self.emitter.start_session(p.step, p.train_seconds)
        self._clock_start()

    def _end_epoch(self, seconds: float) -> bool:
        """Validation, the epoch's line and its checkpoint; False if a stop came during validation."""
        p = self.progress
        self._clock_stop()
        bad = self.non_finite.drain()
        if bad:
            self.run_control.non_finite_loss(*bad)
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
        self.checkpoints.save("epoch end", best=improved, keep=bool(every) and p.position == 0 and p.epoch % every == 0)
        return True

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, *,
                 interruptible: bool = False) -> tuple[float, float, float]:
        """Loss, top-1 and top-5 (percent) without augmentation; see evaluation.evaluate.

        With `interruptible`, a stop request ends it between batches (EvaluationInterrupted),
        so Ctrl-C during a long evaluation is answered in a batch's time, not the whole pass's.
        """
        interruptible = interruptible and not self.dist.enabled  # processes must evaluate alike
        # This process's share of a training batch: on the CPU, evaluation stays within the
        # memory the training steps took (see evaluation_batch_size).
        share = max(1, self.batch_size // self.dist.world_size)
        batch = evaluation_batch_size(self.config.train.eval_batch_size, share, self.device)
        return evaluate(self.model, self.preprocess, images, labels, classes=self.dataset.num_classes,
                        batch_size=batch, flip=self.config.train.test_time_flip,
                        channels_last=self.channels_last, autocast=self._autocast,
                        stop_requested=(lambda: self.control.stop_reason is not None) if interruptible else None)

    def _autocast(self):  # noqa: ANN202
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _stopped(self) -> RunResult:
        p = self.progress
        reason = self.control.stop_reason or self.run_control.paused_reason or "stopped"
        path = self.run_dir / "checkpoints" / "last.pt"
        saved = self.checkpoints.save(f"stop: {reason}")
        saved_step = self.checkpoints.saved_step
        self._status("stopped", step=p.step, reason=reason, saved_step=saved_step)
        self._emit(ev.RunStopped(step=p.step, epoch=p.epoch, reason=reason, checkpoint=str(path) if saved else "",
                                 saved_step=-1 if saved_step is None else saved_step))
        return RunResult("stopped", self.run_dir, {"step": p.step, "epoch": p.epoch, "checkpoint": saved,
                                                   "saved_step": saved_step})

    def _finish(self) -> RunResult:
        p = self.progress
        self._clock_stop()
        if self.lookahead_slow:
            self._lookahead(1.0)  # end on the slow weights (again after a resume: then a no-op), and keep them
            if not self.checkpoints.save_or_stop("finished"):
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
                self.emitter.report_write_problem(self.run_dir / "summary.json", error)
                if not self.run_control.between_steps():
                    return self._stopped()
        self._status("finished", step=p.step)
        self._emit(finished)
        return RunResult("finished", self.run_dir, summary)

    def _replicas_identical(self) -> bool:
        return replicas_identical(self.model, self.dist, self.device)


def _is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, cuBLAS/cuDNN allocation failures, a capture out of memory, the CPU allocator's."""
    return is_out_of_memory(error)


__all__ = ["Trainer", "Progress", "AGREE_EVERY", "CONTROL_POLL_S", "MIN_EMIT_INTERVAL_S", "ConfigError", "Branch", "RunControl", "RunResult", "resolve_device", "DeviceError", "CheckpointError",
           "ResumeRefused", "RunBusy", "check_resumable"]
