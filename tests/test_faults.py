"""Faults injected into real runs: kill -9, a full disk, out of memory, fuzzed presets, many runs at once.

These are the short variants; `python benchmarks/faults.py` runs the long ones (100+
kill -9 trials, a 10-minute load of four runs in the app) and prints the figures that
the README quotes.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifartui import presets
from cifartui.cli import main
from cifartui.config import ConfigError, RunConfig, from_mapping
from cifartui.engine.runs import events as ev
from cifartui.engine.train import checkpointing as checkpointing_module
from cifartui.engine.train import trainer as trainer_module
from cifartui.engine.runs.checkpoint import load_checkpoint
from cifartui.engine.train.trainer import RunControl, Trainer
from benchmarks.faults import (KILL_PRESET, RUN_FILES, SLOW_CHECKPOINT_PRESET, cifartui_process, cli_in_process,
                               damaged_content, damaged_run_case, finished_tiny_run, kill_trial, reference_run,
                               run_events)
from tests.conftest import tiny_config
from tests.test_trainer import Recorder


def _wait(condition, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_disk_full_while_checkpointing_pauses_and_keeps_the_previous_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = checkpointing_module.save_checkpoint
    calls = {"n": 0}

    def disk_fills_on_second_write(state, path):  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] == 2:
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            real_save(state, temporary)  # half-written, then:
            temporary.unlink()
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(state, path)

    monkeypatch.setattr(checkpointing_module, "save_checkpoint", disk_fills_on_second_write)
    control, recorder = RunControl(), Recorder()
    run_dir = tmp_path / "run"
    trainer = Trainer(tiny_config(epochs=4), run_dir, listeners=[recorder], control=control)
    thread = trainer.start()
    _wait(lambda: recorder.of(ev.RunPaused))
    failed = recorder.of(ev.CheckpointFailed)[0]
    assert "No space left on device" in failed.error and "previous checkpoint is intact" in failed.error
    assert "checkpoint failed" in recorder.of(ev.RunPaused)[0].reason
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["epoch"] == 1  # the first one
    assert not list((run_dir / "checkpoints").glob(".*tmp"))
    control.resume()  # space was freed: carry on
    thread.join(60)
    assert trainer.result.status == "finished"
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["epoch"] == 4


def test_out_of_memory_pauses_with_advice_and_the_run_can_go_on(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_build = trainer_module.build_model

    def build(config, classes):  # noqa: ANN001
        model = real_build(config, classes)
        original, calls = model.forward, {"n": 0}

        def forward(x):  # noqa: ANN001
            if model.training:
                calls["n"] += 1
                if calls["n"] == 5:
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return original(x)
        model.forward = forward
        return model

    monkeypatch.setattr(trainer_module, "build_model", build)
    control, recorder = RunControl(), Recorder()
    trainer = Trainer(tiny_config(epochs=2), tmp_path / "run", listeners=[recorder], control=control)
    thread = trainer.start()
    _wait(lambda: recorder.of(ev.RunPaused))
    (exhausted,) = recorder.of(ev.MemoryExhausted)
    assert exhausted.step == 4 and "batch_size" in exhausted.message
    assert all(p.grad is None for p in trainer.model.parameters())  # what the failed step held is released
    control.resume()
    thread.join(60)
    assert trainer.result.status == "finished" and trainer.progress.step == trainer.total_steps


def test_stale_temporary_files_are_removed_on_start(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    Trainer(tiny_config(epochs=1), run_dir).run()
    stale = run_dir / "checkpoints" / ".last.pt.12345.tmp"
    stale.write_bytes(b"half a checkpoint")
    config = dataclasses.replace(tiny_config(epochs=2))
    Trainer(config, run_dir, resume=True).run()
    assert not stale.exists()


@pytest.mark.slow
def test_kill_9_during_training_and_checkpoint_writes(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    preset = tmp_path / "kill.toml"
    preset.write_text(KILL_PRESET)
    reference = reference_run(preset, tmp_path / "reference")
    total = reference["progress"]["step"]
    trials = request.config.getoption("--kill-trials")
    # Mid-epoch 1 and mid-epoch 2 (57 steps per epoch), then random moments for longer variants.
    rng = random.Random(0)
    moments = [(20, 0.0), (75, 0.0)] + [(rng.randrange(1, total), rng.uniform(0, 0.05)) for _ in range(trials)]
    for trial, (after_step, delay) in enumerate(moments[:trials]):
        result = kill_trial(preset, tmp_path / f"trial{trial}", after_step, delay, reference)
        if trial < 2:
            assert result["had_checkpoint"] and not result["finished_before_kill"], result
            assert result["checkpoint_step"] < total
        if result["had_checkpoint"]:
            assert result["loaded"], result
            assert result["identical"], result


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value and abs(value) != float("inf") else "nan"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


KEYS = ["name", "lr", "epochs", "batch_size", "val_fraction", "preprocess", "momentum", "rates", "preset",
        "classes", "dropout", "flip", "unit", "milestones", "nonsense"]
SCALARS = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=False),
                    st.text(max_size=12))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4))
TABLES = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["dataset", "model", "optimizer", "augment", "train", "reference",
                                        "description", "name"]), st.one_of(TABLES, VALUES), max_size=5))
def test_fuzzed_preset_values_are_accepted_or_refused_cleanly(tmp_path: Path, document: dict) -> None:
    lines, tables = [], []
    for key, value in document.items():
        if isinstance(value, dict):
            tables.append(f"[{key}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in value.items()))
        else:
            lines.append(f"{key} = {_toml_value(value)}\n")
    path = tmp_path / "fuzz.toml"
    path.write_text("".join(lines) + "".join(tables))
    try:
        presets.load(str(path))
    except ConfigError as error:
        assert str(path) in str(error) or "preset" in str(error)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_fuzzed_preset_bytes_never_raise_anything_but_config_errors(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "bytes.toml"
    path.write_bytes(raw)
    try:
        presets.load(str(path))
    except ConfigError as error:
        assert str(path) in str(error)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.recursive(SCALARS, lambda c: st.lists(c, max_size=3)
                                                         | st.dictionaries(st.text(max_size=5), c, max_size=3)),
                       max_size=6))
def test_fuzzed_plain_data_only_ever_raises_config_error(data: dict) -> None:
    try:
        from_mapping(RunConfig, data, "fuzz")
    except ConfigError:
        pass


def test_broken_preset_via_cli_exits_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.toml"
    path.write_bytes(b"[train]\nepochs = \x00\x01")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "broken.toml" in err.replace("\n", "")


def test_in_the_app_a_full_disk_and_oom_pause_their_run_and_the_others_go_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cifartui.ui.app import make_app
    from tests.app_helpers import app_config, run, wait_for

    real_save = checkpointing_module.save_checkpoint

    def save(state, path):  # noqa: ANN001
        if path.parent.parent.name.endswith("-disk"):  # the run named "disk" has no space left
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(state, path)

    class OutOfMemoryTrainer(Trainer):
        def _setup(self) -> None:
            super()._setup()
            original, failed = self.model.forward, []

            def forward(x):  # noqa: ANN001
                if self.model.training and self.progress.step == 3 and not failed:
                    failed.append(True)
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
                return original(x)
            self.model.forward = forward

    def factory(config, run_dir, **kwargs):  # noqa: ANN001
        return (OutOfMemoryTrainer if config.name == "oom" else Trainer)(config, run_dir, **kwargs)

    monkeypatch.setattr(checkpointing_module, "save_checkpoint", save)
    configs = [dataclasses.replace(app_config(epochs=3), name=name) for name in ("disk", "oom", "healthy")]

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, trainer_factory=factory, initial=configs)
        async with app.run_test(size=(120, 40)) as pilot:
            disk, oom, healthy = app.handles.values()
            await wait_for(pilot, lambda: app.panel(disk.run_id).status == "paused", timeout=60)
            await wait_for(pilot, lambda: app.panel(oom.run_id).status == "paused", timeout=60)
            assert "No space left" in app.panel(disk.run_id).alert_text
            assert "out of memory" in app.panel(oom.run_id).alert_text
            assert "batch_size" in app.panel(oom.run_id).alert_text
            await wait_for(pilot, lambda: healthy.done.is_set() and app.panel(healthy.run_id).status == "finished",
                           timeout=120)
            oom.control.resume()  # memory was freed elsewhere: the same batch runs again
            await wait_for(pilot, lambda: oom.done.is_set(), timeout=120)
            assert app.panel(oom.run_id).status == "finished"
            disk.control.stop("test over")
            await wait_for(pilot, lambda: disk.done.is_set())
    run(scenario())


@pytest.mark.slow
def test_four_runs_in_the_app_keep_training_and_the_ui_keeps_answering(tmp_path: Path) -> None:
    from cifartui.ui.app import make_app
    from cifartui.ui.screens.dialogs import HelpScreen
    from tests.app_helpers import app_config, run, wait_for

    async def scenario() -> None:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False, initial=[app_config(epochs=200)] * 4)
        async with app.run_test(size=(120, 40)) as pilot:
            handles = list(app.handles.values())
            await wait_for(pilot, lambda: all(app.panel(h.run_id).step > 2 for h in handles), timeout=60)
            for _ in range(3):
                before = {h.run_id: app.panel(h.run_id).step for h in handles}
                await pilot.press("question_mark")
                await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), timeout=10)
                await pilot.press("escape")
                await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen), timeout=10)
                await wait_for(pilot, lambda: all(app.panel(h.run_id).step > before[h.run_id] for h in handles),
                               timeout=30)
            for handle in handles:
                handle.control.stop("test over")
            await wait_for(pilot, lambda: all(h.done.is_set() for h in handles), timeout=30)
    run(scenario())


# --- damaged run folders -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_tiny_run(tmp_path_factory.mktemp("finished") / "runs")


def _metrics_with_epoch(run: Path, epoch: object) -> bytes:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    edited = [json.dumps({**json.loads(line), "epoch": epoch}) if '"EpochEnded"' in line else line for line in lines]
    return ("\n".join(edited) + "\n").encode()


def _status_with_pid(run: Path, pid: object) -> bytes:
    return json.dumps({**json.loads((run / "status.json").read_text()), "status": "running", "pid": pid}).encode()


@pytest.mark.parametrize("target, make", [
    ("config.json", lambda run: b"[]"),
    ("config.json", lambda run: b"null"),
    ("config.json", lambda run: b'{"train": {"epochs": "many"}}'),
    ("config.json", lambda run: b"\xff\xfe not text"),
    ("config.json", lambda run: b"[" * 100000),
    ("metrics.jsonl", lambda run: _metrics_with_epoch(run, "x")),
    ("metrics.jsonl", lambda run: _metrics_with_epoch(run, 1e300)),
    ("metrics.jsonl", lambda run: b'{"event": "EpochEnded"}\n{"event": "RunFinished", "test_top1": "high"}\n'),
    ("status.json", lambda run: _status_with_pid(run, 2**70)),
    ("status.json", lambda run: b'["running"]'),
    ("checkpoints/best.pt", lambda run: os.urandom(3000)),
], ids=["config-list", "config-null", "config-wrong-type", "config-not-utf8", "config-deep", "metrics-epoch-text",
        "metrics-epoch-huge", "metrics-fields-missing", "status-huge-pid", "status-list", "best-random-bytes"])
def test_named_damage_in_a_run_folder_gives_a_message_not_a_traceback(tiny_run: Path, tmp_path: Path, target: str,
                                                                     make) -> None:  # noqa: ANN001
    result = damaged_run_case(tiny_run, tmp_path / "runs", target, make(tiny_run))
    assert not result["failures"], result


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(RUN_FILES), seed=st.integers(0, 2**32 - 1))
def test_fuzzed_run_folder_files_give_a_message_naming_the_file(tiny_run: Path,
                                                                tmp_path_factory: pytest.TempPathFactory,
                                                                target: str, seed: int) -> None:
    """Whatever config.json, status.json, metrics.jsonl or a checkpoint holds: exit 0, or 2 naming the file."""
    content = damaged_content((tiny_run / target).read_bytes(), target, random.Random(seed))
    result = damaged_run_case(tiny_run, tmp_path_factory.mktemp("case") / "runs", target, content)
    assert not result["failures"], result


def test_commands_on_a_run_whose_config_is_a_list_name_the_file(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, run)
    (run / "config.json").write_text("[]")
    from PIL import Image
    Image.new("RGB", (40, 30)).save(tmp_path / "photo.png")
    for argv in (["resume", str(run)], ["export", str(run), "--format", "csv"], ["inspect", str(run)],
                 ["predict", str(run), str(tmp_path / "photo.png")]):
        code, _, err = cli_in_process(argv)
        assert code == 2 and f"{run / 'config.json'}: expected a JSON object" in err, (argv, err)
    code, out, err = cli_in_process(["runs", "--runs-dir", str(tmp_path)])
    assert code == 0 and "broken" in out and "config.json" in err


def test_the_app_starts_over_broken_runs_and_history_shows_them_as_broken(tiny_run: Path, tmp_path: Path) -> None:
    from textual.widgets import DataTable, Static

    from cifartui.ui.app import make_app
    from cifartui.ui.screens.dialogs import ResumeOfferScreen
    from cifartui.ui.screens.history import HistoryScreen
    from tests.app_helpers import run, wait_for

    runs = tmp_path / "runs"
    damage = {"a-config-list": ("config.json", b"[]"), "b-config-null": ("config.json", b"null"),
              "c-bad-metrics": ("metrics.jsonl", _metrics_with_epoch(tiny_run, "x") + b'[1, 2]\n{"event": 3}\n'
                                b'{"event": "StepMetrics", "step": "ten", "loss": null}\n'),
              "d-huge-pid": ("status.json", _status_with_pid(tiny_run, 2**70))}
    for name, (target, content) in damage.items():
        shutil.copytree(tiny_run, runs / name)
        (runs / name / target).write_bytes(content)

    async def scenario() -> None:
        app = make_app(runs_dir=runs)  # offering to resume reads every run as the app starts
        async with app.run_test(size=(120, 40)) as pilot:
            # The run with a stale live status is offered for resume; the broken ones are not.
            await wait_for(pilot, lambda: isinstance(app.screen, ResumeOfferScreen))
            assert app.screen.names == ["d-huge-pid"]
            await pilot.press("n")
            await pilot.press("h")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
            table = app.screen.query_one("#runs-table", DataTable)
            statuses = {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[1]) for i in range(table.row_count)}
            assert statuses == {"d-huge-pid": "interrupted", "c-bad-metrics": "finished",
                                "b-config-null": "broken", "a-config-list": "broken"}
            problems = str(app.screen.query_one("#history-problems", Static).render())
            assert problems.count("config.json") == 2
            table.move_cursor(row=table.get_row_index(str(runs / "b-config-null")), animate=False)
            await pilot.press("enter")  # a broken run: a message, and the app carries on
            await pilot.pause(0.3)
            assert isinstance(app.screen, HistoryScreen) and not app.handles
            assert any("b-config-null" in str(n.message) for n in app._notifications)
            table.move_cursor(row=table.get_row_index(str(runs / "c-bad-metrics")), animate=False)
            await pilot.press("enter")  # the run with damaged metrics lines opens without them
            await wait_for(pilot, lambda: len(app.handles) == 1)
            panel = app.panel(next(iter(app.handles)))
            await wait_for(pilot, lambda: panel.finished is not None)
    run(scenario())


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


@pytest.mark.parametrize("signal_name, expected", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_the_app_exits_with_the_code_of_the_signal_that_ended_it(tmp_path: Path, signal_name: str,
                                                                 expected: int) -> None:
    import shlex
    import signal as signals
    import sys
    import uuid

    from tests.test_tmux import _tmux, _wait_for_screen

    session = f"cifartui-exit-{uuid.uuid4().hex[:8]}"
    code_file = tmp_path / "code"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {
        "CIFARTUI_DATA": str(tmp_path / "data"), "CIFARTUI_CONFIG": str(tmp_path / "config"),
        "TERM": "tmux-256color"}.items())
    command = (f"env {env} {shlex.quote(sys.executable)} -m cifartui.cli --images halfblock --runs-dir "
               f"{shlex.quote(str(tmp_path / 'runs'))}; echo $? > {shlex.quote(str(code_file))}")
    _tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", f"bash -c {shlex.quote(command)}")
    try:
        _wait_for_screen(session, r"No runs yet")
        shell = int(_tmux("display-message", "-p", "-t", session, "#{pane_pid}").strip())
        (app_process,) = _children(shell)
        os.kill(app_process, getattr(signals, signal_name))
        _wait(code_file.exists, timeout=15)
        time.sleep(0.1)  # the shell has opened the file; let it write
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert int(code_file.read_text()) == expected


def test_a_crash_of_the_app_is_a_non_zero_exit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import cifartui.ui.app as app_module

    class CrashingApp(app_module.CifarTuiApp):
        def on_mount(self) -> None:
            raise RuntimeError("a bug in the app")

        def run(self, **kwargs):  # noqa: ANN003, ANN201 - no terminal under pytest
            return super().run(headless=True, **kwargs)

    monkeypatch.setattr(app_module, "make_app", lambda **kwargs: CrashingApp(**kwargs))
    assert main(["--runs-dir", str(tmp_path / "runs"), "--images", "halfblock"]) == 1


# --- signals at awkward moments --------------------------------------------------------------------

def _maps_torch(pid: int) -> bool:
    """Whether the process has begun loading PyTorch (its C++ library is mapped)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "inspect", "predict"])
