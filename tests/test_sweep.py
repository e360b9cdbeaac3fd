"""Sweeps and the run queue as a user drives them: grids over seeds, parallel runs, kill -9 and resume."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifartui import presets
from cifartui.cli import main
from cifartui.config import AugmentConfig, ConfigError, RunConfig, from_mapping, to_plain
from cifartui.engine.runs.checkpoint import load_checkpoint
from cifartui.engine.orchestration.queue import (EntryChanged, PlannedRun, QueueRunner, RunQueue, child_command, plan_slots,
                                  toml_document)
from cifartui.engine.runs.folders import RunLock, is_locked, read_metrics
from cifartui.engine.orchestration.sweep import SuccessiveHalving, write_plan
from tests.conftest import tiny_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Each run takes about a second of training; the rest of a run's time is its process starting.
TINY_PRESET = """
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
epochs = 1
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


def _only(folder: Path) -> Path:
    (child,) = [p for p in folder.iterdir() if p.is_dir()]
    return child


def _entries(sweep_dir: Path) -> list[dict]:
    queue = json.loads((sweep_dir / "queue.json").read_text())
    return [json.loads((sweep_dir / key / "entry.json").read_text()) for key in queue["entries"]]


def _starts(run_dir: Path) -> list[dict]:
    return [e for e in read_metrics(run_dir) if e["event"] == "RunStarted"]


