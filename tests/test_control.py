"""Steering runs while they train: live settings, the control channel, resume after a change, branches."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from cifartui.cli import main
from cifartui.config import ScheduleConfig
from cifartui.engine.runs import events as ev
from cifartui.engine.runs.checkpoint import load_checkpoint
from cifartui.engine.runs.folders import read_metrics
from cifartui.engine.runs.settings import LiveSettings, effective_config
from cifartui.engine.train.trainer import RunControl, Trainer
from benchmarks.faults import cifartui_process
from tests.conftest import tiny_config
from tests.test_trainer import Recorder

STEERABLE_PRESET = """
description = "a run that trains long enough to be steered"
[dataset]
name = "synthetic"
train_size = 4000
test_size = 100
val_fraction = 0.1
[model]
name = "cnn3"
[optimizer]
name = "sgd"
lr = 0.05
momentum = 0.9
[train]
epochs = 50
batch_size = 16
log_every = 1
device = "cpu"
checkpoint_minutes = 0.0
"""


def _wait(condition, timeout: float = 120.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def _steps(run: Path) -> list[dict]:
    return [e for e in read_metrics(run) if e["event"] == "StepMetrics"]


def _control(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["control", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_control_steers_a_headless_run_and_the_changes_survive_kill_9(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "steer.toml"
    preset.write_text(STEERABLE_PRESET)
    runs = tmp_path / "runs"
    trainer = cifartui_process("train", str(preset), "--runs-dir", str(runs))
    _wait(lambda: list(runs.glob("*/metrics.jsonl")) and len(_steps(next(runs.iterdir()))) >= 2)
    run = next(runs.iterdir())

    code, out, _ = _control(capsys, str(run), "status", "--json")
    status = json.loads(out)
    assert code == 0 and status["state"] == "running" and status["settings"]["optimizer"]["lr"] == 0.05

    code, out, _ = _control(capsys, str(run), "set", "optimizer.lr=0.01", "dropout.block3=0.5")
    assert code == 0 and "optimizer.lr: 0.05 -> 0.01" in out and "dropout.block3: 0.4 -> 0.5" in out
    # Invalid values, keys that cannot change mid-run, and a change with one bad value: exit 2, nothing applied.
    for assignment, message in [(["optimizer.lr=-1"], "'optimizer.lr': -1.0 is out of range"),
                                (["model.name=vgg11"], "'model.name': cannot change while the run trains"),
                                (["optimizer.lr=0.02", "train.batch_size=0"], "'train.batch_size'"),
                                (["dropout.stack9=0.1"], "unknown dropout group 'stack9'"),
                                (["lr"], "expected KEY=VALUE")]:
        code, _, err = _control(capsys, str(run), "set", *assignment)
        assert code == 2 and message in err, (assignment, err)
    code, out, _ = _control(capsys, str(run), "status", "--json")
    assert json.loads(out)["settings"]["optimizer"]["lr"] == 0.01

    # Two controllers at once: every change is applied whole, one after the other.
    setters = [cifartui_process("control", str(run), "set", f"optimizer.momentum={value}") for value in (0.5, 0.6, 0.7, 0.8)]
    assert [setter.wait(timeout=60) for setter in setters] == [0, 0, 0, 0]
    momentum = [e["changes"]["optimizer.momentum"] for e in read_metrics(run)
                if e["event"] == "SettingsChanged" and "optimizer.momentum" in e["changes"]]
    assert len(momentum) == 4 and momentum[0][0] == 0.9
    assert all(later[0] == earlier[1] for earlier, later in zip(momentum, momentum[1:]))

    code, out, _ = _control(capsys, str(run), "pause")
    assert code == 0 and "Paused" in out
    paused_at = json.loads(_control(capsys, str(run), "status", "--json")[1])["step"]
    time.sleep(1.0)
    paused = json.loads(_control(capsys, str(run), "status", "--json")[1])
    assert paused["state"] == "paused" and paused["step"] == paused_at
    assert _control(capsys, str(run), "resume")[0] == 0
    code, out, _ = _control(capsys, str(run), "checkpoint")
    assert code == 0 and "last.pt" in out

    changed = [e for e in read_metrics(run) if e["event"] == "SettingsChanged"]
    first = changed[0]
    assert first["source"] == "control" and first["changes"]["optimizer.lr"] == [0.05, 0.01]
    assert all(s["lr"] == 0.01 for s in _steps(run) if s["step"] > first["step"])

    trainer.send_signal(signal.SIGKILL)  # the changes were checkpointed: they must come back
    trainer.wait(timeout=30)
    resumed = cifartui_process("resume", str(run))
    _wait(lambda: len([e for e in read_metrics(run) if e["event"] == "RunStarted"]) == 2)
    code, out, _ = _control(capsys, str(run), "status", "--json")
    settings = json.loads(out)["settings"]
    assert settings["optimizer"]["lr"] == 0.01 and settings["optimizer"]["momentum"] == momentum[-1][1]
    assert json.loads((run / "config.json").read_text())["optimizer"]["lr"] == 0.05  # as the run started
    restarted = [e for e in read_metrics(run) if e["event"] == "RunStarted"][-1]
    assert restarted["resumed"] and restarted["config"]["optimizer"]["lr"] == 0.01

    code, out, _ = _control(capsys, str(run), "stop")
    assert code == 0 and "stops at step" in out
    assert resumed.wait(timeout=120) == 143
    assert json.loads((run / "status.json").read_text())["status"] == "stopped"
    code, _, err = _control(capsys, str(run), "status")
    assert code == 2 and "is not training now (status: stopped)" in err and "cifartui resume" in err
    assert effective_config(_config_of(run), read_metrics(run)).optimizer.lr == 0.01  # for history and exports


def _config_of(run: Path):  # noqa: ANN202
    from cifartui.engine.runs.folders import read_config

    return read_config(run)


def _submit_at(trainer: Trainer, control: RunControl, step: int, updates: dict) -> dict:
    """Submit a change from a listener once the run reaches `step`; the answer, when it comes."""
    answers: dict = {}

    def listener(event: ev.Event) -> None:
        if isinstance(event, ev.StepMetrics) and event.step >= step and "future" not in answers:
            answers["future"] = control.submit("set", {"updates": updates, "source": "app"})
    trainer.bus.listeners.append(listener)
    return answers


def test_live_changes_take_effect_at_the_next_step_and_a_new_batch_size_at_the_next_epoch(tmp_path: Path) -> None:
    control, recorder = RunControl(), Recorder()
    trainer = Trainer(tiny_config(epochs=3), tmp_path / "run", control=control, listeners=[recorder])
    answers = _submit_at(trainer, control, 3, {
        "optimizer.lr": 0.004, "train.label_smoothing": 0.1, "augment.flip": False, "dropout.dense": 0.6,
        "train.batch_size": 16, "train.epochs": 2})
    result = trainer.run()
    assert result.status == "finished"
    answer = answers["future"].result(timeout=1)
    assert answer["ok"] and answer["when"]["train.batch_size"] == "at the start of the next epoch"
    (changed,) = recorder.of(ev.SettingsChanged)
    assert changed.source == "app" and changed.changes["optimizer.lr"] == [0.02, 0.004]
    assert all(s.lr == 0.004 for s in recorder.of(ev.StepMetrics) if s.step > changed.step)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.004
    assert float(trainer.step_state.label_smoothing) == pytest.approx(0.1) and not trainer.augment.config.flip
    assert recorder.of(ev.DropoutChanged)[-1].new["15"] == 0.6
    epochs = recorder.of(ev.EpochEnded)
    # 240 training images: 8 steps of 32 in the first epoch, then 15 of 16, and two epochs in all.
    assert [e.step for e in epochs] == [8, 23] and result.summary["epochs"] == 2
    assert trainer.config.train.batch_size == 16 and trainer.settings.history[0].step == changed.step


def test_a_schedule_replaced_mid_run_starts_from_the_lr_in_force(tmp_path: Path) -> None:
    control, recorder = RunControl(), Recorder()
    base = tiny_config(epochs=3)
    config = dataclasses.replace(base, optimizer=dataclasses.replace(
        base.optimizer, schedule=ScheduleConfig(name="step", step_size=1, gamma=0.5)))
    trainer = Trainer(config, tmp_path / "run", control=control, listeners=[recorder])
    answers = _submit_at(trainer, control, 10, {"optimizer.schedule.name": "cosine",
                                                "optimizer.schedule.min_lr": 0.0})
    trainer.run()
    changes = answers["future"].result(timeout=1)["changes"]
    assert changes["optimizer.schedule.name"] == ["step", "cosine"]
    assert changes["optimizer.lr"] == [0.02, 0.01]  # the step schedule had halved it once
    lrs = [(s.step, s.lr) for s in recorder.of(ev.StepMetrics)]
    after = [lr for step, lr in lrs if step > 10]
    assert after[0] == pytest.approx(0.01, rel=0.05) and after == sorted(after, reverse=True)
    # Cosine down to min_lr at the end of the run (step metrics are thinned, so ask the trainer).
    assert trainer.current_lr < 0.001


def test_a_resumed_run_trains_with_the_changed_settings(tmp_path: Path) -> None:
    control = RunControl()
    first = Trainer(tiny_config(epochs=3), tmp_path / "run", control=control)
    answers = _submit_at(first, control, 4, {"optimizer.lr": 0.003, "optimizer.momentum": 0.5})

    def stop_after_change(event: ev.Event) -> None:
        if isinstance(event, ev.SettingsChanged):
            control.stop("test")
    first.bus.listeners.append(stop_after_change)
    assert first.run().status == "stopped" and answers["future"].result(timeout=1)["ok"]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert LiveSettings.from_state(state["settings"], "x").config.optimizer.lr == 0.003
    resumed = Trainer(tiny_config(epochs=3), tmp_path / "run", resume=True)
    assert resumed.run().status == "finished"
    assert resumed.config.optimizer.lr == 0.003 and resumed.optimizer.param_groups[0]["momentum"] == 0.5
    assert resumed.optimizer.param_groups[0]["lr"] == 0.003


def test_branch_from_a_kept_checkpoint_records_its_parent_and_starts_where_it_left(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    assert main(["train", "demo-synthetic", "--epochs", "3", "--set", "dataset.train_size=320",
                 "--set", "dataset.test_size=64", "--set", "train.keep_every=1", "--runs-dir", str(runs),
                 "--device", "cpu"]) == 0
    parent = next(runs.iterdir())
    kept = sorted(p.name for p in (parent / "checkpoints").glob("epoch-*.pt"))
    assert kept == ["epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt"]
    assert main(["branch", str(parent), "--checkpoint", "epoch-0001", "--set", "optimizer.lr=0.0005"]) == 0
    branch = next(p for p in runs.iterdir() if p != parent)
    events = read_metrics(branch)
    started = next(e for e in events if e["event"] == "RunStarted")
    parent_epoch1 = next(e for e in read_metrics(parent) if e["event"] == "EpochEnded")
    assert started["parent"] == str(parent) and started["parent_step"] == parent_epoch1["step"]
    assert min(e["step"] for e in events if e["event"] == "StepMetrics") > started["parent_step"]
    changed = next(e for e in events if e["event"] == "SettingsChanged")
    assert changed["source"] == "branch" and changed["changes"]["optimizer.lr"][1] == 0.0005
    assert [e["epoch"] for e in events if e["event"] == "EpochEnded"] == [1, 2]
    assert json.loads((branch / "summary.json").read_text())["epochs"] == 3
    capsys.readouterr()
    assert main(["branch", str(parent), "--checkpoint", "epoch-0009"]) == 2
    assert "epoch-0001" in capsys.readouterr().err  # names the checkpoints there are


def test_kept_checkpoints_stay_within_their_disk_budget(tmp_path: Path) -> None:
    config = tiny_config(epochs=4, keep_every=1, keep_max_mib=1.5)  # each checkpoint of cnn3 is ~2 MiB
    Trainer(config, tmp_path / "run").run()
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("epoch-*.pt"))
    assert kept == ["epoch-0004.pt"]
    assert torch.load(tmp_path / "run" / "checkpoints" / "epoch-0004.pt", weights_only=True)["progress"]["epoch"] == 4


def test_control_refuses_what_is_not_a_running_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["control", str(tmp_path), "status"]) == 2
    assert "not a cifartui run directory" in capsys.readouterr().err
    Trainer(tiny_config(epochs=1), tmp_path / "run").run()
    assert main(["control", str(tmp_path / "run"), "pause"]) == 2
    assert "is not training now (status: finished)" in capsys.readouterr().err
    assert main(["control", str(tmp_path / "run"), "set"]) == 2
    assert os.stat(tmp_path / "run" / "control").st_mode & 0o777 == 0o700  # the owner's alone
