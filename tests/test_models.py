"""The model registry: shapes, the seeds' parameter counts, dropout groups, summaries."""

import pytest
import torch

from cifartui.config import DropoutEvent, ModelConfig
from cifartui.engine.models import MODELS, ScheduledDropout, build_model, dropout_groups, dropout_rates, summarize
from cifartui.engine.schedules import DropoutSchedule


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_classifies_32x32_images(name: str) -> None:
    for classes in (10, 100):
        model = build_model(ModelConfig(name=name), classes)
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, classes)


@pytest.mark.parametrize("name, classes, expected", [
    ("cnn3", 10, 257_978),            # seed 001's Keras model
    ("cnn3-dense512", 100, 1_193_636),  # seed 003's Keras model
    ("cnn4-dense512", 100, 964_516),    # seed 004's Keras summary: 964,516
    # He et al. (2016), CIFAR table: 0.27M, 0.85M, 1.7M parameters.
    ("resnet20", 10, 269_722),
    ("resnet56", 10, 853_018),
    ("resnet110", 10, 1_727_962),
    ("resnet18", 10, 11_173_962),
])
def test_parameter_counts(name: str, classes: int, expected: int) -> None:
    assert summarize(build_model(ModelConfig(name=name), classes)).total_parameters == expected


def test_elu18_has_18_convolutions_in_7_addressable_stacks() -> None:
    model = build_model(ModelConfig(name="elu18"), 100)
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) == 18
    assert [c.out_channels for c in convolutions][-3:] == [1024, 1152, 1152]
    groups = dropout_groups(model)
    assert list(groups) == [f"stack{i}" for i in range(1, 8)]
    assert [len(g) for g in groups.values()] == [1, 4, 4, 3, 3, 2, 1]
    assert [g[-1][1].rate for g in groups.values()] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0]
    assert any(isinstance(m, torch.nn.ELU) for m in model.modules())


def test_seed_resnet_options() -> None:
    config = ModelConfig(name="resnet18", preact=True, activation="elu", block_dropout=0.5,
                         spatial_dropout=0.5, classifier_dropout=0.3, stem_stride=2)
    model = build_model(config, 100)
    rates = {name: m.rate for g in dropout_groups(model).values() for name, m in g}
    spatial = [m for m in model.modules() if isinstance(m, ScheduledDropout) and m.spatial and m.rate]
    assert rates["classifier_dropout"] == 0.3 and len(spatial) == 5  # one per identity block: 2 + 1 + 1 + 1
    assert any(isinstance(m, torch.nn.ELU) for m in model.modules())
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_wrong_number_of_dropout_rates_is_explained() -> None:
    with pytest.raises(ValueError, match="has 2 rates but 'cnn3' has 4 dropout groups"):
        build_model(ModelConfig(name="cnn3", dropout=(0.1, 0.2)), 10)


def test_scheduled_dropout_behaviour() -> None:
    layer = ScheduledDropout(0.0, "g")
    x = torch.ones(1000, 8, 4, 4)
    assert torch.equal(layer.train()(x), x)  # rate 0: identity
    layer.set_rate(0.5)
    out = layer(x)
    assert 0.4 < float((out == 0).float().mean()) < 0.6 and torch.allclose(out.mean(), torch.tensor(1.0), atol=0.05)
    assert torch.equal(layer.eval()(x), x)  # evaluation: identity
    spatial = ScheduledDropout(0.5, "g", spatial=True).train()
    out = spatial(x)
    per_channel = out.flatten(2)
    assert torch.all((per_channel == 0).all(2) | (per_channel != 0).all(2))  # whole channels drop
    # The rate is part of the state, so a checkpoint restores it.
    restored = ScheduledDropout(0.0, "g")
    restored.load_state_dict(layer.state_dict())
    assert restored.rate == 0.5 and restored.active


def test_summary_lists_layers_with_shapes_and_parameters() -> None:
    summary = summarize(build_model(ModelConfig(name="cnn3"), 10), "cnn3")
    first = summary.layers[0]
    assert (first.kind, first.output_shape, first.parameters) == ("Conv2d", (32, 32, 32), 896)
    assert summary.layers[-1].output_shape == (10,)
    assert sum(r.parameters for r in summary.layers) == summary.total_parameters
    assert summary.to_dict()["layers"][0]["name"] == first.name


def test_changing_dropout_rates_does_not_recompile_a_compiled_model() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    compiled_graphs = []

    def counting_backend(graph_module, example_inputs):  # noqa: ANN001
        compiled_graphs.append(graph_module)
        return graph_module.forward

    model = build_model(ModelConfig(name="cnn3", dropout=(0.1, 0.1, 0.1, 0.2)), 10).train()
    compiled = torch.compile(model, backend=counting_backend)
    x = torch.randn(4, 3, 32, 32)
    compiled(x)
    after_first = len(compiled_graphs)
    dropout = DropoutSchedule((DropoutEvent(at=1, action="multiply", factor=1.5, scope="all"),
                               DropoutEvent(at=2, action="add", rates=(0.1, 0.2, 0.1, 0.1)),
                               DropoutEvent(at=3, action="set", rates=(0.3, 0.3, 0.4, 0.5))), model, 1)
    for step in (1, 2, 3):
        assert dropout.apply_due(step)
        compiled(x)
    assert after_first >= 1 and len(compiled_graphs) == after_first
    assert [round(r, 6) for r in dropout_rates(model).values()][-1] == 0.5


def test_whitening_layer_whitens_the_patches_it_was_fitted_on() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="speedrun-net"), 10)
    base = torch.rand(64, 3, 16, 16)
    images = torch.nn.functional.interpolate(base, size=32, mode="bilinear")  # correlated neighbours
    model.init_from_data(images, epsilon=0.0)
    whiten = model[0]
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, whiten.weight[:12])  # the 12 positive filters
    flat = out.transpose(0, 1).reshape(12, -1).double()
    covariance = torch.cov(flat)
    assert torch.allclose(covariance, torch.eye(12, dtype=torch.float64), atol=1e-3)
    assert not whiten.weight.requires_grad
