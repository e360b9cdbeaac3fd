"""Steering a run from the app, apart from any screen: asking it, describing changes, its checkpoints.

A run this app trains is asked through its `RunControl` (the trainer answers at the
next step boundary, also while paused); a run another process trains, through its
control channel (`engine/runs/channel.py`). Both block until the run answers, so they are
called from worker threads only: the screen never waits for a run.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from cifartui.config import ConfigError, RunConfig, from_mapping
from cifartui.engine.api import DROPOUT_PREFIX, NEXT_STEP, RunControl

# How long opening the form waits for a run's settings (a run still loading its data
# answers only once it trains).
STATUS_TIMEOUT_S = 30.0


class RunUnreachable(Exception):
    """The run did not answer, or nobody trains it; the message says which and what to do."""


@dataclass(frozen=True)
class FormState:
    """What the settings form starts from: a run's settings now, or those saved in a checkpoint."""

    config: RunConfig
    dropout: dict[str, float]  # dropout group -> rate of the layer that ends it
    step: int
    epoch: int
    lr_now: float | None  # the learning rate in force, when known
    where: str  # one line saying where the values come from
    total_steps: int = 0


def ask(run_dir: Path, control: RunControl | None, command: str, args: Mapping[str, Any] | None = None, *,
        timeout: float | None = None) -> dict[str, Any]:
    """One request to a run, and its answer ({"ok": ...}). Blocks: call it from a worker thread.

    With `control` (a run this app trains) the trainer answers between two steps, and at
    the latest when the run ends; RunUnreachable when `timeout` passes first. Without it,
    the run's control channel carries the request to the process that trains it, and a
    request it could not deliver is answered {"ok": False, "error": why}.
    """
    if control is not None:
        future = control.submit(command, dict(args or {}))
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            raise RunUnreachable(f"no answer from {Path(run_dir).name} within {timeout:g} s; it may still be "
                                 "loading its data or evaluating. Try again in a moment.") from None
    from cifartui.engine.api import ControlError, send

    try:
        return send(run_dir, command, dict(args or {}), timeout=timeout or STATUS_TIMEOUT_S)
    except ControlError as error:  # refused, not delivered, or not answered: the message says which
        return {"ok": False, "error": str(error)}


def live_state(run_dir: Path, control: RunControl | None) -> FormState:
    """The settings a training run has now, asked of the run itself."""
    answer = ask(run_dir, control, "status", timeout=STATUS_TIMEOUT_S)
    if not answer.get("ok"):
        raise RunUnreachable(str(answer.get("error") or "the run refused to say its settings"))
    try:
        config = from_mapping(RunConfig, answer["settings"], f"{run_dir}: settings")
    except (ConfigError, KeyError, TypeError) as error:
        raise RunUnreachable(f"the run's answer could not be read: {error}") from None
    step, epoch = int(answer.get("step", 0)), int(answer.get("epoch", 0))
    total = int(answer.get("total_steps", 0))
    state = answer.get("state") if answer.get("state") in ("paused", "pausing") else "training"
    of = f" of {total:,}" if total else ""
    lr = float(answer["lr"]) if isinstance(answer.get("lr"), (int, float)) else None
    where = f"{state} at step {step:,}{of} (epoch {epoch + 1})" + (f"; learning rate now {lr:.4g}" if lr else "")
    return FormState(config, {str(k): float(v) for k, v in (answer.get("dropout") or {}).items()}, step, epoch,
                     lr, where, total)


def checkpoint_state(path: Path) -> FormState:
    """The settings a checkpoint was saved with: what a branch from it starts from.

    Loads the checkpoint and builds the model on the CPU (for its dropout groups): a
    worker thread's job.
    """
    from cifartui.engine.api import LiveSettings, build_model, dropout_groups, load_checkpoint

    state = load_checkpoint(path)
    try:
        saved = state.get("settings")
        config = (LiveSettings.from_state(saved, str(path)).config if isinstance(saved, Mapping)
                  else from_mapping(RunConfig, state["config"], str(path)))
        progress = state.get("progress") or {}
        step, epoch = int(progress.get("step", 0)), int(progress.get("epoch", 0))
        groups = state["optimizer"]["param_groups"]
        lr = float(groups[0]["lr"]) if groups else None
    except (KeyError, TypeError, ValueError, ConfigError) as error:
        raise RunUnreachable(f"{path}: incomplete or damaged ({error})") from None
    rates = state.get("dropout_rates") or {}
    model = build_model(config.model, config.dataset.num_classes)
    dropout = {group: float(rates.get(members[-1][0], members[-1][1].rate))
               for group, members in dropout_groups(model).items()}
    done = f"{epoch} epoch{'s' if epoch != 1 else ''} done"
    where = f"checkpoint {path.stem}: step {step:,}, {done}" + (f"; learning rate then {lr:.4g}" if lr else "")
    return FormState(config, dropout, step, epoch, lr, where)


