"""The whole check of a run's configuration: `config.check_rules` plus the model registry."""

from __future__ import annotations

from cifartui.config import ConfigError, RunConfig, check_rules


def validate(config: RunConfig, source: str) -> RunConfig:
    """`config` if it can train: its model exists and its fields agree; else a ConfigError naming the key."""
    from cifartui.engine.train.models import MODELS  # imports PyTorch; planning a sweep may not need it otherwise

    if config.model.name not in MODELS:
        raise ConfigError(source, "model.name",
                          f"unknown model '{config.model.name}'; expected one of: {', '.join(MODELS)}")
    check_rules(config, source)
    _check_settings_schedule(config, source)
    return config


def _check_settings_schedule(config: RunConfig, source: str) -> None:
    """Each scheduled change names a key `control set` takes, with a value the preset would accept."""
    from cifartui.engine.runs.settings import LiveSettings, parse_assignments

    for i, change in enumerate(config.settings_schedule):
        updates = parse_assignments(change.set, f"{source}: settings_schedule[{i}].set")
        live = {key: value for key, value in updates.items() if not key.startswith("dropout.")}
        if live:  # dropout groups are the model's: the run checks them once it is built
            LiveSettings(config).check(live, f"{source}: settings_schedule[{i}].set")


__all__ = ["validate"]
