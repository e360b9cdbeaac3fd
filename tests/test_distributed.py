"""Data-parallel training under torchrun: two CPU processes with the gloo backend."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifartui.engine.runs.checkpoint import load_checkpoint
from cifartui.engine.runs.folders import read_metrics
from cifartui.engine.train.trainer import AGREE_EVERY
from tests.test_cli import SLOW_ENOUGH_PRESET


def _preset(train_size: int) -> str:
    """The CLI tests' interruptible preset, at this size."""
    assert "train_size = 3000" in SLOW_ENOUGH_PRESET
    return SLOW_ENOUGH_PRESET.replace("train_size = 3000", f"train_size = {train_size}")


def _torchrun(tmp_path: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "cifartui", *args]
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_torchrun_trains_one_run_with_identical_replicas(tmp_path: Path) -> None:
    preset = tmp_path / "ddp.toml"
    preset.write_text(_preset(600))
    job = _torchrun(tmp_path, "train", str(preset), "--runs-dir", "runs", "--summary-json", "summary.json")
    output, _ = job.communicate(timeout=240)
    assert job.returncode == 0, output
    assert "Data parallel: 2 processes (gloo), global batch 32" in output
    (run_dir,) = list((tmp_path / "runs").iterdir())  # rank 1 wrote no directory of its own
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["replicas_identical"] is True
    assert summary["steps"] == 2 * 15  # 480 training images in global batches of 32
    rows = read_metrics(run_dir)
    events = [row["event"] for row in rows]
    assert events.count("RunStarted") == 1 and events.count("RunFinished") == 1  # one writer
    losses = [row["train_loss"] for row in rows if row["event"] == "EpochEnded"]
    assert len(losses) == 2 and losses[1] < losses[0]  # the averaged gradients do train the model


@pytest.mark.slow
def test_sigterm_stops_every_process_at_the_same_step_and_the_job_resumes(tmp_path: Path) -> None:
    preset = tmp_path / "ddp.toml"
    preset.write_text(_preset(1600))  # 1280 training images: 40 global batches of 32 an epoch
    job = _torchrun(tmp_path, "train", str(preset), "--runs-dir", "runs")
    runs = tmp_path / "runs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the first steps are on record
        metrics = list(runs.glob("*/metrics.jsonl"))
        if metrics and metrics[0].read_text().count('"StepMetrics"') >= 3:
            break
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    output, _ = job.communicate(timeout=120)
    (run_dir,) = list(runs.iterdir())
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "stopped" and "SIGTERM" in status["reason"], output
    step = load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["step"]
    assert step > 0 and step % AGREE_EVERY == 0  # the step both processes agreed on

    resumed = _torchrun(tmp_path, "resume", str(run_dir))
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 * 40 and summary["replicas_identical"] is True
