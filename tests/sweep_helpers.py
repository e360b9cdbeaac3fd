"""Sweeps for the app's tests: a tiny recipe to sweep for real, and finished sweeps written as files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from cifartui.config import replace_path
from cifartui.engine.runs import events as ev
from cifartui.engine.orchestration.queue import PlannedRun, RunQueue
from cifartui.engine.orchestration.sweep import write_plan
from tests.app_helpers import app_config, epochs_script, write_run

# Two short epochs on a few generated images: a run's process spends most of its time starting.
TINY_SWEEP_PRESET = """
description = "a sweep's run small enough to take seconds"
[dataset]
name = "synthetic"
classes = 4
train_size = 160
test_size = 64
val_fraction = 0.25
[model]
name = "cnn3"
[optimizer]
name = "sgd"
lr = 0.05
momentum = 0.9
[train]
epochs = 2
batch_size = 32
log_every = 1
checkpoint_minutes = 0.0
device = "cpu"
"""


def user_preset(config_dir: Path, name: str = "tiny") -> Path:
    """The tiny recipe as the user's own preset (in $CIFARTUI_CONFIG/presets), so the app lists it."""
    path = config_dir / "presets" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TINY_SWEEP_PRESET)
    return path


def fake_sweep(runs: Path, name: str, values: Sequence[float] = (0.02, 0.05), seeds: Sequence[int] = (0, 1),
               states: dict[str, str] | None = None, key: str = "optimizer.lr") -> Path:
    """A sweep directory as `cifartui sweep` leaves it, with fixed names, times and results.

    Each run's best validation top-1 is 50 + 100·value + seed (test top-1 one less), so
    the ranking is known. `states` makes some runs pending or stopped instead of finished.
    """
    sweep_dir = runs / name
    sweep_dir.mkdir(parents=True)
    write_plan(sweep_dir, {"preset": "tiny", "varied": [key], "grid": {key: list(values)}, "range": {},
                           "random": None, "seeds": list(seeds), "halving": None,
                           "runs": len(values) * len(seeds)})
    planned = []
    for seed in seeds:
        for value in values:
            config = replace_path(replace_path(app_config(epochs=4), key, value), "train.seed", seed)
            planned.append(PlannedRun(config, {"settings": {key: value}, "seed": seed}))
    queue = RunQueue.create(sweep_dir, planned, kind="sweep", device="cpu")
    for index, (entry, run) in enumerate(zip(queue.entries, planned)):
        state = (states or {}).get(entry.key, "finished")
        if state == "pending":
            continue
        run_name = f"20260101-12{index:02d}00-tiny"
        best = 50.0 + 100 * run.label["settings"][key] + run.label["seed"]
        events = []
        for event in epochs_script(entry.directory / run_name, run.config, epochs=4, t0=1_700_000_000.0 + index * 100):
            if isinstance(event, ev.EpochEnded):
                event = dataclasses.replace(event, val_top1=best - 3 + event.epoch)  # climbs to `best` at epoch 4
            elif isinstance(event, ev.RunFinished):
                event = dataclasses.replace(event, best_val_top1=best, test_top1=best - 1)
            events.append(event)
        if state != "finished":
            events = [e for e in events if not isinstance(e, ev.RunFinished)]
        write_run(entry.directory, run_name, run.config, events,
                  status={"status": "finished" if state == "finished" else "stopped", "pid": 1, "host": "elsewhere"})
        entry.run_name, entry.state, entry.device = run_name, state, "cpu"
        if state == "finished":
            entry.summary_path.write_text(json.dumps({"best_val_top1": best, "test_top1": best - 1}))
        queue.save(entry)
    return sweep_dir
