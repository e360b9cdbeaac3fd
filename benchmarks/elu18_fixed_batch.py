"""ELU-18 from PyTorch's default initialization against Keras' (Glorot uniform): can it fit one batch?

The network has 18 convolutions and no batch norm, so its initialization decides
whether the image reaches the top. This fits one fixed batch of GCN + ZCA
preprocessed images with the recipe's SGD (lr 0.01, momentum 0.9, weight decay
5e-4 on weights) for a number of steps from each initialization, dropout off,
and prints the loss before and after, the image-dependent signal at the last
convolution (deviation across the batch) and conv1's gradient relative to its
weights at the first step.

    python benchmarks/elu18_fixed_batch.py [--steps 60] [--batch 16] [--data cifar100|synthetic]

`--data cifar100` reads CIFAR-100 from the data directory (`$CIFARTUI_DATA` or the
user cache) without downloading; `synthetic` (the default) needs nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from cifartui import presets
from cifartui.config import DatasetConfig
from cifartui.engine.train.augment import Preprocessor
from cifartui.engine.train.data import load_dataset
from cifartui.engine.train.models import build_model, dropout_groups
from cifartui.engine.train.optim import build_optimizer


def fixed_batch(data: str, batch: int, fit_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    recipe = presets.load("elu18-cifar100")
    config = (DatasetConfig(name="synthetic", classes=100, train_size=max(fit_images, batch), test_size=10)
              if data == "synthetic" else recipe.dataset)
    dataset = load_dataset(config, download=False)
    images = torch.from_numpy(dataset.train_images[:fit_images])
    pre = Preprocessor(recipe.augment.preprocess, recipe.augment.zca_epsilon).fit(images)
    return pre(images[:batch]), torch.from_numpy(dataset.train_labels[:batch]).long()


def fit(init: str, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict:
    recipe = presets.load("elu18-cifar100")
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(recipe.model, init=init), 100).train()
    for members in dropout_groups(model).values():
        for _, layer in members:
            layer.set_rate(0.0)
    optimizer = build_optimizer(model, recipe.optimizer, torch.device("cpu"))
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    seen: list[torch.Tensor] = []
    hook = convolutions[-1].register_forward_hook(lambda _m, _i, output: seen.append(output.detach()))
    losses, started = [], time.perf_counter()
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if step == 0:
            signal = float(seen[0].std(0).mean())
            first = convolutions[0].weight
            grad_ratio = float(first.grad.norm() / first.detach().norm())
            hook.remove()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = float(torch.nn.functional.cross_entropy(model(x), y))
    return {"init": init, "loss_before": losses[0], "loss_after": final, "signal_at_conv18": signal,
            "conv1_grad_over_weight": grad_ratio, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--data", choices=("synthetic", "cifar100"), default="synthetic")
    parser.add_argument("--fit-images", type=int, default=2000, help="images the GCN + ZCA statistics come from")
    args = parser.parse_args()
    x, y = fixed_batch(args.data, args.batch, args.fit_images)
    rows = [fit(init, x, y, args.steps) for init in ("default", "keras")]
    print(f"ELU-18, one fixed batch of {args.batch} {args.data} images (GCN + ZCA), {args.steps} SGD steps")
    print("| init | loss before | loss after | signal at conv 18 | conv1 grad/weight | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['init']} | {row['loss_before']:.3f} | {row['loss_after']:.3f} | {row['signal_at_conv18']:.2e} "
              f"| {row['conv1_grad_over_weight']:.2e} | {row['seconds']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
