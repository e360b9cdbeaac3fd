"""The trainer: events, run directory, control (pause, resume, stop, checkpoint), NaN, exact resume."""

import dataclasses
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from cifartui.config import DropoutEvent, ModelConfig, ScheduleConfig
from cifartui.engine.runs import events as ev
from cifartui.engine.train import trainer as trainer_module
from cifartui.engine.train.evaluation import evaluation_batch_size
from cifartui.engine.runs.checkpoint import load_checkpoint
from cifartui.engine.runs.folders import read_metrics, read_status
from cifartui.engine.train.trainer import RunControl, Trainer
from tests.conftest import tiny_config


class Recorder:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self.lock = threading.Lock()

    def __call__(self, event: ev.Event) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind: type) -> list:
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]


def test_a_run_reports_everything_and_fills_its_directory(tmp_path: Path) -> None:
    config = dataclasses.replace(tiny_config(epochs=3), optimizer=dataclasses.replace(
        tiny_config().optimizer, schedule=ScheduleConfig(name="step", step_size=1, gamma=0.5)),
        dropout_schedule=(DropoutEvent(at=1, unit="epoch", action="set", rates=(0.2, 0.2, 0.2, 0.2)),))
    recorder = Recorder()
    result = Trainer(config, tmp_path / "run", listeners=[recorder]).run()
    assert result.status == "finished"
    started = recorder.of(ev.RunStarted)[0]
    assert started.model_summary["total_parameters"] == 257_978 and started.device == "cpu"
    assert (started.train_size, started.val_size, started.test_size) == (240, 60, 100)
    epochs = recorder.of(ev.EpochEnded)
    assert [e.epoch for e in epochs] == [0, 1, 2] and all(e.val_top5 >= e.val_top1 for e in epochs)
    assert [(e.old, e.new) for e in recorder.of(ev.LRChanged)] == [(0.02, 0.01), (0.01, 0.005)]
    dropout = recorder.of(ev.DropoutChanged)
    assert len(dropout) == 1 and dropout[0].step == 8 and set(dropout[0].new.values()) == {0.2}
    finished = recorder.of(ev.RunFinished)[0]
    assert 0 <= finished.test_top1 <= finished.test_top5 <= 100 and finished.images_per_s > 0
    steps = recorder.of(ev.StepMetrics)
    assert steps and all(isinstance(s.loss, float) and s.eta_s >= 0 for s in steps)
    # Training time covers every epoch, not just the first (evaluation is excluded, so compare loosely).
    summary_seconds = json.loads((tmp_path / "run" / "summary.json").read_text())["train_seconds"]
    assert summary_seconds > 0.5 * sum(e.seconds for e in epochs)

    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 3
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    summary = json.loads((run / "summary.json").read_text())
    for key in ("test_top1", "test_top5", "test_loss", "best_val_top1", "epochs", "images_per_s", "run_dir"):
        assert key in summary
    lines = read_metrics(run)
    kinds = [line["event"] for line in lines]
    assert kinds[:3] == ["PhaseStarted", "PhaseStarted", "RunStarted"] and kinds[-1] == "RunFinished"
    assert [e.phase for e in recorder.of(ev.PhaseStarted)] == ["loading data", "building model", "warming up", "testing"]
    # The current pace goes out with the session average.
    assert all(s.ms_per_step > 0 and s.recent_images_per_s > 0 for s in steps)
    assert read_status(run)["status"] == "finished"
    # Events carry plain values only.
    for event in recorder.events:
        for value in dataclasses.asdict(event).values():
            assert not isinstance(value, torch.Tensor)


def test_pause_blocks_between_steps_and_resume_continues(tmp_path: Path) -> None:
    control = RunControl()
    recorder = Recorder()
    trainer = Trainer(tiny_config(epochs=30), tmp_path / "run", listeners=[recorder], control=control)
    thread = trainer.start()
    while not recorder.of(ev.StepMetrics):
        time.sleep(0.01)
    control.pause()
    deadline = time.monotonic() + 10
    while not recorder.of(ev.RunPaused) and time.monotonic() < deadline:
        time.sleep(0.01)
    paused_at = trainer.progress.step
    assert recorder.of(ev.RunPaused) and read_status(tmp_path / "run")["status"] == "paused"
    time.sleep(0.3)
    assert trainer.progress.step == paused_at  # nothing trains while paused
    control.checkpoint_now()  # served while paused
    deadline = time.monotonic() + 10
    while not recorder.of(ev.CheckpointSaved) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert recorder.of(ev.CheckpointSaved)[0].step == paused_at
    control.resume()
    while trainer.progress.step <= paused_at + 2:
        time.sleep(0.01)
    assert recorder.of(ev.RunResumed)
    control.stop("test over")
    thread.join(30)
    assert not thread.is_alive() and trainer.result.status == "stopped"
    stopped = recorder.of(ev.RunStopped)[0]
    assert load_checkpoint(Path(stopped.checkpoint))["progress"]["step"] == stopped.step
    assert read_status(tmp_path / "run")["status"] == "stopped"


