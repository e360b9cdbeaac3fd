"""The run configuration: typed, frozen, validated and documented.

A run is described by one `RunConfig`, made of four parts a user can swap
independently (dataset, model, optimizer with its LR schedule, augmentation)
plus training settings, an optional dropout schedule and the reference result
the recipe reproduces. Every field carries its documentation and its allowed
range in `dataclasses.field(metadata=...)`; `from_mapping` turns plain data
(parsed TOML or JSON) into a config and rejects anything else with a
`ConfigError` that names the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import unicodedata
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""

    def __init__(self, source: str, key: str, message: str):
        self.source = source
        self.key = key
        self.message = message
        where = f"{source}: " if source else ""
        at = f"'{key}': " if key else ""
        super().__init__(f"{where}{at}{message}")


def setting(default: Any, doc: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> Any:
    """A documented config field with an optional numeric range (applied to each item of a tuple)."""
    metadata = {"doc": doc, "low": low, "high": high, "low_open": low_open, "high_open": high_open}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


PreprocessName = Literal["standardize", "gcn", "zca"]


@dataclass(frozen=True)
class DatasetConfig:
    """Which images to train on and how the training set is split."""

    name: Literal["cifar10", "cifar100", "synthetic"] = setting(
        "cifar10", "Dataset: cifar10, cifar100, or synthetic (generated offline).")
    labels: Literal["fine", "coarse"] = setting(
        "fine", "CIFAR-100 only: fine (100 classes) or coarse (20 superclasses) labels.")
    val_fraction: float = setting(
        0.1, "Fraction of the training set held out for validation (seeded split).",
        low=0.0, high=0.9)
    classes: int = setting(10, "synthetic only: number of classes.", low=2, high=100)
    # Generated in memory as float32 first: twice CIFAR's sizes is plenty and fits.
    train_size: int = setting(10000, "synthetic only: number of training images.", low=10, high=100_000)
    test_size: int = setting(2000, "synthetic only: number of test images.", low=10, high=50_000)
    data_seed: int = setting(0, "synthetic only: seed of the generated images.", low=0)

    @property
    def num_classes(self) -> int:
        if self.name == "cifar10":
            return 10
        if self.name == "cifar100":
            return 20 if self.labels == "coarse" else 100
        return self.classes


@dataclass(frozen=True)
class ModelConfig:
    """The architecture, by registry name, and its options."""

    name: str = setting("cnn3", "Model name from the registry (see `cifartui presets`).")
    activation: Literal["default", "relu", "elu"] = setting(
        "default", "Activation function; default keeps the architecture's own.")
    batch_norm: bool = setting(True, "VGG only: batch normalization after each convolution.")
    preact: bool = setting(False, "ResNet-18/34/50: pre-activation blocks (norm, activation, conv).")
    dropout: tuple[float, ...] = setting(
        (), "Initial dropout rate of each dropout group (stack); empty keeps the model's own.",
        low=0.0, high=1.0, high_open=True)
    block_dropout: float = setting(
        0.0, "ResNets: dropout on the residual branch's input in each identity block (the shortcut adds "
        "the undropped input).", low=0.0, high=1.0, high_open=True)
    spatial_dropout: float = setting(
        0.0, "ResNets: channel-wise (spatial) dropout after each identity block's addition.",
        low=0.0, high=1.0, high_open=True)
    classifier_dropout: float = setting(
        0.0, "Dropout before the classifier (VGG, ResNets).", low=0.0, high=1.0, high_open=True)
    stem_stride: int = setting(1, "ResNet-18/34/50: stride of the first convolution.", low=1, high=2)
    init: Literal["default", "keras", "keras-he-first"] = setting(
        "default", "Weight initialization: the architecture's own (PyTorch's default; He normal, zero bias "
        "for the elu-resnets), Keras' default (Glorot uniform, zero bias), or keras-he-first: Keras' default "
        "but He uniform (variance 2 / fan-in) on the first layer, whose Glorot variance a large fan-out "
        "would shrink.")


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule. `unit` says whether step counts are iterations or epochs."""

    name: Literal["constant", "step", "multistep", "exponential", "cosine", "onecycle",
                  "triangular", "plateau"] = setting("constant", "Schedule kind.")
    unit: Literal["epoch", "iteration"] = setting(
        "epoch", "Unit of step_size, milestones, warmup and cycle_length.")
    step_size: int = setting(30, "step: multiply by gamma every step_size units.", low=1)
    milestones: tuple[int, ...] = setting((), "multistep: multiply by gamma at each of these.", low=1)
    gamma: float = setting(0.1, "step, multistep, exponential: multiplicative factor.",
                           low=0.0, high=1.0, low_open=True)
    warmup: int = setting(0, "cosine: linear warmup length.", low=0)
    min_lr: float = setting(0.0, "cosine: final LR; plateau: LR floor.", low=0.0)
    max_lr: float = setting(0.1, "onecycle and triangular: peak LR.", low=0.0, low_open=True)
    pct_start: float = setting(0.25, "onecycle: fraction of the run spent rising.",
                               low=0.0, high=1.0, low_open=True, high_open=True)
    final_div: float = setting(1e4, "onecycle: final LR is lr / final_div.", low=1.0)
    cycle_length: int = setting(8, "triangular: length of a half cycle (rise or fall).", low=1)
    factor: float = setting(0.1, "plateau: factor applied when validation loss stalls.",
                            low=0.0, high=1.0, low_open=True, high_open=True)
    patience: int = setting(10, "plateau: epochs without improvement before reducing.", low=0)
    threshold: float = setting(1e-4, "plateau: improvement that counts (relative for pytorch, absolute for keras).",
                               low=0.0)
    cooldown: int = setting(0, "plateau: epochs to wait after a reduction.", low=0)
    plateau_style: Literal["pytorch", "keras"] = setting(
        "pytorch", "plateau: pytorch reduces after more than `patience` epochs without a relative improvement "
        "of `threshold`; keras (tf.keras ReduceLROnPlateau) after `patience` such epochs (wait >= patience), "
        "`threshold` being its absolute min_delta.")


