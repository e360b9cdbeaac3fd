"""`--ray`: sweeps and reproductions whose runs are jobs on a real two-node Ray cluster on this machine.

The cluster (tests/ray_cluster.py) is started once for every test here and stopped by
the pids it started. One test loses a node in the middle of a run and checks that the
run finished exactly once, from its checkpoint, on the node that was left.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from cifartui.cli import main
from cifartui.engine.runs.checkpoint import load_checkpoint
from cifartui.engine.orchestration.sweep import find_sweeps, read_sweep
from cifartui.engine.runs.folders import read_metrics
from tests.ray_cluster import Cluster, free_ports, start_cluster, stop_by_pids
from tests.sweep_helpers import TINY_SWEEP_PRESET


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the whole session, also across pytest-xdist workers: the first one to need it
    starts it, the last one done with it stops it (by the pids written beside it)."""
    shared = tmp_path_factory.getbasetemp().parent
    record, users = shared / "ray-cluster.json", shared / "ray-cluster.users"
    with _locked(shared / "ray-cluster.lock"):
        if record.exists():
            cluster = Cluster.from_dict(json.loads(record.read_text()))
        else:
            cluster = start_cluster()
            record.write_text(json.dumps(cluster.to_dict()))
        users.write_text(str(int(users.read_text() or 0) + 1 if users.exists() else 1))
    try:
        yield cluster
    finally:
        with _locked(shared / "ray-cluster.lock"):
            left = int(users.read_text()) - 1
            users.write_text(str(left))
            if left == 0:
                stop_by_pids(json.loads(record.read_text()))
                record.unlink()


