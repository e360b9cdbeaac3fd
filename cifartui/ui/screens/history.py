"""Past and present runs in the runs directory: open, follow, resume, compare."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from cifartui.engine.runs import list_runs


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


class HistoryScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("enter,o", "open", "Open"),
        Binding("f", "follow", "Follow live"),
        Binding("r", "resume", "Resume"),
        Binding("a", "add_to_comparison", "Add to comparison"),
        Binding("i", "inspect", "Inspect"),
        Binding("v", "app.compare", "Compare"),
        Binding("g", "reload", "Reload"),
    ]

    def __init__(self, runs_dir: Path) -> None:
        super().__init__()
        self.runs_dir = runs_dir
        self.paths: dict[str, Path] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="history-title")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="history-problems")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        table.add_columns("run", "status", "epochs", "best val", "test", "")
        self.action_reload()
        table.focus()

    def action_reload(self) -> None:
        infos, problems = list_runs(self.runs_dir)
        table = self.query_one("#runs-table", DataTable)
        table.clear()
        self.paths.clear()
        compared = {str(p) for p in getattr(self.app, "comparison", [])}
        for info in infos:
            key = str(info.path)
            self.paths[key] = info.path
            mark = "compared" if key in compared else ""
            table.add_row(info.path.name, info.status, f"{info.epochs_done}/{info.epochs_total}",
                          _pct(info.best_val_top1), _pct(info.test_top1), mark, key=key)
        count = f"{len(infos)} run{'s' if len(infos) != 1 else ''}" if infos else "no runs yet"
        self.query_one("#history-title", Static).update(f"[b]Runs[/] in {self.runs_dir}: {count}")
        self.query_one("#history-problems", Static).update(
            "\n".join(f"[yellow]unreadable:[/] {p}" for p in problems))

    def _selected(self) -> Path | None:
        table = self.query_one("#runs-table", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.paths.get(key)

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_open()  # enter or a click on a row

    def action_open(self) -> None:
        if (path := self._selected()) is not None:
            self.app.open_run_view(path, follow=False)

    def action_follow(self) -> None:
        if (path := self._selected()) is not None:
            self.app.open_run_view(path, follow=True)

    def action_inspect(self) -> None:
        if (path := self._selected()) is not None:
            self.app.inspect_run(path)

    def action_resume(self) -> None:
        if (path := self._selected()) is not None:
            self.app.resume_run(path)

    def action_add_to_comparison(self) -> None:
        if (path := self._selected()) is not None:
            self.app.toggle_comparison(path)
            self.action_reload()
