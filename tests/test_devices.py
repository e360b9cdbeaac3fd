"""Device resolution on a machine with GPUs, tested on the CPU by faking the CUDA calls the engine makes.

The fake `set_device` rejects an index-less device exactly as PyTorch does
("Expected a torch.device with a specified index or an integer"), which is what
every GPU launch with the default device once ran into.
"""

from __future__ import annotations

import pytest
import torch

from cifartui.cli import main
from cifartui.engine.train import devices
from cifartui.engine.train.devices import DeviceError, activate, least_busy_gpu, resolve_device
from cifartui.engine.train.trainer import Trainer
from tests.conftest import tiny_config


class FakeCuda:
    def __init__(self, count: int = 2, current: int = 1):
        self.count, self.current = count, current
        self.set_calls: list[object] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> "FakeCuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)
        return self

    def set_device(self, device: object) -> None:
        if isinstance(device, torch.device) and device.index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        self.set_calls.append(device)
        raise _ReachedTheGpu(device)


class _ReachedTheGpu(Exception):
    """Where a real GPU would take over: the test stops the run here."""


def test_every_name_resolves_to_an_indexed_device(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCuda(count=2, current=1).install(monkeypatch)
    assert resolve_device("auto") == torch.device("cuda", 1)  # the current CUDA device
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"--device: cuda:2 does not exist: 2 CUDA GPUs visible \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2", "--device")
    with pytest.raises(DeviceError, match="unknown device 'gpu'; expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")


def test_without_a_gpu_auto_is_the_cpu_and_cuda_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCuda(count=0).install(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="cuda was asked for but no CUDA GPU is visible"):
        resolve_device("cuda")


@pytest.mark.parametrize("name, expected", [("auto", 1), ("cuda", 1), ("cuda:0", 0)])
def test_the_trainer_hands_cuda_an_indexed_device(tmp_path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                  name: str, expected: int) -> None:
    fake = FakeCuda(count=2, current=1).install(monkeypatch)
    with pytest.raises(_ReachedTheGpu):
        Trainer(tiny_config(device=name), tmp_path / "run").run()
    assert fake.set_calls == [torch.device("cuda", expected)]


def test_a_gpu_that_does_not_exist_is_exit_2_naming_the_option(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    FakeCuda(count=2).install(monkeypatch)
    assert main(["train", "demo-synthetic", "--device", "cuda:5", "--set", "dataset.train_size=100"]) == 2
    error = capsys.readouterr().err
    assert "--device: cuda:5 does not exist" in error and "cuda:0 to cuda:1" in error


def test_activate_refuses_an_index_less_cuda_device() -> None:
    with pytest.raises(DeviceError):
        activate(torch.device("cuda"))
    activate(torch.device("cpu"))  # a no-op


def test_runs_left_on_auto_go_to_the_least_busy_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCuda(count=3, current=0).install(monkeypatch)
    assert least_busy_gpu([], 3) == 0
    assert least_busy_gpu(["cuda:0"], 3) == 1
    assert least_busy_gpu(["cuda", "cuda:1"], 3) == 2  # "cuda" is the current device, cuda:0
    assert least_busy_gpu(["cuda:0", "cuda:1", "cuda:2", "cpu"], 3) == 0
    assert devices.least_busy_gpu(["cuda:9"], 3) == 0  # a device that left the machine counts for none


@pytest.mark.parametrize("capability, expected", [((7, 5), None), ((7, 0), None), ((8, 0), torch.bfloat16),
                                                  ((9, 0), torch.bfloat16)])
def test_auto_precision_is_bf16_only_where_the_gpu_computes_it_fast(
        monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: torch.dtype | None) -> None:
    asked: list[object] = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: capability >= (8, 0))
    gpu = torch.device("cuda", 1)
    dtype, note = devices.autocast_dtype("auto", gpu)
    assert dtype is expected and asked == [gpu]
    if expected is None:  # the log says fp32 was chosen, and why
        assert "fp32" in note and f"{capability[0]}.{capability[1]}" in note and "train.precision" in note
    else:
        assert note == ""
    assert devices.autocast_dtype("bf16", gpu) == (torch.bfloat16, "")  # asked for by name: kept
    assert devices.autocast_dtype("fp32", gpu) == (None, "")


def test_auto_precision_on_the_cpu_is_fp32() -> None:
    assert devices.autocast_dtype("auto", torch.device("cpu")) == (None, "")


def test_a_runs_seed_reseeds_only_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    generators = tuple(torch.Generator().manual_seed(100 + index) for index in range(3))
    before = [g.get_state() for g in generators]
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(torch.cuda, "default_generators", generators)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: pytest.fail("every GPU reseeded"))
    devices.seed_torch(5, torch.device("cuda", 1))
    assert torch.equal(generators[0].get_state(), before[0]) and torch.equal(generators[2].get_state(), before[2])
    assert generators[1].initial_seed() == 5 and torch.initial_seed() == 5
