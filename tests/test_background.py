"""Runs that outlive the app: trained by a process of their own, followed and steered by the app."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cifartui.engine.runs.folders import is_locked, read_metrics
from cifartui.ui import background
from cifartui.ui.app import make_app
from tests.app_helpers import app_config, run, wait_for


def _steps(run_dir: Path) -> int:
    return max((e["step"] for e in read_metrics(run_dir) if e["event"] == "StepMetrics"), default=0)


def _kill(run_dir: Path) -> None:
    try:
        pid = json.loads((run_dir / background.MARKER).read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, KeyError):
        pass


def test_ssh_sessions_start_runs_in_the_background_by_default() -> None:
    assert background.over_ssh({"SSH_CONNECTION": "10.0.0.2 5000 10.0.0.1 22"})
    assert background.over_ssh({"SSH_TTY": "/dev/pts/3"})
    assert not background.over_ssh({"TERM": "xterm"})


@pytest.mark.slow
def test_a_background_run_is_followed_and_steered_through_its_channel(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    config = app_config(epochs=200)

    async def scenario() -> None:
        app = make_app(runs_dir=runs, offer_resume=False, detach=True)
        async with app.run_test(size=(120, 40)) as pilot:
            handle = app.launch(config)
            assert handle is not None and handle.control is None and handle.process is not None
            run_dir = handle.run_dir
            panel = app.panel(handle.run_id)
            await wait_for(pilot, lambda: panel.step >= 3 and panel.status == "following", timeout=120)
            # The process pane shows the trainer's process, not the app's.
            assert panel.query_one("#device").pid == handle.process.pid != os.getpid()
            await pilot.press("p")  # through the run's control channel
            await wait_for(pilot, lambda: panel.status == "paused", timeout=30)
            paused_at = _steps(run_dir)
            await pilot.pause(1.0)
            assert _steps(run_dir) <= paused_at + 1
            await pilot.press("p")
            await wait_for(pilot, lambda: panel.status == "following" and _steps(run_dir) > paused_at + 2,
                           timeout=30)
            await pilot.press("c")
            await wait_for(pilot, lambda: any(e["event"] == "CheckpointSaved" and "requested" in e["reason"]
                                              for e in read_metrics(run_dir)), timeout=30)
        # The app has gone; the run has not.
        assert handle.process.poll() is None and is_locked(run_dir)
        at_exit = _steps(run_dir)
        deadline = time.monotonic() + 60
        while _steps(run_dir) <= at_exit + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _steps(run_dir) > at_exit + 2

        # The next app opens it again, live, and can stop it.
        again = make_app(runs_dir=runs, offer_resume=False)
        async with again.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: len(again.handles) == 1, timeout=10)
            (followed,) = again.handles.values()
            assert followed.run_dir == run_dir
            panel = again.panel(followed.run_id)
            await wait_for(pilot, lambda: panel.status == "following" and panel.step > at_exit, timeout=30)
            await pilot.press("s")
            await pilot.press("y")
            await wait_for(pilot, lambda: panel.status == "stopped", timeout=60)
        assert handle.process.wait(timeout=60) == 143
        assert json.loads((run_dir / "status.json").read_text())["status"] == "stopped"

    try:
        run(scenario())
    finally:
        for run_dir in runs.iterdir():
            _kill(run_dir)


def test_a_background_run_that_cannot_start_shows_why(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    broken = dataclasses.replace(app_config(), dataset=dataclasses.replace(app_config().dataset, name="cifar10"))

    async def scenario() -> None:
        app = make_app(runs_dir=runs, data_dir=tmp_path / "no-data", offer_resume=False, detach=True)
        async with app.run_test(size=(120, 40)) as pilot:
            handle = app.launch(broken)
            panel = app.panel(handle.run_id)
            await wait_for(pilot, lambda: panel.status == "failed", timeout=120)
            assert "cifar10 is not in" in panel.alert_text
    run(scenario())


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def _wait_for_screen(session: str, pattern: str, timeout: float = 90.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, _tmux("capture-pane", "-p", "-t", session))
        if match:
            return match
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} never appeared; the screen was:\n{_tmux('capture-pane', '-p', '-t', session)}")


@pytest.mark.slow
def test_a_background_run_survives_the_apps_hangup_and_the_next_app_shows_it_live(tmp_path: Path) -> None:
    assert shutil.which("tmux"), "tmux is required for this test (.ci/run installs it)"
    runs = tmp_path / "runs"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {
        "CIFARTUI_DATA": str(tmp_path / "data"), "CIFARTUI_CONFIG": str(tmp_path / "config"),
        "TERM": "tmux-256color"}.items())
    app = f"exec env {env} {shlex.quote(sys.executable)} -m cifartui.cli --runs-dir {shlex.quote(str(runs))}"
    first, second = (f"cifartui-test-{uuid.uuid4().hex[:8]}" for _ in range(2))
    _tmux("new-session", "-d", "-s", first, "-x", "120", "-y", "40",
          f"bash -c {shlex.quote(app + ' --detach run demo-synthetic --epochs 50 --device cpu')}")
    try:
        _wait_for_screen(first, r"FOLLOWING .* step [1-9][\d,]*/")
        (run_dir,) = runs.iterdir()
        pid = json.loads((run_dir / background.MARKER).read_text())["pid"]
        _tmux("kill-session", "-t", first)  # the terminal goes away: SIGHUP to the app
        shown = _steps(run_dir)
        deadline = time.monotonic() + 60
        while _steps(run_dir) <= shown + 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _steps(run_dir) > shown + 3, "the run trains on without the app"
        os.kill(pid, 0)

        _tmux("new-session", "-d", "-s", second, "-x", "120", "-y", "40", f"bash -c {shlex.quote(app)}")
        before = _steps(run_dir)
        match = _wait_for_screen(second, r"FOLLOWING .* step ([\d,]+)/")
        deadline = time.monotonic() + 60
        while int(match.group(1).replace(",", "")) <= before and time.monotonic() < deadline:
            match = _wait_for_screen(second, r"FOLLOWING .* step ([\d,]+)/")
        assert int(match.group(1).replace(",", "")) > before, "the re-attached tab follows the run live"
        _tmux("send-keys", "-t", second, "p")
        _wait_for_screen(second, r"PAUSED .* step", timeout=30)
    finally:
        for session in (first, second):
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        for run_dir in runs.iterdir() if runs.is_dir() else []:
            _kill(run_dir)
