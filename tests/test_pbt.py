"""Population-based training: a live population that copies and perturbs, killed and resumed, its log, its
export replayed from scratch, the Sweeps view, the policy's arithmetic and the refusals."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifartui.cli import main
from cifartui.config import RunConfig, from_mapping
from cifartui.engine.orchestration.pbt import (best_member, choose_clone, explore, live_updates, member_schedule,
                                               minimum_population, perturb, quantile_count, rank_members, read_log,
                                               write_export)
from cifartui.engine.orchestration.search import Dimension
from cifartui.engine.runs.folders import read_metrics, read_status
from cifartui.engine.runs.settings import effective_config
from tests.app_helpers import run, wait_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# A member of a few steps an epoch; most of its time is its process starting.
TINY_PRESET = """
description = "a PBT member small enough to take seconds"
[dataset]
name = "synthetic"
classes = 4
train_size = 640
test_size = 32
val_fraction = 0.25
[model]
name = "cnn3"
[optimizer]
name = "sgd"
lr = 0.05
momentum = 0.9
[train]
epochs = 3
batch_size = 32
log_every = 1
checkpoint_minutes = 0.0
device = "cpu"
"""
SPACE = ["--space", "lr=log:1e-3..1e-1", "--space", "wd=log:1e-5..1e-3", "--space", "dropout=0.0..0.5"]


def _entries(sweep_dir: Path) -> list[dict]:
    queue = json.loads((sweep_dir / "queue.json").read_text())
    return [json.loads((sweep_dir / key / "entry.json").read_text()) for key in queue["entries"]]


def _event(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in read_metrics(run_dir) if e["event"] == kind]


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two members (quantile 0.5: the worse copies the better), every epoch; the driver is killed with -9
    once the first exploit is logged, then resumed to the end; the best schedule is exported and rerun.

    One member at a time: the second is then ranked against the first's results at each of its
    intervals, whatever the machine's load (run together, a member that starts seconds late would
    find the other past its last interval, with nothing to compare against). --seed 43 draws the
    first member a learning rate of 0.047 and the second 0.0011, so the second is clearly the
    worse after an epoch of 15 steps (35% against 23% validation top-1 on 160 images): members
    close to chance would rank by the noise of a few images, which float rounding can flip."""
    root = tmp_path_factory.mktemp("pbt")
    preset = root / "tiny.toml"
    preset.write_text(TINY_PRESET)
    runs_dir = root / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "cifartui.cli", "sweep", str(preset), "--runs-dir", str(runs_dir), "--pbt", "2",
         "--pbt-interval", "1", "--pbt-quantile", "0.5", "--parallel", "1", "--seed", "43", *SPACE],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    rows_at_kill: list[dict] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and driver.poll() is None:
            sweeps = list(runs_dir.glob("*-sweep-tiny"))
            if sweeps and read_log(sweeps[0]):
                os.kill(driver.pid, signal.SIGKILL)  # the driver dies at once; its members checkpoint and end
                driver.wait()
                rows_at_kill = read_log(sweeps[0])
                break
            time.sleep(0.05)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    output = driver.stdout.read() if driver.stdout else ""
    sweep_dir, = runs_dir.glob("*-sweep-tiny")
    assert rows_at_kill, f"no member exploited another before the end:\n{output}"
    table = root / "pbt.json"
    resumed = subprocess.run([sys.executable, "-m", "cifartui.cli", "sweep", "--resume", str(sweep_dir), "--json",
                              str(table)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert resumed.returncode == 0, resumed.stdout
    best = root / "best.toml"
    assert main(["sweep", "--pbt-export", str(sweep_dir), str(best)]) == 0
    # The best member's schedule is rerun; if it never copied another, that of the last member that did.
    exploited = [row["target"] for row in read_log(sweep_dir)]
    exported = best
    if best_member(sweep_dir) not in exploited:
        exported = root / "exploited.toml"
        write_export(sweep_dir, exported, key=exploited[-1])
    rerun_dir = root / "rerun"
    assert main(["train", str(exported), "--run-dir", str(rerun_dir)]) == 0
    return {"sweep": sweep_dir, "rows_at_kill": rows_at_kill, "table": json.loads(table.read_text()),
            "best": best, "exported": exported, "rerun": rerun_dir, "runs_dir": runs_dir}


def test_every_member_finished_once_each_run_of_it_stopped_or_finished_as_its_lineage_says(population: dict) -> None:
    sweep_dir = population["sweep"]
    rows = read_log(sweep_dir)
    for entry in _entries(sweep_dir):
        assert entry["state"] == "finished", entry
        member = sweep_dir / entry["key"]
        runs = sorted(child for child in member.iterdir() if (child / "config.json").is_file())
        statuses = [read_status(run_dir)["status"] for run_dir in runs]
        assert statuses.count("finished") == 1 and statuses[-1] == "finished"  # its newest run, and that one only
        assert entry["run_dir"] == runs[-1].name
        own = [row["run"] for row in rows if row["target"] == entry["key"]]
        assert [run_dir.name for run_dir in runs[1:]] == own  # every later run is an exploit's branch, in order
        assert len(_event(runs[-1], "RunFinished")) == 1


def test_log_rows_match_the_branches_their_parents_and_settings_changed(population: dict) -> None:
    sweep_dir = population["sweep"]
    rows = read_log(sweep_dir)
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    groups = plan["pbt"]["dropout_groups"]
    assert groups, "the recipe's model has dropout groups, searched as one rate"
    entries = {entry["key"]: entry for entry in _entries(sweep_dir)}
    settings = {key: entry["label"]["settings"] for key, entry in entries.items()}
    generations: dict[str, int] = {}
    for row in rows:
        assert set(row) >= {"time", "target", "clone", "target_epoch", "clone_epoch", "checkpoint", "old", "new",
                            "run", "clone_run"}
        assert row["target"] != row["clone"] and row["clone_epoch"] <= row["target_epoch"]
        assert row["target_epoch"] % plan["pbt"]["interval"] == 0
        generations[row["target"]] = generations.get(row["target"], 0) + 1
        assert row["generation"] == generations[row["target"]]  # one row per exploit, none twice
        assert row["old"] == settings[row["target"]]  # what the member trained with until then
        assert row["clone_settings"] == settings[row["clone"]]
        settings[row["target"]] = row["new"]
        for key, value in row["new"].items():  # each setting perturbed (x0.8, x1.2) or drawn again from --space
            old, space = row["clone_settings"][key], next(d for d in plan["pbt"]["space"] if d["key"] == key)
            assert value in (pytest.approx(old * 0.8), pytest.approx(old * 1.2)) or space["low"] <= value <= space["high"]
        clone_run = sweep_dir / row["clone"] / row["clone_run"]
        assert (clone_run / "checkpoints" / f"{row['checkpoint']}.pt").is_file()
        assert row["checkpoint"] == f"epoch-{row['clone_epoch']:04d}"
        branch = sweep_dir / row["target"] / row["run"]
        started = _event(branch, "RunStarted")[0]
        assert Path(started["parent"]) == clone_run and started["epoch"] == row["clone_epoch"]
        changed = [e for e in _event(branch, "SettingsChanged") if e["source"] == "branch"]
        assert len(changed) == 1 and changed[0]["epoch"] == row["clone_epoch"]
        expected = {k: v for k, v in live_updates(row["new"], groups).items()
                    if v != live_updates(row["clone_settings"], groups)[k]}
        assert {key: pair[1] for key, pair in changed[0]["changes"].items()} == pytest.approx(expected)
        config = from_mapping(RunConfig, json.loads((branch / "config.json").read_text()))
        replayed = effective_config(config, read_metrics(branch))
        assert replayed.optimizer.lr == pytest.approx(row["new"]["optimizer.lr"])
        assert replayed.optimizer.weight_decay == pytest.approx(row["new"]["optimizer.weight_decay"])
    members = {m["member"]: m for m in population["table"]["members"]}
    assert {key: m["settings"] for key, m in members.items()} == settings  # --json: the settings now


def test_a_killed_driver_resumes_without_deciding_again(population: dict) -> None:
    sweep_dir, at_kill = population["sweep"], population["rows_at_kill"]
    rows = read_log(sweep_dir)
    assert rows[:len(at_kill)] == at_kill  # the rows written before the kill stay, once each
    assert len({(row["target"], row["generation"]) for row in rows}) == len(rows)
    assert len({row["run"] for row in rows}) == len(rows)
    output = (sweep_dir / at_kill[0]["target"] / "output.log").read_text()
    assert output.count(f"--run-dir {sweep_dir / at_kill[0]['target'] / at_kill[0]['run']}") == 1  # branched once


def test_exported_schedule_reruns_the_same_settings_at_the_same_epochs(population: dict) -> None:
    sweep_dir, exported, rerun = population["sweep"], population["exported"], population["rerun"]
    preset = tomllib.loads(exported.read_text())
    groups = json.loads((sweep_dir / "sweep.json").read_text())["pbt"]["dropout_groups"]
    member = preset["name"].rsplit("-", 1)[-1]
    root, schedule = member_schedule(sweep_dir, member)
    assert preset["train"]["seed"] == json.loads((sweep_dir / root / "entry.json").read_text())["label"]["seed"]
    assert preset["optimizer"]["lr"] == pytest.approx(schedule[0][1]["optimizer.lr"])
    wanted = []
    for (_, before), (epoch, after) in zip(schedule, schedule[1:]):
        differ = {k: v for k, v in live_updates(after, groups).items() if live_updates(before, groups)[k] != v}
        if differ:
            wanted.append((epoch, differ))
    assert wanted, "the member rerun copied another at least once: its schedule changes settings"
    applied = [(e["epoch"], {k: pair[1] for k, pair in e["changes"].items()})
               for e in _event(rerun, "SettingsChanged") if e["source"] == "schedule"]
    assert [epoch for epoch, _ in applied] == [epoch for epoch, _ in wanted]
    for (_, got), (_, expected) in zip(applied, wanted):
        assert got == pytest.approx(expected)
    # The lineage's branches changed the same settings at the same epochs.
    rows = {(row["target"], row["run"]): row for row in read_log(sweep_dir)}
    branch_epochs = sorted({row["clone_epoch"] for row in rows.values()})
    assert {epoch for epoch, _ in applied} <= set(branch_epochs)
    assert read_status(rerun)["status"] == "finished"


def test_export_writes_the_best_members_schedule(population: dict) -> None:
    sweep_dir = population["sweep"]
    preset = tomllib.loads(population["best"].read_text())
    best = best_member(sweep_dir)
    assert preset["name"] == f"tiny-pbt-{best}"
    entries = {e["key"]: e for e in _entries(sweep_dir)}
    summaries = {key: json.loads((sweep_dir / key / "summary.json").read_text())["best_val_top1"] for key in entries}
    assert summaries[best] == max(summaries.values())
    assert "settings_schedule" in preset and "keep_every" in preset["train"] and preset["train"]["keep_every"] == 0


def test_sweeps_view_shows_members_settings_and_lineage_and_compares_their_runs(population: dict) -> None:
    from cifartui.ui.app import make_app
    from cifartui.ui.screens.compare import CompareScreen
    from cifartui.ui.screens.sweeps import SweepsScreen

    sweep_dir = population["sweep"]
    rows = read_log(sweep_dir)
    app = make_app(runs_dir=population["runs_dir"], offer_resume=False)
    seen: dict = {}

    async def scenario() -> None:
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.press("S")
            screen = app.screen
            assert isinstance(screen, SweepsScreen)
            await wait_for(pilot, lambda: screen.selected == sweep_dir and screen.selected_status() is not None
                           and sweep_dir in screen.members and screen.query_one("#sweep-queue").row_count == 2)
            table = screen.query_one("#sweep-queue")
            seen["columns"] = [str(column.label) for column in table.columns.values()]
            seen["rows"] = [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]
            seen["about"] = str(screen.query_one("#sweep-about").render())
            listed = screen.query_one("#sweeps-list")
            seen["listed"] = [str(cell) for cell in listed.get_row_at(0)]
            await pilot.press("v")
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
            seen["compared"] = list(app.screen.run_dirs)

    run(scenario())
    assert seen["columns"][:4] == ["member", "optimizer.lr", "optimizer.weight_decay", "model.dropout"]
    assert "population-based training" in seen["about"]
    for row in seen["rows"]:
        own = [r for r in rows if r["target"] == row[0]]
        settings = own[-1]["new"] if own else json.loads((sweep_dir / row[0] / "entry.json").read_text())["label"]["settings"]
        assert row[1] == f"{settings['optimizer.lr']:.4g}"
        lineage = row[seen["columns"].index("lineage")]
        assert all(f"copied {r['clone']} at epoch {r['clone_epoch']}" in lineage for r in own[-3:])
        assert own or lineage == "own start"
    summaries = {e["key"]: json.loads((sweep_dir / e["key"] / "summary.json").read_text())["best_val_top1"]
                 for e in _entries(sweep_dir)}
    leader = max(summaries, key=lambda key: summaries[key])  # the first of equals, as the view takes it
    own = [r for r in rows if r["target"] == leader]
    lead = own[-1]["new"] if own else json.loads((sweep_dir / leader / "entry.json").read_text())["label"]["settings"]
    assert f"lr={lead['optimizer.lr']:.4g}" in seen["listed"][5]  # the list shows the best member's settings now
    assert sorted(seen["compared"]) == sorted(sweep_dir / e["key"] / e["run_dir"] for e in _entries(sweep_dir))


# --- the policy -----------------------------------------------------------------------------------------


def test_quantiles_count_whole_members_and_name_the_smallest_population() -> None:
    assert [quantile_count(n, 0.25) for n in (3, 4, 7, 8)] == [0, 1, 1, 2]
    assert minimum_population(0.25) == 4 and minimum_population(0.5) == 2 and minimum_population(0.2) == 5


def test_ranking_and_clone_choice() -> None:
    scores = {"001": 40.0, "002": 10.0, "003": 40.0, "004": 90.0}
    assert rank_members(scores) == ["002", "001", "003", "004"]  # ties in key order, the lower key worse
    rng = random.Random(0)
    assert choose_clone("002", scores, 0.25, rng) == "004"
    assert choose_clone("001", scores, 0.25, rng) is None  # not in the worst quarter
    assert choose_clone("004", scores, 0.5, rng) is None
    assert {choose_clone("002", scores, 0.5, random.Random(s)) for s in range(20)} == {"003", "004"}
    assert choose_clone("002", {"002": 1.0, "004": 2.0}, 0.25, rng) is None  # too few results for a quarter


def test_explore_perturbs_or_resamples_reproducibly() -> None:
    dims = {"optimizer.lr": Dimension("optimizer.lr", "float", 1e-3, 1e-1, log=True),
            "model.dropout": Dimension("model.dropout", "float", 0.0, 0.5)}
    settings = {"optimizer.lr": 0.01, "model.dropout": 0.45, "optimizer.weight_decay": 1e-4}
    first = explore(settings, dims, random.Random(7))
    assert first == explore(settings, dims, random.Random(7))  # a seeded RNG gives the same settings
    perturbed = explore(settings, dims, random.Random(3), resample_probability=0.0)
    assert perturbed["optimizer.lr"] in (pytest.approx(0.008), pytest.approx(0.012))
    assert perturbed["model.dropout"] in (pytest.approx(0.36), 0.5)  # x1.2 is kept inside the space
    assert perturbed["optimizer.weight_decay"] in (pytest.approx(8e-5), pytest.approx(1.2e-4))
    drawn = [explore(settings, dims, random.Random(s), resample_probability=1.0) for s in range(30)]
    assert all(1e-3 <= d["optimizer.lr"] <= 1e-1 and 0.0 <= d["model.dropout"] <= 0.5 for d in drawn)
    assert len({d["optimizer.lr"] for d in drawn}) == 30
    assert all(d["optimizer.weight_decay"] in (pytest.approx(8e-5), pytest.approx(1.2e-4)) for d in drawn)  # no space
    choice = Dimension("train.batch_size", "choice", choices=(16, 32, 64))
    assert {perturb(32, choice, random.Random(s)) for s in range(20)} == {16, 64}
    assert perturb(64, choice, random.Random(1)) in (32, 64)


def test_live_updates_set_every_dropout_group() -> None:
    assert live_updates({"model.dropout": 0.3, "optimizer.lr": 0.1}, ["a", "b"]) == {
        "dropout.a": 0.3, "dropout.b": 0.3, "optimizer.lr": 0.1}


# --- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, words", [
    (["--pbt", "1", "--pbt-interval", "1"], ["--pbt", "'1'", "at least 2"]),
    (["--pbt", "0", "--pbt-interval", "1"], ["--pbt", "'0'", "at least 2"]),
    (["--pbt", "3", "--pbt-interval", "1"], ["'3'", "0.25", "at least 4 members"]),
    (["--pbt", "4", "--pbt-interval", "0"], ["--pbt-interval", "'0'", "expected 1 to 2"]),
    (["--pbt", "4", "--pbt-interval", "3"], ["--pbt-interval", "'3'", "3 epochs"]),
    (["--pbt", "4", "--pbt-interval", "5", "--pbt-epochs", "5"], ["--pbt-interval", "'5'", "5 epochs"]),
    (["--pbt", "4"], ["--pbt-interval", "needs --pbt-interval"]),
    (["--pbt", "4", "--pbt-interval", "1", "--pbt-quantile", "0.7"], ["--pbt-quantile", "'0.7'", "(0, 0.5]"]),
    (["--pbt", "4", "--pbt-interval", "1", "--grid", "optimizer.lr=0.1,0.2"], ["--grid", "cannot be combined"]),
    (["--pbt", "4", "--pbt-interval", "1", "--random", "3"], ["--random", "cannot be combined"]),
    (["--pbt", "4", "--pbt-interval", "1", "--seeds", "2"], ["--seeds", "cannot be combined"]),
    (["--pbt", "4", "--pbt-interval", "1", "--halving"], ["--halving", "cannot be combined"]),
    (["--pbt", "4", "--pbt-interval", "1", "--search", "tpe"], ["--search", "cannot be combined"]),
    (["--pbt", "4", "--pbt-interval", "1", "--space", "model.classifier_dropout=0.0..0.5"],
     ["model.classifier_dropout", "cannot change while a run trains"]),
    (["--pbt", "4", "--pbt-interval", "1", "--space", "train.epochs=int:2..5"], ["train.epochs", "not explored"]),
    (["--pbt-interval", "1"], ["--pbt-interval", "needs --pbt N"]),
])
def test_bad_pbt_requests_are_refused_naming_the_value_and_write_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], words: list[str]) -> None:
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY_PRESET)
    runs_dir = tmp_path / "runs"
    assert main(["sweep", str(preset), "--runs-dir", str(runs_dir), *extra]) == 2
    error = " ".join(capsys.readouterr().err.split())
    for word in words:
        assert word in error, (word, error)
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_settings_schedule_with_a_key_that_cannot_change_live_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "scheduled.toml"
    preset.write_text(TINY_PRESET + '\n[[settings_schedule]]\nepoch = 1\nset = ["model.name=\\"vgg\\""]\n')
    assert main(["train", str(preset), "--runs-dir", str(tmp_path / "runs")]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "settings_schedule[0]" in error and "model.name" in error and "cannot change while the run trains" in error
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_settings_schedule_naming_a_dropout_group_the_model_lacks_is_refused_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "scheduled.toml"
    preset.write_text(TINY_PRESET + '\n[[settings_schedule]]\nepoch = 1\nset = ["dropout.nowhere=0.2"]\n')
    assert main(["train", str(preset), "--runs-dir", str(tmp_path / "runs")]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "settings_schedule[0].set" in error and "dropout.nowhere" in error and "dense" in error
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_run_without_a_settings_schedule_writes_the_settings_earlier_versions_read() -> None:
    """Earlier versions refuse a config.json key they do not know: the schedule is written only when there is one."""
    from cifartui.config import ScheduledChange

    plain = RunConfig().to_dict()
    assert "settings_schedule" not in plain and from_mapping(RunConfig, plain, "config.json") == RunConfig()
    scheduled = RunConfig(settings_schedule=(ScheduledChange(epoch=2, set=("optimizer.lr=0.01",)),))
    written = scheduled.to_dict()
    assert written["settings_schedule"] == [{"epoch": 2, "set": ["optimizer.lr=0.01"]}]
    assert from_mapping(RunConfig, written, "config.json") == scheduled
