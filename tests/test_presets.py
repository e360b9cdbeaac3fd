"""Presets: every seed experiment exists, loads, composes; bad files are refused clearly."""

import dataclasses
from pathlib import Path

import pytest

from cifartui import presets
from cifartui.cli import main
from cifartui.config import ConfigError, RunConfig, from_mapping
from cifartui.engine.train.augment import Augmenter
from cifartui.engine.train.models import build_model

SEEDS = Path("/work/shared/seeds")
# Every experiment of the five write-ups that reports a number: recipe -> (write-up, top-1, measured on).
SEED_RECIPES = {
    "elu18-cifar100": ("000_d50657e5d08e81c4", 75.72, "test"),
    "elu18-cifar100-dropout05": ("000_d50657e5d08e81c4", 75.72, "test"),
    "cnn3-cifar10": ("001_2977eeb2eae8fb0c", 77.37, "test"),
    "cnn3-cifar10-150ep": ("001_2977eeb2eae8fb0c", 78.22, "test"),
    "cnn3-cifar10-200ep": ("001_2977eeb2eae8fb0c", 77.77, "test"),
    "resnet18-dropout-cifar10": ("002_8a402e6c583ba6d9", 86.75, "test"),
    "resnet18-dropout-cifar100": ("002_8a402e6c583ba6d9", 49.4, "test"),
    "vgg19-cifar10": ("002_8a402e6c583ba6d9", 70.0, "test"),
    "elu-resnet20-cifar10": ("002_8a402e6c583ba6d9", 80.0, "test"),
    "elu-resnet50-cifar10": ("002_8a402e6c583ba6d9", 75.0, "test"),
    "elu-resnet110-cifar100": ("002_8a402e6c583ba6d9", 35.0, "validation"),
    "elu-resnet50-cifar100": ("002_8a402e6c583ba6d9", 50.0, "validation"),
    "cnn3-adam-cifar100": ("003_dbebb776f53215af", 56.02, "test"),
    "cnn3-adam-cifar100-noaug": ("003_dbebb776f53215af", 49.5, "test"),
    "cnn3-adam-cifar100-drop25-40": ("003_dbebb776f53215af", 49.17, "test"),
    "cnn3-adam-cifar100-decay": ("003_dbebb776f53215af", 11.95, "test"),
    "cnn3-sgd-cifar100": ("003_dbebb776f53215af", 2.11, "test"),
    "cnn4-rmsprop-cifar100": ("004_4e6ca3cee52a858c", 44.5, "test"),
}
OTHER_RECIPES = {"resnet18-cifar10": 95.0, "resnet18-cifar100": 76.0, "speedrun-cifar10": 94.0, "demo-synthetic": 0.0}


@pytest.mark.parametrize("name", sorted(presets.available()))
def test_every_recipe_loads_and_builds(name: str) -> None:
    from cifartui.engine.train.optim import decay_groups
    from cifartui.engine.train.schedules import DropoutSchedule

    config = presets.load(name)
    assert config.name == name and config.description
    assert name in SEED_RECIPES or name in OTHER_RECIPES, "a new recipe: say where it comes from in these tests"
    if name in SEED_RECIPES:
        seed, top1, measured_on = SEED_RECIPES[name]
        assert (config.reference.seed, config.reference.top1, config.reference.measured_on) == (seed, top1, measured_on)
        assert config.reference.source and config.reference.notes.strip()
    else:
        assert config.reference.top1 == OTHER_RECIPES[name] and not config.reference.seed
    model = build_model(config.model, config.dataset.num_classes)
    DropoutSchedule(config.dropout_schedule, model, steps_per_epoch=10)
    assert sum(len(group.names) for group in decay_groups(model, config.optimizer)) == len(
        [p for p in model.parameters() if p.requires_grad])


def test_seed_recipes_are_the_write_ups_experiments() -> None:
    found = presets.seed_recipes()
    assert set(found) == set(SEED_RECIPES)
    if SEEDS.is_dir():  # the write-ups themselves, where this checkout has them
        assert {config.reference.seed for config in found.values()} == {p.stem for p in SEEDS.glob("0*.txt")}


def test_seed_details_are_as_written() -> None:
    elu = presets.load("elu18-cifar100")
    assert (elu.train.batch_size, elu.train.max_steps, elu.optimizer.lr, elu.optimizer.momentum) == (100, 165000, 0.01, 0.9)
    assert elu.optimizer.weight_decay == 5e-4 and elu.optimizer.schedule.milestones == (35000,)
    assert elu.augment.preprocess == ("gcn", "zca") and elu.augment.crop_padding == 4 and elu.augment.flip
    assert [e.action for e in elu.dropout_schedule] == ["set", "multiply"]
    # The paper's 75.72% trained on all 50,000 images: 165k iterations of 100 are 330 epochs of them.
    assert elu.dataset.val_fraction == 0.0 and elu.train.epochs * 50_000 // 100 == elu.train.max_steps
    assert elu.model.init == "keras-he-first" and elu.augment.zca_epsilon == 0.1
    assert elu.model.dropout == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0)
    variant = presets.load("elu18-cifar100-dropout05")
    assert variant.model.dropout == (0.5,) * 7 and variant.dropout_schedule == elu.dropout_schedule
    assert dataclasses.replace(variant, name=elu.name, description=elu.description, reference=elu.reference,
                               model=elu.model) == elu  # the starting dropout is the only difference
    cnn3 = presets.load("cnn3-cifar10")
    assert (cnn3.train.batch_size, cnn3.train.epochs, cnn3.dataset.val_fraction) == (64, 100, 0.2)
    assert [presets.load(f"cnn3-cifar10-{n}ep").train.epochs for n in (150, 200)] == [150, 200]
    assert presets.load("resnet18-dropout-cifar100").reference.top5 == 78.42
    rms = presets.load("cnn4-rmsprop-cifar100")
    assert (rms.optimizer.name, rms.train.batch_size, rms.train.epochs) == ("rmsprop", 128, 30)
    adam = presets.load("cnn3-adam-cifar100")
    assert (adam.optimizer.name, adam.optimizer.lr, adam.dataset.val_fraction) == ("adam", 1e-4, 0.17)
    noaug = presets.load("cnn3-adam-cifar100-noaug")
    assert noaug.augment == presets.load("cnn3-sgd-cifar100").augment and not Augmenter(noaug.augment).active
    assert (noaug.train.epochs, noaug.dataset.val_fraction) == (100, 0.0)  # validated on the test set
    assert presets.load("cnn3-adam-cifar100-drop25-40").model.dropout == (0.25, 0.25, 0.4)
    assert presets.load("cnn3-adam-cifar100-decay").optimizer.inverse_time_decay == 0.05
    assert presets.load("cnn3-sgd-cifar100").optimizer.name == "sgd"


