"""Model-based search (Optuna): a study of trials that are runs of the queue, pruned, killed and resumed."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cifartui.cli import main
from cifartui.engine.orchestration.search import SearchRequest, create_search, open_study, plan_search
from cifartui.engine.orchestration.sweep import read_plan
from cifartui.engine.runs.folders import read_metrics
from cifartui.presets import load

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# A trial of a few steps an epoch; most of a trial's time is its process starting.
TINY_PRESET = """
description = "a search's trial small enough to take seconds"
[dataset]
name = "synthetic"
classes = 4
train_size = 128
test_size = 32
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


@pytest.fixture
def preset(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_PRESET)
    return path


def _entries(sweep_dir: Path) -> list[dict]:
    queue = json.loads((sweep_dir / "queue.json").read_text())
    return [json.loads((sweep_dir / key / "entry.json").read_text()) for key in queue["entries"]]


def _study(sweep_dir: Path) -> optuna.Study:
    return open_study(sweep_dir, read_plan(sweep_dir))


def _starts(run_dir: Path) -> list[dict]:
    return [e for e in read_metrics(run_dir) if e["event"] == "RunStarted"]


def test_killed_search_resumes_each_trial_once_and_ranks_as_the_runs_files_say(tmp_path: Path, preset: Path) -> None:
    runs_dir, table = tmp_path / "runs", tmp_path / "table.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "cifartui.cli", "sweep", str(preset), "--runs-dir", str(runs_dir), "--trials", "3",
         "--space", "lr=log:1e-3..1e-1", "--space", "wd=log:1e-5..1e-3", "--space", "dropout=0.0..0.5",
         # 36 steps an epoch: the second trial is still in its last epoch when its driver dies (with a few
         # steps it could end before the stop reached it, and nothing would be left to resume)
         "--set", "dataset.train_size=1536"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            found = list(runs_dir.glob("*/queue.json")) if runs_dir.exists() else []
            if found:
                sweep_dir = found[0].parent
                entries = _entries(sweep_dir)
                # The second trial has ended an epoch (its checkpoint is written) and goes on.
                if len(entries) == 2 and entries[1]["run_dir"]:
                    run = sweep_dir / "002" / entries[1]["run_dir"]
                    if any(e["event"] == "EpochEnded" for e in read_metrics(run)):
                        break
            assert driver.poll() is None, driver.stdout.read()
            time.sleep(0.02)
        else:
            pytest.fail("the search did not get going")
        driver.kill()  # kill -9: neither the study nor the runs hear of it
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    study = _study(sweep_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    plan = read_plan(sweep_dir)
    assert plan["search"]["sampler"] == "tpe" and plan["varied"] == [
        "optimizer.lr", "optimizer.weight_decay", "model.dropout"]
    # The trial's run, told to stop as its driver died, checkpoints; the resumed search waits for it.
    assert main(["sweep", "--resume", str(sweep_dir), "--json", str(table)]) == 0

    study = _study(sweep_dir)
    assert len(study.trials) == 3 and {t.state for t in study.trials} == {TrialState.COMPLETE}
    entries = _entries(sweep_dir)
    assert sorted(e["label"]["trial"] for e in entries) == [0, 1, 2]
    assert [e["state"] for e in entries] == ["finished"] * 3
    starts = [_starts(sweep_dir / e["key"] / e["run_dir"]) for e in entries]
    assert [len(s) for s in starts] == [1, 2, 1] and starts[1][1]["resumed"] is True
    result = json.loads(table.read_text())
    assert len(result["trials"]) == 3 and result["metric"] == "best_val_top1"
    for row in result["trials"]:
        entry = next(e for e in entries if e["label"]["trial"] == row["trial"])
        run_dir = sweep_dir / entry["key"] / entry["run_dir"]
        summary = json.loads((run_dir / "summary.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        assert row["value"] == pytest.approx(summary["best_val_top1"])
        assert study.trials[row["trial"]].value == pytest.approx(summary["best_val_top1"])
        assert config["optimizer"]["lr"] == pytest.approx(row["settings"]["optimizer.lr"])
        assert config["model"]["dropout"] == [pytest.approx(row["settings"]["model.dropout"])] * 4
        assert row["rank"] == 1 + sum(1 for other in result["trials"] if other["value"] > row["value"] + 1e-9)
    values = [row["value"] for row in result["trials"]]
    assert values == sorted(values, reverse=True)


def test_asha_prunes_a_clearly_worse_trial_at_its_rung_while_the_others_go_on(
        tmp_path: Path, preset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # identical settings give identical accuracies
    # Four epochs of 36 steps, rungs at 1 and 4 (the end): the driver reads a run's metrics every half
    # second, and a trial of a few steps an epoch could end all its epochs between two reads; it must
    # see the bad trial below its first rung before the trial ends.
    base = load(str(preset))
    base = dataclasses.replace(base, train=dataclasses.replace(base.train, epochs=4),
                               dataset=dataclasses.replace(base.dataset, train_size=1536))
    # Two classes or ten: at chance, the ten-class arm's accuracy is clearly worse from its first epoch.
    plan, base = plan_search(base, SearchRequest(space=("dataset.classes=2,10",), trials=4, pruner="asha",
                                                   reduction_factor=4))
    queue = create_search(tmp_path / "runs", plan, base, device="cpu", parallel=2)
    study = _study(queue.directory)
    for classes in (2, 2, 10, 2):  # the bad arm third, when two trials have passed the first rung
        study.enqueue_trial({"dataset.classes": classes})
    table = tmp_path / "table.json"
    assert main(["sweep", "--resume", str(queue.directory), "--json", str(table)]) == 0

    study = _study(queue.directory)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED, TrialState.COMPLETE]
    entries = {e["label"]["trial"]: e for e in _entries(queue.directory)}
    bad = entries[2]
    assert bad["state"] == "stopped" and re.match(r"pruned at epoch [123] by asha", bad["message"]), bad
    bad_run = queue.directory / bad["key"] / bad["run_dir"]
    bad_epochs = [e for e in read_metrics(bad_run) if e["event"] == "EpochEnded"]
    assert len(bad_epochs) < base.train.epochs and (bad_run / "checkpoints" / "last.pt").is_file()
    good_at_rung = [study.trials[n].intermediate_values[1] for n in (0, 1)]
    assert study.trials[2].intermediate_values[1] < min(good_at_rung)
    for number in (0, 1, 3):
        run = queue.directory / entries[number]["key"] / entries[number]["run_dir"]
        assert entries[number]["state"] == "finished"
        assert len([e for e in read_metrics(run) if e["event"] == "EpochEnded"]) == base.train.epochs
    rows = json.loads(table.read_text())["trials"]
    assert [row["state"] for row in rows] == ["complete"] * 3 + ["pruned"]


def test_bad_search_options_are_refused_before_anything_is_written(
        tmp_path: Path, preset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir = tmp_path / "runs"
    space = ["--space", "lr=log:1e-3..1e-1"]
    cases = [
        (["--trials", "3", "--space", "lr=1e-3-1e-1"], "'lr=1e-3-1e-1': expected a range LOW..HIGH or at least"),
        (["--trials", "3", "--space", "lr"], "'lr': expected KEY=LOW..HIGH"),
        (["--trials", "3", "--space", "lr=0.1..0.01"], "empty range '0.1..0.01': expected LOW < HIGH"),
        (["--trials", "3", "--space", "lr=0.1..0.1"], "empty range '0.1..0.1'"),
        (["--trials", "3", "--space", "lr=log:0..0.1"], "a log range needs LOW > 0, got 0"),
        (["--trials", "3", "--space", "optimizer.lrate=0.01..0.1"], "'optimizer.lrate': unknown key"),
        (["--trials", "3", "--space", "train.batch_size=16..64"], "an integer setting; expected int:16..64"),
        (["--trials", "3", "--space", "train.batch_size=int:16..6.5"], "int: needs whole numbers"),
        (["--trials", "3", "--space", "optimizer.momentum=0.5..1.5"], "1.5 is out of range"),
        (["--trials", "3", "--space", "lr=0.1,0.1"], "choice 0.1 is listed twice"),
        (["--trials", "0", *space], "--trials: '0': expected a positive number of trials"),
        (space, "a search needs --trials N"),
        (["--trials", "3", "--search", "tpe"], "a search needs at least one --space"),
        (["--trials", "3", "--search", "bayes", *space], "'bayes': unknown sampler; expected one of tpe, cmaes"),
        (["--trials", "3", "--pruner", "median", *space], "'median': unknown pruner"),
        (["--trials", "3", "--search", "tpe", "--grid", "optimizer.lr=0.1,0.2", *space],
         "--grid: cannot be combined with --search"),
        (["--trials", "3", "--halving", *space], "use --pruner asha"),
        (["--trials", "3", "--pruner", "asha", "--pruner-min-epochs", "2", *space], "the first rung is not before"),
        (["--trials", "3", "--pruner", "asha", "--set", "dataset.val_fraction=0.0", *space],
         "expected a validation split"),
        (["--trials", "3", "--lr", "0.1", *space], "also set by --lr"),
    ]
    for extra, message in cases:
        assert main(["sweep", str(preset), "--runs-dir", str(runs_dir), *extra]) == 2, extra
        error = " ".join(capsys.readouterr().err.split())
        assert message in error, (extra, error)
        assert "Traceback" not in error
    assert not runs_dir.exists()


def test_space_forms_map_to_optuna_distributions(preset: Path) -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from cifartui.engine.orchestration.search import Dimension

    plan, _ = plan_search(load(str(preset)), SearchRequest(
        space=("lr=log:1e-3..1e-1", "wd=0.0..1e-3", "train.batch_size=int:16..64", "optimizer.name=sgd,adam",
               "dropout=0.0..0.5"), trials=5, sampler="cmaes"))
    dims = [Dimension.from_dict(d).distribution() for d in plan["search"]["space"]]
    assert dims == [FloatDistribution(1e-3, 1e-1, log=True), FloatDistribution(0.0, 1e-3),
                    IntDistribution(16, 64), CategoricalDistribution(["sgd", "adam"]), FloatDistribution(0.0, 0.5)]
    assert plan["varied"] == ["optimizer.lr", "optimizer.weight_decay", "train.batch_size", "optimizer.name",
                              "model.dropout"]
    assert plan["search"]["dropout_groups"] == 4  # cnn3's four dropout groups take the one rate drawn


def test_a_search_without_optuna_installed_says_what_to_install(
        tmp_path: Path, preset: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cmaes", None)  # as if it were not installed: its import fails
    runs_dir = tmp_path / "runs"
    assert main(["sweep", str(preset), "--runs-dir", str(runs_dir), "--search", "cmaes", "--trials", "2",
                 "--space", "lr=log:1e-3..1e-1"]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "needs the cmaes package" in error and "pip install 'cifartui[search]'" in error
    assert not runs_dir.exists()


@pytest.mark.parametrize("pruner", ["asha", "hyperband"])
def test_each_pruner_stops_a_trial_whose_reported_epoch_ranks_low(tmp_path: Path, preset: Path, pruner: str) -> None:
    from cifartui.engine.orchestration.search import Search

    plan, base = plan_search(load(str(preset)), SearchRequest(
        space=("lr=log:1e-3..1e-1", "dataset.classes=2,4"), trials=3, sampler="cmaes", pruner=pruner))
    queue = create_search(tmp_path / "runs", plan, base, device="cpu")
    search = Search(queue, plan)
    entries = [search.ask() for _ in range(3)]  # the queue's entries; no run is started here
    assert [e.label["trial"] for e in entries] == [0, 1, 2] and search.trials_left() == 0
    assert [e["key"] for e in _entries(queue.directory)] == ["001", "002", "003"]
    for entry, accuracy in zip(entries, (80.0, 75.0, 20.0)):  # what each run's first EpochEnded would say
        entry.progress.epochs_done, entry.progress.val_top1[1] = 1, accuracy
    verdicts = [search.on_epoch(entry) for entry in entries]
    assert verdicts[0] is None  # the first at the rung goes on
    assert verdicts[2] is not None and verdicts[2].startswith(f"pruned at epoch 1 by {pruner}: val top-1 20.00%")
    study = _study(queue.directory)
    assert [t.intermediate_values for t in study.trials] == [{1: 80.0}, {1: 75.0}, {1: 20.0}]
    for number, entry in enumerate(entries):
        config = tomllib.loads(entry.config_path.read_text())
        assert config["optimizer"]["lr"] == pytest.approx(study.trials[number].params["optimizer.lr"])
        assert config["dataset"]["classes"] == study.trials[number].params["dataset.classes"]
