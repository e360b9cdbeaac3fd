"""Weight decay per parameter group: conventions, matching, errors, and checkpoints that still load."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from cifartui.cli import main
from cifartui.config import ConfigError, DecayGroup, ModelConfig, OptimizerConfig
from cifartui.engine.runs.checkpoint import CheckpointError
from cifartui.engine.train.models import build_model
from cifartui.engine.train.optim import OptimizerStateMismatch, build_optimizer, decay_groups

CPU = torch.device("cpu")


def _decay_by_name(model: nn.Module, config: OptimizerConfig) -> dict[str, float]:
    return {name: group.weight_decay for group in decay_groups(model, config) for name in group.names}


def test_without_decay_groups_the_grouping_is_the_one_older_checkpoints_hold() -> None:
    model = build_model(ModelConfig(name="resnet20"), 10)
    single = decay_groups(model, OptimizerConfig(weight_decay=5e-4))
    assert [(g.label, g.weight_decay) for g in single] == [("all", 5e-4)]
    split = decay_groups(model, OptimizerConfig(weight_decay=5e-4, decay_norm_and_bias=False))
    assert [(g.label, g.weight_decay) for g in split] == [("weights", 5e-4), ("normalization and biases", 0.0)]
    assert all(p.ndim > 1 for p in split[0].parameters) and all(p.ndim == 1 for p in split[1].parameters)
    # Both groups exist even when one is empty, as they always did.
    linear = nn.Sequential(nn.Linear(4, 3, bias=False))
    assert [len(g.names) for g in decay_groups(linear, OptimizerConfig(weight_decay=1e-4,
                                                                         decay_norm_and_bias=False))] == [1, 0]


def test_keras_l2_puts_twice_lambda_times_w_in_the_gradient() -> None:
    """One SGD step with decay_convention keras-l2 equals a step on loss + lambda * sum(w^2)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    reference = nn.Sequential(nn.Linear(6, 3))
    reference.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    lam, lr = 0.05, 0.1
    config = OptimizerConfig(name="sgd", lr=lr, decay_convention="keras-l2",
                             decay_groups=(DecayGroup(match=("0.weight",), weight_decay=lam),))
    optimizer = build_optimizer(model, config, CPU)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    loss = nn.functional.cross_entropy(reference(x), y) + lam * reference[0].weight.pow(2).sum()  # Keras' l2(lam)
    loss.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= lr * p.grad
    assert torch.allclose(model[0].weight, reference[0].weight, atol=1e-7)
    assert torch.allclose(model[0].bias, reference[0].bias, atol=1e-7)  # the bias matched no group: no decay


def test_first_matching_group_takes_a_parameter_and_the_rest_get_weight_decay() -> None:
    model = build_model(ModelConfig(name="resnet20"), 10)
    config = OptimizerConfig(weight_decay=3e-4, decay_norm_and_bias=False, decay_groups=(
        DecayGroup(match=("stem.weight",), weight_decay=1e-5),
        DecayGroup(match=("stem.*", "stages.0.*.conv*.weight"), weight_decay=1e-4)))
    decay = _decay_by_name(model, config)
    assert decay["stem.weight"] == 1e-5  # taken by the first group, although the second matches it too
    assert decay["stages.0.0.conv1.weight"] == 1e-4 and decay["stages.0.2.conv2.weight"] == 1e-4
    assert decay["stages.1.0.conv1.weight"] == 3e-4  # no group: weight_decay
    assert decay["stem_bn.weight"] == 0.0 and decay["fc.bias"] == 0.0  # spared: normalization and biases
    assert len(decay) == sum(1 for p in model.parameters() if p.requires_grad)


def test_a_pattern_that_matches_nothing_is_refused_naming_the_key() -> None:
    model = build_model(ModelConfig(name="cnn3"), 10)
    config = OptimizerConfig(decay_groups=(DecayGroup(match=("*.weight",), weight_decay=1e-4),
                                           DecayGroup(match=("*.shortcut.*",), weight_decay=1e-5)))
    with pytest.raises(ConfigError) as caught:
        decay_groups(model, config)
    assert caught.value.key == "optimizer.decay_groups[1].match"
    assert "'*.shortcut.*' matches no trainable parameter" in str(caught.value) and "0.weight" in str(caught.value)
    shadowed = OptimizerConfig(decay_groups=(DecayGroup(match=("*",), weight_decay=1e-4),
                                             DecayGroup(match=("*.bias",), weight_decay=0.0)))
    with pytest.raises(ConfigError, match=r"decay_groups\[1\].match.*already taken by an earlier group"):
        decay_groups(model, shadowed)


