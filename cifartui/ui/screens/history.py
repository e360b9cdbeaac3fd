"""Past and present runs in the runs directory: open, follow, resume, branch, compare, sort, filter, tidy up.

A branch is listed under the run it left, with the step it left at; every run shows
its effective settings (its configuration plus the changes made while it trained), and
the line under the table says what changed in the selected run and when.

Deleting moves a run to `RUNS_DIR/.trash/` (u brings the last one back, x empties the
trash); a note is kept in the run's `note.txt`; renaming renames its directory. A run
that a process is training is neither deleted nor renamed.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Header, Input, Static

from cifartui.engine.api import (RunDirError, effective_config, is_reproduction_dir, is_sweep_dir, read_config,
                                 read_metrics, read_status, reproduction_of, sweep_of, sweep_run_dirs)
from cifartui.ui.screens.dialogs import ConfirmScreen, TextPromptScreen
from cifartui.ui.steering import change_text
from cifartui.ui.text import plural
from cifartui.ui.widgets.footer import KeyFooter

TRASH = ".trash"
NOTE_FILE = "note.txt"
# Sort orders the s key steps through: (column, newest or biggest first).
SORTS = (("started", True), ("best val", True), ("test", True), ("duration", True), ("run", False),
         ("status", False), ("sweep", False))
COLUMNS = ("run", "status", "model", "optimizer", "augmentation", "epochs", "best val", "test", "started",
           "duration", "note")
LIVE = ("running", "paused")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def augment_text(augment: dict[str, Any]) -> str:
    parts = [p for p in augment.get("preprocess", []) if p != "standardize"]
    if augment.get("crop_padding"):
        parts.append(f"crop{augment['crop_padding']}")
    for key, word in (("flip", "flip"), ("translate", "translate"), ("rotation", "rotate"), ("shift", "shift"),
                      ("cutout", "cutout")):
        if augment.get(key):
            parts.append(word)
    return "+".join(parts) or "none"


def started_at(path: Path) -> datetime:
    """When the run began: the UTC stamp its directory is named with, else its config's time."""
    try:
        return datetime.strptime(path.name[:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        try:
            return datetime.fromtimestamp((path / "config.json").stat().st_mtime, timezone.utc)
        except OSError:
            return datetime.fromtimestamp(0, timezone.utc)


@dataclass
class HistoryRow:
    path: Path
    status: str
    model: str
    optimizer: str
    augmentation: str
    epochs_done: int
    epochs_total: int
    best_val: float | None
    test: float | None
    started: datetime
    duration: float | None
    note: str
    # Lineage: the run a branch left and the step it left at; and the changes of settings
    # made while it trained, as SettingsChanged recorded them (step, source, changes).
    parent: Path | None = None
    parent_step: int = -1
    changes: list[tuple[int, str, dict]] = field(default_factory=list)
    sweep: str = ""  # "<sweep or reproduction directory> #<run's place in its queue>" for a run of one

    def cells(self, depth: int = 0, parent_listed: bool = True) -> list[Any]:
        styles = {"running": "green", "paused": "yellow", "failed": "red", "interrupted": "magenta",
                  "finished": "cyan", "broken": "red"}
        started = self.started.astimezone().strftime("%Y-%m-%d %H:%M")
        name: Any = self.path.name
        if self.parent is not None:
            name = Text("  " * max(depth - 1, 0) + ("└ " if depth and parent_listed else "⑂ "))
            name.append(self.path.name)
            left = f" @ step {self.parent_step:,}" if parent_listed else \
                f" (from {self.parent.name} @ step {self.parent_step:,})"
            name.append(left, style="dim")
        if self.changes:  # steered while it trained: the line under the table says how
            name = Text(name) if isinstance(name, str) else name
            name.append(" ✎", style="dark_orange")
        return [name, Text(self.status, style=styles.get(self.status, "")), self.model, self.optimizer,
                self.augmentation, f"{self.epochs_done}/{self.epochs_total}", _pct(self.best_val), _pct(self.test),
                started, _duration(self.duration), self.note]

    def sort_key(self, column: str) -> Any:
        return {"started": self.started.timestamp(), "best val": self.best_val if self.best_val is not None else -1,
                "test": self.test if self.test is not None else -1, "duration": self.duration or 0,
                "run": self.path.name, "status": self.status, "sweep": self.sweep}[column]


def read_row(path: Path) -> HistoryRow:
    config = read_config(path)
    status = str(read_status(path).get("status", "unknown"))
    epochs_done, best, test, first, last = 0, None, None, None, None
    parent, parent_step, changes = None, -1, []
    events = read_metrics(path)
    for event in events:
        when = event.get("time")
        if isinstance(when, (int, float)):
            first = when if first is None else first
            last = when
        if event["event"] == "EpochEnded":
            epochs_done = max(epochs_done, int(event.get("epoch", 0)) + 1)
            value = event.get("val_top1")
            if value is not None and (best is None or value > best):
                best = value
        elif event["event"] == "RunFinished":
            test = event.get("test_top1")
        elif event["event"] == "RunStarted" and event.get("parent") and parent is None:
            parent, parent_step = Path(str(event["parent"])), int(event.get("parent_step", -1))
        elif event["event"] == "SettingsChanged" and isinstance(event.get("changes"), dict):
            changes.append((int(event.get("step", 0)), str(event.get("source", "")), event["changes"]))
    try:
        note = (path / NOTE_FILE).read_text(encoding="utf-8").strip().splitlines()[0]
    except (OSError, IndexError):
        note = ""
    config = effective_config(config, events, str(path))  # as the run trains (or ended) after its changes
    plain = config.to_dict()
    return HistoryRow(path, status, config.model.name, f"{config.optimizer.name} {config.optimizer.lr:g}",
                      augment_text(plain.get("augment", {})), epochs_done, config.train.epochs, best, test,
                      started_at(path), (last - first) if first is not None and last is not None else None, note,
                      parent, parent_step, changes)


def lineage_order(rows: list[HistoryRow]) -> list[tuple[HistoryRow, int, bool]]:
    """Rows with each branch right under the run it left, in the given order otherwise.

    Each item is (row, depth, parent listed): depth 0 for a run that is no listed run's
    branch; a branch whose parent is not listed stays at the top level and names it.
    """
    by_path = {_key(row.path): row for row in rows}
    children: dict[Path, list[HistoryRow]] = {}
    roots = []
    for row in rows:
        parent = _key(row.parent) if row.parent is not None else None
        if parent is not None and parent in by_path and parent != _key(row.path):
            children.setdefault(parent, []).append(row)
        else:
            roots.append(row)
    ordered: list[tuple[HistoryRow, int, bool]] = []
    seen: set[Path] = set()

    def visit(row: HistoryRow, depth: int) -> None:
        key = _key(row.path)
        if key in seen:
            return
        seen.add(key)
        ordered.append((row, depth, depth > 0 or row.parent is None))
        for child in children.get(key, []):
            visit(child, depth + 1)
    for row in roots:
        visit(row, 0)
    for row in rows:  # a cycle of parents (hand-edited files): still listed
        visit(row, 0)
    return ordered


def _key(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path


def describe_lineage(row: HistoryRow) -> Text:
    """The selected run's lineage and the changes made while it trained, for the line under the table."""
    line = Text()
    if row.parent is not None:
        line.append(f"⑂ branch of {row.parent.name} from its step {row.parent_step:,}", style="bold")
    if row.changes:
        if line:
            line.append("\n")
        line.append(f"{plural(len(row.changes), 'change')} of settings: ", style="bold dark_orange")
        line.append("; ".join(f"step {step:,} by {source}: {change_text(changes)}"
                              for step, source, changes in row.changes))
    return line


def broken_row(path: Path) -> HistoryRow:
    """A run whose config.json cannot be read: its name and when it started, nothing more."""
    return HistoryRow(path, "broken", "", "", "", 0, 0, None, None, started_at(path), None, "")


class HistoryScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "Back", show=False),  # the footer's room goes to the keys only this screen has
        Binding("enter,o", "open", "Open", show=False),
        Binding("f", "follow", "Follow"),
        Binding("r", "resume", "Resume"),
        Binding("b", "branch", "Branch", show=False),
        Binding("a", "add_to_comparison", "Add"),
        Binding("i", "inspect", "Inspect", show=False),
        Binding("v", "app.compare", "Compare"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("s", "sort", "Sort"),
        Binding("e", "note", "Note", show=False),
        Binding("R", "rename", "Rename", show=False),
        Binding("d,delete", "delete", "Delete"),
        Binding("u", "restore", "Undelete", show=False),
        Binding("x", "empty_trash", "Empty trash", show=False),
        Binding("g", "reload", "Reload", show=False),
    ]

    def __init__(self, runs_dir: Path) -> None:
        super().__init__()
        self.runs_dir = runs_dir
        self.paths: dict[str, Path] = {}
        self.rows: list[HistoryRow] = []
        self.problems: list[str] = []
        self.sort_index = 0
        self.filter_text = ""
        self.trashed: list[Path] = []  # this session's deletions, newest last, for u

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="history-title")
        yield Input(placeholder="filter: part of a name, model, optimizer, note…; enter keeps it, escape clears",
                    id="history-filter")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="history-detail")
        yield Static(id="history-problems")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.sub_title = "History"
        self.query_one("#history-filter", Input).display = False
        self.query_one("#history-detail", Static).display = False
        table = self.query_one("#runs-table", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        table.add_column("", key="compared")
        self.action_reload()
        table.focus()

    # --- reading and showing ------------------------------------------------------------------

    def _read(self) -> None:
        rows, problems = [], []
        root = Path(self.runs_dir)
        if root.is_dir():
            for child in root.iterdir():
                if child.is_dir() and child.name != TRASH and (child / "config.json").exists():
                    try:
                        rows.append(read_row(child))
                    except RunDirError as error:
                        # Listed all the same, so that it can be seen, deleted or repaired.
                        problems.append(str(error))
                        rows.append(broken_row(child))
                elif child.name != TRASH and (is_sweep_dir(child) or is_reproduction_dir(child)):
                    # The runs of a sweep or a reproduction live inside it, in its queue's folders.
                    for key, run_dir in sweep_run_dirs(child):
                        try:
                            rows.append(dataclasses.replace(read_row(run_dir), sweep=f"{child.name} #{key}"))
                        except RunDirError as error:
                            problems.append(str(error))
        self.rows, self.problems = rows, problems

    def trash_count(self) -> int:
        trash = Path(self.runs_dir) / TRASH
        return sum(1 for p in trash.iterdir() if p.is_dir()) if trash.is_dir() else 0

    def action_reload(self) -> None:
        self._read()
        self._show()

    def _show(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        selected = self._selected()
        column, descending = SORTS[self.sort_index]
        rows = sorted(self.rows, key=lambda row: row.sort_key(column), reverse=descending)
        needle = self.filter_text.lower()
        if needle:
            rows = [row for row in rows if needle in row.sweep.lower() or any(needle in str(cell).lower()
                                                                              for cell in row.cells())]
        with_sweeps = any(row.sweep for row in self.rows)
        table.clear(columns=with_sweeps != ("sweep" in table.columns))
        if not table.columns:  # the sweep column is there only when some run belongs to a sweep
            for column in COLUMNS[:1] + (("sweep",) if with_sweeps else ()) + COLUMNS[1:]:
                table.add_column(column, key=column)
            table.add_column("", key="compared")
        self.paths.clear()
        compared = {str(p) for p in getattr(self.app, "comparison", [])}
        for row, depth, parent_listed in lineage_order(rows):
            key = str(row.path)
            self.paths[key] = row.path
            cells = row.cells(depth, parent_listed)
            if with_sweeps:
                cells.insert(1, row.sweep)
            table.add_row(*cells, "compared" if key in compared else "", key=key)
        if selected is not None and str(selected) in self.paths:
            table.move_cursor(row=table.get_row_index(str(selected)), animate=False)
        total = len(self.rows)
        if not total:
            count = "no runs yet: n starts one" if not self.problems else "no readable runs"
        elif needle:
            count = f"{len(rows)} of {plural(total, 'run')} match '{self.filter_text}'"
        else:
            count = plural(total, "run")
        trash = self.trash_count()
        trash_note = f"  ·  trash: {plural(trash, 'run')} (x empties, u restores)" if trash else ""
        arrow = "↓" if descending else "↑"
        self.query_one("#history-title", Static).update(
            f"[b]Runs[/] in {self.runs_dir}: {count}  ·  sorted by {column} {arrow} (s){trash_note}")
        self.query_one("#history-problems", Static).update(
            "\n".join(f"[yellow]unreadable:[/] {p}" for p in self.problems))

    def _selected(self) -> Path | None:
        table = self.query_one("#runs-table", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.paths.get(key)

    # --- actions on the selected run ----------------------------------------------------------

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_open()  # enter or a click on a row

    @on(DataTable.RowHighlighted, "#runs-table")
    def _show_detail(self) -> None:
        selected = self._selected()
        row = next((r for r in self.rows if r.path == selected), None)
        detail = self.query_one("#history-detail", Static)
        text = describe_lineage(row) if row is not None else Text()
        detail.update(text)
        detail.display = bool(text)

    @on(DataTable.HeaderSelected, "#runs-table")
    def sort_by_header(self, event: DataTable.HeaderSelected) -> None:
        names = [name for name, _ in SORTS]
        key = str(event.column_key.value)
        if key in names:
            self.sort_index = names.index(key)
            self._show()

    def action_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        self._show()

    def action_open(self) -> None:
        if (path := self._selected()) is not None:
            self.app.registry.open_run_view(path, follow=False)

    def action_follow(self) -> None:
        if (path := self._selected()) is not None:
            self.app.registry.open_run_view(path, follow=True)

    def action_inspect(self) -> None:
        if (path := self._selected()) is not None:
            self.app.inspect_run(path)

    def action_resume(self) -> None:
        if (path := self._selected()) is not None:
            self.app.registry.resume_run(path)

    def action_branch(self) -> None:
        if (path := self._selected()) is not None:
            from cifartui.ui.screens.branch import start_branch

            start_branch(self.app, path)

    def action_add_to_comparison(self) -> None:
        if (path := self._selected()) is not None:
            self.app.toggle_comparison(path)
            self._show()

    def action_filter(self) -> None:
        field = self.query_one("#history-filter", Input)
        field.display = True
        field.focus()

    @on(Input.Changed, "#history-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self._show()

    @on(Input.Submitted, "#history-filter")
    def filter_kept(self) -> None:
        self.query_one("#runs-table", DataTable).focus()

    def action_back(self) -> None:
        field = self.query_one("#history-filter", Input)
        if field.has_focus:
            field.value = ""
            field.display = False
            self.query_one("#runs-table", DataTable).focus()
            return
        self.app.pop_screen()

    def _busy(self, path: Path) -> str | None:
        """Why a run must not be moved now, if it must not."""
        if (sweep := sweep_of(path)) is not None:
            return f"{path.name} belongs to the sweep {sweep.name}, whose queue names it; it stays where it is."
        if (reproduction := reproduction_of(path)) is not None:
            return (f"{path.name} belongs to the reproduction {reproduction.name}, whose report reads it; "
                    "it stays where it is.")
        status = read_status(path)
        if status.get("status") in LIVE:
            return f"{path.name} is being trained by process {status.get('pid')}; stop it first."
        for handle in getattr(self.app, "handles", {}).values():
            if handle.run_dir == path and (handle.active or handle.status == "following"):
                return f"{path.name} is open and live in a tab; stop it or close the tab first."
        return None

    def action_note(self) -> None:
        path = self._selected()
        if path is None:
            return
        try:
            current = (path / NOTE_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            current = ""

        def save(text: str | None) -> None:
            if text is None:
                return
            try:
                if text.strip():
                    (path / NOTE_FILE).write_text(text.strip() + "\n", encoding="utf-8")
                else:
                    (path / NOTE_FILE).unlink(missing_ok=True)
            except OSError as error:
                self.notify(f"{path / NOTE_FILE}: {error.strerror or error}", severity="error")
            self.action_reload()
        self.app.push_screen(TextPromptScreen(f"Note for {path.name}:", current), save)

    def action_rename(self) -> None:
        path = self._selected()
        if path is None:
            return
        if (reason := self._busy(path)) is not None:
            self.notify(reason, severity="warning")
            return

        def rename(name: str | None) -> None:
            if not name or name.strip() == path.name:
                return
            name = name.strip()
            if "/" in name or name.startswith(".") or name in ("", ".."):
                self.notify(f"'{name}' is not a folder name; use letters, digits, - and _.", severity="error")
                return
            target = path.with_name(name)
            if target.exists():
                self.notify(f"{target} exists already; pick another name.", severity="error")
                return
            try:
                path.rename(target)
            except OSError as error:
                self.notify(f"{path}: {error.strerror or error}", severity="error")
                return
            self._forget_in_app(path, target)
            self.action_reload()
        self.app.push_screen(TextPromptScreen(f"New name for {path.name}:", path.name), rename)

    def _forget_in_app(self, old: Path, new: Path | None) -> None:
        comparison = getattr(self.app, "comparison", None)
        if isinstance(comparison, list) and old in comparison:
            comparison.remove(old)
            if new is not None:
                comparison.append(new)

    def action_delete(self) -> None:
        path = self._selected()
        if path is None:
            return
        if (reason := self._busy(path)) is not None:
            self.notify(reason, severity="warning")
            return

        def delete(yes: bool | None) -> None:
            if not yes:
                return
            trash = Path(self.runs_dir) / TRASH
            target = trash / path.name
            counter = 2
            while target.exists():
                target = trash / f"{path.name}-{counter}"
                counter += 1
            try:
                trash.mkdir(exist_ok=True)
                shutil.move(str(path), str(target))
            except OSError as error:
                self.notify(f"{path}: {error.strerror or error}", severity="error")
                return
            self.trashed.append(target)
            self._forget_in_app(path, None)
            self.notify(f"{path.name} moved to the trash (u brings it back).")
            self.action_reload()
        self.app.push_screen(ConfirmScreen(f"Move {path.name} to the trash?\nIt stays in {self.runs_dir}/{TRASH} "
                                           "until you empty the trash (x).", yes="Delete"), delete)

    def action_restore(self) -> None:
        trash = Path(self.runs_dir) / TRASH
        candidates = [p for p in self.trashed if p.exists()] or sorted(
            (p for p in trash.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime) if trash.is_dir() else []
        if not candidates:
            self.notify("The trash is empty.")
            return
        source = candidates[-1]
        target = Path(self.runs_dir) / source.name
        if target.exists():
            self.notify(f"{target} exists; rename it first.", severity="error")
            return
        shutil.move(str(source), str(target))
        if source in self.trashed:
            self.trashed.remove(source)
        self.notify(f"{target.name} is back.")
        self.action_reload()

    def action_empty_trash(self) -> None:
        trash = Path(self.runs_dir) / TRASH
        count = self.trash_count()
        if not count:
            self.notify("The trash is empty.")
            return

        def empty(yes: bool | None) -> None:
            if yes:
                shutil.rmtree(trash, ignore_errors=True)
                self.trashed.clear()
                self.notify(f"{plural(count, 'run')} deleted for good.")
                self.action_reload()
        self.app.push_screen(ConfirmScreen(f"Delete the {plural(count, 'run')} in the trash for good?\n"
                                           "This cannot be undone.", yes="Empty trash"), empty)


__all__ = ["HistoryScreen", "read_row", "augment_text", "lineage_order", "describe_lineage", "TRASH", "NOTE_FILE"]
