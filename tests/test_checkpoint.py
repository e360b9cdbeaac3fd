"""Checkpoints: atomic writes, and weights-only loading that refuses anything that could run code."""

import errno
import random
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifartui.engine.runs import checkpoint as ckpt
from cifartui.engine.runs.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from tests.conftest import malicious_pickle


def _state(value: float) -> dict:
    return {"format": CHECKPOINT_FORMAT, "weights": torch.full((4,), value), "step": int(value)}


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(_state(1.0), path)
    real_save = torch.save

    def disk_full(obj, handle, *args, **kwargs):  # noqa: ANN001
        real_save(obj, handle, *args, **kwargs)  # bytes reach the temporary file...
        raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk fills up

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(_state(2.0), path)
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_fsync_failure_also_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)

    def failing_fsync(_fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(ckpt.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        save_checkpoint(_state(3.0), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1 and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("force_unsafe", [False, True])
@pytest.mark.parametrize("container", ["raw pickle", "torch zip"])
def test_malicious_checkpoints_are_refused_and_run_no_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           force_unsafe: bool, container: str) -> None:
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code-ran"
    path = tmp_path / "last.pt"
    if container == "raw pickle":
        path.write_bytes(malicious_pickle(marker))
    else:
        class Exploit:
            def __reduce__(self):
                return (open, (str(marker), "w"))
        torch.save({"format": CHECKPOINT_FORMAT, "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused") as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "foreign"])
def test_damaged_or_foreign_checkpoints_get_a_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a checkpoint" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_damaged_bytes_are_called_corrupted_not_dangerous(tmp_path: Path, data: st.DataObject) -> None:
    """Random or damaged bytes are a broken file, not objects "which could run code"."""
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)
    original = path.read_bytes()
    how = data.draw(st.sampled_from(["random", "random after a pickle header", "truncated"]))
    if how == "random":
        damaged = data.draw(st.binary(min_size=1, max_size=3000))
    elif how == "random after a pickle header":
        damaged = b"\x80" + bytes([data.draw(st.integers(2, 5))]) + data.draw(st.binary(min_size=1, max_size=3000))
    else:
        damaged = original[:data.draw(st.integers(1, len(original) - 1))]
    path.write_bytes(damaged)
    try:
        load_checkpoint(path)
    except CheckpointError as error:
        message = str(error)
        assert message.startswith(f"{path}: ")
        if "refused" in message:  # only when the bytes really are a pickle asking for objects
            assert pickle_parses(damaged), message
        else:
            assert "corrupted" in message or "not a cifartui checkpoint" in message, message


def pickle_parses(raw: bytes) -> bool:
    import pickletools

    try:
        return any(op.name == "STOP" for op, _, _ in pickletools.genops(raw))
    except Exception:  # noqa: BLE001
        return False


def test_random_bytes_are_reported_as_corrupted(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(5000)))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert "corrupted" in str(caught.value) and "could run code" not in str(caught.value)


def test_rng_states_round_trip() -> None:
    import numpy as np
    state = ckpt.capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


class FakeGpuRng:
    """torch.cuda's per-GPU RNG calls over CPU generators, one per GPU."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int):
        self.generators = [torch.Generator().manual_seed(index) for index in range(count)]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self._get(device).get_state())
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": self._get(device).set_state(state))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [g.get_state() for g in self.generators])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("every GPU's state set"))

    def _get(self, device: torch.device) -> torch.Generator:
        return self.generators[torch.device(device).index]


def test_a_checkpoint_holds_and_restores_only_its_runs_gpu_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = FakeGpuRng(monkeypatch, 2)
    state = ckpt.capture_rng(torch.device("cuda", 1))
    assert torch.equal(state["cuda"], gpus.generators[1].get_state())
    other = gpus.generators[0].get_state()
    gpus.generators[1].manual_seed(99)
    ckpt.restore_rng(state, torch.device("cuda", 1))
    assert torch.equal(gpus.generators[1].get_state(), state["cuda"])
    assert torch.equal(gpus.generators[0].get_state(), other)  # the other run's GPU is left alone


@pytest.mark.parametrize("index, entry", [(0, 0), (3, 3), (5, 0)])
def test_an_all_gpus_checkpoint_resumes_on_fewer_gpus(monkeypatch: pytest.MonkeyPatch, index: int, entry: int) -> None:
    eight = [torch.Generator().manual_seed(1000 + i).get_state() for i in range(8)][:4 if index == 5 else 8]
    gpus = FakeGpuRng(monkeypatch, 8)
    state = {**ckpt.capture_rng(), "cuda": eight}  # written before checkpoints held one GPU's state
    ckpt.restore_rng(state, torch.device("cuda", index))
    assert torch.equal(gpus.generators[index].get_state(), eight[entry])


def test_a_cpu_run_neither_saves_nor_restores_gpu_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeGpuRng(monkeypatch, 2)
    assert "cuda" not in ckpt.capture_rng(torch.device("cpu"))
    ckpt.restore_rng({**ckpt.capture_rng(), "cuda": [torch.zeros(16, dtype=torch.uint8)]}, torch.device("cpu"))
