"""Small modal screens: confirmation, a line of text, help, and the offer to resume interrupted runs.

Every dialog names its keys on its buttons: y and n (or enter and escape) answer it.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no. `y` confirms, `n`/escape cancel; the buttons say so."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__(classes="dialog-screen")
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button(f"{self.no} (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class TextPromptScreen(ModalScreen[str | None]):
    """One line of text: enter keeps it, escape leaves it as it was."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, value: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.question, self.value = question, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="question")
            yield Input(self.value, id="prompt-text")
            with Horizontal(classes="buttons"):
                yield Button("Save (enter)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#prompt-text", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self.query_one("#prompt-text", Input).value if event.button.id == "save" else None)

    def action_cancel(self) -> None:
        self.dismiss(None)


HELP_TEXT = """\
[b]Runs[/b]  (every key is also in the command palette, ctrl+p)
  [b]n[/b]       new run: pick a recipe or compose its parts
  [b]p[/b]       pause or resume the focused run (the others keep going)
  [b]s[/b]       stop the focused run (asks first; writes a checkpoint)
  [b]c[/b]       write a checkpoint of the focused run now
  [b]r[/b]       resume the focused stopped or interrupted run, in its own tab
  [b]t[/b]       change the focused run's settings as it trains: LR, dropout, length, ...
  [b]b[/b]       branch the focused run from a checkpoint, with changes, in a new tab
  [b]1[/b]-[b]9[/b] [b]\\[[/b] [b]][/b] show run tab 1-9, the previous or the next tab
  [b]w[/b]       close the focused tab (not while its run trains)

[b]Charts[/b]
  [b]z[/b]       the run's charts on the whole screen: ←/→ move a cursor that reads values
  [b]e[/b]       smoothing of the training curves, off to 0.99 (the raw curve stays faint)
  [b]l[/b]       loss and learning rate on a log scale, or linear
  [b]x[/b]       x axis: steps, epochs or wall time (dotted lines mark epoch ends; orange
          rules topped with ▼, the steps where settings changed)
  [b]m[/b]       system graphs: GPU use, memory, temperature; the process's CPU, memory

[b]Elsewhere[/b]
  [b]h[/b]       history: open (enter), follow (f), resume (r), compare (a), sort (s),
          filter (/), branch (b), note (e), rename (R), delete (d; u restores,
          x empties the trash); a branch is listed under the run it left
  [b]v[/b]       compare runs: space hides a run, p pins it, d removes it, / filters,
          x steps or epochs (steps with a branch: its line leaves its parent's)
  [b]S[/b]       sweeps: start (n), follow the ranking, open a run (enter), compare (v)
  [b]i[/b]       inspect the focused run: confusion matrix, accuracy per class, mistakes
  [b]?[/b] [b]F1[/b]    this help      [b]q[/b] [b]F10[/b]  quit (asks while runs train; each writes a checkpoint)

If the connection drops (SIGHUP) or the app gets SIGTERM, every run writes a
checkpoint and the next start offers to resume them.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help"):
            with VerticalScroll(classes="help-text"):
                yield Static(HELP_TEXT)
            yield Button("Close (esc)", id="close")

    def on_button_pressed(self, _event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)


class ResumeOfferScreen(ModalScreen[bool]):
    """Runs that a dropped connection, a SIGTERM or a crash interrupted."""

    BINDINGS = [Binding("escape,n", "answer(False)", "Not now"), Binding("y", "answer(True)", "Resume")]

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names

    def compose(self) -> ComposeResult:
        listing = "\n".join(f"  • {name}" for name in self.names[:12])
        more = f"\n  … and {len(self.names) - 12} more" if len(self.names) > 12 else ""
        with Vertical(classes="dialog"):
            yield Static(f"These runs were interrupted and can continue from their last checkpoint:\n\n"
                         f"{listing}{more}", classes="question")
            with Horizontal(classes="buttons"):
                yield Button("Resume them (y)", variant="primary", id="yes")
                yield Button("Not now (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
