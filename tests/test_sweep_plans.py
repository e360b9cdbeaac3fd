"""How big a sweep's plan may be, and what random draws on a narrow range give."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifartui.cli import main
from cifartui.config import ConfigError
from cifartui.engine.orchestration.sweep import SweepRequest, plan_sweep
from tests.conftest import tiny_config


def test_random_draws_on_an_integer_range_are_distinct_settings() -> None:
    plan, runs = plan_sweep(tiny_config(), SweepRequest(ranges=("train.batch_size=16:19",), random=4, seeds=2))
    drawn = [run.label["settings"]["train.batch_size"] for run in runs if run.label["seed"] == 0]
    assert sorted(drawn) == [16, 17, 18, 19]  # every value once, none taken twice as if it were a seed
    assert len(runs) == 8 == plan["runs"]


def test_more_random_draws_than_the_ranges_hold_are_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        plan_sweep(tiny_config(), SweepRequest(ranges=("train.batch_size=16:18",), grids=("train.epochs=1,2",),
                                               random=7))
    assert "--random" in str(refused.value) and "only 6 distinct settings" in str(refused.value)


def test_a_huge_plan_is_refused_at_once_with_its_size_and_how_to_lift_the_limit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    code = main(["sweep", "demo-synthetic", "--seeds", "20000", "--grid", "optimizer.lr=0.01,0.1", "--device", "cpu",
                 "--runs-dir", str(runs)])
    captured = capsys.readouterr()
    assert code == 2
    assert "Planning 40,000 runs (2 settings x 20,000 seeds)" in captured.out
    err = " ".join(captured.err.split())
    assert "40,000 runs" in err and "--max-runs 40000" in err and "--yes" in err and "Traceback" not in err
    assert not runs.exists() or not list(runs.iterdir())


def test_max_runs_lowers_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sweep", "demo-synthetic", "--seeds", "3", "--grid", "optimizer.lr=0.01,0.1", "--device", "cpu",
                 "--max-runs", "5", "--runs-dir", str(tmp_path / "runs")])
    assert code == 2 and "more than the 5 allowed" in " ".join(capsys.readouterr().err.split())
    assert main(["sweep", "demo-synthetic", "--seeds", "3", "--max-runs", "0", "--device", "cpu"]) == 2
    assert "--max-runs" in capsys.readouterr().err
