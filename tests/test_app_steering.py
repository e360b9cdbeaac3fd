"""Pilot tests of steering from the app: the settings form on a training run, the chart markers,
the event log, refusals shown inline, branches from kept checkpoints in History and Compare."""

from __future__ import annotations

import json
from pathlib import Path

from textual.widgets import Button, Input, OptionList

from cifartui.engine.runs import read_metrics
from cifartui.engine.trainer import Trainer
from cifartui.ui.app import make_app
from cifartui.ui.screens.branch import CheckpointPicker
from cifartui.ui.screens.compare import CompareScreen
from cifartui.ui.screens.history import HistoryScreen
from cifartui.ui.screens.settings_form import SettingsForm, field_id
from cifartui.ui.widgets.run_panel import RunPanel
from tests.app_helpers import app_config, run, wait_for


class Recording:
    """The real trainer factory, remembering the trainers it made (to look at their optimizers)."""

    def __init__(self) -> None:
        self.trainers: list[Trainer] = []

    def __call__(self, *args, **kwargs) -> Trainer:  # noqa: ANN002, ANN003
        trainer = Trainer(*args, **kwargs)
        self.trainers.append(trainer)
        return trainer


def _settings_changed(run_dir: Path) -> list[dict]:
    return [e for e in read_metrics(run_dir) if e["event"] == "SettingsChanged"]


async def _open_form(pilot, app) -> SettingsForm:  # noqa: ANN001
    await pilot.press("t")
    await wait_for(pilot, lambda: isinstance(app.screen, SettingsForm) and app.screen.settings is not None
                   and app.screen.query(f"#{field_id('optimizer.lr')}"), timeout=30)
    await pilot.pause(0.1)
    return app.screen


def test_the_learning_rate_changes_mid_run_from_the_form(tmp_path: Path) -> None:
    factory = Recording()

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=factory,
                       initial=[app_config(epochs=60)])
        async with app.run_test(size=(120, 40)) as pilot:
            (handle,) = app.handles.values()
            panel: RunPanel = app.panel(handle.run_id)
            await wait_for(pilot, lambda: panel.step > 3, timeout=60)
            (trainer,) = factory.trainers
            assert trainer.optimizer.param_groups[0]["lr"] == 0.02

            form = await _open_form(pilot, app)
            assert "at step" in str(form.query_one("#form-where").render())
            lr = form.query_one(f"#{field_id('optimizer.lr')}", Input)
            assert lr.value == "0.02"
            lr.value = "0.005"
            await wait_for(pilot, lambda: not form.query_one("#form-submit", Button).disabled)
            assert "optimizer.lr 0.02 → 0.005" in str(form.query_one("#form-summary").render())
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: not isinstance(app.screen, SettingsForm), timeout=30)

            # The event, in metrics.jsonl and on screen; the optimizer trains with the new rate.
            await wait_for(pilot, lambda: panel.changes, timeout=30)
            (change,) = _settings_changed(handle.run_dir)
            assert change["source"] == "app" and change["changes"] == {"optimizer.lr": [0.02, 0.005]}
            assert trainer.optimizer.param_groups[0]["lr"] == 0.005
            assert trainer.config.optimizer.lr == 0.005
            log = "\n".join(line.plain for line in panel.query_one("#event-log").texts)
            assert f"step {change['step']:,}: settings changed by app: optimizer.lr 0.02 → 0.005" in log
            assert "learning rate 0.02 → 0.005" in log  # the LR sparkline's change, as LRChanged says it
            # A rule on both charts at the step of the change, once drawn.
            assert panel.loss_chart.change_marks == [change["step"]]
            assert panel.accuracy_chart.change_marks == [change["step"]]
            await wait_for(pilot, lambda: panel.step > change["step"] + 2)
            panel.redraw()
            await wait_for(pilot, lambda: panel.loss_chart.change_mark_columns())
            assert "changed" in str(panel.loss_chart.border_title)
            assert "optimizer.lr 0.005 (was 0.02)" in str(panel.query_one("#settings-line").render())
            steps_after = [e for e in read_metrics(handle.run_dir)
                           if e["event"] == "StepMetrics" and e["step"] > change["step"]]
            assert steps_after and all(e["lr"] == 0.005 for e in steps_after)
            handle.control.stop("test over")
            await wait_for(pilot, lambda: handle.done.is_set())
    run(scenario())


def test_an_invalid_value_is_named_inline_and_nothing_is_sent(tmp_path: Path) -> None:
    factory = Recording()

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=factory,
                       initial=[app_config(epochs=60)])
        async with app.run_test(size=(120, 40)) as pilot:
            (handle,) = app.handles.values()
            panel: RunPanel = app.panel(handle.run_id)
            await wait_for(pilot, lambda: panel.step > 2, timeout=60)
            handle.control.pause()  # the form also works on a paused run
            await wait_for(pilot, lambda: panel.status == "paused")
            form = await _open_form(pilot, app)
            lr = form.query_one(f"#{field_id('optimizer.lr')}", Input)
            lr.value = "-1"
            await wait_for(pilot, lambda: lr.has_class("-invalid"))
            hint = str(form.query_one(f"#hint-{field_id('optimizer.lr')}").render())
            assert "'optimizer.lr': -1.0 is out of range: expected a value in (0.0, inf]" in hint
            assert form.query_one("#form-submit", Button).disabled
            assert "nothing is sent" in str(form.query_one("#form-summary").render())
            batch = form.query_one(f"#{field_id('train.batch_size')}", Input)
            batch.value = "lots"
            await wait_for(pilot, lambda: batch.has_class("-invalid"))
            assert "expected an integer, got 'lots'" in str(form.query_one(f"#hint-{field_id('train.batch_size')}")
                                                            .render())
            await pilot.press("ctrl+s")  # refused here: no request reaches the run
            await pilot.pause(0.5)
            assert isinstance(app.screen, SettingsForm) and form.answer is None
            assert _settings_changed(handle.run_dir) == []
            # Fixed, the change goes through, and the batch size waits for the next epoch.
            lr.value = "0.01"
            batch.value = "16"
            await wait_for(pilot, lambda: not form.query_one("#form-submit", Button).disabled)
            assert "train.batch_size 32 → 16 (at the start of the next epoch)" in str(
                form.query_one("#form-summary").render())
            await pilot.click("#form-submit")
            await wait_for(pilot, lambda: _settings_changed(handle.run_dir), timeout=30)
            (change,) = _settings_changed(handle.run_dir)
            assert change["changes"] == {"optimizer.lr": [0.02, 0.01], "train.batch_size": [32, 16]}
            handle.control.stop("test over")
            await wait_for(pilot, lambda: handle.done.is_set())
    run(scenario())