def test_an_early_ctrl_c_exits_130_cleanly_and_leaves_no_empty_run(tiny_run: Path, tmp_path: Path,
                                                                   command: str) -> None:
    """SIGINT while the command starts (PyTorch loading, data, model) or just after: 130, no traceback."""
    import signal as signals

    from PIL import Image

    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "photo.png")
    arguments = {"train": ["train", "demo-synthetic", "--device", "cpu", "--runs-dir", str(tmp_path / "runs")],
                 "inspect": ["inspect", str(tiny_run)],
                 "predict": ["predict", str(tiny_run), str(tmp_path / "photo.png")]}[command]
    # Seconds after PyTorch's library is mapped: before that the interpreter itself is starting
    # (runpy finding the module), where a Ctrl-C is Python's own traceback, and how long that
    # takes depends on the machine's load.
    moments = [0.0, 0.8, 2.1, 3.1] if command == "train" else [0.0, 0.6, 1.4, 2.2]
    for moment in moments:
        process = cifartui_process(*arguments)
        _wait(lambda: process.poll() is not None or _maps_torch(process.pid), timeout=120)
        time.sleep(moment)
        if process.poll() is not None:  # done before this moment: later moments find nothing to interrupt
            process.communicate()
            break
        process.send_signal(signals.SIGINT)
        out, err = process.communicate(timeout=120)
        # 130, or death by SIGINT when the signal lands as the interpreter exits (its handlers
        # are gone by then): a shell reports both as 130.
        assert process.returncode in (130, -signals.SIGINT), (moment, process.returncode, err[-2000:])
        assert "Traceback" not in err and "Error" not in err, (moment, err[-2000:])
    if command == "train":
        for run in (tmp_path / "runs").glob("*"):  # a run left behind can be resumed
            assert (run / "checkpoints" / "last.pt").is_file(), sorted(p.name for p in run.iterdir())


