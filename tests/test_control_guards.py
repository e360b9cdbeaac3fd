"""What `control`, `branch` and `resume` refuse, and what an interrupted or abandoned request leaves behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifartui.cli import main
from cifartui.engine.runs import channel
from cifartui.engine.runs.channel import ControlInbox, remove_stale_files
from cifartui.engine.runs.folders import RunLock


def _train(runs: Path, *extra: str) -> Path:
    before = set(runs.iterdir()) if runs.is_dir() else set()
    assert main(["train", "demo-synthetic", "--epochs", "2", "--set", "dataset.train_size=320",
                 "--set", "dataset.test_size=64", "--runs-dir", str(runs), "--device", "cpu", *extra]) == 0
    (run,) = set(runs.iterdir()) - before
    return run


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("parent") / "runs")


def _copy_run(run: Path, into: Path) -> Path:
    import shutil

    target = into / run.name
    shutil.copytree(run, target)
    return target


def test_branch_takes_only_a_checkpoint_of_its_own_parent(parent: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    other = _copy_run(parent, tmp_path / "other")
    mine = _copy_run(parent, tmp_path / "mine")
    (mine / "checkpoints" / "linked.pt").symlink_to(other / "checkpoints" / "last.pt")
    kept = sorted(p.stem for p in (mine / "checkpoints").glob("*.pt") if not p.is_symlink())
    for name in (f"../../../other/{other.name}/checkpoints/last", str(other / "checkpoints" / "last.pt"),
                 "linked", "../checkpoints/last", ".last"):
        capsys.readouterr()
        assert main(["branch", str(mine), "--checkpoint", name, "--runs-dir", str(tmp_path / "branches")]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"--checkpoint {name}" in err and all(stem in err for stem in kept), err
        assert not (tmp_path / "branches").exists()  # no run was started, so no lineage was written


def test_a_branch_header_and_config_carry_its_own_epochs(parent: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    branches = tmp_path / "branches"
    assert main(["branch", str(parent), "--set", "train.epochs=4", "--runs-dir", str(branches)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    (branch,) = list(branches.iterdir())
    summary = json.loads((branch / "summary.json").read_text())
    assert summary["epochs"] == 4
    assert json.loads((branch / "config.json").read_text())["train"]["epochs"] == 4
    assert f"{summary['steps']} steps. Run directory" in out


def test_resume_to_fewer_epochs_than_are_done_is_refused(parent: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy_run(parent, tmp_path)
    for epochs in ("1", "2"):
        capsys.readouterr()
        assert main(["resume", str(run), "--epochs", epochs]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"--epochs: '{epochs}'" in err and "has 2 epochs done" in err and "Traceback" not in err


def test_a_run_name_with_a_control_character_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a\nb", "bell\x07", "esc\x1b[2J", "rtl\u202eevil"):
        capsys.readouterr()
        assert main(["train", "demo-synthetic", "--set", f"name={json.dumps(name)}", "--runs-dir",
                     str(tmp_path / "runs"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "'name'" in err and "control character" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "soon"])
def test_control_timeout_must_be_a_finite_number_of_seconds(parent: Path, value: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as leaving:
        main(["control", str(parent), "status", "--timeout", value])
    assert leaving.value.code == 2
    assert f"--timeout: '{value}'" in capsys.readouterr().err


def test_control_json_answers_with_an_object_when_the_run_is_not_live(parent: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["control", str(parent), "status", "--json"]) == 2
    answer = json.loads(capsys.readouterr().out)
    assert answer["ok"] is False and answer["live"] is False and "not training now" in answer["error"]


def _live_without_trainer(run: Path) -> RunLock:
    """The run looks trained by a live process (its lock is held, its inbox exists) that never takes a request."""
    lock = RunLock(run).acquire()
    ControlInbox(run)
    return lock


def _requests(run: Path, suffix: str = ".request.json") -> list[Path]:
    return sorted((run / "control").glob(f"*{suffix}"))


@pytest.mark.parametrize("number, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_control_set_withdraws_its_request(parent: Path, tmp_path: Path, number: int,
                                                          code: int) -> None:
    run = _copy_run(parent, tmp_path)
    lock = _live_without_trainer(run)
    try:
        client = subprocess.Popen([sys.executable, "-m", "cifartui.cli", "control", str(run), "set",
                                   "optimizer.lr=0.01", "--timeout", "300"], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not _requests(run):
            assert time.monotonic() < deadline and client.poll() is None
            time.sleep(0.05)
        client.send_signal(number)
        _, err = client.communicate(timeout=60)
        assert client.returncode == code
        assert "withdrawn" in err and "nothing was applied" in err
        assert _requests(run) == []  # the run will never find it and apply it later
    finally:
        lock.release()


def test_an_interrupted_client_whose_request_was_taken_says_it_may_apply(parent: Path, tmp_path: Path) -> None:
    run = _copy_run(parent, tmp_path)
    lock = _live_without_trainer(run)
    try:
        client = subprocess.Popen([sys.executable, "-m", "cifartui.cli", "control", str(run), "set",
                                   "optimizer.lr=0.01", "--timeout", "300"], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not _requests(run):
            assert time.monotonic() < deadline and client.poll() is None
            time.sleep(0.05)
        assert ControlInbox(run).take()  # the run has it now
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=60)
        assert client.returncode == 130
        assert "had already taken the request" in " ".join(err.split()) and "may still apply" in err
    finally:
        lock.release()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_replies_nobody_will_read_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "control"
    folder.mkdir(mode=0o700)
    now = time.time()

    def reply(name: str, age: float = 0.0) -> Path:
        path = folder / name
        path.write_text('{"ok": true}')
        os.utime(path, (now - age, now - age))
        return path

    mine = reply(f"{time.time_ns():020d}-{os.getpid()}-abcdef01.reply.json")
    dead = reply(f"{time.time_ns():020d}-{_dead_pid()}-abcdef02.reply.json")
    forged = reply("not-a-client.reply.json", age=5)
    forgotten = reply(f"{time.time_ns():020d}-{os.getpid()}-abcdef03.reply.json", age=channel.REPLY_KEEP_S + 1)
    half_written = reply(f".x.reply.json.{_dead_pid()}.tmp", age=5)
    request = reply(f"{time.time_ns():020d}-{os.getpid()}-abcdef04.request.json")
    removed = remove_stale_files(folder, now=now)
    assert sorted(removed) == sorted(p.name for p in (dead, forged, forgotten, half_written))
    assert mine.exists() and request.exists()

    monkeypatch.setattr(channel, "MAX_REPLIES", 3)
    many = [reply(f"{i:020d}-{os.getpid()}-abcdef{i:02d}.reply.json", age=100 - i) for i in range(10, 16)]
    remove_stale_files(folder, now=now)
    assert sorted(p.name for p in folder.glob("*.reply.json")) == sorted([mine.name] + [p.name for p in many[-2:]])

    # The run's side: opening its inbox cleans up what an earlier session's clients left.
    stale = reply(f"{time.time_ns():020d}-{_dead_pid()}-abcdef05.reply.json")
    ControlInbox(tmp_path)
    assert not stale.exists()


def test_forged_and_malformed_requests_are_never_acted_on(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    inbox = ControlInbox(run)
    folder = run / "control"
    (folder / "a.request.json").write_text("{not json")
    (folder / "b.request.json").write_text(json.dumps({"command": "set", "args": [], "sent": time.time()}))
    (folder / "c.request.json").write_text(json.dumps({"command": "stop", "sent": "nan"}))
    (folder / "d.request.json").write_bytes(b" " * (channel.MAX_REQUEST_BYTES + 1))
    (folder / "e.request.json").symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text(json.dumps({"command": "stop", "sent": time.time()}))
    assert inbox.take() == []
    assert not list(folder.glob("*.request.json")) and not list(folder.glob("*.taken.json"))
    answers = {p.name: json.loads(p.read_text()) for p in folder.glob("*.reply.json")}
    assert all(answer == {"ok": False, "error": "malformed request"} for answer in answers.values())
    assert (tmp_path / "elsewhere.json").exists()
