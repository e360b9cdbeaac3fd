"""Learning-rate and dropout schedules.

`LRSchedule.lr_at(step)` is a pure function of the iteration for every kind but
ReduceLROnPlateau, whose reduction factor is state fed by validation losses and
saved in checkpoints. `DropoutSchedule` applies its events at their iteration and
reports old and new rates; the rates themselves live in the model's buffers.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch.nn as nn

from cifartui.config import DropoutEvent, OptimizerConfig
from cifartui.engine.models import ModelError, dropout_groups

# Schedules whose LR jumps at a few points rather than moving every step: each jump
# gets an LRChanged event; the others' LR rides along in step and epoch metrics.
DISCRETE = {"constant", "step", "multistep", "plateau"}


class LRSchedule:
    def __init__(self, config: OptimizerConfig, steps_per_epoch: int, total_steps: int):
        self.config = config
        self.schedule = config.schedule
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(total_steps, 1)
        self.unit_steps = steps_per_epoch if self.schedule.unit == "epoch" else 1
        self.plateau_scale = 1.0
        self.best_loss = math.inf
        self.bad_epochs = 0
        self.cooldown_left = 0

    @property
    def discrete(self) -> bool:
        s = self.schedule
        epoch_exponential = s.name == "exponential" and s.unit == "epoch"
        return (s.name in DISCRETE or epoch_exponential) and not self.config.inverse_time_decay

    def lr_at(self, step: int) -> float:
        base = self.config.lr
        s = self.schedule
        units = step // self.unit_steps
        if s.name == "constant":
            lr = base
        elif s.name == "step":
            lr = base * s.gamma ** (units // s.step_size)
        elif s.name == "multistep":
            lr = base * s.gamma ** bisect.bisect_right(s.milestones, units)
        elif s.name == "exponential":
            lr = base * s.gamma ** units
        elif s.name == "cosine":
            warmup = s.warmup * self.unit_steps
            if step < warmup:
                lr = base * (step + 1) / warmup
            else:
                progress = min((step - warmup) / max(self.total_steps - warmup, 1), 1.0)
                lr = s.min_lr + (base - s.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        elif s.name == "onecycle":
            peak = max(int(self.total_steps * s.pct_start), 1)
            final = base / s.final_div
            if step < peak:
                lr = base + (s.max_lr - base) * step / peak
            else:
                lr = s.max_lr + (final - s.max_lr) * min((step - peak) / max(self.total_steps - peak, 1), 1.0)
        elif s.name == "triangular":
            half = s.cycle_length * self.unit_steps
            position = (step % (2 * half)) / half
            lr = base + (s.max_lr - base) * (1 - abs(position - 1))
        else:  # plateau
            lr = max(base * self.plateau_scale, s.min_lr)
        if self.config.inverse_time_decay:
            lr /= 1 + self.config.inverse_time_decay * step
        return lr

    def observe_validation_loss(self, loss: float) -> bool:
        """ReduceLROnPlateau on the validation loss (mode min), as PyTorch or tf.keras define it.

        PyTorch reduces after more than `patience` epochs without a relative improvement
        of `threshold`; Keras after `patience` such epochs, one epoch earlier, its
        `min_delta` (our `threshold`) being absolute. Returns True when this epoch's loss
        triggered a reduction.
        """
        if self.schedule.name != "plateau":
            return False
        if self.schedule.plateau_style == "keras":
            return self._observe_like_keras(loss)
        s = self.schedule
        if loss < self.best_loss * (1 - s.threshold):
            self.best_loss = loss
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > s.patience and self.config.lr * self.plateau_scale > s.min_lr:
            self.plateau_scale *= s.factor
            self.cooldown_left = s.cooldown
            self.bad_epochs = 0
            return True
        return False

    @property
    def plateau_epochs(self) -> int:
        """How many epochs without improvement make the plateau schedule reduce the LR."""
        s = self.schedule
        return s.patience if s.plateau_style == "keras" else s.patience + 1

    def _observe_like_keras(self, loss: float) -> bool:
        """tf.keras.callbacks.ReduceLROnPlateau.on_epoch_end, step for step (`bad_epochs` is its `wait`)."""
        s = self.schedule
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if loss < self.best_loss - s.threshold:
            self.best_loss = loss
            self.bad_epochs = 0
        elif self.cooldown_left == 0:
            self.bad_epochs += 1
            if self.bad_epochs >= s.patience and self.config.lr * self.plateau_scale > s.min_lr:
                self.plateau_scale *= s.factor
                self.cooldown_left = s.cooldown
                self.bad_epochs = 0
                return True
        return False

    def state_dict(self) -> dict:
        return {"plateau_scale": self.plateau_scale, "best_loss": self.best_loss,
                "bad_epochs": self.bad_epochs, "cooldown_left": self.cooldown_left}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.best_loss = float(state["best_loss"])
        self.bad_epochs = int(state["bad_epochs"])
        self.cooldown_left = int(state["cooldown_left"])


@dataclass(frozen=True)
class DropoutChange:
    step: int
    old: dict[str, float]
    new: dict[str, float]


class DropoutSchedule:
    """Changes of dropout rates at given iterations or epochs, checked against the model's groups."""

    def __init__(self, events: tuple[DropoutEvent, ...], model: nn.Module, steps_per_epoch: int):
        self.model = model
        self.groups = dropout_groups(model)
        self.by_step: dict[int, list[DropoutEvent]] = {}
        for index, event in enumerate(events):
            if event.action in ("set", "add") and len(event.rates) != len(self.groups):
                names = ", ".join(self.groups) or "none"
                raise ModelError(f"dropout_schedule[{index}].rates has {len(event.rates)} values but the "
                                 f"model has {len(self.groups)} dropout groups ({names}); expected one per group")
            step = event.at * (steps_per_epoch if event.unit == "epoch" else 1)
            self.by_step.setdefault(step, []).append(event)

    def apply_due(self, step: int) -> DropoutChange | None:
        """Apply the events due at `step`; the change, or None if nothing is due or nothing moved."""
        events = self.by_step.get(step)
        if not events:
            return None
        old = self.rates()
        for event in events:
            self._apply(event)
        new = self.rates()
        return DropoutChange(step, old, new) if new != old else None

    def rates(self) -> dict[str, float]:
        return {name: module.rate for group in self.groups.values() for name, module in group}

    def _apply(self, event: DropoutEvent) -> None:
        for index, members in enumerate(self.groups.values()):
            targets = members if event.scope == "all" else members[-1:]
            for _, module in targets:
                if event.action == "set":
                    rate = event.rates[index]
                elif event.action == "add":
                    rate = module.rate + event.rates[index]
                else:
                    rate = module.rate * event.factor
                module.set_rate(min(max(rate, 0.0), event.cap))
