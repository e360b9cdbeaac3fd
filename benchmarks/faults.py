"""Long fault runs: many kill -9 trials, and four runs in the app under load for minutes.

    python benchmarks/faults.py [--kill-trials 100] [--early-interrupt-trials 30]
        [--checkpoint-interrupt-trials 10] [--damaged-run-cases 500] [--soak-minutes 10] [--json FILE]

Kill trials: a small real run (`cifartui train`, checkpoints about every 30 ms) is
killed with SIGKILL once it reports a random step, plus a random delay, so kills land
during training and during checkpoint writes. Each time the last checkpoint must load
and the resumed run must end with weights bit-identical to an uninterrupted run.

Soak: the app (headless, through Textual's Pilot) trains four runs at once; every 10 s
it measures how long a key takes to open the help screen, whether every run advanced,
and the process's resident memory.

Signals: SIGINT at random moments of the first seconds of `train`, `inspect` and
`predict`, and a second SIGINT while a stopping run writes its checkpoint.

Damaged run folders: random bytes, cut-short or flipped copies, odd JSON values and
foreign checkpoints in each run file, and every command that reads it.

Prints Markdown tables; the README's figures come from this command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

KILL_PRESET = """
[dataset]
name = "synthetic"
train_size = 2000
test_size = 100
val_fraction = 0.1
[model]
name = "cnn3"
[optimizer]
name = "sgd"
lr = 0.03
momentum = 0.9
[augment]
crop_padding = 4
flip = true
[train]
epochs = 2
batch_size = 32
device = "cpu"
checkpoint_minutes = 0.0005  # about every 30 ms, so kills often land mid-write
"""


def _load(path: Path) -> dict:
    from cifartui.engine.runs.checkpoint import load_checkpoint
    return load_checkpoint(path)


def reported_step(runs: Path) -> int:
    for metrics in runs.glob("*/metrics.jsonl"):
        steps = [int(line.split('"step": ')[1].split(",")[0]) for line in metrics.read_text().splitlines()
                 if line.startswith('{"event": "StepMetrics"') and line.endswith("}")]
        return max(steps, default=0)
    return 0


def reference_run(preset: Path, runs: Path) -> dict:
    subprocess.run([sys.executable, "-m", "cifartui.cli", "train", str(preset), "--runs-dir", str(runs)],
                   check=True, capture_output=True)
    (run_dir,) = list(runs.iterdir())
    return _load(run_dir / "checkpoints" / "last.pt")


def kill_trial(preset: Path, runs: Path, after_step: int, extra_delay: float, reference: dict) -> dict:
    """Start a run, SIGKILL it once it reports `after_step` (plus a delay), resume it; compare."""
    command = [sys.executable, "-m", "cifartui.cli", "train", str(preset), "--runs-dir", str(runs)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while reported_step(runs) < after_step and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(extra_delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (run_dir,) = list(runs.iterdir())
    checkpoints = run_dir / "checkpoints"
    partial = list(checkpoints.glob(".*.tmp")) if checkpoints.exists() else []
    last = checkpoints / "last.pt"
    result = {"killed_mid_write": bool(partial), "had_checkpoint": last.exists(), "identical": None,
              "finished_before_kill": (run_dir / "summary.json").exists(), "loaded": None}
    if not last.exists():
        return result  # killed before the first checkpoint: nothing to resume, nothing lost
    try:
        result["checkpoint_step"] = _load(last)["progress"]["step"]
        result["loaded"] = True
    except Exception as error:  # reported, never hidden
        result["loaded"] = False
        result["error"] = str(error)
        return result
    resumed = subprocess.run([sys.executable, "-m", "cifartui.cli", "resume", str(run_dir)],
                             capture_output=True, text=True)
    if resumed.returncode != 0 and "already finished" not in resumed.stderr:
        result["error"] = resumed.stderr[-500:]
        result["identical"] = False
        return result
    final = _load(last)
    result["identical"] = all(torch.equal(final["model"][k], reference["model"][k]) for k in reference["model"])
    return result


def kill_trials(count: int, seed: int) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        preset = root / "kill.toml"
        preset.write_text(KILL_PRESET)
        reference = reference_run(preset, root / "reference")
        total = reference["progress"]["step"]
        results = []
        for trial in range(count):
            after = rng.randrange(1, total)
            result = kill_trial(preset, root / f"trial{trial}", after, rng.uniform(0.0, 0.05), reference)
            results.append(result)
            print(f"  trial {trial + 1}/{count}: after step {after}: {result}", file=sys.stderr)
    with_checkpoint = [r for r in results if r["had_checkpoint"]]
    return {
        "trials": count,
        "total_steps": total,
        "killed_mid_checkpoint_write": sum(r["killed_mid_write"] for r in results),
        "killed_before_first_checkpoint": sum(not r["had_checkpoint"] for r in results),
        "finished_before_kill": sum(r["finished_before_kill"] for r in results),
        "last_checkpoint_loaded": sum(bool(r["loaded"]) for r in with_checkpoint),
        "with_checkpoint": len(with_checkpoint),
        "resumed_bit_identical": sum(bool(r["identical"]) for r in with_checkpoint),
    }


# --- sweeps and control requests in flight ----------------------------------------------------

SWEEP_PRESET = KILL_PRESET.replace("train_size = 2000", "train_size = 960")
CHANGED_LR = 0.01  # what a control request sets in a live run of the sweep


def _sweep_entries(sweep_dir: Path) -> list[dict]:
    queue = json.loads((sweep_dir / "queue.json").read_text())
    return [json.loads((sweep_dir / key / "entry.json").read_text()) for key in queue["entries"]]


def _steps_reported(sweep_dir: Path) -> int:
    return sum(reported_step(entry) for entry in sweep_dir.iterdir() if entry.is_dir())


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.endswith("}")]


def sweep_kill_trial(preset: Path, root: Path, rng: random.Random, references: dict[int, dict], env: dict) -> dict:
    """A sweep of three seeds, two at a time; at a random moment a control request changes one live run's
    learning rate, then the driver (and half the time one of its runs) is killed with SIGKILL; the sweep
    is resumed until it ends. Every run must finish exactly once; a run no request changed must end
    bit-identical to an uninterrupted run of its seed, and a change the run confirmed must still hold
    after the kill (in its metrics' learning rate to the end)."""
    from cifartui.engine.runs.channel import ControlError, send

    runs = root / "runs"
    driver = subprocess.Popen([sys.executable, "-m", "cifartui.cli", "sweep", str(preset), "--seeds", "3",
                               "--parallel", "2", "--runs-dir", str(runs)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    kill_after = rng.randrange(5, 150)
    result = {"changed": None, "change_confirmed": False, "killed_run": False, "resumes": 0}
    try:
        found = _wait_until(lambda: bool(list(runs.glob("*/queue.json"))) and
                            _steps_reported(next(runs.glob("*/queue.json")).parent) >= kill_after
                            or driver.poll() is not None, timeout=300)
        sweep_dir = next(runs.glob("*/queue.json")).parent
        live = [e for e in _sweep_entries(sweep_dir) if e["state"] == "running" and e.get("run_dir")]
        if found and live and rng.random() < 0.7:
            target = sweep_dir / live[0]["key"] / live[0]["run_dir"]
            result["changed"] = str(target)
            try:
                answer = send(target, "set", {"updates": {"optimizer.lr": CHANGED_LR}}, timeout=30)
                result["change_confirmed"] = bool(answer.get("ok"))
            except ControlError as error:  # the run ended meanwhile: nothing applied
                result["change_error"] = str(error)
        time.sleep(rng.uniform(0.0, 0.3))
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    live = [e for e in _sweep_entries(sweep_dir) if e["state"] == "running" and e.get("run_dir")]
    if live and rng.random() < 0.5:
        status = json.loads((sweep_dir / live[-1]["key"] / live[-1]["run_dir"] / "status.json").read_text())
        if isinstance(status.get("pid"), int):
            try:
                os.kill(status["pid"], signal.SIGKILL)
                result["killed_run"] = True
            except OSError:
                pass
    for _ in range(3):
        resumed = subprocess.run([sys.executable, "-m", "cifartui.cli", "sweep", "--resume", str(sweep_dir)],
                                 capture_output=True, text=True, env=env)
        result["resumes"] += 1
        if resumed.returncode == 0:
            break
        time.sleep(1.0)  # a run of the killed driver still writing its checkpoint holds its lock
    entries = _sweep_entries(sweep_dir)
    result["all_finished"] = all(e["state"] == "finished" for e in entries)
    result["finished_once"] = True
    result["identical"], result["change_held"] = [], None
    for entry in entries:
        run_dir = sweep_dir / entry["key"] / entry["run_dir"]
        events = _events(run_dir)
        result["finished_once"] &= sum(e["event"] == "RunFinished" for e in events) == 1
        if result["changed"] == str(run_dir) and result["change_confirmed"]:
            changed_at = next(e["step"] for e in events if e["event"] == "SettingsChanged")
            after = [e["lr"] for e in events if e["event"] == "StepMetrics" and e["step"] > changed_at + 1]
            # ...and the optimizer of the final checkpoint, for a change close to the run's end.
            final_lrs = [group["lr"] for group in _load(run_dir / "checkpoints" / "last.pt")["optimizer"]["param_groups"]]
            result["change_held"] = all(abs(float(lr) - CHANGED_LR) < 1e-9 for lr in after + final_lrs)
            if not result["change_held"]:
                result["lr_after_change"] = after + final_lrs
            continue
        if result["changed"] == str(run_dir):
            continue  # a request that was not confirmed may or may not have applied: no reference for it
        final = _load(run_dir / "checkpoints" / "last.pt")
        reference = references.get(entry["label"]["seed"])
        if reference is None:  # an uninterrupted run of the very recipe the sweep froze for this seed
            reference_runs = root.parent / f"reference-{entry['label']['seed']}"
            subprocess.run([sys.executable, "-m", "cifartui.cli", "train", str(sweep_dir / entry["key"] / "config.toml"),
                            "--runs-dir", str(reference_runs), "--device", "cpu"], check=True, capture_output=True,
                           env=env)
            (reference_dir,) = list(reference_runs.iterdir())
            reference = references[entry["label"]["seed"]] = _load(reference_dir / "checkpoints" / "last.pt")
        result["identical"].append(all(torch.equal(final["model"][k], reference["model"][k])
                                       for k in reference["model"]))
    return result


def sweep_kill_trials(count: int, seed: int) -> dict:
    rng = random.Random(seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the runs and their references on the same threads
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        preset = root / "sweep.toml"
        preset.write_text(SWEEP_PRESET)
        references: dict[int, dict] = {}  # by seed, trained on first use
        results = []
        for trial in range(count):
            result = sweep_kill_trial(preset, root / f"trial{trial}", rng, references, env)
            results.append(result)
            print(f"  sweep trial {trial + 1}/{count}: {result}", file=sys.stderr)
    compared = [same for r in results for same in r["identical"]]
    confirmed = [r for r in results if r["change_confirmed"]]
    return {
        "trials": count,
        "runs": 3 * count,
        "runs_killed": sum(r["killed_run"] for r in results),
        "all_finished": sum(r["all_finished"] for r in results),
        "finished_once": sum(r["finished_once"] for r in results),
        "compared": len(compared),
        "bit_identical": sum(compared),
        "changes_confirmed": len(confirmed),
        "changes_held": sum(bool(r["change_held"]) for r in confirmed),
    }


# --- damaged run folders ---------------------------------------------------------------------

RUN_FILES = ("config.json", "status.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt")


def finished_tiny_run(runs: Path) -> Path:
    """A small finished run (one epoch of synthetic data) whose files the damage cases start from."""
    code, _, err = cli_in_process(["train", "demo-synthetic", "--epochs", "1", "--set", "dataset.train_size=240",
                                   "--set", "dataset.test_size=40", "--device", "cpu", "--runs-dir", str(runs)])
    assert code == 0, err
    (run_dir,) = list(runs.iterdir())
    return run_dir


def cli_in_process(argv: list[str]) -> tuple[int | None, str, str]:
    """`cifartui ARGV` in this process: (exit code, stdout, stderr); a code of None when an exception escaped."""
    import contextlib
    import io
    import traceback

    from cifartui.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except Exception:  # the failure this looks for: reported, never hidden
        return None, out.getvalue(), err.getvalue() + traceback.format_exc()
    return code, out.getvalue(), err.getvalue()


def _random_json(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(8 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63, 2**70, -(2**70), rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e308, float("nan"), float("inf"), rng.uniform(-100, 100)])
    if kind in (4, 5):
        return rng.choice(["", "x", "running", "finished", "EpochEnded", "cnn3", "[/x]", "\udcff", "a" * 300])
    if kind == 6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["status", "pid", "step", "epoch", "event", "name", "train", "model", "dataset", "x"]):
            _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _replace_somewhere(value: object, rng: random.Random) -> object:
    """`value` (parsed JSON) with one nested value swapped for a random one."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        return {**value, key: _replace_somewhere(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.8:
        index = rng.randrange(len(value))
        return value[:index] + [_replace_somewhere(value[index], rng)] + value[index + 1:]
    return _random_json(rng)


def damaged_content(original: bytes, target: str, rng: random.Random) -> bytes:
    """A hostile version of one run file: random bytes, cut short, bytes flipped, or odd JSON values."""
    how = rng.choice(["random", "truncated", "flipped", "json"] + (["edited"] * 3 if not target.endswith(".pt")
                                                                   else ["foreign checkpoint"]))
    if how == "random":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(300)))
    if how == "truncated":
        return original[:rng.randrange(len(original) + 1)]
    if how == "flipped":
        damaged = bytearray(original)
        for _ in range(rng.randrange(1, 9)):
            if damaged:
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        return bytes(damaged)
    if how == "json":
        return json.dumps(_random_json(rng)).encode()
    if how == "foreign checkpoint":  # what torch.save writes, with the marker but anything inside
        import io as io_module

        buffer = io_module.BytesIO()
        torch.save({"format": "cifartui-checkpoint-1", "model": _random_json(rng), "progress": _random_json(rng)},
                   buffer)
        return buffer.getvalue()
    if target == "metrics.jsonl":  # one line edited, or a line of odd JSON added
        lines = original.decode().splitlines()
        index = rng.randrange(len(lines))
        line = json.loads(lines[index])
        lines[index] = json.dumps(_replace_somewhere(line, rng) if rng.random() < 0.7 else _random_json(rng))
        return ("\n".join(lines) + "\n").encode()
    return json.dumps(_replace_somewhere(json.loads(original), rng)).encode()


def damaged_run_case(base_run: Path, work: Path, target: str, content: bytes) -> dict:
    """Copy a finished run, put `content` in one of its files and run every command that reads that file.

    Each must end with exit 0, or exit 2 and a message naming the file (a refused
    resume may name the run instead); never with a traceback. The listing the app's
    history shows must mark a run whose config.json is unusable as broken, naming the
    file, and the app's reading of metrics lines must not raise.
    """
    from cifartui.engine.runs.folders import RunDirError, list_runs, read_config
    from cifartui.ui.app import event_from_json

    work.mkdir(parents=True)
    run = work / base_run.name
    shutil.copytree(base_run, run)
    (run / target).write_bytes(content)
    name = Path(target).name
    try:
        read_config(run)
        config_usable = True
    except RunDirError:
        config_usable = False
    commands = [["runs", "--runs-dir", str(work)], ["export", str(run), "--format", "json"],
                ["export", str(run), "--format", "csv"]]
    # A config.json that is still valid may name another dataset (real CIFAR would be
    # downloaded), so the commands that load data run only where it is not.
    if not (target == "config.json" and config_usable):
        commands.append(["inspect", str(run), "--checkpoint", "best" if name == "best.pt" else "last"])
    if target == "status.json" or (target == "config.json" and not config_usable) or name == "last.pt":
        commands.append(["resume", str(run)])
    failures = []
    for argv in commands:
        code, _out, err = cli_in_process(argv)
        named = name in err or (argv[0] == "resume" and str(run) in err)
        if argv[0] == "runs":
            clean = code == 0 and (config_usable or name in err)
        else:
            clean = code == 0 or (code == 2 and named)
        if not clean or "Traceback" in err:
            failures.append({"command": " ".join(argv[:1] + argv[2:]), "code": code, "stderr": err[-1500:]})
    try:
        infos, _ = list_runs(work)
        (info,) = [i for i in infos if i.path == run]
        if not config_usable and not (info.status == "broken" and "config.json" in info.problem):
            failures.append({"command": "history", "code": None, "stderr": f"listed as {info}"})
        if target == "metrics.jsonl":
            for line in content.decode("utf-8", errors="replace").splitlines():
                try:
                    data = json.loads(line)
                except (ValueError, RecursionError):
                    continue  # the app skips such a line the same way
                event_from_json(data)
    except Exception as error:  # reported, never hidden
        failures.append({"command": "history", "code": None, "stderr": f"{type(error).__name__}: {error}"})
    return {"target": target, "commands": len(commands), "failures": failures}


def damaged_run_trials(count: int, seed: int) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        base = finished_tiny_run(root / "base")
        results = []
        for trial in range(count):
            target = RUN_FILES[trial % len(RUN_FILES)]
            content = damaged_content((base / target).read_bytes(), target, rng)
            result = damaged_run_case(base, root / f"case{trial}", target, content)
            results.append(result)
            shutil.rmtree(root / f"case{trial}", ignore_errors=True)
            if result["failures"]:
                print(f"  damaged {target}: {result['failures']}", file=sys.stderr)
    return {"cases": count, "commands": sum(r["commands"] for r in results),
            "clean_cases": sum(not r["failures"] for r in results),
            "by_file": {target: sum(r["target"] == target for r in results) for target in RUN_FILES}}


# --- signals at awkward moments ------------------------------------------------------------------

def cifartui_process(*args: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cifartui.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def run_events(runs: Path) -> list[dict]:
    found = []
    for metrics in runs.glob("*/metrics.jsonl"):
        for line in metrics.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                pass  # a line being written
    return found


def _wait_until(condition, timeout: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def early_interrupt_trials(count: int, seed: int) -> dict:
    """`train`, `inspect` and `predict` get SIGINT at a random moment of their first 4 s (PyTorch loading,
    data, model, first steps): each must exit 130 without a traceback, and a run folder left behind must
    hold a checkpoint."""
    from PIL import Image

    rng = random.Random(seed)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        base = finished_tiny_run(root / "base")
        Image.new("RGB", (40, 30), (10, 200, 30)).save(root / "photo.png")
        for trial in range(count):
            command = ("train", "inspect", "predict")[trial % 3]
            runs = root / f"runs{trial}"
            arguments = {"train": ["train", "demo-synthetic", "--device", "cpu", "--runs-dir", str(runs)],
                         "inspect": ["inspect", str(base)], "predict": ["predict", str(base), str(root / "photo.png")]}
            moment = rng.uniform(0.3, 4.0)
            process = cifartui_process(*arguments[command])
            time.sleep(moment)
            ended_first = process.poll() is not None  # nothing left to interrupt
            process.send_signal(signal.SIGINT)
            _out, err = process.communicate(timeout=300)
            empty = [p.name for p in runs.glob("*") if not (p / "checkpoints" / "last.pt").is_file()]
            results.append({"command": command, "moment": moment, "code": process.returncode, "ended_first": ended_first,
                            "traceback": "Traceback" in err or "Error" in err, "runs_without_checkpoint": empty})
            print(f"  Ctrl-C trial {trial + 1}/{count}: {results[-1]}", file=sys.stderr)
    return {"trials": count, "ended_before_the_signal": sum(r["ended_first"] for r in results),
            "exit_130": sum(r["code"] == 130 for r in results),
            "tracebacks": sum(r["traceback"] for r in results),
            "runs_without_checkpoint": sum(bool(r["runs_without_checkpoint"]) for r in results)}


SLOW_CHECKPOINT_PRESET = """
[dataset]
name = "synthetic"
train_size = 64
test_size = 16
val_fraction = 0.25
[model]
name = "vgg11"
[optimizer]
name = "sgd"
lr = 0.01
momentum = 0.9
[train]
epochs = 1000
batch_size = 16
device = "cpu"
checkpoint_minutes = 0.0
"""


def interrupted_checkpoint_trials(count: int) -> dict:
    """A first SIGINT stops a run (VGG-11, a 75 MB checkpoint), a second one lands while that checkpoint is
    written: exit 130, no "run failed", the previous checkpoint loads, no temporary file is left."""
    from cifartui.engine.runs.checkpoint import CheckpointError

    results = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        preset = root / "slow-checkpoint.toml"
        preset.write_text(SLOW_CHECKPOINT_PRESET)
        for trial in range(count):
            runs = root / f"runs{trial}"
            process = cifartui_process("train", str(preset), "--runs-dir", str(runs))
            _wait_until(lambda: any(e["event"] == "CheckpointSaved" for e in run_events(runs)), 300)
            (run,) = runs.iterdir()
            process.send_signal(signal.SIGINT)
            mid_write = _wait_until(lambda: bool(list((run / "checkpoints").glob(".*.tmp"))), 120)
            process.send_signal(signal.SIGINT)
            _out, err = process.communicate(timeout=300)
            try:
                _load(run / "checkpoints" / "last.pt")
                loads = True
            except CheckpointError:
                loads = False
            results.append({"mid_write": mid_write, "code": process.returncode, "loads": loads,
                            "failed_message": "the run failed" in err or "Traceback" in err,
                            "temporary_left": bool(list((run / "checkpoints").glob(".*.tmp"))),
                            "status": json.loads((run / "status.json").read_text())["status"]})
            print(f"  second Ctrl-C trial {trial + 1}/{count}: {results[-1]}", file=sys.stderr)
    return {"trials": count, "second_signal_mid_write": sum(r["mid_write"] for r in results),
            "exit_130": sum(r["code"] == 130 for r in results), "last_checkpoint_loads": sum(r["loads"] for r in results),
            "failed_messages": sum(r["failed_message"] for r in results),
            "temporary_files_left": sum(r["temporary_left"] for r in results),
            "status_counts": ", ".join(f"{status} {sum(r['status'] == status for r in results)}"
                                       for status in sorted({r["status"] for r in results}))}


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(minutes: float) -> dict:
    import dataclasses

    from cifartui.config import DatasetConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
    from cifartui.ui.app import make_app
    from textual import events
    from textual.widgets import Button

    from cifartui.ui.screens.dialogs import HelpScreen

    config = RunConfig(
        name="soak", dataset=DatasetConfig(name="synthetic", train_size=2000, test_size=200, val_fraction=0.1),
        model=ModelConfig(name="cnn3"), optimizer=OptimizerConfig(name="sgd", lr=0.01, momentum=0.9),
        train=TrainConfig(epochs=100000, batch_size=64, device="cpu", checkpoint_minutes=1.0))
    samples: list[dict] = []
    full_collections: list[float] = []  # seconds each, whoever triggered them
    started_at: list[float] = []

    def time_full_collections(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started_at[:] = [time.perf_counter()]
        elif started_at:
            full_collections.append(time.perf_counter() - started_at[0])

    async def scenario(runs_dir: Path) -> None:
        app = make_app(runs_dir=runs_dir, offer_resume=False,
                       initial=[dataclasses.replace(config, train=dataclasses.replace(config.train, seed=i))
                                for i in range(4)])
        async with app.run_test(size=(120, 40)) as pilot:
            handles = list(app.handles.values())
            started = time.monotonic()
            last_steps = {h.run_id: 0 for h in handles}
            while time.monotonic() - started < minutes * 60:
                await asyncio.sleep(10.0)
                # A key as the terminal delivers it; answered once the help screen is laid out.
                pressed = time.monotonic()
                app.post_message(events.Key("question_mark", "?"))
                while not (isinstance(app.screen, HelpScreen) and app.screen.query(Button)
                           and app.screen.query_one(Button).region.area):
                    await asyncio.sleep(0.002)
                latency = time.monotonic() - pressed
                app.post_message(events.Key("escape", None))
                while isinstance(app.screen, HelpScreen):
                    await asyncio.sleep(0.01)
                steps = {h.run_id: app.panel(h.run_id).step for h in handles}
                samples.append({"t": round(time.monotonic() - started, 1), "key_latency_ms": latency * 1000,
                                "rss_mib": _rss_mib(),
                                "all_advanced": all(steps[k] > last_steps[k] for k in steps),
                                "steps": sum(steps.values())})
                last_steps = steps
                print(f"  soak: {samples[-1]}", file=sys.stderr)
            for handle in handles:
                handle.control.stop("soak over")
            while not all(h.done.is_set() for h in handles):
                await pilot.pause(0.1)

    import gc

    gc.callbacks.append(time_full_collections)
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(scenario(Path(folder) / "runs"))
    gc.callbacks.remove(time_full_collections)
    latencies = [s["key_latency_ms"] for s in samples]
    rss = [s["rss_mib"] for s in samples]
    early = rss[min(5, len(rss) - 1)]  # after the first minute, once caches have filled
    return {"minutes": minutes, "samples": len(samples), "runs": 4,
            "every_run_advanced_every_sample": all(s["all_advanced"] for s in samples),
            "key_latency_ms_median": statistics.median(latencies), "key_latency_ms_max": max(latencies),
            "key_latency_ms_p95": sorted(latencies)[max(0, round(0.95 * len(latencies)) - 1)],
            "presses_over_200_ms": sum(latency > 200 for latency in latencies),
            # Resident memory averaged over two-minute windows (12 samples), to see a drift.
            "rss_mib_window_means": [statistics.mean(rss[i:i + 12]) for i in range(0, len(rss), 12)],
            "rss_mib_after_1_min": early, "rss_mib_end": rss[-1], "rss_mib_max": max(rss),
            "total_steps": samples[-1]["steps"], "full_collections": len(full_collections),
            "full_collection_ms_max": 1000 * max(full_collections, default=0.0), "samples_detail": samples}


def main() -> None:
    # Started as a shell's background job (`... &`), this process and every command it starts
    # would have SIGINT ignored, and cifartui keeps an ignored SIGINT ignored (as under nohup):
    # the Ctrl-C trials would measure nothing. The commands get it delivered, as in a terminal.
    for number in (signal.SIGINT, signal.SIGHUP):
        if signal.getsignal(number) == signal.SIG_IGN:
            signal.signal(number, signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-trials", type=int, default=100)
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--early-interrupt-trials", type=int, default=30)
    parser.add_argument("--checkpoint-interrupt-trials", type=int, default=10)
    parser.add_argument("--sweep-kill-trials", type=int, default=20)
    parser.add_argument("--damaged-run-cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                         f"torch {torch.__version__}"}
    if args.kill_trials:
        report["kill"] = kill_trials(args.kill_trials, args.seed)
    if args.sweep_kill_trials:
        report["sweep_kill"] = sweep_kill_trials(args.sweep_kill_trials, args.seed)
    if args.early_interrupt_trials:
        report["early_interrupt"] = early_interrupt_trials(args.early_interrupt_trials, args.seed)
    if args.checkpoint_interrupt_trials:
        report["checkpoint_interrupt"] = interrupted_checkpoint_trials(args.checkpoint_interrupt_trials)
    if args.damaged_run_cases:
        report["damaged_runs"] = damaged_run_trials(args.damaged_run_cases, args.seed)
    if args.soak_minutes:
        report["soak"] = soak(args.soak_minutes)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Machine: {report['machine']}\n")
    if "kill" in report:
        k = report["kill"]
        print("| kill -9 trials | killed mid-checkpoint-write | before first checkpoint | last checkpoint loaded "
              "| resumed bit-identical |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| {k['trials']} | {k['killed_mid_checkpoint_write']} | {k['killed_before_first_checkpoint']} | "
              f"{k['last_checkpoint_loaded']}/{k['with_checkpoint']} | "
              f"{k['resumed_bit_identical']}/{k['with_checkpoint']} |\n")
    if "sweep_kill" in report:
        w = report["sweep_kill"]
        print("| sweep kill -9 trials (driver, and a run half the time) | runs | runs killed | sweeps finished "
              "| every run finished once | unchanged runs bit-identical | live changes confirmed, held after the kill |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        print(f"| {w['trials']} | {w['runs']} | {w['runs_killed']} | {w['all_finished']}/{w['trials']} | "
              f"{w['finished_once']}/{w['trials']} | {w['bit_identical']}/{w['compared']} | "
              f"{w['changes_held']}/{w['changes_confirmed']} |\n")
    if "early_interrupt" in report:
        e = report["early_interrupt"]
        interrupted = e["trials"] - e["ended_before_the_signal"]
        print("| Ctrl-C in the first 4 s (train, inspect, predict) | ended before it | exit 130 of the others "
              "| tracebacks | run folders without a checkpoint |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| {e['trials']} | {e['ended_before_the_signal']} | {e['exit_130']}/{interrupted} | {e['tracebacks']} | "
              f"{e['runs_without_checkpoint']} |\n")
    if "checkpoint_interrupt" in report:
        c = report["checkpoint_interrupt"]
        print("| second Ctrl-C while the stop checkpoint is written | sent while its temporary file existed | exit 130 "
              "| last checkpoint loads | \"run failed\" | temporary files left | status after |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        print(f"| {c['trials']} | {c['second_signal_mid_write']} | {c['exit_130']}/{c['trials']} | "
              f"{c['last_checkpoint_loads']}/{c['trials']} | {c['failed_messages']} | {c['temporary_files_left']} | "
              f"{c['status_counts']} |\n")
    if "damaged_runs" in report:
        d = report["damaged_runs"]
        print("| damaged run-folder files (config, status, metrics, last.pt, best.pt) | commands run | cases with exit 0 "
              "or 2 naming the file, no traceback |")
        print("| --- | --- | --- |")
        print(f"| {d['cases']} | {d['commands']} | {d['clean_cases']}/{d['cases']} |\n")
    if "soak" in report:
        s = report["soak"]
        print("| soak | samples | every run advanced | key latency median / p95 / max (over 200 ms) "
              "| RSS after 1 min / end / max | RSS per two minutes | full collections (longest) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        windows = " / ".join(f"{m:,.0f}" for m in s["rss_mib_window_means"])
        print(f"| {s['runs']} runs, {s['minutes']:g} min | {s['samples']} | {s['every_run_advanced_every_sample']} | "
              f"{s['key_latency_ms_median']:.0f} / {s['key_latency_ms_p95']:.0f} / {s['key_latency_ms_max']:.0f} ms "
              f"({s['presses_over_200_ms']}) | "
              f"{s['rss_mib_after_1_min']:,.0f} / {s['rss_mib_end']:,.0f} / {s['rss_mib_max']:,.0f} MiB | "
              f"{windows} MiB | {s['full_collections']} ({s['full_collection_ms_max']:.0f} ms) |")


if __name__ == "__main__":
    main()
