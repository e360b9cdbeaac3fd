"""Snapshots of steering at 120x40: the settings form (with a change, and with a value refused), and
charts with the rule that marks a change of settings, in the run's tab and on the whole screen.

Update after an intended change with
`python -m pytest tests/test_snapshots_steering.py --snapshot-update` and look at the SVGs.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cifartui.engine.runs import events as ev
from cifartui.ui import registry
from cifartui.ui.app import make_app
from cifartui.ui.screens.settings_form import SettingsForm, field_id
from cifartui.ui.steering import FormState
from cifartui.ui.widgets.system import SystemPanel
from tests.app_helpers import SilentTrainer, app_config, epochs_script, panel_with, wait_for
from tests.test_snapshots import settled

CHANGE_STEP = 60
RATES = {"3": 0.3, "7": 0.3, "11": 0.4, "16": 0.3}


@pytest.fixture(autouse=True)
def deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setattr(SystemPanel, "line", lambda self: "CPU  2 cores  ·  pid 4242  CPU 180%  RSS 1.1 GiB  9 threads")

    def fixed_run_dir(runs_dir: Path, preset: str) -> Path:
        path = Path(runs_dir) / f"20260101-120000-{preset}"
        path.mkdir(parents=True, exist_ok=True)
        return path
    monkeypatch.setattr(registry, "new_run_dir", fixed_run_dir)


def _app(tmp_path: Path):  # noqa: ANN202
    return make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=SilentTrainer,
                    initial=[app_config()])


def _form_state() -> FormState:
    return FormState(app_config(), {"block1": 0.3, "block2": 0.3, "block3": 0.4, "dense": 0.3}, 120, 6, 0.02,
                     "training at step 120 of 800 (epoch 7); learning rate now 0.02", 800)


async def _form(pilot, app, typed: dict[str, str]) -> SettingsForm:  # noqa: ANN001
    (handle,) = app.handles.values()
    await wait_for(pilot, lambda: handle.done.is_set() and app.panel(handle.run_id).ready)
    await settled(pilot, app)  # the tab behind the form, drawn whole first
    form = SettingsForm(f"Settings of {handle.run_dir.name}", _form_state, send=lambda updates: {"ok": True})
    app.push_screen(form)
    await wait_for(pilot, lambda: form.settings is not None and form.query(f"#{field_id('optimizer.lr')}")
                   and form.query_one(f"#{field_id('optimizer.lr')}").has_focus)  # the form puts the cursor there
    for key, text in typed.items():
        form.query_one(f"#{field_id(key)}").value = text
    form.query_one("#form-cancel").focus()  # no blinking text cursor in the picture
    await pilot.pause(0.3)
    return form


def test_settings_form_with_changes(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    app = _app(tmp_path)

    async def play(pilot) -> None:  # noqa: ANN001
        form = await _form(pilot, app, {"optimizer.lr": "0.005", "dropout.block3": "0.5", "train.batch_size": "64"})
        assert not form.query_one("#form-submit").disabled

    assert snap_compare(app, terminal_size=(120, 40), run_before=play)


def test_settings_form_with_a_value_refused(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    app = _app(tmp_path)

    async def play(pilot) -> None:  # noqa: ANN001
        form = await _form(pilot, app, {"optimizer.lr": "-1", "optimizer.momentum": "0.8"})
        assert form.query_one("#form-submit").disabled

    assert snap_compare(app, terminal_size=(120, 40), run_before=play)


def _steered(run_dir: Path) -> list[ev.Event]:
    """Twelve epochs, with the learning rate halved and one dropout rate raised from the app at step 60."""
    events = epochs_script(run_dir, app_config(), reference=77.37, rates=RATES)
    at = next(i for i, e in enumerate(events) if isinstance(e, ev.CheckpointSaved) and e.step == CHANGE_STEP) + 1
    when = events[at - 1].time
    events[at:at] = [
        ev.SettingsChanged(step=CHANGE_STEP, epoch=6, source="app",
                           changes={"optimizer.lr": [0.01, 0.005], "dropout.block3": [0.4, 0.5]}, time=when),
        ev.LRChanged(step=CHANGE_STEP, epoch=6, old=0.01, new=0.005, reason="changed by app", time=when),
        ev.DropoutChanged(step=CHANGE_STEP, epoch=6, old=RATES, new={**RATES, "11": 0.5}, time=when)]
    return events


def test_run_screen_with_a_change_of_settings(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    app = _app(tmp_path)

    async def play(pilot) -> None:  # noqa: ANN001
        (handle,) = app.handles.values()
        panel = await panel_with(pilot, app, _steered(handle.run_dir))
        await settled(pilot, app)
        assert panel.loss_chart.change_mark_columns() and panel.accuracy_chart.change_mark_columns()

    assert snap_compare(app, terminal_size=(120, 40), run_before=play)


def test_full_screen_chart_with_the_cursor_on_a_change(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    app = _app(tmp_path)

    async def play(pilot) -> None:  # noqa: ANN001
        (handle,) = app.handles.values()
        await panel_with(pilot, app, _steered(handle.run_dir))
        await pilot.press("z")
        await wait_for(pilot, lambda: app.screen.query("#readout"))
        screen = app.screen
        for _ in range(200):  # walk the cursor left until it stands on the rule
            if "▼ step 60" in str(screen.query_one("#readout").render()):
                break
            await pilot.press("left")
        assert "optimizer.lr 0.01 → 0.005, dropout.block3 0.4 → 0.5" in str(screen.query_one("#readout").render())
        await pilot.pause(0.2)  # the readout's second line makes the chart a row shorter: drawn again
        await settled(pilot, app)

    assert snap_compare(app, terminal_size=(120, 40), run_before=play)
