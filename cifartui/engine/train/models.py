"""The model registry: small named builders by family, and a model summary as data.

The families live in their own modules (convnets: plain stacks; resnets: residual
networks; model_parts: the scheduled dropout and helpers they share); every name
is importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from cifartui.config import ModelConfig
from cifartui.engine.train.convnets import (ELU18_STACKS, VGG_LAYOUTS, WhitenedConvNet, cnn3, cnn3_dense512,
                                            cnn4_dense512, elu18, speedrun_net, vgg_builder)
from cifartui.engine.train.model_parts import (ModelError, ScheduledDropout, activation, dropout_groups,
                                               dropout_rates, initial_rates, same_conv)
from cifartui.engine.train.resnets import (KERAS_BN_EPSILON, KERAS_BN_MOMENTUM, BasicBlock, Bottleneck,
                                           EluResNet, IdentityBlock, KerasSameConv2d, PreactUnit,
                                           ProjectionBlock, ResNet, elu_resnet_builder, keras_he_normal_,
                                           resnet_builder)

__all__ = [
    "BasicBlock", "Bottleneck", "ELU18_STACKS", "EluResNet", "IdentityBlock", "KERAS_BN_EPSILON",
    "KERAS_BN_MOMENTUM", "KerasSameConv2d", "LayerRow", "MODELS", "ModelError", "ModelSpec", "ModelSummary",
    "PreactUnit", "ProjectionBlock", "ResNet", "ScheduledDropout", "VGG_LAYOUTS", "WhitenedConvNet",
    "activation", "build_model", "cnn3", "cnn3_dense512", "cnn4_dense512", "dropout_groups", "dropout_rates",
    "elu18", "elu_resnet_builder", "initial_rates", "keras_he_normal_", "resnet_builder", "same_conv",
    "speedrun_net", "summarize", "vgg_builder",
]


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[ModelConfig, int], nn.Module]

    @property
    def description(self) -> str:
        return (self.build.__doc__ or "").strip().splitlines()[0]


MODELS: dict[str, ModelSpec] = {
    "cnn3": ModelSpec(cnn3),
    "cnn3-dense512": ModelSpec(cnn3_dense512),
    "cnn4-dense512": ModelSpec(cnn4_dense512),
    "elu18": ModelSpec(elu18),
    "vgg11": ModelSpec(vgg_builder("vgg11")),
    "vgg16": ModelSpec(vgg_builder("vgg16")),
    "vgg19": ModelSpec(vgg_builder("vgg19")),
    "resnet18": ModelSpec(resnet_builder(BasicBlock, (2, 2, 2, 2), cifar=False)),
    "resnet34": ModelSpec(resnet_builder(BasicBlock, (3, 4, 6, 3), cifar=False)),
    "resnet50": ModelSpec(resnet_builder(Bottleneck, (3, 4, 6, 3), cifar=False)),
    "resnet20": ModelSpec(resnet_builder(BasicBlock, (3, 3, 3), cifar=True)),
    "resnet56": ModelSpec(resnet_builder(BasicBlock, (9, 9, 9), cifar=True)),
    "resnet110": ModelSpec(resnet_builder(BasicBlock, (18, 18, 18), cifar=True)),
    # Depth counts the stem, two convolutions per block and the dense layer, as the write-up names them.
    "elu-resnet18": ModelSpec(elu_resnet_builder((2, 2, 2, 2))),
    "elu-resnet20": ModelSpec(elu_resnet_builder((3, 3, 3))),
    "elu-resnet50": ModelSpec(elu_resnet_builder((8, 8, 8))),
    "elu-resnet110": ModelSpec(elu_resnet_builder((18, 18, 18))),
    "speedrun-net": ModelSpec(speedrun_net),
}



def build_model(config: ModelConfig, num_classes: int) -> nn.Module:
    """A freshly initialized model; draws from torch's global RNG (seed it first)."""
    if config.name not in MODELS:
        raise ModelError(f"unknown model '{config.name}'; expected one of: {', '.join(MODELS)}")
    model = MODELS[config.name].build(config, num_classes)
    if config.init in ("keras", "keras-he-first"):
        layers = [module for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
        for module in layers:
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        if config.init == "keras-he-first":
            # Glorot's variance 2 / (fan_in + fan_out) balances the forward and the backward signal; the
            # first layer's backward signal reaches nothing, and where its fan-out dwarfs its fan-in (ELU-18:
            # 27 in, 3,456 out) Glorot cuts the image to an eighth before the network sees it.
            nn.init.kaiming_uniform_(layers[0].weight, nonlinearity="relu")
    model.register_load_state_dict_pre_hook(_refusing_other_weights(config.name))
    return model


def _refusing_other_weights(name: str) -> Callable[..., None]:
    """A load pre-hook that turns weights of another build of the model into one clear ModelError."""

    def check(module: nn.Module, state_dict: dict, prefix: str, _metadata: dict, strict: bool, *_: object) -> None:
        if prefix:
            return
        expected = module.state_dict()
        differ = [key for key in expected
                  if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)]
        missing = [key for key in expected if key not in state_dict] if strict else []
        extra = [key for key in state_dict if key not in expected] if strict else []
        if not (differ or missing or extra):
            return
        if differ:
            key = differ[0]
            first = (f"{key} has shape {list(state_dict[key].shape)} in the checkpoint and "
                     f"{list(expected[key].shape)} here")
        else:
            first = f"{(missing or extra)[0]} is {'missing from' if missing else 'extra in'} the checkpoint"
        raise ModelError(f"the checkpoint's weights do not fit model '{name}' as this version of cifartui builds "
                         f"it ({first}; shapes differ for {len(differ)} tensors, {len(missing)} are missing, "
                         f"{len(extra)} extra): the model changed since the run was trained, so it cannot be "
                         "resumed or evaluated; train it again")

    return check


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int


@dataclass(frozen=True)
class ModelSummary:
    name: str
    layers: tuple[LayerRow, ...]
    total_parameters: int
    trainable_parameters: int

    def to_dict(self) -> dict:
        return {"name": self.name, "total_parameters": self.total_parameters,
                "trainable_parameters": self.trainable_parameters,
                "layers": [{"name": r.name, "kind": r.kind, "output_shape": list(r.output_shape),
                            "parameters": r.parameters} for r in self.layers]}


def summarize(model: nn.Module, name: str = "") -> ModelSummary:
    """Layers with output shapes (batch of one 32x32 image) and parameter counts."""
    rows: list[LayerRow] = []
    hooks = []

    def record(layer_name: str):
        def hook(module: nn.Module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor):
                params = sum(p.numel() for p in module.parameters(recurse=False))
                rows.append(LayerRow(layer_name, type(module).__name__, tuple(output.shape[1:]), params))
        return hook

    for layer_name, module in model.named_modules():
        if layer_name and not any(True for _ in module.children()):
            hooks.append(module.register_forward_hook(record(layer_name)))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelSummary(name, tuple(rows), total, trainable)
