"""A run's checkpoints: what goes into one, how a run starts from one, and which are kept.

`Checkpointer` owns the checkpoint files of a run directory (last.pt, best.pt, the kept
epoch-NNNN.pt within train.keep_max_mib), the state saved in them (weights, optimizer,
schedules, progress counters, data order, RNG streams, live settings), restoring all of
that on resume or branch, and the record of what is on disk (`saved_step`, whether the
last write succeeded, when it was made). A write that fails (a full disk) keeps the
previous file and pauses the run. `check_resumable` is the one rule, shared by the
command line and the app, for whether a run can be resumed.
"""

from __future__ import annotations

import errno
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from cifartui.config import RunConfig, flatten, from_mapping, replace_path, to_plain
from cifartui.engine.runs import events as ev
from cifartui.engine.runs.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, capture_rng, load_checkpoint,
                                             restore_rng, save_checkpoint)
from cifartui.engine.runs.folders import RunLock, is_locked, read_config, read_status, write_json_atomic
from cifartui.engine.runs.identity import check_same
from cifartui.engine.runs.settings import CHANGEABLE, LiveSettings
from cifartui.engine.train.devices import seed_torch
from cifartui.engine.train.models import dropout_groups, dropout_rates
from cifartui.engine.train.optim import saved_lookahead


# The run's live settings as of the last change (RunConfig plus the changes in order).
SETTINGS_FILE = "live_settings.json"