@pytest.mark.slow
def test_two_by_two_grid_over_two_seeds_ranks_mean_and_std_of_the_runs(
        tmp_path: Path, preset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir, table = tmp_path / "runs", tmp_path / "table.json"
    code = main(["sweep", str(preset), "--runs-dir", str(runs_dir), "--grid", "optimizer.lr=0.05,0.2",
                 "--grid", "dataset.val_fraction=0.25,0.5", "--seeds", "2", "--parallel", "2",
                 "--json", str(table)])
    out = capsys.readouterr().out
    assert code == 0, out
    sweep_dir = _only(runs_dir)
    entries = _entries(sweep_dir)
    assert len(entries) == 8 and {e["state"] for e in entries} == {"finished"}

    # The expected table, from the runs' own files.
    by_setting: dict[tuple, list[float]] = {}
    for entry in entries:
        run_dir = sweep_dir / entry["key"] / entry["run_dir"]
        summary = json.loads((run_dir / "summary.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        assert config["train"]["seed"] == entry["label"]["seed"]
        setting = (config["optimizer"]["lr"], config["dataset"]["val_fraction"])
        assert setting == (entry["label"]["settings"]["optimizer.lr"],
                           entry["label"]["settings"]["dataset.val_fraction"])
        by_setting.setdefault(setting, []).append(summary["best_val_top1"])
    assert sorted(len(v) for v in by_setting.values()) == [2, 2, 2, 2]
    expected = {setting: (statistics.fmean(v), statistics.stdev(v)) for setting, v in by_setting.items()}

    result = json.loads(table.read_text())
    assert result["varied"] == ["optimizer.lr", "dataset.val_fraction"] and result["seeds"] == [0, 1]
    rows = result["settings"]
    assert len(rows) == 4
    for row in rows:
        mean, std = expected[(row["settings"]["optimizer.lr"], row["settings"]["dataset.val_fraction"])]
        assert row["best_val_top1_mean"] == pytest.approx(mean) and row["best_val_top1_std"] == pytest.approx(std)
        assert row["rank"] == 1 + sum(1 for m, _ in expected.values() if m > mean + 1e-9)  # equal means share one
        assert row["best"] == (row["rank"] == 1)
    means = [row["best_val_top1_mean"] for row in rows]
    assert means == sorted(means, reverse=True) and means[0] == pytest.approx(max(m for m, _ in expected.values()))
    assert f"{rows[0]['best_val_top1_mean']:.2f} ± {rows[0]['best_val_top1_std']:.2f}%" in out and "★ 1" in out

    # --parallel 2: the runs' lifetimes (first to last event each wrote) overlap, never more than two at once.
    spans = []
    for entry in entries:
        events = read_metrics(sweep_dir / entry["key"] / entry["run_dir"])
        spans.append((events[0]["time"], events[-1]["time"]))
    moments = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running, most = 0, 0
    for _, change in moments:
        running += change
        most = max(most, running)
    assert most == 2


def test_invalid_grids_are_refused_before_any_run_directory(tmp_path: Path, preset: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir = tmp_path / "runs"
    cases = [
        (["--grid", "optimizer.lrate=0.1,0.2"], "'optimizer.lrate': unknown key"),
        (["--grid", "optimizer.lr=0.1,fast"], "'optimizer.lr': expected a number, got 'fast'"),
        (["--grid", "train.batch_size=32,0.5"], "'train.batch_size': expected an integer, got 0.5"),
        (["--grid", "optimizer.lr="], "'optimizer.lr': empty list of values"),
        (["--grid", "optimizer.momentum=0.5,1.5"], "'optimizer.momentum': 1.5 is out of range"),
        (["--random", "3", "--range", "optimizer.lr=0.1-0.2"], "'optimizer.lr': '0.1-0.2': expected KEY=LOW:HIGH"),
        (["--random", "3", "--range", "optimizer.lr=0:0.1:log"], "a log range needs LOW > 0"),
        (["--range", "optimizer.lr=0.01:0.1"], "needs --random N"),
        (["--grid", "model.name=cnn3,nosuchnet"], "unknown model 'nosuchnet'"),
        (["--grid", "train.seed=1,2"], "use --seeds K"),
        (["--seeds", "2", "--parallel", "0"], "--parallel"),
    ]
    for extra, message in cases:
        assert main(["sweep", str(preset), "--runs-dir", str(runs_dir), *extra]) == 2, extra
        error = " ".join(capsys.readouterr().err.split())
        assert message in error, (extra, error)
        assert "Traceback" not in error
    assert not runs_dir.exists()


def _small(**train: object) -> RunConfig:
    """tiny_config with fewer images and no augmentation: a run of a few steps per epoch."""
    config = tiny_config(**train)
    return dataclasses.replace(config, augment=AugmentConfig(),
                               dataset=dataclasses.replace(config.dataset, train_size=128, test_size=64))


def _queue(directory: Path, configs: list[RunConfig], **settings: object) -> RunQueue:
    directory.mkdir(parents=True)
    write_plan(directory, {"preset": "tiny", "varied": [], "seeds": [0], "halving": None})
    runs = [PlannedRun(config, {"settings": {}, "seed": config.train.seed}) for config in configs]
    return RunQueue.create(directory, runs, kind="sweep", device="cpu", **settings)


def test_a_second_process_cannot_drive_the_same_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir = tmp_path / "sweep"
    _queue(sweep_dir, [tiny_config()])
    with RunLock(sweep_dir):  # as a live `sweep --resume` holds it
        assert main(["sweep", "--resume", str(sweep_dir)]) == 2
    assert "is being run right now by process" in capsys.readouterr().err
    assert _entries(sweep_dir)[0]["state"] == "pending" and not any((sweep_dir / "001").glob("*/config.json"))
    assert main(["sweep", "--resume", str(sweep_dir), "--grid", "optimizer.lr=0.1,0.2"]) == 2
    assert "keeps its plan; --grid cannot change it" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "sweep.json: missing; is" in " ".join(capsys.readouterr().err.split())


def _position(run_dir: Path) -> tuple[int, int]:
    """(last step the run reported, steps per epoch) from its metrics.jsonl."""
    events = read_metrics(run_dir)
    per_epoch = next((e["steps_per_epoch"] for e in events if e["event"] == "RunStarted"), 0)
    steps = [e["step"] for e in events if e["event"] == "StepMetrics"]
    return (steps[-1] if steps else 0), per_epoch


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_runs_and_bit_identical(
        tmp_path: Path, preset: Path) -> None:
    runs_dir = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads for the reference as for the sweep's runs
    # 15 steps an epoch; the first run trains one epoch, the second three.
    sweep = subprocess.Popen(
        [sys.executable, "-m", "cifartui.cli", "sweep", str(preset), "--runs-dir", str(runs_dir),
         "--set", "dataset.train_size=640", "--grid", "train.epochs=1,3", "--parallel", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sweep_dirs = list(runs_dir.glob("*/queue.json")) if runs_dir.exists() else []
            if sweep_dirs:
                sweep_dir = sweep_dirs[0].parent
                first, second = _entries(sweep_dir)
                if (sweep_dir / "001" / "summary.json").exists() and second["run_dir"]:
                    step, per_epoch = _position(sweep_dir / "002" / second["run_dir"])
                    # Mid-epoch: the run's process checkpoints at its next step and exits.
                    if per_epoch and 3 <= step % per_epoch <= per_epoch - 5:
                        break
            assert sweep.poll() is None, sweep.stdout.read()
            time.sleep(0.01)
        else:
            pytest.fail("the sweep did not get going")
        sweep.kill()  # kill -9: no chance to tell its runs anything
        sweep.wait(timeout=30)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    first = _entries(sweep_dir)[0]
    first_run = sweep_dir / "001" / first["run_dir"]
    second_run = sweep_dir / "002" / second["run_dir"]
    finished_summary = (first_run / "summary.json").read_bytes()
    assert _entries(sweep_dir)[1]["state"] == "running"  # as the dead sweep left it
    assert first["run_dir"] and (first_run / "summary.json").exists()

    # The uninterrupted reference, from the very recipe the sweep froze for that run.
    reference = subprocess.Popen([sys.executable, "-m", "cifartui.cli", "train", str(sweep_dir / "002" / "config.toml"),
                                  "--runs-dir", str(tmp_path / "reference"), "--device", "cpu"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    # The run's process outlives the sweep only to write a checkpoint (Linux tells it the parent died).
    deadline = time.monotonic() + 60
    while is_locked(second_run) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_locked(second_run)
    assert json.loads((second_run / "status.json").read_text())["status"] == "stopped"
    interrupted_at = load_checkpoint(second_run / "checkpoints" / "last.pt")["progress"]["step"]
    assert interrupted_at >= 2

    # While another process holds the run (a run still shutting down, or resumed by hand), the sweep waits.
    holder = RunLock(second_run).acquire()
    try:
        resumed = subprocess.Popen([sys.executable, "-m", "cifartui.cli", "sweep", "--resume", str(sweep_dir)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + 60
        while _entries(sweep_dir)[1]["state"] != "waiting" and time.monotonic() < deadline:
            assert resumed.poll() is None, resumed.stdout.read()
            time.sleep(0.05)
        assert _entries(sweep_dir)[1]["state"] == "waiting"
        time.sleep(1.0)
        assert len(_starts(second_run)) == 1
    finally:
        holder.release()
    out, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out
    assert reference.wait(timeout=180) == 0, reference.stderr.read()

    assert [e["state"] for e in _entries(sweep_dir)] == ["finished", "finished"]
    assert len(_starts(first_run)) == 1 and (first_run / "summary.json").read_bytes() == finished_summary
    starts = _starts(second_run)
    assert len(starts) == 2 and starts[1]["resumed"] is True
    a = load_checkpoint(_only(tmp_path / "reference") / "checkpoints" / "last.pt")
    b = load_checkpoint(second_run / "checkpoints" / "last.pt")
    assert b["progress"]["step"] == a["progress"]["step"] > interrupted_at
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for index, slot in a["optimizer"]["state"].items():
        for name, value in slot.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name])
    assert "★ 1" in out


def test_a_run_stopped_early_keeps_its_checkpoint_and_resumes_by_hand(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    queue = _queue(sweep_dir, [_small(epochs=2)])
    queue.lock()
    judged = []

    def stop_after_first_epoch(entry: object) -> str | None:
        judged.append(entry.progress.epochs_done)
        return "halving at epoch 1" if entry.progress.epochs_done == 1 else None

    QueueRunner(queue, ["cpu"], on_epoch=stop_after_first_epoch, poll_s=0.05).run()
    queue.unlock()
    (entry,) = _entries(sweep_dir)
    assert entry["state"] == "stopped" and entry["message"] == "halving at epoch 1" and entry["exit_code"] == 143
    run_dir = sweep_dir / "001" / entry["run_dir"]
    assert judged[0] == 1 and json.loads((run_dir / "status.json").read_text())["status"] == "stopped"
    stopped_at = load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["step"]
    assert main(["resume", str(run_dir)]) == 0
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["step"] > stopped_at
    # A later drive of the sweep leaves a stopped run alone.
    assert RunQueue.open(sweep_dir).entries[0].state == "stopped"


def test_successive_halving_stops_the_worse_half_at_each_rung() -> None:
    halving = SuccessiveHalving(first_rung=1)
    assert halving.rungs(8) == [1, 2, 4] and halving.rungs(1) == []
    curves = {"a": {1: 50.0, 2: 60.0}, "b": {1: 40.0}, "c": {1: 55.0, 2: 58.0}, "d": {1: 52.0, 2: 70.0}}

    def best(key: str):  # noqa: ANN202
        return lambda epochs: max(v for e, v in curves[key].items() if e <= epochs)

    assert halving.judge("a", best("a"), 1, 8) is None  # the first at a rung goes on
    assert "ranks 2 of 2" in halving.judge("b", best("b"), 1, 8)
    assert halving.judge("c", best("c"), 1, 8) is None  # 55 is the best of 50, 40, 55
    assert halving.judge("d", best("d"), 1, 8) is None  # 52 ranks 2 of 4: the best two go on
    assert halving.judge("a", best("a"), 2, 8) is None
    assert "ranks 2 of 2" in halving.judge("c", best("c"), 2, 8)
    assert halving.judge("d", best("d"), 2, 8) is None  # 70 ranks 1 of 3
    # A resumed sweep remembers rungs already passed and does not judge them again.
    again = SuccessiveHalving(1)
    again.remember("a", best("a"), 2, 8)
    assert again.records == {1: {"a": 50.0}, 2: {"a": 60.0}}
    assert again.judge("a", best("a"), 2, 8) is None and "ranks 2 of 2" in again.judge("b", best("b"), 1, 8)


def test_halving_needs_a_validation_split_and_a_rung_before_the_end(
        tmp_path: Path, preset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["sweep", str(preset), "--runs-dir", str(tmp_path / "runs"), "--seeds", "2"]
    assert main([*base, "--set", "dataset.val_fraction=0.0", "--halving"]) == 2
    assert "expected a validation split" in capsys.readouterr().err
    assert main([*base, "--halving"]) == 2  # one epoch: nothing to halve
    assert "the first rung (epoch 1) is not before the end of the runs" in capsys.readouterr().err


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_placement_without_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert plan_slots("auto") == ["cpu"] and plan_slots("cpu", parallel=3) == ["cpu"] * 3
    for device, devices, message in [("cuda", None, "no CUDA GPU is visible"),
                                     ("auto", "0", "names GPUs, but the runs go to the CPU"),
                                     ("tpu", None, "unknown device 'tpu'")]:
        with pytest.raises(ConfigError, match=message):
            plan_slots(device, devices)


def test_placement_spreads_runs_over_the_gpus(two_gpus: None) -> None:
    assert plan_slots("auto") == ["cuda:0", "cuda:1"]
    assert plan_slots("cuda", parallel=2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert plan_slots("auto", "1") == ["cuda:1"] and plan_slots("auto", "cuda:1,cuda:0") == ["cuda:1", "cuda:0"]
    assert plan_slots("cuda:1", parallel=2) == ["cuda:1", "cuda:1"]
    assert plan_slots("cpu") == ["cpu"]
    for device, devices, message in [("auto", "2", "no GPU 2: 2 visible"), ("auto", "0,0", "named twice"),
                                     ("auto", "x", "'x' is not a GPU"), ("cuda:2", None, "no such GPU"),
                                     ("cuda:0", "1", "conflicts with device 'cuda:0'")]:
        with pytest.raises(ConfigError, match=message):
            plan_slots(device, devices)


STUB_CHILD = """#!/bin/sh
# Stands in for `python -m cifartui.cli train ...`: notes its device and lifetime, then "finishes".
shift 2
device="" summary=""
while [ $# -gt 0 ]; do
  case "$1" in --device) device="$2"; shift;; --summary-json) summary="$2"; shift;; esac
  shift
done
echo "start $device $(date +%s.%N)" >> "$LOG"
sleep 0.4
echo "end $device $(date +%s.%N)" >> "$LOG"
echo '{"best_val_top1": 50.0}' > "$summary"
"""


def test_runs_are_placed_one_per_gpu_slot(tmp_path: Path, two_gpus: None, monkeypatch: pytest.MonkeyPatch) -> None:
    stub, log = tmp_path / "stub.sh", tmp_path / "log"
    stub.write_text(STUB_CHILD)
    stub.chmod(0o755)
    monkeypatch.setenv("LOG", str(log))
    queue = _queue(tmp_path / "sweep", [tiny_config(seed=seed) for seed in range(5)])
    queue.lock()
    slots = plan_slots("auto", parallel=1)
    QueueRunner(queue, slots, python=str(stub), poll_s=0.02).run()
    assert [e.state for e in queue.entries] == ["finished"] * 5
    assert child_command(queue.entries[1], "cuda:1")[3:5] == ["train", str(queue.entries[1].config_path)]
    events = sorted((float(t), kind, device) for kind, device, t in (line.split() for line in log.read_text().splitlines()))
    busy: dict[str, int] = {"cuda:0": 0, "cuda:1": 0}
    for _, kind, device in events:
        busy[device] += 1 if kind == "start" else -1
        assert busy[device] <= 1  # one run at a time on each GPU
    assert sorted(e.device for e in queue.entries[:2]) == ["cuda:0", "cuda:1"]


STUB_UNTIL_STOPPED = """#!/bin/sh
# Stands in for a run that goes on until it is told to stop, and then exits as `cifartui train` does.
trap 'exit 143' TERM
while :; do sleep 0.05; done
"""


def test_stopping_the_queue_stops_each_run_and_leaves_it_to_resume(tmp_path: Path) -> None:
    stub = tmp_path / "stub.sh"
    stub.write_text(STUB_UNTIL_STOPPED)
    stub.chmod(0o755)
    queue = _queue(tmp_path / "sweep", [tiny_config(seed=seed) for seed in range(3)])
    queue.lock()
    started: list[str] = []

    def listener(event: object) -> None:
        if isinstance(event, EntryChanged) and event.new == "running":
            started.append(event.key)
            if len(started) == 2:
                runner.stop()  # what the sweep's handler of SIGINT, SIGTERM and SIGHUP does

    runner = QueueRunner(queue, ["cpu", "cpu"], python=str(stub), listener=listener, poll_s=0.02)
    runner.run()
    assert [e.state for e in queue.entries] == ["interrupted", "interrupted", "pending"]
    assert [e.exit_code for e in queue.entries[:2]] == [143, 143]
    assert [e["state"] for e in _entries(tmp_path / "sweep")] == ["interrupted", "interrupted", "pending"]


def test_live_table_shows_each_run_with_its_settings(tmp_path: Path) -> None:
    from rich.console import Console

    from cifartui.cli.sweep import SweepDisplay

    configs = [tiny_config(seed=seed) for seed in range(2)]
    directory = tmp_path / "sweep"
    directory.mkdir()
    runs = [PlannedRun(config, {"settings": {"optimizer.lr": lr}, "seed": config.train.seed})
            for config, lr in zip(configs, (0.1, 0.01))]
    queue = RunQueue.create(directory, runs, kind="sweep", device="cpu")
    queue.entries[0].state, queue.entries[0].device = "running", "cuda:1"
    queue.entries[0].progress.epochs_done, queue.entries[0].progress.val_top1[1] = 1, 42.5
    console = Console(record=True, width=100, height=30, force_terminal=True)
    console.print(SweepDisplay(console, queue, {"varied": ["optimizer.lr"]}).render())
    text = console.export_text()
    assert "optimizer.lr" in text and "best val top-1" in text
    assert any("001" in line and "0.1" in line and "cuda:1" in line and "running" in line and "1/2" in line
               and "42.50%" in line for line in text.splitlines())
    assert any("002" in line and "pending" in line for line in text.splitlines())
    assert "1 pending, 1 running" in text


def test_frozen_recipes_read_back_exactly() -> None:
    for name in presets.available():
        config = presets.load(name)
        text = toml_document(to_plain(config))
        assert from_mapping(RunConfig, tomllib.loads(text)) == config, name
    odd = tiny_config()
    odd = from_mapping(RunConfig, {**to_plain(odd), "description": 'quote " backslash \\ tab \t del \x7f é'})
    assert from_mapping(RunConfig, tomllib.loads(toml_document(to_plain(odd)))) == odd


def test_reading_a_queue_needs_neither_textual_nor_torch() -> None:
    code = ("import sys\nimport cifartui.engine.orchestration.queue, cifartui.engine.orchestration.sweep\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'torch')))\n")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
