"""The model registry: small named builders, and a model summary as data.

Every dropout layer is a `ScheduledDropout` that belongs to a group (a stack, a
ResNet stage, the classifier). The dropout schedule addresses groups: "last"
means the layer that ends each group, "all" every layer in it. Rates live in a
buffer so that changing them never recompiles a compiled model, and they are
saved with the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifartui.config import ModelConfig


class ScheduledDropout(nn.Module):
    """Dropout (or channel-wise spatial dropout) whose rate a schedule may change."""

    def __init__(self, rate: float, group: str, spatial: bool = False):
        super().__init__()
        self.group = group
        self.spatial = spatial
        self.rate = 0.0
        self.active = False
        # Draw a mask even at rate 0, for steps replayed as CUDA graphs: the graph reads
        # the rate from the tensor, and a rate raised later must then take effect.
        self.always_draw = False
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
        if not self.training or not (self.active or self.always_draw):
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


def _activation(name: str) -> nn.Module:
    return nn.ELU(inplace=False) if name == "elu" else nn.ReLU(inplace=False)


def _conv(cin: int, cout: int, kernel: int) -> nn.Module:
    """Keras' padding='same': odd kernels pad evenly, even kernels pad one more at bottom/right."""
    if kernel % 2:
        return nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    low, high = (kernel - 1) // 2, kernel // 2
    return nn.Sequential(nn.ZeroPad2d((low, high, low, high)), nn.Conv2d(cin, cout, kernel))


# --- the write-ups' small CNNs, as written -------------------------------------------------------

def cnn3(config: ModelConfig, num_classes: int) -> nn.Module:
    """Deep Learning Lab, Episode 2: 3 conv (32/64/128) + dense 80; dropout .3/.3/.4/.3."""
    act = config.activation if config.activation != "default" else "relu"
    rates = _rates(config, (0.3, 0.3, 0.4, 0.3))
    return nn.Sequential(
        _conv(3, 32, 3), _activation(act), nn.MaxPool2d(2), ScheduledDropout(rates[0], "block1"),
        _conv(32, 64, 3), _activation(act), nn.MaxPool2d(2), ScheduledDropout(rates[1], "block2"),
        _conv(64, 128, 3), _activation(act), nn.MaxPool2d(2), ScheduledDropout(rates[2], "block3"),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 80), _activation(act), ScheduledDropout(rates[3], "dense"),
        nn.Linear(80, num_classes),
    )


def cnn3_dense512(config: ModelConfig, num_classes: int) -> nn.Module:
    """CIFAR-100 Assignment 3: 3 conv (32/64/128) + dense 512; dropout .1/.25/.5 (activations as listed there)."""
    act = config.activation if config.activation != "default" else "relu"
    rates = _rates(config, (0.1, 0.25, 0.5))
    return nn.Sequential(
        _conv(3, 32, 3), _activation(act), nn.MaxPool2d(2), _activation(act),
        _conv(32, 64, 3), _activation(act), nn.MaxPool2d(2), _activation(act),
        ScheduledDropout(rates[0], "block2"),
        _conv(64, 128, 3), _activation(act), nn.MaxPool2d(2), ScheduledDropout(rates[1], "block3"),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 512), _activation(act), ScheduledDropout(rates[2], "dense"),
        nn.Linear(512, num_classes),
    )


def cnn4_dense512(config: ModelConfig, num_classes: int) -> nn.Module:
    """Zhou, CNN on CIFAR-100: 4 conv (32/64/128/256) + dropout .5 + dense 512."""
    act = config.activation if config.activation != "default" else "relu"
    rates = _rates(config, (0.5,))
    return nn.Sequential(
        _conv(3, 32, 3), _activation(act), nn.MaxPool2d(2),
        _conv(32, 64, 3), _activation(act), nn.MaxPool2d(2),
        _conv(64, 128, 3), _activation(act), nn.MaxPool2d(2),
        _conv(128, 256, 3), _activation(act), nn.MaxPool2d(2),
        nn.Flatten(), ScheduledDropout(rates[0], "dense"),
        nn.Linear(256 * 2 * 2, 512), _activation(act), nn.Linear(512, num_classes),
    )


# --- the 18-conv ELU network of Clevert et al. ----------------------------------------------------