class _locked:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        self.handle = self.path.open("a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *_exc: object) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


@pytest.fixture
def preset(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SWEEP_PRESET)
    return path


def _entries(sweep_dir: Path) -> list[dict]:
    queue = json.loads((sweep_dir / "queue.json").read_text())
    return [json.loads((sweep_dir / key / "entry.json").read_text()) for key in queue["entries"]]


def _events(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in read_metrics(run_dir) if e["event"] == kind]


def _cifartui(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "cifartui.cli", *arguments]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# Bad input: one line naming the option and address, exit 2, nothing written. ----------------------------------


def test_an_address_where_no_cluster_answers_is_refused_before_anything_is_written(
        tmp_path: Path, preset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    address = f"http://127.0.0.1:{port}"
    for command in (["sweep", str(preset), "--seeds", "2"], ["reproduce", "cnn3-cifar10", "--quick"],
                    ["sweep", str(preset), "--search", "tpe", "--trials", "2", "--space", "lr=log:1e-3..1e-1"]):
        code = main([*command, "--runs-dir", str(tmp_path / "runs"), "--ray", address])
        err = capsys.readouterr().err
        assert code == 2
        assert f"--ray: '{address}': no Ray cluster answers there" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "runs").exists()


def test_without_the_ray_extra_the_option_says_what_to_install(
        tmp_path: Path, preset: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name == "ray" or name.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # what Python does for a package that is not installed
    code = main(["sweep", str(preset), "--seeds", "2", "--runs-dir", str(tmp_path / "runs"), "--ray", "auto"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--ray: 'auto': needs Ray, which is not installed: pip install 'cifartui[ray]'" in err
    assert not (tmp_path / "runs").exists()


def test_local_gpu_choice_does_not_go_with_ray(tmp_path: Path, preset: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sweep", str(preset), "--seeds", "2", "--runs-dir", str(tmp_path / "runs"), "--devices", "0",
                 "--ray", "auto"])
    assert code == 2
    assert "--devices: '0': names this machine's GPUs; with --ray" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# On the cluster -------------------------------------------------------------------------------------------------


def test_reproduce_fans_the_recipes_out_over_the_cluster(ray_cluster: Cluster, tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    done = subprocess.run(
        _cifartui("reproduce", "cnn3-cifar10", "cnn3-cifar10-150ep", "--quick", "--dataset", "synthetic",
                  "--set", "dataset.train_size=160", "--set", "dataset.test_size=64", "--set", "train.batch_size=32",
                  "--runs-dir", str(runs_dir), "--ray", ray_cluster.address),
        capture_output=True, text=True, env=ENV, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    (folder,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    entries = _entries(folder)
    assert [e["state"] for e in entries] == ["finished", "finished"]
    assert all(e["device"].startswith("ray ") for e in entries)
    assert (folder / "report.md").is_file() and "cnn3-cifar10-150ep" in (folder / "report.md").read_text()


def test_a_search_asks_its_trials_of_the_cluster_and_tells_the_study(ray_cluster: Cluster, tmp_path: Path,
                                                                       preset: Path) -> None:
    import optuna

    from cifartui.engine.orchestration.search import open_study
    from cifartui.engine.orchestration.sweep import read_plan

    runs_dir = tmp_path / "runs"
    done = subprocess.run(
        _cifartui("sweep", str(preset), "--search", "random", "--trials", "2", "--space", "lr=log:1e-3..1e-1",
                  "--runs-dir", str(runs_dir), "--ray", ray_cluster.address),
        capture_output=True, text=True, env=ENV, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    (folder,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    entries = _entries(folder)
    assert [e["state"] for e in entries] == ["finished", "finished"]
    assert all(e["device"].startswith("ray ") for e in entries)  # each trial a job on the cluster
    trials = open_study(folder, read_plan(folder)).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_a_sweep_over_two_nodes_loses_one_mid_run_and_every_run_finishes_once(
        ray_cluster: Cluster, tmp_path: Path, preset: Path) -> None:
    worker = next(node for node in ray_cluster.nodes if node.name != "head")
    runs_dir = tmp_path / "runs"
    # One run per node; four epochs of 15 steps: long enough that a run is mid-way when the node goes.
    sweep = subprocess.Popen(
        _cifartui("sweep", str(preset), "--device", "auto", "--seeds", "2", "--set", "train.epochs=4",
                  "--set", "dataset.train_size=320", "--set", "train.batch_size=16", "--runs-dir", str(runs_dir),
                  "--json", str(tmp_path / "table.json"), "--ray", ray_cluster.address),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    lost = None
    try:
        deadline = time.monotonic() + 300
        while lost is None and time.monotonic() < deadline:
            assert sweep.poll() is None, sweep.stdout.read()
            sweeps = list(runs_dir.glob("*/queue.json")) if runs_dir.exists() else []
            for entry in _entries(sweeps[0].parent) if sweeps else []:
                run_dir = sweeps[0].parent / entry["key"] / (entry["run_dir"] or "-")
                if (entry["state"] == "running" and entry["device"] == f"ray {worker.name}"
                        and (run_dir / "checkpoints" / "last.pt").is_file()
                        and not (run_dir / "summary.json").exists()):
                    seen = read_sweep(sweeps[0].parent)  # what the app's Sweeps view reads
                    assert seen.driven and seen.entries[int(entry["key"]) - 1].state == "running"
                    lost = entry["key"], run_dir
                    worker.kill()  # the node goes at once: its raylet, its workers and the run's process
                    break
            time.sleep(0.05)
        assert lost is not None, "no run got to a checkpoint on the second node"
        out, _ = sweep.communicate(timeout=400)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out
    sweep_dir = runs_dir / next(p.name for p in runs_dir.iterdir() if p.is_dir())
    entries = {e["key"]: e for e in _entries(sweep_dir)}
    assert [e["state"] for e in entries.values()] == ["finished"] * 2
    key, lost_run = lost
    assert entries[key]["nodes_lost"] == 1 and entries[key]["attempts"] == 2
    assert entries[key]["device"] == "ray head"  # the node that was left
    assert f"run {key} (seed {entries[key]['label']['seed']}): running - restarted after node lost; resumed" in out
    for entry in entries.values():
        entry_dir = sweep_dir / entry["key"]
        (run_dir,) = [p for p in entry_dir.iterdir() if p.is_dir()]  # one run directory: never started afresh
        assert run_dir.name == entry["run_dir"]
        starts = _events(run_dir, "RunStarted")
        assert len(starts) == entry["attempts"] == (2 if entry["key"] == key else 1)
        assert [s.get("resumed", False) for s in starts][1:] == [True] * (len(starts) - 1)
        assert len(_events(run_dir, "RunFinished")) == 1  # finished exactly once
        assert sorted({e["epoch"] for e in _events(run_dir, "EpochEnded")}) == list(range(4))
        checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        summary = json.loads((entry_dir / "summary.json").read_text())
        assert checkpoint["progress"]["step"] == summary["steps"] == 4 * 15  # 240 training images / 16
        assert (entry_dir / "output.log").read_text().count("$ ") == entry["attempts"]
    # `cifartui runs` reads the runs that Ray trained like any other.
    listing = subprocess.run(_cifartui("runs", "--runs-dir", str(runs_dir)), capture_output=True, text=True,
                             env={**ENV, "COLUMNS": "200"}, timeout=120)
    assert listing.returncode == 0, listing.stderr
    for entry in entries.values():
        assert entry["run_dir"] in listing.stdout
    assert find_sweeps(runs_dir) == [sweep_dir]
    seen = read_sweep(sweep_dir)
    assert not seen.driven and [e.state for e in seen.entries] == ["finished"] * 2
    assert [e.nodes_lost for e in seen.entries] == [int(e["key"] == key) for e in entries.values()]
    table = json.loads((tmp_path / "table.json").read_text())
    assert len(table["runs"]) == 2 and all(run["state"] == "finished" for run in table["runs"])
