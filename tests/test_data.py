"""Data: synthetic generation, the standard CIFAR folders, validation, download with MD5, offline."""

import dataclasses
import functools
import hashlib
import http.server
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifartui.cli import main
from cifartui.config import DatasetConfig
from cifartui.engine.train import data
from cifartui.engine.train.data import DataError, DataUnavailable, load_cifar, load_dataset, make_synthetic
from tests.conftest import make_archive, make_cifar_folder, malicious_pickle


def test_synthetic_is_cifar_shaped_and_deterministic() -> None:
    a = make_synthetic(classes=100, train_size=500, test_size=50, seed=3)
    b = make_synthetic(classes=100, train_size=500, test_size=50, seed=3)
    c = make_synthetic(classes=100, train_size=500, test_size=50, seed=4)
    assert a.train_images.shape == (500, 3, 32, 32) and a.train_images.dtype == np.uint8
    assert a.test_images.shape == (50, 3, 32, 32) and a.num_classes == 100
    assert np.array_equal(a.train_images, b.train_images) and np.array_equal(a.test_labels, b.test_labels)
    assert not np.array_equal(a.train_images, c.train_images)
    assert set(np.unique(a.train_labels)) <= set(range(100)) and len(np.unique(a.train_labels)) > 90


def test_cifar10_standard_folder_is_read_without_network(tmp_path: Path) -> None:
    make_cifar_folder(tmp_path, "cifar10", per_file=30)
    dataset = load_cifar("cifar10", tmp_path, download=False)
    assert dataset.train_images.shape == (150, 3, 32, 32) and dataset.test_images.shape == (30, 3, 32, 32)
    assert dataset.class_names[0] == "airplane" and dataset.num_classes == 10


def test_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    make_cifar_folder(tmp_path, "cifar100", per_file=50)
    fine = load_dataset(DatasetConfig(name="cifar100"), tmp_path)
    coarse = load_dataset(DatasetConfig(name="cifar100", labels="coarse"), tmp_path)
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert coarse.class_names[0] == "aquatic_mammals" and fine.superclass_names == coarse.class_names
    assert np.array_equal(coarse.train_labels, fine.train_labels // 5)  # how the folder was built


@pytest.mark.parametrize("damage, fragment", [
    ("truncate", "not a readable CIFAR batch file"),
    ("remove", "missing"),
    ("shape", "must be a uint8 array of shape (N, 3072)"),
    ("labels", "labels must lie in [0, 9]"),
    ("count", "images but"),
    ("malicious", "refusing to load"),
])
def test_damaged_folder_errors_name_the_file(tmp_path: Path, damage: str, fragment: str) -> None:
    folder = make_cifar_folder(tmp_path, "cifar10", per_file=20)
    target = folder / "data_batch_3"
    content = {b"data": np.zeros((20, 3072), np.uint8), b"labels": [0] * 20}
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:500])
    elif damage == "remove":
        target.unlink()
    elif damage == "shape":
        content[b"data"] = np.zeros((20, 32, 32), np.uint8)
    elif damage == "labels":
        content[b"labels"] = [12] * 20
    elif damage == "count":
        content[b"labels"] = [1] * 19
    elif damage == "malicious":
        target.write_bytes(malicious_pickle(tmp_path / "pwned"))
    if damage in ("shape", "labels", "count"):
        target.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(DataError) as caught:
        load_cifar("cifar10", tmp_path, download=False)
    assert str(target) in str(caught.value) and fragment in str(caught.value)
    assert not (tmp_path / "pwned").exists()


FRAME_OVERFLOW = b"\x80\x04\x95" + (2**63 + 5).to_bytes(8, "little") + b"}."
UNKNOWN_CODEC = (b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00xX\x0b\x00\x00\x00nonexistent"
                 b"q\x01\x86q\x02Rq\x03.")


