"""A branch started from the app follows the app's detach setting, like any other launch."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from cifartui.cli import main
from cifartui.engine.runs.folders import read_config, read_metrics
from cifartui.engine.runs.settings import effective_config
from cifartui.ui import background
from cifartui.ui.app import make_app
from cifartui.ui.screens.branch import launch_branch
from tests.app_helpers import run, wait_for


def _parent(runs: Path) -> Path:
    before = set(runs.iterdir()) if runs.exists() else set()
    assert main(["train", "demo-synthetic", "--epochs", "1", "--set", "dataset.train_size=256", "--runs-dir",
                 str(runs), "--device", "cpu"]) == 0
    (parent,) = set(runs.iterdir()) - before
    return parent


def test_a_branch_from_the_app_trains_in_a_process_of_its_own_when_runs_are_detached(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    parent = _parent(runs)
    checkpoint = parent / "checkpoints" / "last.pt"

    async def scenario() -> None:
        app = make_app(runs_dir=runs, offer_resume=False, detach=True)
        async with app.run_test(size=(120, 40)) as pilot:
            handle = launch_branch(app, parent, checkpoint, {"optimizer.lr": 0.02, "train.epochs": 2})
            assert handle is not None and handle.control is None and handle.process is not None
            assert handle.process.pid != os.getpid()
            run_dir = handle.run_dir
            await wait_for(pilot, lambda: any(e["event"] == "RunFinished" for e in read_metrics(run_dir)),
                           timeout=120)
            started = next(e for e in read_metrics(run_dir) if e["event"] == "RunStarted")
            assert Path(started["parent"]) == parent
            assert effective_config(read_config(run_dir), read_metrics(run_dir), str(run_dir)).optimizer.lr == 0.02
            assert json.loads((run_dir / background.MARKER).read_text())["command"][0] == "branch"
        assert handle.process.wait(timeout=60) == 0

    try:
        run(scenario())
    finally:
        for marker in runs.rglob(background.MARKER):
            try:
                os.kill(json.loads(marker.read_text())["pid"], signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass


def test_branch_trains_into_a_given_folder_and_refuses_one_that_holds_a_run(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    runs = tmp_path / "runs"
    parent = _parent(runs)
    target = tmp_path / "made-by-the-caller"
    target.mkdir()
    assert main(["branch", str(parent), "--run-dir", str(target), "--set", "train.epochs=2"]) == 0
    assert read_config(target).name == read_config(parent).name
    assert main(["branch", str(parent), "--run-dir", str(target)]) == 2
    assert "holds a run already" in capsys.readouterr().err
