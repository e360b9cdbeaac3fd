"""Snapshots of the main screens at 80x24, 120x40 and 160x50 (pytest-textual-snapshot).

Screens are made deterministic: a fixed event history applied to a run panel, fixed
run-directory names, a fixed system line, UTC clock. Update after an intended change
with `python -m pytest tests/test_snapshots.py --snapshot-update` and look at the SVGs.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from cifartui.engine.runs import events as ev
from cifartui.ui import registry
from cifartui.ui.app import make_app
from cifartui.ui.widgets.system import SystemPanel
from tests.app_helpers import SilentTrainer, app_config, epochs_script, panel_with, script, wait_for

SIZES = [(80, 24), (120, 40), (160, 50)]


async def settled(pilot, app) -> None:  # noqa: ANN001
    """Until the run panels' tables, logs and charts have caught up with what they were given."""
    from cifartui.ui.widgets.charts import MetricChart
    from cifartui.ui.widgets.run_panel import RunPanel

    def done() -> bool:
        for panel in app.query(RunPanel):
            table, log = panel.query_one("#epochs-table"), panel.query_one("#event-log")
            if table.scroll_y < table.max_scroll_y or len(log.lines) < len(log.texts):
                return False
            if log._wrapped_at != log.scrollable_content_region.width:
                return False
            if panel.lr_history.ys and not panel.query_one("#lr-spark").data:  # the sparklines too
                return False
        for chart in app.screen.query(MetricChart):  # drawn, not only computed
            if chart.dirty or chart._needs_rerender:
                return False
        return True
    await wait_for(pilot, done)
    await pilot.wait_for_scheduled_animations()
    await pilot.pause(0.2)


async def picker_ready(pilot, app) -> None:  # noqa: ANN001
    await wait_for(pilot, lambda: getattr(app.screen, "surveyed", False)
                   and "parameters" in str(app.screen.query_one("#model-summary").render()))
    await pilot.pause(0.3)
NO_SUCH_PID = 4_194_304  # above Linux's highest pid: never a live process, and the same in every snapshot


@pytest.fixture(autouse=True)
def deterministic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setattr(SystemPanel, "line", lambda self: "CPU  2 cores  ·  pid 4242  CPU 180%  RSS 1.1 GiB  9 threads")

    def fixed_run_dir(runs_dir: Path, preset: str) -> Path:
        path = Path(runs_dir) / f"20260101-120000-{preset}"
        path.mkdir(parents=True, exist_ok=True)
        return path
    monkeypatch.setattr(registry, "new_run_dir", fixed_run_dir)


def _scripted(tmp_path: Path):  # noqa: ANN202
    return make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=SilentTrainer,
                    initial=[app_config()])