@pytest.mark.parametrize("damage", ["frame overflow", "unknown codec", "non-UTF-8 label names", "huge label"])
def test_every_way_a_batch_file_fails_is_a_data_error_naming_it(tmp_path: Path, damage: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_cifar_folder(tmp_path / "data", "cifar10", per_file=20)
    target = folder / ("batches.meta" if "names" in damage else "data_batch_2")
    if damage == "frame overflow":
        target.write_bytes(FRAME_OVERFLOW)
    elif damage == "unknown codec":
        target.write_bytes(UNKNOWN_CODEC)
    elif damage == "non-UTF-8 label names":
        target.write_bytes(pickle.dumps({b"label_names": [b"\xff\xfe cat"] * 10}, protocol=2))
    else:
        target.write_bytes(pickle.dumps({b"data": np.zeros((20, 3072), np.uint8), b"labels": [2**70] * 20}))
    with pytest.raises(DataError) as caught:
        load_cifar("cifar10", tmp_path / "data", download=False)
    assert str(caught.value).startswith(f"{target}: ")
    # The command line: one message naming the file, exit 2, and no run folder left behind.
    runs = tmp_path / "runs"
    assert main(["train", "cnn3-cifar10", "--data-dir", str(tmp_path / "data"), "--runs-dir", str(runs),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(target) in err
    assert "Traceback" not in err and not list(runs.iterdir())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_batch_bytes_give_only_data_errors(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    root = tmp_path_factory.mktemp("fuzzed-batch")
    folder = make_cifar_folder(root, "cifar10", per_file=4)
    target = folder / data.draw(st.sampled_from(["data_batch_1", "test_batch", "batches.meta"]))
    original = target.read_bytes()
    how = data.draw(st.sampled_from(["truncate", "flip", "random"]))
    if how == "truncate":
        damaged = original[:data.draw(st.integers(0, len(original) - 1))]
    elif how == "flip":
        damaged = bytearray(original)
        for position in data.draw(st.lists(st.integers(0, len(original) - 1), min_size=1, max_size=8)):
            damaged[position] = data.draw(st.integers(0, 255))
        damaged = bytes(damaged)
    else:
        damaged = data.draw(st.binary(max_size=400))
    target.write_bytes(damaged)
    try:
        load_cifar("cifar10", root, download=False)
    except DataError as error:
        assert str(error).startswith(f"{target}: ")


@pytest.fixture
def archive_server(tmp_path: Path):
    """An HTTP server on loopback serving a small CIFAR-10 archive built for the test."""
    served = tmp_path / "served"
    built = make_cifar_folder(tmp_path / "source", "cifar10", per_file=10)
    served.mkdir()
    archive = make_archive(built, served / "cifar-10-python.tar.gz")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/{archive.name}", hashlib.md5(archive.read_bytes()).hexdigest()
    server.shutdown()
    server.server_close()


def _serve(monkeypatch: pytest.MonkeyPatch, url: str, md5: str) -> None:
    spec = dataclasses.replace(data.ARCHIVES["cifar10"], url=url, md5=md5)
    monkeypatch.setitem(data.ARCHIVES, "cifar10", spec)


def test_first_use_downloads_verifies_and_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   archive_server: tuple[str, str]) -> None:
    _serve(monkeypatch, *archive_server)
    root = tmp_path / "cache"
    dataset = load_cifar("cifar10", root)
    assert (root / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert (root / "cifar-10-python.tar.gz").is_file() and dataset.train_images.shape == (50, 3, 32, 32)


def test_archive_with_wrong_md5_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           archive_server: tuple[str, str]) -> None:
    _serve(monkeypatch, archive_server[0], "0" * 32)
    root = tmp_path / "cache"
    with pytest.raises(DataError, match="MD5") as caught:
        load_cifar("cifar10", root)
    assert str(root / "cifar-10-python.tar.gz") in str(caught.value)
    assert not (root / "cifar-10-batches-py").exists()


def test_offline_without_data_explains_and_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 (discard) on loopback refuses the connection at once: no network reached.
    spec = dataclasses.replace(data.ARCHIVES["cifar10"], url="http://127.0.0.1:9/cifar-10-python.tar.gz")
    monkeypatch.setitem(data.ARCHIVES, "cifar10", spec)
    with pytest.raises(DataUnavailable):
        load_cifar("cifar10", tmp_path / "empty")
    runs = tmp_path / "runs"
    code = main(["train", "cnn3-cifar10", "--data-dir", str(tmp_path / "empty"), "--runs-dir", str(runs),
                 "--device", "cpu"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "could not be downloaded" in err and "--data-dir" in err and "--dataset synthetic" in err
    assert "cifar-10-batches-py" in err and "Traceback" not in err
    assert not any(runs.glob("*")), "a run that never started leaves no directory behind"


def test_cnn3_trains_and_tests_on_a_standard_cifar10_folder(tmp_path: Path) -> None:
    make_cifar_folder(tmp_path / "data", "cifar10", per_file=40)
    summary = tmp_path / "summary.json"
    code = main(["train", "cnn3-cifar10", "--epochs", "1", "--data-dir", str(tmp_path / "data"),
                 "--runs-dir", str(tmp_path / "runs"), "--device", "cpu", "--summary-json", str(summary)])
    assert code == 0
    import json
    result = json.loads(summary.read_text())
    assert result["epochs"] == 1 and 0.0 <= result["test_top1"] <= 100.0
    events = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    started = next(e for e in events if e["event"] == "RunStarted")
    assert (started["train_size"], started["val_size"], started["test_size"]) == (160, 40, 40)


def test_cifar100_knows_each_class_superclass_from_the_files(tmp_path: Path) -> None:
    make_cifar_folder(tmp_path, "cifar100", per_file=2000)  # the builder files class c under c // 5
    dataset = load_dataset(DatasetConfig(name="cifar100"), tmp_path)
    assert dataset.superclass_of == tuple(c // 5 for c in range(100))
    assert load_dataset(DatasetConfig(name="cifar100", labels="coarse"), tmp_path).superclass_of == ()
