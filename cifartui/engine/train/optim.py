"""Optimizers by name, with weight decay per parameter group.

A recipe says how much each parameter decays. `optimizer.decay_groups` match
parameter names with shell patterns, in order, the first match taking the
parameter; the others get `optimizer.weight_decay`, sparing normalization and
bias parameters when `decay_norm_and_bias` is off. Values are read in PyTorch's
convention (value * w added to the gradient) or in Keras' (`l2(value)` adds
value * sum(w^2) to the loss, so 2 * value * w reaches the gradient), as
`optimizer.decay_convention` says; the optimizer always receives PyTorch's.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
import torch.nn as nn

from cifartui.config import ConfigError, OptimizerConfig
from cifartui.engine.runs.checkpoint import CheckpointError


class OptimizerStateMismatch(CheckpointError):
    """A checkpoint's optimizer state was written for other parameter groups than the run builds now."""


def gradient_decay(value: float, convention: str) -> float:
    """The coefficient of w in the gradient (PyTorch's weight_decay) for a decay value read in `convention`."""
    # d/dw of value * sum(w^2) is 2 * value * w.
    return 2.0 * value if convention == "keras-l2" else value


@dataclass(frozen=True)
class ParameterGroup:
    """Parameters that share one weight decay, as the optimizer receives them."""

    label: str            # "decay_groups[0]", "weights" or "normalization and biases"
    weight_decay: float   # PyTorch's convention: the coefficient of w in the gradient
    names: tuple[str, ...]
    parameters: tuple[nn.Parameter, ...]

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.parameters)


def decay_groups(model: nn.Module, config: OptimizerConfig) -> list[ParameterGroup]:
    """Every trainable parameter in exactly one group, in a fixed order (checkpoints depend on it).

    Without `decay_groups` this is the grouping cifartui always had, so older
    checkpoints' optimizer states still load: one group, or weights and then
    normalization and bias parameters when those are spared.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    convention = config.decay_convention
    groups: list[ParameterGroup] = []
    taken: set[str] = set()
    for index, rule in enumerate(config.decay_groups):
        key = f"optimizer.decay_groups[{index}].match"
        if not rule.match:
            raise ConfigError("", key, "expected at least one pattern")
        for pattern in rule.match:
            if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in named):
                examples = ", ".join(name for name, _ in named[:4])
                raise ConfigError("", key, f"pattern {pattern!r} matches no trainable parameter of the model; "
                                  f"its {len(named)} parameters are named like {examples}, ... "
                                  "(`cifartui presets NAME` lists them all)")
        members = [(name, p) for name, p in named
                   if name not in taken and any(fnmatch.fnmatchcase(name, pattern) for pattern in rule.match)]
        if not members:
            raise ConfigError("", key, f"every parameter its patterns match was already taken by an earlier "
                              f"group; expected at least one parameter left for decay_groups[{index}]")
        taken.update(name for name, _ in members)
        groups.append(_group(f"decay_groups[{index}]", gradient_decay(rule.weight_decay, convention), members))
    rest = [(name, p) for name, p in named if name not in taken]
    default = gradient_decay(config.weight_decay, convention)
    # Without decay groups the groups are always the same ones, even empty, as before they existed.
    legacy = not groups
    if config.decay_norm_and_bias or not config.weight_decay:
        if rest or legacy:
            groups.append(_group("all" if legacy else "the rest", default, rest))
        return groups
    # Biases and normalization scales are the one-dimensional parameters.
    weights = [(name, p) for name, p in rest if p.ndim > 1]
    spared = [(name, p) for name, p in rest if p.ndim <= 1]
    if weights or legacy:
        groups.append(_group("weights", default, weights))
    if spared or legacy:
        groups.append(_group("normalization and biases", 0.0, spared))
    return groups


def _group(label: str, weight_decay: float, members: list[tuple[str, nn.Parameter]]) -> ParameterGroup:
    return ParameterGroup(label, weight_decay, tuple(name for name, _ in members), tuple(p for _, p in members))


def parameter_groups(model: nn.Module, config: OptimizerConfig) -> list[dict]:
    return [{"params": list(group.parameters), "weight_decay": group.weight_decay}
            for group in decay_groups(model, config)]


def build_optimizer(model: nn.Module, config: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config)
    # Fused kernels (CUDA and CPU) do the whole update in one pass, and they can skip an
    # update on the device when a step's loss was not finite (see `step_unless`).
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    if config.name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                                    **fused)
    elif config.name == "adam":
        optimizer = torch.optim.Adam(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, **fused)
    elif config.name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, **fused)
    else:
        optimizer = torch.optim.RMSprop(groups, lr=config.lr, alpha=config.alpha, eps=config.eps,
                                        momentum=config.momentum)
    optimizer.register_load_state_dict_pre_hook(_refuse_other_groups)
    return optimizer


def _refuse_other_groups(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """A checkpoint's optimizer state fits only the parameter groups it was written with."""
    saved = [len(group["params"]) for group in state.get("param_groups", [])]
    built = [len(group["params"]) for group in optimizer.param_groups]
    if saved != built:
        raise OptimizerStateMismatch(
            f"the checkpoint's optimizer state holds {_counted(saved)} but this run's configuration builds "
            f"{_counted(built)}: its weight decay per parameter group (or its model) is not the one the "
            "checkpoint was written with, so the run cannot resume; start it again")


