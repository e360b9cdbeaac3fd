"""Preprocessing fitted on the training split, and batched augmentation on the device.

Images stay uint8 until a batch is drawn. `Preprocessor` turns a uint8 batch into
floats (scale to [0, 1], then standardize / gcn / zca in the configured order);
`Augmenter` transforms a whole float batch at once with per-sample randomness drawn
from an explicit `torch.Generator`, so a resumed run draws exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cifartui.config import AugmentConfig

# ZCA needs a 3072x3072 covariance; past this many images the estimate barely changes
# while the cost on a CPU keeps growing.
ZCA_FIT_MAX_IMAGES = 20000


class Preprocessor:
    """uint8 NCHW batch -> float batch; statistics fitted on the training split only."""

    def __init__(self, steps: tuple[str, ...], zca_epsilon: float = 1e-2):
        self.steps = tuple(steps)
        self.zca_epsilon = zca_epsilon
        self.stats: dict[str, torch.Tensor] = {}

    def fit(self, train_images: torch.Tensor, seed: int = 0) -> "Preprocessor":
        """Fit mean/std and the ZCA matrix on (a seeded sample of) the training images."""
        sample = train_images
        if "zca" in self.steps and len(sample) > ZCA_FIT_MAX_IMAGES:
            generator = torch.Generator().manual_seed(seed)
            pick = torch.randperm(len(sample), generator=generator)[:ZCA_FIT_MAX_IMAGES]
            sample = sample[pick.to(sample.device)]
        # One float64 copy of the sample at most, transformed in place, and only when a step needs the
        # images themselves: per-channel statistics of the raw images are summed batch by batch, since
        # whole-set temporaries of 50,000 images would be the run's peak memory (1.2 GB each).
        x: torch.Tensor | None = None
        for position, step in enumerate(self.steps):
            if step == "standardize":
                mean, std = _channel_stats(sample) if x is None else _channel_stats_of_floats(x)
                self.stats["mean"], self.stats["std"] = mean, std.clamp_min(1e-8)
                if position + 1 < len(self.steps):
                    x = _as_floats(sample) if x is None else x
                    x.sub_(mean).div_(self.stats["std"])
                continue
            x = _as_floats(sample) if x is None else x
            if step == "gcn":
                x.sub_(x.mean(dim=(1, 2, 3), keepdim=True)).div_(x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8))
            elif step == "zca":
                flat = x.reshape(len(x), -1)
                mean = flat.mean(dim=0, keepdim=True)
                centered = flat.sub_(mean)
                covariance = centered.T @ centered / len(flat)
                eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
                scale = 1.0 / torch.sqrt(eigenvalues.clamp_min(0) + self.zca_epsilon)
                self.stats["zca_mean"] = mean
                self.stats["zca_matrix"] = (eigenvectors * scale) @ eigenvectors.T
                x = (centered @ self.stats["zca_matrix"]).reshape(x.shape)
            else:
                raise ValueError(f"unknown preprocessing step {step!r}")
        return self.to(train_images.device)

    def to(self, device: torch.device) -> "Preprocessor":
        self.stats = {k: v.to(device, torch.float32) for k, v in self.stats.items()}
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        for step in self.steps:
            if step == "standardize":
                x = (x - self.stats["mean"]) / self.stats["std"]
            elif step == "gcn":
                x = _gcn(x)
            else:
                flat = x.reshape(len(x), -1)
                x = ((flat - self.stats["zca_mean"]) @ self.stats["zca_matrix"]).reshape(x.shape)
        return x


def _as_floats(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float64 in [0, 1] on the CPU: one copy."""
    return images.to("cpu", torch.float64, copy=True).div_(255.0)


def _channel_stats(images: torch.Tensor, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) deviation of uint8 images scaled to [0, 1], a chunk at a time."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros(images.shape[1], dtype=torch.float64)
    for part in images.split(chunk):
        values = _as_floats(part)
        total += values.sum(dim=(0, 2, 3))
        squares += values.square_().sum(dim=(0, 2, 3))
    count = images.numel() // images.shape[1]
    mean = total / count
    variance = (squares - count * mean * mean) / max(count - 1, 1)
    return mean.view(1, -1, 1, 1), variance.clamp_min(0).sqrt().view(1, -1, 1, 1)


def _channel_stats_of_floats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)


def _gcn(x: torch.Tensor) -> torch.Tensor:
    """Global contrast normalization: each image centered and scaled to unit deviation."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / std.clamp_min(1e-8)


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad` and take a random same-size crop per image (a shift of up to pad pixels)."""
    batch, _, height, width = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offset_y = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=x.device)
    offset_x = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=x.device)
    rows = offset_y[:, None] + torch.arange(height, device=x.device)
    cols = offset_x[:, None] + torch.arange(width, device=x.device)
    index = torch.arange(batch, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_affine(x: torch.Tensor, degrees: float, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Keras ImageDataGenerator-style rotation and width/height shift, nearest fill at the border."""
    batch = len(x)
    uniform = torch.rand(batch, 3, generator=generator, device=x.device) * 2 - 1
    angle = uniform[:, 0] * math.radians(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid works in [-1, 1] coordinates: a shift of a fraction f of the size is 2f.
    tx, ty = uniform[:, 1] * shift * 2, uniform[:, 2] * shift * 2
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a size x size square at a random centre per image (it may hang over the border)."""
    batch, _, height, width = x.shape
    centre_y = torch.randint(0, height, (batch, 1, 1), generator=generator, device=x.device)
    centre_x = torch.randint(0, width, (batch, 1, 1), generator=generator, device=x.device)
    ys = torch.arange(height, device=x.device)[None, :, None]
    xs = torch.arange(width, device=x.device)[None, None, :]
    top, left = centre_y - size // 2, centre_x - size // 2
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x * (~inside)[:, None].to(x.dtype)


class Augmenter:
    """The configured augmentations, applied in a fixed order to a float batch."""

    def __init__(self, config: AugmentConfig):
        self.config = config

    @property
    def active(self) -> bool:
        c = self.config
        return bool(c.crop_padding or c.translate or c.flip or c.rotation or c.shift or c.cutout)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c = self.config
        if c.crop_padding:
            x = random_shift(x, c.crop_padding, generator)
        if c.translate:
            x = random_shift(x, c.translate, generator)
        if c.rotation or c.shift:
            x = random_affine(x, c.rotation, c.shift, generator)
        if c.flip:
            x = random_flip(x, generator)
        if c.cutout:
            x = cutout(x, c.cutout, generator)
        return x
