"""Pilot tests of the real app: launch, pause, resume, stop, two runs, compare, failures, NaN, quit."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, OptionList, TabPane

from cifartui.engine import events as ev
from cifartui.engine.checkpoint import load_checkpoint
from cifartui.engine.runs import read_status
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
            assert str(app.query_one("#runs").get_tab(handle.run_id).label).startswith(STATUS_MARK["stopped"])
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
        from cifartui.engine.trainer import Trainer
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
    app_module._exit_soon = lambda seconds: exits.append(seconds)  # the watchdog must not end pytest
    try:
        run(first_session())
    finally:
        app_module._exit_soon = original
    assert exits == [5.0]
    run(second_session())


def _finished_run(tmp_path: Path, name: str, lr: float) -> Path:
    from cifartui.cli import main
    runs = tmp_path / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    assert main(["train", "demo-synthetic", "--epochs", "2", "--set", "dataset.train_size=300", "--lr", str(lr),
                 "--runs-dir", str(runs), "--device", "cpu"]) == 0
    (new,) = set(runs.iterdir()) - before
    return new


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
            assert set(chart.series) == {slow.name, fast.name}
            ranking = screen.query_one("#rank-table", DataTable)
            assert ranking.row_count == 2
            labels = [str(c.label) for c in ranking.columns.values()]
            assert "optimizer.lr" in labels  # the one setting that differs is a column
            best = [json.loads((p / "summary.json").read_text())["best_val_top1"] for p in (slow, fast)]
            first_row = ranking.get_row_at(0)
            assert str(first_row[1]) == (slow.name if best[0] >= best[1] else fast.name)
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
    run(scenario())


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

    from cifartui.ui import app as app_module
    from cifartui.ui.app import spread_across_gpus

    placed: list[str] = []

    class HoldingTrainer:
        """Records where the app put the run and trains until stopped."""

        def __init__(self, config, run_dir, *, control=None, **_):  # noqa: ANN001
            placed.append(config.train.device)
            self.control = control

        def run(self):  # noqa: ANN202
            while self.control.stop_reason is None:
                time.sleep(0.01)

    monkeypatch.setattr(app_module, "gpu_count", lambda: 2)
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

    from cifartui.engine.trainer import Trainer
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