@pytest.mark.slow
def test_a_second_ctrl_c_while_loading_data_leaves_nothing_to_resume(tmp_path: Path) -> None:
    import signal as signals

    runs = tmp_path / "runs"
    process = cifartui_process("train", "demo-synthetic", "--device", "cpu", "--runs-dir", str(runs),
                               "--set", "dataset.train_size=40000")  # seconds of generating images
    _wait(lambda: any(e.get("phase") == "loading data" for e in run_events(runs)), timeout=120)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    # Python runs a handler once for signals that arrive during one long NumPy call, so
    # Ctrl-C is pressed until the command answers, as an impatient user does.
    deadline, last_press = time.monotonic() + 60, 0.0
    while process.poll() is None and not any("Interrupted" in line for line in lines) \
            and time.monotonic() < deadline:
        if time.monotonic() - last_press > 0.4:
            process.send_signal(signals.SIGINT)
            last_press = time.monotonic()
        time.sleep(0.005)
    process.wait(timeout=120)
    reader.join(10)
    err = process.stderr.read()
    text = " ".join("".join(lines).split())
    # -SIGINT: a press that lands while the interpreter shuts down ends it by SIGINT,
    # which a shell reports as 130 too.
    assert process.returncode in (130, -signals.SIGINT), err
    assert "Training demo-synthetic" not in text, "the data should still have been loading"
    assert "Resume from the last checkpoint" not in text and "Traceback" not in err, (text, err)
    assert not list(runs.iterdir())  # no run folder that only says "failed"


