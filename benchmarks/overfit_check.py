"""Can each seed recipe overfit one small batch? The model, optimizer and preprocessing as the recipe builds them.

A recipe whose network cannot drive the loss on a few dozen fixed images well below
chance in a few hundred steps will not learn CIFAR either: its initialization,
preprocessing scale or learning rate is wrong, and a long run only shows it late.
For each recipe this builds the recipe's model (its initialization), its optimizer
(learning rate, momentum, weight decay and its groups; the schedule's first value is
not used, so a warm-up does not hide the test) and its preprocessing fitted on the
training images, then trains on one fixed batch, dropout and augmentation off, until
the loss falls below `--target` x ln(classes) or `--steps` run out.

Images: structured synthetic ones by default (`structured_images`: a class pattern
plus a natural image's 1/f spectrum, so GCN + ZCA whiten them as they whiten
photographs); with `--data-dir`, CIFAR from that folder (never downloaded).

    python benchmarks/overfit_check.py [--batch 32] [--steps 300] [--target 0.5] [--data-dir DIR] [RECIPE ...]

Prints a table (recipe, start loss, end loss, steps, pass/fail) and exits 1 if any fails. A recipe
whose write-up reports about chance accuracy (cnn3-sgd-cifar100: 2.11% on CIFAR-100) passes when
it does not overfit, since it reproduces a run that did not learn.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cifartui import presets
from cifartui.config import RunConfig
from cifartui.engine.train.augment import Preprocessor
from cifartui.engine.train.data import load_dataset
from cifartui.engine.train.models import build_model, dropout_groups
from cifartui.engine.train.optim import build_optimizer


def structured_images(classes: int, count: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NCHW images whose spectrum falls as 1/f like a photograph's, each its class's pattern plus its own.

    Every class has a colour pattern drawn with a 1/f amplitude spectrum; an image adds
    an image-specific luminance field of the same spectrum and weaker colour noise, then
    is rescaled to a random contrast around mid-grey. Unlike white noise, these images put
    most of their variance in few, smooth components, so ZCA shrinks most directions as it
    does on CIFAR, and the scale after GCN + ZCA is a photograph's, not white noise's.
    """
    rng = np.random.default_rng(seed)
    frequency = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    frequency[0, 0] = 1.0 / size
    amplitude = 1.0 / frequency

    def fields(n: int) -> np.ndarray:
        noise = rng.standard_normal((n, size, size)) + 1j * rng.standard_normal((n, size, size))
        return np.fft.ifft2(noise * amplitude).real

    patterns = fields(classes * 3).reshape(classes, 3, size, size)
    labels = rng.integers(0, classes, size=count)
    images = patterns[labels] + fields(count)[:, None] + 0.3 * fields(count * 3).reshape(count, 3, size, size)
    images /= images.std(axis=(1, 2, 3), keepdims=True)
    contrast = rng.uniform(25, 55, size=(count, 1, 1, 1))
    return np.clip(128 + contrast * images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def recipe_images(config: RunConfig, count: int, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Training images for the check and the number of classes: CIFAR from `data_dir`, else structured."""
    if data_dir is not None:
        dataset = load_dataset(config.dataset, data_dir, download=False)
        return dataset.train_images[:count], dataset.train_labels[:count], dataset.num_classes
    classes = 100 if config.dataset.name == "cifar100" and config.dataset.labels == "fine" else \
        20 if config.dataset.name == "cifar100" else 10
    images, labels = structured_images(classes, count, seed=config.train.seed)
    return images, labels, classes


def learns_in_its_write_up(config: RunConfig, classes: int) -> bool:
    """False for a recipe whose write-up reports about chance (under 3x): its network is meant to stall."""
    top1 = config.reference.top1
    return not top1 or top1 >= 3 * 100 / classes


def fit_one_batch(config: RunConfig, images: np.ndarray, labels: np.ndarray, classes: int, *, batch: int,
                  steps: int, target: float, seed: int = 0) -> dict:
    """Train the recipe's model on images[:batch] until the loss is below target * ln(classes); the losses."""
    torch.manual_seed(seed)
    device = torch.device("cpu")
    all_images = torch.from_numpy(images)
    preprocess = Preprocessor(config.augment.preprocess, config.augment.zca_epsilon).fit(all_images, seed=seed)
    x, y = preprocess(all_images[:batch]), torch.from_numpy(labels[:batch]).long()
    model = build_model(config.model, classes).train()
    for members in dropout_groups(model).values():
        for _, layer in members:
            layer.set_rate(0.0)
    if hasattr(model, "init_from_data"):
        model.init_from_data(preprocess(all_images))
    optimizer = build_optimizer(model, config.optimizer, device)
    goal = target * math.log(classes)
    losses: list[float] = []
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]) or losses[-1] < goal:
            break
    with torch.no_grad():
        end = float(F.cross_entropy(model(x), y))
    return {"start": losses[0], "end": end, "steps": len(losses), "goal": goal,
            "passed": math.isfinite(end) and end < goal, "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", help="default: every seed recipe")
    parser.add_argument("--batch", type=int, default=32, help="images in the fixed batch")
    parser.add_argument("--steps", type=int, default=300, help="most steps per recipe")
    parser.add_argument("--target", type=float, default=0.5, help="pass below this fraction of ln(classes)")
    parser.add_argument("--fit-images", type=int, default=1000, help="images the preprocessing is fitted on")
    parser.add_argument("--data-dir", type=Path, help="read CIFAR from here instead of structured images")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="change a recipe setting first, as `cifartui train --set` does (repeatable)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipes = presets.seed_recipes()
    names = args.recipes or sorted(recipes)
    unknown = [name for name in names if name not in recipes]
    if unknown:
        print(f"not a seed recipe: {', '.join(unknown)}; expected one of: {', '.join(sorted(recipes))}",
              file=sys.stderr)
        return 2
    source = f"CIFAR from {args.data_dir}" if args.data_dir else "structured synthetic images"
    print(f"One fixed batch of {args.batch} {source}, dropout and augmentation off, at most {args.steps} steps;"
          f" pass: loss below {args.target} x ln(classes)")
    if args.sets:
        print(f"Changed: {', '.join(args.sets)}")
    print("| recipe | classes | start loss | end loss | steps | seconds | result |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    failed = []
    for name in names:
        config = presets.compose(recipes[name], sets=args.sets) if args.sets else recipes[name]
        images, labels, classes = recipe_images(config, max(args.fit_images, args.batch), args.data_dir)
        row = fit_one_batch(config, images, labels, classes, batch=args.batch, steps=args.steps,
                            target=args.target, seed=config.train.seed)
        learns = learns_in_its_write_up(config, classes)
        if row["passed"] != learns:
            failed.append(name)
        verdict = ("pass" if row["passed"] else "FAIL") if learns else \
            (f"stalls, as in its write-up ({config.reference.top1}%)" if not row["passed"] else
             f"FAIL: learns, but its write-up stalled at {config.reference.top1}%")
        print(f"| {name} | {classes} | {row['start']:.3f} | {row['end']:.3f} | {row['steps']} | "
              f"{row['seconds']:.0f} | {verdict} |", flush=True)
    if failed:
        print(f"{len(failed)} of {len(names)} recipes could not overfit one batch: {', '.join(failed)}")
        return 1
    print(f"all {len(names)} recipes overfit one batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
