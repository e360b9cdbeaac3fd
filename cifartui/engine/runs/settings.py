"""A run's live settings: the configuration it started with, plus the changes applied since, in order.

One owner for what a run is configured as right now: the trainer applies changes
through it (from the app's form, the control channel, or `resume --epochs`), the
checkpoint stores it, the control channel reports it, and the app's form validates
against it. A change names settings by the keys of `--set` (`optimizer.lr`,
`augment.flip`, ...) plus `dropout.GROUP` for the rate of a dropout group's last layer
(as a dropout schedule's "set" with scope "last" would set it).

Validation is the presets' own: each value goes through `replace_path` (the messages of
`--set`) and the cross-field checks of `config.check_rules`. A change with any invalid
value is refused whole: nothing of it is applied.

This module does not import PyTorch: the app and the `control` command use it before
(or without) loading it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from cifartui.config import ConfigError, RunConfig, check_rules, from_mapping, parse_value, replace_path, to_plain

# What can change while a run trains, and when the change takes effect.
NEXT_STEP = "at the next step"
NEXT_EPOCH = "at the start of the next epoch"
CHANGEABLE: dict[str, str] = {
    "optimizer.lr": NEXT_STEP,
    "optimizer.momentum": NEXT_STEP,
    "optimizer.nesterov": NEXT_STEP,
    "optimizer.betas": NEXT_STEP,
    "optimizer.eps": NEXT_STEP,
    "optimizer.alpha": NEXT_STEP,
    "optimizer.weight_decay": NEXT_STEP,
    "optimizer.inverse_time_decay": NEXT_STEP,
    "optimizer.schedule.name": NEXT_STEP,
    "optimizer.schedule.unit": NEXT_STEP,
    "optimizer.schedule.step_size": NEXT_STEP,
    "optimizer.schedule.milestones": NEXT_STEP,
    "optimizer.schedule.gamma": NEXT_STEP,
    "optimizer.schedule.warmup": NEXT_STEP,
    "optimizer.schedule.min_lr": NEXT_STEP,
    "optimizer.schedule.max_lr": NEXT_STEP,
    "optimizer.schedule.pct_start": NEXT_STEP,
    "optimizer.schedule.final_div": NEXT_STEP,
    "optimizer.schedule.cycle_length": NEXT_STEP,
    "optimizer.schedule.factor": NEXT_STEP,
    "optimizer.schedule.patience": NEXT_STEP,
    "optimizer.schedule.threshold": NEXT_STEP,
    "optimizer.schedule.cooldown": NEXT_STEP,
    "train.label_smoothing": NEXT_STEP,
    "augment.crop_padding": NEXT_STEP,
    "augment.flip": NEXT_STEP,
    "augment.translate": NEXT_STEP,
    "augment.rotation": NEXT_STEP,
    "augment.shift": NEXT_STEP,
    "augment.cutout": NEXT_STEP,
    "train.epochs": NEXT_STEP,
    "train.max_steps": NEXT_STEP,
    "train.checkpoint_minutes": NEXT_STEP,
    "train.keep_every": NEXT_STEP,
    "train.keep_max_mib": NEXT_STEP,
    "train.log_every": NEXT_STEP,
    "train.eval_batch_size": NEXT_STEP,
    "train.test_time_flip": NEXT_STEP,
    "train.batch_size": NEXT_EPOCH,
}
DROPOUT_PREFIX = "dropout."
# The most epochs a change while training (or `resume --epochs`) may ask for: far beyond any
# recipe, and small enough that a slip of the keys (5000000) is refused, not scheduled.
MAX_LIVE_EPOCHS = 10_000
# Settings whose new value the optimizer's recorded kernels were built with (CUDA graphs).
OPTIMIZER_HYPERPARAMETERS = {"optimizer.momentum", "optimizer.nesterov", "optimizer.betas", "optimizer.eps",
                             "optimizer.alpha", "optimizer.weight_decay"}


def when_applied(key: str) -> str:
    return NEXT_STEP if key.startswith(DROPOUT_PREFIX) else CHANGEABLE.get(key, NEXT_STEP)




def parse_assignments(items: Iterable[str], source: str) -> dict[str, Any]:
    """`KEY=VALUE` strings as a mapping of keys to parsed values; a malformed item is a ConfigError."""
    updates: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(source, item, "expected KEY=VALUE, for example optimizer.lr=0.01")
        updates[key.strip()] = parse_value(text.strip())
    return updates


@dataclass(frozen=True)
class Change:
    """One applied change: at which step, from where, and each setting's old and new value."""

    step: int
    epoch: int
    source: str
    changes: dict[str, list[Any]]  # key -> [old, new]

    def to_plain(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "source": self.source, "changes": self.changes}


