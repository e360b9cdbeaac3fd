"""Sweeps in the app and in listings: the Sweeps view (start, follow, rank, open), History, Compare, `runs`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifartui.cli import main
from cifartui.engine.orchestration.queue import ProgressTails, RunQueue, read_progress
from cifartui.engine.runs.folders import is_locked
from cifartui.engine.orchestration.sweep import find_sweeps, rank_settings, read_sweep, sweep_of, sweep_run_dirs, sweep_runs
from cifartui.ui.app import make_app
from cifartui.ui import background
from tests.app_helpers import app_config, epochs_script, run, wait_for, write_run
from tests.sweep_helpers import fake_sweep, user_preset

# --- reading sweeps (engine) -------------------------------------------------------------------


def test_sweeps_are_found_and_read_without_driving_them(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    finished = fake_sweep(runs, "20260101-120000-sweep-tiny")
    partial = fake_sweep(runs, "20260102-120000-sweep-tiny", values=(0.01, 0.1), seeds=(0,), states={"002": "pending"})
    write_run(runs, "20260103-120000-tiny", app_config(), [])
    assert find_sweeps(runs) == [partial, finished]  # newest first; a run of its own is no sweep
    assert [key for key, _ in sweep_run_dirs(finished)] == ["001", "002", "003", "004"]
    (_, first_run), = sweep_run_dirs(partial)
    assert sweep_of(first_run) == partial and sweep_of(runs / "20260103-120000-tiny") is None

    status = read_sweep(finished)
    assert status.state == "finished" and not status.driven and status.varied == ["optimizer.lr"]
    best = status.ranked[0]
    assert best.best and best.settings == {"optimizer.lr": 0.05} and best.mean == pytest.approx(55.5)
    assert read_sweep(partial).state == "interrupted"  # one run done, one never started, nobody drives it


def test_progress_tails_read_only_what_a_run_appended(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, "run", app_config(), [])
    events = [json.dumps(e.to_json()) + "\n" for e in epochs_script(run_dir, app_config(), epochs=3)]
    epoch_lines = [i for i, line in enumerate(events) if '"EpochEnded"' in line]
    tails = ProgressTails()
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text("".join(events[: epoch_lines[0] + 1]))
    first = tails(run_dir)
    assert first.epochs_done == 1
    with metrics.open("a") as handle:
        handle.write("".join(events[epoch_lines[0] + 1: epoch_lines[1] + 1]))
        handle.write(events[epoch_lines[1] + 1][:10])  # a line still being written counts only when complete
    second = tails(run_dir)
    assert second.epochs_done == 2 and first.epochs_done == 1  # each read is the reader's own
    assert second == read_progress(run_dir)  # the same as reading the whole file
    assert tails._known[metrics][0] == len("".join(events[: epoch_lines[1] + 1]).encode())  # bytes read so far
    metrics.write_text("".join(events[: epoch_lines[0] + 1]))  # the run started afresh: a shorter file
    assert tails(run_dir).epochs_done == 1


# --- `cifartui runs` ---------------------------------------------------------------------------


def test_runs_lists_the_runs_of_each_sweep_grouped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    fake_sweep(runs, "20260101-120000-sweep-tiny", states={"004": "pending"})
    write_run(runs, "20260103-120000-tiny", app_config(), [])
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "20260103-120000-tiny" in out.split("Sweep ")[0]  # the run of its own, in the first table
    group = out.split("Sweep 20260101-120000-sweep-tiny: tiny, 4 runs, interrupted")[1]
    lines = [line.split() for line in group.splitlines()]
    assert ["001", "lr=0.02", "0", "finished", "4/4", "52.00%", "51.00%"] in [line[:7] for line in lines]
    assert ["004", "lr=0.05", "1", "pending", "0/4", "-", "-"] in [line[:7] for line in lines]
    assert "best: optimizer.lr=0.05, best val top-1 55.00% over 1 run" in group  # the pending run has no result
    script = ("import io, sys, contextlib\nfrom cifartui.cli import main\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              f"    assert main(['runs', '--runs-dir', {str(runs)!r}]) == 0\n"
              "print(sorted(m for m in ('torch', 'textual') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result  # listing sweeps loads no PyTorch


# --- the app: a sweep from the form, and one started in a shell ---------------------------------


def _sweeps_screen(app):  # noqa: ANN001, ANN202
    from cifartui.ui.screens.sweeps import SweepsScreen

    assert isinstance(app.screen, SweepsScreen), app.screen
    return app.screen


def _rows(table) -> list[list[str]]:  # noqa: ANN001
    return [[str(cell) for cell in table.get_row_at(index)] for index in range(table.row_count)]


def _expected_ranking(sweep_dir: Path) -> list[list[str]]:
    """The ranked table as rank_settings makes it, in the words `cifartui sweep` prints."""
    expected = []
    for result in rank_settings(sweep_runs(RunQueue.open(sweep_dir).entries)):
        rank = "-" if result.rank is None else (f"★ {result.rank}" if result.best else str(result.rank))
        score = "-" if result.mean is None else (f"{result.mean:.2f}%" if result.std is None
                                                 else f"{result.mean:.2f} ± {result.std:.2f}%")
        test = "-" if result.test_mean is None else f"{result.test_mean:.2f}%"
        expected.append([rank, f"{result.settings['optimizer.lr']:g}", score, test])
    return expected


def _shown_ranking(screen) -> list[list[str]]:  # noqa: ANN001
    return [[row[0], row[1], row[3], row[4]] for row in _rows(screen.query_one("#sweep-ranked"))]


async def _caught_up(pilot, screen) -> None:  # noqa: ANN001
    """Until the screen has shown a read that began after now."""
    reads = screen.reads
    await wait_for(pilot, lambda: screen.reads >= reads + 2, timeout=30)


def test_form_names_mistakes_in_the_command_lines_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_dir = Path(os.environ["CIFARTUI_CONFIG"])
    preset = user_preset(config_dir)
    runs = tmp_path / "runs"
    app = make_app(runs_dir=runs, offer_resume=False)
    cases = [("optimizer.lr=0.1,fast", "", ["--grid", "optimizer.lr=0.1,fast"]),
             ("optimizer.lrate=0.1,0.2", "", ["--grid", "optimizer.lrate=0.1,0.2"]),
             ("optimizer.lr=", "", ["--grid", "optimizer.lr="]),
             ("train.batch_size=32,0.5", "", ["--grid", "train.batch_size=32,0.5"]),
             ("train.seed=1,2", "", ["--grid", "train.seed=1,2"]),
             ("optimizer.lr=0.1,0.2", "0", ["--grid", "optimizer.lr=0.1,0.2", "--parallel", "0"])]
    cli_messages = []
    for _vary, _parallel, cli_args in cases:
        assert main(["sweep", str(preset), "--runs-dir", str(runs), *cli_args]) == 2
        cli_messages.append(" ".join(capsys.readouterr().err.split()))

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("S")
            await pilot.pause(0.2)
            await pilot.press("n")
            await wait_for(pilot, lambda: app.screen.query("#sweep-recipes"))
            form = app.screen
            recipes = form.query_one("#sweep-recipes")
            recipes.highlighted = list(form.recipes).index("tiny")
            await wait_for(pilot, lambda: form.recipe == "tiny")
            assert form.query_one("#sweep-start").disabled  # nothing varied yet
            for (vary, parallel, _cli_args), cli_message in zip(cases, cli_messages):
                form.query_one("#vary-1").value = vary
                form.query_one("#sweep-parallel").value = parallel
                await pilot.pause(0.1)
                assert form.problem and cli_message == f"error: {form.problem}", (form.problem, cli_message)
                assert form.query_one("#sweep-start").disabled
                assert form.problem in str(form.query_one("#sweep-problem").render())
            form.query_one("#vary-1").value = "optimizer.lr=0.1,0.2"
            form.query_one("#sweep-parallel").value = ""
            form.query_one("#sweep-seeds").value = "2"
            await pilot.pause(0.1)
            assert not form.problem and not form.query_one("#sweep-start").disabled
            preview = str(form.query_one("#sweep-preview").render())
            assert "2 settings × 2 (seeds 0..1) = 4 runs" in preview
            assert "cifartui sweep tiny --grid optimizer.lr=0.1,0.2 --seeds 2" in preview
            await pilot.press("escape")
            await pilot.pause(0.1)
            _sweeps_screen(app)

    run(scenario())
    assert not runs.exists() or not find_sweeps(runs)  # nothing was written


@pytest.mark.slow
def test_sweep_started_from_the_form_goes_on_after_the_app_quits_and_ranks_as_the_engine(tmp_path: Path) -> None:
    user_preset(Path(os.environ["CIFARTUI_CONFIG"]))
    runs = tmp_path / "runs"
    first = make_app(runs_dir=runs, offer_resume=False)
    found: dict[str, Path] = {}

    async def start_then_quit() -> None:
        async with first.run_test(size=(120, 40)) as pilot:
            await pilot.press("S")
            await pilot.pause(0.2)
            await pilot.press("n")
            await wait_for(pilot, lambda: first.screen.query("#sweep-recipes"))
            form = first.screen
            form.query_one("#sweep-recipes").highlighted = list(form.recipes).index("tiny")
            await wait_for(pilot, lambda: form.recipe == "tiny")
            await pilot.click("#vary-1")
            await pilot.press(*"optimizer.lr=0.05,0.2")
            await pilot.click("#sweep-parallel")
            await pilot.press("2")
            await wait_for(pilot, lambda: not form.query_one("#sweep-start").disabled)
            await pilot.press("ctrl+s")
            screen = _sweeps_screen(first)
            await wait_for(pilot, lambda: screen.selected is not None and screen.selected_status() is not None
                           and screen.sweep_state(screen.selected_status())[0] == "running", timeout=60)
            found["sweep"] = screen.selected
            await pilot.press("escape", "q")  # no run trains in the app itself: it quits at once

    run(start_then_quit())
    sweep_dir = found["sweep"]
    process = background.driver_started_here(sweep_dir)
    assert process is not None and process.poll() is None and is_locked(sweep_dir)  # the sweep outlived the app
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    assert plan["varied"] == ["optimizer.lr"] and plan["grid"] == {"optimizer.lr": [0.05, 0.2]}
    assert json.loads((sweep_dir / "queue.json").read_text())["parallel"] == 2

    second = make_app(runs_dir=runs, offer_resume=False)

    async def follow_to_the_end() -> None:
        async with second.run_test(size=(120, 40)) as pilot:
            await pilot.press("S")
            screen = _sweeps_screen(second)
            await wait_for(pilot, lambda: screen.selected == sweep_dir and screen.selected_status() is not None)
            await wait_for(pilot, lambda: screen.sweep_state(screen.selected_status())[0] == "finished", timeout=240)
            await _caught_up(pilot, screen)
            assert _shown_ranking(screen) == _expected_ranking(sweep_dir)
            assert [row[0].startswith("★") for row in _shown_ranking(screen)].count(True) >= 1
            queue_rows = _rows(screen.query_one("#sweep-queue"))
            assert [row[4] for row in queue_rows] == ["finished", "finished"]
            assert [row[5] for row in queue_rows] == ["2/2", "2/2"]
            list_row = _rows(screen.query_one("#sweeps-list"))[0]
            assert list_row[0] == sweep_dir.name and list_row[2] == "finished" and list_row[3] == "2/2"

    run(follow_to_the_end())
    assert process.wait(timeout=30) == 0
    assert "Sweep of" in (sweep_dir / "sweep.log").read_text()


@pytest.mark.slow
def test_sweep_started_in_a_shell_is_followed_live_and_its_runs_open_in_tabs(tmp_path: Path) -> None:
    preset = user_preset(tmp_path / "elsewhere")
    runs = tmp_path / "runs"
    headless = subprocess.Popen(
        [sys.executable, "-m", "cifartui.cli", "sweep", str(preset), "--runs-dir", str(runs),
         "--grid", "optimizer.lr=0.05,0.2", "--set", "train.epochs=3", "--set", "dataset.train_size=640"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    app = make_app(runs_dir=runs, offer_resume=False)
    seen: dict[str, set] = {"queue": set(), "epochs": set()}

    async def follow() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("S")
            screen = _sweeps_screen(app)

            def running_run_shown() -> bool:
                status = screen.selected_status()
                if status is None:
                    return False
                for row in _rows(screen.query_one("#sweep-queue")):
                    seen["queue"].add(row[4])
                    seen["epochs"].add(row[5])
                return screen.sweep_state(status)[0] == "running" and any(
                    entry.state == "running" and entry.run_dir is not None for entry in status.entries)
            await wait_for(pilot, running_run_shown, timeout=120)
            status = screen.selected_status()
            assert "driven by process" in str(screen.query_one("#sweep-about").render())
            entry = next(e for e in status.entries if e.state == "running" and e.run_dir is not None)
            queue = screen.query_one("#sweep-queue")
            queue.focus()
            queue.move_cursor(row=int(entry.key) - 1)
            await pilot.press("enter")  # the run opens in a tab, followed while its process trains it
            await wait_for(pilot, lambda: any(h.run_dir == entry.run_dir for h in app.handles.values()))
            handle = next(h for h in app.handles.values() if h.run_dir == entry.run_dir)
            assert handle.control is None and len(app.screen_stack) == 1
            await wait_for(pilot, lambda: handle.status == "finished", timeout=180)
            await pilot.press("S")
            screen = _sweeps_screen(app)

            def finished() -> bool:
                status = screen.selected_status()
                if status is None:
                    return False
                for row in _rows(screen.query_one("#sweep-queue")):
                    seen["queue"].add(row[4])
                    seen["epochs"].add(row[5])
                return screen.sweep_state(status)[0] == "finished"
            await wait_for(pilot, finished, timeout=240)
            await _caught_up(pilot, screen)
            assert _shown_ranking(screen) == _expected_ranking(screen.selected)

    try:
        run(follow())
        out, _ = headless.communicate(timeout=60)
    finally:
        if headless.poll() is None:
            headless.kill()
    assert headless.returncode == 0, out
    assert {"running", "finished"} <= seen["queue"]
    assert seen["epochs"] & {"0/3", "1/3", "2/3"}  # the queue moved while epochs ended, not only at the end


def test_a_followed_run_whose_process_is_still_starting_stays_followed(tmp_path: Path) -> None:
    import socket

    from cifartui.engine.runs import events as ev
    from cifartui.engine.runs.folders import RunLock

    runs = tmp_path / "runs"
    config = app_config()
    events = epochs_script(runs / "x", config, epochs=2)
    run_dir = write_run(runs, "20260101-000000-tiny", config, [ev.PhaseStarted("loading data", "synthetic")],
                        status={"status": "starting", "pid": os.getpid(), "host": socket.gethostname(), "step": 0})
    app = make_app(runs_dir=runs, offer_resume=False)

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("h")
            await pilot.pause(0.3)
            await pilot.press("f")  # as the Sweeps view opens a run: followed
            await wait_for(pilot, lambda: len(app.handles) == 1)
            (handle,) = app.handles.values()
            await pilot.pause(1.5)
            assert handle.status == "following" and handle.run_id in app.registry.follow_timers
            (run_dir / "status.json").write_text(json.dumps({"status": "running", "pid": os.getpid(),
                                                             "host": socket.gethostname()}))
            with (run_dir / "metrics.jsonl").open("a") as stream:
                for event in events[1:]:
                    stream.write(json.dumps(event.to_json()) + "\n")
            (run_dir / "status.json").write_text(json.dumps({"status": "finished", "pid": os.getpid(),
                                                             "host": socket.gethostname()}))
            await wait_for(pilot, lambda: handle.status == "finished")
    lock = RunLock(run_dir).acquire()  # its process holds the run's lock while it starts
    try:
        run(scenario())
    finally:
        lock.release()


# --- History and Compare ------------------------------------------------------------------------


def test_history_names_the_sweep_of_each_run_and_leaves_its_runs_in_place(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    sweep_dir = fake_sweep(runs, "20260101-120000-sweep-tiny")
    write_run(runs, "20260103-120000-tiny", app_config(), [])
    app = make_app(runs_dir=runs, offer_resume=False)

    async def scenario() -> None:
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.press("h")
            await pilot.pause(0.3)
            table = app.screen.query_one("#runs-table")
            assert [str(c.label) for c in table.columns.values()][:2] == ["run", "sweep"]
            sweeps = sorted(str(table.get_row_at(i)[1]) for i in range(table.row_count))
            assert sweeps == [""] + [f"{sweep_dir.name} #{key}" for key in ("001", "002", "003", "004")]
            await pilot.press("slash", *sweep_dir.name[:15], "enter")
            await pilot.pause(0.2)
            assert table.row_count == 4
            await pilot.press("d")  # a sweep's run stays in its sweep
            await pilot.pause(0.2)
            assert len(app.screen_stack) == 2 and len(sweep_run_dirs(sweep_dir)) == 4
            assert not (runs / ".trash").exists()

    run(scenario())


def test_compare_shows_a_sweeps_runs_coloured_by_a_varied_setting(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    fake_sweep(runs, "20260101-120000-sweep-tiny")
    app = make_app(runs_dir=runs, offer_resume=False)

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("S")
            screen = _sweeps_screen(app)
            await wait_for(pilot, lambda: screen.selected_status() is not None)
            await pilot.press("v")
            await wait_for(pilot, lambda: app.screen.query("#rank-table")
                           and app.screen.query_one("#rank-table").row_count == 4)
            compare = app.screen
            assert compare.colour_by == "optimizer.lr"
            chart = compare.query_one("#compare-chart")
            colours: dict[str, set[str]] = {}
            for label, style in chart.styles_by_name.items():
                lr = "0.02" if "lr 0.02" in label else "0.05"
                colours.setdefault(lr, set()).add(str(style))
            assert len(chart.styles_by_name) == 4
            assert all(len(found) == 1 for found in colours.values()) and colours["0.02"] != colours["0.05"]
            assert "Coloured by optimizer.lr" in str(compare.query_one("#compare-note").render())

    run(scenario())


# --- snapshot -----------------------------------------------------------------------------------


def test_sweeps_view_snapshot(snap_compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    runs = Path("runs")  # relative: the screen shows this path
    fake_sweep(runs, "20260101-120000-sweep-tiny", values=(0.01, 0.02, 0.05), seeds=(0, 1),
               states={"005": "stopped", "006": "pending"})
    fake_sweep(runs, "20251231-120000-sweep-tiny", values=(0.1, 0.2), seeds=(0,))
    app = make_app(runs_dir=runs, offer_resume=False)

    async def open_sweeps(pilot) -> None:  # noqa: ANN001
        await pilot.press("S")
        screen = _sweeps_screen(app)
        await wait_for(pilot, lambda: screen.query_one("#sweep-queue").row_count == 6)
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(120, 40), run_before=open_sweeps)


def test_sweeps_key_is_in_the_footer_help_and_palette(tmp_path: Path) -> None:
    from textual.widgets._footer import FooterKey

    from cifartui.ui.screens.dialogs import HELP_TEXT

    def footer_actions(app) -> list[str]:  # noqa: ANN001
        return [key.action for key in app.screen.query(FooterKey)]

    async def scenario(size: tuple[int, int]) -> list[str]:
        app = make_app(runs_dir=tmp_path / "runs", offer_resume=False)
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: "quit" in footer_actions(app))  # the footer fills in after mount
            shown = footer_actions(app)
            assert "Sweeps" in [command.title for command in app.get_system_commands(app.screen)]
            await pilot.press("S")  # shown or not, the key works
            await pilot.pause(0.2)
            _sweeps_screen(app)
        return shown

    wide = asyncio.run(scenario((120, 40)))
    narrow = asyncio.run(scenario((80, 24)))
    assert "sweeps" in wide and "quit" in wide
    assert "sweeps" not in narrow and "quit" in narrow  # at 80 columns it leaves room for the first keys
    assert "[b]S[/b]       sweeps" in HELP_TEXT


def test_sweep_form_snapshot(snap_compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    user_preset(Path(os.environ["CIFARTUI_CONFIG"]))
    monkeypatch.chdir(tmp_path)  # the view behind the form shows the runs folder: the same text in every run
    app = make_app(runs_dir=Path("runs"), offer_resume=False)

    async def fill_form(pilot) -> None:  # noqa: ANN001
        await pilot.press("S")
        await pilot.pause(0.2)
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen.query("#sweep-recipes"))
        form = app.screen
        form.query_one("#sweep-recipes").highlighted = list(form.recipes).index("tiny")
        await wait_for(pilot, lambda: form.recipe == "tiny")
        await pilot.click("#vary-1")
        await pilot.press(*"optimizer.lr=0.01,0.05")
        await pilot.click("#vary-2")
        await pilot.press(*"train.batch_size=32,64")
        await pilot.click("#sweep-seeds")
        await pilot.press("3")
        await wait_for(pilot, lambda: form.draft is not None and len(form.draft.runs) == 12)
        from textual.widgets import Input

        for field in form.query(Input):  # a blinking cursor is drawn or not by the moment the picture is taken
            field.cursor_blink = False
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(120, 40), run_before=fill_form)
