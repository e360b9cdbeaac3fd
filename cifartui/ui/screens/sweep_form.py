"""The form that starts a sweep: a recipe, the settings to vary, seeds, runs at once.

It plans the sweep with the engine's `plan_sweep`, so a mistake is named as you type in
the very words `cifartui sweep` uses (`--grid: 'optimizer.lr': expected a number, got
'fast'`), and Start stays off until it is fixed. Start writes the sweep directory and
hands it to a `cifartui sweep --resume` process of its own, which goes on when the app
quits (see `cifartui.ui.background.start_driver`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from rich.markup import escape
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from cifartui import presets
from cifartui.config import ConfigError, RunConfig
from cifartui.engine.api import PlannedRun, RunDirError, SweepRequest, create_sweep, format_value, plan_sweep
from cifartui.ui.background import start_driver
from cifartui.ui.text import plural

# Lines for settings to vary; a grid of three keys is already a large sweep.
VARY_LINES = 3
VARY_EXAMPLES = ("optimizer.lr=0.01,0.05,0.1", "train.batch_size=64,128", "another KEY=V1,V2,... (optional)")
# (field, label, the option of `cifartui sweep` it stands for, what an empty field means)
NUMBERS = (("seeds", "seeds", "--seeds", "1"), ("parallel", "at once", "--parallel", "auto"),
           ("epochs", "epochs", "--epochs", "recipe"), ("halving", "halving", "--halving", "off"))
QUICK_RECIPE = "demo-synthetic"
SHOWN_SETTINGS = 6


def check_model(config: RunConfig) -> None:
    """Build a varied model once on the CPU, as `cifartui sweep` does before any run starts."""
    from cifartui.engine.api import DropoutSchedule, build_model

    model = build_model(config.model, config.dataset.num_classes)
    DropoutSchedule(config.dropout_schedule, model, steps_per_epoch=1)


@dataclass(frozen=True)
class SweepDraft:
    """A planned sweep the form can start: the recipe with its options, the plan, its runs and slots."""

    base: RunConfig
    plan: dict[str, Any]
    runs: list[PlannedRun]
    slots: list[str]
    parallel: int | None
    command: str  # the `cifartui sweep` command line that plans the same sweep


def _whole_number(option: str, text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError("", "", f"argument {option}: invalid int value: '{text}'") from None  # argparse's words


def draft_sweep(recipe: str, vary: Sequence[str], numbers: Mapping[str, str], *,
                with_models: bool = False) -> SweepDraft:
    """The sweep the form describes, checked as `cifartui sweep RECIPE --grid ... --seeds ...` checks it.

    A ConfigError (or a model that cannot be built, with `with_models`) names the
    mistake in the command line's words.
    """
    from cifartui.engine.api import plan_slots

    values = {name: _whole_number(option, numbers.get(name, "")) for name, _label, option, _empty in NUMBERS}
    base = presets.compose(presets.load(recipe), epochs=values["epochs"])
    explicit = {"train.epochs": "--epochs"} if values["epochs"] is not None else {}
    request = SweepRequest(grids=tuple(text.strip() for text in vary if text.strip()), seeds=values["seeds"],
                           halving=values["halving"], explicit=explicit)
    plan, runs = plan_sweep(base, request, check_model=check_model if with_models else None)
    slots = plan_slots(base.train.device, None, values["parallel"])
    command = ["cifartui sweep", Path(recipe).stem if Path(recipe).suffix == ".toml" else recipe]
    command += [f"--grid {shlex.quote(text)}" for text in request.grids]
    command += [f"{option} {values[name]}" for name, _label, option, _empty in NUMBERS if values[name] is not None]
    return SweepDraft(base, plan, runs, slots, values["parallel"], " ".join(command))


def describe_draft(draft: SweepDraft) -> str:
    """What Start would run, in a few lines of console markup."""
    plan = draft.plan
    settings: list[dict[str, Any]] = []
    for run in draft.runs:
        if run.label["settings"] not in settings:
            settings.append(run.label["settings"])
    seeds = plan["seeds"]
    seed_text = f"seeds {seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"
    places = sorted(set(draft.slots))
    lines = [f"[b]{plural(len(settings), 'setting')} × {len(seeds)} ({seed_text}) = {plural(len(draft.runs), 'run')}"
             f"[/], {len(draft.slots)} at once on {', '.join(places)}; each trains "
             f"{draft.base.train.epochs} epochs" + (f", halving from epoch {plan['halving']}" if plan['halving'] else "")]
    for setting in settings[:SHOWN_SETTINGS]:
        lines.append("  " + ("  ".join(f"{key}={format_value(value)}" for key, value in setting.items())
                             or "the recipe as it is"))
    if len(settings) > SHOWN_SETTINGS:
        lines.append(f"  … and {len(settings) - SHOWN_SETTINGS} more")
    lines.append(f"[dim]as on the command line: {escape(draft.command)}[/]")
    return "\n".join(lines)


class SweepFormScreen(ModalScreen[Path | None]):
    """Answers with the new sweep's directory (its process started), or None when cancelled."""

    CSS_PATH = "../sweeps.tcss"
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "start", "Start")]

    def __init__(self, runs_dir: Path, data_dir: Path | None = None) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.data_dir = data_dir
        self.recipes = presets.available()
        self.recipe: str | None = None
        self.draft: SweepDraft | None = None
        self.problem = ""

    def compose(self) -> ComposeResult:
        with Vertical(id="sweep-form"):
            yield Static("[b]New sweep[/]: a recipe over the values you list, each setting over seeds",
                         id="sweep-form-title")
            with Horizontal(id="sweep-form-body"):
                yield OptionList(*[Option(self._recipe_label(name), id=name) for name in self.recipes],
                                 id="sweep-recipes")
                with VerticalScroll(id="sweep-choices"):
                    yield Static(id="sweep-recipe-about")
                    yield Label("vary KEY=V1,V2,... (every combination is tried)")
                    for index in range(VARY_LINES):
                        yield Input(placeholder=VARY_EXAMPLES[index], id=f"vary-{index + 1}", classes="vary")
                    with Horizontal(id="sweep-numbers"):
                        for name, label, _option, empty in NUMBERS:
                            with Vertical(classes="sweep-number"):
                                yield Label(label)
                                yield Input(placeholder=empty, id=f"sweep-{name}", type="integer")
                    yield Static(id="sweep-preview")
            yield Static(id="sweep-problem")  # under the fields, always in sight however small the screen
            with Horizontal(classes="buttons"):
                yield Button("Start (ctrl+s)", variant="primary", id="sweep-start", disabled=True)
                yield Button("Cancel (esc)", id="sweep-cancel")

    def _recipe_label(self, name: str) -> Text:
        label = Text(name, no_wrap=True, overflow="ellipsis")
        if not self.recipes[name].builtin:
            label.append(" ★", style="bold yellow")  # the user's own preset, as the picker marks it
        return label

    def on_mount(self) -> None:
        recipes = self.query_one("#sweep-recipes", OptionList)
        names = list(self.recipes)
        if names:
            recipes.highlighted = names.index(QUICK_RECIPE) if QUICK_RECIPE in names else 0
        self.query_one("#vary-1", Input).focus()

    @on(OptionList.OptionHighlighted, "#sweep-recipes")
    def recipe_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self.recipe = event.option.id
        self.refresh_plan()

    @on(OptionList.OptionSelected, "#sweep-recipes")
    def recipe_chosen(self) -> None:
        self.query_one("#vary-1", Input).focus()

    @on(Input.Changed)
    def field_changed(self) -> None:
        self.refresh_plan()

    def _fields(self) -> tuple[list[str], dict[str, str]]:
        vary = [self.query_one(f"#vary-{index + 1}", Input).value for index in range(VARY_LINES)]
        numbers = {name: self.query_one(f"#sweep-{name}", Input).value for name, *_ in NUMBERS}
        return vary, numbers

    def refresh_plan(self, *, with_models: bool = False) -> None:
        """Plan the sweep from the fields; name the first mistake, or show what Start would run."""
        about = self.query_one("#sweep-recipe-about", Static)
        self.draft, self.problem = None, ""
        if self.recipe is None:
            self.problem = "pick a recipe first"
        else:
            preset = self.recipes[self.recipe]
            try:
                base = presets.load(str(preset.path))
                length = (f"{base.train.max_steps:,} iterations" if base.train.max_steps
                          else f"{base.train.epochs} epochs")
                about.update(f"[b]{self.recipe}[/]: {base.description or 'no description'}\n"
                             f"[dim]{base.dataset.name}, {base.model.name}, {base.optimizer.name} lr "
                             f"{base.optimizer.lr:g}, {length}, batch {base.train.batch_size}, "
                             f"device {base.train.device}[/]")
                vary, numbers = self._fields()
                self.draft = draft_sweep(str(preset.path), vary, numbers, with_models=with_models)
            except ConfigError as error:
                self.problem = str(error)
            except (ValueError, RuntimeError) as error:  # a varied model that cannot be built
                self.problem = f"--grid: {error}"
        vary, numbers = self._fields()
        # Before anything is typed the first mistake is only that nothing is varied yet: a hint, not an alarm.
        untouched = not any(text.strip() for text in [*vary, *numbers.values()])
        problem = self.query_one("#sweep-problem", Static)
        problem.update(Text(self.problem, style="dim" if untouched else "bold red") if self.problem else "")
        self.query_one("#sweep-preview", Static).update(describe_draft(self.draft) if self.draft else
                                                         Text("Start is off until the mistake named below is fixed.",
                                                              style="dim"))
        self.query_one("#sweep-start", Button).disabled = self.draft is None

    @on(Button.Pressed, "#sweep-start")
    def action_start(self) -> None:
        self.refresh_plan(with_models=True)
        draft = self.draft
        if draft is None:
            self.notify("Fix the mistake named in red first.", severity="warning")
            return
        try:
            queue = create_sweep(self.runs_dir, draft.plan, draft.runs, device=draft.base.train.device,
                                 parallel=draft.parallel, data_dir=self.data_dir)
        except (RunDirError, OSError) as error:
            self.notify(str(error), title="The sweep cannot start", severity="error", timeout=15)
            return
        start_driver(queue.directory)
        self.dismiss(queue.directory)

    @on(Button.Pressed, "#sweep-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


__all__ = ["SweepFormScreen", "SweepDraft", "draft_sweep", "describe_draft", "check_model"]
