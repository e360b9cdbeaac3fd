"""Faults inside a run's life: writes that fail at the end, a full disk for status and metrics,
a stop during the final evaluation, and a checkpoint, config or data folder that is not the run's."""

from __future__ import annotations

import errno
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifartui.cli import main
from cifartui.engine.train import checkpointing as checkpointing_module
from cifartui.engine.train import emitter as emitter_module
from cifartui.engine.train import trainer as trainer_module
from cifartui.engine.runs.checkpoint import load_checkpoint
from cifartui.engine.runs.folders import read_config, read_metrics
from cifartui.engine.train.trainer import Trainer
from tests.conftest import make_cifar_folder


def _train_tiny(runs: Path, *extra: str) -> Path:
    assert main(["train", "demo-synthetic", "--epochs", "2", "--set", "dataset.train_size=320",
                 "--set", "dataset.test_size=64", "--runs-dir", str(runs), "--device", "cpu", *extra]) == 0
    return next(runs.iterdir())


def test_a_checkpoint_that_cannot_be_written_at_the_end_is_not_a_finished_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_save = checkpointing_module.save_checkpoint

    def full_disk_at_the_last_epoch(state, path):  # noqa: ANN001
        if state["progress"]["epoch"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(state, path)

    monkeypatch.setattr(checkpointing_module, "save_checkpoint", full_disk_at_the_last_epoch)
    runs = tmp_path / "runs"
    code = main(["train", "demo-synthetic", "--epochs", "2", "--set", "dataset.train_size=320",
                 "--set", "dataset.test_size=64", "--runs-dir", str(runs), "--device", "cpu"])
    out = capsys.readouterr().out
    run = next(runs.iterdir())
    assert code == 3
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "stopped" and status["saved_step"] == 5  # the end of epoch 1 (5 steps)
    assert not (run / "summary.json").exists()
    assert "The last checkpoint on disk is from step 5" in " ".join(out.split())
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["epoch"] == 1
    monkeypatch.setattr(checkpointing_module, "save_checkpoint", real_save)  # space freed: resume finishes it
    assert main(["resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_a_full_disk_for_metrics_and_status_mid_run_is_exit_3_without_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_write = emitter_module.write_status
    state = {"full": False}

    def write(run_dir, status, **extra):  # noqa: ANN001
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(run_dir, status, **extra)

    real_emit = trainer_module.Trainer._emit

    def emit(self, event):  # noqa: ANN001
        if getattr(event, "step", 0) >= 5 and type(event).__name__ == "StepMetrics":
            state["full"] = True  # the disk fills up mid-epoch: the pause must write status.json
            self.control.pause()
        real_emit(self, event)

    monkeypatch.setattr(emitter_module, "write_status", write)
    monkeypatch.setattr(trainer_module.Trainer, "_emit", emit)
    runs = tmp_path / "runs"
    code = main(["train", "demo-synthetic", "--epochs", "2", "--set", "dataset.train_size=320",
                 "--set", "dataset.test_size=64", "--runs-dir", str(runs), "--device", "cpu"])
    captured = capsys.readouterr()
    text = " ".join(captured.out.split())
    assert code == 3 and "Traceback" not in captured.out + captured.err
    assert "could not write" in text and "status.json: No space left on device" in text
    run = next(runs.iterdir())
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] >= 5


@pytest.mark.slow
def test_sigint_during_the_final_evaluation_stops_in_a_batch_and_resume_finishes(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # A test set evaluated one image at a time, so that its evaluation takes many seconds.
    job = subprocess.Popen([sys.executable, "-m", "cifartui.cli", "train", "demo-synthetic", "--epochs", "1",
                            "--set", "dataset.train_size=64", "--set", "dataset.test_size=2000",
                            "--set", "train.eval_batch_size=1", "--runs-dir", str(runs), "--device", "cpu"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        metrics = list(runs.glob("*/metrics.jsonl"))
        if metrics and '"testing"' in metrics[0].read_text():
            break
        time.sleep(0.02)
    signalled = time.monotonic()
    job.send_signal(signal.SIGINT)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 130, err
    assert time.monotonic() - signalled < 15, "answered in a batch's time, not the whole evaluation's"
    run = next(runs.iterdir())
    assert json.loads((run / "status.json").read_text())["status"] == "stopped"
    assert not (run / "summary.json").exists()
    # All steps are done: resuming evaluates and finishes (in bigger batches, a recorded change).
    config = read_config(run)
    resumed = Trainer(config, run, resume=True, resume_changes={"train.eval_batch_size": 500}).run()
    assert resumed.status == "finished" and resumed.summary["steps"] == 1


def test_resume_names_a_config_json_that_describes_another_model(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = _train_tiny(tmp_path / "runs")
    config = json.loads((run / "config.json").read_text())
    config["model"]["name"] = "vgg11"
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["resume", str(run), "--epochs", "3"]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "config.json describes another model" in error and "vgg11" in error and "cnn3" in error
    assert json.loads((run / "status.json").read_text())["status"] == "finished"  # untouched


def test_resume_names_a_checkpoint_of_another_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _train_tiny(tmp_path / "runs")
    other = _train_tiny(tmp_path / "other", "--model", "cnn4-dense512", "--set", "model.dropout=[0.5]")
    shutil.copy(other / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert main(["resume", str(run), "--epochs", "3"]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "last.pt" in error and "another" in error and "cnn4-dense512" in error


def test_a_checkpoint_holding_only_its_format_marker_is_named(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = _train_tiny(tmp_path / "runs")
    torch.save({"format": "cifartui-checkpoint-1"}, run / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert main(["resume", str(run), "--epochs", "3"]) == 2
    assert "last.pt: incomplete or damaged" in capsys.readouterr().err


def test_resume_with_a_smaller_cifar_folder_names_the_difference(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    make_cifar_folder(data, "cifar10", per_file=20)
    runs = tmp_path / "runs"
    assert main(["train", "cnn3-cifar10", "--epochs", "1", "--data-dir", str(data), "--runs-dir", str(runs),
                 "--device", "cpu", "--set", "train.batch_size=25"]) == 0
    run = next(runs.iterdir())
    shutil.rmtree(data)
    make_cifar_folder(data, "cifar10", per_file=12)
    capsys.readouterr()
    assert main(["resume", str(run), "--epochs", "2", "--data-dir", str(data)]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "trained on other data" in error and "training images 60 now, 100 then" in error
    assert [e["event"] for e in read_metrics(run)].count("RunStarted") == 1
