"""Rewind and branch: pick one of a run's checkpoints, say what changes, train the branch in a new tab.

A branch is a new run directory that starts from the checkpoint's weights, optimizer,
schedule and data position, with changes of its own, and records the run and step it
left (`RunStarted.parent`, `parent_step`). History shows it under its parent; Compare
draws both on the same axes.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, OptionList, Static
from textual.widgets.option_list import Option

from cifartui.engine.api import RunDirError, new_run_dir, read_config, read_metrics
from cifartui.ui.screens.settings_form import SettingsForm
from cifartui.ui.steering import CheckpointInfo, checkpoint_state, checkpoints_of

BRANCH_MARK = "⑂"
BRANCH_INTRO = ("The branch is a new run: it starts from this checkpoint with the changes below, and "
                "the run it leaves goes on untouched.")


class CheckpointPicker(ModalScreen[Path | None]):
    """One of a run's checkpoints: last, best, or one kept every N epochs."""

    CSS_PATH = "../steering.tcss"
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, run_dir: Path, checkpoints: list[CheckpointInfo]) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.checkpoints = checkpoints

    def compose(self) -> ComposeResult:
        width = max(len(c.name) for c in self.checkpoints) + 2
        options = []
        for checkpoint in self.checkpoints:
            label = Text(checkpoint.name.ljust(width), style="bold")
            label.append(checkpoint.describe())
            options.append(Option(label, id=checkpoint.name))
        kept = any(c.name.startswith("epoch-") for c in self.checkpoints)
        with Vertical(id="checkpoint-picker"):
            yield Static(f"[b]Branch {self.run_dir.name}[/] from one of its checkpoints", id="picker-title")
            yield OptionList(*options, id="checkpoint-list")
            yield Static("" if kept else "[dim]Only the last and best are kept; train.keep_every keeps one every N "
                         "epochs to rewind to.[/]", id="checkpoint-note")
            with Horizontal(classes="buttons"):
                yield Button("Choose (enter)", variant="primary", id="checkpoint-choose")
                yield Button("Cancel (esc)", id="checkpoint-cancel")

    def on_mount(self) -> None:
        self.query_one("#checkpoint-list", OptionList).focus()

    @on(OptionList.OptionSelected, "#checkpoint-list")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self._choose(event.option.id)

    @on(Button.Pressed, "#checkpoint-choose")
    def _choose_highlighted(self) -> None:
        options = self.query_one("#checkpoint-list", OptionList)
        if options.highlighted is not None:
            self._choose(options.get_option_at_index(options.highlighted).id)

    def _choose(self, name: str | None) -> None:
        for checkpoint in self.checkpoints:
            if checkpoint.name == name:
                self.dismiss(checkpoint.path)
                return

    @on(Button.Pressed, "#checkpoint-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


def start_branch(app: Any, run_dir: Path) -> None:
    """Ask which checkpoint and what changes, then train the branch in a new tab of `app`."""
    try:
        read_config(run_dir)
        events = read_metrics(run_dir)
    except RunDirError as error:
        app.notify(str(error), severity="error")
        return
    checkpoints = checkpoints_of(run_dir, events)
    if not checkpoints:
        app.notify(f"{run_dir.name} has no checkpoint yet: one is written at the end of each epoch "
                   "(train.keep_every also keeps one every N epochs).", severity="warning")
        return

    def chosen(checkpoint: Path | None) -> None:
        if checkpoint is None:
            return
        form = SettingsForm(f"Branch of {run_dir.name} from {checkpoint.stem}", partial(checkpoint_state, checkpoint),
                            submit_label="Start branch", intro=BRANCH_INTRO)
        app.push_screen(form, partial(_start, app, run_dir, checkpoint))
    app.push_screen(CheckpointPicker(run_dir, checkpoints), chosen)


def _start(app: Any, parent: Path, checkpoint: Path, changes: dict[str, Any] | None) -> None:
    if changes is not None:
        launch_branch(app, parent, checkpoint, changes)


def launch_branch(app: Any, parent: Path, checkpoint: Path, changes: dict[str, Any]) -> Any:
    """A new tab training the branch; its settings are the checkpoint's, plus `changes`."""
    from cifartui.engine.api import Branch

    try:
        config = read_config(parent)  # the trainer takes the checkpoint's own settings over these
        run_dir = new_run_dir(app.registry.runs_dir, f"{config.name}-branch")
    except RunDirError as error:
        app.notify(str(error), title="The branch cannot start", severity="error", timeout=15)
        return None
    while len(app.screen_stack) > 1:  # back to the tabs, where the branch trains
        app.pop_screen()
    branch = Branch(parent=parent, checkpoint=checkpoint, changes=dict(changes))
    handle = app.registry.launch(config, run_dir=run_dir, branch=branch)
    if handle is not None and handle.config is not None:
        # The tab's label is the recipe's name, the parent's too: the mark tells them apart.
        handle.config = dataclasses.replace(handle.config, name=f"{BRANCH_MARK} {handle.config.name}")
    return handle


__all__ = ["CheckpointPicker", "start_branch", "launch_branch", "BRANCH_INTRO"]