def test_non_finite_loss_pauses_within_one_step_and_keeps_weights_finite(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    poison_step = 12
    real_build = trainer_module.build_model

    def build_poisoned(config, classes):  # noqa: ANN001
        model = real_build(config, classes)
        calls = {"n": 0}
        original = model.forward

        def forward(x):  # noqa: ANN001
            out = original(x)
            if model.training:
                calls["n"] += 1
                if calls["n"] == poison_step + 1:
                    return out * float("nan")
            return out
        model.forward = forward
        return model

    monkeypatch.setattr(trainer_module, "build_model", build_poisoned)
    control = RunControl()
    recorder = Recorder()
    trainer = Trainer(tiny_config(epochs=5), tmp_path / "run", listeners=[recorder], control=control)
    thread = trainer.start()
    deadline = time.monotonic() + 30
    while not recorder.of(ev.RunPaused) and time.monotonic() < deadline:
        time.sleep(0.01)
    bad = recorder.of(ev.LossNotFinite)
    assert bad and bad[0].step == poison_step and math.isnan(bad[0].loss)
    assert recorder.of(ev.RunPaused)[0].step == poison_step + 1  # paused before another step
    assert "non-finite loss" in recorder.of(ev.RunPaused)[0].reason
    control.stop("test over")
    thread.join(30)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_slow_listener_never_slows_training(tmp_path: Path) -> None:
    delivered = Recorder()

    def slow(event: ev.Event) -> None:
        time.sleep(0.3)
        delivered(event)

    trainer = Trainer(tiny_config(epochs=3, batch_size=4), tmp_path / "run", listeners=[slow])
    trainer.run()
    written = read_metrics(tmp_path / "run")
    written_steps = sum(1 for e in written if e["event"] == "StepMetrics")
    # Step metrics were coalesced for the slow listener; every other event still reached it.
    assert len(delivered.of(ev.StepMetrics)) < written_steps
    assert len(delivered.of(ev.EpochEnded)) == 3 and len(delivered.of(ev.RunFinished)) == 1


def _final_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def _assert_identical(a: dict, b: dict) -> None:
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for index in opt_a:
        for name, value in opt_a[index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b[index][name])), (index, name)
    assert a["progress"]["step"] == b["progress"]["step"]


