"""Snapshots of the main screens at 80x24 and 120x40 (pytest-textual-snapshot).

Screens are made deterministic: a fixed event history applied to a run panel, fixed
run-directory names, a fixed device line, UTC clock. Update after an intended change
with `python -m pytest tests/test_snapshots.py --snapshot-update` and look at the SVGs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cifartui.engine.trainer import RunResult
from cifartui.ui import app as app_module
from cifartui.ui.app import make_app
from cifartui.ui.widgets import device as device_module
from tests.app_helpers import app_config, script, wait_for

SIZES = [(80, 24), (120, 40)]


class SilentTrainer:
    """Finishes at once and says nothing: the test applies the events itself, in order."""

    def __init__(self, config, run_dir, **_kwargs) -> None:  # noqa: ANN001
        self.run_dir = run_dir

    def run(self) -> RunResult:
        return RunResult("finished", self.run_dir, {})


@pytest.fixture(autouse=True)
def deterministic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setattr(device_module, "device_report", lambda device: "CPU  2 torch threads of 2 cores")

    def fixed_run_dir(runs_dir: Path, preset: str) -> Path:
        path = Path(runs_dir) / f"20260101-120000-{preset}"
        path.mkdir(parents=True, exist_ok=True)
        return path
    monkeypatch.setattr(app_module, "new_run_dir", fixed_run_dir)


@pytest.mark.parametrize("size", SIZES)
def test_run_screen(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:  # noqa: ANN001
    config = app_config()
    app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=SilentTrainer, initial=[config])

    async def play(pilot) -> None:  # noqa: ANN001
        (handle,) = app.handles.values()
        await wait_for(pilot, lambda: app.panel(handle.run_id) is not None and app.panel(handle.run_id).ready
                       and handle.done.is_set())
        panel = app.panel(handle.run_id)
        for event in script(handle.run_dir, config):
            panel.apply(event)
        app._set_status(handle, panel.status)
        panel.redraw()
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=size, run_before=play)


@pytest.mark.parametrize("size", SIZES)
def test_picker(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:  # noqa: ANN001
    app = make_app(runs_dir=tmp_path / "runs", offer_resume=False)

    async def open_picker(pilot) -> None:  # noqa: ANN001
        await pilot.press("n")
        await wait_for(pilot, lambda: "parameters" in str(app.screen.query_one("#model-summary").render()))
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=size, run_before=open_picker)


def _fake_run(runs: Path, name: str, lr: float, best: float) -> None:
    from tests.app_helpers import script as history
    run_dir = runs / name
    run_dir.mkdir(parents=True)
    config = app_config()
    config_dict = config.to_dict()
    config_dict["optimizer"]["lr"] = lr
    (run_dir / "config.json").write_text(json.dumps(config_dict))
    (run_dir / "status.json").write_text(json.dumps({"status": "finished", "pid": 1, "host": "x"}))
    lines = []
    for event in history(run_dir, config):
        data = event.to_json()
        if data["event"] == "EpochEnded":
            data["val_top1"] = best - (1 - data["epoch"]) * 10
        lines.append(json.dumps(data))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("size", SIZES)
def test_history(snap_compare, tmp_path: Path, size: tuple[int, int],  # noqa: ANN001
                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runs = Path("runs")  # relative: the screen shows this path
    _fake_run(runs, "20260101-100000-tiny", 0.02, 72.0)
    _fake_run(runs, "20260102-100000-tiny", 0.05, 64.0)
    app = make_app(runs_dir=runs, offer_resume=False)
    assert snap_compare(app, terminal_size=size, press=["h"])


def test_compare(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    runs = tmp_path / "runs"
    _fake_run(runs, "20260101-100000-tiny", 0.02, 72.0)
    _fake_run(runs, "20260102-100000-tiny", 0.05, 64.0)
    app = make_app(runs_dir=runs, offer_resume=False)

    async def compare(pilot) -> None:  # noqa: ANN001
        await pilot.press("h", "a", "down", "a", "v")
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(120, 40), run_before=compare)


def test_help(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    app = make_app(runs_dir=tmp_path / "runs", offer_resume=False)
    assert snap_compare(app, terminal_size=(100, 30), press=["question_mark"])
