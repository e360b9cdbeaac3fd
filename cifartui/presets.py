"""Finding, loading and composing preset files.

A recipe is a TOML file in `presets/` (shipped with the package) or in the user's
preset directory. Its four parts, `[dataset]`, `[model]`, `[optimizer]` and
`[augment]`, may start from a part preset (`preset = "cifar100"`, a file in
`presets/<part>/`) and override keys on top. On the command line any part can be
swapped for another part preset and any key set with `--set part.key=value`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from platformdirs import user_config_dir

from cifartui.config import PARTS, ConfigError, RunConfig, from_mapping, parse_value, replace_path, to_plain

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def user_preset_dir() -> Path:
    """Where user presets live: $CIFARTUI_CONFIG/presets or the platform's config dir."""
    base = os.environ.get("CIFARTUI_CONFIG") or user_config_dir("cifartui")
    return Path(base) / "presets"


@dataclass(frozen=True)
class PresetFile:
    name: str
    path: Path
    builtin: bool


def _builtin_root() -> Path:
    return Path(str(resources.files("cifartui.preset_files")))


def _scan(folder: Path, builtin: bool) -> dict[str, PresetFile]:
    if not folder.is_dir():
        return {}
    return {p.stem: PresetFile(p.stem, p, builtin) for p in sorted(folder.glob("*.toml"))}


def available(part: str | None = None) -> dict[str, PresetFile]:
    """Recipes (part=None) or part presets by name; user files shadow built-in ones."""
    sub = Path(part) if part else Path()
    found = _scan(_builtin_root() / sub, builtin=True)
    found.update(_scan(user_preset_dir() / sub, builtin=False))
    return dict(sorted(found.items()))


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning every way it can fail into a ConfigError naming it."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(str(path), "", f"cannot read the file: {error.strerror or error}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(str(path), "", f"not a UTF-8 text file ({error.reason} at byte {error.start})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), "", f"not valid TOML: {error}") from None


def _find(name: str, part: str | None) -> Path:
    candidate = Path(name)
    if candidate.suffix == ".toml" or os.sep in name or "/" in name:
        if not candidate.is_file():
            raise ConfigError(str(candidate), "", "no such preset file")
        return candidate
    presets = available(part)
    if name not in presets:
        kind = f"{part} preset" if part else "preset"
        names = ", ".join(presets) or "(none)"
        raise ConfigError("", "", f"unknown {kind} '{name}'; available: {names}")
    return presets[name].path


def _part_table(part: str, table: Any, source: str) -> dict[str, Any]:
    """A part's table with its `preset = ...` base expanded."""
    if not isinstance(table, Mapping):
        raise ConfigError(source, part, f"expected a table, got {table!r}")
    table = dict(table)
    base_name = table.pop("preset", None)
    if base_name is None:
        return table
    if not isinstance(base_name, str):
        raise ConfigError(source, f"{part}.preset", f"expected a part preset name, got {base_name!r}")
    base_path = _find(base_name, part)
    base = read_toml(base_path)
    if "preset" in base:
        raise ConfigError(str(base_path), "preset", "part presets cannot start from another preset")
    _check_part(part, base, str(base_path))
    return {**base, **table}


def _check_part(part: str, table: Mapping[str, Any], source: str) -> None:
    """A part preset's own keys and values, so that its mistakes name its own file, not the recipe's."""
    from_mapping(_PART_TYPES[part], table, source, prefix=part)


_PART_TYPES = {part: typing.get_type_hints(RunConfig)[part] for part in PARTS}


def load_part(part: str, name: str) -> dict[str, Any]:
    """A part preset as plain data, its keys and values checked against the part."""
    path = _find(name, part)
    table = _part_table(part, read_toml(path), str(path))
    _check_part(part, table, str(path))
    return table


def load(name_or_path: str) -> RunConfig:
    """Load a recipe by name or path, validated; errors name the file and key."""
    path = _find(name_or_path, None)
    data = read_toml(path)
    source = str(path)
    for part in PARTS:
        if part in data:
            data[part] = _part_table(part, data[part], source)
    data.setdefault("name", path.stem)
    config = from_mapping(RunConfig, data, source)
    return validate(config, source)


def validate(config: RunConfig, source: str) -> RunConfig:
    """Checks that span several fields, the model's name among them."""
    from cifartui.engine.train.rules import validate as validate_run  # the registry is the one place model names live

    return validate_run(config, source)


def seed_recipes() -> dict[str, RunConfig]:
    """The recipes that reproduce one of the write-ups (`reference.seed` set), by name."""
    found = {}
    for name, entry in available().items():
        config = load(str(entry.path))
        if config.reference.seed:
            found[name] = config
    return found


def compose(config: RunConfig, *, dataset: str | None = None, model: str | None = None,
            optimizer: str | None = None, augment: str | None = None,
            sets: Iterable[str] = (), epochs: int | None = None, seed: int | None = None,
            device: str | None = None, batch_size: int | None = None, lr: float | None = None) -> RunConfig:
    """The recipe with parts swapped, keys set and common settings overridden; validated."""
    plain = to_plain(config)
    swaps = {"dataset": dataset, "model": model, "optimizer": optimizer, "augment": augment}
    for part, name in swaps.items():
        if name is None:
            continue
        new = load_part(part, name)
        if part == "dataset":
            # A swapped dataset keeps the recipe's validation split, and a synthetic one
            # keeps its class count so the model's head still fits.
            new.setdefault("val_fraction", plain["dataset"]["val_fraction"])
            if new.get("name") == "synthetic" and "classes" not in new:
                new["classes"] = config.dataset.num_classes
        plain[part] = new
    source = "command line"
    config = from_mapping(RunConfig, plain, source)
    set_keys = set()
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", item, "expected part.key=value, for example optimizer.lr=0.1")
        config = replace_path(config, key.strip(), parse_value(text.strip()))
        set_keys.add(key.strip())
    train = config.train
    overrides = {"epochs": epochs, "seed": seed, "device": device, "batch_size": batch_size}
    for key, value in overrides.items():
        if value is not None:
            config = replace_path(config, f"train.{key}", value, f"--{key.replace('_', '-')}")
    if lr is not None:
        config = replace_path(config, "optimizer.lr", lr, "--lr")
    if epochs is not None and train.max_steps and "train.max_steps" not in set_keys:
        # An explicit epoch count wins over the recipe's iteration budget; an explicit
        # --set train.max_steps is kept beside it, and the run ends at whichever comes first.
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=0))
    return validate(config, source)