@pytest.mark.slow
def test_a_second_ctrl_c_during_a_checkpoint_write_exits_130_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    """VGG-11's checkpoint (about 75 MB with momentum) takes long enough to be interrupted mid-write."""
    import signal as signals

    preset = tmp_path / "slow-checkpoint.toml"
    preset.write_text(SLOW_CHECKPOINT_PRESET)
    runs = tmp_path / "runs"
    outcomes = []
    for trial in range(2):
        process = cifartui_process("train", str(preset), "--runs-dir", str(runs / str(trial)))
        _wait(lambda: any(e["event"] == "CheckpointSaved" for e in run_events(runs / str(trial))), timeout=180)
        (run,) = (runs / str(trial)).iterdir()
        saved_step = load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"]
        process.send_signal(signals.SIGINT)  # stop: the run writes its checkpoint now
        _wait(lambda: bool(list((run / "checkpoints").glob(".*.tmp"))) or process.poll() is not None, timeout=120)
        process.send_signal(signals.SIGINT)  # and again, while it is being written
        out, err = process.communicate(timeout=120)
        outcomes.append((process.returncode, err[-1500:]))
        assert process.returncode == 130, outcomes
        assert "the run failed" not in err and "Traceback" not in err, outcomes
        assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] >= saved_step
        assert not list((run / "checkpoints").glob(".*.tmp"))
        status = json.loads((run / "status.json").read_text())
        assert status["status"] in ("interrupted", "stopped"), status  # stopped: the write finished first