# --- words ------------------------------------------------------------------------------------

def value_text(value: Any) -> str:
    """A setting's value as typed in the form and as shown in logs: 0.01, true, [0.9, 0.999]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(item) for item in value) + "]"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def change_text(changes: Mapping[str, Any], when: Mapping[str, str] | None = None, *, arrow: str = "→") -> str:
    """`optimizer.lr 0.02 → 0.01, train.batch_size 32 → 64 (at the start of the next epoch)`."""
    parts = []
    for key, pair in changes.items():
        old, new = pair if isinstance(pair, (list, tuple)) and len(pair) == 2 else (None, pair)
        text = f"{key} {value_text(old)} {arrow} {value_text(new)}"
        if when and when.get(key, NEXT_STEP) != NEXT_STEP:
            text += f" ({when[key]})"
        parts.append(text)
    return ", ".join(parts)


def answer_text(answer: Mapping[str, Any]) -> str:
    """What an applied `set` did, in a sentence."""
    changes = answer.get("changes") or {}
    if not changes:
        return "Nothing changed: those values are already in force."
    where = f"step {int(answer.get('step', 0)):,} (epoch {int(answer.get('epoch', 0)) + 1})"
    return f"Applied at {where}: {change_text(changes, answer.get('when') or {})}."


def is_dropout_key(key: str) -> bool:
    return key.startswith(DROPOUT_PREFIX)


# --- checkpoints to rewind to -----------------------------------------------------------------

@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint file of a run, with what its metrics say about it."""

    name: str  # last, best, epoch-0005
    path: Path
    step: int | None
    epoch: int | None  # epochs done when it was written
    val_top1: float | None  # the validation accuracy of the epoch it ends, if it ends one
    written: float  # the file's modification time

    def describe(self) -> str:
        parts = [f"step {self.step:,}" if self.step is not None else "step unknown"]
        if self.epoch is not None:
            parts.append(f"{self.epoch} epochs done" if self.epoch != 1 else "1 epoch done")
        if self.val_top1 is not None:
            parts.append(f"val top-1 {self.val_top1:.2f}%")
        return ", ".join(parts)


def checkpoints_of(run_dir: Path, events: Iterable[Mapping[str, Any]]) -> list[CheckpointInfo]:
    """The run's checkpoints: last, best, then the kept ones newest first."""
    folder = Path(run_dir) / "checkpoints"
    saved: dict[str, tuple[int, int]] = {}
    val_at: dict[int, float] = {}
    for event in events:
        kind = event.get("event")
        if kind == "CheckpointSaved" and isinstance(event.get("path"), str):
            step, epoch = event.get("step"), event.get("epoch")
            if isinstance(step, int) and isinstance(epoch, int):
                saved[Path(event["path"]).stem] = (step, epoch)
        elif kind == "EpochEnded" and isinstance(event.get("step"), int) and isinstance(event.get("val_top1"),
                                                                                         (int, float)):
            val_at[event["step"]] = float(event["val_top1"])
    found = []
    try:
        files = [p for p in folder.glob("*.pt") if p.is_file() and not p.name.startswith(".")]
    except OSError:
        files = []
    for path in files:
        step, epoch = saved.get(path.stem, (None, None))
        try:
            written = path.stat().st_mtime
        except OSError:
            continue
        found.append(CheckpointInfo(path.stem, path, step, epoch, val_at.get(step) if step is not None else None,
                                    written))
    order = {"last": 0, "best": 1}
    return sorted(found, key=lambda c: (order.get(c.name, 2), c.name if c.name in order else "",
                                        -(c.step or 0), c.name))


__all__ = ["FormState", "RunUnreachable", "CheckpointInfo", "ask", "live_state", "checkpoint_state",
           "checkpoints_of", "value_text", "change_text", "answer_text", "is_dropout_key"]
