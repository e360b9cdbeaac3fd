"""Helpers for driving the real app: tiny run configs, a scripted engine, waiting on conditions."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Callable

from cifartui.config import RunConfig
from cifartui.engine.runs import events as ev
from cifartui.engine.train.trainer import RunResult, Trainer
from tests.conftest import tiny_config


def app_config(epochs: int = 40, **train: object) -> RunConfig:
    """Long enough to act on while it trains, tiny per step."""
    config = tiny_config(epochs=epochs, **train)
    return dataclasses.replace(config, name="tiny", dataset=dataclasses.replace(config.dataset, train_size=200))


async def wait_for(pilot, condition: Callable[[], bool], timeout: float = 20.0) -> float:
    """Let the app run until `condition` holds; the seconds it took. Fails the test on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await pilot.pause(0.02)
    return time.monotonic() - started


def script(run_dir: Path, config: RunConfig) -> list[ev.Event]:
    """A fixed two-epoch history, with fixed times, for screens that must look the same every time."""
    t0 = 1_700_000_000.0
    summary = {"name": "cnn3", "total_parameters": 257_978, "trainable_parameters": 257_978, "layers": []}
    rates = {"3": 0.3, "7": 0.3, "11": 0.4, "16": 0.3}
    events: list[ev.Event] = [ev.RunStarted(
        run_dir=str(run_dir), config=config.to_dict(), model_summary=summary, device="cpu", step=0, epoch=0,
        total_steps=40, steps_per_epoch=20, train_size=640, val_size=160, test_size=200, resumed=False,
        dropout_rates=rates, time=t0)]
    for step in range(2, 41, 2):
        epoch = (step - 1) // 20
        events.append(ev.StepMetrics(step=step, epoch=epoch, loss=2.3 / (1 + step / 10), top1=10 + step * 2,
                                     lr=0.01 if step <= 20 else 0.005, images_per_s=2100.0,
                                     eta_s=(40 - step) * 0.5, total_steps=40, time=t0 + step))
        if step == 20:
            events.append(ev.EpochEnded(epoch=0, step=20, train_loss=1.1, train_top1=45.0, val_loss=0.9,
                                        val_top1=55.0, val_top5=90.0, lr=0.01, seconds=10.0, time=t0 + 20))
            events.append(ev.CheckpointSaved(path=str(run_dir / "checkpoints/last.pt"), step=20, epoch=1,
                                             reason="epoch end", time=t0 + 20))
            events.append(ev.LRChanged(step=20, epoch=1, old=0.01, new=0.005, reason="schedule", time=t0 + 20))
            events.append(ev.DropoutChanged(step=20, epoch=1, old=rates, new={k: v * 1.5 for k, v in rates.items()},
                                            time=t0 + 20))
    events.append(ev.EpochEnded(epoch=1, step=40, train_loss=0.6, train_top1=75.0, val_loss=0.7, val_top1=72.0,
                                val_top5=97.0, lr=0.005, seconds=10.0, time=t0 + 40))
    events.append(ev.RunFinished(test_loss=0.72, test_top1=71.5, test_top5=96.5, best_val_top1=72.0,
                                 best_val_loss=0.7, epochs=2, steps=40, images_per_s=2100.0, seconds=20.0,
                                 time=t0 + 41))
    return events


class ScriptedTrainer:
    """Stands in for Trainer: publishes `script` and finishes, with no torch work."""

    def __init__(self, config: RunConfig, run_dir: Path, *, data_dir=None, listeners=(), control=None,  # noqa: ANN001
                 resume: bool = False) -> None:
        self.config, self.run_dir, self.listeners = config, Path(run_dir), list(listeners)

    def run(self) -> RunResult:
        for event in script(self.run_dir, self.config):
            for listener in self.listeners:
                listener(event)
        return RunResult("finished", self.run_dir, {})


class FailingTrainer(ScriptedTrainer):
    def run(self) -> RunResult:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


class PoisonedTrainer(Trainer):
    """The real trainer, with the model's output turned to NaN at one training step."""

    poison_step = 6

    def _setup(self) -> None:
        super()._setup()
        original, calls = self.model.forward, {"n": 0}

        def forward(x):  # noqa: ANN001
            out = original(x)
            if self.model.training:
                calls["n"] += 1
                if calls["n"] == self.poison_step + 1:
                    return out * float("nan")
            return out
        self.model.forward = forward


