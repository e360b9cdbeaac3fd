"""Pilot tests of steering from the app: the settings form on a training run, the chart markers,
the event log, refusals shown inline, branches from kept checkpoints in History and Compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from textual.widgets import Button, Input, OptionList

from cifartui.engine.runs.folders import read_metrics
from cifartui.engine.train.trainer import Trainer
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


def test_branch_from_a_kept_checkpoint_shows_lineage_in_history_and_both_in_compare(tmp_path: Path) -> None:
    factory = Recording()
    runs = tmp_path / "runs"

    async def scenario() -> None:
        app = make_app(runs_dir=runs, offer_resume=False, trainer_factory=factory,
                       initial=[app_config(epochs=3, keep_every=1)])
        async with app.run_test(size=(120, 40)) as pilot:
            (parent_handle,) = app.handles.values()
            parent = parent_handle.run_dir
            await wait_for(pilot, lambda: parent_handle.done.is_set() and app.panel(parent_handle.run_id).finished,
                           timeout=120)
            assert (parent / "checkpoints" / "epoch-0001.pt").is_file()
            await pilot.press("t")  # a finished run's settings cannot change: the key says so
            await pilot.pause(0.2)
            assert not isinstance(app.screen, SettingsForm)
            assert any("branches it" in str(n.message) for n in app._notifications)

            await pilot.press("b")
            await wait_for(pilot, lambda: isinstance(app.screen, CheckpointPicker))
            options = app.screen.query_one("#checkpoint-list", OptionList)
            names = [options.get_option_at_index(i).id for i in range(options.option_count)]
            assert names[:2] == ["last", "best"] and "epoch-0001" in names
            kept = str(options.get_option_at_index(names.index("epoch-0001")).prompt)
            steps_per_epoch = 5  # 160 training images, batch 32
            assert f"step {steps_per_epoch}, 1 epoch done, val top-1" in kept
            options.highlighted = names.index("epoch-0001")
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsForm) and app.screen.settings is not None
                           and app.screen.query(f"#{field_id('optimizer.lr')}"), timeout=30)
            form = app.screen
            assert "checkpoint epoch-0001: step 5, 1 epoch done" in str(form.query_one("#form-where").render())
            form.query_one(f"#{field_id('optimizer.lr')}", Input).value = "0.01"
            await wait_for(pilot, lambda: not form.query_one("#form-submit", Button).disabled)
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: len(app.handles) == 2)
            branch_handle = list(app.handles.values())[1]
            branch = branch_handle.run_dir
            await wait_for(pilot, lambda: branch_handle.done.is_set(), timeout=120)
            assert branch != parent and branch.parent == runs
            started = [e for e in read_metrics(branch) if e["event"] == "RunStarted"][0]
            assert started["parent"] == str(parent) and started["parent_step"] == steps_per_epoch
            (change,) = _settings_changed(branch)
            assert change["source"] == "branch" and change["changes"] == {"optimizer.lr": [0.02, 0.01]}
            assert factory.trainers[1].optimizer.param_groups[0]["lr"] == 0.01
            panel = app.panel(branch_handle.run_id)
            assert f"⑂ branch of {parent.name} at step {steps_per_epoch}" in str(
                panel.query_one("#settings-line").render())
            assert "⑂" in str(app.run_tabs.get_tab(branch_handle.run_id).label)  # the tab tells it from its parent

            # History: the branch right under its parent, with the step it left at.
            await pilot.press("h")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
            history = app.screen
            table = history.query_one("#runs-table")
            await wait_for(pilot, lambda: table.row_count == 2)
            first, second = (table.get_row_at(i) for i in range(2))
            assert str(first[0]) == parent.name
            assert str(second[0]) == f"└ {branch.name} @ step {steps_per_epoch} ✎"
            assert second[3] == "sgd 0.01"  # its effective settings
            table.move_cursor(row=1)
            await wait_for(pilot, lambda: history.query_one("#history-detail").display)
            detail = str(history.query_one("#history-detail").render())
            assert f"branch of {parent.name} from its step {steps_per_epoch}" in detail
            assert "optimizer.lr 0.02 → 0.01" in detail

            # Compare: both on the same axes, x in steps, the branch labelled and leaving its parent's line.
            await pilot.press("v")
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
            chart = app.screen.query_one("#compare-chart")
            await wait_for(pilot, lambda: len(chart.series) == 2)
            assert chart.x_axis == "step"
            labels = sorted(chart.series)
            (branch_label,) = [label for label in labels if label.startswith("⑂")]
            assert f"branch of lr 0.02 at step {steps_per_epoch}" in branch_label
            parent_series = chart.series["lr 0.02"]
            branch_series = chart.series[branch_label]
            assert parent_series.xs == [5.0, 10.0, 15.0]
            assert branch_series.xs == [5.0, 10.0, 15.0]  # from the parent's point at step 5 on
            assert branch_series.ys[0] == parent_series.ys[0]
    run(scenario())


@pytest.mark.slow
def test_a_followed_run_is_steered_through_its_control_channel(tmp_path: Path) -> None:
    """A run another process trains (here: a trainer thread of the test, with its own lock and channel)."""
    runs = tmp_path / "runs"
    run_dir = runs / "20260101-000000-tiny"
    run_dir.mkdir(parents=True)
    trainer = Trainer(app_config(epochs=400), run_dir)
    trainer.start()

    async def scenario() -> None:
        app = make_app(runs_dir=runs, offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: any(e["event"] == "StepMetrics" for e in read_metrics(run_dir)), timeout=60)
            await pilot.press("h")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
            await pilot.press("f")
            await wait_for(pilot, lambda: app.handles and next(iter(app.handles.values())).status == "following")
            (handle,) = app.handles.values()
            assert handle.control is None  # not this app's run: the channel carries the request
            form = await _open_form(pilot, app)
            form.query_one(f"#{field_id('optimizer.lr')}", Input).value = "0.004"
            form.query_one(f"#{field_id('augment.flip')}").value = False
            await wait_for(pilot, lambda: not form.query_one("#form-submit", Button).disabled)
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: not isinstance(app.screen, SettingsForm), timeout=40)
            (change,) = _settings_changed(run_dir)
            assert change["source"] == "control"
            assert change["changes"] == {"optimizer.lr": [0.02, 0.004], "augment.flip": [True, False]}
            assert trainer.optimizer.param_groups[0]["lr"] == 0.004 and trainer.config.augment.flip is False
            assert any("Applied at step" in str(n.message) for n in app._notifications)
            panel = app.panel(handle.run_id)
            await wait_for(pilot, lambda: panel.changes)  # read back from metrics.jsonl, like every event
            assert panel.loss_chart.change_marks == [change["step"]]
    try:
        run(scenario())
    finally:
        trainer.control.stop("test over")
        trainer.thread.join(60)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "stopped"