def _user_recipe(tmp_path: Path, optimizer: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text("[dataset]\nname = 'synthetic'\nclasses = 4\ntrain_size = 64\ntest_size = 32\n"
                    "val_fraction = 0.25\n[model]\nname = 'cnn3'\n[optimizer]\n" + optimizer +
                    "\n[augment]\npreprocess = []\n[train]\nepochs = 1\nbatch_size = 16\ncheckpoint_minutes = 0.0\n",
                    encoding="utf-8")
    return path


@pytest.mark.parametrize("optimizer, fragment", [
    ("name = 'sgd'\n[[optimizer.decay_groups]]\nmatch = ['*.shortcut.*']\nweight_decay = 1e-4",
     "'optimizer.decay_groups[0].match': pattern '*.shortcut.*' matches no trainable parameter"),
    ("name = 'sgd'\n[[optimizer.decay_groups]]\nmatch = []\nweight_decay = 1e-4",
     "'optimizer.decay_groups[0].match': expected at least one pattern"),
    ("name = 'sgd'\n[[optimizer.decay_groups]]\nmatch = ['*']\nweight_decay = -1",
     "'optimizer.decay_groups[0].weight_decay': -1.0 is out of range"),
    ("name = 'adamw'\ndecay_convention = 'keras-l2'", "'optimizer.decay_convention': 'keras-l2' is a penalty"),
    ("name = 'sgd'\ndecay_convention = 'keras'", "'optimizer.decay_convention': 'keras' is not allowed"),
])
def test_bad_decay_settings_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 optimizer: str, fragment: str) -> None:
    assert main(["train", str(_user_recipe(tmp_path, optimizer)), "--device", "cpu"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert fragment in err and "Traceback" not in err


def test_optimizer_state_loads_for_the_same_groups_and_is_refused_for_others() -> None:
    model = build_model(ModelConfig(name="cnn3"), 10)
    before = OptimizerConfig(name="sgd", momentum=0.9, weight_decay=5e-4)
    optimizer = build_optimizer(model, before, CPU)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    build_optimizer(model, before, CPU).load_state_dict(optimizer.state_dict())  # same groups: loads
    after = OptimizerConfig(name="sgd", momentum=0.9, weight_decay=5e-4, decay_groups=(
        DecayGroup(match=("0.weight",), weight_decay=1e-3),))
    with pytest.raises(OptimizerStateMismatch, match="holds 1 parameter group of 10 tensors but this run's "
                       "configuration builds 2 parameter groups of 1, 9 tensors"):
        build_optimizer(model, after, CPU).load_state_dict(optimizer.state_dict())
    assert issubclass(OptimizerStateMismatch, CheckpointError)  # a user error: exit 2, no traceback


def test_resuming_a_run_whose_groups_changed_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    recipe = _user_recipe(tmp_path, "name = 'sgd'\nmomentum = 0.9\nweight_decay = 5e-4")
    assert main(["train", str(recipe), "--device", "cpu", "--runs-dir", str(runs)]) == 0
    run_dir = next(runs.iterdir())
    config = json.loads((run_dir / "config.json").read_text())
    config["optimizer"]["decay_groups"] = [{"match": ["0.weight"], "weight_decay": 1e-3}]
    (run_dir / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--epochs", "2"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "cannot resume" in err and "Traceback" not in err
    assert (run_dir / "checkpoints" / "last.pt").is_file()  # nothing already saved is lost


def _capturing(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an optimizer sees inside torch.cuda.graph: a CUDA stream that is capturing."""
    class Stream:
        def is_capturing(self) -> bool:
            return True
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "current_stream", lambda device=None: Stream())


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_and_adamw_prepared_for_graphs_pass_the_capture_check_also_after_a_resume(
        monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    from cifartui.engine.train.optim import prepare_for_graphs

    model = nn.Linear(4, 2)
    config = OptimizerConfig(name=name, lr=0.01)
    plain = build_optimizer(model, config, CPU)
    saved = plain.state_dict()  # as checkpoints before graphs captured Adam hold it: capturable False
    lr = torch.tensor(0.01)
    model(torch.randn(3, 4)).sum().backward()
    _capturing(monkeypatch)
    with pytest.raises(RuntimeError, match="capturable"):
        plain.step()  # fused alone: PyTorch refuses the capture
    optimizer = build_optimizer(model, config, CPU)
    optimizer.load_state_dict(saved)
    prepare_for_graphs(optimizer, lr)
    before = model.weight.detach().clone()
    optimizer.step()
    assert all(group["capturable"] and group["lr"] is lr for group in optimizer.param_groups)
    assert not torch.equal(before, model.weight)
    optimizer.load_state_dict(saved)  # a resume puts the saved settings back ...
    assert not optimizer.param_groups[0]["capturable"]
    prepare_for_graphs(optimizer, lr)  # ... and the trainer prepares the groups again
    optimizer.step()


def test_sgd_needs_the_host_for_its_first_step_with_momentum_also_when_raised_from_zero() -> None:
    from cifartui.engine.train.optim import needs_host_read, step_unless

    model = nn.Linear(4, 2)
    optimizer = build_optimizer(model, OptimizerConfig(name="sgd", lr=0.1, momentum=0.0), CPU)
    assert not needs_host_read(optimizer)
    model(torch.randn(3, 4)).sum().backward()
    step_unless(optimizer, torch.zeros(()))
    for group in optimizer.param_groups:
        group["momentum"] = 0.9
    assert needs_host_read(optimizer)
    step_unless(optimizer, torch.zeros(()))
    assert not needs_host_read(optimizer)


def test_lookahead_averages_weights_and_normalization_statistics_not_dropout_rates() -> None:
    from cifartui.engine.train.optim import lookahead_tensors, saved_lookahead

    model = build_model(ModelConfig(name="elu18"), 10)
    chosen = lookahead_tensors(model)
    expected = [t for name, t in model.state_dict().items()
                if t.is_floating_point() and not name.endswith("rate_tensor")]
    assert len(chosen) == len(expected) and all(a.data_ptr() == b.data_ptr() for a, b in zip(chosen, expected))
    # An older checkpoint's copy held every float entry of the state dict, dropout rates included.
    every = [t.clone() for t in model.state_dict().values() if t.is_floating_point()]
    kept = saved_lookahead(model, every)
    assert len(kept) == len(chosen) and all(torch.equal(a, b) for a, b in zip(kept, chosen))
    with pytest.raises(CheckpointError, match="lookahead"):
        saved_lookahead(model, every[:3])
