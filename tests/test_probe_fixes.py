"""Hostile inputs to the control channel, queues and command line: each gets a message, never a traceback."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from cifartui.cli import main
from cifartui.engine.runs import events as ev
from cifartui.engine.train.trainer import RunControl, Trainer
from tests.conftest import tiny_config
from tests.sweep_helpers import fake_sweep
from tests.test_trainer import Recorder


@pytest.mark.parametrize("field", ["epochs", "attempts", "nodes_lost"])
def test_an_infinite_number_in_a_sweep_entry_is_named_not_a_traceback(
        tmp_path: Path, field: str, capsys: pytest.CaptureFixture[str]) -> None:
    # JSON readers take 1e999 as infinity, which int() cannot convert (OverflowError, not ValueError).
    sweep_dir = fake_sweep(tmp_path, "20260101-120000-sweep-tiny", values=(0.02,), seeds=(0,))
    entry_path = sweep_dir / "001" / "entry.json"
    entry = json.loads(entry_path.read_text())
    entry[field] = "INFINITY"
    entry_path.write_text(json.dumps(entry).replace('"INFINITY"', "1e999"))

    assert main(["sweep", "--resume", str(sweep_dir), "--device", "cpu"]) == 2
    assert f"{entry_path}: damaged" in capsys.readouterr().err

    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    assert f"{entry_path}: damaged" in capsys.readouterr().err


def test_a_checkpoint_that_meets_a_really_full_device_pauses_the_run_instead_of_failing_it(tmp_path: Path) -> None:
    # torch's own writer reports a full disk as RuntimeError("unexpected pos ...") with no OSError
    # behind it; /dev/full answers every write with ENOSPC, as a full filesystem does.
    if not Path("/dev/full").exists():
        pytest.fail("this test needs /dev/full (Linux)")
    control, recorder = RunControl(), Recorder()
    run_dir = tmp_path / "run"
    temporary = run_dir / "checkpoints" / f".last.pt.{os.getpid()}.tmp"

    def fill_the_disk_once_training_runs(event: ev.Event) -> None:
        recorder(event)
        if isinstance(event, ev.StepMetrics) and not recorder.of(ev.CheckpointFailed):
            temporary.parent.mkdir(parents=True, exist_ok=True)
            if not temporary.is_symlink():
                temporary.symlink_to("/dev/full")

    trainer = Trainer(tiny_config(epochs=2), run_dir, listeners=[fill_the_disk_once_training_runs], control=control)
    thread = trainer.start()
    deadline = time.monotonic() + 60
    while not recorder.of(ev.RunPaused) and thread.is_alive():
        assert time.monotonic() < deadline, "timed out waiting for the pause"
        time.sleep(0.01)
    assert not recorder.of(ev.RunFailed), recorder.of(ev.RunFailed)
    (failed,) = recorder.of(ev.CheckpointFailed)
    assert "No space left on device" in failed.error and "No checkpoint of this run is on disk yet" in failed.error
    assert "previous checkpoint is intact" not in failed.error
    assert not temporary.is_symlink() and not temporary.exists()  # the half-written file is gone
    control.resume()  # space was freed: the next write goes through
    thread.join(60)
    assert trainer.result.status == "finished"


TINY_PRESET = """
description = "a run small enough to take seconds"
[dataset]
name = "synthetic"
classes = 4
train_size = 160
test_size = 64
val_fraction = 0.25
[model]
name = "cnn3"
[train]
epochs = 2
batch_size = 32
log_every = 1
checkpoint_minutes = 0.0
device = "cpu"
"""


def test_a_headless_run_stopped_by_a_full_disk_before_its_first_checkpoint_does_not_offer_a_resume(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/dev/full").exists():
        pytest.fail("this test needs /dev/full (Linux)")
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY_PRESET)
    run_dir = tmp_path / "run"
    temporary = run_dir / "checkpoints" / f".last.pt.{os.getpid()}.tmp"
    stop = threading.Event()

    def keep_the_disk_full_once_the_run_started() -> None:  # after the start, which clears leftover temporary files
        started = False
        while not stop.is_set():
            try:
                started = started or '"RunStarted"' in (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
                if started and not temporary.is_symlink():  # each failed write removes it: the disk stays full
                    temporary.symlink_to("/dev/full")
            except OSError:
                pass
            time.sleep(0.001)

    watcher = threading.Thread(target=keep_the_disk_full_once_the_run_started, daemon=True)
    watcher.start()
    try:
        code = main(["train", str(preset), "--run-dir", str(run_dir)])
    finally:
        stop.set()
        watcher.join(5)
    out = capsys.readouterr().out.replace("\n", " ")
    assert code == 3, out
    assert "No space left on device" in out and "No checkpoint of this run is on disk." in out
    assert "Resume with" not in out and "nothing to resume" in out
    assert main(["resume", str(run_dir)]) == 2  # what it would have offered: there is no checkpoint


@pytest.mark.parametrize("value", ["1e999", "NaN", "99999999999999999999999999", "0", "[1]", '"x"', "true"])
def test_a_damaged_parallel_in_queue_json_is_named_when_the_sweep_resumes(
        tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    sweep_dir = fake_sweep(tmp_path, "20260101-120000-sweep-tiny", values=(0.02,), seeds=(0,))
    queue_path = sweep_dir / "queue.json"
    queue = json.loads(queue_path.read_text())
    queue["parallel"] = "VALUE"
    queue_path.write_text(json.dumps(queue).replace('"VALUE"', value))
    assert main(["sweep", "--resume", str(sweep_dir), "--device", "cpu"]) == 2
    assert f"{queue_path}: damaged ('parallel'" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "expected"), [
    (["--grid", "optimizer.lr=0.01,0.02", "--parallel", "99999999999999"], "--parallel"),
    (["--seeds", "99999999999999"], "--seeds"),
    (["--seeds", "1000000000"], "more than the 1,000 allowed"),
    (["--random", "99999999999999", "--range", "optimizer.lr=0.001:0.1"], "more than the 1,000 allowed"),
    (["--grid", "train.batch_size=" + ",".join(str(i) for i in range(1, 1001)),  # 10^9 combinations
      "--grid", "train.epochs=" + ",".join(str(i) for i in range(1, 1001)),
      "--grid", "dataset.train_size=" + ",".join(str(i) for i in range(10, 1010))], "more than the 1,000 allowed")])
def test_a_sweep_far_too_large_is_refused_before_it_fills_the_memory(
        tmp_path: Path, option: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY_PRESET)
    runs = tmp_path / "runs"
    assert main(["sweep", str(preset), "--runs-dir", str(runs), "--device", "cpu", *option]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and expected in err, err
    assert not runs.exists() or not any(runs.iterdir())  # nothing written


@pytest.mark.parametrize("where", ["the runs folder", "a run's checkpoints folder"])
def test_run_dir_refuses_a_folder_that_holds_runs_or_lies_inside_one(
        tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY_PRESET)
    runs = tmp_path / "runs"
    run = runs / "20260101-120000-tiny"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "last.pt").write_bytes(b"not looked at")
    target = runs if where == "the runs folder" else run / "checkpoints"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["train", str(preset), "--run-dir", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"{target}: --run-dir" in err and ("holds folders" in err or "is inside the run" in err), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_runs_dir_given_before_the_command_is_where_the_run_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `cifartui --runs-dir DIR run PRESET` (the app's form) and the same before `train`: the
    # command's own option, not given, used to replace DIR with ./runs.
    monkeypatch.chdir(tmp_path)
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY_PRESET)
    chosen = tmp_path / "chosen"
    assert main(["--runs-dir", str(chosen), "train", str(preset), "--epochs", "1"]) == 0
    assert [p.name for p in chosen.iterdir()][0].endswith("-tiny")
    assert not (tmp_path / "runs").exists()


def test_control_of_a_stopped_run_without_a_checkpoint_does_not_offer_a_resume(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "20260101-120000-tiny"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "status.json").write_text(json.dumps({"status": "interrupted", "pid": 1, "host": "elsewhere"}))
    assert main(["control", str(run), "status"]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "is not training now (status: interrupted)" in err and "nothing to resume" in err
    assert "cifartui resume" not in err
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    assert main(["control", str(run), "status"]) == 2
    assert f"cifartui resume {run}` continues it" in capsys.readouterr().err.replace("\n", "")
