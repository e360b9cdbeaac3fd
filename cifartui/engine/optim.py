"""Optimizers by name, with weight decay optionally kept off normalization and bias parameters."""

from __future__ import annotations

import torch
import torch.nn as nn

from cifartui.config import OptimizerConfig


def parameter_groups(model: nn.Module, config: OptimizerConfig) -> list[dict]:
    if config.decay_norm_and_bias or not config.weight_decay:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            # Biases and normalization scales are the one-dimensional parameters.
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config)
    # Fused kernels exist on CUDA for these optimizers and are numerically equivalent.
    fused = {"fused": True} if device.type == "cuda" else {}
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay, **fused)
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                                weight_decay=config.weight_decay, **fused)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                                 weight_decay=config.weight_decay, **fused)
    return torch.optim.RMSprop(groups, lr=config.lr, alpha=config.alpha, eps=config.eps,
                               momentum=config.momentum, weight_decay=config.weight_decay)
