"""Inspecting a finished run and predicting new images, from the command line."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifartui.cli import main
from cifartui.engine.data import make_synthetic

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


def test_exports_open_in_their_usual_tools(finished_run: tuple[Path, dict], tmp_path: Path) -> None:
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, summary = finished_run
    assert main(["export", str(run_dir), "--format", "csv", "-o", str(tmp_path / "m.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert rows and {"event", "step", "loss"} <= set(rows[0])
    assert main(["export", str(run_dir), "--format", "json", "-o", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())[0]["event"] == "RunStarted"

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