@dataclass
class Progress:
    """Counters that, with the RNG states, say exactly where the run is."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # batches done in the current epoch
    best_val_loss: float = math.inf
    best_val_top1: float | None = None
    train_seconds: float = 0.0
    train_images: int = 0
    batch_size: int = 0  # of the current epoch (a new batch size waits for the next epoch)


def space_error(error: BaseException) -> OSError | None:
    """The OSError behind a failed write: the error itself, or one in its chain of causes.

    torch's zip writer turns the OSError of a full disk into a RuntimeError ("unexpected
    pos", "file write failed") that keeps the OSError only as its context, or names it
    only in its text.
    """
    seen: BaseException | None = error
    for _ in range(20):  # a chain of causes is short; the bound only guards against a cycle
        if seen is None:
            break
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    if "No space left on device" in text or "file write failed" in text:
        return OSError(errno.ENOSPC, "No space left on device")
    return None


class Checkpointer:
    """Saves and restores a Trainer's whole state; knows which checkpoint on disk is the last good one."""

    def __init__(self, trainer: Any):
        # `trainer` is the Trainer this serves (not imported here: trainer.py imports this module).
        self.trainer = trainer
        self.folder = Path(trainer.run_dir) / "checkpoints"
        self.saved_step: int | None = None  # the step last.pt holds, once this session knows it
        self.last_ok = True
        self.last_time = time.monotonic()

    # --- starting from a checkpoint -----------------------------------------------------------

    def load_start_state(self) -> tuple[dict[str, Any], Path] | None:
        """The checkpoint a resumed run or a branch starts from; its live settings become the trainer's."""
        t = self.trainer
        if t.resume:
            path = self.folder / "last.pt"
        elif t.branch is not None:
            path = t.branch.checkpoint
        else:
            return None
        state = load_checkpoint(path)
        try:
            saved = state.get("settings")
            settings = (LiveSettings.from_state(saved, str(path)) if isinstance(saved, Mapping)
                        else LiveSettings(from_mapping(RunConfig, state["config"], str(path))))
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: incomplete or damaged (settings: {error})") from None
        launched = t.config
        if t.resume:
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
        t.settings = settings
        if t.resume:  # changes confirmed after that checkpoint (the process was killed) come back first
            t.resume_changes = {**self._changes_since(settings), **t.resume_changes}
        changes = dict(t.resume_changes if t.resume else t.branch.changes)
        early = {key: value for key, value in changes.items() if not key.startswith("dropout.")}
        if early:  # refuse before loading data (dropout groups are checked once the model exists)
            t.settings.check(early, "--set" if t.branch else "resume")
        return state, path

    def _changes_since(self, saved: LiveSettings) -> dict[str, Any]:
        """The live changes live_settings.json records beyond those of the checkpoint, as one change."""
        path = Path(self.trainer.run_dir) / SETTINGS_FILE
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))["history"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}  # none yet (a run from before the file), or damaged: the checkpoint's settings stand
        known = json.loads(json.dumps([change.to_plain() for change in saved.history]))
        if not isinstance(recorded, list) or recorded[:len(known)] != known:
            return {}  # not this checkpoint's continuation
        updates: dict[str, Any] = {}
        for change in recorded[len(known):]:
            for key, pair in (change.get("changes") or {}).items() if isinstance(change, dict) else ():
                if isinstance(pair, list) and len(pair) == 2:
                    updates[key] = pair[1]
        return updates

    def save_settings(self) -> None:
        """live_settings.json: the live settings now, written at each change, so a kill -9 loses none of them."""
        t = self.trainer
        if not t.dist.is_main:
            return
        path = Path(t.run_dir) / SETTINGS_FILE
        try:
            write_json_atomic(path, t.settings.to_state())
        except OSError as error:
            t.emitter.report_write_problem(path, error)

    def state(self) -> dict[str, Any]:
        t = self.trainer
        optimizer = t.optimizer.state_dict()
        for group in optimizer["param_groups"]:  # a tensor LR (graphed steps) is saved as a number
            if torch.is_tensor(group.get("lr")):
                group["lr"] = float(group["lr"])
        return {
            "format": CHECKPOINT_FORMAT,
            "config": t.config.to_dict(),
            "settings": t.settings.to_state(),
            "identity": {"model": t.model_identity, "data": t.data_identity},
            "model": t.model.state_dict(),
            "optimizer": optimizer,
            "lr_schedule": t.lr_schedule.state_dict(),
            "dropout_rates": dropout_rates(t.model),
            "amp_scaler": None,  # training runs in fp32 or bf16 autocast, neither needs a scaler
            "progress": asdict(t.progress),
            "order": t.order.cpu(),
            "epoch_stats": t.step_state.epoch.cpu(),
            "lookahead_slow": [tensor.cpu() for tensor in t.lookahead_slow],
            "rng": capture_rng(t.device),
            "order_generator": t.order_generator.get_state(),
            "augment_generator": t.augment_generator.get_state(),
        }

    def restore(self, state: dict[str, Any], path: Path) -> None:
        t = self.trainer
        check_same(str(path), state.get("identity"), {"model": t.model_identity, "data": t.data_identity},
                   str(t.data_dir or "the default data directory"))
        try:
            t.model.load_state_dict(state["model"])
            t.optimizer.load_state_dict(state["optimizer"])
            t.lr_schedule.load_state_dict(state["lr_schedule"])
            _restore_dropout_rates(t.model, state.get("dropout_rates"))
            progress = dict(state["progress"])
            epoch_images = progress.pop("epoch_images", 0)  # checkpoints before image counts moved to the device
            t.progress = Progress(**progress)
            order = state["order"]
            stats = state["epoch_stats"]
            rng, order_state, augment_state = state["rng"], state["order_generator"], state["augment_generator"]
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CheckpointError(f"{path}: incomplete, damaged or from another model: {detail}") from None
        if t.graphed:
            t._lr_in_tensor()  # loading replaced the groups' learning rates with numbers
        p = t.progress
        if not p.batch_size:  # checkpoints from before batch sizes could change mid-run
            p.batch_size = t.config.train.batch_size
        if p.batch_size != t.batch_size:  # the epoch in progress keeps the batch size it began with
            t.batch_size = p.batch_size
            t.steps_per_epoch = math.ceil(len(t.train_y) / t.batch_size)
        t.order = order.to(t.device)
        stats = stats.to(t.device)
        if len(stats) == 2:
            stats = torch.cat([stats, stats.new_tensor([epoch_images])])
        t.step_state.epoch.copy_(stats)
        t.step_state.set_steps_taken(p.step)
        if t.lookahead_slow and state.get("lookahead_slow"):
            t.lookahead_slow = [tensor.to(t.device) for tensor in saved_lookahead(t.model, state["lookahead_slow"])]
        restore_rng(rng, t.device)
        t.order_generator.set_state(order_state)
        if t.dist.is_main:
            t.augment_generator.set_state(augment_state)
        else:  # the checkpoint holds rank 0's streams; the others start fresh ones
            t.augment_generator.manual_seed(t.config.train.seed + 2 + 1000 * t.dist.rank + p.step)
            seed_torch(t.config.train.seed + t.dist.rank + p.step, t.device)
        t.total_steps = t._total_steps()
        t.lr_schedule.set_total(t.total_steps)
        t.dropout_schedule.rebase(p.step - p.position, p.epoch, t.steps_per_epoch)
        t.current_lr = t.lr_schedule.lr_at(p.step)
        self.saved_step = p.step

    # --- writing ----------------------------------------------------------------------------

    def save(self, reason: str, *, best: bool = False, keep: bool = False) -> bool:
        """Write last.pt (and best.pt, and a kept copy); on failure report it, pause, keep the old file."""
        t = self.trainer
        if not t.dist.is_main:
            return True
        clock_was_running = t._clock is not None
        t._clock_stop()
        paths = [self.folder / "last.pt"]
        if best:
            paths.append(self.folder / "best.pt")
        if keep:
            paths.append(self.folder / f"epoch-{t.progress.epoch:04d}.pt")
        state = self.state()
        ok = True
        for path in paths:
            try:
                save_checkpoint(state, path)
            except (OSError, RuntimeError) as error:
                space = space_error(error)
                if space is None:
                    raise  # not a write that failed: the run fails and says why
                on_disk = (f"The previous checkpoint is intact (checkpoints/last.pt holds step {self.saved_step:,})"
                           if self.saved_step is not None else "No checkpoint of this run is on disk yet")
                message = (f"could not write {path}: {space.strerror or space}. {on_disk}; free some space and "
                           "resume, or stop.")
                t._emit(ev.CheckpointFailed(path=str(path), step=t.progress.step, error=message))
                t.run_control.pause_on_fault(f"checkpoint failed: {message}")
                ok = False
                break
            if path.name == "last.pt":
                self.saved_step = t.progress.step
            t._emit(ev.CheckpointSaved(path=str(path), step=t.progress.step, epoch=t.progress.epoch,
                                       reason="kept" if path.name.startswith("epoch-") else reason))
        self.last_ok = ok
        if ok:
            self.last_time = time.monotonic()
            if keep:
                self.limit_kept()
        if clock_was_running:
            t._clock_start()
        return ok

    def save_or_stop(self, reason: str) -> bool:
        """Write the checkpoint, waiting (paused) for the user to free space as often as it fails.

        Headless, a failed write stops the run instead (nobody can press resume); False then.
        """
        t = self.trainer
        while not self.save(reason):
            if t.dist.enabled or not t.run_control.between_steps():
                return False
        return True

    def periodic(self) -> None:
        """A checkpoint every train.checkpoint_minutes of the run's time."""
        minutes = self.trainer.config.train.checkpoint_minutes
        if minutes and time.monotonic() - self.last_time >= minutes * 60:
            self.save("periodic")

    def limit_kept(self) -> None:
        """Remove the oldest kept checkpoints while they take more than train.keep_max_mib (the newest stays)."""
        kept = sorted(self.folder.glob("epoch-*.pt"))
        sizes = [path.stat().st_size for path in kept]
        limit = self.trainer.config.train.keep_max_mib * 2**20
        while len(kept) > 1 and sum(sizes) > limit:
            kept.pop(0).unlink(missing_ok=True)
            sizes.pop(0)


def _restore_dropout_rates(model: torch.nn.Module, rates: Any) -> None:
    """The rates as they were set (0.1), not as the float32 buffer read back (0.10000000149011612)."""
    if not isinstance(rates, Mapping):
        return  # checkpoints before rates were saved: the buffers' values stand
    layers = {name: layer for group in dropout_groups(model).values() for name, layer in group}
    for name, rate in rates.items():
        if name in layers and isinstance(rate, (int, float)) and not isinstance(rate, bool):
            layers[name].set_rate(rate)


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


__all__ = ["Checkpointer", "Progress", "ResumeRefused", "check_resumable"]
