"""What can change while a run trains, in one form: validated as presets are, sent as one change.

The form starts from the run's settings now (asked of the run, in a worker thread) or
from a checkpoint's (for a branch). Each value is checked as it is typed with the
run's live settings (`LiveSettings.check`: the messages of `--set` and the presets'
cross-field rules); a field in error is named in red and nothing is sent until all
are fixed. For a training run, Apply sends one `set` request and shows the run's
answer; for a branch, the changes go to the new run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from cifartui.config import ConfigError
from cifartui.engine.api import LiveSettings, NEXT_EPOCH, NEXT_STEP, parse_value, when_applied
from cifartui.ui.steering import FormState, answer_text, ask, change_text, live_state, value_text

KEEP = "keep"
# The schedules a run can switch to from the current step.
REPLACEMENTS = (("constant", "constant from this step"), ("step", "step decay from this step"),
                ("cosine", "cosine to the end of the run"), ("plateau", "reduce on plateau from this step"))
SOURCE = "app"


@dataclass(frozen=True)
class Field:
    """One changeable setting as the form shows it."""

    key: str
    label: str
    kind: str  # number, integer, bool or list
    hint: str = ""
    optimizers: tuple[str, ...] = ()  # shown only for these optimizers; () for all
    schedules: tuple[str, ...] = ()  # a schedule's parameter: shown for these schedule kinds


LEARNING_RATE = (
    Field("optimizer.lr", "base learning rate", "number", "what the schedule scales"),
    Field("optimizer.schedule.max_lr", "peak learning rate", "number", "the top of the cycle",
          schedules=("onecycle", "triangular")),
    Field("optimizer.schedule.step_size", "step size", "integer", "multiply by gamma every this many {unit}s",
          schedules=("step",)),
    Field("optimizer.schedule.milestones", "milestones", "list", "{unit}s at which the rate is multiplied by "
          "gamma", schedules=("multistep",)),
    Field("optimizer.schedule.gamma", "gamma", "number", "the factor", schedules=("step", "multistep",
                                                                                 "exponential")),
    Field("optimizer.schedule.min_lr", "lowest learning rate", "number", "where cosine ends; plateau's floor",
          schedules=("cosine", "plateau")),
    Field("optimizer.schedule.factor", "reduction factor", "number", "applied when validation loss stalls",
          schedules=("plateau",)),
    Field("optimizer.schedule.patience", "patience", "integer", "epochs without improvement before reducing",
          schedules=("plateau",)),
    Field("optimizer.schedule.cycle_length", "half cycle", "integer", "{unit}s to rise (and to fall)",
          schedules=("triangular",)),
)
OPTIMIZER = (
    Field("optimizer.momentum", "momentum", "number", "0 = off", optimizers=("sgd", "rmsprop")),
    Field("optimizer.nesterov", "Nesterov momentum", "bool", optimizers=("sgd",)),
    Field("optimizer.betas", "betas", "list", "beta1, beta2", optimizers=("adam", "adamw")),
    Field("optimizer.weight_decay", "weight decay", "number", "0 = off"),
)
AUGMENTATION = (
    Field("augment.flip", "horizontal flip", "bool"),
    Field("augment.crop_padding", "random crop padding", "integer", "pixels; 0 = off"),
    Field("augment.translate", "translation", "integer", "pixels; 0 = off"),
    Field("augment.rotation", "rotation", "number", "degrees; 0 = off"),
    Field("augment.shift", "shift", "number", "fraction of the image; 0 = off"),
    Field("augment.cutout", "cutout", "integer", "side of the square in pixels; 0 = off"),
)
LENGTH = (
    Field("train.epochs", "epochs", "integer", "of the whole run"),
    Field("train.max_steps", "max steps", "integer", "of the whole run; 0 = no limit"),
    Field("train.batch_size", "batch size", "integer", f"applies {NEXT_EPOCH}"),
    Field("train.checkpoint_minutes", "checkpoint every", "number", "minutes, besides epoch ends; 0 = epoch "
          "ends only"),
    Field("train.keep_every", "keep a checkpoint every", "integer", "epochs, to branch from later; 0 = off"),
)


def field_id(key: str) -> str:
    """A widget id for a setting's key (ids take no dots)."""
    return "f-" + re.sub(r"[^A-Za-z0-9_-]", "_", key.replace(".", "-"))


def initial_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(value_text(item) for item in value)
    return value_text(value)


def parse_field(kind: str, text: str) -> Any:
    """A typed value as `--set` reads it (TOML), a little kinder: `.5` is a number, lists need no brackets."""
    text = text.strip()
    if kind == "list":
        text = text if text.startswith("[") else f"[{text}]"
    value = parse_value(text)
    if isinstance(value, str) and kind in ("number", "integer"):
        try:
            return float(text)
        except ValueError:
            return value
    return value


