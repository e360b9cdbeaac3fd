"""The CUDA path on a real GPU: graphs captured for every optimizer, replays that train, a resume.

These need a CUDA GPU and are skipped without one (`python -m pytest -m cuda tests/test_cuda.py`
on a machine with one; benchmarks/gpu_session.sh runs them). The decisions they depend on
are tested on the CPU with fakes in test_step.py, test_optim.py, test_devices.py and
test_checkpoint.py; these confirm that PyTorch and the GPU agree with those fakes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from cifartui.config import OptimizerConfig
from cifartui.engine.runs.checkpoint import load_checkpoint, save_checkpoint
from cifartui.engine.train.models import ScheduledDropout
from cifartui.engine.train.optim import build_optimizer, prepare_for_graphs
from cifartui.engine.train.step import CudaGraphBackend, GraphedSteps, StepState, TrainStep
from cifartui.engine.train.trainer import Trainer
from tests.conftest import tiny_config

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU (torch.cuda.is_available() is False here); benchmarks/gpu_session.sh runs these on one")]

OPTIMIZERS = {"sgd": OptimizerConfig(name="sgd", lr=0.05, momentum=0.9),
              "sgd-momentum0": OptimizerConfig(name="sgd", lr=0.05, momentum=0.0),
              "adam": OptimizerConfig(name="adam", lr=1e-3),
              "adamw": OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.01)}


def _model(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         ScheduledDropout(0.0, "block"), nn.Flatten(), nn.Linear(16 * 8 * 8, 10)).to(device)


def _runner(config: OptimizerConfig, graphed: bool) -> tuple[nn.Module, TrainStep, object]:
    device = torch.device("cuda", torch.cuda.current_device())
    model = _model(device)
    optimizer = build_optimizer(model, config, device)
    state = StepState(device, config.lr, 0.0)
    if graphed:
        prepare_for_graphs(optimizer, state.lr)
    step = TrainStep(model, model, optimizer, state, autocast_dtype=None, device=device)
    runner = GraphedSteps(step, CudaGraphBackend(device), log=pytest.fail) if graphed else step
    return model, step, runner


def _batches(count: int, size: int = 32, last: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    sizes = [size] * count if last is None else [size] * (count - 1) + [last]
    return [(torch.randn(n, 3, 16, 16, generator=generator).cuda(), torch.randint(0, 10, (n,), generator=generator).cuda())
            for n in sizes]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_is_captured_and_its_replays_train(name: str) -> None:
    model, step, runner = _runner(OPTIMIZERS[name], graphed=True)
    batches = _batches(GraphedSteps.WARM_UP_STEPS + 4)
    for images, labels in batches[:GraphedSteps.WARM_UP_STEPS + 1]:
        runner(images, labels)
    assert runner.failed is None and runner.captures == 1
    before = [p.detach().clone() for p in model.parameters()]
    runner(*batches[-1])  # a replay
    torch.cuda.synchronize()
    assert runner.captures == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert int(step.state.steps_taken) == GraphedSteps.WARM_UP_STEPS + 2


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_graphed_and_eager_steps_give_the_same_losses_over_200_steps(name: str) -> None:
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    losses = {}
    for graphed in (False, True):
        _, step, runner = _runner(OPTIMIZERS[name], graphed=graphed)
        seen = []
        for images, labels in _batches(200):
            runner(images, labels)
            seen.append(float(step.state.window[0]))  # a sync per step: fine in a test
            step.state.window.zero_()
        losses[graphed] = torch.tensor(seen)
    assert torch.allclose(losses[True], losses[False], rtol=1e-3, atol=1e-4), (losses[True] - losses[False]).abs().max()


def test_the_last_partial_batch_gets_its_own_graph_and_counts_its_images() -> None:
    _, step, runner = _runner(OPTIMIZERS["sgd"], graphed=True)
    epoch = _batches(6, size=32, last=20)
    for _ in range(3):
        for images, labels in epoch:
            runner(images, labels)
    torch.cuda.synchronize()
    assert runner.failed is None and runner.captures == 2 and len(runner.graphs) == 2
    assert int(step.state.epoch[2]) == 3 * (5 * 32 + 20)


def test_dropout_turned_on_and_off_is_recaptured_and_stays_graphed() -> None:
    model, step, runner = _runner(OPTIMIZERS["sgd"], graphed=True)
    dropout = next(m for m in model.modules() if isinstance(m, ScheduledDropout))
    batches = _batches(12)
    for index, (images, labels) in enumerate(batches):
        if index == 6:
            dropout.set_rate(0.5)
        if index == 9:
            dropout.set_rate(0.25)
        runner(images, labels)
    torch.cuda.synchronize()
    assert runner.failed is None and runner.captures == 2


def test_a_checkpoint_written_with_two_gpus_rng_resumes_on_one(tmp_path: Path) -> None:
    config = tiny_config(epochs=2, device="cuda", lookahead_every=3)
    trainer = Trainer(config, tmp_path / "run", control=None)
    stopped_at = {}

    original = trainer._between_steps

    def between_steps() -> bool:
        if trainer.progress.step == 5 and not stopped_at:
            stopped_at["step"] = 5
            trainer.control.stop("simulated interrupt")
        return original()

    trainer._between_steps = between_steps
    assert trainer.run().status == "stopped"
    last = tmp_path / "run" / "last.pt"
    state = load_checkpoint(last)
    one = state["rng"]["cuda"]
    assert torch.is_tensor(one)  # this run's GPU alone
    state["rng"]["cuda"] = [one, one.clone()]  # as checkpoints written on a 2-GPU machine held it
    save_checkpoint(state, last)
    resumed = Trainer(config, tmp_path / "run", resume=True).run()
    assert resumed.status == "finished"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["graphs"] == "cuda graphs"
