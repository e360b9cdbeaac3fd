"""The training loop: data on the device, a pure LR schedule, events out, control in.

`Trainer.run()` trains in the calling thread (the headless CLI); `Trainer.start()`
in a background thread (the app). Either way the loop reads top to bottom: draw a
batch from the epoch's permutation, preprocess and augment it on the device, step
the optimizer, accumulate metrics on the device, and between steps look at the
`RunControl` for pause, stop and checkpoint requests.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import traceback
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from cifartui.config import RunConfig
from cifartui.engine import events as ev
from cifartui.engine.augment import Augmenter, Preprocessor
from cifartui.engine.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, capture_rng, load_checkpoint,
                                        restore_rng, save_checkpoint)
from cifartui.engine.control import RunControl
from cifartui.engine.data import load_dataset, split_validation
from cifartui.engine.distributed import Distributed
from cifartui.engine.models import build_model, dropout_rates, summarize
from cifartui.engine.optim import build_optimizer, step_unless
from cifartui.engine.runs import (RunBusy, RunLock, is_locked, read_config, read_status, write_json_atomic,
                                  write_status)
from cifartui.engine.schedules import DropoutSchedule, LRSchedule

# Step metrics go out at most this often, whatever log_every says.
MIN_EMIT_INTERVAL_S = 0.1
# Under torchrun the processes agree on stop requests every this many steps, so that all
# of them leave the loop at the same step.
AGREE_EVERY = 20


class DeviceError(ValueError):
    """The requested device does not exist here."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{name}' requested but no CUDA GPU is visible; use --device cpu or auto")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise DeviceError(f"device '{name}' does not exist: {torch.cuda.device_count()} GPU(s) visible "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
        return torch.device(name)
    raise DeviceError(f"unknown device '{name}'; expected auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class RunResult:
    status: str  # finished, stopped or failed
    run_dir: Path
    summary: dict[str, Any]


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


class _LossWatch:
    """Finds non-finite losses without making the host wait for the device every step.

    The optimizer already skipped such a step on the device (`step_unless`); this only
    tells the host, to pause the run. On the CPU the flag is read at once (there is no
    device to wait for). On a GPU each step's flag and loss are copied to pinned host
    memory behind an event and read when the event has passed: the host never runs more
    than `depth` steps ahead of the device, and the run pauses at most `depth` steps
    after the bad one.
    """

    def __init__(self, device: torch.device, depth: int = 2):
        self.lagged = device.type == "cuda"
        self.depth = depth
        self.pending: deque[tuple[int, int, Any, torch.Tensor]] = deque()
        if self.lagged:
            size = depth + 2
            self.buffers = [torch.empty(2, pin_memory=True) for _ in range(size)]
            self.events = [torch.cuda.Event() for _ in range(size)]
            self.next_slot = 0

    def push(self, step: int, epoch: int, found_inf: torch.Tensor, loss: torch.Tensor) -> tuple[int, int, float] | None:
        """(step, epoch, loss) of the first bad step seen by now, if any."""
        if not self.lagged:
            if found_inf.item():  # a CPU tensor: no device to wait for
                return step, epoch, float(loss.item())
            return None
        slot = self.next_slot
        self.next_slot = (slot + 1) % len(self.buffers)
        self.buffers[slot].copy_(torch.stack([found_inf.float(), loss.detach().float()]), non_blocking=True)
        self.events[slot].record()
        self.pending.append((step, epoch, self.events[slot], self.buffers[slot]))
        return self._collect(block=False)

    def drain(self) -> tuple[int, int, float] | None:
        return self._collect(block=True)

    def _collect(self, block: bool) -> tuple[int, int, float] | None:
        bad = None
        while self.pending:
            step, epoch, event, buffer = self.pending[0]
            if not event.query():
                if not block and len(self.pending) <= self.depth:
                    break
                event.synchronize()  # sync point: only when the host is more than `depth` steps ahead
            self.pending.popleft()
            if bad is None and buffer[0].item():
                bad = (step, epoch, float(buffer[1].item()))
        return bad


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, *, data_dir: Path | None = None,
                 listeners: list[ev.Listener] | None = None, control: RunControl | None = None,
                 resume: bool = False, log: Callable[[str], None] | None = None,
                 distributed: Distributed | None = None, lock: RunLock | None = None):
        self.dist = distributed or Distributed()
        # The run directory's lock, taken before anything else in run() unless the caller
        # already holds it; released when the run ends, however it ends.
        self.lock = lock
        self.config = config
        self.run_dir = Path(run_dir)
        self.data_dir = data_dir
        self.control = control or RunControl()
        self.resume = resume
        self.log = log
        self.bus = ev.EventBus(listeners)
        self.progress = _Progress()
        self.thread: threading.Thread | None = None
        self.result: RunResult | None = None
        self._metrics_file = None

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
        try:
            if not self.resume and self.dist.is_main:
                write_json_atomic(self.run_dir / "config.json", self.config.to_dict())
            self._status("starting", step=self.progress.step)
            self.result = self._train()
            return self.result
        except BaseException as error:
            self._emit(ev.RunFailed(error=str(error) or type(error).__name__, error_type=type(error).__name__,
                                    step=self.progress.step, epoch=self.progress.epoch))
            if self.resume and not self._training_began and previous_status.get("status") not in (None, "unknown"):
                # Resuming failed before a step was taken: the run is where it was, not failed.
                self._status(previous_status["status"], **{k: v for k, v in previous_status.items() if k not in (
                    "status", "pid", "host", "updated")}, resume_error=str(error))
            else:
                self._status("failed", error=str(error), step=self.progress.step)
            self.result = RunResult("failed", self.run_dir, {"error": str(error)})
            raise
        finally:
            self.bus.close()
            if self._metrics_file is not None:
                self._metrics_file.close()
            if self.lock is not None:
                self.lock.release()

    # --- setup -------------------------------------------------------------------------------

    def _run_quietly(self) -> None:
        try:
            self.run()
        except BaseException:
            with (self.run_dir / "error.log").open("a", encoding="utf-8") as handle:
                traceback.print_exc(file=handle)

    def _status(self, status: str, **extra: Any) -> None:
        if self.dist.is_main:
            write_status(self.run_dir, status, **extra)

    def _emit(self, event: ev.Event) -> None:
        # metrics.jsonl is written here, in the training thread: events are few (step
        # metrics are throttled) and a line that is written is a line that survives a crash.
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps(event.to_json()) + "\n")
            self._metrics_file.flush()
        self.bus.publish(event)

    def _setup(self) -> None:
        config = self.config
        seed = config.train.seed
        rank = self.dist.rank
        self.device = resolve_device(self.dist.device_name(config.train.device))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
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
        self.steps_per_epoch = math.ceil(len(self.train_y) / config.train.batch_size)
        total = config.train.epochs * self.steps_per_epoch
        self.total_steps = min(total, config.train.max_steps) if config.train.max_steps else total
        self.lr_schedule = LRSchedule(config.optimizer, self.steps_per_epoch, self.total_steps)
        self.dropout_schedule = DropoutSchedule(config.dropout_schedule, self.model, self.steps_per_epoch)
        self.order_generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.augment_generator = torch.Generator(device=self.device).manual_seed(seed + 2 + 1000 * rank)
        self.order = torch.empty(0, dtype=torch.long, device=self.device)
        # loss sum, correct, images: summed on the device, read once per epoch
        self.epoch_stats = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.loss_watch = _LossWatch(self.device)
        # The model's float parameters and buffers, as tensors sharing their storage (loading
        # a checkpoint copies into them, so the list stays valid), and lookahead's slow copy.
        self.lookahead_fast: list[torch.Tensor] = []
        self.lookahead_slow: list[torch.Tensor] = []
        if config.train.lookahead_every:
            self.lookahead_fast = [t for t in self.model.state_dict().values() if t.is_floating_point()]
            self.lookahead_slow = [t.detach().clone() for t in self.lookahead_fast]
        self.current_lr = self.lr_schedule.lr_at(0)

    def _lookahead(self, decay: float) -> None:
        """Pull the slow weights toward the fast ones by 1 - decay, then restart the fast from them."""
        torch._foreach_lerp_(self.lookahead_slow, self.lookahead_fast, 1.0 - decay)
        torch._foreach_copy_(self.lookahead_fast, self.lookahead_slow)

    # --- checkpoints -------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        p = self.progress
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "dropout_rates": dropout_rates(self.model),
            "amp_scaler": None,  # training runs in fp32 or bf16 autocast, neither needs a scaler
            "progress": {"step": p.step, "epoch": p.epoch, "position": p.position,
                         "best_val_loss": p.best_val_loss, "best_val_top1": p.best_val_top1,
                         "train_seconds": p.train_seconds, "train_images": p.train_images},
            "order": self.order.cpu(),
            "epoch_stats": self.epoch_stats.cpu(),
            "lookahead_slow": [t.cpu() for t in self.lookahead_slow],
            "rng": capture_rng(),
            "order_generator": self.order_generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        progress = dict(state["progress"])
        epoch_images = progress.pop("epoch_images", 0)  # checkpoints before image counts moved to the device
        self.progress = _Progress(**progress)
        self.order = state["order"].to(self.device)
        stats = state["epoch_stats"].to(self.device)
        if len(stats) == 2:
            stats = torch.cat([stats, stats.new_tensor([epoch_images])])
        self.epoch_stats = stats
        if self.lookahead_slow and state.get("lookahead_slow"):
            self.lookahead_slow = [t.to(self.device) for t in state["lookahead_slow"]]
        restore_rng(state["rng"])
        self.order_generator.set_state(state["order_generator"])
        if self.dist.is_main:
            self.augment_generator.set_state(state["augment_generator"])
        else:  # the checkpoint holds rank 0's streams; the others start fresh ones
            self.augment_generator.manual_seed(self.config.train.seed + 2 + 1000 * self.dist.rank + self.progress.step)
            torch.manual_seed(self.config.train.seed + self.dist.rank + self.progress.step)
        self.current_lr = self.lr_schedule.lr_at(self.progress.step)

    def _checkpoint(self, reason: str, *, best: bool = False) -> bool:
        """Write last.pt (and best.pt); on failure report it, pause, and keep the old file."""
        if not self.dist.is_main:
            return True
        clock_was_running = self._clock is not None
        self._clock_stop()
        paths = [self.run_dir / "checkpoints" / "last.pt"]
        if best:
            paths.append(self.run_dir / "checkpoints" / "best.pt")
        state = self._state()
        for path in paths:
            try:
                save_checkpoint(state, path)
            except OSError as error:
                message = (f"could not write {path}: {error.strerror or error}. The previous checkpoint "
                           "is intact; free some space and resume, or stop.")
                self._emit(ev.CheckpointFailed(path=str(path), step=self.progress.step, error=message))
                self._pause(f"checkpoint failed: {message}")
                if clock_was_running:
                    self._clock_start()
                return False
            self._emit(ev.CheckpointSaved(path=str(path), step=self.progress.step,
                                          epoch=self.progress.epoch, reason=reason))
        self.last_checkpoint_time = time.monotonic()
        if clock_was_running:
            self._clock_start()
        return True

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
        if self.dist.enabled:  # nobody can resume a process of a torchrun job by hand
            self.control.stop(reason)
            return
        self.control.pause()
        self._paused_reason = reason

    def _between_steps(self) -> bool:
        """Serve requests; False when the run must stop now."""
        control = self.control
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
            reason = getattr(self, "_paused_reason", None) or "pause requested"
            self._paused_reason = None
            self._status("paused", step=self.progress.step, reason=reason)
            self._emit(ev.RunPaused(step=self.progress.step, epoch=self.progress.epoch, reason=reason))
            control.wait_while_paused(lambda: self._checkpoint("requested"))
            if control.stop_reason is None:
                self._status("running", step=self.progress.step)
                self._emit(ev.RunResumed(step=self.progress.step, epoch=self.progress.epoch))
            self._clock_start()
        return control.stop_reason is None

    # --- the loop ----------------------------------------------------------------------------

    def _apply_schedules(self) -> None:
        p = self.progress
        lr = self.lr_schedule.lr_at(p.step)
        if lr != self.current_lr:
            if self.lr_schedule.discrete:
                self._emit(ev.LRChanged(step=p.step, epoch=p.epoch, old=self.current_lr, new=lr, reason="schedule"))
            self.current_lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if p.step == self._dropout_applied_at:
            return  # a retried step (after running out of memory) must not apply its events twice
        self._dropout_applied_at = p.step
        change = self.dropout_schedule.apply_due(p.step)
        if change:
            self._emit(ev.DropoutChanged(step=p.step, epoch=p.epoch, old=change.old, new=change.new))

    def _train(self) -> RunResult:
        self._clock = None
        self._last_emit_mark: tuple[int, float] | None = None
        self._dropout_applied_at = -1
        self._paused_reason = None
        self._setup()
        if self.resume:
            self._restore(load_checkpoint(self.run_dir / "checkpoints" / "last.pt"))
        config, p = self.config, self.progress
        batch_size = config.train.batch_size
        self._training_began = True
        self._status("running", step=p.step)
        self._emit(ev.RunStarted(
            run_dir=str(self.run_dir), config=config.to_dict(), model_summary=self.summary.to_dict(),
            device=str(self.device), step=p.step, epoch=p.epoch, total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch, train_size=len(self.train_y), val_size=len(self.val_y),
            test_size=len(self.test_y), resumed=self.resume, dropout_rates=dropout_rates(self.model)))
        window = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, images
        last_emit, steps_since_emit = time.monotonic(), 0
        self.last_checkpoint_time = time.monotonic()
        session_start_step, session_start_seconds = p.step, p.train_seconds
        self._emit(ev.PhaseStarted("warming up", "first steps"))
        self._clock_start()

        while p.step < self.total_steps:
            if p.position == 0:
                self.order = torch.randperm(len(self.train_y), generator=self.order_generator, device=self.device)
                self.epoch_stats.zero_()
            epoch_started = time.monotonic()
            while p.position < self.steps_per_epoch and p.step < self.total_steps:
                if not self._between_steps():
                    return self._stopped()
                self._apply_schedules()
                index = self.order[p.position * batch_size:(p.position + 1) * batch_size]
                if self.dist.enabled:  # this process's share of the global batch
                    index = index[self.dist.rank::self.dist.world_size]
                images = self.augment(self.preprocess(self.train_x[index]), self.augment_generator)
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                labels = self.train_y[index]
                self.model.train()
                try:
                    with self._autocast():
                        logits = self.forward(images)
                    loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.train.label_smoothing)
                    # A non-finite loss must never reach the weights. The check stays on the device:
                    # the optimizer skips the update when found_inf is set (see step_unless).
                    found_inf = torch.logical_not(torch.isfinite(loss.detach())).float()
                    if self.dist.enabled:  # every process skips the same steps
                        self.dist.all_reduce_(found_inf, torch.distributed.ReduceOp.MAX)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    step_unless(self.optimizer, found_inf)
                    every = config.train.lookahead_every
                    if every and (p.step + 1) % every == 0:
                        self._lookahead(0.95 ** every * ((p.step + 1) / self.total_steps) ** 3)
                except torch.OutOfMemoryError as error:
                    if self.dist.enabled:
                        raise  # the other processes wait in a collective: the job cannot skip a step
                    images = labels = logits = loss = None
                    self._out_of_memory(error)
                    continue  # the same batch again once resumed
                with torch.no_grad():
                    ok = found_inf == 0
                    correct = (logits.argmax(1) == labels).sum()
                    stats = torch.stack([torch.where(ok, loss.detach(), 0.0).double() * len(labels),
                                         torch.where(ok, correct, 0).double(), ok.double() * len(labels)])
                    window += stats
                    self.epoch_stats += stats
                p.train_images += len(labels) * self.dist.world_size
                bad = self.loss_watch.push(p.step, p.epoch, found_inf, loss)
                if bad:
                    self._non_finite(*bad)
                p.position += 1
                p.step += 1
                steps_since_emit += 1
                now = time.monotonic()
                if steps_since_emit >= config.train.log_every and now - last_emit >= MIN_EMIT_INTERVAL_S:
                    self._emit_step(window, session_start_step, session_start_seconds)
                    window.zero_()
                    last_emit, steps_since_emit = now, 0
                minutes = config.train.checkpoint_minutes
                if minutes and now - self.last_checkpoint_time >= minutes * 60:
                    self._checkpoint("periodic")
            if not self._between_steps():
                return self._stopped()
            self._end_epoch(time.monotonic() - epoch_started)
            self._clock_start()
        return self._finish()

    def _autocast(self):  # noqa: ANN202
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _emit_step(self, window: torch.Tensor, start_step: int, start_seconds: float) -> None:
        p = self.progress
        # Sync point: once per emitted StepMetrics. Under torchrun these are rank 0's own
        # images: emits are timed, so the processes cannot meet in a collective here.
        loss_sum, correct, count = window.tolist()
        elapsed = p.train_seconds + (time.perf_counter() - self._clock if self._clock else 0.0)
        session_steps = p.step - start_step
        rate = (session_steps * self.config.train.batch_size) / max(elapsed - start_seconds, 1e-9)
        # The current pace: steps and training time since the previous emit (pauses,
        # evaluations and checkpoints are outside the clock, so they do not count).
        previous_step, previous_elapsed = self._last_emit_mark or (start_step, start_seconds)
        recent_steps, recent_seconds = p.step - previous_step, elapsed - previous_elapsed
        self._last_emit_mark = (p.step, elapsed)
        ms_per_step = 1000.0 * recent_seconds / recent_steps if recent_steps > 0 and recent_seconds > 0 else 0.0
        recent_rate = self.config.train.batch_size * 1000.0 / ms_per_step if ms_per_step else rate
        per_step = ms_per_step / 1000.0 if ms_per_step else (
            (elapsed - start_seconds) / session_steps if session_steps else 0.0)
        self._emit(ev.StepMetrics(
            step=p.step, epoch=p.epoch, loss=loss_sum / count if count else float("nan"),
            top1=100.0 * correct / count if count else 0.0, lr=self.current_lr,
            images_per_s=rate, eta_s=per_step * (self.total_steps - p.step), total_steps=self.total_steps,
            recent_images_per_s=recent_rate, ms_per_step=ms_per_step))

    def _non_finite(self, step: int, epoch: int, value: float) -> None:
        p = self.progress
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
        message = (f"out of memory at step {p.step} (batch size {self.config.train.batch_size}): {first_line}. "
                   "The step was not applied and its memory released. Lower train.batch_size or pick a smaller "
                   "model, then resume or stop.")
        self._emit(ev.MemoryExhausted(step=p.step, epoch=p.epoch, message=message))
        self._pause(f"out of memory: {message}")

    def _end_epoch(self, seconds: float) -> None:
        p = self.progress
        self._clock_stop()
        bad = self.loss_watch.drain()
        if bad:
            self._non_finite(*bad)
        self.dist.all_reduce_(self.epoch_stats)  # all processes reach every epoch end
        loss_sum, correct, count = self.epoch_stats.tolist()  # sync point: once per epoch
        val_loss = val_top1 = val_top5 = None
        if len(self.val_y):
            val_loss, val_top1, val_top5 = self.evaluate(self.val_x, self.val_y)
            if self.lr_schedule.observe_validation_loss(val_loss):
                new = self.lr_schedule.lr_at(p.step)
                self._emit(ev.LRChanged(step=p.step, epoch=p.epoch, old=self.current_lr, new=new,
                                        reason=f"validation loss did not improve for "
                                               f"{self.config.optimizer.schedule.patience + 1} epochs"))
                self.current_lr = new
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
        self._checkpoint("epoch end", best=improved)

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float]:
        """Loss, top-1 and top-5 (percent) without augmentation."""
        self.model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        k = min(5, self.dataset.num_classes)
        for start in range(0, len(labels), self.config.train.eval_batch_size):
            x = self.preprocess(images[start:start + self.config.train.eval_batch_size])
            y = labels[start:start + self.config.train.eval_batch_size]
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

    def _stopped(self) -> RunResult:
        p = self.progress
        reason = self.control.stop_reason or "stopped"
        path = self.run_dir / "checkpoints" / "last.pt"
        saved = self._checkpoint(f"stop: {reason}")
        self._status("stopped", step=p.step, reason=reason)
        self._emit(ev.RunStopped(step=p.step, epoch=p.epoch, reason=reason, checkpoint=str(path) if saved else ""))
        return RunResult("stopped", self.run_dir, {"step": p.step, "epoch": p.epoch, "checkpoint": saved})

    def _finish(self) -> RunResult:
        p = self.progress
        self._clock_stop()
        if self.lookahead_slow:
            self._lookahead(1.0)  # end on the slow weights, and keep them as the last checkpoint
            self._checkpoint("finished")
            self._clock_stop()
        test_loss, test_top1, test_top5 = self.evaluate(self.test_x, self.test_y)
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
        }
        if self.device.type == "cuda":
            summary["peak_gpu_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.dist.enabled:
            summary["processes"] = self.dist.world_size
            summary["replicas_identical"] = self._replicas_identical()
        if self.dist.is_main:
            write_json_atomic(self.run_dir / "summary.json", summary)
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


class ResumeRefused(ValueError):
    """The run cannot be resumed as asked; the message says why and what to do."""


def check_resumable(run_dir: Path, *, extending: bool = False, lock: RunLock | None = None) -> RunConfig:
    """The run's config when it can be resumed; else ResumeRefused, RunDirError or CheckpointError.

    One rule for the command line and the app: no second writer in a run directory, a
    last checkpoint that loads, and a finished run only when it is given more epochs.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if lock is None and is_locked(run_dir):
        probe = RunLock(run_dir)
        try:
            probe.acquire(patience_s=0.0)  # raises RunBusy naming the process that holds it
        finally:
            probe.release()  # it was let go in the meantime: nobody trains it
    status = read_status(run_dir, assume_unlocked=lock is not None)
    load_checkpoint(run_dir / "checkpoints" / "last.pt")
    if status.get("status") == "finished" and not extending:
        raise ResumeRefused(f"{run_dir} already finished; `cifartui resume {run_dir} --epochs N` trains it further")
    return config


__all__ = ["Trainer", "RunControl", "RunResult", "resolve_device", "DeviceError", "CheckpointError",
           "ResumeRefused", "RunBusy", "check_resumable"]