@dataclass(frozen=True)
class DecayGroup:
    """Weight decay for the parameters whose names match one of the patterns."""

    match: tuple[str, ...] = setting(
        (), "Shell-style patterns (*, ?, [...]) over parameter names: a layer's name as `cifartui presets NAME` "
        "lists it, then .weight or .bias (e.g. \"*.shortcut.conv.weight\"); each must match a parameter.")
    weight_decay: float = setting(0.0, "Decay of the matched parameters, read as optimizer.decay_convention says.",
                                  low=0.0)


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer and its LR schedule."""

    name: Literal["sgd", "adam", "adamw", "rmsprop"] = setting("sgd", "Optimizer.")
    lr: float = setting(0.01, "Base learning rate.", low=0.0, low_open=True)
    momentum: float = setting(0.0, "SGD and RMSprop momentum.", low=0.0, high=1.0, high_open=True)
    nesterov: bool = setting(False, "SGD: Nesterov momentum.")
    weight_decay: float = setting(
        0.0, "Weight decay of the parameters no decay group matches, read as decay_convention says "
        "(decoupled for AdamW).", low=0.0)
    decay_norm_and_bias: bool = setting(
        True, "Apply weight_decay to normalization and bias parameters too (those no decay group matched).")
    decay_convention: Literal["torch", "keras-l2"] = setting(
        "torch", "How weight_decay and decay_groups values read: torch adds value * w to the gradient "
        "(decoupled for AdamW); keras-l2 is Keras' l2(value) regularizer, value * sum(w^2) added to the loss, "
        "so 2 * value * w in the gradient.")
    decay_groups: tuple[DecayGroup, ...] = setting(
        (), "Weight decay per parameter group, in order: the first group with a matching pattern takes a "
        "parameter; parameters no group matches get weight_decay.")
    betas: tuple[float, ...] = setting((0.9, 0.999), "Adam, AdamW: (beta1, beta2).",
                                       low=0.0, high=1.0, high_open=True)
    eps: float = setting(1e-8, "Adam, AdamW, RMSprop: epsilon.", low=0.0, low_open=True)
    alpha: float = setting(0.99, "RMSprop: smoothing constant (Keras calls it rho).",
                           low=0.0, high=1.0, high_open=True)
    inverse_time_decay: float = setting(
        0.0, "Keras-style decay: lr / (1 + decay * iteration), on top of the schedule.", low=0.0)
    schedule: ScheduleConfig = setting(ScheduleConfig(), "The learning-rate schedule.")


@dataclass(frozen=True)
class AugmentConfig:
    """Preprocessing (fitted on the training split) and batched on-device augmentation."""

    preprocess: tuple[PreprocessName, ...] = setting(
        ("standardize",), "Applied in order after scaling to [0, 1]: standardize "
        "(per-channel mean/std), gcn (per-image centering and scaling), zca (whitening).")
    zca_epsilon: float = setting(1e-2, "ZCA regularizer added to the eigenvalues.",
                                 low=0.0, low_open=True)
    crop_padding: int = setting(0, "Random crop after zero padding by this many pixels (0 = off).",
                                low=0, high=16)
    flip: bool = setting(False, "Random horizontal flip.")
    translate: int = setting(0, "Random translation by up to this many pixels, zero filled.",
                             low=0, high=16)
    rotation: float = setting(0.0, "Keras-style random rotation range in degrees.", low=0.0, high=180.0)
    shift: float = setting(0.0, "Keras-style random width/height shift, fraction of the size.",
                           low=0.0, high=0.5)
    cutout: int = setting(0, "Cutout: side of the zeroed square (0 = off).", low=0, high=32)


@dataclass(frozen=True)
class DropoutEvent:
    """One change of dropout rates at a given iteration or epoch."""

    at: int = setting(0, "When the change happens (see unit).", low=0)
    unit: Literal["iteration", "epoch"] = setting("iteration", "Unit of `at`.")
    action: Literal["set", "add", "multiply"] = setting(
        "set", "set: rates become `rates`; add: `rates` are added; multiply: rates times `factor`.")
    scope: Literal["last", "all"] = setting(
        "last", "last: the dropout layer that ends each group (stack); all: every layer of each group.")
    rates: tuple[float, ...] = setting((), "set/add: one value per group (stack), in order.",
                                       low=-1.0, high=1.0)
    factor: float = setting(1.0, "multiply: factor applied to every rate.", low=0.0)
    cap: float = setting(0.9, "No rate goes above this after the change.", low=0.0, high=1.0, high_open=True)


@dataclass(frozen=True)
class ScheduledChange:
    """A change of live settings at the start of an epoch, as `cifartui control RUN set` would make it."""

    epoch: int = setting(1, "The epoch (counted from 0) before whose first step the change applies.", low=1)
    set: tuple[str, ...] = setting(
        (), "KEY=VALUE assignments with the keys `control set` takes (optimizer.lr, optimizer.weight_decay, "
        "dropout.GROUP, ...), e.g. [\"optimizer.lr=0.02\"].")


@dataclass(frozen=True)
class TrainConfig:
    """How long, how big, where and how often."""

    epochs: int = setting(10, "Epochs to train (ignored when max_steps is set and smaller).", low=1)
    max_steps: int = setting(0, "Stop after this many iterations (0 = no limit).", low=0)
    batch_size: int = setting(128, "Training batch size.", low=1, high=65536)
    eval_batch_size: int = setting(1000, "Batch size for validation and test; on the CPU at most the training "
                                     "batch, so evaluating never raises the run's peak memory.",
                                     low=1, high=65536)
    seed: int = setting(0, "Seed for weights, data order, augmentation and dropout.",
                        low=0, high=2**32 - 1)  # NumPy's global seed takes no more
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    label_smoothing: float = setting(0.0, "Label smoothing of the cross-entropy loss.",
                                     low=0.0, high=1.0, high_open=True)
    precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto", "Arithmetic of the forward pass: auto is bf16 autocast on a GPU and fp32 on the CPU.")
    compile: bool = setting(False, "Compile the model with torch.compile (slow first steps, faster after).")
    cuda_graphs: Literal["auto", "off"] = setting(
        "auto", "On a GPU, replay each training step as a CUDA graph after a few warm-up steps (auto), or "
        "launch its kernels one by one (off).")
    lookahead_every: int = setting(
        0, "Lookahead: every this many steps, move a slow copy of the weights toward the trained ones and "
        "restart from it (its pull fades in cubically over the run; 0 = off).", low=0)
    test_time_flip: bool = setting(False, "Evaluate on each image and its mirror image, averaging the logits.")
    log_every: int = setting(10, "Emit step metrics at most every this many steps.", low=1)
    checkpoint_minutes: float = setting(
        10.0, "Also write checkpoints/last.pt mid-epoch at this interval (0 = epoch ends only).", low=0.0)
    keep_every: int = setting(
        0, "Also keep the checkpoint of every this many epochs (checkpoints/epoch-N.pt), to rewind or branch "
        "from later (0 = off).", low=0)
    keep_max_mib: float = setting(
        2048.0, "Disk space the kept checkpoints may take, in MiB; past it the oldest kept one goes.",
        low=0.0, low_open=True)


@dataclass(frozen=True)
class Reference:
    """The result the recipe's source reported, drawn as the target."""

    top1: float = setting(0.0, "Reported top-1 accuracy in percent (0 = none), on the split measured_on names.",
                          low=0.0, high=100.0)
    top5: float = setting(0.0, "Reported top-5 accuracy in percent (0 = none).", low=0.0, high=100.0)
    source: str = setting("", "Where the number comes from.")
    measured_on: Literal["test", "validation"] = setting(
        "test", "The split the source measured the reported numbers on.")
    seed: str = setting(
        "", "The write-up the recipe reproduces, by its file name without .txt (such as "
        "002_8a402e6c583ba6d9); empty for recipes that reproduce none.")
    notes: str = setting(
        "", "What the source leaves open or contradicts, and which reading the recipe follows.")