# mid-epoch; at the end of epoch 1 before its validation, and after it, before epoch 2 begins
# (8 steps an epoch); mid-epoch again
@pytest.mark.parametrize("stop_at, epoch_done", [(5, False), (8, False), (8, True), (13, False)])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path, stop_at: int, epoch_done: bool) -> None:
    base = tiny_config(epochs=3, lookahead_every=3)  # lookahead's slow weights must survive the stop too
    config = dataclasses.replace(
        base, optimizer=dataclasses.replace(base.optimizer, schedule=ScheduleConfig(name="cosine", warmup=1)),
        dropout_schedule=(DropoutEvent(at=14, action="multiply", factor=2.0, scope="all"),))
    Trainer(config, tmp_path / "whole").run()

    control = RunControl()

    def stop_at_step(event: ev.Event) -> None:
        pass

    interrupted = Trainer(config, tmp_path / "split", control=control, listeners=[stop_at_step])
    original = interrupted.run_control.between_steps

    def between_steps() -> bool:
        p = interrupted.progress
        if p.step == stop_at and (p.position == 0) == epoch_done:
            control.stop("simulated interrupt")
        return original()

    interrupted.run_control.between_steps = between_steps
    assert interrupted.run().status == "stopped"
    assert _final_state(tmp_path / "split")["progress"]["step"] == stop_at
    resumed = Trainer(config, tmp_path / "split", resume=True).run()
    assert resumed.status == "finished"
    _assert_identical(_final_state(tmp_path / "whole"), _final_state(tmp_path / "split"))
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    split = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert (whole["test_loss"], whole["test_top1"]) == (split["test_loss"], split["test_top1"])


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_a_step_with_non_finite_loss_leaves_weights_and_optimizer_state_alone(name: str) -> None:
    from cifartui.config import OptimizerConfig
    from cifartui.engine.train.optim import build_optimizer, step_unless

    model = torch.nn.Linear(4, 2)
    optimizer = build_optimizer(model, OptimizerConfig(name=name, lr=0.1, momentum=0.9), torch.device("cpu"))
    for found_inf in (0.0, 1.0):  # a good first step creates the state, then a bad one
        model(torch.randn(3, 4)).sum().backward()
        if found_inf:
            weights = [p.detach().clone() for p in model.parameters()]
            state = [{k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                     for s in optimizer.state.values()]
            for p in model.parameters():
                p.grad.fill_(float("nan"))
        step_unless(optimizer, torch.tensor(found_inf))
        optimizer.zero_grad(set_to_none=True)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    for before, after in zip(state, optimizer.state.values()):
        assert all(torch.equal(before[k], after[k]) if torch.is_tensor(before[k]) else before[k] == after[k]
                   for k in before)


@pytest.mark.parametrize("name, momentum", [("sgd", 0.9), ("sgd", 0.0), ("adam", 0.0), ("rmsprop", 0.9)])
def test_a_non_finite_first_step_leaves_a_clean_start(name: str, momentum: float) -> None:
    from cifartui.config import OptimizerConfig
    from cifartui.engine.train.optim import build_optimizer, step_unless

    torch.manual_seed(0)
    model, twin = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    twin.load_state_dict(model.state_dict())
    optimizers = [build_optimizer(m, OptimizerConfig(name=name, lr=0.1, momentum=momentum), torch.device("cpu"))
                  for m in (model, twin)]
    for p in model.parameters():  # the model's first step is poisoned, the twin's never happens
        p.grad = torch.full_like(p, float("nan"))
    step_unless(optimizers[0], torch.tensor(1.0))
    batch = torch.randn(3, 4)
    for m, optimizer in zip((model, twin), optimizers):  # then both take the same good step
        optimizer.zero_grad(set_to_none=True)
        m(batch).sum().backward()
        step_unless(optimizer, torch.tensor(0.0))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_bf16_autocast_trains_on_the_cpu(tmp_path: Path) -> None:
    result = Trainer(tiny_config(epochs=1, precision="bf16"), tmp_path / "run").run()
    assert result.status == "finished" and math.isfinite(result.summary["test_loss"])


def test_lookahead_and_mirror_evaluation_train_the_speedrun_net(tmp_path: Path) -> None:
    config = dataclasses.replace(tiny_config(epochs=2, lookahead_every=2, test_time_flip=True, label_smoothing=0.2),
                                 model=ModelConfig(name="speedrun-net"))
    result = Trainer(config, tmp_path / "run").run()
    assert result.status == "finished" and math.isfinite(result.summary["test_loss"])
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert len(state["lookahead_slow"]) > 0


@pytest.mark.parametrize(("device", "requested", "training", "expected"),
                         [("cpu", 1000, 128, 128), ("cpu", 64, 128, 64), ("cuda", 1000, 128, 1000)])
def test_evaluation_on_the_cpu_runs_in_batches_no_larger_than_training(device: str, requested: int, training: int,
                                                                      expected: int) -> None:
    assert evaluation_batch_size(requested, training, torch.device(device)) == expected


# Trains a few steps at batch 32, then evaluates 2,000 test images with train.eval_batch_size
# 2,000 and reports how far that evaluation raised the process's peak resident memory
# (Linux resets the peak through /proc/self/clear_refs), the size of the first convolution's
# output for the whole test set, and the results at the requested batch for comparison.
_EVALUATION_PEAK = r"""
import dataclasses, json, re, sys
from pathlib import Path
import torch
from cifartui.engine.train.evaluation import evaluate
from cifartui.engine.train.trainer import Trainer
from tests.conftest import tiny_config

def status(key):
    return int(re.search(key + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

config = tiny_config(epochs=1, batch_size=32, eval_batch_size=2000)
config = dataclasses.replace(config, dataset=dataclasses.replace(config.dataset, train_size=64, test_size=2000,
                                                                 val_fraction=0.0))
trainer = Trainer(config, Path(sys.argv[1]))
assert trainer.run().status == "finished"
Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS")
capped = trainer.evaluate(trainer.test_x, trainer.test_y)
growth = status("VmHWM") - before
first = trainer.model[0]
x = trainer.test_x
activation = len(x) * first.out_channels * x.shape[2] * x.shape[3] * torch.finfo(torch.float32).bits // 8
whole = evaluate(trainer.model, trainer.preprocess, trainer.test_x, trainer.test_y, classes=10,
                 batch_size=len(x), flip=False, channels_last=False, autocast=trainer._autocast)
print(json.dumps({"growth": growth, "activation": activation, "capped": capped, "whole": whole}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak-memory reset")
def test_evaluation_on_the_cpu_does_not_hold_a_whole_eval_batch_of_activations(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", _EVALUATION_PEAK, str(tmp_path / "run")], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Evaluating all 2,000 images at once holds at least the first convolution's output for all
    # of them; in batches of 32 the process grows by a small part of that.
    assert result["growth"] < result["activation"] / 4, result
    # The same loss and accuracies as one batch of the whole test set, up to rounding.
    assert result["capped"] == pytest.approx(result["whole"], rel=1e-4, abs=1e-4)