def test_vgg19_recipe_is_rebuilt_from_what_the_write_up_says() -> None:
    vgg = presets.load("vgg19-cifar10")
    assert (vgg.model.name, vgg.model.batch_norm, vgg.model.init, vgg.model.classifier_dropout) == (
        "vgg19", False, "keras", 0.0)
    assert (vgg.optimizer.name, vgg.optimizer.lr, vgg.optimizer.weight_decay) == ("adam", 1e-3, 0.0)
    assert vgg.optimizer.schedule.name == "step" and not Augmenter(vgg.augment).active
    assert "Assumed" in vgg.reference.notes


def _decay_of(name: str) -> dict[str, float]:
    from cifartui.engine.train.optim import decay_groups

    config = presets.load(name)
    model = build_model(config.model, config.dataset.num_classes)
    return {n: group.weight_decay for group in decay_groups(model, config.optimizer) for n in group.names}


def test_the_resnet_write_ups_decay_is_keras_l2_per_layer() -> None:
    """resnet.py: l2(1e-4) on basic_blk's convolutions, l2(1e-5) on the stem and shortcut kernels, nothing
    on the dense layer, BatchNormalization or biases; Keras' l2(x) is 2x in the gradient."""
    decay = _decay_of("resnet18-dropout-cifar100")
    expected = {}
    for name in decay:
        if name.endswith(".bias") or ".norm." in name or name.startswith("head.fc"):
            expected[name] = 0.0
        elif name == "stem.conv.weight" or ".shortcut.conv." in name:
            expected[name] = 2e-5
        else:
            assert ".branch." in name and name.endswith(".conv.weight"), name
            expected[name] = 2e-4
    assert decay == expected
    assert sum(1 for v in decay.values() if v == 2e-5) == 5 and sum(1 for v in decay.values() if v == 2e-4) == 16


def test_the_elu_recipe_decays_every_weight_and_no_bias() -> None:
    decay = _decay_of("elu18-cifar100")
    assert all(v == (0.0 if name.endswith(".bias") else 5e-4) for name, v in decay.items())
    assert sum(1 for v in decay.values() if v) == 19  # 18 convolutions and the classifier


def test_presets_command_lists_every_name_within_80_columns(capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    table = out.split("dataset parts:")[0]
    assert max(len(line) for line in table.splitlines()) <= 80
    lines = table.splitlines()
    for name in list(SEED_RECIPES) + list(OTHER_RECIPES):
        assert any(line.split() and line.split()[0] == name for line in lines), name  # whole, on one line
    assert "…" not in table  # nothing cut short
    assert "(validation)" in table and "49.4%, top-5" in table


def test_presets_command_shows_resolved_preset_and_model_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "cnn4-rmsprop-cifar100"]) == 0
    out = capsys.readouterr().out
    assert "964,516 parameters" in out  # the seed's Keras summary says 964,516
    assert "optimizer.name" in out and "rmsprop" in out
    assert "write-up 004_4e6ca3cee52a858c" in out


def test_presets_command_shows_the_notes_and_the_decay_of_each_group(capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["presets", "resnet18-dropout-cifar10"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "What the recipe follows and assumes:" in out and "projection block" in out
    assert "Weight decay per parameter group (Keras l2(x): 2x in the gradient)" in out
    assert "*.branch.*.conv.weight" in out and "0.0002 * w" in out and "2e-05 * w" in out


def test_settings_document_the_decay_groups_and_the_reference(capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["presets", "--settings"]) == 0
    out = capsys.readouterr().out
    for key in ("optimizer.decay_convention", "optimizer.decay_groups[].match", "optimizer.decay_groups[].weight_decay",
                "optimizer.schedule.plateau_style", "reference.seed", "reference.notes", "reference.measured_on",
                "dropout_schedule[].rates"):
        assert key in out, key


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


@pytest.mark.parametrize("name", ["elu18-cifar100", "resnet18-dropout-cifar100"])
def test_config_round_trips_through_plain_data(name: str) -> None:
    config = presets.load(name)  # a run's config.json is this plain data, decay groups included
    assert from_mapping(RunConfig, config.to_dict()) == config
