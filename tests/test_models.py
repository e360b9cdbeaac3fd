"""The model registry: shapes, the seeds' parameter counts, dropout groups, summaries."""

import dataclasses
import functools

import pytest
import torch

from cifartui.config import DropoutEvent, ModelConfig
from cifartui.engine.train.models import (MODELS, KerasSameConv2d, ModelError, ScheduledDropout, build_model, dropout_groups,
                                    dropout_rates, summarize)
from cifartui.engine.train.schedules import DropoutSchedule


# Built once only: their parameter counts are checked for both heads below.
LARGE = {"elu-resnet50", "elu-resnet110"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_classifies_32x32_images(name: str) -> None:
    for classes in (100,) if name in LARGE else (10, 100):
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


def test_generic_resnet_dropout_options() -> None:
    config = ModelConfig(name="resnet18", preact=True, activation="elu", block_dropout=0.5,
                         spatial_dropout=0.5, classifier_dropout=0.3, stem_stride=2)
    model = build_model(config, 100)
    rates = {name: m.rate for g in dropout_groups(model).values() for name, m in g}
    spatial = [m for m in model.modules() if isinstance(m, ScheduledDropout) and m.spatial and m.rate]
    # He et al.'s ResNet-18 starts stage 1 with an identity block: 2 + 1 + 1 + 1 of them.
    assert rates["classifier_dropout"] == 0.3 and len(spatial) == 5
    assert any(isinstance(m, torch.nn.ELU) for m in model.modules())
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


# --- ELU-18 (seed 000) -----------------------------------------------------------------------------

# The paper's layer list, as the write-up quotes it: (layers x units x receptive field) per stack.
ELU18_PAPER = "([1x384x3],[1x384x1,1x384x2,2x640x2],[1x640x1,3x768x2],[1x768x1,2x896x2],[1x896x3,2x1024x2]," \
              "[1x1024x1,1x1152x2],[1x1152x1],[1x100x1])"


def _paper_layers() -> list[tuple[int, int]]:
    layers = []
    for stack in ELU18_PAPER.strip("()[]").split("],["):
        for item in stack.split(","):
            count, units, field = map(int, item.split("x"))
            layers += [(units, field)] * count
    return layers


def test_elu18_layers_are_the_papers_list() -> None:
    model = build_model(ModelConfig(name="elu18"), 100)
    convolutions = [(m.out_channels, m.kernel_size[0]) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert convolutions + [(classifier[0].out_features, 1)] == _paper_layers()
    assert convolutions[5] == (640, 1)  # stack 3 opens with a 1x1 layer (the write-up's code has 3x3)


@functools.lru_cache(maxsize=1)
def _normalized_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """8 structured images (a photograph's 1/f spectrum) after the recipe's GCN. Its ZCA is left out: its
    3,072-square eigendecomposition takes tens of seconds on a shared CPU, and it cannot change what is
    measured here, since a random filter's expected output variance depends on the input's variance only
    (benchmarks/overfit_check.py trains on the fully whitened images)."""
    from benchmarks.overfit_check import structured_images
    from cifartui.engine.train.augment import Preprocessor

    images, labels = structured_images(10, 8, seed=0)
    images = torch.from_numpy(images)
    return Preprocessor(("gcn",)).fit(images)(images), torch.from_numpy(labels)


def _elu18_first_step(init: str) -> dict[str, float]:
    """ELU-18 at its first step on the normalized batch: how much of the image survives the first
    convolution, how much reaches the logits, and how large the upper layers' gradients are."""
    from cifartui import presets

    recipe = presets.load("elu18-cifar100")
    x, labels = _normalized_batch()
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(recipe.model, init=init), 10).train()
    for members in dropout_groups(model).values():
        for _, layer in members:
            layer.set_rate(0.0)
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    seen = []
    convolutions[0].register_forward_hook(lambda _module, _inputs, output: seen.append(output.detach()))
    logits = model(x)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    upper = [float(c.weight.grad.norm() / c.weight.detach().norm()) for c in convolutions[1:]]
    return {"first_gain": float(seen[0].std(0).mean() / x.std(0).mean()),
            "logit_signal": float(logits.detach().std(0).mean()),
            "upper_gradient": sorted(upper)[len(upper) // 2]}


def test_elu18_first_convolution_keeps_the_image_so_sgd_can_move_the_network() -> None:
    """The cause of ELU-18 sitting at ln(classes): Glorot's fan average on the first convolution (27 in,
    3,456 out) keeps an eighth of the normalized image, so the logits barely depend on it and every upper
    layer's gradient is small. He uniform on that one layer (the recipe's init) restores both."""
    from cifartui import presets

    assert presets.load("elu18-cifar100").model.init == "keras-he-first"
    assert presets.load("elu18-cifar100-dropout05").model.init == "keras-he-first"
    glorot, fixed = _elu18_first_step("keras"), _elu18_first_step("keras-he-first")
    assert glorot["first_gain"] < 0.25 < 0.7 < fixed["first_gain"]  # about 1/8 against about 1.4
    assert fixed["logit_signal"] > 3 * glorot["logit_signal"]
    assert fixed["upper_gradient"] > 3 * glorot["upper_gradient"]


def test_keras_he_first_is_glorot_everywhere_but_the_first_layer() -> None:
    torch.manual_seed(0)
    glorot = build_model(ModelConfig(name="cnn3", init="keras"), 10)
    torch.manual_seed(0)
    fixed = build_model(ModelConfig(name="cnn3", init="keras-he-first"), 10)
    layers = [(a, b) for a, b in zip(glorot.modules(), fixed.modules()) if isinstance(a, (torch.nn.Conv2d, torch.nn.Linear))]
    (first_glorot, first_fixed), rest = layers[0], layers[1:]
    fan_in = first_fixed.weight[0].numel()
    assert abs(float(first_fixed.weight.std()) / (2 / fan_in) ** 0.5 - 1) < 0.1
    assert float(first_fixed.weight.std()) > 2 * float(first_glorot.weight.std())
    assert all(float(b.bias.abs().max()) == 0 for _, b in layers)
    for a, b in rest:  # the same Glorot law (not the same draws: the first layer drew once more)
        assert abs(float(b.weight.std()) / float(a.weight.std()) - 1) < 0.1


# --- the ELU pre-activation ResNets (seed 002) ---------------------------------------------------

def _keras_resnet_parameters(blocks: tuple[int, ...], classes: int) -> int:
    """Trainable parameters of the write-up's ResNet_N, counted from its Keras code: convolutions with
    biases, BatchNormalization's gamma and beta, separate BN for each shortcut, a dense layer on the
    flattened 2x2 average pooling of the last stage."""
    def unit(cin: int, cout: int, kernel: int) -> int:  # BN(cin), ELU, Conv2D(cout, kernel) with bias
        return 2 * cin + kernel * kernel * cin * cout + cout

    total = 3 * 3 * 3 * 64 + 64 + 2 * 64  # stem conv, stem BN
    channels, size = 64, 16  # the stem has stride 2
    for index, count in enumerate(blocks):
        width = 64 * 2 ** index
        size //= 1 if index == 0 else 2
        total += unit(channels, width, 3) + unit(width, width, 3) + unit(channels, width, 1)  # conv_blk
        total += (count - 1) * 2 * unit(width, width, 3)  # ident_blk
        channels = width
    features = channels * (size // 2) ** 2
    return total + features * classes + classes


@pytest.mark.parametrize("name, blocks", [("elu-resnet18", (2, 2, 2, 2)), ("elu-resnet20", (3, 3, 3)),
                                          ("elu-resnet50", (8, 8, 8)), ("elu-resnet110", (18, 18, 18))])
def test_elu_resnets_have_the_write_ups_parameters(name: str, blocks: tuple[int, ...]) -> None:
    for classes in (10, 100):
        model = build_model(ModelConfig(name=name), classes)
        assert sum(p.numel() for p in model.parameters()) == _keras_resnet_parameters(blocks, classes)


def test_elu_resnet18_block_types_per_stage() -> None:
    """Every stage opens with the projection block (1x1 convolution with its own BN and ELU, no dropout),
    then identity blocks with dropout; nothing between the last block and the pooling."""
    model = build_model(ModelConfig(name="elu-resnet18", block_dropout=0.5, spatial_dropout=0.5), 100)
    kinds = [[type(block).__name__ for block in stage] for stage in model.stages]
    assert kinds == [["ProjectionBlock", "IdentityBlock"]] * 4
    for stage in model.stages:
        projection, identity = stage
        assert not any(isinstance(m, ScheduledDropout) for m in projection.modules())
        assert isinstance(projection.shortcut.norm, torch.nn.BatchNorm2d) and projection.shortcut.conv.kernel_size == (1, 1)
        assert projection.shortcut.norm is not projection.branch[0].norm
        assert (identity.drop_in.rate, identity.drop_in.spatial, identity.drop_out.rate, identity.drop_out.spatial) == (
            0.5, False, 0.5, True)
    assert [stage[0].shortcut.conv.stride[0] for stage in model.stages] == [1, 2, 2, 2]
    assert list(model.head._modules) == ["pool", "flatten", "dropout", "fc"] and model.head.fc.in_features == 512
    assert model.stem.conv.stride == (2, 2)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all((m.eps, m.momentum) == (1e-3, 0.1) for m in norms)  # Keras' BatchNormalization(momentum=0.9)


def _zero_branch(block: torch.nn.Module) -> None:
    last_conv = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last_conv.weight.zero_()
        if last_conv.bias is not None:
            last_conv.bias.zero_()


@pytest.mark.parametrize("name", ["elu-resnet18", "resnet18"])
def test_block_dropout_drops_the_branch_and_not_the_shortcut(name: str) -> None:
    """With the residual branch silenced, an identity block in training passes its input through untouched:
    the dropout acts on the branch's input only (the write-up's ident_blk adds the undropped input)."""
    preact = name == "resnet18"  # the generic ResNet's pre-activation form adds nothing after the sum
    model = build_model(ModelConfig(name=name, block_dropout=0.5, preact=preact), 10).train()
    identity = model.stages[0][1]
    _zero_branch(identity)
    x = torch.randn(8, 64, 16, 16)
    assert identity.drop_in.rate == 0.5
    assert torch.equal(identity(x), x)


def test_elu_resnet_initialization_is_keras_he_normal() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="elu-resnet18"), 10)
    weight = model.stages[1][1].branch[0].conv.weight.detach()  # 128 -> 128, 3x3: fan_in 1152
    expected = (2 / 1152) ** 0.5
    assert abs(float(weight.std()) / expected - 1) < 0.02
    assert float(weight.abs().max()) <= 2 * expected / 0.87962566103423978 + 1e-6  # truncated at two deviations
    assert all(not m.bias.detach().any() for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_keras_same_padding_puts_the_odd_pixel_below_and_right() -> None:
    conv = KerasSameConv2d(1, 1, 3, 2)
    x = torch.zeros(1, 1, 8, 8, requires_grad=True)
    out = conv(x)
    assert out.shape == (1, 1, 4, 4)
    out[0, 0, 0, 0].backward()
    rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (0, 2, 0, 2)


def test_weights_of_another_build_are_refused_with_one_message() -> None:
    old = build_model(ModelConfig(name="elu18"), 100).state_dict()
    old["4.weight"] = torch.zeros(384, 384, 3, 3)  # as if an earlier build had another kernel there
    with pytest.raises(ModelError, match=r"do not fit model 'elu18' .*4\.weight has shape \[384, 384, 3, 3\] in the "
                       r"checkpoint and \[384, 384, 1, 1\] here.*cannot be resumed"):
        build_model(ModelConfig(name="elu18"), 100).load_state_dict(old)
    with pytest.raises(ModelError, match="is missing from the checkpoint"):
        build_model(ModelConfig(name="cnn3"), 10).load_state_dict({})


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
