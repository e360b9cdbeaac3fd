"""Steering a run when steps are slow, the process is killed, or the disk is full; what `runs` and the texts show."""

from __future__ import annotations

import errno
import io
import json
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

from cifartui.cli import main
from cifartui.cli.training import ProgressDisplay
from cifartui.config import ConfigError, RunConfig
from cifartui.engine.runs import events as ev
from cifartui.engine.runs.channel import ControlError, send
from cifartui.engine.runs.folders import RunLock, describe_run, read_metrics, read_status
from cifartui.engine.runs.settings import MAX_LIVE_EPOCHS, LiveSettings
from cifartui.engine.train import checkpointing as checkpointing_module
from cifartui.engine.train.trainer import RunControl, Trainer
from benchmarks.faults import cifartui_process
from tests.conftest import tiny_config
from tests.test_control import STEERABLE_PRESET, _steps
from tests.test_trainer import Recorder


def _wait(condition, timeout: float = 180.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


class LongStepTrainer(Trainer):
    """Step 3 lasts until the test lets it end, as a step of a big model on a slow device would."""

    gate = threading.Event()
    inside = threading.Event()

    def _setup(self) -> None:
        super()._setup()
        real = self.run_step

        def step(images, labels):  # noqa: ANN001
            if self.progress.step == 3:
                self.inside.set()
                self.gate.wait(120)
            real(images, labels)
        self.run_step = step


def test_the_control_channel_answers_during_a_long_step_and_the_change_applies_when_it_ends(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    LongStepTrainer.gate, LongStepTrainer.inside = threading.Event(), threading.Event()
    control, recorder = RunControl(), Recorder()
    run = tmp_path / "run"
    trainer = LongStepTrainer(tiny_config(epochs=2), run, control=control, listeners=[recorder])
    thread = trainer.start()
    _wait(LongStepTrainer.inside.is_set)  # now inside the long step
    try:
        status = send(run, "status", timeout=10)
        assert status["state"] == "running" and status["step"] == 3
        assert main(["control", str(run), "set", "optimizer.lr=0.01", "--timeout", "10"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "Queued for" in out and "applies when the step ends" in out and "optimizer.lr: 0.02 -> 0.01" in out
        assert "(epoch 1)" in out
        # A refusal needs no step boundary either: exit 2 at once, nothing queued.
        assert main(["control", str(run), "set", "optimizer.lr=-1", "--timeout", "10"]) == 2
        assert "-1.0 is out of range" in capsys.readouterr().err
        # A pause holds once the step ends: until then the run says it is pausing, not paused.
        assert send(run, "pause", timeout=10)["state"] == "pausing"
        assert send(run, "status", timeout=10)["state"] == "pausing"
        assert main(["control", str(run), "pause", "--timeout", "10"]) == 0
        assert "it pauses when the step ends" in " ".join(capsys.readouterr().out.split())
        assert not recorder.of(ev.SettingsChanged)  # queued, not applied in the middle of a step
    finally:
        LongStepTrainer.gate.set()
    _wait(lambda: recorder.of(ev.RunPaused))
    paused = send(run, "status", timeout=10)
    assert paused["state"] == "paused" and paused["step"] == 4
    (changed,) = recorder.of(ev.SettingsChanged)
    assert changed.source == "control" and changed.changes == {"optimizer.lr": [0.02, 0.01]} and changed.step == 4
    assert changed.epoch + 1 == 1  # the epoch the reply named
    # While paused the channel answers at once as well, and a change applies at once.
    answer = send(run, "set", {"updates": {"optimizer.momentum": 0.5}}, timeout=10)
    assert not answer.get("queued") and answer["changes"] == {"optimizer.momentum": [0.9, 0.5]}
    assert send(run, "stop", timeout=10)["state"] == "stopping"
    thread.join(120)
    assert trainer.result.status == "stopped" and trainer.config.optimizer.lr == 0.01


def test_a_request_nobody_takes_times_out_saying_nothing_was_applied(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(RunConfig().to_dict()))
    (run / "control").mkdir(mode=0o700)
    lock = RunLock(run).acquire()  # a process holds the run (it is loading data, say) but takes no request
    try:
        with pytest.raises(ControlError, match="nothing was applied"):
            send(run, "set", {"updates": {"optimizer.lr": 0.01}}, timeout=0.5)
        assert not list((run / "control").iterdir())  # withdrawn: the run will never act on it
    finally:
        lock.release()


def test_a_change_made_after_the_last_checkpoint_survives_kill_9(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "steer.toml"
    preset.write_text(STEERABLE_PRESET)
    runs = tmp_path / "runs"
    trainer = cifartui_process("train", str(preset), "--runs-dir", str(runs))
    try:
        _wait(lambda: list(runs.glob("*/metrics.jsonl")) and len(_steps(next(runs.iterdir()))) >= 2)
        run = next(runs.iterdir())
        assert main(["control", str(run), "checkpoint"]) == 0
        _wait(lambda: any(e["event"] == "CheckpointSaved" for e in read_metrics(run)))
        assert main(["control", str(run), "set", "optimizer.lr=0.01", "dropout.block3=0.5"]) == 0
        _wait(lambda: any(e["event"] == "SettingsChanged" for e in read_metrics(run)))  # applied, maybe queued first
        changed_at = next(e["step"] for e in read_metrics(run) if e["event"] == "SettingsChanged")
        _wait(lambda: max(s["step"] for s in _steps(run)) > changed_at)  # trained on with the change
    finally:
        trainer.send_signal(signal.SIGKILL)  # no checkpoint holds the change
        trainer.wait(timeout=30)
    resumed = cifartui_process("resume", str(run))
    try:
        _wait(lambda: len([e for e in read_metrics(run) if e["event"] == "RunStarted"]) == 2)
        status = send(run, "status", timeout=30)
        assert status["settings"]["optimizer"]["lr"] == 0.01 and status["dropout"]["block3"] == 0.5
        replayed = [e for e in read_metrics(run) if e["event"] == "SettingsChanged"][-1]
        assert replayed["source"] == "resume" and replayed["changes"]["optimizer.lr"] == [0.05, 0.01]
        assert all(s["lr"] == 0.01 for s in _steps(run) if s["step"] > replayed["step"] and s["time"] >
                   replayed["time"])
    finally:
        resumed.send_signal(signal.SIGTERM)
        resumed.wait(timeout=120)
    capsys.readouterr()


class FullDisk(io.RawIOBase):
    """A file on a disk that fills up after a few kilobytes."""

    def __init__(self) -> None:
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001
        self.written += len(data)
        if self.written > 4096:
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(data)


def test_a_full_disk_inside_torch_save_pauses_for_space_instead_of_failing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = checkpointing_module.save_checkpoint
    full = {"now": False}

    def save(state, path):  # noqa: ANN001
        if full["now"]:
            torch.save(state, FullDisk())  # torch's zip writer raises a RuntimeError, the OSError as context
        real_save(state, path)

    monkeypatch.setattr(checkpointing_module, "save_checkpoint", save)
    control, recorder = RunControl(), Recorder()

    def fill_at_the_second_epoch(event: ev.Event) -> None:
        if isinstance(event, ev.CheckpointSaved):
            full["now"] = True
    recorder_and_fill = [recorder, fill_at_the_second_epoch]
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(epochs=3), run, control=control, listeners=recorder_and_fill)
    thread = trainer.start()
    _wait(lambda: recorder.of(ev.RunPaused) or recorder.of(ev.RunFailed))
    assert not recorder.of(ev.RunFailed)
    failed = recorder.of(ev.CheckpointFailed)[0]
    assert "No space left on device" in failed.error and "free some space" in failed.error
    assert "checkpoint failed" in recorder.of(ev.RunPaused)[0].reason
    assert read_status(run)["status"] == "paused"
    full["now"] = False  # space was freed
    control.resume()
    thread.join(120)
    assert trainer.result.status == "finished"


def test_live_epochs_have_an_upper_bound_named_in_the_message() -> None:
    settings = LiveSettings(tiny_config())
    with pytest.raises(ConfigError) as refused:
        settings.check({"train.epochs": MAX_LIVE_EPOCHS + 1}, "control set")
    message = str(refused.value)
    assert f"{MAX_LIVE_EPOCHS + 1}" in message and f"{MAX_LIVE_EPOCHS:,}" in message and "train.epochs" in message
    assert settings.check({"train.epochs": MAX_LIVE_EPOCHS}, "control set")[1] == {
        "train.epochs": [2, MAX_LIVE_EPOCHS]}


def test_runs_shows_the_epoch_target_of_a_live_change_and_dropout_comes_back_as_set(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    control, recorder = RunControl(), Recorder()
    runs = tmp_path / "runs"
    run = runs / "run"
    trainer = Trainer(tiny_config(epochs=1), run, control=control, listeners=[recorder])

    # Asked before the first step, so it is served at the first step boundary however slowly the
    # machine delivers the run's events.
    control.submit("set", {"updates": {"train.epochs": 3, "dropout.dense": 0.1}, "source": "app"})
    control_stop = threading.Event()

    def stop_after_the_first_epoch(event: ev.Event) -> None:
        if isinstance(event, ev.EpochEnded) and not control_stop.is_set():
            control_stop.set()
            control.stop("test")
    trainer.bus.listeners.append(stop_after_the_first_epoch)
    assert trainer.run().status == "stopped"
    assert describe_run(run).epochs_total == 3  # config.json still says 1, as the run started
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 1
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    assert "1/3" in capsys.readouterr().out

    resumed, started = RunControl(), Recorder()
    again = Trainer(tiny_config(epochs=1), run, control=resumed, listeners=[started], resume=True)
    again.bus.listeners.append(lambda event: isinstance(event, ev.RunStarted) and resumed.stop("test"))
    assert again.run().status == "stopped"
    (restarted,) = started.of(ev.RunStarted)
    assert again.dropout_schedule.group_rates()["dense"] == 0.1  # not 0.10000000149011612
    dense_layer = trainer.dropout_schedule.groups["dense"][-1][0]
    assert restarted.dropout_rates == {**recorder.of(ev.RunStarted)[0].dropout_rates, dense_layer: 0.1}


def test_log_lines_and_replies_count_epochs_from_one() -> None:
    output = io.StringIO()
    display = ProgressDisplay(Console(file=output, width=200), RunControl())
    display(ev.SettingsChanged(step=12, epoch=1, source="control", changes={"optimizer.lr": [0.05, 0.01]}))
    assert "step 12 (epoch 2): settings changed by control" in output.getvalue()
