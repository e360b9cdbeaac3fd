"""Pilot tests of the real app: launch, pause, resume, stop, two runs, compare, failures, NaN, quit."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, OptionList, TabPane

from cifartui.engine.runs import events as ev
from cifartui.engine.runs.checkpoint import load_checkpoint
from cifartui.engine.runs.folders import RunLock, read_status
from cifartui.ui.app import STATUS_MARK, make_app
from cifartui.ui.messages import RunEvent
from cifartui.ui.screens.compare import CompareScreen, differing_settings
from cifartui.ui.screens.dialogs import ConfirmScreen, ResumeOfferScreen
from cifartui.ui.screens.history import HistoryScreen
from cifartui.ui.screens.picker import PickerScreen
from cifartui.ui.series import BoundedSeries
from cifartui.ui.widgets.run_panel import RunPanel
from tests.app_helpers import FailingTrainer, PoisonedTrainer, app_config, run, wait_for


def _panel(app, handle) -> RunPanel:  # noqa: ANN001
    return app.panel(handle.run_id)


def test_bounded_series_keeps_memory_flat_and_recent_points_exact() -> None:
    series = BoundedSeries(limit=100)
    for step in range(165_000):
        series.append(step, step * 2.0)
    assert len(series) <= 100
    assert series.xs[-1] == 164_999 and series.ys[-1] == 329_998.0  # the newest point is exact
    assert series.xs[0] == (series.stride - 1) / 2  # the first bucket: the mean of steps 0..stride-1
    assert series.xs == sorted(series.xs)
    gaps = [b - a for a, b in zip(series.old_x, series.old_x[1:])]
    assert max(gaps) <= 2 * min(gaps)  # old buckets are evenly spaced
    assert series.ys[-50:] == [x * 2.0 for x in range(164_950, 165_000)]


def test_step_metrics_messages_coalesce_but_others_never() -> None:
    step = ev.StepMetrics(step=1, epoch=0, loss=1.0, top1=1.0, lr=0.1, images_per_s=1.0, eta_s=1.0, total_steps=9)
    epoch = ev.EpochEnded(epoch=0, step=1, train_loss=1.0, train_top1=1.0, val_loss=None, val_top1=None,
                          val_top5=None, lr=0.1, seconds=1.0)
    assert RunEvent("a", step).can_replace(RunEvent("a", step))
    assert not RunEvent("a", step).can_replace(RunEvent("b", step))  # another run's step
    assert not RunEvent("a", step).can_replace(RunEvent("a", epoch))
    assert not RunEvent("a", epoch).can_replace(RunEvent("a", epoch))


@pytest.mark.slow
def test_launch_from_the_picker_then_pause_resume_and_stop(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("n")
            await wait_for(pilot, lambda: isinstance(app.screen, PickerScreen))
            picker = app.screen
            recipes = picker.query_one("#recipes", OptionList)
            recipes.highlighted = list(picker.recipes).index("demo-synthetic")
            await pilot.pause()
            picker.query_one("#set-epochs").value = "40"
            picker.query_one("#set-device").value = "cpu"
            await wait_for(pilot, lambda: "demo-synthetic" not in str(picker.query_one("#preview").render())
                           or "cnn3" in str(picker.query_one("#preview").render()))
            assert "synthetic" in str(picker.query_one("#preview").render())
            await wait_for(pilot, lambda: "parameters" in str(picker.query_one("#model-summary").render()))
            await pilot.click("#launch")
            await wait_for(pilot, lambda: len(app.handles) == 1)
            (handle,) = app.handles.values()
            assert handle.config.train.epochs == 40
            panel = _panel(app, handle)
            await wait_for(pilot, lambda: panel.step > 3, timeout=60)

            await pilot.press("p")
            took = await wait_for(pilot, lambda: panel.status == "paused")
            assert took < 1.0, f"pause took {took:.2f}s"
            assert read_status(handle.run_dir)["status"] == "paused"
            frozen = panel.step
            await pilot.pause(0.5)
            assert panel.step == frozen and handle.status == "paused"

            await pilot.press("p")
            await wait_for(pilot, lambda: panel.step > frozen + 2)
            assert panel.status == "running"

            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_for(pilot, lambda: handle.done.is_set() and panel.status == "stopped")
            state = load_checkpoint(handle.run_dir / "checkpoints" / "last.pt")
            assert state["progress"]["step"] >= frozen
            # The tab: its number (the key that shows it), the run's state, the recipe.
            assert str(app.query_one("#runs").get_tab(handle.run_id).label) == f"1 {STATUS_MARK['stopped']} demo-synthetic"
    run(scenario())


def test_two_runs_at_once_pausing_one_leaves_the_other_running(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, initial=[app_config(), app_config()])
        async with app.run_test(size=(120, 40)) as pilot:
            first, second = app.handles.values()
            await wait_for(pilot, lambda: _panel(app, first).step > 2 and _panel(app, second).step > 2, timeout=60)
            first.control.pause()
            await wait_for(pilot, lambda: _panel(app, first).status == "paused")
            before = _panel(app, second).step
            await wait_for(pilot, lambda: _panel(app, second).step > before + 3)
            assert _panel(app, first).status == "paused" and _panel(app, second).status == "running"
            first.control.stop("test over")
            second.control.stop("test over")
            await wait_for(pilot, lambda: first.done.is_set() and second.done.is_set())
    run(scenario())


def test_a_failing_run_shows_advice_and_the_app_and_other_runs_carry_on(tmp_path: Path) -> None:
    def factory(config, run_dir, **kwargs):  # noqa: ANN001
        if config.name == "broken":
            return FailingTrainer(config, run_dir, **kwargs)
        from cifartui.engine.train.trainer import Trainer
        return Trainer(config, run_dir, **kwargs)

    import dataclasses
    broken = dataclasses.replace(app_config(), name="broken")

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=factory,
                       initial=[app_config(), broken])
        async with app.run_test(size=(120, 40)) as pilot:
            healthy, failing = app.handles.values()
            await wait_for(pilot, lambda: _panel(app, failing).status == "failed")
            alert = _panel(app, failing).alert_text
            assert "out of memory" in alert and "batch_size" in alert  # the error and what to do
            before = _panel(app, healthy).step
            await wait_for(pilot, lambda: _panel(app, healthy).step > before + 3, timeout=60)
            await pilot.press("question_mark")  # the app still answers keys
            await wait_for(pilot, lambda: app.screen.__class__.__name__ == "HelpScreen")
            await pilot.press("escape")
            assert (failing.run_dir / "error.log").read_text().count("out of memory")
            healthy.control.stop("test over")
            await wait_for(pilot, lambda: healthy.done.is_set())
    run(scenario())


def test_non_finite_loss_pauses_the_run_with_an_alert(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=PoisonedTrainer,
                       initial=[app_config()])
        async with app.run_test(size=(120, 40)) as pilot:
            (handle,) = app.handles.values()
            panel = _panel(app, handle)
            await wait_for(pilot, lambda: panel.status == "paused", timeout=60)
            assert "non-finite" in panel.alert_text or "nan" in panel.alert_text
            assert handle.control.paused
            assert any("paused" in (n.title or "") for n in app._notifications)
            await pilot.press("p")  # the user decides to go on
            await wait_for(pilot, lambda: panel.status == "running" and panel.step > PoisonedTrainer.poison_step + 2)
            handle.control.stop("test over")
            await wait_for(pilot, lambda: handle.done.is_set())
    run(scenario())


def test_quit_with_an_active_run_confirms_and_writes_its_checkpoint(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, initial=[app_config()])
        async with app.run_test(size=(100, 30)) as pilot:
            (handle,) = app.handles.values()
            await wait_for(pilot, lambda: _panel(app, handle).step > 3, timeout=60)
            await pilot.press("q")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_for(pilot, lambda: handle.done.is_set())
        state = load_checkpoint(handle.run_dir / "checkpoints" / "last.pt")
        status = read_status(handle.run_dir)
        assert status["status"] == "stopped" and status["reason"] == "app quit"
        assert state["progress"]["step"] == status["step"]
    run(scenario())


def test_sigterm_checkpoints_every_run_and_next_start_offers_resume(tmp_path: Path) -> None:
    runs = tmp_path / "runs"

    async def first_session() -> None:
        app = make_app(runs_dir=runs, offer_resume=False, initial=[app_config(), app_config()])
        async with app.run_test(size=(100, 30)) as pilot:
            handles = list(app.handles.values())
            await wait_for(pilot, lambda: all(_panel(app, h).step > 2 for h in handles), timeout=60)
            shown = {h.run_id: _panel(app, h).step for h in handles}
            app.handle_terminate_signal("SIGTERM")  # what the installed handler calls
            assert app.return_code == 143  # as headless: 128 + SIGTERM
            assert all(h.done.is_set() for h in handles)
            for h in handles:
                step = load_checkpoint(h.run_dir / "checkpoints" / "last.pt")["progress"]["step"]
                assert step >= shown[h.run_id]
                assert read_status(h.run_dir)["reason"] == "interrupted by SIGTERM"

    async def second_session() -> None:
        app = make_app(runs_dir=runs)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, ResumeOfferScreen))
            assert len(app.screen.names) == 2
            await pilot.press("y")
            await wait_for(pilot, lambda: len(app.handles) == 2 and all(h.active for h in app.handles.values()))
            for handle in app.handles.values():
                await wait_for(pilot, lambda: _panel(app, handle).status == "running", timeout=60)
                handle.control.stop("test over")
            await wait_for(pilot, lambda: all(h.done.is_set() for h in app.handles.values()))

    import cifartui.ui.app as app_module
    exits: list[float] = []
    original = app_module._exit_soon
    app_module._exit_soon = lambda seconds, code: exits.append((seconds, code))  # it must not end pytest
    try:
        run(first_session())
    finally:
        app_module._exit_soon = original
    assert exits == [(5.0, 143)]  # the watchdog, if it ever fires, exits as SIGTERM's code
    run(second_session())


def _finished_run(tmp_path: Path, name: str, lr: float) -> Path:
    from cifartui.cli import main
    runs = tmp_path / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    assert main(["train", "demo-synthetic", "--epochs", "2", "--set", "dataset.train_size=300", "--lr", str(lr),
                 "--runs-dir", str(runs), "--device", "cpu"]) == 0
    (new,) = set(runs.iterdir()) - before
    return new


@pytest.mark.slow
def test_history_opens_a_finished_run_and_compare_ranks_runs(tmp_path: Path) -> None:
    slow = _finished_run(tmp_path, "slow", 0.0005)
    fast = _finished_run(tmp_path, "fast", 0.003)

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("h")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
            table = app.screen.query_one("#runs-table", DataTable)
            assert table.row_count == 2
            await pilot.press("a")  # add the highlighted run to the comparison
            await pilot.press("down", "a")
            assert set(app.comparison) == {slow, fast}
            await pilot.press("enter")  # open the second one: its charts come from metrics.jsonl
            await wait_for(pilot, lambda: len(app.handles) == 1)
            (handle,) = app.handles.values()
            panel = _panel(app, handle)
            await wait_for(pilot, lambda: panel.finished is not None)
            assert panel.query_one("#epochs-table", DataTable).row_count == 2
            assert handle.control is None  # viewing only

            await pilot.press("v")
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
            screen = app.screen
            chart = screen.query_one("#compare-chart")
            assert set(chart.series) == {"lr 0.0005", "lr 0.003"}  # each run named by what tells it apart
            ranking = screen.query_one("#rank-table", DataTable)
            assert ranking.row_count == 2
            labels = [str(c.label) for c in ranking.columns.values()]
            assert "optimizer.lr" in labels  # the one setting that differs is a column
            best = [json.loads((p / "summary.json").read_text())["best_val_top1"] for p in (slow, fast)]
            first_row = ranking.get_row_at(0)
            assert str(first_row[1]) == ("lr 0.0005" if best[0] >= best[1] else "lr 0.003")
            assert str(first_row[4]) == "2/2"  # epochs done of the total
    run(scenario())


def test_differing_settings_ignores_names_and_finds_changes() -> None:
    a = {"name": "x", "optimizer": {"lr": 0.1, "name": "sgd"}, "train": {"epochs": 3}, "reference": {"notes": "a"}}
    b = {"name": "y", "optimizer": {"lr": 0.2, "name": "sgd"}, "train": {"epochs": 3}, "reference": {"notes": "b"}}
    assert differing_settings([a, b]) == ["optimizer.lr"]  # a recipe's notes are prose, not a setting


def test_following_a_run_written_by_another_process(tmp_path: Path) -> None:
    from tests.app_helpers import script
    runs = tmp_path / "runs"
    run_dir = runs / "20260101-000000-elsewhere"
    run_dir.mkdir(parents=True)
    config = app_config()
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    (run_dir / "status.json").write_text(json.dumps({"status": "running", "pid": 1, "host": "elsewhere"}))
    events = script(run_dir, config)
    metrics = run_dir / "metrics.jsonl"
    trainer_lock = RunLock(run_dir).acquire()  # held by the process that trains the run, as a trainer holds it

    def append(batch) -> None:  # noqa: ANN001
        with metrics.open("a") as handle:
            for event in batch:
                handle.write(json.dumps(event.to_json()) + "\n")

    async def scenario() -> None:
        append(events[:5])
        app = make_app(runs_dir=runs, offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("h")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
            await pilot.press("f")
            await wait_for(pilot, lambda: len(app.handles) == 1)
            panel = _panel(app, next(iter(app.handles.values())))
            await wait_for(pilot, lambda: panel.step == 8)
            with metrics.open("a") as handle:
                handle.write('{"event": "StepMetrics", "step": 99')  # a line still being written
            await pilot.pause(1.2)
            assert panel.step == 8
            metrics.write_text(metrics.read_text().rsplit("\n", 1)[0] + "\n")
            append(events[5:])
            await wait_for(pilot, lambda: panel.finished is not None)
            assert panel.query_one("#epochs-table", DataTable).row_count == 2
    try:
        run(scenario())
    finally:
        trainer_lock.release()


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (120, 40)])
def test_layout_adapts_to_the_terminal(tmp_path: Path, size: tuple[int, int]) -> None:
    from tests.app_helpers import ScriptedTrainer

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=ScriptedTrainer,
                       initial=[app_config()])
        async with app.run_test(size=size) as pilot:
            await pilot.pause(0.3)
            assert app.has_class("narrow") == (size[0] < 100) and app.has_class("short") == (size[1] < 30)
            loss, accuracy = app.query("MetricChart")
            assert loss.region.width >= 35 and accuracy.region.width >= 35  # side by side, readable
            assert loss.region.y == accuracy.region.y
            assert loss.region.bottom <= size[1]  # the charts are on the first screen
    run(scenario())


def test_runs_left_on_auto_spread_across_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from cifartui.ui import registry
    from cifartui.ui.registry import spread_across_gpus

    placed: list[str] = []

    class HoldingTrainer:
        """Records where the app put the run and trains until stopped."""

        def __init__(self, config, run_dir, *, control=None, **_):  # noqa: ANN001
            placed.append(config.train.device)
            self.control = control

        def run(self):  # noqa: ANN202
            while self.control.stop_reason is None:
                time.sleep(0.01)

    monkeypatch.setattr(registry, "gpu_count", lambda: 2)
    auto = app_config(device="auto")
    pinned = app_config(device="cuda:1")

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=HoldingTrainer,
                       initial=[auto, pinned, auto, auto])
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: len(placed) == 4)
            for handle in app.handles.values():
                handle.control.stop("test over")
    run(scenario())
    assert placed == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]  # the fewest active runs, lowest index first
    assert spread_across_gpus(auto, [], 1) is auto  # one GPU or none: nothing to choose
    assert spread_across_gpus(dataclasses.replace(auto), ["cuda"], 2).train.device == "cuda:1"


def _trained_run(tmp_path: Path, **dataset: object) -> Path:
    import dataclasses

    from cifartui.engine.train.trainer import Trainer
    from tests.conftest import tiny_config

    config = tiny_config(epochs=1)
    if dataset:
        config = dataclasses.replace(config, dataset=dataclasses.replace(config.dataset, **dataset))
    run_dir = tmp_path / "runs" / "20260101-000000-tiny"
    Trainer(config, run_dir, data_dir=tmp_path / "data").run()
    return run_dir


async def open_inspect(pilot, app, run_dir: Path):  # noqa: ANN001, ANN201
    """The Inspect view of `run_dir`, once its test-set evaluation is on screen."""
    from cifartui.ui.screens.inspect import InspectScreen

    app.inspect_run(run_dir)
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, InspectScreen)
    await wait_for(pilot, lambda: screen.result is not None, timeout=60)
    return screen


def test_inspect_view_shows_heatmap_per_class_table_mistakes_and_summary(tmp_path: Path) -> None:
    from textual.widgets import Static, TabbedContent

    from cifartui.ui.screens.inspect import InspectScreen

    _trained_run(tmp_path)  # opened from history below

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("h")
            await pilot.press("i")  # from history, on the only run
            screen = app.screen
            assert isinstance(screen, InspectScreen)
            await wait_for(pilot, lambda: screen.result is not None, timeout=60)
            result = screen.result
            assert int(result.confusion.sum()) == 100  # the tiny run's test images
            heat = str(screen.query_one("#heatmap", Static).render())
            assert "class_00" in heat and f"{result.confusion[0, 0]}" in heat
            table = screen.query_one("#per-class", DataTable)
            assert table.row_count == 10
            accuracies = [table.get_row_at(i)[2] for i in range(table.row_count)]
            assert accuracies == sorted(accuracies)  # worst first
            mistakes = screen.query(".sample")
            wrong = int((result.predictions != result.labels).sum())
            assert len(mistakes) == min(12, wrong) and len(screen.shown) == len(mistakes)
            assert all(result.predictions[i] != result.labels[i] for i in screen.shown)
            confidences = [result.confidence[i] for i in screen.shown]
            assert confidences == sorted(confidences, reverse=True)  # surest first
            first = screen.shown[0]
            assert "▀" in str(mistakes.first().query_one(".picture", Static).render())
            caption = str(mistakes.first().query_one(".caption", Static).render())
            assert f"true {result.class_names[result.labels[first]]}" in caption
            said = result.class_names[result.predictions[first]]
            assert f"said {said} {100 * result.confidence[first]:.0f}%" in caption
            await pilot.press("d")  # random test images, right or wrong
            await pilot.pause()
            random_draw = list(screen.shown)
            assert len(random_draw) == 12 == len(set(random_draw)) and len(screen.query(".sample")) == 12
            await pilot.press("d")
            await pilot.pause()
            assert screen.shown != random_draw
            assert "parameters" in str(screen.summary_table.title) and screen.summary_table.row_count > 5
            tabs = screen.query_one("#inspect-tabs", TabbedContent)
            for key, tab in [("3", "tab-samples"), ("4", "tab-model"), ("2", "tab-classes"), ("1", "tab-confusion")]:
                await pilot.press(key)
                assert tabs.active == tab
            await pilot.press("escape")
            assert not isinstance(app.screen, InspectScreen)
    run(scenario())


def test_inspect_view_of_cifar100_groups_into_superclasses_and_zooms(tmp_path: Path) -> None:
    from textual.widgets import Select, Static

    from tests.conftest import make_cifar_folder

    make_cifar_folder(tmp_path / "data", "cifar100", per_file=1000)  # every class in the files
    run_dir = _trained_run(tmp_path, name="cifar100", classes=100, val_fraction=0.0)

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", data_dir=tmp_path / "data", offer_resume=False)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await open_inspect(pilot, app, run_dir)
            assert screen.result.superclass_confusion().shape == (20, 20)
            heat = str(screen.query_one("#heatmap", Static).render())
            rows = heat.splitlines()[1:]
            assert len(rows) == 20 and "aquatic_mammal" in rows[0] and "vehicles_2" in rows[19]
            screen.query_one("#confusion-view", Select).value = "0"  # zoom into aquatic mammals
            await pilot.pause()
            heat = str(screen.query_one("#heatmap", Static).render())
            rows = heat.splitlines()[1:]
            assert len(rows) == 5 and "apple" in rows[0] and "beaver" in rows[4]  # classes 0-4
            assert screen.query_one("#per-class", DataTable).row_count == 100
    run(scenario())


def test_picker_previews_the_chosen_augmentation(tmp_path: Path) -> None:
    import numpy as np

    from cifartui.ui.screens.augment_preview import AugmentPreviewScreen

    async def preview(pilot, app, recipe: str) -> AugmentPreviewScreen:  # noqa: ANN001
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, PickerScreen))
        picker = app.screen
        picker.query_one("#recipes", OptionList).highlighted = list(picker.recipes).index(recipe)
        await wait_for(pilot, lambda: picker.config is not None and picker.config.name == recipe)
        await pilot.click("#preview-augmentation")
        await wait_for(pilot, lambda: isinstance(app.screen, AugmentPreviewScreen))
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.query(".augment-tile")) == 12, timeout=30)
        return screen

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", data_dir=tmp_path / "no-cifar-here", offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await preview(pilot, app, "resnet18-cifar10")
            title = str(screen.query_one("#augment-title").render())
            assert "crop pad 4, flip" in title and "generated images" in title  # CIFAR is not downloaded here
            original, *draws = [image for _, image in screen.tiles[:4]]
            assert any(not np.array_equal(original, draw) for draw in draws)
            first_draws = [image for _, image in screen.tiles]
            await pilot.press("r")
            await wait_for(pilot, lambda: any(not np.array_equal(a, b) for a, (_, b) in zip(first_draws, screen.tiles)))
            assert "▀" in str(screen.query(".augment-tile .picture").first().render())
            await pilot.press("escape")
            await pilot.press("escape")  # and the picker

            screen = await preview(pilot, app, "cnn3-cifar10")  # no augmentation at all
            assert "none" in str(screen.query_one("#augment-title").render())
            for start in range(0, 12, 4):
                original, *draws = [image for _, image in screen.tiles[start:start + 4]]
                assert all(np.array_equal(original, draw) for draw in draws)
    run(scenario())


def test_full_collections_wait_for_a_pause_in_typing_and_epochs_table_keeps_the_latest(tmp_path: Path) -> None:
    import gc

    from cifartui.ui import app as app_module
    from cifartui.ui.widgets.run_panel import EPOCH_ROWS

    before = gc.get_threshold()
    full_collections: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            full_collections.append(1)

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            assert gc.get_threshold()[2] == app_module.AUTOMATIC_FULL_COLLECTIONS_OFF
            gc.callbacks.append(count)
            try:
                now = time.monotonic()
                app._last_full_collection = now - app_module.FULL_COLLECTION_EVERY_S - 1
                await pilot.press("question_mark")  # the user is at the keys: not now
                assert not app.collect_garbage_when_idle() and not full_collections
                await pilot.press("escape")
                app._last_input = time.monotonic() - app_module.IDLE_BEFORE_COLLECTION_S  # a pause
                assert app.collect_garbage_when_idle() and len(full_collections) == 1
                assert not app.collect_garbage_when_idle()  # one a minute at most
                app._last_input = time.monotonic()  # typing without a pause for five minutes
                app._last_full_collection = time.monotonic() - app_module.FULL_COLLECTION_AT_LATEST_S
                assert app.collect_garbage_when_idle() and len(full_collections) == 2
            finally:
                gc.callbacks.remove(count)

            panel = RunPanel("run-x", "x", id="panel-run-x")
            await app.query_one("#runs").add_pane(TabPane("x", panel))
            await pilot.pause()
            for epoch in range(EPOCH_ROWS + 10):
                panel.apply(ev.EpochEnded(epoch=epoch, step=10 * epoch, train_loss=1.0, train_top1=50.0,
                                          val_loss=None, val_top1=None, val_top5=None, lr=0.1, seconds=1.0))
            await pilot.pause()
            table = panel.query_one("#epochs-table", DataTable)
            assert table.row_count == EPOCH_ROWS
            assert table.get_row_at(0)[0] == "11" and table.get_row_at(EPOCH_ROWS - 1)[0] == str(EPOCH_ROWS + 10)
    run(scenario())
    assert gc.get_threshold() == before  # Python's own full collections again after the app


# --- what a new user meets: the screen shows the newest, the truth, and every key ----------------

def _scripted_app(tmp_path: Path, **kwargs):  # noqa: ANN003, ANN202
    from tests.app_helpers import SilentTrainer

    return make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=SilentTrainer,
                    initial=[app_config()], **kwargs)


def test_newest_epoch_last_log_lines_and_every_dropout_layer_are_on_screen_at_120x40(tmp_path: Path) -> None:
    from textual.widgets import RichLog, Static

    from tests.app_helpers import epochs_script, panel_with

    async def scenario() -> None:
        app = _scripted_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            (handle,) = app.handles.values()
            rates = {f"block{i}.dropout": 0.1 * i for i in range(1, 8)}
            panel = await panel_with(pilot, app, epochs_script(handle.run_dir, app_config(), rates=rates))
            await pilot.pause(0.3)
            table = panel.query_one("#epochs-table", DataTable)
            assert table.row_count == 12
            await wait_for(pilot, lambda: table.max_scroll_y > 0)  # more epochs than rows
            await wait_for(pilot, lambda: table.scroll_y == table.max_scroll_y)  # it follows its newest row
            table.scroll_home(animate=False, immediate=True)  # the user looks back...
            await pilot.pause(1.2)
            assert table.scroll_y == 0  # ...and the table stays there
            panel.apply(ev.EpochEnded(epoch=12, step=130, train_loss=0.1, train_top1=99.0, val_loss=0.1,
                                      val_top1=99.0, val_top5=100.0, lr=0.01, seconds=1.0))
            await pilot.pause(1.2)
            assert table.scroll_y == 0
            table.scroll_end(animate=False, immediate=True)
            assert panel.max_scroll_y == 0  # the whole panel fits: nothing runs under the footer
            log = panel.query_one("#event-log", RichLog)
            footer_top = app.size.height - 1
            assert log.region.bottom <= footer_top and log.scroll_y == log.max_scroll_y
            assert "finished" in str(log.lines[-1].text)
            rates_text = str(panel.query_one("#dropout-rates", Static).render())
            assert all(f"{rate:.2f}" in rates_text for rate in rates.values())  # the last layer too
            assert panel.query_one("#dropout-rates").region.bottom <= panel.query_one(".lower").region.bottom
    run(scenario())


def test_charts_grow_with_the_terminal_height(tmp_path: Path) -> None:
    heights = {}
    for size in [(80, 24), (120, 40), (160, 50)]:
        async def scenario() -> None:
            app = _scripted_app(tmp_path)
            async with app.run_test(size=size) as pilot:
                await pilot.pause(0.3)
                heights[size] = app.query_one("#loss-chart").region.height
        run(scenario())
    assert heights[(80, 24)] < heights[(120, 40)] < heights[(160, 50)]
    assert heights[(160, 50)] - heights[(120, 40)] == 10  # every extra row goes to the charts


def test_status_line_and_log_agree_on_the_step(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = _scripted_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            from tests.app_helpers import panel_with
            (handle,) = app.handles.values()
            panel = await panel_with(pilot, app, [])
            panel.apply(ev.StepMetrics(step=90, epoch=0, loss=1.0, top1=10.0, lr=0.1, images_per_s=100.0,
                                       eta_s=10.0, total_steps=177))
            panel.apply(ev.RunStopped(step=97, epoch=0, reason="stopped from the app", checkpoint="x/last.pt"))
            panel.redraw()
            await pilot.pause(0.1)
            status = str(panel.query_one("#status-line").render())
            assert "STOPPED" in status and "step 97/177" in status
            assert panel.query_one("#progress").progress == 97
    run(scenario())


def test_dropout_rates_from_a_checkpoint_make_no_false_step(tmp_path: Path) -> None:
    from textual.widgets import RichLog

    from tests.app_helpers import panel_with, script

    async def scenario() -> None:
        app = _scripted_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            (handle,) = app.handles.values()
            first = script(handle.run_dir, app_config())[:5]  # RunStarted and four steps, rates 0.3/0.4
            panel = await panel_with(pilot, app, first)
            started = first[0]
            float32 = {k: float(__import__("numpy").float32(v)) for k, v in started.dropout_rates.items()}
            assert float32["3"] == 0.30000001192092896
            resumed = ev.RunStarted(**{**{f: getattr(started, f) for f in started.__dataclass_fields__},
                                       "resumed": True, "step": 8, "dropout_rates": float32})
            panel.apply(resumed)
            panel.apply(ev.DropoutChanged(step=8, epoch=0, old=started.dropout_rates, new=float32))
            for step in (10, 12):
                panel.apply(ev.StepMetrics(step=step, epoch=0, loss=1.0, top1=10.0, lr=0.1, images_per_s=1.0,
                                           eta_s=1.0, total_steps=40))
            assert len(set(panel.dropout_history.ys)) == 1  # a flat line, not a step
            lines = [str(line.text) for line in panel.query_one("#event-log", RichLog).lines]
            assert not any("dropout changed" in line for line in lines)
    run(scenario())


def test_reference_line_sits_on_its_own_labelled_row_and_100_is_off_the_frame(tmp_path: Path) -> None:
    from textual_hires_canvas import Canvas

    from tests.app_helpers import epochs_script, panel_with

    async def scenario() -> None:
        app = _scripted_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            (handle,) = app.handles.values()
            panel = await panel_with(pilot, app, epochs_script(handle.run_dir, app_config(), reference=77.37))
            chart = panel.accuracy_chart
            await pilot.pause(0.2)
            x_low, x_high, y_low, y_high = chart.limits
            assert y_high > 100  # the 100% points are inside the plot, not on its frame
            plot, labels = chart.query_one("#plot", Canvas), chart.query_one("#margin-left", Canvas)
            column, row = chart.get_pixel_from_coordinate((x_low + x_high) / 2, 77.37)
            char, style = plot.get_pixel(column, row)
            assert char == "█" and "yellow" in style  # the reference line on that row
            label_row = "".join(labels.get_pixel(x, row)[0] for x in range(labels.size.width))
            assert "77.37" in label_row  # ...and the label beside it is its own value
            top = chart.get_pixel_from_coordinate(x_high, 100.0)[1]
            assert top > 0  # row 0 is the frame
    run(scenario())


def test_reference_line_is_drawn_for_a_run_opened_from_history(tmp_path: Path) -> None:
    from tests.app_helpers import epochs_script, write_run

    config = app_config()
    runs = tmp_path / "runs"
    run_dir = runs / "20260101-000000-tiny"
    write_run(runs, run_dir.name, config, epochs_script(run_dir, config, reference=77.37))

    async def scenario() -> None:
        app = make_app(runs_dir=runs, offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("h")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
            await pilot.press("enter")
            await wait_for(pilot, lambda: len(app.handles) == 1)
            panel = _panel(app, next(iter(app.handles.values())))
            await wait_for(pilot, lambda: panel.accuracy_chart.limits is not None)
            assert panel.accuracy_chart.target == (77.37, "reference 77.37%")
            assert "reference 77.37%" in str(panel.accuracy_chart.border_title)
            assert panel.status == "finished"
    run(scenario())


def test_both_charts_advance_together_whatever_keys_are_pressed(tmp_path: Path) -> None:
    """A chart that had the focus froze at its first point: its arrow keys switched off autoscaling."""
    import threading

    release = threading.Event()

    class Trickle:
        """Sends a step, waits for the test, then sends the rest a step at a time."""

        def __init__(self, config, run_dir, *, listeners=(), **_):  # noqa: ANN001
            self.listeners, self.run_dir = list(listeners), run_dir

        def run(self):  # noqa: ANN202
            from cifartui.engine.train.trainer import RunResult
            for step in range(1, 60):
                for listener in self.listeners:
                    listener(ev.StepMetrics(step=step, epoch=0, loss=2.0 / step, top1=step, lr=0.1,
                                            images_per_s=100.0, eta_s=1.0, total_steps=60))
                if step == 1:
                    release.wait(20)
                time.sleep(0.02)
            return RunResult("finished", self.run_dir, {})

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=Trickle,
                       initial=[app_config()])
        async with app.run_test(size=(120, 40)) as pilot:
            (handle,) = app.handles.values()
            panel = _panel(app, handle)
            await wait_for(pilot, lambda: panel.ready and panel.accuracy_chart.limits is not None)
            for chart in (panel.loss_chart, panel.accuracy_chart):
                chart.focus()  # charts take no focus...
                assert app.focused is not chart
            await pilot.press("tab", "left", "right", "up", "plus", "minus", "r", "tab", "left", "minus")
            panel.accuracy_chart.action_pan_left()  # ...and a pan that does happen is undone by the next redraw
            panel.accuracy_chart.action_zoom_in()
            release.set()
            await wait_for(pilot, lambda: handle.done.is_set() and panel.step == 59)
            await wait_for(pilot, lambda: all(c.limits and c.limits[1] == 59 for c in (panel.loss_chart,
                                                                                           panel.accuracy_chart)))
            for chart in (panel.loss_chart, panel.accuracy_chart):
                assert chart._x_max == 59 and chart._auto_x_max is False  # the chart's own limits, not the plot's
    run(scenario())


def test_command_palette_offers_every_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = _scripted_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            commands = {c.title: c for c in app.get_system_commands(app.screen)}
            for title in ("Inspect run", "Close tab", "New run", "Resume stopped run", "Full-screen charts",
                          "History", "Compare runs", "Help", "Quit", "Log scale", "Smoothing", "X axis"):
                assert title in commands, title
            assert "as soon as possible" not in commands["Quit"].help  # ours asks when runs train
            actions = {getattr(c.callback, "__name__", "") for c in commands.values()}
            for binding in app.BINDINGS:
                name = binding.action.split("(")[0]
                if name not in ("show_tab",):  # 1-9 pick a tab by number
                    assert f"action_{name}" in actions, name
            await pilot.press("ctrl+p")
            await pilot.press(*"inspect")
            await pilot.pause(0.3)
            assert "Inspect run" in str(app.screen.query("CommandList").first().get_option_at_index(0).prompt)
    run(scenario())


def test_messages_count_runs_in_words(tmp_path: Path) -> None:
    from cifartui.ui.text import plural

    assert plural(1, "run") == "1 run" and plural(2, "run") == "2 runs" and plural(0, "run") == "0 runs"

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, initial=[app_config()])
        async with app.run_test(size=(120, 40)) as pilot:
            (handle,) = app.handles.values()
            await wait_for(pilot, lambda: _panel(app, handle).step > 0, timeout=60)
            app.toggle_comparison(handle.run_dir)
            await pilot.press("q")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            question = str(app.screen.query_one(".question").render())
            assert question.startswith("1 run is training") and "(s)" not in question
            assert str(app.screen.query_one("#yes").label) == "Stop and quit (y)"  # the dialog names its keys
            assert str(app.screen.query_one("#no").label) == "No (n)"
            await pilot.press("n")
            notes = [str(n.message) for n in app._notifications]
            assert any("(1 run)" in n for n in notes) and not any("runs)" in n and "(1 " in n for n in notes)
            handle.control.stop("test over")
            await wait_for(pilot, lambda: handle.done.is_set())
    run(scenario())


def _x_labels_readable(chart) -> bool:  # noqa: ANN001
    import re

    labels = list(chart._x_formatter.labels.values())
    return bool(labels) and all(re.fullmatch(r"-?[\d,]+(\.\d{1,2})?k?|\d+:\d\d(:\d\d)?h?", label) for label in labels)


def test_resume_continues_in_the_runs_own_tab_with_its_history(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, initial=[app_config()])
        async with app.run_test(size=(120, 40)) as pilot:
            (handle,) = app.handles.values()
            panel = _panel(app, handle)
            await wait_for(pilot, lambda: panel.query_one("#epochs-table", DataTable).row_count >= 2, timeout=60)
            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_for(pilot, lambda: handle.done.is_set() and panel.status == "stopped")
            stopped_at = panel.step
            points = len(panel.loss_chart.series["train"])
            rows = panel.query_one("#epochs-table", DataTable).row_count

            await pilot.press("r")  # in the stopped run's tab
            await wait_for(pilot, lambda: panel.status == "running" and panel.step > stopped_at + 3, timeout=60)
            assert list(app.handles) == [handle.run_id] and handle.active  # the same tab, no second one
            assert len(panel.loss_chart.series["train"]) > points  # the history stayed, new points follow it
            assert panel.loss_chart.series["train"].xs[0] < stopped_at / 2  # from the run's start
            assert panel.query_one("#epochs-table", DataTable).row_count >= rows
            assert str(app.run_tabs.get_tab(handle.run_id).label).startswith("1 ▶")
            await wait_for(pilot, lambda: panel.loss_chart.limits is not None)
            assert _x_labels_readable(panel.loss_chart)

            handle.control.stop("test over")
            await wait_for(pilot, lambda: handle.done.is_set() and panel.status == "stopped")
            await pilot.press("h")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
            await pilot.press("r")  # from history: still the same tab
            await wait_for(pilot, lambda: not isinstance(app.screen, HistoryScreen) and panel.status == "running",
                           timeout=60)
            assert list(app.handles) == [handle.run_id]
            handle.control.stop("test over")
            await wait_for(pilot, lambda: handle.done.is_set())
    run(scenario())


def test_resume_offered_at_start_opens_the_run_with_its_history(tmp_path: Path) -> None:
    from cifartui.engine.runs.control import RunControl
    from cifartui.engine.train.trainer import Trainer

    runs = tmp_path / "runs"
    run_dir = runs / "20260101-000000-tiny"
    control = RunControl()
    steps: list[int] = []

    def stop_after_an_epoch(event: ev.Event) -> None:
        if isinstance(event, ev.EpochEnded) and event.epoch >= 1:
            control.stop("interrupted by SIGHUP")
        if isinstance(event, ev.StepMetrics):
            steps.append(event.step)
    Trainer(app_config(), run_dir, listeners=[stop_after_an_epoch], control=control).run()
    checkpoint_step = load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["step"]

    async def scenario() -> None:
        app = make_app(runs_dir=runs)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, ResumeOfferScreen))
            await pilot.press("y")
            await wait_for(pilot, lambda: len(app.handles) == 1)
            (handle,) = app.handles.values()
            panel = _panel(app, handle)
            await wait_for(pilot, lambda: panel.ready and len(panel.loss_chart.series.get("train", ())) > 0)
            train = panel.loss_chart.series["train"]
            assert train.xs[0] == steps[0]  # the history from metrics.jsonl, from the first report on
            await wait_for(pilot, lambda: panel.step > checkpoint_step + 2, timeout=60)
            assert list(app.handles) == [handle.run_id]
            assert panel.query_one("#epochs-table", DataTable).row_count >= 2
            xs = panel.loss_chart.series["train"].xs
            assert xs == sorted(xs)  # reports after the checkpoint were replaced, not drawn twice
            handle.control.stop("test over")
            await wait_for(pilot, lambda: handle.done.is_set())
    run(scenario())


def test_a_followed_run_whose_process_is_gone_says_so_and_r_resumes_it(tmp_path: Path) -> None:
    import socket

    from cifartui.engine.runs.control import RunControl
    from cifartui.engine.train.trainer import Trainer
    from tests.app_helpers import dead_pid

    runs = tmp_path / "runs"
    run_dir = runs / "20260101-000000-tiny"
    control = RunControl()

    def stop_soon(event: ev.Event) -> None:
        if isinstance(event, ev.StepMetrics) and event.step >= 7:
            control.stop("about to be killed")
    Trainer(app_config(), run_dir, listeners=[stop_soon], control=control).run()
    # What `kill -9` leaves: status.json still says running, for a process that is gone.
    (run_dir / "status.json").write_text(json.dumps({"status": "running", "pid": dead_pid(),
                                                     "host": socket.gethostname(), "step": 7}))

    async def scenario() -> None:
        app = make_app(runs_dir=runs, offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("h")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
            await pilot.press("f")
            await wait_for(pilot, lambda: len(app.handles) == 1)
            (handle,) = app.handles.values()
            panel = _panel(app, handle)
            await wait_for(pilot, lambda: panel.status == "interrupted")
            await pilot.pause(1.5)
            assert panel.status == "interrupted" and handle.status == "interrupted"  # not RUNNING forever
            assert "gone" in panel.alert_text and "r" in panel.alert_text
            status = str(panel.query_one("#status-line").render())
            assert "INTERRUPTED" in status and "img/s" not in status and "ETA" not in status
            assert str(app.run_tabs.get_tab(handle.run_id).label) == f"1 {STATUS_MARK['interrupted']} tiny"
            await pilot.press("r")
            await wait_for(pilot, lambda: panel.status == "running" and panel.step > 8, timeout=60)
            assert list(app.handles) == [handle.run_id] and handle.active
            assert panel.alert_text == ""
            handle.control.stop("test over")
            await wait_for(pilot, lambda: handle.done.is_set())
    run(scenario())


def test_a_followed_run_shows_its_own_process_and_its_state(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    from tests.app_helpers import script, write_run

    runs = tmp_path / "runs"
    config = app_config()
    (runs / "20260101-000000-elsewhere").mkdir(parents=True)
    # Another process that trains the run: it holds the run's lock, as a trainer does.
    sleeper = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                                "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
                                "time.sleep(60)", str(runs / "20260101-000000-elsewhere" / ".lock")])
    from cifartui.engine.runs.folders import is_locked

    deadline = time.monotonic() + 30
    while not is_locked(runs / "20260101-000000-elsewhere") and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        run_dir = write_run(runs, "20260101-000000-elsewhere", config, script(runs / "x", config)[:6],
                            status={"status": "running", "pid": sleeper.pid, "host": socket.gethostname()})

        async def scenario() -> None:
            app = make_app(runs_dir=runs, offer_resume=False)
            async with app.run_test(size=(120, 40)) as pilot:
                await pilot.press("h")
                await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
                await pilot.press("f")
                await wait_for(pilot, lambda: len(app.handles) == 1)
                (handle,) = app.handles.values()
                panel = _panel(app, handle)
                await wait_for(pilot, lambda: panel.status == "following")
                system = panel.query_one("#device")
                await wait_for(pilot, lambda: system.pid == sleeper.pid and system.last_process is not None)
                assert system.pid != os.getpid()  # the trainer's process, not the app's
                assert f"pid {sleeper.pid}" in system.line() and "RSS" in system.line()
                await pilot.press("p")  # pausing belongs to that process
                await wait_for(pilot, lambda: any("another process" in str(n.message) for n in app._notifications))
                (run_dir / "status.json").write_text(json.dumps({"status": "paused", "pid": sleeper.pid,
                                                                 "host": socket.gethostname()}))
                await wait_for(pilot, lambda: panel.status == "paused")
                sleeper.kill()
                sleeper.wait()
                await wait_for(pilot, lambda: panel.status == "interrupted")
        run(scenario())
    finally:
        sleeper.kill()


async def _open_picker(pilot, app, recipe: str | None = None) -> PickerScreen:  # noqa: ANN001
    await pilot.press("n")
    await wait_for(pilot, lambda: isinstance(app.screen, PickerScreen))
    picker = app.screen
    if recipe is not None:
        picker.query_one("#recipes", OptionList).highlighted = list(picker.recipes).index(recipe)
        await wait_for(pilot, lambda: picker.recipe == recipe)
    await pilot.pause(0.1)
    return picker


def test_picker_refuses_invalid_values_inline_before_any_run_directory_exists(tmp_path: Path) -> None:
    from textual.widgets import Button, Input, Static

    runs = tmp_path / "runs"

    async def scenario() -> None:
        app = make_app(runs_dir=runs, offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            picker = await _open_picker(pilot, app, "demo-synthetic")
            device = picker.query_one("#set-device", Input)
            device.value = "gpu"
            await pilot.pause(0.2)
            note = str(picker.query_one("#settings-note", Static).render())
            assert "'train.device': unknown device 'gpu'; expected auto, cpu, cuda or cuda:N" in note
            assert device.has_class("-invalid") and picker.query_one("#launch", Button).disabled
            assert picker.config is None
            await pilot.press("ctrl+s")
            await pilot.pause(0.2)
            assert isinstance(app.screen, PickerScreen) and not app.handles
            assert not runs.exists() or not any(runs.iterdir())  # no failed run directory left behind
            device.value = "cuda"  # no GPU here
            await pilot.pause(0.2)
            assert "no CUDA GPU is visible" in str(picker.query_one("#settings-note", Static).render())
            device.value = "cpu"
            picker.query_one("#set-epochs", Input).value = "0"
            await pilot.pause(0.2)
            note = str(picker.query_one("#settings-note", Static).render())
            assert "'train.epochs': 0 is out of range: expected a value in [1, inf]" in note
            picker.query_one("#set-lr", Input).value = "-1"
            await pilot.pause(0.2)
            assert "'optimizer.lr'" in str(picker.query_one("#settings-note", Static).render())
            picker.query_one("#set-epochs", Input).value = "2"
            picker.query_one("#set-lr", Input).value = "0.001"
            await pilot.pause(0.2)
            assert not picker.query_one("#launch", Button).disabled and picker.config is not None
            assert not picker.query_one("#set-device", Input).has_class("-invalid")
    run(scenario())


def test_swapping_the_optimizer_brings_its_learning_rate_and_says_where_values_come_from(tmp_path: Path) -> None:
    from textual.widgets import Input, Select, Static

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            picker = await _open_picker(pilot, app, "demo-synthetic")
            lr = picker.query_one("#set-lr", Input)
            assert lr.value == "0.002" and "recipe" in str(picker.query_one("#from-lr", Static).render())
            picker.query_one("#part-optimizer", Select).value = "sgd-cosine"
            await pilot.pause(0.2)
            assert lr.value == "0.1" and picker.config.optimizer.lr == 0.1  # the optimizer preset's own rate
            assert "sgd-cosine" in str(picker.query_one("#from-lr", Static).render())
            lr.value = "0.05"  # the user's own choice...
            await pilot.pause(0.1)
            picker.query_one("#part-optimizer", Select).value = "adam"
            await pilot.pause(0.2)
            assert lr.value == "0.05" and picker.config.optimizer.lr == 0.05  # ...stays, and says so
            assert "yours" in str(picker.query_one("#from-lr", Static).render())
            note = str(picker.query_one("#settings-note", Static).render())
            assert "lr 0.05 is yours; adam sets" in note and "ctrl+r" in note
            await pilot.press("ctrl+r")
            await pilot.pause(0.2)
            assert picker.config.optimizer.lr == float(lr.value) != 0.05
    run(scenario())


def test_picker_keeps_a_recipe_iteration_budget_unless_epochs_are_typed(tmp_path: Path) -> None:
    from textual.widgets import Input

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            picker = await _open_picker(pilot, app, "elu18-cifar100")
            await wait_for(pilot, lambda: picker.config is not None)
            assert picker.config.train.max_steps == 165_000  # the recipe's length, not silently epochs
            picker.query_one("#set-epochs", Input).value = "3"
            await pilot.pause(0.2)
            assert picker.config.train.epochs == 3
    run(scenario())


def test_picker_fits_80x24_names_do_not_wrap_and_marks_recipes(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from textual.widgets import Static

    user = tmp_path / "config" / "presets"
    user.mkdir(parents=True)
    (user / "my-recipe.toml").write_text((Path(__file__).parent.parent / "presets" / "demo-synthetic.toml").read_text())

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False)
        async with app.run_test(size=(80, 24)) as pilot:
            picker = await _open_picker(pilot, app)
            assert picker.recipe == "demo-synthetic"  # a quick recipe is the first choice
            recipes = picker.query_one("#recipes", OptionList)
            await wait_for(pilot, lambda: picker.needs_download)
            await pilot.pause(0.2)
            assert recipes.option_count == len(picker.recipes)
            assert len(recipes._lines) == recipes.option_count  # one line each: no name wraps
            prompts = {o.id: str(o.prompt) for o in recipes.options}
            assert prompts["resnet18-dropout-cifar10"].startswith("resnet18-dropout-cifar10")
            assert "⤓" in prompts["cnn3-cifar10"] and "⤓" not in prompts["demo-synthetic"]  # needs a download
            assert "★" in prompts["my-recipe"]  # the user's own
            recipes.highlighted = list(picker.recipes).index("cnn3-cifar10")
            await pilot.pause(0.2)
            about = str(picker.query_one("#recipe-about", Static).render())
            assert "3-conv CNN" in about or "cnn3" in about
            preview = str(picker.query_one("#preview", Static).render())
            assert "needs download" in preview and "d (outside a text field)" in preview
            recipes.focus()
            await pilot.press("d")  # the remedy, inside the app
            await pilot.pause(0.2)
            assert picker.config.dataset.name == "synthetic"
    run(scenario())


def test_picker_remembers_the_last_launch_and_estimates_from_earlier_runs(tmp_path: Path) -> None:
    from textual.widgets import Input, Select, Static

    from tests.app_helpers import epochs_script, write_run

    runs = tmp_path / "runs"
    config = app_config()
    run_dir = runs / "20260101-000000-tiny"
    write_run(runs, run_dir.name, config, epochs_script(run_dir, config))  # cnn3 at 2,000 images/s here

    async def scenario() -> None:
        app = make_app(runs_dir=runs, offer_resume=False, trainer_factory=lambda *a, **k: __import__(
            "tests.app_helpers", fromlist=["SilentTrainer"]).SilentTrainer(*a, **k))
        async with app.run_test(size=(120, 40)) as pilot:
            picker = await _open_picker(pilot, app, "cnn3-cifar10")
            await wait_for(pilot, lambda: picker.paces)
            preview = str(picker.query_one("#preview", Static).render())
            assert "of training (at 2,000 images/s, from 1 earlier run here)" in preview
            picker.query_one("#part-dataset", Select).value = "synthetic"
            await pilot.pause(0.2)
            picker.query_one("#set-epochs", Input).value = "3"
            picker.query_one("#set-device", Input).value = "cpu"
            await pilot.pause(0.2)
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: len(app.handles) == 1)
            picker = await _open_picker(pilot, app)
            assert picker.recipe == "cnn3-cifar10"
            assert picker.query_one("#part-dataset", Select).value == "synthetic"
            assert picker.query_one("#set-epochs", Input).value == "3" and "epochs" in picker.edited
    run(scenario())


def _compare_runs(runs: Path) -> list[Path]:
    import dataclasses

    from tests.app_helpers import epochs_script, write_run

    made = []
    for index, (lr, model, dataset) in enumerate([(0.02, "cnn3", "synthetic"), (0.05, "cnn3", "synthetic"),
                                                  (0.05, "vgg11", "synthetic")]):
        config = app_config()
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, name=model),
                                     optimizer=dataclasses.replace(config.optimizer, lr=lr),
                                     train=dataclasses.replace(config.train, batch_size=32 + index, seed=index))
        run_dir = runs / f"2026010{index + 1}-000000-tiny"
        made.append(write_run(runs, run_dir.name, config, epochs_script(run_dir, config, epochs=4)))
    return made


def test_compare_labels_runs_by_what_differs_and_keeps_its_table_still(tmp_path: Path) -> None:
    import dataclasses

    from tests.app_helpers import epochs_script

    runs = tmp_path / "runs"
    paths = _compare_runs(runs)
    assert differing_settings([json.loads((p / "config.json").read_text()) for p in paths])[:2] == [
        "model.name", "optimizer.lr"]  # by importance, not alphabetically

    async def scenario() -> None:
        app = make_app(runs_dir=runs, offer_resume=False)
        app.comparison = list(paths)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("v")
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
            screen = app.screen
            table = screen.query_one("#rank-table", DataTable)
            await wait_for(pilot, lambda: table.row_count == 3)
            labels = [str(c.label) for c in table.columns.values()]
            assert labels[:7] == ["#", "run", "best val top-1", "test top-1", "epochs", "time", "images/s"]
            assert labels[7:] == ["model.name", "optimizer.lr", "train.batch_size", "train.seed"]
            names = {str(table.get_row_at(i)[1]) for i in range(3)}
            assert names == {"cnn3 · lr 0.02 · batch 32 · seed 0", "cnn3 · lr 0.05 · batch 33 · seed 1",
                             "vgg11 · lr 0.05 · batch 34 · seed 2"}
            assert str(table.get_row_at(0)[4]) == "4/4" and str(table.get_row_at(0)[6]) == "2,000"

            table.move_cursor(row=1)
            table.scroll_to(x=40, animate=False, immediate=True)
            await pilot.pause(0.1)
            scrolled = table.scroll_x
            assert scrolled > 0
            with (paths[0] / "metrics.jsonl").open("a") as handle:  # a live run reports an epoch
                handle.write(json.dumps(ev.EpochEnded(epoch=4, step=50, train_loss=0.1, train_top1=99.0,
                                                      val_loss=0.1, val_top1=99.5, val_top5=100.0, lr=0.01,
                                                      seconds=1.0).to_json()) + "\n")
            await pilot.pause(2.5)  # the screen reads runs again every two seconds
            assert table.scroll_x == scrolled and table.cursor_row == 1  # no jump back to the first column
            assert "5/4" in {str(table.get_row_at(i)[4]) for i in range(3)}

            await pilot.press("space")  # hide the selected run from the chart
            chart = screen.query_one("#compare-chart")
            hidden = str(table.get_row_at(1)[1])
            assert "(hidden)" in hidden and len(chart.series) == 2
            await pilot.press("p")  # pin it: first in the table whatever its rank
            assert "📌" in str(table.get_row_at(0)[1])
            await pilot.press("d")
            await wait_for(pilot, lambda: table.row_count == 2)
            assert len(app.comparison) == 2
            await pilot.press("slash")
            await pilot.press(*"vgg")
            await wait_for(pilot, lambda: table.row_count == 1)
            await pilot.press("escape")
            await wait_for(pilot, lambda: table.row_count == 2)
            assert isinstance(app.screen, CompareScreen)
    run(scenario())

    other = dataclasses.replace(app_config(), dataset=dataclasses.replace(app_config().dataset, classes=20))

    async def mixed() -> None:
        from tests.app_helpers import write_run
        cifar100 = dataclasses.replace(other, dataset=dataclasses.replace(other.dataset, name="cifar100", classes=100))
        cifar = write_run(runs, "20260109-000000-c100", cifar100, epochs_script(runs / "c100", cifar100, epochs=2))
        app = make_app(runs_dir=runs, offer_resume=False)
        app.comparison = [paths[0], cifar]
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("v")
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
            note = str(app.screen.query_one("#compare-note").render())
            assert "different datasets (cifar100, synthetic)" in note
    run(mixed())


def test_history_columns_sort_filter_note_rename_and_trash(tmp_path: Path) -> None:
    from textual.widgets import Input, Static

    from cifartui.ui.screens.dialogs import TextPromptScreen
    from cifartui.ui.screens.history import TRASH

    runs = tmp_path / "runs"
    paths = _compare_runs(runs)

    async def scenario() -> None:
        app = make_app(runs_dir=runs, offer_resume=False)
        async with app.run_test(size=(160, 40)) as pilot:
            welcome = str(app.query_one("#welcome", Static).render())
            assert "3 runs in" in welcome and "No runs yet" not in welcome  # only when there are none
            await pilot.press("h")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
            screen = app.screen
            table = screen.query_one("#runs-table", DataTable)
            labels = [str(c.label) for c in table.columns.values()]
            assert labels[:11] == ["run", "status", "model", "optimizer", "augmentation", "epochs", "best val", "test",
                                   "started", "duration", "note"]
            first = table.get_row_at(0)
            assert first[0] == paths[2].name  # newest first
            assert first[2] == "vgg11" and first[3] == "sgd 0.05" and first[4] == "crop4+flip+cutout"
            assert first[8] == "2026-01-03 00:00" and first[9] == "0:44"  # from its first event to its last
            await pilot.press("s")  # by best validation accuracy
            assert "sorted by best val" in str(screen.query_one("#history-title").render())
            await pilot.press("slash", *"vgg")
            await wait_for(pilot, lambda: table.row_count == 1)
            assert "1 of 3 runs match 'vgg'" in str(screen.query_one("#history-title").render())
            await pilot.press("enter")  # keeps the filter, back to the table
            await pilot.press("e")
            await wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen))
            app.screen.query_one(Input).value = "bigger model"
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
            assert (paths[2] / "note.txt").read_text().strip() == "bigger model"
            assert table.get_row_at(0)[10] == "bigger model"
            await pilot.press("R")
            await wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen))
            app.screen.query_one(Input).value = "20260103-000000-vgg-try"
            await pilot.press("enter")
            await wait_for(pilot, lambda: (runs / "20260103-000000-vgg-try").is_dir())
            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_for(pilot, lambda: (runs / TRASH / "20260103-000000-vgg-try").is_dir())
            assert table.row_count == 0
            assert "0 of 2 runs match" in str(screen.query_one("#history-title").render())
            assert "trash: 1 run" in str(screen.query_one("#history-title").render())
            await pilot.press("u")
            await wait_for(pilot, lambda: (runs / "20260103-000000-vgg-try").is_dir())
            await pilot.press("d", "y")
            await wait_for(pilot, lambda: not (runs / "20260103-000000-vgg-try").exists())
            await pilot.press("x")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_for(pilot, lambda: not (runs / TRASH).exists())
    run(scenario())


def test_history_refuses_to_delete_a_run_that_trains(tmp_path: Path) -> None:
    import os
    import socket

    from tests.app_helpers import script, write_run

    runs = tmp_path / "runs"
    write_run(runs, "20260101-000000-live", app_config(), script(runs / "x", app_config())[:4],
              status={"status": "running", "pid": os.getpid(), "host": socket.gethostname()})

    async def scenario() -> None:
        app = make_app(runs_dir=runs, offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("h")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
            await pilot.press("d")
            await pilot.pause(0.2)
            assert isinstance(app.screen, HistoryScreen)  # no question: it is refused
            assert any("being trained" in str(n.message) for n in app._notifications)
            assert (runs / "20260101-000000-live").is_dir()
    lock = RunLock(next(runs.iterdir())).acquire()  # the training process holds the run's lock
    try:
        run(scenario())
    finally:
        lock.release()


def test_starting_run_shows_its_phase_with_elapsed_time_then_its_current_pace(tmp_path: Path) -> None:
    from tests.app_helpers import panel_with

    async def scenario() -> None:
        app = _scripted_app(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            panel = await panel_with(pilot, app, [])
            now = time.time()
            panel.apply(ev.PhaseStarted("loading data", "cifar10", time=now - 7))
            panel.redraw()
            await pilot.pause(0.1)
            status = str(panel.query_one("#status-line").render())
            assert "STARTING" in status and "loading data (cifar10) 0:00:07" in status
            # The elapsed time moves on by itself (the panel redraws once a second).
            await wait_for(pilot, lambda: "0:00:08" in str(panel.query_one("#status-line").render()), timeout=3)
            panel.apply(ev.PhaseStarted("building model", "resnet18", time=now))
            panel.redraw()
            assert "building model (resnet18)" in str(panel.query_one("#status-line").render())
            for step, ms in ((10, 50.0), (20, 20.0)):
                panel.apply(ev.StepMetrics(step=step, epoch=0, loss=1.0, top1=10.0, lr=0.1, images_per_s=500.0,
                                           eta_s=999.0, total_steps=1010, recent_images_per_s=64_000 / ms,
                                           ms_per_step=ms))
            panel.redraw()
            await pilot.pause(0.1)
            status = str(panel.query_one("#status-line").render())
            assert "RUNNING" in status and "building" not in status
            pace = 50.0 + 0.3 * (20.0 - 50.0)  # the current pace, a little smoothed; not the session's 500 img/s
            assert panel.ms_per_step == pace
            assert f"{64_000 / 50.0 + 0.3 * (64_000 / 20 - 64_000 / 50):,.0f} img/s" in status
            assert panel.eta_s == 990 * pace / 1000
            assert "ETA 0:00:40" in status and len(status) <= 78  # fits 80 columns, ETA included
    run(scenario())


def test_chart_keys_axis_smoothing_log_and_the_full_screen_cursor(tmp_path: Path) -> None:
    from cifartui.ui.screens.chart_view import ChartScreen
    from tests.app_helpers import epochs_script, panel_with

    async def scenario() -> None:
        app = _scripted_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            (handle,) = app.handles.values()
            panel = await panel_with(pilot, app, epochs_script(handle.run_dir, app_config(), reference=77.37))
            chart = panel.loss_chart
            assert chart.border_subtitle == "x: step · EMA 0.6"
            assert _x_labels_readable(chart)
            assert len(chart.epoch_marks) == 12
            await pilot.press("x")
            assert chart.border_subtitle.startswith("x: epoch") and chart.limits[1] == 12
            await pilot.press("x")
            assert chart.border_subtitle.startswith("x: time") and chart.limits[1] == 120  # seconds since the start
            assert all(":" in label for label in chart._x_formatter.labels.values())
            await pilot.press("x", "e")
            assert chart.smoothing == 0.8 and "EMA 0.8" in chart.border_subtitle
            await pilot.press("l")
            assert chart.log_scale and chart.border_subtitle.endswith("· log")
            assert chart.limits[3] < 1  # log10 of the loss
            assert not panel.accuracy_chart.log_scale
            assert "(log)" in str(panel.query_one("#lr-label").render())

            await pilot.press("z")
            await wait_for(pilot, lambda: isinstance(app.screen, ChartScreen))
            screen = app.screen
            big = screen.chart
            await wait_for(pilot, lambda: big.limits is not None)
            readout = str(screen.query_one("#readout").render())
            assert readout.startswith("step 120:") and "train" in readout and "val" in readout
            await pilot.press("left", "left", "shift+left")
            assert big.cursor < 120 and screen.cursor_column == 12
            await pilot.press("home")
            assert big.cursor == big.limits[0]
            await pilot.press("tab")
            assert screen.chart_name == "accuracy" and "reference 77.37%" in str(big.border_title)
            await pilot.press("tab")
            assert screen.chart_name == "learning rate" and "learning rate" in str(screen.query_one("#readout").render())
            await pilot.press("escape")
            assert not isinstance(app.screen, ChartScreen)
    run(scenario())


def test_tab_keys_numbers_brackets_f1_and_f10(tmp_path: Path) -> None:
    from tests.app_helpers import SilentTrainer

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=SilentTrainer,
                       initial=[app_config(), app_config(), app_config()])
        async with app.run_test(size=(120, 40)) as pilot:
            ids = list(app.handles)
            await wait_for(pilot, lambda: all(h.done.is_set() for h in app.handles.values()))
            await pilot.pause(0.2)
            assert app.run_tabs.active == ids[2]
            await pilot.press("1")
            assert app.run_tabs.active == ids[0]
            await pilot.press("]", "]")
            assert app.run_tabs.active == ids[2]
            await pilot.press("]")
            assert app.run_tabs.active == ids[0]  # round again
            await pilot.press("[")
            assert app.run_tabs.active == ids[2]
            await pilot.press("2")
            assert app.run_tabs.active == ids[1] and app.sub_title == app.handles[ids[1]].run_dir.name
            labels = [str(app.run_tabs.get_tab(i).label) for i in ids]
            assert [label.split()[0] for label in labels] == ["1", "2", "3"]
            await pilot.press("w")  # close tab 2: the others are numbered again
            await pilot.pause(0.2)
            assert [str(app.run_tabs.get_tab(i).label).split()[0] for i in (ids[0], ids[2])] == ["1", "2"]
            await pilot.press("f1")
            await wait_for(pilot, lambda: app.screen.__class__.__name__ == "HelpScreen")
            await pilot.press("f1")
            await pilot.press("f10")
            await wait_for(pilot, lambda: not app.is_running)
    run(scenario())


def test_system_pane_shows_gpu_figures_from_nvml_and_fails_soft_without_a_driver(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cifartui.ui.widgets import system
    from cifartui.ui.widgets.system import GpuSample, Nvml, SystemPanel

    without = Nvml()  # this machine has no NVIDIA driver
    assert without.sample(0) is None and without.unavailable.startswith(("no NVIDIA driver", "GPU figures need"))

    class FakeNvml:
        unavailable = ""

        def __init__(self) -> None:
            self.calls = 0

        def sample(self, index: int) -> GpuSample:
            self.calls += 1
            return GpuSample(name="NVIDIA H100", utilisation=50.0 + self.calls, memory_used=30 * 2**30,
                             memory_total=80 * 2**30, temperature=60.0 + self.calls)

    fake = FakeNvml()

    async def scenario() -> None:
        app = _scripted_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            from tests.app_helpers import panel_with
            panel = await panel_with(pilot, app, [])
            pane = panel.query_one("#device", SystemPanel)
            monkeypatch.setattr(system, "_nvml", without)
            pane.device = "cuda:0"
            pane.sample()
            assert pane.line().startswith("cuda:0: no NVIDIA driver") or "nvidia-ml-py" in pane.line()
            assert "RSS" in pane.line()  # the process figures are there all the same
            monkeypatch.setattr(system, "_nvml", fake)
            for _ in range(3):
                pane.sample()
            line = pane.line()
            assert line.startswith("GPU0 NVIDIA H100  util 5") and "memory 30.0/80.0 GiB" in line and "°C" in line
            assert len(pane.history["gpu"]) == 3 and len(pane.history["temperature"]) == 3
            await pilot.press("m")  # the figures over time
            await pilot.pause(0.1)
            assert pane.has_class("expanded") and pane.query_one("#system-graphs").display
            shown = list(pane.query_one("#spark-gpu").data)
            assert shown == list(pane.history["gpu"].ys) and shown == sorted(shown) and len(shown) >= 3
    run(scenario())


def test_training_threads_run_at_the_screens_priority(tmp_path: Path) -> None:
    import os
    import sys

    seen: list[int] = []

    class Recorder:
        def __init__(self, config, run_dir, **_):  # noqa: ANN001
            self.run_dir = run_dir

        def run(self):  # noqa: ANN202
            from cifartui.engine.train.trainer import RunResult
            seen.append(os.getpriority(os.PRIO_PROCESS, __import__("threading").get_native_id()))
            return RunResult("finished", self.run_dir, {})

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=Recorder,
                       initial=[app_config()])
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: seen)
    run(scenario())
    if sys.platform.startswith("linux"):
        # benchmarks/thread_priority.py: a nicer training thread starved under load (README, Speed).
        assert seen == [os.getpriority(os.PRIO_PROCESS, 0)]


def test_at_80x24_nothing_is_cut_status_line_tab_label_and_footer(tmp_path: Path) -> None:
    from textual.widgets._footer import FooterKey

    from tests.app_helpers import epochs_script, panel_with

    async def scenario() -> None:
        app = _scripted_app(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            (handle,) = app.handles.values()
            events = epochs_script(handle.run_dir, app_config())
            panel = await panel_with(pilot, app, [e for e in events if not isinstance(e, ev.RunFinished)][:40])
            panel.status = "running"
            panel.redraw()
            await pilot.pause(0.2)
            status = str(panel.query_one("#status-line").render())
            assert "ETA" in status and len(status) <= panel.content_region.width
            tab = app.run_tabs.get_tab(handle.run_id)
            assert tab.region.width >= len(str(tab.label)) and tab.region.right <= 80
            keys = list(app.screen.query(FooterKey))
            assert [k.key_display for k in keys][-2:] == ["?", "q"]
            assert all(k.region.right <= 80 and k.region.width > 0 for k in keys)  # the last key too
            await pilot.press("h")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
            await pilot.pause(0.2)
            keys = list(app.screen.query(FooterKey))
            assert keys and all(k.region.right <= 80 and k.region.width > 0 for k in keys)
    run(scenario())


def test_inspect_shows_its_evaluation_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from textual.widgets import ProgressBar

    from cifartui.ui.screens import inspect as inspect_module

    run_dir = _trained_run(tmp_path)
    monkeypatch.setattr(inspect_module, "EVALUATION_BATCH", 30)
    seen: list[tuple[str, int, int]] = []
    original = inspect_module.InspectScreen._progress

    def record(self, phase: str, done: int, total: int) -> None:  # noqa: ANN001
        seen.append((phase, done, total))
        original(self, phase, done, total)
    monkeypatch.setattr(inspect_module.InspectScreen, "_progress", record)

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", data_dir=tmp_path / "data", offer_resume=False)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await open_inspect(pilot, app, run_dir)
            assert not screen.query_one("#inspect-progress", ProgressBar).display  # gone once done
    run(scenario())
    assert seen[0] == ("loading the checkpoint and the test set", 0, 0)
    assert [done for _, done, _ in seen[1:]] == [30, 60, 90, 100] and seen[-1][2] == 100


def test_following_a_run_that_is_still_loading_its_data_keeps_following(tmp_path: Path) -> None:
    import os
    import socket

    from tests.app_helpers import script, write_run

    runs = tmp_path / "runs"
    config = app_config()
    events = script(runs / "x", config)
    run_dir = write_run(runs, "20260101-000000-starting", config, [ev.PhaseStarted("loading data", "synthetic")])
    (run_dir / "status.json").unlink()  # the trainer writes it once its data and model are ready

    async def scenario() -> None:
        app = make_app(runs_dir=runs, offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("h")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
            await pilot.press("f")
            await wait_for(pilot, lambda: len(app.handles) == 1)
            (handle,) = app.handles.values()
            panel = _panel(app, handle)
            await pilot.pause(1.5)
            assert panel.status == "starting" and handle.run_id in app.registry.follow_timers
            assert "loading data" in str(panel.query_one("#status-line").render())
            (run_dir / "status.json").write_text(json.dumps({"status": "running", "pid": os.getpid(),
                                                             "host": socket.gethostname()}))
            with (run_dir / "metrics.jsonl").open("a") as stream:
                for event in events[:6]:
                    stream.write(json.dumps(event.to_json()) + "\n")
            await wait_for(pilot, lambda: panel.status == "following" and panel.step == 10)
    lock = RunLock(next(runs.iterdir())).acquire()  # the training process holds the run's lock
    try:
        run(scenario())
    finally:
        lock.release()


def test_a_late_model_summary_for_an_earlier_choice_does_not_replace_the_current_one(tmp_path: Path) -> None:
    from textual.widgets import Static

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            picker = await _open_picker(pilot, app, "demo-synthetic")
            summary = picker.query_one("#model-summary", Static)
            await wait_for(pilot, lambda: "257,978 parameters" in str(summary.render()))
            picker._summaries[("an earlier model", 10)] = "[b]model summary:[/] 9 parameters"
            picker._show_summary(("an earlier model", 10))  # a worker for an earlier recipe, finishing late
            await pilot.pause(0.1)
            assert "257,978 parameters" in str(summary.render())
    run(scenario())