@pytest.mark.parametrize("size", SIZES)
def test_run_screen(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:  # noqa: ANN001
    """A finished run of twelve epochs: newest epoch, last log lines, reference on its labelled row."""
    app = _scripted(tmp_path)

    async def play(pilot) -> None:  # noqa: ANN001
        (handle,) = app.handles.values()
        await panel_with(pilot, app, epochs_script(handle.run_dir, app_config(), reference=77.37))
        await settled(pilot, app)  # the epoch table scrolls to its newest row at the next redraw

    assert snap_compare(app, terminal_size=size, run_before=play)


def test_run_screen_two_epochs_at_80x24(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    app = _scripted(tmp_path)

    async def play(pilot) -> None:  # noqa: ANN001
        (handle,) = app.handles.values()
        await panel_with(pilot, app, script(handle.run_dir, app_config()))
        await settled(pilot, app)

    assert snap_compare(app, terminal_size=(80, 24), run_before=play)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_starting_run_says_what_it_is_doing(snap_compare, tmp_path: Path, size: tuple[int, int],  # noqa: ANN001
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from cifartui.ui.widgets import run_panel

    app = _scripted(tmp_path)
    clock = types.SimpleNamespace(time=lambda: 1_700_000_012.0, strftime=time.strftime, localtime=time.localtime)
    monkeypatch.setattr(run_panel, "time", clock)  # twelve seconds into loading the data

    async def play(pilot) -> None:  # noqa: ANN001
        await panel_with(pilot, app, [ev.PhaseStarted("loading data", "cifar10", time=1_700_000_000.0)])
        await settled(pilot, app)

    assert snap_compare(app, terminal_size=size, run_before=play)


def test_interrupted_followed_run(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    from tests.app_helpers import write_run

    runs = tmp_path / "runs"
    config = app_config()
    run_dir = runs / "20260101-000000-tiny"
    events = [e for e in epochs_script(run_dir, config, epochs=4) if not isinstance(e, ev.RunFinished)][:30]
    write_run(runs, run_dir.name, config, events,
              status={"status": "running", "pid": NO_SUCH_PID, "host": socket.gethostname(), "step": 40})
    app = make_app(runs_dir=runs, offer_resume=False)

    async def follow(pilot) -> None:  # noqa: ANN001
        await pilot.press("h")
        await pilot.pause(0.3)
        await pilot.press("f")
        await wait_for(pilot, lambda: app.handles and next(iter(app.handles.values())).status == "interrupted")
        await settled(pilot, app)

    assert snap_compare(app, terminal_size=(120, 40), run_before=follow)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_picker(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:  # noqa: ANN001
    app = make_app(runs_dir=tmp_path / "runs", offer_resume=False)

    async def open_picker(pilot) -> None:  # noqa: ANN001
        await pilot.press("n")
        await picker_ready(pilot, app)

    assert snap_compare(app, terminal_size=size, run_before=open_picker)


def test_picker_with_an_invalid_device(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    app = make_app(runs_dir=tmp_path / "runs", offer_resume=False)

    async def open_picker(pilot) -> None:  # noqa: ANN001
        await pilot.press("n")
        await picker_ready(pilot, app)
        app.screen.query_one("#set-device").value = "gpu"
        await wait_for(pilot, lambda: "unknown device" in str(app.screen.query_one("#settings-note").render())
                       and "Launch is off" in str(app.screen.query_one("#preview").render()))
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(120, 40), run_before=open_picker)


def _fake_run(runs: Path, name: str, lr: float, best: float) -> None:
    run_dir = runs / name
    run_dir.mkdir(parents=True)
    config = app_config()
    config_dict = config.to_dict()
    config_dict["optimizer"]["lr"] = lr
    (run_dir / "config.json").write_text(json.dumps(config_dict))
    (run_dir / "status.json").write_text(json.dumps({"status": "finished", "pid": 1, "host": "x"}))
    lines = []
    for event in script(run_dir, config):
        data = event.to_json()
        if data["event"] == "RunStarted":  # the run started with the settings its config.json says
            data["config"]["optimizer"]["lr"] = lr
        if data["event"] == "EpochEnded":
            data["val_top1"] = best - (1 - data["epoch"]) * 10
        lines.append(json.dumps(data))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_history(snap_compare, tmp_path: Path, size: tuple[int, int],  # noqa: ANN001
                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runs = Path("runs")  # relative: the screen shows this path
    _fake_run(runs, "20260101-100000-tiny", 0.02, 72.0)
    _fake_run(runs, "20260102-100000-tiny", 0.05, 64.0)
    app = make_app(runs_dir=runs, offer_resume=False)
    assert snap_compare(app, terminal_size=size, press=["h"])


def test_welcome_with_runs_in_history(snap_compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    runs = Path("runs")
    _fake_run(runs, "20260101-100000-tiny", 0.02, 72.0)
    app = make_app(runs_dir=runs, offer_resume=False)
    assert snap_compare(app, terminal_size=(80, 24))


def test_compare(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    runs = tmp_path / "runs"
    _fake_run(runs, "20260101-100000-tiny", 0.02, 72.0)
    _fake_run(runs, "20260102-100000-tiny", 0.05, 64.0)
    app = make_app(runs_dir=runs, offer_resume=False)

    async def compare(pilot) -> None:  # noqa: ANN001
        await pilot.press("h", "a", "down", "a", "v")
        await wait_for(pilot, lambda: app.screen.query_one("#rank-table").row_count == 2
                       and app.screen.query_one("#compare-chart").limits is not None)
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(120, 40), run_before=compare)


def test_full_screen_chart(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    app = _scripted(tmp_path)

    async def play(pilot) -> None:  # noqa: ANN001
        (handle,) = app.handles.values()
        await panel_with(pilot, app, epochs_script(handle.run_dir, app_config(), reference=77.37))
        await pilot.press("z", "tab")
        await pilot.press(*["left"] * 20)
        await wait_for(pilot, lambda: app.screen.cursor_column == 20
                       and str(app.screen.query_one("#readout").render()).startswith("step 9"))
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=(120, 40), run_before=play)


def test_help(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    app = make_app(runs_dir=tmp_path / "runs", offer_resume=False)
    assert snap_compare(app, terminal_size=(100, 30), press=["question_mark"])