def _counted(sizes: list[int]) -> str:
    groups = "group" if len(sizes) == 1 else "groups"
    return f"{len(sizes)} parameter {groups} of {', '.join(map(str, sizes))} tensors"


def prepare_for_graphs(optimizer: torch.optim.Optimizer, lr: torch.Tensor) -> None:
    """Make `optimizer` safe to capture in a CUDA graph: LR read from `lr`, capturable update.

    Adam and AdamW refuse to be captured unless `capturable` (fused alone is not enough:
    their step checks it at every capture). Loading a state dict puts back the groups'
    saved settings, so a resumed run calls this again after loading.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
        if "capturable" in group:
            group["capturable"] = True
    if "capturable" in optimizer.defaults:
        optimizer.defaults["capturable"] = True
        # Warm-up steps run uncaptured on purpose; PyTorch would warn about each optimizer once.
        optimizer._warned_capturable_if_run_uncaptured = True


def needs_host_read(optimizer: torch.optim.Optimizer) -> bool:
    """True when the next `step_unless` must read the found-inf flag on the host (a sync, never capturable)."""
    return not skips_on_device(optimizer) or _first_momentum_step(optimizer)


def _first_momentum_step(optimizer: torch.optim.Optimizer) -> bool:
    # Fused SGD creates its momentum buffers uninitialized in the first step with momentum,
    # to fill them there; skipped inside the kernel they would stay garbage. SGD keeps no
    # state while momentum is 0, so this is also the first step after momentum is raised from 0.
    return (isinstance(optimizer, torch.optim.SGD)
            and any(group["momentum"] and group["params"]
                    and all(optimizer.state.get(p, {}).get("momentum_buffer") is None for p in group["params"])
                    for group in optimizer.param_groups))


def _float_entries(model: nn.Module) -> list[tuple[torch.Tensor, bool]]:
    """The model's float state_dict entries, in order, each with whether lookahead averages it."""
    wanted = {id(p) for p in model.parameters()}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            wanted.update(id(b) for b in (module.running_mean, module.running_var) if b is not None)
    return [(t.detach(), id(t) in wanted) for t in model.state_dict(keep_vars=True).values() if t.is_floating_point()]


def lookahead_tensors(model: nn.Module) -> list[torch.Tensor]:
    """What lookahead averages: the float parameters and normalization statistics, in state_dict order.

    Other buffers are settings the step reads (dropout rates) and must keep their value.
    """
    return [t for t, averaged in _float_entries(model) if averaged]


def saved_lookahead(model: nn.Module, saved: list[torch.Tensor]) -> list[torch.Tensor]:
    """A checkpoint's slow copy for `lookahead_tensors(model)`; older checkpoints also hold the other float buffers."""
    entries = _float_entries(model)
    averaged = sum(flag for _, flag in entries)
    if len(saved) == averaged:
        return saved
    if len(saved) != len(entries):
        raise CheckpointError(f"the checkpoint's lookahead copy holds {len(saved)} tensors; this model has "
                              f"{averaged} to average")
    return [slow for slow, (_, flag) in zip(saved, entries) if flag]


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """True when `step_unless` needs no host read: the fused kernels take a found-inf flag."""
    return bool(optimizer.defaults.get("fused")) and getattr(optimizer, "_step_supports_amp_scaling", False)


def step_unless(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """Step, unless the 0-dim float `found_inf` is nonzero; then params and state stay as they were.

    Fused optimizers read the flag inside their kernels, the way AMP's GradScaler hands
    it to them, so the host never waits for the device. The others need the flag on the
    host first.
    """
    # SGD's first step with momentum decides on the host (see _first_momentum_step).
    # (Adam and AdamW create zeroed state and undo their step count.)
    if not needs_host_read(optimizer):
        optimizer.grad_scale, optimizer.found_inf = None, found_inf
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
    elif not found_inf.item():  # sync point: SGD's first momentum step, and RMSprop (no fused kernel)
        optimizer.step()
