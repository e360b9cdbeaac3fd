"""Shared fixtures: an isolated environment, tiny configs and CIFAR folders built on the spot."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cifartui.config import (AugmentConfig, DatasetConfig, ModelConfig, OptimizerConfig, RunConfig,
                             TrainConfig)


# A shell starts a background job with SIGINT and SIGQUIT ignored, and the commands the
# tests start would inherit that (cifartui respects an ignored signal, as under nohup).
# The tests that press Ctrl-C need it delivered, so the test processes take it back.
for _number in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    if signal.getsignal(_number) == signal.SIG_IGN:
        signal.signal(_number, signal.default_int_handler if _number == signal.SIGINT else signal.SIG_DFL)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cifartui long fault variants")
    group.addoption("--kill-trials", type=int, default=2,
                    help="kill -9 trials in test_faults (default 2; the long variant is 100)")


SLOW_TESTS = {line.strip() for line in (Path(__file__).parent / "slow_tests.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Two test processes per CPU (`--numprocesses=logical` in pyproject.toml): most tests wait
    on processes they started, terminals and screens, and one per CPU left the CPUs idle about
    half the time. PYTEST_XDIST_AUTO_NUM_WORKERS still chooses, as in pytest-xdist."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(2 * cpus, cpus + 8)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests listed in slow_tests.txt are slow as well. Then the slow tests first, in their
    usual order: the test processes share them out from the start, instead of one process
    being left with a long one at the end while the others have nothing left to do."""
    for item in items:
        if item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's cache, config or ./runs."""
    monkeypatch.setenv("CIFARTUI_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CIFARTUI_CONFIG", str(tmp_path / "config"))
    monkeypatch.setenv("CIFARTUI_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    # Over SSH the app starts runs in the background by default; tests choose explicitly.
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    monkeypatch.delenv("SSH_TTY", raising=False)
    # Tests run in one process per CPU (pytest-xdist): each, and what it starts, keeps to
    # its share of the cores rather than every one fighting for all of them.
    threads = max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    torch.set_num_threads(min(threads, 2))
    monkeypatch.setenv("OMP_NUM_THREADS", str(min(threads, 2)))


def tiny_config(**train: object) -> RunConfig:
    """A run that takes a second or two on a CPU but touches every moving part."""
    settings = {"epochs": 2, "batch_size": 32, "log_every": 1, "checkpoint_minutes": 0.0, "device": "cpu"}
    settings.update(train)
    return RunConfig(
        name="tiny",
        dataset=DatasetConfig(name="synthetic", classes=10, train_size=300, test_size=100, val_fraction=0.2),
        model=ModelConfig(name="cnn3"),
        optimizer=OptimizerConfig(name="sgd", lr=0.02, momentum=0.9, weight_decay=5e-4),
        augment=AugmentConfig(preprocess=("standardize",), crop_padding=4, flip=True, cutout=6),
        train=TrainConfig(**settings),
    )


def with_train(config: RunConfig, **changes: object) -> RunConfig:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", 100),
}


def _dump(path: Path, content: dict) -> None:
    # Protocol 2 and bytes keys, like the official (Python 2) files.
    path.write_bytes(pickle.dumps(content, protocol=2))


def make_cifar_folder(root: Path, name: str = "cifar10", per_file: int = 40, seed: int = 0) -> Path:
    """A standard-layout CIFAR folder with a few random images per batch file."""
    folder_name, train_files, test_file, meta_file, label_key, classes = CIFAR_LAYOUT[name]
    rng = np.random.default_rng(seed)
    folder = root / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    for file_name in train_files + [test_file]:
        data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=per_file).tolist()
        content = {b"batch_label": b"test", b"data": data, label_key.encode(): labels}
        if name == "cifar100":
            content[b"coarse_labels"] = [label // 5 for label in labels]
        _dump(folder / file_name, content)
    if name == "cifar10":
        from cifartui.engine.train.data import CIFAR10_CLASSES
        _dump(folder / meta_file, {b"label_names": [n.encode() for n in CIFAR10_CLASSES]})
    else:
        from cifartui.engine.train.data import CIFAR100_CLASSES, CIFAR100_SUPERCLASSES
        _dump(folder / meta_file, {b"fine_label_names": [n.encode() for n in CIFAR100_CLASSES],
                                   b"coarse_label_names": [n.encode() for n in CIFAR100_SUPERCLASSES]})
    return folder


def make_archive(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def malicious_pickle(marker: Path) -> bytes:
    """A pickle that, if loaded unsafely, creates `marker`."""

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buffer = io.BytesIO()
    pickle.dump({"format": "cifartui-checkpoint-1", "payload": Exploit()}, buffer)
    return buffer.getvalue()
