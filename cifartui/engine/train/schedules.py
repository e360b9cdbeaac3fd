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
from cifartui.engine.train.models import ModelError, dropout_groups

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
        # Where this schedule's clock starts. A schedule replaced mid-run starts at the
        # step of the change; one rebased for a new batch size keeps counting its units
        # and the fraction of the run it had done.
        self.origin = 0
        self.origin_units = 0
        self.origin_fraction = 0.0

    def replace(self, config: OptimizerConfig, step: int) -> "LRSchedule":
        """A new schedule (from `config`) whose clock starts at `step`: warmup, steps and cycles count from there."""
        schedule = LRSchedule(config, self.steps_per_epoch, self.total_steps)
        schedule.origin = step
        return schedule

    def reconfigure(self, config: OptimizerConfig) -> None:
        """New base LR or parameters (peak, gamma, ...) for the same schedule, its clock and state kept."""
        self.config, self.schedule = config, config.schedule

    def rebase(self, step: int, steps_per_epoch: int, total_steps: int) -> None:
        """At an epoch start (`step`), with a new number of steps per epoch and in all."""
        units, fraction = self._units(step), self._fraction(step)
        self.origin, self.origin_units, self.origin_fraction = step, units, fraction
        self.steps_per_epoch = steps_per_epoch
        self.unit_steps = steps_per_epoch if self.schedule.unit == "epoch" else 1
        self.total_steps = max(total_steps, 1)

    def set_total(self, total_steps: int) -> None:
        """A new length of the run (epochs or max_steps changed): continuous schedules stretch to it."""
        self.total_steps = max(total_steps, 1)

    def _units(self, step: int) -> int:
        return self.origin_units + max(step - self.origin, 0) // self.unit_steps

    def _fraction(self, step: int) -> float:
        """How far through its part of the run the schedule is, 0 at its origin, 1 at the end."""
        span = max(self.total_steps - self.origin, 1)
        return min(self.origin_fraction + (1.0 - self.origin_fraction) * max(step - self.origin, 0) / span, 1.0)

    @property
    def discrete(self) -> bool:
        s = self.schedule
        epoch_exponential = s.name == "exponential" and s.unit == "epoch"
        return (s.name in DISCRETE or epoch_exponential) and not self.config.inverse_time_decay

    def lr_at(self, step: int) -> float:
        base = self.config.lr
        s = self.schedule
        units = self._units(step)
        local = step - self.origin  # steps since this schedule's clock started
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
            if local < warmup and self.origin_fraction == 0.0:
                lr = base * (local + 1) / warmup
            else:
                if self.origin_fraction == 0.0 and warmup:
                    span = max(self.total_steps - self.origin - warmup, 1)
                    progress = min(max(local - warmup, 0) / span, 1.0)
                else:
                    progress = self._fraction(step)
                lr = s.min_lr + (base - s.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        elif s.name == "onecycle":
            final = base / s.final_div
            if self.origin_fraction == 0.0:  # in steps, as the schedule was defined
                span = max(self.total_steps - self.origin, 1)
                peak = max(int(span * s.pct_start), 1)
                if local < peak:
                    lr = base + (s.max_lr - base) * local / peak
                else:
                    lr = s.max_lr + (final - s.max_lr) * min((local - peak) / max(span - peak, 1), 1.0)
            else:  # rebased for a new batch size: in fractions of the run
                fraction = self._fraction(step)
                if fraction < s.pct_start:
                    lr = base + (s.max_lr - base) * fraction / s.pct_start
                else:
                    lr = s.max_lr + (final - s.max_lr) * min((fraction - s.pct_start) / (1 - s.pct_start), 1.0)
        elif s.name == "triangular":
            half = s.cycle_length * self.unit_steps
            position = (local % (2 * half)) / half
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
                "bad_epochs": self.bad_epochs, "cooldown_left": self.cooldown_left, "origin": self.origin,
                "origin_units": self.origin_units, "origin_fraction": self.origin_fraction,
                "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.best_loss = float(state["best_loss"])
        self.bad_epochs = int(state["bad_epochs"])
        self.cooldown_left = int(state["cooldown_left"])
        # Checkpoints from before schedules could be replaced mid-run start at step 0.
        self.origin = int(state.get("origin", 0))
        self.origin_units = int(state.get("origin_units", 0))
        self.origin_fraction = float(state.get("origin_fraction", 0.0))


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
        self.events = tuple(events)
        for index, event in enumerate(events):
            if event.action in ("set", "add") and len(event.rates) != len(self.groups):
                names = ", ".join(self.groups) or "none"
                raise ModelError(f"dropout_schedule[{index}].rates has {len(event.rates)} values but the "
                                 f"model has {len(self.groups)} dropout groups ({names}); expected one per group")
        self.rebase(0, 0, steps_per_epoch)

    def rebase(self, step: int, epoch: int, steps_per_epoch: int) -> None:
        """Place the events again, from the start of epoch `epoch` at `step`, with a new epoch length.

        Events counted in epochs that are still to come move with the epochs; events
        counted in iterations stay where they were.
        """
        self.by_step: dict[int, list[DropoutEvent]] = {}
        for event in self.events:
            if event.unit == "epoch":
                if event.at < epoch:
                    continue
                at = step + (event.at - epoch) * steps_per_epoch
            else:
                at = event.at
            self.by_step.setdefault(at, []).append(event)

    def group_rates(self) -> dict[str, float]:
        """The rate of the layer that ends each group, as a schedule's scope "last" addresses it."""
        return {group: members[-1][1].rate for group, members in self.groups.items()}

    def set_group_rate(self, group: str, rate: float) -> None:
        self.groups[group][-1][1].set_rate(rate)

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
