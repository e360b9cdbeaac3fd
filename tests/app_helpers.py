"""Helpers for driving the real app: tiny run configs, a scripted engine, waiting on conditions."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Callable

from cifartui.config import RunConfig
from cifartui.engine import events as ev
from cifartui.engine.trainer import RunResult, Trainer
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
