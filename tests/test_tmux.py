"""The app in a real terminal: tmux runs `cifartui run demo-synthetic`, keys go in, the screen is read.

Killing the tmux session hangs up the app's terminal (SIGHUP): the run must write a
checkpoint at or past the last step the screen showed, and no process may be left.
tmux is installed by .ci/run; this test fails, rather than skips, without it.
"""

from __future__ import annotations

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

from cifartui.engine.runs.checkpoint import load_checkpoint


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def _screen(session: str) -> str:
    return _tmux("capture-pane", "-p", "-t", session)


def _wait_for_screen(session: str, pattern: str, timeout: float = 60.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, _screen(session))
        if match:
            return match
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} never appeared; the screen was:\n{_screen(session)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["hangup", "sigterm"])
def test_run_pause_and_hangup_in_tmux(tmp_path: Path, ending: str) -> None:
    assert shutil.which("tmux"), "tmux is required for this test (.ci/run installs it)"
    session = f"cifartui-test-{uuid.uuid4().hex[:8]}"
    runs = tmp_path / "runs"
    pid_file = tmp_path / "pid"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {
        "CIFARTUI_DATA": str(tmp_path / "data"), "CIFARTUI_CONFIG": str(tmp_path / "config"),
        "TERM": "tmux-256color", "COLORTERM": ""}.items())
    command = (f"echo $$ > {pid_file}; exec env {env} {shlex.quote(sys.executable)} -m cifartui.cli run "
               f"demo-synthetic --epochs 50 --set dataset.train_size=3000 --device cpu --no-detach "
               f"--runs-dir {shlex.quote(str(runs))}")
    _tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", f"bash -c {shlex.quote(command)}")
    try:
        first = _wait_for_screen(session, r"RUNNING .* step ([\d,]+)/")
        later = _wait_for_screen(session, r"RUNNING .* step ([\d,]+)/")
        deadline = time.monotonic() + 30
        while later.group(1) == first.group(1) and time.monotonic() < deadline:
            later = _wait_for_screen(session, r"RUNNING .* step ([\d,]+)/")
        assert later.group(1) != first.group(1), "the numbers on screen should move while training"
        assert re.search(r"RUNNING .* img/s .* ms/step .*ETA \d", _screen(session)), "the current pace and ETA"

        _tmux("send-keys", "-t", session, "p")
        paused = _wait_for_screen(session, r"PAUSED .* step ([\d,]+)/", timeout=10)
        time.sleep(1.0)
        assert re.search(r"PAUSED .* step ([\d,]+)/", _screen(session)).group(1) == paused.group(1)

        _tmux("send-keys", "-t", session, "p")
        resumed = _wait_for_screen(session, r"RUNNING .* step ([\d,]+)/", timeout=10)
        last_shown = int(resumed.group(1).replace(",", ""))
        pid = int(pid_file.read_text())
        if ending == "sigterm":
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5.0
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)

    # A bound for "it exits, it does not hang": the checkpoint it writes first takes seconds on a
    # loaded machine (the time itself is the fault benchmark's business).
    deadline = time.monotonic() + 30.0
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pid_alive(pid), "the app should exit after the hangup (waited 30 s)"

    (run_dir,) = runs.iterdir()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "stopped"
    assert status["reason"] == f"interrupted by {'SIGHUP' if ending == 'hangup' else 'SIGTERM'}"
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["progress"]["step"] >= last_shown

    # `cifartui resume` continues from that checkpoint, to the end of the epoch it was in.
    epochs = str(state["progress"]["epoch"] + 1)
    resumed_run = subprocess.run([sys.executable, "-m", "cifartui.cli", "resume", str(run_dir), "--epochs", epochs],
                                 capture_output=True, text=True, timeout=300)
    assert resumed_run.returncode == 0, resumed_run.stderr
    assert "Resuming demo-synthetic" in " ".join(resumed_run.stdout.split())
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["step"] > state["progress"]["step"]
