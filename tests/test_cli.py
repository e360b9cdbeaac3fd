"""The headless CLI as a user drives it: train, Ctrl-C, resume, runs, export, malicious files."""

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifartui.cli import main
from cifartui.engine.runs.checkpoint import load_checkpoint
from cifartui.engine.runs.folders import RunLock
from tests.conftest import malicious_pickle

SLOW_ENOUGH_PRESET = """
description = "a run long enough to interrupt mid-epoch"
[dataset]
name = "synthetic"
train_size = 3000
test_size = 200
val_fraction = 0.2
[model]
name = "cnn3"
[optimizer]
name = "sgd"
lr = 0.05
momentum = 0.9
[augment]
crop_padding = 4
flip = true
[train]
epochs = 2
batch_size = 32
log_every = 1
device = "cpu"
"""


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cifartui.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _only_run(runs: Path) -> Path:
    (run,) = list(runs.iterdir())
    return run


@pytest.mark.slow
def test_ctrl_c_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    preset = tmp_path / "interruptible.toml"
    preset.write_text(SLOW_ENOUGH_PRESET)
    whole_runs, split_runs = tmp_path / "whole", tmp_path / "split"

    whole = _cli("train", str(preset), "--runs-dir", str(whole_runs))
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    split = _cli("train", str(preset), "--runs-dir", str(split_runs))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = list(split_runs.glob("*/metrics.jsonl"))
        if runs and any(json.loads(line).get("step", 0) >= 8 for line in runs[0].read_text().splitlines()
                        if '"StepMetrics"' in line):
            break
        time.sleep(0.02)
    split.send_signal(signal.SIGINT)
    out, err = split.communicate(timeout=120)
    assert split.returncode == 130, err
    run = _only_run(split_runs)
    assert f"cifartui resume {run}" in " ".join(out.split()).replace("\n", "")
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert 0 < state["progress"]["position"] < 75, "the interrupt should land mid-epoch (75 steps an epoch)"
    assert json.loads((run / "status.json").read_text())["status"] == "stopped"

    resumed = _cli("resume", str(run))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    a = load_checkpoint(_only_run(whole_runs) / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for index, slot in a["optimizer"]["state"].items():
        for name, value in slot.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name])


