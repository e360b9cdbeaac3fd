"""The preset picker: a whole recipe, or its four parts composed, with common settings inline.

Before launch it shows the resolved configuration, the model summary, the reference
result and an estimate of the time on this machine, so what runs is what you read.
Each setting says where its value comes from: the recipe, a swapped part (swapping
the optimizer brings that optimizer's learning rate) or you. A value you typed stays
when you swap a part, and the line under the settings says what the part would set
(ctrl+r takes the parts' values back). Invalid values are named inline, with the
preset loader's own messages, and Launch stays off until they are fixed, so no run
directory is made for a run that cannot start.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from cifartui import presets
from cifartui.config import PARTS, ConfigError, RunConfig
from cifartui.engine.api import list_runs, read_metrics

SETTINGS = (("epochs", "epochs", "integer"), ("batch_size", "batch", "integer"), ("lr", "lr", "number"),
            ("device", "device", "text"), ("seed", "seed", "integer"))
CONFIG_KEYS = {"epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "optimizer.lr",
               "device": "train.device", "seed": "train.seed"}
# Which part of a recipe each setting belongs to, to say where its value comes from.
SETTING_PART = {"epochs": "train", "batch_size": "train", "lr": "optimizer", "device": "train", "seed": "train"}
# Highlighted when nothing was launched before: it trains offline in well under a minute.
QUICK_RECIPE = "demo-synthetic"
DATASET_TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000}


def last_settings_path() -> Path:
    """The picker's memory of the last launch, beside the user's presets."""
    return presets.user_preset_dir().parent / "last-run.json"


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_of(config: RunConfig) -> dict[str, str]:
    return {"epochs": _value_text(config.train.epochs), "batch_size": _value_text(config.train.batch_size),
            "lr": _value_text(config.optimizer.lr), "device": config.train.device,
            "seed": _value_text(config.train.seed)}


def device_problem(name: str) -> str | None:
    """What is wrong with a device name here, in the engine's words; None when it can train."""
    from cifartui.engine.api import DeviceError, resolve_device

    try:
        resolve_device(name, option="")  # the picker names the setting itself
    except DeviceError as error:
        return str(error)
    return None


def describe(config: RunConfig) -> str:
    """The resolved configuration in a few lines of console markup."""
    d, m, o, a, t, r = (config.dataset, config.model, config.optimizer, config.augment, config.train,
                        config.reference)
    dataset = f"{d.name}" + (f" ({d.labels} labels)" if d.name == "cifar100" else "")
    if d.name == "synthetic":
        dataset += f" ({d.classes} classes, {d.train_size:,} train / {d.test_size:,} test images)"
    schedule = o.schedule
    options = ", ".join(f"{k}={v}" for k, v in (("momentum", o.momentum), ("nesterov", o.nesterov),
                                                  ("weight decay", o.weight_decay)) if v)
    augment = ", ".join(filter(None, [
        "+".join(a.preprocess) or "scale only", f"crop pad {a.crop_padding}" if a.crop_padding else "",
        "flip" if a.flip else "", f"translate {a.translate}" if a.translate else "",
        f"rotate {a.rotation:g}°" if a.rotation else "", f"shift {a.shift:g}" if a.shift else "",
        f"cutout {a.cutout}" if a.cutout else ""]))
    length = f"{t.max_steps:,} iterations" if t.max_steps else f"{t.epochs} epochs"
    reference = " / ".join(filter(None, [f"top-1 {r.top1:g}%" if r.top1 else "", f"top-5 {r.top5:g}%" if r.top5 else ""]))
    lines = [
        f"[b]dataset:[/] {dataset}, validation {d.val_fraction:g}",
        f"[b]model:[/] {m.name}" + (f", {m.activation}" if m.activation != "default" else ""),
        f"[b]optimizer:[/] {o.name} lr {o.lr:g}" + (f", {options}" if options else "") + f"; schedule {schedule.name}",
        f"[b]augment:[/] {augment}",
        f"[b]training:[/] {length}, batch {t.batch_size}, device {t.device}, seed {t.seed}",
    ]
    if config.dropout_schedule:
        lines.append(f"[b]dropout:[/] {len(config.dropout_schedule)} scheduled changes")
    lines.append(f"[b]reference:[/] {reference or 'none'}" + (f"  [dim]{r.source}[/]" if r.source else ""))
    return "\n".join(lines)


