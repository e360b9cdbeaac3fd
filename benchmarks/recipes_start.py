"""Does each seed recipe start learning? A few dozen steps of each on the synthetic set.

Runs `cifartui train RECIPE --dataset synthetic --set train.max_steps=N` for each
recipe (all seed recipes by default) with a small generated training set, and
prints the mean loss of the first and the last five steps. It says nothing about
accuracy on CIFAR: the synthetic set only shows that the model, optimizer and
preprocessing move the loss from the start.

    python benchmarks/recipes_start.py [--steps 30] [--device cpu] [RECIPE ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cifartui import presets


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(event["step"], event["loss"]) for event in events if event.get("event") == "StepMetrics"]


def run(recipe: str, steps: int, device: str, train_size: int, runs: Path, classes: int = 0) -> dict:
    command = [sys.executable, "-m", "cifartui", "train", recipe, "--dataset", "synthetic", "--device", device,
               "--runs-dir", str(runs / recipe), "--set", f"train.max_steps={steps}", "--set", "train.log_every=1",
               "--set", f"dataset.train_size={train_size}", "--set", "dataset.test_size=100",
               "--set", "train.checkpoint_minutes=0"]
    if classes:  # fewer classes than the recipe's dataset: an easier task, the same network body
        command += ["--set", f"dataset.classes={classes}"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"recipe": recipe, "error": (done.stderr or done.stdout).strip().splitlines()[-1:], "seconds": seconds}
    losses = step_losses(next((runs / recipe).iterdir()))
    first = [loss for _, loss in losses[:5]]
    last = [loss for _, loss in losses[-5:]]
    return {"recipe": recipe, "steps": losses[-1][0] if losses else 0, "first": sum(first) / len(first),
            "last": sum(last) / len(last), "seconds": round(seconds, 1), "command": " ".join(command[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", help="default: every seed recipe")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-size", type=int, default=1200, help="synthetic training images")
    parser.add_argument("--classes", type=int, default=0, help="synthetic classes (default: the recipe's)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    names = args.recipes or sorted(presets.seed_recipes())
    rows = []
    print("| recipe | steps | loss, first 5 steps | loss, last 5 steps | seconds |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            row = run(name, args.steps, args.device, args.train_size, Path(folder), args.classes)
            rows.append(row)
            if "error" in row:
                print(f"| {name} | failed: {row['error']} | | | {row['seconds']:.0f} |", flush=True)
            else:
                print(f"| {name} | {row['steps']} | {row['first']:.3f} | {row['last']:.3f} | {row['seconds']} |",
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