# (units, receptive field) of each layer, stack by stack, as the paper's layer list gives them:
# ([1x384x3], [1x384x1, 1x384x2, 2x640x2], [1x640x1, 3x768x2], [1x768x1, 2x896x2],
#  [1x896x3, 2x1024x2], [1x1024x1, 1x1152x2], [1x1152x1], [1x100x1]); the last is the classifier.
# The write-up's Keras code gives stack 3's first layer a 3x3 field where the list says 1x1;
# the list is the paper's, whose result the recipe reproduces.
ELU18_STACKS = (
    ((384, 3),),
    ((384, 1), (384, 2), (640, 2), (640, 2)),
    ((640, 1), (768, 2), (768, 2), (768, 2)),
    ((768, 1), (896, 2), (896, 2)),
    ((896, 3), (1024, 2), (1024, 2)),
    ((1024, 1), (1152, 2)),
    ((1152, 1),),
)


def elu18(config: ModelConfig, num_classes: int) -> nn.Module:
    """Clevert et al. (ICLR 2016): 18 conv layers in 7 stacks, each ending in max-pool and dropout.

    Every conv is followed by the activation (ELU by default) and by a dropout layer
    of the stack's group: the one after the stack's pooling is the stack's "last"
    dropout, the others start at 0 so a schedule with scope "all" can switch on
    dropout on every layer of a stack.
    """
    act = config.activation if config.activation != "default" else "elu"
    rates = _rates(config, (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0))
    layers: list[nn.Module] = []
    channels = 3
    for index, stack in enumerate(ELU18_STACKS, start=1):
        group = f"stack{index}"
        for position, (units, kernel) in enumerate(stack):
            layers += [_conv(channels, units, kernel), _activation(act)]
            channels = units
            if position < len(stack) - 1:
                layers.append(ScheduledDropout(0.0, group))
        layers += [nn.MaxPool2d(2, ceil_mode=True), ScheduledDropout(rates[index - 1], group)]
    layers += [nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


# --- VGG -----------------------------------------------------------------------------------------

VGG_LAYOUTS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


def _vgg(layout_name: str) -> Callable[[ModelConfig, int], nn.Module]:
    def build(config: ModelConfig, num_classes: int) -> nn.Module:
        act = config.activation if config.activation != "default" else "relu"
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG_LAYOUTS[layout_name]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(channels, item, 3, padding=1, bias=not config.batch_norm))
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(_activation(act))
            channels = item
        rate = _rates(config, (config.classifier_dropout,))[0]
        layers += [nn.Flatten(), ScheduledDropout(rate, "classifier"), nn.Linear(512, num_classes)]
        return nn.Sequential(*layers)

    build.__doc__ = f"{layout_name.upper()} for 32x32 inputs (batch norm optional), one linear classifier."
    return build


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
        self.act1, self.act2 = _activation(act), _activation(act)
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
        self.acts = nn.ModuleList(_activation(act) for _ in range(3))
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
        self.stem_act = _activation(act)
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
        self.final_act = _activation(act) if config.preact else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        rate = _rates(config, (config.classifier_dropout,))[0] if not config.dropout else config.dropout[-1]
        self.classifier_dropout = ScheduledDropout(rate, "classifier")
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(x)))
        x = self.final_act(self.final_bn(self.stages(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(self.classifier_dropout(x))


def _resnet(block: type, blocks: tuple[int, ...], cifar: bool) -> Callable[[ModelConfig, int], nn.Module]:
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
        self.act = _activation(act)
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
        self.stem.act = _activation(act)
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


def _elu_resnet(blocks: tuple[int, ...]) -> Callable[[ModelConfig, int], nn.Module]:
    def build(config: ModelConfig, num_classes: int) -> nn.Module:
        if config.dropout:
            raise ModelError(f"'{config.name}' takes its rates from model.block_dropout, model.spatial_dropout "
                             "and model.classifier_dropout; expected model.dropout = []")
        return EluResNet(blocks, config, num_classes)

    depth = 2 * sum(blocks) + 2
    build.__doc__ = (f"ELU pre-activation ResNet-{depth} of the ECE 472 write-up ({len(blocks)} stages of "
                     f"{', '.join(map(str, blocks))} blocks, widths from 64, dropout options).")
    return build


class _FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm with its scale fixed at 1 and only the shift learned, fast-moving statistics."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad_(False)


class _ConvGroup(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        first, second = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        for conv in (first, second):  # start near identity on the channels that carry over
            nn.init.dirac_(conv.weight.data[:conv.in_channels])
        super().__init__(first, nn.MaxPool2d(2), _FrozenScaleBatchNorm(cout), nn.GELU(),
                         second, _FrozenScaleBatchNorm(cout), nn.GELU())


class _Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class WhitenedConvNet(nn.Sequential):
    """Patch-whitened fast CIFAR net (64/256/256 widths), after Page's and Jordan's speed records.

    The first layer is a fixed 2x2 convolution whose filters whiten the training set's
    image patches (the eigenvectors of their covariance, in both signs);
    `init_from_data` sets them from training images before the first step.
    """

    def __init__(self, num_classes: int, widths: tuple[int, int, int] = (64, 256, 256)):
        whiten = nn.Conv2d(3, 24, 2, bias=True)
        whiten.weight.requires_grad_(False)
        super().__init__(whiten, nn.GELU(), _ConvGroup(24, widths[0]), _ConvGroup(widths[0], widths[1]),
                         _ConvGroup(widths[1], widths[2]), nn.MaxPool2d(3), nn.Flatten(),
                         nn.Linear(widths[2], num_classes, bias=False), _Scale(1 / 9))

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, epsilon: float = 5e-4) -> None:
        """Whitening filters from the 2x2 patches of (preprocessed) training images."""
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # N, C, H-1, W-1, 2, 2
        patches = patches.transpose(1, 3).reshape(-1, 3 * 2 * 2).double()
        patches = patches - patches.mean(0)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues[:, None] + epsilon)).reshape(12, 3, 2, 2)
        whiten = self[0]
        whiten.weight.copy_(torch.cat([filters, -filters]).to(whiten.weight))


def speedrun_net(config: ModelConfig, num_classes: int) -> nn.Module:
    """Patch-whitened 64/256/256 GELU net for fast CIFAR-10 training (speedrun-cifar10)."""
    return WhitenedConvNet(num_classes)


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
    "vgg11": ModelSpec(_vgg("vgg11")),
    "vgg16": ModelSpec(_vgg("vgg16")),
    "vgg19": ModelSpec(_vgg("vgg19")),
    "resnet18": ModelSpec(_resnet(BasicBlock, (2, 2, 2, 2), cifar=False)),
    "resnet34": ModelSpec(_resnet(BasicBlock, (3, 4, 6, 3), cifar=False)),
    "resnet50": ModelSpec(_resnet(Bottleneck, (3, 4, 6, 3), cifar=False)),
    "resnet20": ModelSpec(_resnet(BasicBlock, (3, 3, 3), cifar=True)),
    "resnet56": ModelSpec(_resnet(BasicBlock, (9, 9, 9), cifar=True)),
    "resnet110": ModelSpec(_resnet(BasicBlock, (18, 18, 18), cifar=True)),
    # Depth counts the stem, two convolutions per block and the dense layer, as the write-up names them.
    "elu-resnet18": ModelSpec(_elu_resnet((2, 2, 2, 2))),
    "elu-resnet20": ModelSpec(_elu_resnet((3, 3, 3))),
    "elu-resnet50": ModelSpec(_elu_resnet((8, 8, 8))),
    "elu-resnet110": ModelSpec(_elu_resnet((18, 18, 18))),
    "speedrun-net": ModelSpec(speedrun_net),
}


class ModelError(ValueError):
    """The model options do not fit the architecture."""


def _rates(config: ModelConfig, defaults: tuple[float, ...]) -> tuple[float, ...]:
    if not config.dropout:
        return defaults
    if len(config.dropout) != len(defaults):
        raise ModelError(f"model.dropout has {len(config.dropout)} rates but '{config.name}' "
                         f"has {len(defaults)} dropout groups; expected {len(defaults)} values")
    return tuple(config.dropout)


def build_model(config: ModelConfig, num_classes: int) -> nn.Module:
    """A freshly initialized model; draws from torch's global RNG (seed it first)."""
    if config.name not in MODELS:
        raise ModelError(f"unknown model '{config.name}'; expected one of: {', '.join(MODELS)}")
    model = MODELS[config.name].build(config, num_classes)
    if config.init == "keras":
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
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
