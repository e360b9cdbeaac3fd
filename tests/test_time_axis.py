"""The charts' time axis counts time spent training: pauses, and the gap from a stop or kill to the resume, are left out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from cifartui.engine.runs import events as ev
from cifartui.ui.app import make_app
from cifartui.ui.series import TrainingClock
from tests.app_helpers import SilentTrainer, app_config, panel_with, run, script


def test_the_clock_leaves_out_pauses_stops_and_the_time_before_a_resume() -> None:
    clock = TrainingClock()
    clock.started(1000.0, resumed=False)
    clock.at(10, 1010.0)
    clock.paused(1010.0)
    clock.resumed(4610.0)            # an hour paused
    clock.at(20, 4620.0)
    clock.paused(4620.0)             # stopped
    clock.started(90_000.0, resumed=True)
    clock.at(30, 90_010.0)
    clock.started(200_000.0, resumed=True)  # killed after step 30, resumed much later: no pause event at all
    clock.at(40, 200_010.0)
    assert clock.seconds_at(np.array([10.0, 20.0, 30.0, 40.0])).tolist() == [10.0, 20.0, 30.0, 40.0]


def test_a_run_paused_for_an_hour_shows_no_hour_on_its_time_axis(tmp_path: Path) -> None:
    config = app_config()
    events = script(tmp_path / "runs" / "x", config)
    t0 = events[0].time
    paused: list[ev.Event] = []
    for event in events:  # paused for an hour once epoch 1 has ended at step 20
        if getattr(event, "step", 0) > 20 or isinstance(event, ev.RunFinished):
            if not any(isinstance(e, ev.RunPaused) for e in paused):
                paused.append(ev.RunPaused(step=20, epoch=1, reason="paused from the app", time=t0 + 20))
                paused.append(ev.RunResumed(step=20, epoch=1, time=t0 + 3620))
            event = dataclasses.replace(event, time=event.time + 3600.0)
        paused.append(event)
    paused = [e for e in paused if not isinstance(e, ev.RunFinished)]

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=SilentTrainer,
                       initial=[config])
        async with app.run_test(size=(120, 40)) as pilot:
            panel = await panel_with(pilot, app, paused)
            panel.x_axis = "time"
            panel.apply_chart_settings()
            assert panel.steps_to_axis(np.array([20.0, 40.0])).tolist() == [20.0, 40.0]
            panel.redraw()
            await pilot.pause(0.1)
            low, high = panel.loss_chart.x_range()
            assert high <= 41.0  # the x axis spans the 40 s of training, not the hour paused

    run(scenario())
