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
    # Fused kernels (CUDA and CPU) do the whole update in one pass, and they can skip an
    # update on the device when a step's loss was not finite (see `step_unless`).
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
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


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """True when `step_unless` needs no host read: the fused kernels take a found-inf flag."""
    return bool(optimizer.defaults.get("fused")) and getattr(optimizer, "_step_supports_amp_scaling", False)


def step_unless(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """Step, unless the 0-dim float `found_inf` is nonzero; then params and state stay as they were.

    Fused optimizers read the flag inside their kernels, the way AMP's GradScaler hands
    it to them, so the host never waits for the device. The others need the flag on the
    host first.
    """
    # Fused SGD creates its momentum buffers uninitialized in the first step, to fill them
    # there; skipped inside the kernel they would stay garbage, so that one step decides
    # on the host. (Adam and AdamW create zeroed state and undo their step count.)
    first_momentum_step = (isinstance(optimizer, torch.optim.SGD) and not optimizer.state
                           and any(group["momentum"] for group in optimizer.param_groups))
    if skips_on_device(optimizer) and not first_momentum_step:
        optimizer.grad_scale, optimizer.found_inf = None, found_inf
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
    elif not found_inf.item():  # sync point: SGD's first momentum step, and RMSprop (no fused kernel)
        optimizer.step()
