"""Inspecting a finished run and predicting new images, from the command line."""

import io
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cifartui.cli import main
from cifartui.engine.train.data import make_synthetic
from cifartui.engine.train.inspect import InspectError, read_image

PRESET = """
description = "a quick run to inspect"
[dataset]
name = "synthetic"
train_size = 600
test_size = 150
val_fraction = 0.2
[model]
name = "cnn3"
[optimizer]
name = "adam"
lr = 0.002
[augment]
preprocess = ["standardize"]
flip = true
[train]
epochs = 3
batch_size = 32
device = "cpu"
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("inspect")
    preset = folder / "quick.toml"
    preset.write_text(PRESET)
    summary = folder / "summary.json"
    assert main(["train", str(preset), "--runs-dir", str(folder / "runs"), "--summary-json", str(summary)]) == 0
    (run_dir,) = list((folder / "runs").iterdir())
    return run_dir, json.loads(summary.read_text())


def test_inspect_json_confusion_matrix_agrees_with_the_runs_test_accuracy(
        finished_run: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    run_dir, summary = finished_run
    assert main(["inspect", str(run_dir), "--checkpoint", "last", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 150
    assert 100.0 * np.trace(matrix) / matrix.sum() == pytest.approx(summary["test_top1"])
    assert report["test_top1"] == pytest.approx(summary["test_top1"])
    assert report["test_top5"] == pytest.approx(summary["test_top5"])
    for c, name in enumerate(report["classes"]):  # each class's row is its accuracy
        row = matrix[c]
        expected = 100.0 * row[c] / row.sum() if row.sum() else None
        assert report["per_class_accuracy"][name] == pytest.approx(expected)
    pair = report["most_confused"][0]
    t, p = report["classes"].index(pair["true"]), report["classes"].index(pair["predicted"])
    off_diagonal = matrix - np.diag(np.diag(matrix))
    assert pair["images"] == matrix[t, p] == off_diagonal.max()


def test_inspect_prints_tables_by_class(finished_run: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    run_dir, _ = finished_run
    assert main(["inspect", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "accuracy per class" in out and "confusion matrix" in out and "top-1" in out
    assert all(f"class_{i:02d}" in out for i in range(10))  # every class has its row


def test_predict_gives_top5_for_images_of_any_size(finished_run: tuple[Path, dict], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    run_dir, _ = finished_run
    data = make_synthetic(10, 600, 150)
    paths = []
    for index, size in enumerate([(96, 64), (32, 32), (500, 375)]):
        image = Image.fromarray(data.test_images[index].transpose(1, 2, 0)).resize(size)
        path = tmp_path / f"photo{index}.{'jpg' if index == 2 else 'png'}"
        image.save(path)
        paths.append(path)
    assert main(["predict", str(run_dir), *map(str, paths), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == list(map(str, paths))
    for result in results:
        probabilities = [entry["probability"] for entry in result["top5"]]
        assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
        assert 0.0 < sum(probabilities) <= 1.0 + 1e-6
    assert main(["predict", str(run_dir), str(paths[0])]) == 0
    assert "probability" in capsys.readouterr().out


def test_predict_names_a_file_that_is_not_an_image(finished_run: tuple[Path, dict], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    run_dir, _ = finished_run
    bogus = tmp_path / "notes.png"
    bogus.write_text("not an image")
    assert main(["predict", str(run_dir), str(bogus)]) == 2
    assert f"{bogus}: not an image file" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "config.json: missing" in capsys.readouterr().err


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes of valid PNG that claim a huge image (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
            + chunk(b"IEND", b""))


def _image_bytes(kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 10)).save(buffer, kind)
    return buffer.getvalue()


@pytest.mark.parametrize("damage", ["20000x20000 png", "12000x12000 png", "short header png", "huge gif",
                                    "bad maxval ppm", "a folder"])
def test_predict_refuses_huge_and_damaged_images_naming_them(finished_run: tuple[Path, dict], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture, damage: str) -> None:
    run_dir, _ = finished_run
    path = tmp_path / f"image.{damage.split()[-1]}"
    raw = bytearray(_image_bytes(damage.split()[-1].upper())) if damage != "a folder" else bytearray()
    if damage.endswith("x20000 png"):
        raw = bytearray(png_claiming(20000, 20000))  # PIL raises DecompressionBombError
    elif damage.startswith("12000"):
        raw = bytearray(png_claiming(12000, 12000))  # above PIL's limit it only warns, then decodes it all
    elif damage == "short header png":
        raw[8:12] = (6).to_bytes(4, "big")  # PIL raises ValueError
    elif damage == "huge gif":
        raw[6:10] = b"\x28\x87\x1e\xe3"  # 34,600 x 58,142 pixels claimed
    elif damage == "bad maxval ppm":
        raw[9:13] = b"\x9c55\n"  # PIL raises ValueError
    if damage == "a folder":
        path.mkdir()
    else:
        path.write_bytes(bytes(raw))
    assert main(["predict", str(run_dir), str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: " in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["PNG", "GIF", "PPM", "JPEG", "BMP", "TIFF", "WEBP"]), st.data())
def test_fuzzed_image_files_give_only_inspect_errors(tmp_path: Path, kind: str, data: st.DataObject) -> None:
    raw = bytearray(_image_bytes(kind))
    # Mostly in the header, where damage leads decoders down their rarer paths.
    where = st.one_of(st.integers(0, min(63, len(raw) - 1)), st.integers(0, len(raw) - 1))
    for position in data.draw(st.lists(where, min_size=1, max_size=12)):
        raw[position] = data.draw(st.integers(0, 255))
    raw = raw[:data.draw(st.integers(1, len(raw)))]
    path = tmp_path / f"fuzzed.{kind.lower()}"
    path.write_bytes(bytes(raw))
    try:
        image = read_image(path)
    except InspectError as error:
        assert str(error).startswith(f"{path}: ")
    else:
        assert image.shape == (3, 32, 32) and image.dtype == np.uint8


def test_inspect_names_a_checkpoint_that_does_not_fit_the_run(finished_run: tuple[Path, dict], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    run_dir, _ = finished_run
    edited = tmp_path / run_dir.name
    shutil.copytree(run_dir, edited)
    config = json.loads((edited / "config.json").read_text())
    config["dataset"]["classes"] = 20  # the weights have a 10-class head
    (edited / "config.json").write_text(json.dumps(config))
    assert main(["inspect", str(edited)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "do not fit the model" in err and "best.pt" in err and "Traceback" not in err


def test_exports_open_in_their_usual_tools(finished_run: tuple[Path, dict], tmp_path: Path) -> None:
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, summary = finished_run
    assert main(["export", str(run_dir), "--format", "csv", "-o", str(tmp_path / "m.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert rows and {"event", "step", "loss"} <= set(rows[0])
    assert main(["export", str(run_dir), "--format", "json", "-o", str(tmp_path / "m.json")]) == 0
    assert "RunStarted" in [event["event"] for event in json.loads((tmp_path / "m.json").read_text())]

    assert main(["export", str(run_dir), "--format", "tensorboard", "-o", str(tmp_path / "tb")]) == 0
    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "epoch/val_top1", "test/top1"} <= tags
    assert accumulator.Scalars("test/top1")[0].value == pytest.approx(summary["test_top1"])
    assert len(accumulator.Scalars("epoch/val_loss")) == 3

    assert main(["export", str(run_dir), "--format", "png"]) == 0
    with Image.open(run_dir / "metrics.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 500 and plot.size[1] > 500


def test_an_export_whose_package_is_missing_says_how_to_install_it(
        finished_run: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import sys

    run_dir, _ = finished_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["export", str(run_dir), "--format", "png", "-o", str(run_dir / "x.png")]) == 2
    assert "pip install 'cifartui[plots]'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main(["export", str(run_dir), "--format", "tensorboard", "-o", str(run_dir / "tb2")]) == 2
    assert "pip install 'cifartui[tensorboard]'" in capsys.readouterr().err
