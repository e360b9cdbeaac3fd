"""The app's keys and the command palette's commands: one list of each, in the words the footer and help use.

A key that acts on the focused run's tab (RUN_SCREEN_ACTIONS) works where the tabs are;
the palette offers every action a key does, with the key in brackets.
"""

from __future__ import annotations

from typing import Any, Iterable

from textual.app import SystemCommand
from textual.binding import Binding

# The footer shows the keys a new user needs first, in words that fit 80 columns;
# every key is in the help (? or F1) and the command palette (ctrl+p).
BINDINGS = [
    Binding("n", "new_run", "New"),
    Binding("p", "toggle_pause", "Pause"),
    Binding("s", "stop_run", "Stop"),
    Binding("c", "checkpoint", "Checkpoint", show=False),
    # In the footer while the focused run trains; elsewhere the same key says why it cannot.
    Binding("t", "tune", "Tune"),
    Binding("t", "tune(True)", "Tune", show=False),
    Binding("b", "branch", "Branch", show=False),
    Binding("r", "resume_run", "Resume", show=False),
    Binding("h", "history", "History"),
    Binding("v", "compare", "Compare"),
    Binding("S", "sweeps", "Sweeps"),
    Binding("i", "inspect", "Inspect"),
    Binding("z", "chart_view", "Charts"),
    Binding("w", "close_tab", "Close tab", show=False),
    Binding("e", "smoothing", "Smoothing", show=False),
    Binding("l", "log_scale", "Log scale", show=False),
    Binding("x", "x_axis", "X axis", show=False),
    Binding("m", "system_graphs", "System graphs", show=False),
    Binding("right_square_bracket", "next_tab", "Next tab", show=False),
    Binding("left_square_bracket", "previous_tab", "Previous tab", show=False),
    *[Binding(str(n), f"show_tab({n})", f"Tab {n}", show=False) for n in range(1, 10)],
    Binding("question_mark,f1", "help", "Help", key_display="?"),
    Binding("q,f10", "quit", "Quit", key_display="q"),
]

# Keys that act on the focused run's tab work where the tabs are; on History,
# Compare or Inspect they would act on a run out of sight, and their footers stay short.
RUN_SCREEN_ACTIONS = frozenset({
    "new_run", "toggle_pause", "stop_run", "checkpoint", "resume_run", "history", "inspect", "chart_view",
    "close_tab", "smoothing", "log_scale", "x_axis", "system_graphs", "next_tab", "previous_tab", "show_tab",
    "sweeps", "tune", "branch"})


def app_commands(app: Any) -> Iterable[SystemCommand]:
    """The palette's commands for the app's own actions (Textual's, but its Quit, come first)."""
    yield SystemCommand("New run", "Pick a recipe or compose its parts, then launch (n)", app.action_new_run)
    yield SystemCommand("Pause or resume run", "Pause the focused run, or resume it (p)", app.action_toggle_pause)
    yield SystemCommand("Stop run", "Stop the focused run after writing a checkpoint (s)", app.action_stop_run)
    yield SystemCommand("Checkpoint now", "Write the focused run's checkpoint now (c)", app.action_checkpoint)
    yield SystemCommand("Change settings", "Learning rate, schedule, dropout, augmentation, length of the "
                        "focused training run (t)", app.action_tune)
    yield SystemCommand("Branch from a checkpoint", "Start a new run from one of the focused run's checkpoints, "
                        "with changes (b)", app.action_branch)
    yield SystemCommand("Resume stopped run", "Continue the focused stopped or interrupted run (r)",
                        app.action_resume_run)
    yield SystemCommand("Next tab", "Show the next run's tab (])", app.action_next_tab)
    yield SystemCommand("Previous tab", "Show the previous run's tab ([)", app.action_previous_tab)
    yield SystemCommand("History", "Browse, open, follow, resume and compare runs (h)", app.action_history)
    yield SystemCommand("Compare runs", "One metric across runs, ranked (v)", app.action_compare)
    yield SystemCommand("Sweeps", "Start a sweep, follow its queue and ranking, open its runs (S)",
                        app.action_sweeps)
    yield SystemCommand("Inspect run", "Confusion matrix, accuracy per class, mistakes, model (i)",
                        app.action_inspect)
    yield SystemCommand("Full-screen charts", "The focused run's charts with a cursor and values (z)",
                        app.action_chart_view)
    yield SystemCommand("Smoothing", "Step the moving average of the training curves (e)", app.action_smoothing)
    yield SystemCommand("Log scale", "Loss and learning rate on a log scale, or back (l)", app.action_log_scale)
    yield SystemCommand("X axis", "Steps, epochs or wall time along the charts (x)", app.action_x_axis)
    yield SystemCommand("System graphs", "GPU and process figures over time, or one line (m)",
                        app.action_system_graphs)
    yield SystemCommand("Close tab", "Close the focused tab of a run that is not training (w)",
                        app.action_close_tab)
    yield SystemCommand("Help", "Keys and what they do (? or F1)", app.action_help)
    yield SystemCommand("Quit", "Leave the app; asks first when runs train, and each writes a checkpoint (q)",
                        app.action_quit)


__all__ = ["BINDINGS", "RUN_SCREEN_ACTIONS", "app_commands"]