@dataclass(frozen=True)
class RunConfig:
    """A whole recipe: the four parts, training settings and the reference result."""

    name: str = setting("custom", "Preset name.")
    description: str = setting("", "One line shown in preset lists.")
    dataset: DatasetConfig = setting(DatasetConfig(), "The dataset part.")
    model: ModelConfig = setting(ModelConfig(), "The model part.")
    optimizer: OptimizerConfig = setting(OptimizerConfig(), "The optimizer part, with its LR schedule.")
    augment: AugmentConfig = setting(AugmentConfig(), "The augmentation part.")
    train: TrainConfig = setting(TrainConfig(), "Training settings.")
    dropout_schedule: tuple[DropoutEvent, ...] = setting((), "Changes of dropout rates over time.")
    settings_schedule: tuple[ScheduledChange, ...] = setting(
        (), "Changes of live settings at given epochs, in order (a schedule `sweep --pbt-export` writes).")
    reference: Reference = setting(Reference(), "The result this recipe reproduces.")

    def to_dict(self) -> dict[str, Any]:
        plain = to_plain(self)
        if not self.settings_schedule:
            # Written only when there is one: a run's config.json stays readable by versions
            # that know no settings_schedule, which refuse a key they do not know.
            del plain["settings_schedule"]
        return plain


