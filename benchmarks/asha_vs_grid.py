"""ASHA against a grid on the same budget: best accuracy per compute-hour, and the cost of scheduling a trial.

    python benchmarks/asha_vs_grid.py [--trials 6] [--epochs 4] [--train-size 1000] [--sampler tpe]
                                      [--keep DIR] [--json FILE]

Both arms search the learning rate of one small recipe (a CNN on the offline synthetic
data set, CPU) over the same log range, with the same number of trials, one at a time:

  grid   `cifartui sweep --grid optimizer.lr=...`: TRIALS learning rates spaced evenly in log,
         each trained for every epoch;
  asha   `cifartui sweep --search SAMPLER --trials TRIALS --space lr=log:LOW..HIGH --pruner asha`:
         a trial that ranks low at its rung (epoch 1, then 3, ...) stops there.

Compute is the time the trials' processes trained (each run's first to last metrics
event, summed); best accuracy is the best validation top-1 of the arm. Scheduling
overhead is the time from one trial's last event to the next trial's first step: the
driver noticing the end, asking for the next trial (the study, for asha), and the new
`cifartui train` process starting (Python, PyTorch, data, model). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RECIPE = """
description = "asha_vs_grid: a small CNN on generated images"
[dataset]
name = "synthetic"
classes = 4
train_size = {train_size}
test_size = 256
val_fraction = 0.2
[model]
name = "cnn3"
dropout = [0.1, 0.1, 0.1, 0.1]
[optimizer]
name = "sgd"
lr = 0.01
momentum = 0.9
[augment]
preprocess = ["standardize"]
[train]
epochs = {epochs}
batch_size = 64
log_every = 1
checkpoint_minutes = 0.0
device = "cpu"
"""
LOW, HIGH = 1e-3, 1e-1


def events(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def arm(name: str, command: list[str], runs_dir: Path) -> dict:
    code = subprocess.run(command + ["--runs-dir", str(runs_dir)], cwd=ROOT, stdout=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode
    if code not in (0, 1):  # 1: a trial failed (a learning rate that diverged), which the table counts
        raise SystemExit(f"{name}: the sweep exited with {code}")
    (sweep_dir,) = [p for p in runs_dir.iterdir() if (p / "sweep.json").is_file()]
    queue = json.loads((sweep_dir / "queue.json").read_text())
    spans, best, pruned, failed = [], None, 0, 0
    for key in queue["entries"]:
        entry = json.loads((sweep_dir / key / "entry.json").read_text())
        if not entry.get("run_dir"):
            continue
        run = events(sweep_dir / key / entry["run_dir"])
        first_step = next(e["time"] for e in run if e["event"] == "StepMetrics")
        spans.append((run[0]["time"], first_step, run[-1]["time"]))
        values = [e["val_top1"] for e in run if e["event"] == "EpochEnded" and e.get("val_top1") is not None]
        if values:
            best = max(best or 0.0, max(values))
        pruned += entry["state"] == "stopped"
        failed += entry["state"] == "failed"
    spans.sort()
    compute_h = sum(end - start for start, _, end in spans) / 3600
    gaps = [spans[i + 1][1] - spans[i][2] for i in range(len(spans) - 1)]
    return {"arm": name, "trials": len(spans), "pruned": pruned, "failed": failed, "best_val_top1": best, "compute_h": compute_h,
            "best_per_compute_h": (best / compute_h) if best is not None and compute_h else None,
            "overhead_median_s": statistics.median(gaps) if gaps else None,
            "overhead_max_s": max(gaps) if gaps else None, "sweep_dir": str(sweep_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--sampler", default="tpe", choices=("tpe", "cmaes", "random"))
    parser.add_argument("--keep", type=Path, help="keep the sweep folders here (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        root = args.keep or Path(temporary)
        root.mkdir(parents=True, exist_ok=True)
        recipe = root / "recipe.toml"
        recipe.write_text(RECIPE.format(train_size=args.train_size, epochs=args.epochs), encoding="utf-8")
        grid = [f"{math.exp(math.log(LOW) + i * (math.log(HIGH) - math.log(LOW)) / (args.trials - 1)):.3g}"
                for i in range(args.trials)]
        cli = [sys.executable, "-m", "cifartui.cli", "sweep", str(recipe)]
        results = [
            arm("grid", cli + ["--grid", "optimizer.lr=" + ",".join(grid)], root / "grid"),
            arm(f"asha ({args.sampler})", cli + ["--search", args.sampler, "--trials", str(args.trials),
                                                 "--space", f"lr=log:{LOW}..{HIGH}", "--pruner", "asha"],
                root / "asha"),
        ]
    print(f"{args.trials} trials of up to {args.epochs} epochs, lr in [{LOW:g}, {HIGH:g}] (log), "
          f"synthetic 4 classes, {args.train_size} images, CPU, one trial at a time ({os.cpu_count()} cores)\n")
    print("| arm | trials (pruned, failed) | best val top-1 | compute (h) | best val top-1 per compute-hour "
          "| scheduling overhead per trial, median / max (s) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['arm']} | {r['trials']} ({r['pruned']}, {r['failed']}) | {r['best_val_top1']:.2f}% | {r['compute_h']:.4f} | "
              f"{r['best_per_compute_h']:.0f} | {r['overhead_median_s']:.2f} / {r['overhead_max_s']:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
