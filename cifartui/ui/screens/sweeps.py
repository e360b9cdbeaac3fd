"""Sweeps: every sweep in the runs directory, live or finished, its queue and its ranking.

A sweep is driven by a `cifartui sweep` process: one started in another shell, or one
this app started from the form (n), which goes on when the app quits. The screen only
reads the sweep's files (see `cifartui.engine.orchestration.sweep.read_sweep`), once a second in a
worker thread, so a sweep is followed the same way whoever drives it; each read takes
only what the runs' metrics gained since the last one.

Enter opens a run of the queue in a tab (followed while it trains; on the ranking, the
best run of that setting), v compares all runs of the sweep coloured by a varied
setting, r resumes a sweep nobody drives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Header, Static

from cifartui.engine.api import (MemberView, ProgressTails, QueueError, RunDirError, SettingResult, SweepStatus,
                                 find_sweeps, format_value, is_locked, is_pbt_plan, last_log_line, lock_holder,
                                 read_members, read_sweep)
from cifartui.ui.background import driver_started_here, start_driver
from cifartui.ui.text import plural
from cifartui.ui.widgets.footer import KeyFooter

READ_EVERY_S = 1.0
STATE_STYLE = {"pending": "dim", "running": "bold cyan", "waiting": "yellow", "finished": "green",
               "failed": "bold red", "stopped": "magenta", "interrupted": "yellow", "starting": "cyan"}

def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def score_text(result: SettingResult) -> str:
    """Mean ± standard deviation over seeds, as `cifartui sweep` prints it."""
    if result.mean is None:
        return "-"
    if result.std is None:
        return f"{result.mean:.2f}%"
    return f"{result.mean:.2f} ± {result.std:.2f}%"


def rank_text(result: SettingResult) -> str:
    return "-" if result.rank is None else (f"★ {result.rank}" if result.best else str(result.rank))


def runs_text(states: Sequence[str]) -> str:
    """'4' when all finished, else '4 (1 running, 2 pending)'."""
    others: dict[str, int] = {}
    for state in states:
        if state != "finished":
            others[state] = others.get(state, 0) + 1
    return str(len(states)) + (" (" + ", ".join(f"{n} {state}" for state, n in others.items()) + ")" if others else "")


def settings_text(settings: dict[str, Any], varied: Sequence[str]) -> list[str]:
    return [format_value(settings[key]) if key in settings else "" for key in varied]


def fill_table(table: DataTable, columns: Sequence[str], rows: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """Show rows keyed by a string; when the columns and keys are the same as before, only cells change,
    so the cursor and the scroll position stay where the user left them."""
    shown_columns = tuple(str(column.label) for column in table.columns.values())
    same_shape = shown_columns == tuple(columns) and [key for key, _ in rows] == [k.value for k in table.rows]
    if same_shape:
        for key, cells in rows:
            for column, cell in zip(table.columns, cells):
                if table.get_cell(key, column) != cell:
                    table.update_cell(key, column, cell)
        return
    selected = None
    if table.row_count and 0 <= table.cursor_row < table.row_count:
        selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    table.clear(columns=shown_columns != tuple(columns))
    if shown_columns != tuple(columns):
        for column in columns:
            table.add_column(column, key=column)
    for key, cells in rows:
        table.add_row(*cells, key=key)
    keys = [key for key, _ in rows]
    if selected in keys:
        table.move_cursor(row=keys.index(selected), animate=False)


class SweepsScreen(Screen[None]):
    CSS_PATH = "../sweeps.tcss"
    BINDINGS = [
        Binding("escape", "back", "Back", show=False),
        Binding("n", "new_sweep", "New sweep"),
        Binding("enter,o", "open_run", "Open run", show=False),
        Binding("v", "compare", "Compare"),
        Binding("r", "resume_sweep", "Resume"),
        Binding("g", "reload", "Reload", show=False),
    ]

    def __init__(self, runs_dir: Path, data_dir: Path | None = None) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.data_dir = data_dir
        self.statuses: dict[Path, SweepStatus] = {}
        self.members: dict[Path, list[MemberView]] = {}  # of population-based training sweeps
        self.problems: dict[Path, str] = {}
        self.selected: Path | None = None
        self.wanted: Path | None = None  # a sweep to show as soon as a read has found it (one just started)
        self.tails = ProgressTails()
        self._reading = False
        self.reads = 0  # finished reads of the runs directory, for whoever waits for the screen to catch up

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="sweeps-title")
        yield DataTable(id="sweeps-list", cursor_type="row", zebra_stripes=True)
        yield Static(id="sweep-about")
        yield DataTable(id="sweep-ranked", cursor_type="row")
        yield DataTable(id="sweep-queue", cursor_type="row", zebra_stripes=True)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.sub_title = "Sweeps"
        self.query_one("#sweeps-list", DataTable).focus()
        self.action_reload()
        self.set_interval(READ_EVERY_S, self.action_reload)  # live sweeps: their runs report as epochs end

    # --- reading ------------------------------------------------------------------------------

    def action_reload(self) -> None:
        if not self._reading:
            self._reading = True
            self.read_sweeps(self.selected)

    @work(thread=True, group="sweeps-read", exit_on_error=False, description="reading the sweeps")
    def read_sweeps(self, selected: Path | None) -> None:
        """Read the sweeps that may have changed (off the screen's thread)."""
        statuses: dict[Path, SweepStatus] = {}
        problems: dict[Path, str] = {}
        try:
            for directory in find_sweeps(self.runs_dir):
                known = self.statuses.get(directory)
                # A sweep nobody drives changes no more: read again only the one on show, live ones,
                # one that was live at the last look (to see how it ended) and those started here.
                if (known is not None and directory != selected and not known.driven
                        and driver_started_here(directory) is None and not is_locked(directory)):
                    statuses[directory] = known
                    continue
                try:
                    statuses[directory] = status = read_sweep(directory, progress=self.tails)
                    if is_pbt_plan(status.plan):
                        self.members[directory] = read_members(directory, status.entries)
                except (QueueError, RunDirError, OSError) as error:
                    problems[directory] = str(error)
        finally:
            try:
                self.app.call_from_thread(self._show, statuses, problems)
            except RuntimeError:  # the app is closing
                pass

    def _show(self, statuses: dict[Path, SweepStatus], problems: dict[Path, str]) -> None:
        self._reading = False
        if not self.is_attached:
            return
        self.statuses, self.problems = statuses, problems
        self._show_list()
        self._show_selected()
        self.reads += 1

    def sweep_state(self, status: SweepStatus) -> tuple[str, str]:
        """The sweep's state in a word, and what to say about it: who drives it, or why nobody does."""
        process = driver_started_here(status.directory)
        alive = process is not None and process.poll() is None
        if status.driven:
            here = " (started here)" if alive else ""
            return "running", f"driven by {lock_holder(status.directory)}{here}"
        if alive:
            return "starting", "its sweep process is starting"
        state = status.state
        if process is not None and process.returncode not in (None, 0) and state in ("pending", "interrupted"):
            reason = last_log_line(status.directory) or f"exit code {process.returncode}"
            return state, f"its sweep process ended: {reason}; r starts it again"
        if state in ("pending", "interrupted"):
            return state, "nobody drives it: r resumes it (or `cifartui sweep --resume` in a shell)"
        return state, ""

    def _show_list(self) -> None:
        table = self.query_one("#sweeps-list", DataTable)
        rows = []
        for directory, status in self.statuses.items():
            state, _ = self.sweep_state(status)
            counts = status.counts()
            done = sum(counts.get(s, 0) for s in ("finished", "stopped", "failed"))
            best = next((r for r in status.ranked if r.best), None)
            shown = best.settings if best else None
            members = {m.key: m for m in self.members.get(directory, [])}
            if members and is_pbt_plan(status.plan):  # a population: the best member's settings now
                leader = max(status.runs, key=lambda run: -1.0 if run.best_val_top1 is None else run.best_val_top1)
                shown = members[leader.key].settings if leader.key in members else shown
            best_setting = "  ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in
                                     zip(status.varied, settings_text(shown, status.varied))) if shown else ""
            rows.append((str(directory), [directory.name, str(status.plan.get("preset", "")),
                                          Text(state, style=STATE_STYLE.get(state, "")),
                                          f"{done}/{len(status.runs)}", score_text(best) if best else "-",
                                          best_setting, ", ".join(status.varied) or "seeds only"]))
        for directory, problem in self.problems.items():
            rows.append((str(directory), [directory.name, "", Text("unreadable", style="bold red"), "", "", "",
                                          problem]))
        fill_table(table, ("sweep", "recipe", "state", "done", "best val top-1", "best setting", "varied"), rows)
        live = sum(1 for status in self.statuses.values() if self.sweep_state(status)[0] in ("running", "starting"))
        count = plural(len(rows), "sweep") + (f", {live} running" if live else "") if rows else \
            "no sweeps yet: n starts one (or `cifartui sweep` in a shell)"
        self.query_one("#sweeps-title", Static).update(f"[b]Sweeps[/] in {self.runs_dir}: {count}")
        keys = [key for key, _ in rows]
        if self.wanted is not None and str(self.wanted) in keys:
            self.selected, self.wanted = self.wanted, None
            table.move_cursor(row=keys.index(str(self.selected)), animate=False)
        elif self.selected is None or str(self.selected) not in keys:
            self.selected = Path(keys[0]) if keys else None
            if keys:
                table.move_cursor(row=0, animate=False)

    @on(DataTable.RowHighlighted, "#sweeps-list")
    def sweep_highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value
        if key is not None and Path(key) != self.selected:
            self.selected = Path(key)
            self._show_selected()
            self.action_reload()  # the newly shown sweep, read in full

    def selected_status(self) -> SweepStatus | None:
        return self.statuses.get(self.selected) if self.selected is not None else None

    def _show_selected(self) -> None:
        status = self.selected_status()
        about = self.query_one("#sweep-about", Static)
        ranked = self.query_one("#sweep-ranked", DataTable)
        queue = self.query_one("#sweep-queue", DataTable)
        if status is None:
            about.update(self.problems.get(self.selected, "") if self.selected is not None else "")
            fill_table(ranked, (), [])
            fill_table(queue, (), [])
            return
        state, note = self.sweep_state(status)
        plan = status.plan
        if is_pbt_plan(plan):
            self._show_population(status, state, note)
            return
        seeds = plan.get("seeds", [])
        halving = f"halving from epoch {plan['halving']}" if plan.get("halving") else "no early stopping"
        counts = ", ".join(f"{n} {state}" for state, n in status.counts().items())
        about.update(Text.assemble(
            (status.directory.name, "bold"), f": {plan.get('preset', '')}, {plural(len(status.runs), 'run')} "
            f"({counts}), seeds {', '.join(map(str, seeds))}, {halving}\n",
            (state, STATE_STYLE.get(state, "")), f"  {note}" if note else ""))
        varied = status.varied
        rows = []
        for result in status.ranked:
            key = json.dumps(result.settings, sort_keys=True)
            style = "bold green" if result.best else ""
            rows.append((key, [Text(rank_text(result), style=style),
                               *[Text(value, style=style or "cyan") for value in settings_text(result.settings, varied)],
                               runs_text([run.state for run in result.runs]), Text(score_text(result), style=style),
                               pct(result.test_mean)]))
        metric = "best val top-1" + (f" (mean ± std, {len(seeds)} seeds)" if len(seeds) > 1 else "")
        fill_table(ranked, ("rank", *varied, "runs", metric, "test top-1"), rows)
        rows = []
        for entry, run in zip(status.entries, status.runs):
            epochs = f"{run.epochs_done}/{run.epochs}" if run.state != "pending" else ""
            rows.append((entry.key, [entry.key, *settings_text(run.settings, varied), str(run.seed),
                                     entry.device or "", Text(run.state, style=STATE_STYLE.get(run.state, "")),
                                     epochs, pct(run.best_val_top1), pct(run.test_top1), run.message]))
        fill_table(queue, ("run", *varied, "seed", "device", "status", "epoch", "best val top-1", "test top-1",
                           "note"), rows)

    def _show_population(self, status: SweepStatus, state: str, note: str) -> None:
        """A PBT sweep: its members ranked, and each member's settings now and whom it copied."""
        spec = status.plan["pbt"]
        counts = ", ".join(f"{n} {state}" for state, n in status.counts().items())
        self.query_one("#sweep-about", Static).update(Text.assemble(
            (status.directory.name, "bold"), f": {status.plan.get('preset', '')}, population-based training of "
            f"{plural(len(status.runs), 'member')} ({counts}); every {spec['interval']} epochs the worst "
            f"{spec['quantile']:g} copy the best\n", (state, STATE_STYLE.get(state, "")), f"  {note}" if note else ""))
        varied = status.varied
        members = {m.key: m for m in self.members.get(status.directory, [])}
        order = sorted(status.runs, key=lambda run: -1.0 if run.best_val_top1 is None else -run.best_val_top1)
        fill_table(self.query_one("#sweep-ranked", DataTable), ("rank", "member", *varied, "best val top-1"),
                   [(run.key, [str(rank), run.key, *settings_text(members[run.key].settings if run.key in members
                                                                  else run.settings, varied), pct(run.best_val_top1)])
                    for rank, run in enumerate(order, start=1)])
        rows = []
        for entry, run in zip(status.entries, status.runs):
            member = members.get(entry.key)
            epochs = f"{run.epochs_done}/{run.epochs}" if run.state != "pending" else ""
            rows.append((entry.key, [entry.key, *settings_text(member.settings if member else run.settings, varied),
                                     Text(run.state, style=STATE_STYLE.get(run.state, "")), epochs,
                                     pct(run.best_val_top1), member.lineage_text() if member else "", run.message]))
        fill_table(self.query_one("#sweep-queue", DataTable),
                   ("member", *varied, "status", "epoch", "best val top-1", "lineage", "note"), rows)

    # --- actions ------------------------------------------------------------------------------

    def _run_dir_at_cursor(self) -> Path | None:
        """The run under the cursor: of the queue, or the best run of a setting in the ranking."""
        status = self.selected_status()
        if status is None:
            return None
        focused = self.focused
        if isinstance(focused, DataTable) and focused.id == "sweep-ranked" and is_pbt_plan(status.plan):
            if not 0 <= focused.cursor_row < focused.row_count:  # members ranked: a row's key is its member
                return None
            key = focused.coordinate_to_cell_key((focused.cursor_row, 0)).row_key.value
            entry = next((e for e in status.entries if e.key == key), None)
            return entry.run_dir if entry is not None else None
        if isinstance(focused, DataTable) and focused.id == "sweep-ranked":
            if not 0 <= focused.cursor_row < len(status.ranked):
                return None
            result = status.ranked[focused.cursor_row]
            candidates = [run for run in result.runs if run.run_dir is not None]
            if not candidates:
                self.notify("No run of this setting has started yet.", severity="warning")
                return None
            best = max(candidates, key=lambda run: -1.0 if run.best_val_top1 is None else run.best_val_top1)
            return Path(best.run_dir)
        queue = self.query_one("#sweep-queue", DataTable)
        if not queue.row_count or not 0 <= queue.cursor_row < len(status.entries):
            return None
        entry = status.entries[queue.cursor_row]
        if entry.run_dir is None:
            self.notify(f"Run {entry.key} has not started yet ({entry.state}).", severity="warning")
            return None
        return entry.run_dir

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "sweeps-list":
            self.query_one("#sweep-queue", DataTable).focus()  # enter on a sweep: on to its runs
        else:
            self.action_open_run()

    def action_open_run(self) -> None:
        focused = self.focused
        if isinstance(focused, DataTable) and focused.id == "sweeps-list":
            self.query_one("#sweep-queue", DataTable).focus()
            return
        run_dir = self._run_dir_at_cursor()
        if run_dir is not None:
            self.app.registry.open_run_view(run_dir, follow=True)  # a finished run settles as viewed at once

    def action_compare(self) -> None:
        from cifartui.ui.screens.compare import CompareScreen

        status = self.selected_status()
        if status is None:
            self.notify("No sweep to compare yet.", severity="warning")
            return
        run_dirs = [entry.run_dir for entry in status.entries if entry.run_dir is not None
                    and (entry.run_dir / "config.json").exists()]
        if not run_dirs:
            self.notify("None of this sweep's runs has started yet.", severity="warning")
            return
        self.app.push_screen(CompareScreen(run_dirs, colour_keys=status.varied))

    def action_resume_sweep(self) -> None:
        status = self.selected_status()
        if status is None:
            return
        state, _ = self.sweep_state(status)
        if state in ("running", "starting"):
            self.notify(f"{status.directory.name} is running already.", severity="warning")
        elif state in ("finished", "failed"):
            self.notify(f"{status.directory.name} has no run left to train (stopped and failed runs stay as they "
                        "are; `cifartui resume RUN_DIR` trains one on).", severity="warning")
        else:
            start_driver(status.directory)
            self.notify(f"{status.directory.name}: resuming in a sweep process of its own.")
            self.action_reload()

    def action_new_sweep(self) -> None:
        from cifartui.ui.screens.sweep_form import SweepFormScreen

        def started(directory: Path | None) -> None:
            if directory is not None:
                self.wanted = directory
                self.notify(f"{directory.name}: started in a sweep process of its own; it goes on if the app quits.")
                self.action_reload()
        self.app.push_screen(SweepFormScreen(self.runs_dir, self.data_dir), started)

    def action_back(self) -> None:
        self.app.pop_screen()


__all__ = ["SweepsScreen", "score_text", "rank_text", "fill_table"]