PARTS = ("dataset", "model", "optimizer", "augment")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested plain dicts (a config's to_plain) as one dict of dotted keys: {"optimizer.lr": 0.1, ...}."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, child in value.items():
            flat.update(flatten(child, f"{prefix}.{key}" if prefix else key))
        return flat
    return {prefix: value}


def to_plain(value: Any) -> Any:
    """A config as plain dicts, lists and scalars (JSON- and TOML-friendly)."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [to_plain(item) for item in value]
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _check_range(value: float, meta: Mapping[str, Any], source: str, key: str) -> None:
    low, high = meta.get("low"), meta.get("high")
    too_low = low is not None and (value <= low if meta.get("low_open") else value < low)
    too_high = high is not None and (value >= high if meta.get("high_open") else value > high)
    if too_low or too_high:
        left = "(" if meta.get("low_open") else "["
        right = ")" if meta.get("high_open") else "]"
        bounds = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ConfigError(source, key, f"{value!r} is out of range: expected a value in {bounds}")


def _convert(tp: Any, value: Any, meta: Mapping[str, Any], source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(source, key, f"expected a table, got {type(value).__name__} {value!r}")
        return from_mapping(tp, value, source, prefix=key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(source, key, f"{value!r} is not allowed: expected {_type_name(tp)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(source, key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        item_type = typing.get_args(tp)[0]
        return tuple(_convert(item_type, item, meta, source, f"{key}[{i}]") for i, item in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, f"expected an integer, got {value!r}")
        _check_range(value, meta, source, key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, key, f"expected a number, got {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(source, key, f"expected a finite number, got {value!r}")
        _check_range(float(value), meta, source, key)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(source, key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r}")  # a programming error, not user input


def from_mapping(cls: type, data: Mapping[str, Any], source: str = "", prefix: str = "") -> Any:
    """Build config dataclass `cls` from plain data, validating every key and value."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full_key = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(source, full_key, f"unknown key; expected one of: {known}")
        kwargs[key] = _convert(hints[key], value, fields[key].metadata, source, full_key)
    return cls(**kwargs)


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, str, str, Any]]:
    """(key, type, doc, default) for every leaf field: the reference of all settings."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(field_docs(tp, key + "."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((key, _type_name(tp), f.metadata.get("doc", ""), to_plain(default)))
            item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None
            if dataclasses.is_dataclass(item):  # a list of tables: document the keys of each table too
                rows.extend(field_docs(item, key + "[]."))
    return rows


def replace_path(config: Any, dotted: str, value: Any, source: str = "--set") -> Any:
    """A copy of `config` with the field at `dotted` (e.g. optimizer.schedule.name) set and validated."""
    head, _, rest = dotted.partition(".")
    plain = to_plain(config)
    if head not in plain:
        raise ConfigError(source, dotted, "unknown key; expected one of: " + ", ".join(sorted(plain)))
    node = plain
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            raise ConfigError(source, dotted, f"'{'.'.join(parts[:i + 1])}' is not a table")
        node = child
    if parts[-1] not in node:
        raise ConfigError(source, dotted, "unknown key; expected one of: " + ", ".join(sorted(node)))
    node[parts[-1]] = value
    return from_mapping(type(config), plain, source)



def parse_value(text: str) -> Any:
    """A `--set` value: TOML syntax where it parses (numbers, booleans, lists), else a plain string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def check_rules(config: RunConfig, source: str) -> RunConfig:
    """The checks that span several fields, but for the model's name (the engine's registry knows those)."""
    control = next((char for char in config.name if unicodedata.category(char) in ("Cc", "Cf", "Cs")
                    and char not in "\u200c\u200d"), None)  # joiners stay: emoji and scripts need them
    if control is not None:  # a newline or escape would reach headers, tables and terminals as it is
        raise ConfigError(source, "name", f"{config.name!r} holds the control character {control!r}; "
                          "expected printable text")
    if config.dataset.name != "cifar100" and config.dataset.labels == "coarse":
        raise ConfigError(source, "dataset.labels", "coarse labels exist only for cifar100")
    schedule = config.optimizer.schedule
    if schedule.name == "multistep" and list(schedule.milestones) != sorted(schedule.milestones):
        raise ConfigError(source, "optimizer.schedule.milestones", "expected increasing values")
    if config.optimizer.nesterov and (config.optimizer.name != "sgd" or config.optimizer.momentum == 0):
        raise ConfigError(source, "optimizer.nesterov", "Nesterov momentum needs optimizer.name = 'sgd' "
                          "and optimizer.momentum > 0")
    if config.optimizer.name in ("adam", "adamw") and len(config.optimizer.betas) != 2:
        raise ConfigError(source, "optimizer.betas", "expected two values, [beta1, beta2]")
    if schedule.name in ("onecycle", "triangular") and schedule.max_lr < config.optimizer.lr:
        raise ConfigError(source, "optimizer.schedule.max_lr",
                          f"{schedule.max_lr} is below optimizer.lr ({config.optimizer.lr}); expected max_lr >= lr")
    if config.optimizer.decay_convention == "keras-l2" and config.optimizer.name == "adamw":
        raise ConfigError(source, "optimizer.decay_convention", "'keras-l2' is a penalty in the loss, which AdamW's "
                          "decoupled decay is not; expected optimizer.name 'adam' for Keras' l2 with Adam")
    for i, group in enumerate(config.optimizer.decay_groups):
        if not group.match:
            raise ConfigError(source, f"optimizer.decay_groups[{i}].match", "expected at least one pattern")
    for i, event in enumerate(config.dropout_schedule):
        if event.action in ("set", "add") and not event.rates:
            raise ConfigError(source, f"dropout_schedule[{i}].rates", f"'{event.action}' needs one rate per group")
    last = 0
    for i, change in enumerate(config.settings_schedule):
        if change.epoch <= last:
            raise ConfigError(source, f"settings_schedule[{i}].epoch", f"{change.epoch} does not come after the "
                              f"previous change's epoch ({last}); expected increasing epochs")
        last = change.epoch
        if not change.set:
            raise ConfigError(source, f"settings_schedule[{i}].set", "expected at least one KEY=VALUE")
        for item in change.set:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(source, f"settings_schedule[{i}].set", f"{item!r}: expected KEY=VALUE, for "
                                  "example optimizer.lr=0.01")
    return config