def training_images(config: RunConfig) -> int:
    d = config.dataset
    total = d.train_size if d.name == "synthetic" else DATASET_TRAIN_IMAGES.get(d.name, 50_000)
    return int(total * (1 - d.val_fraction))


@dataclass(frozen=True)
class Pace:
    images_per_s: float
    runs: int


def measured_paces(runs_dir: Path) -> dict[tuple[str, str], Pace]:
    """Training images per second of earlier runs here, by (model, device kind): the estimate's basis."""
    found: dict[tuple[str, str], list[float]] = {}
    infos, _ = list_runs(runs_dir)
    for info in infos[:50]:  # the newest are the most telling, and reading is not free
        try:
            config = json.loads((info.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        rate, device = None, "cpu"
        summary = info.path / "summary.json"
        if summary.is_file():
            try:
                data = json.loads(summary.read_text(encoding="utf-8"))
                rate, device = data.get("images_per_s"), str(data.get("device", "cpu"))
            except (OSError, ValueError):
                pass
        if not rate:
            for event in reversed(read_metrics(info.path)):
                if event["event"] == "StepMetrics":
                    rate = event.get("images_per_s")
                    break
                if event["event"] == "RunStarted":
                    device = str(event.get("device", "cpu"))
        if rate:
            key = (str(config.get("model", {}).get("name")), "cuda" if device.startswith("cuda") else "cpu")
            found.setdefault(key, []).append(float(rate))
    return {key: Pace(sorted(rates)[len(rates) // 2], len(rates)) for key, rates in found.items()}


def estimate(config: RunConfig, paces: dict[tuple[str, str], Pace], device_kind: str) -> str:
    pace = paces.get((config.model.name, device_kind))
    if pace is None:
        return f"no estimate yet: no earlier run of {config.model.name} on {device_kind} here"
    steps_images = (config.train.max_steps * config.train.batch_size if config.train.max_steps
                    else config.train.epochs * training_images(config))
    seconds = steps_images / pace.images_per_s
    if seconds < 90:
        text = f"{seconds:.0f} s"
    elif seconds < 5400:
        text = f"{seconds / 60:.0f} min"
    else:
        text = f"{seconds / 3600:.1f} h"
    runs = "run" if pace.runs == 1 else "runs"
    return f"about {text} of training (at {pace.images_per_s:,.0f} images/s, from {pace.runs} earlier {runs} here)"


class PickerScreen(ModalScreen[RunConfig | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "launch", "Launch"),
                Binding("ctrl+a", "preview_augmentation", "Preview augmentation"),
                Binding("ctrl+r", "reset_settings", "Parts' values"),
                Binding("d", "use_synthetic", "Synthetic data")]

    def __init__(self, runs_dir: Path | None = None, detach: bool = False) -> None:
        super().__init__()
        self.runs_dir = runs_dir
        self.detach = detach  # train in a process of its own, which outlives the app
        self.recipes = presets.available()
        self.recipe: str | None = None
        self.config: RunConfig | None = None
        self.defaults: dict[str, str] = {}  # what the recipe and the chosen parts set
        self.edited: set[str] = set()  # settings the user typed; swapping a part leaves them
        self.problems: dict[str, str] = {}
        self.needs_download: set[str] = set()
        self.paces: dict[tuple[str, str], Pace] = {}
        self.surveyed = False  # the download marks and the time estimates are in
        self._summaries: dict[tuple, str] = {}
        self._remembered = self._read_remembered()

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Static("[b]New run[/]: pick a recipe, swap any part, adjust the settings, launch", id="picker-title")
            with Horizontal(id="picker-body"):
                yield OptionList(*[Option(self._recipe_label(name), id=name) for name in self.recipes], id="recipes")
                with VerticalScroll(id="choices"):
                    yield Static(id="recipe-about")
                    for part in PARTS:
                        names = list(presets.available(part))
                        yield Select([(n, n) for n in names], prompt=f"{part}: the recipe's own",
                                     id=f"part-{part}", allow_blank=True)
                    with Horizontal(id="settings"):
                        for key, label, kind in SETTINGS:
                            with Vertical(classes="setting"):
                                yield Label(label)
                                yield Input(id=f"set-{key}", type=kind if kind != "text" else "text")
                                yield Static(id=f"from-{key}", classes="setting-source")
                    yield Static(id="settings-note")
                    with Horizontal(id="data-dir-row"):
                        yield Label("data folder ", id="data-dir-label")
                        yield Input(id="data-dir", placeholder="default: $CIFARTUI_DATA or the cache folder")
                    yield Checkbox("keep training after the app closes (a process of its own)", self.detach,
                                   id="detach")
                    yield Static(id="preview")
                    yield Static(id="model-summary")
            with Horizontal(classes="buttons"):
                yield Button("Launch (ctrl+s)", variant="primary", id="launch")
                yield Button("Augmentation (ctrl+a)", id="preview-augmentation")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        data_dir = getattr(self.app, "data_dir", None)
        if data_dir:
            self.query_one("#data-dir", Input).value = str(data_dir)
        recipes = self.query_one("#recipes", OptionList)
        recipes.focus()
        names = list(self.recipes)
        remembered = self._remembered.get("recipe")
        start = remembered if remembered in self.recipes else QUICK_RECIPE if QUICK_RECIPE in self.recipes else None
        if names:
            recipes.highlighted = names.index(start) if start else 0
        self.survey()

    # --- recipes ------------------------------------------------------------------------------

    def _recipe_label(self, name: str) -> Text:
        label = Text(name, no_wrap=True, overflow="ellipsis")
        if not self.recipes[name].builtin:
            label.append(" ★", style="bold yellow")  # the user's own preset
        if name in getattr(self, "needs_download", ()):
            label.append(" ⤓", style="dim")
        return label

    @work(thread=True, exclusive=True, group="picker-survey", exit_on_error=False)
    def survey(self) -> None:
        """Which recipes need a download, and how fast earlier runs trained here (off the screen's thread)."""
        from cifartui.engine.api import ARCHIVES, default_data_dir

        root = Path(getattr(self.app, "data_dir", None) or default_data_dir())
        missing = set()
        for name, preset in self.recipes.items():
            try:
                dataset = presets.load(str(preset.path)).dataset.name
            except ConfigError:
                continue
            archive = ARCHIVES.get(dataset)
            if archive is not None and not (root / archive.folder).is_dir():
                missing.add(name)
        paces = measured_paces(self.runs_dir) if self.runs_dir else {}
        self.app.call_from_thread(self._surveyed, missing, paces)

    def _surveyed(self, missing: set[str], paces: dict[tuple[str, str], Pace]) -> None:
        self.needs_download, self.paces = missing, paces
        self.surveyed = True
        recipes = self.query_one("#recipes", OptionList)
        highlighted = recipes.highlighted
        for name in self.recipes:
            recipes.replace_option_prompt(name, self._recipe_label(name))
        recipes.highlighted = highlighted
        self.refresh_preview()

    @on(OptionList.OptionHighlighted, "#recipes")
    def recipe_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id == self.recipe:
            return  # highlighted again: the user's choices for it stay
        self.recipe = event.option.id
        remembered = self._remembered if self._remembered.get("recipe") == self.recipe else {}
        if remembered:
            self._remembered = {}  # used once, for the recipe it was about
        with self.prevent(Input.Changed, Select.Changed):
            for part in PARTS:
                select = self.query_one(f"#part-{part}", Select)
                chosen = remembered.get("parts", {}).get(part)
                if chosen in presets.available(part):
                    select.value = chosen
                else:
                    select.clear()
        self.edited = set()
        self._take_defaults(overrides=remembered.get("settings", {}))
        self.refresh_preview()

    @on(OptionList.OptionSelected, "#recipes")
    def recipe_chosen(self) -> None:
        self.query_one("#part-dataset", Select).focus()

    # --- settings and where they come from ----------------------------------------------------

    def _parts(self) -> dict[str, str | None]:
        parts = {}
        for part in PARTS:
            select = self.query_one(f"#part-{part}", Select)
            parts[part] = None if select.is_blank() else str(select.value)
        return parts

    def _base(self) -> RunConfig:
        if self.recipe is None:
            raise ConfigError("", "", "pick a recipe first")
        return presets.load(str(self.recipes[self.recipe].path))

    def _take_defaults(self, overrides: dict[str, str] | None = None) -> None:
        """The values the recipe and the chosen parts set; settings the user did not type follow them."""
        try:
            self.defaults = settings_of(presets.compose(self._base(), **self._parts()))
        except ConfigError:
            return  # the preview names the problem
        overrides = overrides or {}
        with self.prevent(Input.Changed):
            for key, _label, _kind in SETTINGS:
                field = self.query_one(f"#set-{key}", Input)
                if key in overrides and overrides[key] != self.defaults[key]:
                    field.value = overrides[key]
                    self.edited.add(key)
                elif key not in self.edited:
                    field.value = self.defaults[key]

    def _source(self, key: str) -> str:
        if key in self.edited:
            return "[b]yours[/]"
        part = SETTING_PART[key]
        parts = self._parts()
        if part in parts and parts[part]:
            return parts[part] or "recipe"
        return "recipe"

    @on(Select.Changed)
    def part_changed(self) -> None:
        self._take_defaults()
        self.refresh_preview()

    @on(Input.Changed)
    def setting_changed(self, event: Input.Changed) -> None:
        key = (event.input.id or "").removeprefix("set-")
        if key in CONFIG_KEYS:
            if event.value.strip() == self.defaults.get(key):
                self.edited.discard(key)
            else:
                self.edited.add(key)
        self.refresh_preview()

    def action_reset_settings(self) -> None:
        self.edited = set()
        self._take_defaults()
        self.refresh_preview()

    def action_use_synthetic(self) -> None:
        """Train on generated images instead of downloading the dataset (a remedy without flags)."""
        self.query_one("#part-dataset", Select).value = "synthetic"

    def _compose_config(self) -> RunConfig:
        base = self._base()
        numbers: dict[str, object] = {}
        self.problems = {}
        for key, label, kind in SETTINGS:
            text = self.query_one(f"#set-{key}", Input).value.strip()
            if key not in self.edited and text == self.defaults.get(key):
                continue  # the recipe's own value: an iteration budget (max_steps) stays as it is
            if not text:
                self.problems[key] = f"'{CONFIG_KEYS[key]}': empty; expected a {kind}"
                continue
            try:
                numbers[key] = int(text) if kind == "integer" else float(text) if kind == "number" else text
            except ValueError:
                self.problems[key] = f"'{CONFIG_KEYS[key]}': '{text}' is not a valid {kind}"
        for key, value in list(numbers.items()):
            try:
                presets.compose(base, **{key: value})
            except ConfigError as error:
                self.problems[key] = f"'{error.key}': {error.message}" if error.key else error.message
                numbers.pop(key)
        device = str(numbers.get("device", base.train.device))
        if "device" not in self.problems and (problem := device_problem(device)):
            self.problems["device"] = f"'train.device': {problem}"
        config = presets.compose(base, **self._parts(), **numbers)
        if self.problems:
            raise ConfigError("", "", "; ".join(self.problems.values()))
        return config

    def _show_about(self) -> None:
        about = self.query_one("#recipe-about", Static)
        if self.recipe is None:
            about.update("")
            return
        try:
            base = self._base()
        except ConfigError as error:
            about.update(Text(str(error), style="bold red"))
            return
        mine = "  [b yellow]★ your preset[/]" if not self.recipes[self.recipe].builtin else ""
        length = f"{base.train.max_steps:,} iterations" if base.train.max_steps else f"{base.train.epochs} epochs"
        about.update(f"[b]{self.recipe}[/]{mine}: {base.description or 'no description'}\n"
                     f"[dim]{base.dataset.name}, {base.model.name}, {base.optimizer.name}, {length}[/]")

    def refresh_preview(self) -> None:
        self._show_about()
        try:
            self.config = self._compose_config()
        except ConfigError as error:
            self.config = None
            self._show_sources()
            if self.problems:  # named in red under the settings
                self._show_error("Launch is off until the settings named above are fixed.")
            else:
                self._show_error(error.message if not error.key else str(error))
            return
        self._show_sources()
        self.query_one("#preview", Static).update(describe(self.config) + "\n" + self._estimate_line())
        self.query_one("#launch", Button).disabled = False
        self.summarize_model(self.config)

    def _estimate_line(self) -> str:
        config = self.config
        if config is None:
            return ""
        kind = "cuda" if config.train.device.startswith("cuda") or (
            config.train.device == "auto" and _cuda_available()) else "cpu"
        line = f"[b]time:[/] {estimate(config, self.paces, kind)}"
        if self.recipe in self.needs_download and config.dataset.name != "synthetic":
            line += (f"\n[b yellow]needs download:[/] {config.dataset.name} is not in the data folder; launching "
                     "downloads it (about 170 MB). No network? [b]d[/] (outside a text field) trains on synthetic data instead, or "
                     "set the data folder above to where a copy is.")
        return line

    def _show_sources(self) -> None:
        for key, _label, _kind in SETTINGS:
            field = self.query_one(f"#set-{key}", Input)
            field.set_class(key in self.problems, "-invalid")
            self.query_one(f"#from-{key}", Static).update(self._source(key))
        notes = [Text(problem, style="bold red") for problem in self.problems.values()]
        for key in sorted(self.edited):
            default = self.defaults.get(key)
            typed = self.query_one(f"#set-{key}", Input).value.strip()
            if default is not None and typed != default and key not in self.problems:
                source = self._parts().get(SETTING_PART[key]) or "the recipe"
                notes.append(Text(f"{key.replace('_', ' ')} {typed} is yours; {source} sets {default} "
                                  "(ctrl+r takes the parts' values)", style="yellow"))
        self.query_one("#settings-note", Static).update(Text("\n").join(notes) if notes else "")

    def _show_error(self, message: str) -> None:
        self.query_one("#preview", Static).update(Text(message, style="bold red"))
        self.query_one("#launch", Button).disabled = True

    @work(thread=True, exclusive=True, group="model-summary", exit_on_error=False)
    def summarize_model(self, config: RunConfig) -> None:
        """Build the model on the CPU off the UI thread; a big model takes a moment."""
        key = (config.model, config.dataset.num_classes)
        if key not in self._summaries:
            from cifartui.engine.api import build_model, summarize
            try:
                summary = summarize(build_model(config.model, config.dataset.num_classes), config.model.name)
            except ValueError as error:
                self._summaries[key] = f"[b red]{error}[/]"
            else:
                layers = ", ".join(f"{row.kind}{list(row.output_shape)}" for row in summary.layers[:6])
                self._summaries[key] = (f"[b]model summary:[/] {summary.total_parameters:,} parameters, "
                                        f"{len(summary.layers)} layers: {layers}"
                                        + (" …" if len(summary.layers) > 6 else ""))
        self.app.call_from_thread(self._show_summary, key)

    def _show_summary(self, key: tuple) -> None:
        # Workers for earlier choices may finish after this one: only the current model is shown.
        config = self.config
        if self.is_attached and config is not None and (config.model, config.dataset.num_classes) == key:
            self.query_one("#model-summary", Static).update(self._summaries[key])

    # --- memory of the last launch ------------------------------------------------------------

    @staticmethod
    def _read_remembered() -> dict[str, Any]:
        try:
            data = json.loads(last_settings_path().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _remember(self) -> None:
        settings = {key: self.query_one(f"#set-{key}", Input).value.strip() for key in self.edited}
        data = {"recipe": self.recipe, "parts": {k: v for k, v in self._parts().items() if v}, "settings": settings}
        path = last_settings_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            os.replace(temporary, path)
        except OSError:
            pass  # a memory, not a promise

    # --- buttons ------------------------------------------------------------------------------

    @on(Button.Pressed, "#launch")
    def action_launch(self) -> None:
        self.refresh_preview()
        if self.config is None:
            self.notify("Fix the settings named in red first.", severity="warning")
            return
        data_dir = self.query_one("#data-dir", Input).value.strip()
        if data_dir:
            self.app.data_dir = Path(data_dir).expanduser()
        self._remember()
        self.detach = self.query_one("#detach", Checkbox).value
        self.dismiss(self.config)

    @on(Button.Pressed, "#preview-augmentation")
    def action_preview_augmentation(self) -> None:
        if self.config is not None:
            from cifartui.ui.screens.augment_preview import AugmentPreviewScreen

            self.app.push_screen(AugmentPreviewScreen(self.config, getattr(self.app, "data_dir", None)))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
