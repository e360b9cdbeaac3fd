"""Compare draws a sweep's seed groups as mean +- std, and can put time spent training on its x axis."""

from __future__ import annotations

import statistics
from pathlib import Path

from cifartui.ui.app import make_app
from cifartui.ui.screens.compare import CompareScreen, training_seconds
from tests.app_helpers import run, wait_for
from tests.sweep_helpers import fake_sweep


def test_seed_groups_are_drawn_as_their_mean_in_a_band_of_one_std(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    sweep_dir = fake_sweep(runs, "20260101-120000-sweep-tiny", values=(0.02, 0.05), seeds=(0, 1, 2))
    members = sorted(p for p in sweep_dir.glob("*/*") if (p / "config.json").is_file())
    app = make_app(runs_dir=runs, offer_resume=False)

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            app.push_screen(CompareScreen(members, colour_keys=["optimizer.lr"]))
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.query("#rank-table")
                           and app.screen.query_one("#rank-table").row_count == 6)
            screen = app.screen
            chart = screen.query_one("#compare-chart")
            assert len(chart.series) == 6
            await pilot.press("G")
            await pilot.pause(0.2)
            assert sorted(chart.series) == ["lr 0.02 · mean of 3 seeds", "lr 0.05 · mean of 3 seeds"]
            for lr, name in ((0.02, "lr 0.02 · mean of 3 seeds"), (0.05, "lr 0.05 · mean of 3 seeds")):
                # fake_sweep: seed s reaches 50 + 100 lr + s - 3 + epoch at each epoch
                expected = [[50 + 100 * lr + seed - 3 + epoch for seed in (0, 1, 2)] for epoch in range(4)]
                assert chart.series[name].ys == [statistics.fmean(v) for v in expected]
                xs, lows, highs = chart.bands[name]
                assert xs == chart.series[name].xs == [1.0, 2.0, 3.0, 4.0]
                assert [h - m for h, m in zip(highs, chart.series[name].ys)] == [statistics.stdev(v) for v in expected]
                assert [m - lo for lo, m in zip(lows, chart.series[name].ys)] == [statistics.stdev(v) for v in expected]
            assert screen.query_one("#rank-table").row_count == 6  # the ranking still lists every run
            assert "mean" in str(screen.query_one("#compare-note").render())
            await pilot.press("G")
            await pilot.pause(0.2)
            assert len(chart.series) == 6 and not chart.bands

    run(scenario())


def test_the_x_axis_offers_time_spent_training(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    sweep_dir = fake_sweep(runs, "20260101-120000-sweep-tiny")
    members = sorted(p for p in sweep_dir.glob("*/*") if (p / "config.json").is_file())
    app = make_app(runs_dir=runs, offer_resume=False)

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            app.push_screen(CompareScreen(members))
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.query("#rank-table")
                           and app.screen.query_one("#rank-table").row_count == 4)
            chart = app.screen.query_one("#compare-chart")
            assert chart.x_axis == "epoch"
            await pilot.press("x")
            await pilot.pause(0.2)
            assert chart.x_axis == "time"
            seconds = sorted(training_seconds(app.screen.summaries[members[0]].epochs).values())
            assert all(series.xs == seconds for series in chart.series.values())
            await pilot.press("x")
            await pilot.pause(0.2)
            assert chart.x_axis == "step"

    run(scenario())


def test_training_seconds_count_an_epoch_trained_again_once() -> None:
    epochs = [{"epoch": 0, "seconds": 10.0}, {"epoch": 1, "seconds": 12.0}, {"epoch": 1, "seconds": 11.0},
              {"epoch": 2, "seconds": 9.0}]
    assert training_seconds(epochs) == {0: 10.0, 1: 21.0, 2: 30.0}
