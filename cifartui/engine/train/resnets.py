"""Residual networks: He et al.'s ResNets for 32x32 images, and the ELU pre-activation ResNets of the
ECE 472 write-up as its Keras code builds them."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifartui.config import ModelConfig
from cifartui.engine.train.model_parts import ModelError, ScheduledDropout, activation, initial_rates


# --- ResNets -------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, act: str, preact: bool,
                 block_dropout: float, spatial_dropout: float, group: str, shortcut: str = "B"):
        super().__init__()
        self.preact = preact
        identity = stride == 1 and cin == planes * self.expansion
        # Dropout only in identity blocks: on the residual branch's input and after the sum.
        self.drop_in = ScheduledDropout(block_dropout if identity else 0.0, group)
        self.bn1 = nn.BatchNorm2d(cin if preact else planes)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.act1, self.act2 = activation(act), activation(act)
        self.shortcut: nn.Module = nn.Identity()
        if not identity:
            if shortcut == "A":
                self.shortcut = _PadShortcut(planes - cin, stride)
            else:
                layers = [nn.Conv2d(cin, planes * self.expansion, 1, stride, bias=False)]
                if not preact:
                    layers.append(nn.BatchNorm2d(planes * self.expansion))
                self.shortcut = nn.Sequential(*layers)
        self.drop_out = ScheduledDropout(spatial_dropout if identity else 0.0, group, spatial=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.drop_in(x)  # the shortcut carries the undropped input
        if self.preact:
            pre = self.act1(self.bn1(branch))
            shortcut = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(pre)
            out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
            return self.drop_out(out + shortcut)
        out = self.act1(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        return self.drop_out(self.act2(out + self.shortcut(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, act: str, preact: bool,
                 block_dropout: float, spatial_dropout: float, group: str, shortcut: str = "B"):
        super().__init__()
        self.preact = preact
        out_channels = planes * self.expansion
        identity = stride == 1 and cin == out_channels
        self.drop_in = ScheduledDropout(block_dropout if identity else 0.0, group)
        self.bn1 = nn.BatchNorm2d(cin if preact else planes)
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes if preact else out_channels)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.acts = nn.ModuleList(activation(act) for _ in range(3))
        self.shortcut: nn.Module = nn.Identity()
        if not identity:
            layers = [nn.Conv2d(cin, out_channels, 1, stride, bias=False)]
            if not preact:
                layers.append(nn.BatchNorm2d(out_channels))
            self.shortcut = nn.Sequential(*layers)
        self.drop_out = ScheduledDropout(spatial_dropout if identity else 0.0, group, spatial=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.drop_in(x)  # the shortcut carries the undropped input
        a1, a2, a3 = self.acts
        if self.preact:
            pre = a1(self.bn1(branch))
            shortcut = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(pre)
            out = self.conv1(pre)
            out = self.conv2(a2(self.bn2(out)))
            out = self.conv3(a3(self.bn3(out)))
            return self.drop_out(out + shortcut)
        out = a1(self.bn1(self.conv1(branch)))
        out = a2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.drop_out(a3(out + self.shortcut(x)))


class _PadShortcut(nn.Module):
    """Option A of He et al. for CIFAR: subsample and zero-pad channels, no parameters."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra, self.stride = extra_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class ResNet(nn.Module):
    def __init__(self, block: type, blocks: tuple[int, ...], widths: tuple[int, ...], config: ModelConfig,
                 num_classes: int, stem_width: int, shortcut: str):
        super().__init__()
        act = config.activation if config.activation != "default" else "relu"
        self.preact = config.preact
        self.stem = nn.Conv2d(3, stem_width, 3, config.stem_stride, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(stem_width)
        self.stem_act = activation(act)
        stages = []
        channels = stem_width
        for index, (count, width) in enumerate(zip(blocks, widths), start=1):
            layers = []
            for position in range(count):
                stride = 2 if position == 0 and index > 1 else 1
                layers.append(block(channels, width, stride, act, config.preact, config.block_dropout,
                                    config.spatial_dropout, f"stage{index}", shortcut))
                channels = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.final_bn = nn.BatchNorm2d(channels) if config.preact else nn.Identity()
        self.final_act = activation(act) if config.preact else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        rate = initial_rates(config, (config.classifier_dropout,))[0] if not config.dropout else config.dropout[-1]
        self.classifier_dropout = ScheduledDropout(rate, "classifier")
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(x)))
        x = self.final_act(self.final_bn(self.stages(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(self.classifier_dropout(x))


def resnet_builder(block: type, blocks: tuple[int, ...], cifar: bool) -> Callable[[ModelConfig, int], nn.Module]:
    def build(config: ModelConfig, num_classes: int) -> nn.Module:
        if cifar:
            return ResNet(block, blocks, (16, 32, 64), config, num_classes, 16, "A")
        return ResNet(block, blocks, (64, 128, 256, 512), config, num_classes, 64, "B")

    depth = (3 if block is Bottleneck else 2) * sum(blocks) + 2
    build.__doc__ = (f"CIFAR ResNet-{depth} of He et al. (16/32/64 channels, parameter-free shortcuts)."
                     if cifar else f"ResNet-{depth} adapted to 32x32 (3x3 stem, no max-pool); preact optional.")
    return build


# --- the ELU pre-activation ResNets of the ECE 472 write-up ---------------------------------------

# Keras' BatchNormalization(momentum=0.9) keeps 0.9 of the running average per step: PyTorch's 0.1.
KERAS_BN_EPSILON, KERAS_BN_MOMENTUM = 1e-3, 0.1


class KerasSameConv2d(nn.Conv2d):
    """Conv2d with Keras' padding='same': output size ceil(input / stride), any odd pixel of padding at
    the bottom and right (so a stride-2 3x3 convolution of an even-sized map pads 0 above, 1 below)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, bias=True)  # Keras' Conv2D has a bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad wants the last dimension first
            total = max((math.ceil(size / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


class PreactUnit(nn.Sequential):
    """BatchNormalization, ELU, then a convolution: one step of the write-up's `basic_blk`."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, act: str):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin, eps=KERAS_BN_EPSILON, momentum=KERAS_BN_MOMENTUM)
        self.act = activation(act)
        self.conv = KerasSameConv2d(cin, cout, kernel, stride)


class ProjectionBlock(nn.Module):
    """The write-up's `conv_blk`, which starts every stage: a two-unit branch plus a shortcut that has its
    own BatchNormalization, ELU and 1x1 convolution (stride 1 in the first stage); no dropout."""

    def __init__(self, cin: int, width: int, stride: int, act: str):
        super().__init__()
        self.branch = nn.Sequential(PreactUnit(cin, width, 3, stride, act), PreactUnit(width, width, 3, 1, act))
        self.shortcut = PreactUnit(cin, width, 1, stride, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.shortcut(x)


class IdentityBlock(nn.Module):
    """The write-up's `ident_blk`: dropout on the branch's input only, the undropped input added back,
    then channel-wise (spatial) dropout after the sum."""

    def __init__(self, width: int, act: str, block_dropout: float, spatial_dropout: float, group: str):
        super().__init__()
        self.drop_in = ScheduledDropout(block_dropout, group)
        self.branch = nn.Sequential(PreactUnit(width, width, 3, 1, act), PreactUnit(width, width, 3, 1, act))
        self.drop_out = ScheduledDropout(spatial_dropout, group, spatial=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_out(self.branch(self.drop_in(x)) + x)


class EluResNet(nn.Module):
    """The write-up's `ResNet_N`: a stride-2 3x3 stem with BN and ELU, stages whose widths double from
    64, each a projection block and then identity blocks, 2x2 average pooling (not global), flatten,
    dropout and one dense layer. No normalization after the last block. He-normal initialization."""

    def __init__(self, blocks: tuple[int, ...], config: ModelConfig, num_classes: int, image_size: int = 32):
        super().__init__()
        act = config.activation if config.activation != "default" else "elu"
        self.stem = nn.Sequential()
        self.stem.conv = KerasSameConv2d(3, 64, 3, 2)
        self.stem.norm = nn.BatchNorm2d(64, eps=KERAS_BN_EPSILON, momentum=KERAS_BN_MOMENTUM)
        self.stem.act = activation(act)
        size, channels, stages = math.ceil(image_size / 2), 64, []
        for index, count in enumerate(blocks, start=1):
            width, stride = 64 * 2 ** (index - 1), 1 if index == 1 else 2
            size = math.ceil(size / stride)
            layers: list[nn.Module] = [ProjectionBlock(channels, width, stride, act)]
            layers += [IdentityBlock(width, act, config.block_dropout, config.spatial_dropout, f"stage{index}")
                       for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            channels = width
        self.stages = nn.Sequential(*stages)
        pooled = math.ceil(size / 2)
        self.head = nn.Sequential()
        self.head.pool = nn.AvgPool2d(2, ceil_mode=True)  # Keras' AveragePooling2D(padding="same")
        self.head.flatten = nn.Flatten()
        self.head.dropout = ScheduledDropout(config.classifier_dropout, "classifier")
        self.head.fc = nn.Linear(channels * pooled * pooled, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                keras_he_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@torch.no_grad()
def keras_he_normal_(weight: torch.Tensor) -> torch.Tensor:
    """tf.keras' he_normal: a normal truncated at two deviations, scaled so its deviation is sqrt(2 / fan_in)."""
    fan_in = weight[0].numel()
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978  # the deviation of a unit normal cut at +-2
    # Redraw what falls outside, as TensorFlow does: the same law as trunc_normal_, many times faster on a CPU.
    flat = weight.view(-1).normal_(0.0, std)
    redraw = torch.nonzero(flat.abs() > 2 * std).squeeze(1)
    while redraw.numel():
        fresh = torch.empty(redraw.numel(), dtype=weight.dtype, device=weight.device).normal_(0.0, std)
        flat[redraw] = fresh
        redraw = redraw[fresh.abs() > 2 * std]
    return weight


def elu_resnet_builder(blocks: tuple[int, ...]) -> Callable[[ModelConfig, int], nn.Module]:
    def build(config: ModelConfig, num_classes: int) -> nn.Module:
        if config.dropout:
            raise ModelError(f"'{config.name}' takes its rates from model.block_dropout, model.spatial_dropout "
                             "and model.classifier_dropout; expected model.dropout = []")
        return EluResNet(blocks, config, num_classes)

    depth = 2 * sum(blocks) + 2
    build.__doc__ = (f"ELU pre-activation ResNet-{depth} of the ECE 472 write-up ({len(blocks)} stages of "
                     f"{', '.join(map(str, blocks))} blocks, widths from 64, dropout options).")
    return build
