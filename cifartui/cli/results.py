"""`inspect` and `predict`: what a trained run gets right and wrong, and what it makes of new images."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cifartui.cli.common import EXIT_OK, pct as _pct


def add_parsers(commands: Any) -> None:
    inspect = commands.add_parser("inspect", help="test-set accuracy per class and the confusion matrix")
    inspect.set_defaults(handler=cmd_inspect)
    inspect.add_argument("run_dir", type=Path)
    inspect.add_argument("--checkpoint", choices=("best", "last"), default="best")
    inspect.add_argument("--json", action="store_true", help="print JSON (confusion_matrix: rows = true class)")
    inspect.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    inspect.add_argument("--data-dir", type=Path, help="where CIFAR lives (default: $CIFARTUI_DATA or the cache)")

    predict = commands.add_parser("predict", help="top-5 classes for image files of any size")
    predict.set_defaults(handler=cmd_predict)
    predict.add_argument("run_dir", type=Path)
    predict.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    predict.add_argument("--checkpoint", choices=("best", "last"), default="best")
    predict.add_argument("--json", action="store_true")
    predict.add_argument("--data-dir", type=Path, help="where CIFAR lives (its training split fits the "
                         "preprocessing)")


def cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.train.inspect import inspect_run
    from cifartui.engine.train.trainer import resolve_device

    result = inspect_run(args.run_dir, checkpoint=args.checkpoint, data_dir=args.data_dir,
                         device=str(resolve_device(args.device)))
    if args.json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
        return EXIT_OK
    images = int(result.confusion.sum())
    console.print(f"[bold]{escape(str(args.run_dir))}[/]: checkpoint {result.checkpoint}.pt (step {result.step:,}), "
                  f"{images:,} test images: top-1 [bold]{result.top1:.2f}%[/], top-5 {result.top5:.2f}%",
                  highlight=False, soft_wrap=True)
    per_class = result.per_class_accuracy
    table = Table(title="accuracy per class, worst first", box=box.SIMPLE_HEAD)
    table.add_column("class")
    if result.superclass_of:
        table.add_column("superclass")
    table.add_column("images", justify="right")
    table.add_column("top-1", justify="right")
    table.add_column("most often taken for")
    for c in sorted(range(len(per_class)), key=lambda c: (np.nan_to_num(per_class[c], nan=101.0), c)):
        confused = result.taken_for(c)
        cells = [escape(result.class_names[c])]
        if result.superclass_of:
            cells.append(escape(result.superclass_names[result.superclass_of[c]]))
        cells += [f"{int(result.confusion[c].sum())}", _pct(None if np.isnan(per_class[c]) else per_class[c]),
                  escape(confused)]
        table.add_row(*cells)
    console.print(table)
    supers = result.superclass_confusion()
    if supers is not None:
        table = Table(title="accuracy per superclass (a prediction counts when it lands in the right superclass)",
                      box=box.SIMPLE_HEAD)
        table.add_column("superclass")
        table.add_column("top-1", justify="right")
        for i, name in enumerate(result.superclass_names):
            total = supers[i].sum()
            table.add_row(escape(name), _pct(100.0 * supers[i, i] / total if total else None))
        console.print(table)
    if len(result.class_names) <= 20:
        matrix = Table(title="confusion matrix (rows: true class, columns: predicted)", box=box.SIMPLE_HEAD)
        matrix.add_column("")
        for name in result.class_names:
            matrix.add_column(escape(name[:5]), justify="right")
        for c, name in enumerate(result.class_names):
            matrix.add_row(escape(name), *[f"[bold]{n}[/]" if c == p else (str(n) if n else "[dim]0[/]")
                                   for p, n in enumerate(result.confusion[c].tolist())])
        console.print(matrix)
    else:
        console.print("The 100x100 confusion matrix is in --json (confusion_matrix) and in the app's Inspect view.",
                      highlight=False)
    return EXIT_OK


def cmd_predict(args: argparse.Namespace, console: Console) -> int:
    from cifartui.engine.train.inspect import load_trained, predict_images, read_image

    for path in args.images:  # a file that is not an image is found before the model loads
        read_image(path)
    loaded = load_trained(args.run_dir, checkpoint=args.checkpoint, data_dir=args.data_dir)
    results = predict_images(loaded, args.images)
    if args.json:
        sys.stdout.write(json.dumps([{"image": str(path), "top5": [{"class": n, "probability": p} for n, p in top]}
                                     for path, top in zip(args.images, results)]) + "\n")
        return EXIT_OK
    for path, top in zip(args.images, results):
        table = Table(title=escape(str(path)), box=box.SIMPLE_HEAD, title_justify="left")
        table.add_column("class")
        table.add_column("probability", justify="right")
        for name, probability in top:
            table.add_row(escape(name), f"{100 * probability:.1f}%")
        console.print(table)
    return EXIT_OK
