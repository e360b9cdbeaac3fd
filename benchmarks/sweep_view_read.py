"""What one look of the Sweeps view costs: reading a sweep whose runs have long metrics files.

    python benchmarks/sweep_view_read.py [--runs 32] [--steps 20000] [--append 10] [--repeat 5] [--json FILE]

The app's Sweeps view reads the sweep on show once a second (in a worker thread). A
long run's metrics.jsonl holds a line per reported step, so reading every file whole
at every look grows with the runs' length; `ProgressTails` reads only what each file
gained since the last look, and parses only the lines progress needs. This writes a
sweep of RUNS runs in a temporary folder, each with STEPS step lines and an epoch line
every 500 steps, and times `read_sweep`:

  whole files    every look reads every metrics.jsonl from its start (RunQueue.open's default)
  first look     ProgressTails, the first read (the whole files, once)
  later looks    ProgressTails, after each run appended APPEND step lines (a run reports at
                 most ten a second: a look a second finds at most ten new lines per run)

Prints a Markdown table of the median and the slowest of REPEAT looks, in milliseconds.
No PyTorch is loaded: reading a sweep needs none.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cifartui.config import DatasetConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig  # noqa: E402
from cifartui.engine.orchestration.queue import PlannedRun, ProgressTails, RunQueue, read_progress  # noqa: E402
from cifartui.engine.orchestration.sweep import read_sweep, write_plan  # noqa: E402

EPOCH_EVERY = 500


def metrics_lines(first_step: int, steps: int) -> str:
    lines = []
    for step in range(first_step, first_step + steps):
        lines.append(json.dumps({"event": "StepMetrics", "step": step, "epoch": step // EPOCH_EVERY, "loss": 1.0,
                                 "top1": 50.0, "lr": 0.1, "images_per_s": 2000.0, "eta_s": 10.0,
                                 "total_steps": 10**6, "time": 1.7e9 + step}))
        if (step + 1) % EPOCH_EVERY == 0:
            lines.append(json.dumps({"event": "EpochEnded", "epoch": step // EPOCH_EVERY, "step": step + 1,
                                     "train_loss": 1.0, "train_top1": 50.0, "val_loss": 1.0,
                                     "val_top1": 50.0 + (step % 7), "val_top5": 90.0, "lr": 0.1, "seconds": 1.0,
                                     "time": 1.7e9 + step}))
    return "\n".join(lines) + "\n"


def make_sweep(root: Path, runs: int, steps: int) -> tuple[Path, list[Path]]:
    sweep_dir = root / "20260101-000000-sweep-bench"
    sweep_dir.mkdir()
    write_plan(sweep_dir, {"preset": "bench", "varied": ["optimizer.lr"], "grid": {}, "range": {}, "random": None,
                           "seeds": [0], "halving": None, "runs": runs})
    base = RunConfig(name="bench", dataset=DatasetConfig(name="synthetic"), model=ModelConfig(name="cnn3"),
                     optimizer=OptimizerConfig(), train=TrainConfig(epochs=1000))
    planned = [PlannedRun(base, {"settings": {"optimizer.lr": 0.001 * (i + 1)}, "seed": 0}) for i in range(runs)]
    queue = RunQueue.create(sweep_dir, planned, kind="sweep", device="cpu")
    run_dirs = []
    for entry in queue.entries:
        run_dir = entry.directory / "20260101-000001-bench"
        run_dir.mkdir()
        (run_dir / "config.json").write_text(json.dumps(base.to_dict()))
        (run_dir / "metrics.jsonl").write_text(metrics_lines(0, steps))
        entry.run_name, entry.state = run_dir.name, "running"
        queue.save(entry)
        run_dirs.append(run_dir)
    return sweep_dir, run_dirs


def timed(function) -> float:  # noqa: ANN001
    started = time.perf_counter()
    function()
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--append", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        sweep_dir, run_dirs = make_sweep(Path(folder), args.runs, args.steps)
        size = sum((run_dir / "metrics.jsonl").stat().st_size for run_dir in run_dirs)
        whole = [timed(lambda: read_sweep(sweep_dir)) for _ in range(args.repeat)]
        tails = ProgressTails()
        first = [timed(lambda: read_sweep(sweep_dir, progress=tails))]
        later, steps = [], args.steps
        for _ in range(args.repeat):
            for run_dir in run_dirs:
                with (run_dir / "metrics.jsonl").open("a") as handle:
                    handle.write(metrics_lines(steps, args.append))
            steps += args.append
            later.append(timed(lambda: read_sweep(sweep_dir, progress=tails)))
        status = read_sweep(sweep_dir, progress=tails)
        assert all(run.epochs_done == steps // EPOCH_EVERY for run in status.runs)  # nothing was missed
        for entry in status.entries:  # the same progress as reading each file whole
            assert entry.progress == read_progress(entry.run_dir)
    rows = {"whole files": whole, "first look": first, "later looks": later}
    print(f"{args.runs} runs, {args.steps:,} step lines each at first ({size / 2**20:.0f} MiB of metrics), "
          f"{args.append} more per run before each later look\n")
    print("| read | looks | median ms | slowest ms |")
    print("| --- | --- | --- | --- |")
    for name, values in rows.items():
        print(f"| {name} | {len(values)} | {statistics.median(values):.1f} | {max(values):.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "steps": args.steps, "metrics_bytes": size,
                                         "ms": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
