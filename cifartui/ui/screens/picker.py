"""The preset picker: a whole recipe, or its four parts composed, with common settings inline.

Before launch it shows the resolved configuration, the model summary and the reference
result, so what runs is what you read.
"""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from cifartui import presets
from cifartui.config import PARTS, ConfigError, RunConfig

SETTINGS = (("epochs", "epochs", "integer"), ("batch_size", "batch", "integer"), ("lr", "lr", "number"),
            ("device", "device", "text"), ("seed", "seed", "integer"))


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


class PickerScreen(ModalScreen[RunConfig | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "launch", "Launch"),
                Binding("ctrl+a", "preview_augmentation", "Preview augmentation")]

    def __init__(self) -> None:
        super().__init__()
        self.recipes = presets.available()
        self.recipe: str | None = None
        self.config: RunConfig | None = None
        self._summaries: dict[tuple, str] = {}

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Static("[b]New run[/]: pick a recipe, swap any part, adjust the settings, launch", id="picker-title")
            with Horizontal(id="picker-body"):
                options = []
                for name in self.recipes:
                    options.append(Option(name, id=name))
                yield OptionList(*options, id="recipes")
                with VerticalScroll(id="choices"):
                    for part in PARTS:
                        names = list(presets.available(part))
                        yield Select([(n, n) for n in names], prompt=f"{part}: the recipe's own",
                                     id=f"part-{part}", allow_blank=True)
                    with Horizontal(id="settings"):
                        for key, label, kind in SETTINGS:
                            with Vertical(classes="setting"):
                                yield Label(label)
                                yield Input(id=f"set-{key}", type=kind if kind != "text" else "text")
                    yield Static(id="preview")
                    yield Static(id="model-summary")
            with Horizontal(classes="buttons"):
                yield Button("Launch", variant="primary", id="launch")
                yield Button("Augmentation", id="preview-augmentation")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        recipes = self.query_one("#recipes", OptionList)
        recipes.focus()
        if self.recipes:
            recipes.highlighted = 0

    @on(OptionList.OptionHighlighted, "#recipes")
    def recipe_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self.recipe = event.option.id
        try:
            config = presets.load(str(self.recipes[self.recipe].path))
        except ConfigError as error:
            self._show_error(str(error))
            return
        values = {"epochs": config.train.epochs, "batch_size": config.train.batch_size, "lr": config.optimizer.lr,
                  "device": config.train.device, "seed": config.train.seed}
        with self.prevent(Input.Changed, Select.Changed):
            for key, value in values.items():
                self.query_one(f"#set-{key}", Input).value = f"{value:g}" if isinstance(value, float) else str(value)
            for part in PARTS:
                self.query_one(f"#part-{part}", Select).clear()
        self.refresh_preview()

    @on(OptionList.OptionSelected, "#recipes")
    def recipe_chosen(self) -> None:
        self.query_one("#part-dataset", Select).focus()

    @on(Select.Changed)
    @on(Input.Changed)
    def settings_changed(self) -> None:
        self.refresh_preview()

    def _compose_config(self) -> RunConfig:
        if self.recipe is None:
            raise ConfigError("", "", "pick a recipe first")
        base = presets.load(str(self.recipes[self.recipe].path))
        parts = {}
        for part in PARTS:
            select = self.query_one(f"#part-{part}", Select)
            parts[part] = None if select.is_blank() else str(select.value)
        numbers: dict[str, object] = {}
        for key, label, kind in SETTINGS:
            text = self.query_one(f"#set-{key}", Input).value.strip()
            if not text:
                continue
            try:
                numbers[key] = int(text) if kind == "integer" else float(text) if kind == "number" else text
            except ValueError:
                raise ConfigError("", label, f"'{text}' is not a valid {kind}") from None
        return presets.compose(base, **parts, **numbers)

    def refresh_preview(self) -> None:
        try:
            self.config = self._compose_config()
        except ConfigError as error:
            self.config = None
            self._show_error(str(error))
            return
        self.query_one("#preview", Static).update(describe(self.config))
        self.query_one("#launch", Button).disabled = False
        self.summarize_model(self.config)

    def _show_error(self, message: str) -> None:
        self.query_one("#preview", Static).update(f"[b red]{message}[/]")
        self.query_one("#launch", Button).disabled = True

    @work(thread=True, exclusive=True, group="model-summary", exit_on_error=False)
    def summarize_model(self, config: RunConfig) -> None:
        """Build the model on the CPU off the UI thread; a big model takes a moment."""
        key = (config.model, config.dataset.num_classes)
        if key not in self._summaries:
            from cifartui.engine.models import build_model, summarize
            try:
                summary = summarize(build_model(config.model, config.dataset.num_classes), config.model.name)
            except ValueError as error:
                self._summaries[key] = f"[b red]{error}[/]"
            else:
                layers = ", ".join(f"{row.kind}{list(row.output_shape)}" for row in summary.layers[:6])
                self._summaries[key] = (f"[b]model summary:[/] {summary.total_parameters:,} parameters, "
                                        f"{len(summary.layers)} layers: {layers}"
                                        + (" …" if len(summary.layers) > 6 else ""))
        self.app.call_from_thread(self.query_one("#model-summary", Static).update, self._summaries[key])

    @on(Button.Pressed, "#launch")
    def action_launch(self) -> None:
        if self.config is not None:
            self.dismiss(self.config)

    @on(Button.Pressed, "#preview-augmentation")
    def action_preview_augmentation(self) -> None:
        if self.config is not None:
            from cifartui.ui.screens.augment_preview import AugmentPreviewScreen

            self.app.push_screen(AugmentPreviewScreen(self.config, getattr(self.app, "data_dir", None)))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