class SettingsForm(ModalScreen[Any]):
    """The changeable settings of a run (or of a branch from a checkpoint)."""

    CSS_PATH = "../steering.tcss"
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "submit", "Apply")]

    def __init__(self, title: str, load: Callable[[], FormState], *,
                 send: Callable[[dict[str, Any]], dict[str, Any]] | None = None, submit_label: str = "Apply",
                 intro: str = "") -> None:
        """`load` runs in a worker thread; with `send` (also in a worker thread) the form sends the change
        and shows the answer; without, it is dismissed with the changes (a branch's)."""
        super().__init__()
        self.form_title = title
        self.load = load
        self.send = send
        self.submit_label = submit_label
        self.intro = intro
        self.state: FormState | None = None
        self.settings: LiveSettings | None = None
        self.fields: dict[str, Field] = {}  # by key, in form order
        self.initial: dict[str, Any] = {}  # text (or bool) each field started with
        self.problems: dict[str, str] = {}
        self.pending: dict[str, Any] = {}  # the valid change the form would send now
        self.preview: dict[str, list[Any]] = {}  # key -> [old, new] of that change
        self.sending = False
        self.answer: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="settings-form"):
            yield Static(f"[b]{self.form_title}[/]", id="form-title")
            yield Static("Reading the run's settings…", id="form-where")
            yield VerticalScroll(id="form-fields")
            yield Static(id="form-summary")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.submit_label} (ctrl+s)", variant="primary", id="form-submit", disabled=True)
                yield Button("Cancel (esc)", id="form-cancel")

    def on_mount(self) -> None:
        self.query_one("#form-summary", Static).display = False
        self._load()

    # --- loading ------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="settings-form-load", exit_on_error=False)
    def _load(self) -> None:
        try:
            state = self.load()
        except Exception as error:  # the run did not answer, or the checkpoint could not be read
            self.app.call_from_thread(self._load_failed, str(error) or type(error).__name__)
            return
        self.app.call_from_thread(self._loaded, state)

    def _load_failed(self, message: str) -> None:
        if self.is_attached:
            self.query_one("#form-where", Static).update(Text(message, style="bold red"))

    def _loaded(self, state: FormState) -> None:
        if not self.is_attached:
            return
        self.state = state
        self.settings = LiveSettings(state.config)
        lines = [state.where]
        if self.intro:
            lines.append(self.intro)
        self.query_one("#form-where", Static).update("\n".join(lines))
        self.query_one("#form-fields", VerticalScroll).mount_all(list(self._rows(state)))
        self.query_one("#form-summary", Static).display = True
        self.call_after_refresh(self._focus_first)
        self.call_after_refresh(self.validate)

    def _focus_first(self) -> None:
        for widget in self.query(Input):
            if widget.display and widget.parent is not None and widget.parent.display:
                widget.focus()
                return

    def _rows(self, state: FormState):  # noqa: ANN202
        config = state.config
        schedule = config.optimizer.schedule.name
        yield Label("Learning rate", classes="form-section")
        choices = [(f"keep the {schedule} schedule; change its values below", KEEP)]
        choices += [(label, name) for name, label in REPLACEMENTS if name != schedule]
        with_select = Horizontal(Label("schedule", classes="form-label"),
                                 Select(choices, value=KEEP, allow_blank=False, id="schedule-choice",
                                        classes="form-value"),
                                 classes="form-row", id="row-schedule")
        yield with_select
        yield Static(id="schedule-note", classes="form-note")
        yield from self._field_rows(LEARNING_RATE, config)
        yield Label("Optimizer", classes="form-section")
        yield from self._field_rows(OPTIMIZER, config)
        regularization = [Field(f"dropout.{group}", f"dropout {group}", "number",
                                "rate of the group's last dropout layer; 0 = off") for group in state.dropout]
        regularization.append(Field("train.label_smoothing", "label smoothing", "number", "0 = off"))
        yield Label("Regularization", classes="form-section")
        yield from self._field_rows(regularization, config)
        yield Label("Augmentation", classes="form-section")
        yield from self._field_rows(AUGMENTATION, config)
        yield Label("Length and checkpoints", classes="form-section")
        yield from self._field_rows(LENGTH, config)

    def _field_rows(self, fields, config):  # noqa: ANN001, ANN202
        plain = config.to_dict()
        for field in fields:
            if field.optimizers and config.optimizer.name not in field.optimizers:
                continue
            self.fields[field.key] = field
            if field.key.startswith("dropout."):
                value: Any = self.state.dropout[field.key.removeprefix("dropout.")]  # type: ignore[union-attr]
            else:
                value = plain
                for part in field.key.split("."):
                    value = value[part]
            ident = field_id(field.key)
            if field.kind == "bool":
                widget: Any = Checkbox("", bool(value), id=ident, classes="form-value")
                self.initial[field.key] = bool(value)
            else:
                widget = Input(initial_text(value), id=ident, classes="form-value")
                self.initial[field.key] = initial_text(value)
            yield Horizontal(Label(field.label, classes="form-label"), widget,
                             Static(self._hint(field), id=f"hint-{ident}", classes="form-hint"),
                             classes="form-row", id=f"row-{ident}")

    def _hint(self, field: Field) -> str:
        unit = self.state.config.optimizer.schedule.unit if self.state else "epoch"  # type: ignore[union-attr]
        return field.hint.replace("{unit}", unit)

    # --- reading and checking what is typed ---------------------------------------------------

    @property
    def schedule_choice(self) -> str:
        try:
            return str(self.query_one("#schedule-choice", Select).value)
        except Exception:
            return KEEP

    def _shown_schedule(self) -> str:
        choice = self.schedule_choice
        return self.state.config.optimizer.schedule.name if choice == KEEP else choice  # type: ignore[union-attr]

    def _visible(self, field: Field) -> bool:
        return not field.schedules or self._shown_schedule() in field.schedules

    def _raw(self, key: str) -> Any:
        widget = self.query_one(f"#{field_id(key)}")
        return widget.value if isinstance(widget, Checkbox) else widget.value.strip()

    def typed(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The values that differ from what the form started with, and the fields that do not parse."""
        updates: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for key, field in self.fields.items():
            if not self._visible(field):
                continue
            raw = self._raw(key)
            if raw == self.initial[key]:
                continue
            if field.kind == "bool":
                updates[key] = bool(raw)
            elif raw == "":
                problems[key] = f"'{key}': empty; expected {'an integer' if field.kind == 'integer' else 'a number'}"
            else:
                updates[key] = parse_field(field.kind, raw)
        if self.schedule_choice != KEEP:
            updates["optimizer.schedule.name"] = self.schedule_choice
        return updates, problems

    @on(Input.Changed, ".form-value")
    @on(Checkbox.Changed, ".form-value")
    def _value_changed(self) -> None:
        self.validate()

    @on(Select.Changed, "#schedule-choice")
    def _schedule_changed(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check each changed value, then the change as a whole; show what is wrong and what would change."""
        if self.settings is None or not self.is_attached:
            return
        state = self.state
        updates, problems = self.typed()
        for key, value in updates.items():
            if key in problems:
                continue
            try:
                self.settings.check({key: value}, SOURCE, state.dropout)  # type: ignore[union-attr]
            except ConfigError as error:
                problems[key] = _message(error)
        preview: dict[str, list[Any]] = {}
        general = ""
        if updates and not problems:
            try:
                _config, preview = self.settings.check(updates, SOURCE, state.dropout)  # type: ignore[union-attr]
            except ConfigError as error:
                if error.key in self.fields and error.key not in problems:
                    problems[error.key] = _message(error)
                else:
                    general = _message(error)
        self.problems = problems
        self.pending = updates if not problems and not general else {}
        self.preview = preview if self.pending else {}
        self._show(general)

    def _show(self, general: str) -> None:
        for key, field in self.fields.items():
            ident = field_id(key)
            row = self.query_one(f"#row-{ident}")
            row.display = self._visible(field)
            widget = self.query_one(f"#{ident}")
            widget.set_class(key in self.problems, "-invalid")
            hint = self.query_one(f"#hint-{ident}", Static)
            if key in self.problems:
                hint.update(Text(self.problems[key], style="bold red"))
            elif key in self.preview:
                old = self.preview[key][0]
                later = when_applied(key) != NEXT_STEP and self.send is not None
                hint.update(Text(f"was {value_text(old)}" + (f"; applies {when_applied(key)}" if later else ""),
                                 style="yellow"))
            else:
                hint.update(self._hint(field))
        self._show_schedule_note()
        summary = self.query_one("#form-summary", Static)
        submit = self.query_one("#form-submit", Button)
        if self.problems or general:
            named = "the values named in red are fixed" if self.problems else "this is fixed"
            lines = [general] if general else []
            lines.append(f"{self.submit_label} is off until {named}; nothing is sent.")
            summary.update(Text("\n".join(lines), style="bold red"))
            submit.disabled = True
        elif self.send is not None and not self.preview:
            summary.update(Text("Nothing changed yet: type new values above.", style="dim"))
            submit.disabled = True
        else:
            if self.preview:
                when = {key: when_applied(key) for key in self.preview} if self.send is not None else {}
                summary.update(Text(f"{len(self.preview)} to change: {change_text(self.preview, when)}",
                                    style="yellow"))
            else:
                summary.update(Text("No changes: the branch starts exactly as the checkpoint was saved.",
                                    style="dim"))
            submit.disabled = self.sending

    def _show_schedule_note(self) -> None:
        note = self.query_one("#schedule-note", Static)
        choice = self.schedule_choice
        state = self.state
        if choice == KEEP or state is None:
            note.display = False
            return
        note.display = True
        start = "this step" if self.send is not None else "the branch's first step"
        lr_typed = "optimizer.lr" in self.pending or "optimizer.lr" in self.problems
        if lr_typed:
            text = f"A {choice} schedule from {start}, from the base learning rate above."
        elif state.lr_now is not None:
            text = (f"A {choice} schedule from {start}, starting from the learning rate in force "
                    f"({state.lr_now:.4g}) unless you type a base learning rate.")
        else:
            text = f"A {choice} schedule from {start}, starting from the learning rate in force."
        note.update(Text(text, style="yellow"))

    # --- sending ------------------------------------------------------------------------------

    @on(Input.Submitted, ".form-value")
    @on(Button.Pressed, "#form-submit")
    def action_submit(self) -> None:
        if self.settings is None or self.sending:
            return
        self.validate()
        if self.problems or (self.send is not None and not self.preview) or \
                self.query_one("#form-submit", Button).disabled:
            self.notify("Nothing was sent: " + ("fix the values named in red first." if self.problems
                                                else "no value differs from the run's."), severity="warning")
            return
        if self.send is None:
            self.dismiss(dict(self.pending))
            return
        self.sending = True
        self.query_one("#form-submit", Button).disabled = True
        self.query_one("#form-summary", Static).update(
            Text(f"Sending: {change_text(self.preview)}. The run applies it at its next step.", style="yellow"))
        self._send(dict(self.pending))

    @work(thread=True, group="settings-form-send", exit_on_error=False)
    def _send(self, updates: dict[str, Any]) -> None:
        try:
            answer = self.send(updates)  # type: ignore[misc]
        except Exception as error:
            answer = {"ok": False, "error": str(error) or type(error).__name__}
        self.app.call_from_thread(self._answered, answer)

    def _answered(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.sending = False
        if answer.get("ok"):
            self.app.notify(answer_text(answer), title=self.form_title, timeout=8)
            if self.is_attached:
                self.dismiss(answer)
            return
        message = str(answer.get("error") or "the run refused the change")
        if not self.is_attached:  # the form was closed while the run was asked
            self.app.notify(message, title=f"{self.form_title}: not applied", severity="error", timeout=15)
            return
        key = answer.get("key")
        if isinstance(key, str) and key in self.fields:
            self.problems[key] = message
        self.query_one("#form-summary", Static).update(Text(f"Not applied: {message}", style="bold red"))
        self.query_one("#form-submit", Button).disabled = False

    @on(Button.Pressed, "#form-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


def can_change_settings(handle: Any) -> bool:
    """Whether a tab's run trains now, here or in another process, so that its settings can change."""
    return handle is not None and (handle.active or (handle.control is None and handle.status == "following"))


def open_for_run(app: Any, handle: Any) -> None:
    """The form for the run of a tab: one this app trains, or one another process trains (followed)."""
    if handle is None:
        app.notify("Open a run first (n, or h for history).", severity="warning")
        return
    followed = handle.control is None and handle.status == "following"
    if not can_change_settings(handle):
        app.notify(f"{handle.run_dir.name} is {handle.status}: settings change while a run trains. b branches it "
                   "from one of its checkpoints with new settings.", severity="warning", timeout=8)
        return
    control = None if followed else handle.control
    form = SettingsForm(f"Settings of {handle.run_dir.name}", partial(live_state, handle.run_dir, control),
                        send=partial(_send_set, handle.run_dir, control))
    app.push_screen(form)


def _send_set(run_dir: Any, control: Any, updates: dict[str, Any]) -> dict[str, Any]:
    return ask(run_dir, control, "set", {"updates": updates, "source": SOURCE})


def _message(error: ConfigError) -> str:
    return f"'{error.key}': {error.message}" if error.key else error.message


__all__ = ["SettingsForm", "open_for_run", "can_change_settings", "Field", "field_id", "parse_field", "REPLACEMENTS", "KEEP", "NEXT_EPOCH"]
