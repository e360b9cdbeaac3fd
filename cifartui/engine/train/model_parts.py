"""Pieces every model family shares: scheduled dropout, activations, Keras-style padding, rates.

Every dropout layer is a `ScheduledDropout` that belongs to a group (a stack, a
ResNet stage, the classifier). The dropout schedule addresses groups: "last"
means the layer that ends each group, "all" every layer in it. Rates live in a
buffer so that changing them never recompiles a compiled model, and they are
saved with the weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cifartui.config import ModelConfig


class ModelError(ValueError):
    """The model options do not fit the architecture."""


class ScheduledDropout(nn.Module):
    """Dropout (or channel-wise spatial dropout) whose rate a schedule may change."""

    def __init__(self, rate: float, group: str, spatial: bool = False):
        super().__init__()
        self.group = group
        self.spatial = spatial
        self.rate = 0.0
        self.active = False
        self.register_buffer("rate_tensor", torch.zeros(()))
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        self.rate = float(rate)
        # A plain bool, not the float, decides whether to draw a mask, so a compiled
        # model guards on two values at most rather than on every rate.
        self.active = self.rate > 0.0
        with torch.no_grad():
            self.rate_tensor.fill_(self.rate)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "rate_tensor"
        if key in state_dict:
            self.rate = float(state_dict[key])
            self.active = self.rate > 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.active:
            return x
        keep = 1.0 - self.rate_tensor
        shape = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2) if self.spatial else x.shape
        mask = torch.rand(shape, device=x.device) < keep
        return x * mask / keep.to(x.dtype)

    def extra_repr(self) -> str:
        return f"rate={self.rate}, group={self.group!r}" + (", spatial" if self.spatial else "")


def dropout_groups(model: nn.Module) -> dict[str, list[tuple[str, ScheduledDropout]]]:
    """Dropout layers by group, in model order; the last of each group ends it."""
    groups: dict[str, list[tuple[str, ScheduledDropout]]] = {}
    for name, module in model.named_modules():
        if isinstance(module, ScheduledDropout):
            groups.setdefault(module.group, []).append((name, module))
    return groups


def dropout_rates(model: nn.Module) -> dict[str, float]:
    return {name: module.rate for group in dropout_groups(model).values() for name, module in group}


def activation(name: str) -> nn.Module:
    return nn.ELU(inplace=False) if name == "elu" else nn.ReLU(inplace=False)


def same_conv(cin: int, cout: int, kernel: int) -> nn.Module:
    """Keras' padding='same': odd kernels pad evenly, even kernels pad one more at bottom/right."""
    if kernel % 2:
        return nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    low, high = (kernel - 1) // 2, kernel // 2
    return nn.Sequential(nn.ZeroPad2d((low, high, low, high)), nn.Conv2d(cin, cout, kernel))



def initial_rates(config: ModelConfig, defaults: tuple[float, ...]) -> tuple[float, ...]:
    """The configured dropout rate of each group, or the model's own when none are set."""
    if not config.dropout:
        return defaults
    if len(config.dropout) != len(defaults):
        raise ModelError(f"model.dropout has {len(config.dropout)} rates but '{config.name}' "
                         f"has {len(defaults)} dropout groups; expected {len(defaults)} values")
    return tuple(config.dropout)

