"""Plain convolutional stacks: the write-ups' small CNNs, ELU-18 of Clevert et al., VGG, the speedrun net."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from cifartui.config import ModelConfig
from cifartui.engine.train.model_parts import ScheduledDropout, activation, initial_rates, same_conv


# --- the write-ups' small CNNs, as written -------------------------------------------------------

def cnn3(config: ModelConfig, num_classes: int) -> nn.Module:
    """Deep Learning Lab, Episode 2: 3 conv (32/64/128) + dense 80; dropout .3/.3/.4/.3."""
    act = config.activation if config.activation != "default" else "relu"
    rates = initial_rates(config, (0.3, 0.3, 0.4, 0.3))
    return nn.Sequential(
        same_conv(3, 32, 3), activation(act), nn.MaxPool2d(2), ScheduledDropout(rates[0], "block1"),
        same_conv(32, 64, 3), activation(act), nn.MaxPool2d(2), ScheduledDropout(rates[1], "block2"),
        same_conv(64, 128, 3), activation(act), nn.MaxPool2d(2), ScheduledDropout(rates[2], "block3"),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 80), activation(act), ScheduledDropout(rates[3], "dense"),
        nn.Linear(80, num_classes),
    )


def cnn3_dense512(config: ModelConfig, num_classes: int) -> nn.Module:
    """CIFAR-100 Assignment 3: 3 conv (32/64/128) + dense 512; dropout .1/.25/.5 (activations as listed there)."""
    act = config.activation if config.activation != "default" else "relu"
    rates = initial_rates(config, (0.1, 0.25, 0.5))
    return nn.Sequential(
        same_conv(3, 32, 3), activation(act), nn.MaxPool2d(2), activation(act),
        same_conv(32, 64, 3), activation(act), nn.MaxPool2d(2), activation(act),
        ScheduledDropout(rates[0], "block2"),
        same_conv(64, 128, 3), activation(act), nn.MaxPool2d(2), ScheduledDropout(rates[1], "block3"),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 512), activation(act), ScheduledDropout(rates[2], "dense"),
        nn.Linear(512, num_classes),
    )


def cnn4_dense512(config: ModelConfig, num_classes: int) -> nn.Module:
    """Zhou, CNN on CIFAR-100: 4 conv (32/64/128/256) + dropout .5 + dense 512."""
    act = config.activation if config.activation != "default" else "relu"
    rates = initial_rates(config, (0.5,))
    return nn.Sequential(
        same_conv(3, 32, 3), activation(act), nn.MaxPool2d(2),
        same_conv(32, 64, 3), activation(act), nn.MaxPool2d(2),
        same_conv(64, 128, 3), activation(act), nn.MaxPool2d(2),
        same_conv(128, 256, 3), activation(act), nn.MaxPool2d(2),
        nn.Flatten(), ScheduledDropout(rates[0], "dense"),
        nn.Linear(256 * 2 * 2, 512), activation(act), nn.Linear(512, num_classes),
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
    rates = initial_rates(config, (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0))
    layers: list[nn.Module] = []
    channels = 3
    for index, stack in enumerate(ELU18_STACKS, start=1):
        group = f"stack{index}"
        for position, (units, kernel) in enumerate(stack):
            layers += [same_conv(channels, units, kernel), activation(act)]
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


def vgg_builder(layout_name: str) -> Callable[[ModelConfig, int], nn.Module]:
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
            layers.append(activation(act))
            channels = item
        rate = initial_rates(config, (config.classifier_dropout,))[0]
        layers += [nn.Flatten(), ScheduledDropout(rate, "classifier"), nn.Linear(512, num_classes)]
        return nn.Sequential(*layers)

    build.__doc__ = f"{layout_name.upper()} for 32x32 inputs (batch norm optional), one linear classifier."
    return build



# --- the patch-whitened speedrun net ----------------------------------------------------------------

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
