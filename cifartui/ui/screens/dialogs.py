"""Small modal screens: confirmation, help, and the offer to resume interrupted runs."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no. `y`/enter confirm, `n`/escape cancel."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__(classes="dialog-screen")
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button(self.yes, variant="error", id="yes")
                yield Button(self.no, id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


HELP_TEXT = """\
[b]Keys[/b] (also in the command palette, ctrl+p)

  [b]n[/b]   new run: pick a recipe or compose its parts
  [b]p[/b]   pause or resume the focused run (others keep going)
  [b]s[/b]   stop the focused run (asks first; writes a checkpoint)
  [b]c[/b]   write a checkpoint of the focused run now
  [b]h[/b]   history: browse, open, follow, resume and compare runs
  [b]v[/b]   compare runs (live and finished) on one chart
  [b]i[/b]   inspect the focused run: confusion matrix, accuracy per class, mistakes
  [b]w[/b]   close the focused tab (asks if the run is active)
  [b]?[/b]   this help
  [b]q[/b]   quit (asks when runs are active; each one writes a checkpoint)

Tabs switch with the mouse or left/right on the tab bar. If the connection drops \
(SIGHUP) or the app gets SIGTERM, every run writes a checkpoint and the next start \
offers to resume them.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help"):
            yield Static(HELP_TEXT)
            yield Button("Close", id="close")

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
                yield Button("Resume them", variant="primary", id="yes")
                yield Button("Not now", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
