"""Presets: every seed experiment exists, loads, composes; bad files are refused clearly."""

from pathlib import Path

import pytest

from cifartui import presets
from cifartui.cli import main
from cifartui.config import ConfigError, RunConfig, from_mapping

SEED_PRESETS = {
    "elu18-cifar100": 75.72, "cnn3-cifar10": 77.37, "resnet18-dropout-cifar10": 86.75,
    "resnet18-dropout-cifar100": 49.4, "vgg19-cifar10": 70.0, "cnn3-adam-cifar100": 56.02,
    "cnn4-rmsprop-cifar100": 44.5, "resnet18-cifar10": 95.0, "resnet18-cifar100": 76.0,
}


@pytest.mark.parametrize("name", sorted(SEED_PRESETS) + ["demo-synthetic"])
def test_every_named_preset_loads(name: str) -> None:
    config = presets.load(name)
    assert config.name == name
    if name in SEED_PRESETS:
        assert config.reference.top1 == SEED_PRESETS[name]
        assert config.reference.source


def test_seed_details_are_as_written() -> None:
    elu = presets.load("elu18-cifar100")
    assert (elu.train.batch_size, elu.train.max_steps, elu.optimizer.lr, elu.optimizer.momentum) == (100, 165000, 0.01, 0.9)
    assert elu.optimizer.weight_decay == 5e-4 and elu.optimizer.schedule.milestones == (35000,)
    assert elu.augment.preprocess == ("gcn", "zca") and elu.augment.crop_padding == 4 and elu.augment.flip
    assert [e.action for e in elu.dropout_schedule] == ["set", "multiply"]
    cnn3 = presets.load("cnn3-cifar10")
    assert (cnn3.train.batch_size, cnn3.train.epochs, cnn3.dataset.val_fraction) == (64, 100, 0.2)
    assert presets.load("resnet18-dropout-cifar100").reference.top5 == 78.42
    rms = presets.load("cnn4-rmsprop-cifar100")
    assert (rms.optimizer.name, rms.train.batch_size, rms.train.epochs) == ("rmsprop", 128, 30)
    adam = presets.load("cnn3-adam-cifar100")
    assert (adam.optimizer.name, adam.optimizer.lr, adam.dataset.val_fraction) == ("adam", 1e-4, 0.17)


def test_presets_command_lists_every_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in list(SEED_PRESETS) + ["demo-synthetic"]:
        assert name in out


def test_presets_command_shows_resolved_preset_and_model_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "cnn4-rmsprop-cifar100"]) == 0
    out = capsys.readouterr().out
    assert "964,516 parameters" in out  # the seed's Keras summary says 964,516
    assert "optimizer.name" in out and "rmsprop" in out


def test_compose_swaps_parts_and_sets_keys() -> None:
    base = presets.load("cnn3-adam-cifar100")
    config = presets.compose(base, dataset="synthetic", optimizer="sgd-cosine",
                             sets=["optimizer.lr=0.05", "augment.flip=false", "optimizer.schedule.warmup=2"],
                             epochs=3, seed=7)
    assert config.dataset.name == "synthetic" and config.dataset.num_classes == 100  # the head still fits
    assert config.dataset.val_fraction == 0.17
    assert (config.optimizer.name, config.optimizer.lr, config.optimizer.schedule.warmup) == ("sgd", 0.05, 2)
    assert config.augment.flip is False and config.train.epochs == 3 and config.train.seed == 7
    assert presets.compose(presets.load("elu18-cifar100"), epochs=2).train.max_steps == 0


@pytest.mark.parametrize("setting, message", [
    ("optimizer.lrr=1", "unknown key"),
    ("optimizer.lr=-1", "out of range"),
    ("train.epochs=1.5", "expected an integer"),
    ("optimizer.name=adagrad", "not allowed"),
    ("nonsense", "expected part.key=value"),
    ("optimizer.nesterov=true", "Nesterov momentum needs"),
])
def test_bad_set_values_are_refused(setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        presets.compose(presets.load("demo-synthetic"), sets=[setting])


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("content, fragment", [
    ("[optimizer\nname = 'sgd'", "not valid TOML"),
    (b"\xff\xfe\x00garbage", "not a UTF-8 text file"),
    ("[optimizer]\nname = 'sgd'\nlearning_rate = 0.1\n", "'optimizer.learning_rate': unknown key"),
    ("[train]\nepochs = 'ten'\n", "'train.epochs': expected an integer"),
    ("[train]\nbatch_size = 0\n", "'train.batch_size': 0 is out of range"),
    ("[dataset]\nval_fraction = 1.5\n", "'dataset.val_fraction': 1.5 is out of range"),
    ("[model]\nname = 'resnet9000'\n", "unknown model 'resnet9000'"),
    ("[dataset]\npreset = 'imagenet'\n", "unknown dataset preset 'imagenet'"),
    ("model = 3\n", "'model': expected a table"),
])
def test_broken_preset_files_exit_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    content: str | bytes, fragment: str) -> None:
    path = _write(tmp_path / "broken.toml", content)
    assert main(["train", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err.replace("\n", "") or "imagenet" in fragment
    assert fragment in " ".join(err.split())
    assert "Traceback" not in err


def test_unknown_preset_name_lists_available(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "no-such-preset"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown preset 'no-such-preset'" in err and "demo-synthetic" in err


def test_user_presets_are_found_and_can_use_parts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user_dir = presets.user_preset_dir()
    _write(user_dir / "mine.toml", "description = 'mine'\n[dataset]\npreset = 'synthetic'\n"
                                   "[model]\npreset = 'resnet20'\n[optimizer]\npreset = 'sgd-cosine'\n")
    _write(user_dir / "model" / "wide.toml", "name = 'vgg11'\nbatch_norm = false\n")
    config = presets.load("mine")
    assert config.model.name == "resnet20" and config.optimizer.schedule.name == "cosine"
    assert presets.compose(config, model="wide").model.batch_norm is False
    assert main(["presets"]) == 0
    assert "mine (user)" in capsys.readouterr().out


def test_config_round_trips_through_plain_data() -> None:
    config = presets.load("elu18-cifar100")
    assert from_mapping(RunConfig, config.to_dict()) == config