@dataclass
class LiveSettings:
    """The configuration a run trains with now, and how it got there."""

    config: RunConfig
    history: list[Change] = field(default_factory=list)

    def check(self, updates: Mapping[str, Any], source: str,
              dropout_rates: Mapping[str, float] | None = None) -> tuple[RunConfig, dict[str, list[Any]]]:
        """The configuration with `updates` applied and each key's [old, new]; nothing is changed here.

        `dropout_rates` maps each dropout group to the current rate of its last layer.
        Raises ConfigError naming the first key that is unknown, not changeable while
        training, or of a value the preset would refuse.
        """
        if not updates:
            raise ConfigError(source, "", "nothing to change: give at least one KEY=VALUE")
        config = self.config
        diff: dict[str, list[Any]] = {}
        plain = to_plain(config)
        for key, value in updates.items():
            if key.startswith(DROPOUT_PREFIX):
                rates = dropout_rates or {}
                rate = self._check_dropout(key, value, source, rates)
                if rate != rates[key[len(DROPOUT_PREFIX):]]:
                    diff[key] = [rates[key[len(DROPOUT_PREFIX):]], rate]
                continue
            if key not in CHANGEABLE:
                raise ConfigError(source, key, _not_changeable(key, plain))
            if key == "train.epochs" and isinstance(value, int) and not isinstance(value, bool) \
                    and value > MAX_LIVE_EPOCHS:
                raise ConfigError(source, key, f"{value} epochs is more than the limit of {MAX_LIVE_EPOCHS:,} for a "
                                  "run that trains; give a number up to the limit")
            old = _lookup(plain, key)
            config = replace_path(config, key, value, source)
            new = _lookup(to_plain(config), key)
            if new != old:
                diff[key] = [old, new]
        check_rules(config, source)  # model.name cannot change mid-run, so the registry is not asked
        return config, diff

    def apply(self, config: RunConfig, change: Change) -> None:
        self.config = config
        self.history.append(change)

    @staticmethod
    def _check_dropout(key: str, value: Any, source: str, rates: Mapping[str, float]) -> float:
        group = key[len(DROPOUT_PREFIX):]
        if group not in rates:
            groups = ", ".join(rates) or "none: this model has no dropout layers"
            raise ConfigError(source, key, f"unknown dropout group '{group}'; expected one of: {groups}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(source, key, f"expected a number, got {value!r}")
        if not 0.0 <= value < 1.0:
            raise ConfigError(source, key, f"{value!r} is out of range: expected a value in [0.0, 1.0)")
        return float(value)

    def to_state(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "history": [change.to_plain() for change in self.history]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], source: str) -> "LiveSettings":
        """From a checkpoint; a damaged entry is a ConfigError naming `source`."""
        config = from_mapping(RunConfig, state["config"], source)
        history = []
        for item in state.get("history", []):
            if not isinstance(item, Mapping):
                raise ConfigError(source, "history", f"expected a table, got {item!r}")
            history.append(Change(int(item["step"]), int(item["epoch"]), str(item["source"]),
                                  dict(item["changes"])))
        return cls(config, history)


def _lookup(plain: Mapping[str, Any], dotted: str) -> Any:
    node: Any = plain
    for part in dotted.split("."):
        node = node[part]
    return node


def _not_changeable(key: str, plain: Mapping[str, Any]) -> str:
    try:
        _lookup(plain, key)
    except (KeyError, TypeError):
        return "unknown key; see `cifartui presets --settings` for keys, or dropout.GROUP for a dropout rate"
    return ("cannot change while the run trains (it shapes the model, the data or the run's identity); "
            "changeable: optimizer.*, optimizer.schedule.*, augment parts, train.epochs, train.max_steps, "
            "train.batch_size, train.label_smoothing, checkpoint settings, dropout.GROUP")


def effective_config(config: RunConfig, events: Iterable[Mapping[str, Any]], source: str = "") -> RunConfig:
    """A run's configuration after the changes recorded in its metrics (for history and exports).

    Starts from the config of the last RunStarted (a resumed run starts from its
    checkpoint's settings) and applies each later SettingsChanged in order; a change
    that no longer validates is skipped rather than hiding the run.
    """
    for event in events:
        kind = event.get("event")
        if kind == "RunStarted" and isinstance(event.get("config"), Mapping):
            try:
                config = from_mapping(RunConfig, event["config"], source)
            except (ConfigError, TypeError):
                pass
        elif kind == "SettingsChanged" and isinstance(event.get("changes"), Mapping):
            for key, pair in event["changes"].items():
                if key.startswith(DROPOUT_PREFIX) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    continue
                try:
                    config = replace_path(config, key, pair[1], source)
                except (ConfigError, TypeError):
                    continue
    return config


__all__ = ["LiveSettings", "Change", "CHANGEABLE", "NEXT_STEP", "NEXT_EPOCH", "DROPOUT_PREFIX",
           "OPTIMIZER_HYPERPARAMETERS", "MAX_LIVE_EPOCHS", "parse_assignments", "parse_value", "when_applied", "effective_config"]