@pytest.mark.slow
@pytest.mark.parametrize("ignored", ["SIGHUP", "SIGINT"])
def test_an_ignored_signal_stays_ignored_as_under_nohup(tmp_path: Path, ignored: str) -> None:
    """`nohup cifartui train ...` (SIGHUP ignored), or a background job of a shell script (SIGINT ignored)."""
    import signal as signals

    number = getattr(signals, ignored)
    runs = tmp_path / "runs"
    process = cifartui_process("train", "demo-synthetic", "--device", "cpu", "--runs-dir", str(runs), "--epochs",
                               "1", "--set", "dataset.train_size=3000", "--set", "dataset.test_size=100",
                               preexec_fn=lambda: signals.signal(number, signals.SIG_IGN))
    _wait(lambda: any(e["event"] == "StepMetrics" for e in run_events(runs)), timeout=180)
    process.send_signal(number)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "finished" in out


@pytest.mark.slow
def test_running_out_of_cpu_memory_says_what_to_lower(tmp_path: Path) -> None:
    """A batch that does not fit under `ulimit -v`: the CPU allocator's error pauses the run with advice."""
    import resource

    limit = 6 * 2**30  # PyTorch itself maps about 3.5 GB of address space

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    process = cifartui_process("train", "demo-synthetic", "--device", "cpu", "--runs-dir", str(tmp_path / "runs"),
                               "--epochs", "1", "--batch-size", "65536", "--set", "dataset.train_size=30000",
                               "--set", "dataset.test_size=100", preexec_fn=limit_memory)
    out, err = process.communicate(timeout=300)
    message = " ".join(out.split())
    # As a GPU's out-of-memory error: the step is not applied, and headless the run stops (exit 3).
    assert process.returncode == 3, err
    assert "out of memory at step 0 (batch size 65536)" in message and "Lower train.batch_size" in message, out
    assert "Traceback (most recent call last)" not in out + err
