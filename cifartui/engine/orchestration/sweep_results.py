"""A sweep's results: each run where it stands, and the settings ranked by their runs' best validation top-1."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from cifartui.engine.orchestration.queue import QueueEntry, load_summary


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep and where it stands."""

    key: str
    settings: dict[str, Any]
    seed: int
    state: str
    run_dir: str | None
    epochs_done: int
    epochs: int
    best_val_top1: float | None
    test_top1: float | None
    message: str


@dataclass(frozen=True)
class SettingResult:
    """The runs of one setting over seeds: mean and standard deviation of their best validation top-1."""

    settings: dict[str, Any]
    runs: tuple[SweepRun, ...]
    mean: float | None
    std: float | None  # sample standard deviation (n - 1); None below two runs
    test_mean: float | None
    rank: int | None
    best: bool

    def to_dict(self) -> dict[str, Any]:
        states = [run.state for run in self.runs]
        return {"rank": self.rank, "best": self.best, "settings": self.settings,
                "best_val_top1_mean": self.mean, "best_val_top1_std": self.std,
                "best_val_top1": [run.best_val_top1 for run in self.runs],
                "test_top1_mean": self.test_mean, "seeds": [run.seed for run in self.runs],
                "states": states, "run_dirs": [run.run_dir for run in self.runs]}


def sweep_runs(entries: Iterable[QueueEntry]) -> list[SweepRun]:
    runs = []
    for entry in entries:
        summary = load_summary(entry) if entry.state == "finished" else None
        best = summary.get("best_val_top1") if summary else entry.progress.best_val_top1
        test = summary.get("test_top1") if summary else None
        runs.append(SweepRun(entry.key, dict(entry.label.get("settings", {})), int(entry.label.get("seed", 0)),
                             entry.state, str(entry.run_dir) if entry.run_dir else None,
                             entry.progress.epochs_done, entry.epochs,
                             float(best) if isinstance(best, (int, float)) else None,
                             float(test) if isinstance(test, (int, float)) else None, entry.message))
    return runs


def rank_settings(runs: Sequence[SweepRun]) -> list[SettingResult]:
    """Settings ranked by the mean of their runs' best validation top-1 (runs still going count
    with their best so far; equal means share a rank, and every setting ranked first is the
    best); settings with no result yet come last, in plan order."""
    groups: dict[str, list[SweepRun]] = {}
    for run in runs:
        groups.setdefault(json.dumps(run.settings, sort_keys=True), []).append(run)
    results = []
    for members in groups.values():
        values = [run.best_val_top1 for run in members if run.best_val_top1 is not None]
        tests = [run.test_top1 for run in members if run.test_top1 is not None]
        results.append(SettingResult(
            members[0].settings, tuple(members), statistics.fmean(values) if values else None,
            statistics.stdev(values) if len(values) >= 2 else None,
            statistics.fmean(tests) if tests else None, None, False))
    order = sorted(range(len(results)), key=lambda i: (results[i].mean is None, -(results[i].mean or 0.0), i))
    means = [r.mean for r in results if r.mean is not None]
    ranked = []
    for index in order:
        result = results[index]
        rank = None if result.mean is None else 1 + sum(1 for m in means if m > result.mean)  # ties share a rank
        ranked.append(SettingResult(result.settings, result.runs, result.mean, result.std, result.test_mean,
                                    rank, rank == 1))
    return ranked


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)
