"""History lists the runs that live inside a reproduction's folder, as it does a sweep's."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable

from cifartui.engine.orchestration.queue import PlannedRun, RunQueue
from cifartui.engine.orchestration.reproduce import write_plan
from cifartui.engine.orchestration.sweep import sweep_run_dirs
from cifartui.ui.app import make_app
from cifartui.ui.screens.history import HistoryScreen
from tests.app_helpers import app_config, epochs_script, run, wait_for, write_run


def fake_reproduction(runs: Path, name: str, recipes: tuple[str, ...] = ("cnn3-cifar10", "elu18-cifar100")) -> Path:
    """A reproduction directory as `cifartui reproduce --quick` leaves it: its plan, its queue, finished runs."""
    directory = runs / name
    directory.mkdir(parents=True)
    write_plan(directory, {"recipes": list(recipes), "quick": True, "quick_budget": None, "modified": []})
    planned = [PlannedRun(app_config(epochs=2), {"recipe": recipe}) for recipe in recipes]
    queue = RunQueue.create(directory, planned, kind="reproduce", device="cpu")
    for index, (entry, run_plan) in enumerate(zip(queue.entries, planned)):
        run_name = f"20260102-12{index:02d}00-{run_plan.label['recipe']}"
        events = epochs_script(entry.directory / run_name, run_plan.config, epochs=2, t0=1_700_000_000.0 + index)
        write_run(entry.directory, run_name, run_plan.config, events,
                  status={"status": "finished", "pid": 1, "host": "elsewhere"})
        entry.run_name, entry.state, entry.device = run_name, "finished", "cpu"
        queue.save(entry)
    return directory


def test_history_lists_a_reproductions_runs_under_it_and_opens_and_compares_them(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    reproduction = fake_reproduction(runs, "20260102-120000-reproduce-quick")
    write_run(runs, "20260103-120000-tiny", app_config(epochs=2), [])
    members = [path for _, path in sweep_run_dirs(reproduction)]
    assert len(members) == 2
    app = make_app(runs_dir=runs, offer_resume=False)

    async def scenario() -> None:
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.press("h")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
            table = app.screen.query_one("#runs-table", DataTable)
            assert table.row_count == 3
            groups = sorted(str(table.get_row_at(i)[1]) for i in range(table.row_count))
            assert groups == ["", f"{reproduction.name} #001", f"{reproduction.name} #002"]
            await pilot.press("slash", *"reproduce", "enter")  # the group's name filters to its runs
            await pilot.pause(0.2)
            assert table.row_count == 2
            await pilot.press("a", "down", "a")
            assert set(app.comparison) == set(members)
            await pilot.press("d")  # a reproduction's run stays where its report reads it
            await pilot.pause(0.2)
            assert isinstance(app.screen, HistoryScreen) and not (runs / ".trash").exists()
            await pilot.press("enter")  # opens its charts from its metrics.jsonl
            await wait_for(pilot, lambda: len(app.handles) == 1)
            (handle,) = app.handles.values()
            assert handle.run_dir in members

    run(scenario())