def run(coroutine) -> None:  # noqa: ANN001
    asyncio.run(coroutine)


def epochs_script(run_dir: Path, config: RunConfig, *, epochs: int = 12, steps_per_epoch: int = 10,
                  reference: float = 0.0, rates: dict | None = None, t0: float = 1_700_000_000.0) -> list[ev.Event]:
    """A longer fixed history: `epochs` epochs, step reports every two steps, accuracy climbing to 100%."""
    plain = config.to_dict()
    plain["reference"] = {"top1": reference, "top5": 0.0, "source": "test"}
    total = epochs * steps_per_epoch
    summary = {"name": "cnn3", "total_parameters": 257_978, "trainable_parameters": 257_978, "layers": []}
    rates = rates if rates is not None else {"3": 0.3, "7": 0.3, "11": 0.4, "16": 0.3, "19": 0.5}
    events: list[ev.Event] = [
        ev.PhaseStarted("loading data", "synthetic", time=t0 - 3), ev.PhaseStarted("building model", "cnn3", time=t0 - 1),
        ev.RunStarted(run_dir=str(run_dir), config=plain, model_summary=summary, device="cpu", step=0, epoch=0,
                      total_steps=total, steps_per_epoch=steps_per_epoch, train_size=640, val_size=160,
                      test_size=200, resumed=False, dropout_rates=rates, time=t0),
        ev.PhaseStarted("warming up", "first steps", time=t0)]
    for step in range(2, total + 1, 2):
        epoch = (step - 1) // steps_per_epoch
        top1 = min(100.0, 10 + 90 * step / total)
        events.append(ev.StepMetrics(step=step, epoch=epoch, loss=2.3 / (1 + step / 10), top1=top1, lr=0.01,
                                     images_per_s=2000.0, eta_s=(total - step) * 0.03, total_steps=total,
                                     recent_images_per_s=2100.0, ms_per_step=30.0, time=t0 + step))
        if step % steps_per_epoch == 0:
            events.append(ev.EpochEnded(epoch=epoch, step=step, train_loss=2.3 / (1 + step / 10), train_top1=top1,
                                        val_loss=2.0 / (1 + step / 10), val_top1=min(100.0, top1 + 2),
                                        val_top5=100.0, lr=0.01, seconds=10.0, time=t0 + step))
            events.append(ev.CheckpointSaved(path=str(run_dir / "checkpoints/last.pt"), step=step, epoch=epoch + 1,
                                             reason="epoch end", time=t0 + step))
    events.append(ev.RunFinished(test_loss=0.2, test_top1=96.5, test_top5=100.0, best_val_top1=100.0,
                                 best_val_loss=0.1, epochs=epochs, steps=total, images_per_s=2000.0,
                                 seconds=total * 0.03, time=t0 + total + 1))
    return events


def write_run(runs: Path, name: str, config: RunConfig, events: list[ev.Event], status: dict | None = None) -> Path:
    """A run directory as another process would have left it."""
    import json

    run_dir = runs / name
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    (run_dir / "status.json").write_text(json.dumps(status or {"status": "finished", "pid": 1, "host": "elsewhere"}))
    with (run_dir / "metrics.jsonl").open("w") as handle:
        for event in events:
            handle.write(json.dumps(event.to_json()) + "\n")
    return run_dir


def dead_pid() -> int:
    """The pid of a process that has just ended."""
    import subprocess

    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


async def panel_with(pilot, app, events: list[ev.Event]):  # noqa: ANN001, ANN201
    """The only run's panel, once mounted, with `events` applied and drawn."""
    (handle,) = app.handles.values()
    await wait_for(pilot, lambda: app.panel(handle.run_id) is not None and app.panel(handle.run_id).ready
                   and handle.done.is_set())
    panel = app.panel(handle.run_id)
    for event in events:
        panel.apply(event)
    app.registry.set_status(handle, panel.status)
    panel.redraw()
    await wait_for(pilot, lambda: panel.loss_chart.limits is not None or not panel.loss_chart.series)
    await pilot.pause(0.1)
    return panel


class SilentTrainer:
    """Finishes at once and says nothing: the test applies the events itself, in order."""

    def __init__(self, config, run_dir, **_kwargs) -> None:  # noqa: ANN001
        self.run_dir = run_dir

    def run(self) -> RunResult:
        return RunResult("finished", self.run_dir, {})