def _tiny_run(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    code = main(["train", "demo-synthetic", "--epochs", "2", "--set", "dataset.train_size=400",
                 "--set", "dataset.test_size=100", "--runs-dir", str(runs), "--device", "cpu"])
    assert code == 0
    return _only_run(runs)


@pytest.mark.parametrize("unsafe_env", [False, True])
def test_malicious_last_checkpoint_is_refused_and_runs_no_code(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               unsafe_env: bool) -> None:
    run = _tiny_run(tmp_path)
    marker = tmp_path / "code-ran"
    (run / "checkpoints" / "last.pt").write_bytes(malicious_pickle(marker))
    if unsafe_env:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    capsys.readouterr()
    assert main(["resume", str(run), "--epochs", "3"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "refused" in err and "last.pt" in err and "Traceback" not in err
    assert not marker.exists()


def test_runs_lists_status_and_best_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _tiny_run(tmp_path)
    capsys.readouterr()
    assert main(["runs", "--runs-dir", str(run.parent)]) == 0
    out = capsys.readouterr().out
    assert run.name in out and "finished" in out and "2/2" in out


def test_resume_of_a_finished_run_needs_more_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _tiny_run(tmp_path)
    assert main(["resume", str(run)]) == 2
    assert "already finished" in capsys.readouterr().err
    assert main(["resume", str(run), "--epochs", "3"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_export_csv_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _tiny_run(tmp_path)
    assert main(["export", str(run), "--format", "csv", "-o", str(tmp_path / "m.csv")]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "m.csv").read_text())))
    epochs = [r for r in rows if r["event"] == "EpochEnded"]
    assert len(epochs) == 2 and float(epochs[-1]["val_top1"]) >= 0
    capsys.readouterr()
    assert main(["export", str(run), "--format", "json"]) == 0
    events = json.loads(capsys.readouterr().out)
    kinds = [event["event"] for event in events]
    assert kinds[0] == "PhaseStarted" and kinds.index("RunStarted") < kinds.index("StepMetrics")
    assert kinds[-1] == "RunFinished"
    assert main(["export", str(tmp_path), "--format", "csv"]) == 2  # not a run directory


def test_partial_last_metrics_line_still_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _tiny_run(tmp_path)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"event": "StepMetrics", "step": 9')  # a crash mid-line
    capsys.readouterr()
    assert main(["runs", "--runs-dir", str(run.parent)]) == 0
    assert "finished" in capsys.readouterr().out


def test_resume_refuses_a_run_another_process_is_training(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = _tiny_run(tmp_path)
    before = (run / "metrics.jsonl").read_bytes()
    with RunLock(run):  # as a process training the run holds it
        started = time.monotonic()
        assert main(["resume", str(run), "--epochs", "3"]) == 2
        assert time.monotonic() - started < 5
    error = capsys.readouterr().err
    assert "is being trained right now by process" in error and str(os.getpid()) in error
    assert (run / "metrics.jsonl").read_bytes() == before  # nothing written by the refused process


@pytest.mark.parametrize("pid", ["own", 1, 2**70, "text"])
def test_a_stale_pid_in_status_does_not_block_a_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      pid: object) -> None:
    run = _tiny_run(tmp_path)
    status = json.loads((run / "status.json").read_text())
    # After a container restart the new process can even get the old pid.
    status.update(status="running", pid=os.getpid() if pid == "own" else pid)
    (run / "status.json").write_text(json.dumps(status))
    assert main(["runs", "--runs-dir", str(run.parent)]) == 0
    assert "interrupted" in capsys.readouterr().out
    assert main(["resume", str(run), "--epochs", "3"]) == 0
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_two_resumes_started_together_train_the_run_once(tmp_path: Path) -> None:
    preset = tmp_path / "slow.toml"
    preset.write_text(SLOW_ENOUGH_PRESET.replace("epochs = 2", "epochs = 1"))
    runs = tmp_path / "runs"
    first = _cli("train", str(preset), "--runs-dir", str(runs), "--set", "train.max_steps=30")
    assert first.wait(timeout=240) == 0, first.stderr.read()
    run = _only_run(runs)
    extend = ("resume", str(run), "--epochs", "2")
    one, two = _cli(*extend), _cli(*extend)
    codes = sorted([one.wait(timeout=300), two.wait(timeout=300)])
    assert codes == [0, 2]
    loser = one if one.returncode == 2 else two
    assert "is being trained right now" in loser.stderr.read()
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "RunStarted"]
    assert len(starts) == 2  # the first train and one resume, not two
    steps = [e["step"] for e in events if e["event"] == "StepMetrics"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


def test_headless_non_finite_loss_stops_with_finite_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from cifartui.engine.train import trainer as trainer_module
    real_build = trainer_module.build_model

    def build_exploding(config, classes):  # noqa: ANN001
        model = real_build(config, classes)
        original, calls = model.forward, {"n": 0}

        def forward(x):  # noqa: ANN001
            calls["n"] += model.training
            return original(x) * (float("inf") if calls["n"] == 20 and model.training else 1.0)
        model.forward = forward
        return model

    monkeypatch.setattr(trainer_module, "build_model", build_exploding)
    runs = tmp_path / "runs"
    code = main(["train", "demo-synthetic", "--set", "dataset.train_size=600", "--runs-dir", str(runs),
                 "--device", "cpu"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 3
    assert "non-finite loss" in out and "step 19" in out and "cifartui resume" in out
    state = load_checkpoint(_only_run(runs) / "checkpoints" / "last.pt")
    assert state["progress"]["step"] == 20
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_unknown_device_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "demo-synthetic", "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_synthetic_reaches_80_percent(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    assert main(["train", "demo-synthetic", "--runs-dir", str(tmp_path / "runs"), "--device", "cpu",
                 "--summary-json", str(summary)]) == 0
    result = json.loads(summary.read_text())
    assert result["test_top1"] >= 80.0, result


def test_explicit_max_steps_is_kept_beside_epochs(tmp_path: Path) -> None:
    """--epochs drops only the recipe's own iteration budget; an explicit --set train.max_steps stays."""
    from cifartui import presets

    explicit = presets.compose(presets.load("demo-synthetic"), epochs=3, sets=["train.max_steps=7"])
    assert (explicit.train.epochs, explicit.train.max_steps) == (3, 7)
    recipe_budget = presets.compose(presets.load("elu18-cifar100"), epochs=3)
    assert (recipe_budget.train.epochs, recipe_budget.train.max_steps) == (3, 0)
    summary = tmp_path / "summary.json"
    assert main(["train", "demo-synthetic", "--epochs", "3", "--set", "train.max_steps=7", "--set",
                 "dataset.train_size=400", "--set", "dataset.test_size=50", "--device", "cpu",
                 "--runs-dir", str(tmp_path / "runs"), "--summary-json", str(summary)]) == 0
    assert json.loads(summary.read_text())["steps"] == 7


def test_a_bad_key_in_a_part_preset_names_the_part_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parts = tmp_path / "config" / "presets" / "model"  # CIFARTUI_CONFIG points at tmp_path / "config"
    parts.mkdir(parents=True)
    (parts / "wide.toml").write_text('name = "cnn3"\nwidht = 2\n')
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[dataset]\nname = "synthetic"\n[model]\npreset = "wide"\n')
    assert main(["train", str(recipe)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{parts / 'wide.toml'}: 'model.widht': unknown key" in err
    assert main(["train", "demo-synthetic", "--model", "wide"]) == 2  # swapped in on the command line
    assert f"{parts / 'wide.toml'}: 'model.widht'" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("option", [["--seed", str(2**32)], ["--set", "train.seed=4294967296"],
                                    ["--set", "dataset.train_size=1000000000000"],
                                    ["--set", "dataset.test_size=1000000000"]],
                         ids=["seed", "set-seed", "train-size", "test-size"])
def test_values_that_cannot_run_are_refused_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           option: list[str]) -> None:
    runs = tmp_path / "runs"
    assert main(["train", "demo-synthetic", "--device", "cpu", "--runs-dir", str(runs), *option]) == 2
    err = capsys.readouterr().err
    assert "out of range" in err and "Traceback" not in err
    assert not runs.exists() or not list(runs.iterdir())


# --- where results go -------------------------------------------------------------------------

QUICK = ["--device", "cpu", "--epochs", "1", "--set", "dataset.train_size=400", "--set", "dataset.test_size=50"]


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` read-only for this process, root included: a read-only bind mount for root, permissions else."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode:
        pytest.skip("running as root without the right to mount: no way to make a folder read-only for root")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder), str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True, capture_output=True)


def _one_line_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.mark.parametrize("case", ["runs folder is a file", "runs folder under a file", "runs folder in /proc",
                                  "runs folder in /sys", "CIFARTUI_RUNS is a file", "runs folder read-only",
                                  "summary under a file", "summary is a folder", "summary in /sys"])
def test_unusable_output_paths_are_refused_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], case: str) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    runs = tmp_path / "runs"
    runs.mkdir()
    options = {"runs folder is a file": ["--runs-dir", str(a_file)],
               "runs folder under a file": ["--runs-dir", str(a_file / "runs")],
               "runs folder in /proc": ["--runs-dir", "/proc/self/cifartui-runs"],
               "runs folder in /sys": ["--runs-dir", "/sys/cifartui-runs"],
               "CIFARTUI_RUNS is a file": [],
               "runs folder read-only": ["--runs-dir", str(runs)],
               "summary under a file": ["--runs-dir", str(runs), "--summary-json", str(a_file / "s.json")],
               "summary is a folder": ["--runs-dir", str(runs), "--summary-json", str(tmp_path)],
               "summary in /sys": ["--runs-dir", str(runs), "--summary-json", "/sys/summary.json"]}[case]
    named = options[-1] if options else str(a_file)
    if case == "CIFARTUI_RUNS is a file":
        monkeypatch.setenv("CIFARTUI_RUNS", str(a_file))
    if case == "runs folder read-only":
        with read_only(runs):
            assert main(["train", "demo-synthetic", *QUICK, *options]) == 2
    else:
        assert main(["train", "demo-synthetic", *QUICK, *options]) == 2
    _one_line_error(capsys, named)
    assert not list(runs.iterdir())  # refused before anything trained


def test_a_300_character_run_name_trains_in_a_folder_the_file_system_allows(tmp_path: Path) -> None:
    name = "very-long-name-" * 20
    assert main(["train", "demo-synthetic", *QUICK, "--set", f"name={name}", "--runs-dir", str(tmp_path)]) == 0
    (run,) = tmp_path.iterdir()
    assert len(os.fsencode(run.name)) <= 255 and json.loads((run / "config.json").read_text())["name"] == name


def test_resume_of_a_read_only_run_is_refused_and_changes_nothing(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = _tiny_run(tmp_path)
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    with read_only(run):
        assert main(["resume", str(run), "--epochs", "3"]) == 2
    _one_line_error(capsys, str(run))
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_the_app_with_an_unusable_runs_folder_is_refused_before_it_starts(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    app = subprocess.run([sys.executable, "-m", "cifartui.cli", "run", "demo-synthetic", "--runs-dir", str(a_file),
                          "--images", "halfblock"], capture_output=True, text=True, timeout=120)
    assert app.returncode == 2 and f"{a_file}: unusable as the runs folder" in app.stderr, app.stderr


@pytest.fixture(scope="module")
def export_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished run whose history the export cases write out (never into the run itself)."""
    runs = tmp_path_factory.mktemp("export") / "runs"
    assert main(["train", "demo-synthetic", *QUICK, "--runs-dir", str(runs)]) == 0
    (run,) = runs.iterdir()
    return run


@pytest.mark.parametrize("output_format", ["csv", "json", "png", "tensorboard"])
@pytest.mark.parametrize("where", ["under a file", "the wrong kind", "inside a read-only folder", "in /sys"])
def test_unusable_export_outputs_are_one_line_errors(export_run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], output_format: str,
                                                     where: str) -> None:
    a_file, folder = tmp_path / "a-file", tmp_path / "out"
    a_file.write_text("")
    folder.mkdir()
    name = {"csv": "x.csv", "json": "x.json", "png": "x.png", "tensorboard": "tb"}[output_format]
    wrong_kind = a_file if output_format == "tensorboard" else folder  # a file where a folder is due, and so on
    output = {"under a file": a_file / name, "the wrong kind": wrong_kind, "inside a read-only folder": folder / name,
              "in /sys": Path("/sys") / name}[where]
    arguments = ["export", str(export_run), "--format", output_format, "-o", str(output)]
    if where == "inside a read-only folder":
        with read_only(folder):
            assert main(arguments) == 2
    else:
        assert main(arguments) == 2
    _one_line_error(capsys, str(output))
    assert not list(folder.iterdir())


def test_png_export_says_the_file_it_wrote_and_refuses_other_extensions(
        export_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(export_run), "--format", "png", "-o", str(tmp_path / "plot")]) == 0
    assert f"Wrote {tmp_path / 'plot.png'}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    assert main(["export", str(export_run), "--format", "png", "-o", str(tmp_path / "x.weird")]) == 2
    _one_line_error(capsys, str(tmp_path / "x.weird"), ".png")


def test_export_of_a_run_without_metrics_is_an_error_naming_the_file(
        export_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / export_run.name
    shutil.copytree(export_run, run)
    (run / "metrics.jsonl").unlink()
    for output_format in ("csv", "json"):
        assert main(["export", str(run), "--format", output_format]) == 2
        _one_line_error(capsys, str(run / "metrics.jsonl"))
    (run / "metrics.jsonl").write_text('{"event": "PhaseStarted", "phase": "loading data", "time": 1.0}\n')
    assert main(["export", str(run), "--format", "csv"]) == 2
    _one_line_error(capsys, str(run / "metrics.jsonl"), "no metrics")


def test_markup_in_names_descriptions_and_paths_is_printed_as_written(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    def squash(text: str) -> str:  # Rich wraps long lines at 80 columns here
        return "".join(text.split())

    runs = tmp_path / "exp[old]"
    assert main(["train", "demo-synthetic", *QUICK, "--runs-dir", str(runs), "--set", "name=a[/x]",
                 "--set", "description=[bold]mine[/bold]"]) == 0
    out = squash(capsys.readouterr().out)
    (run,) = runs.iterdir()
    assert squash("Training a[/x] on cpu") in out and squash(f"Run directory: {run}") in out
    assert squash("a[/x]: finished") in out
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    assert squash(f"Runs in {runs}") in squash(capsys.readouterr().out)
    assert main(["inspect", str(run)]) == 0
    assert squash(f"{run}: checkpoint") in squash(capsys.readouterr().out)
    preset = tmp_path / "config" / "presets" / "[red]mine.toml"  # a user preset with such a name
    preset.parent.mkdir(parents=True)
    preset.write_text('description = "[blink]x[/blink]"\n[dataset]\nname = "synthetic"\n')
    assert main(["presets", "[red]mine"]) == 0
    assert squash("[red]mine: [blink]x[/blink]") in squash(capsys.readouterr().out)


def test_listing_and_exporting_runs_do_not_load_pytorch(export_run: Path) -> None:
    """`runs` and CSV or JSON exports answer at once: PyTorch takes seconds to import."""
    script = ("import io, sys, contextlib\nfrom cifartui.cli import main\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              f"    assert main(['runs', '--runs-dir', {str(export_run.parent)!r}]) == 0\n"
              f"    assert main(['export', {str(export_run)!r}, '--format', 'csv']) == 0\n"
              f"    assert main(['export', {str(export_run)!r}, '--format', 'json']) == 0\n"
              "print(sorted(m for m in ('torch', 'torchvision', 'textual') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_only_headless_commands_load_pytorch_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app draws its first screen before PyTorch loads; train and the like load it first, Ctrl-C only noted."""
    import signal

    from cifartui import cli

    handlers: list[object] = []
    real_signal = signal.signal

    def recording_signal(number, handler):  # noqa: ANN001, ANN202
        handlers.append(handler)
        return real_signal(number, handler)
    monkeypatch.setattr(signal, "signal", recording_signal)
    before = signal.getsignal(signal.SIGINT)
    for argv in ([], ["--runs-dir", "runs"], ["run", "demo-synthetic"], ["runs"], ["presets"], ["train", "-h"]):
        assert cli._interrupted_while_torch_loads(argv) is False
        assert not handlers, argv  # the SIGINT handler was never touched
    assert cli._interrupted_while_torch_loads(["train", "demo-synthetic"]) is False
    assert len(handlers) == 2 and handlers[-1] is before  # noted during the import, then put back
    assert signal.getsignal(signal.SIGINT) is before
