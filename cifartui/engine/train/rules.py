"""The whole check of a run's configuration: `config.check_rules` plus the model registry."""

from __future__ import annotations

from cifartui.config import ConfigError, RunConfig, check_rules


def validate(config: RunConfig, source: str) -> RunConfig:
    """`config` if it can train: its model exists and its fields agree; else a ConfigError naming the key."""
    from cifartui.engine.train.models import MODELS  # imports PyTorch; planning a sweep may not need it otherwise

    if config.model.name not in MODELS:
        raise ConfigError(source, "model.name",
                          f"unknown model '{config.model.name}'; expected one of: {', '.join(MODELS)}")
    return check_rules(config, source)


__all__ = ["validate"]
