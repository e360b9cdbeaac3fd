"""`cifartui reproduce`: verdicts, the report as Markdown and JSON, a quick reproduction end to end, resume, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cifartui import presets
from cifartui.cli import main
from cifartui.config import ConfigError
from cifartui.engine.orchestration.reproduce import (QUICK_EPOCHS, QUICK_MAX_STEPS, render_json, render_markdown, report_row,
                                       select_recipes, verdict, wall_seconds)
from cifartui.engine.runs.folders import read_metrics

# A seed recipe of the user's whose write-up reported a validation accuracy, so that the
# end-to-end run covers both splits (the shipped validation recipes are ResNets, slow on a CPU).
VALIDATION_RECIPE = """
description = "a tiny recipe whose reference is a validation accuracy"
[dataset]
name = "synthetic"
classes = 4
val_fraction = 0.25
[model]
name = "cnn3"
[optimizer]
name = "sgd"
lr = 0.05
momentum = 0.9
[train]
epochs = 30
batch_size = 32
log_every = 1
[reference]
top1 = 42.0
top5 = 90.0
measured_on = "validation"
source = "A made-up write-up (validation accuracy after 30 epochs)"
seed = "999_made_up"
"""

TINY = ["--dataset", "synthetic", "--set", "dataset.train_size=128", "--set", "dataset.test_size=48",
        "--set", "train.batch_size=32", "--set", "train.checkpoint_minutes=0.0", "--device", "cpu"]

LABEL = {"recipe": "cnn3-cifar10", "seed": "001_2977eeb2eae8fb0c",
         "source": "Deep Learning Lab, Episode 2: CIFAR-10 (100 epochs; 78.22% at 150, 77.77% at 200)",
         "measured_on": "test", "reported_top1": 77.37, "reported_top5": None}


def _entries(directory: Path) -> list[dict]:
    keys = json.loads((directory / "queue.json").read_text())["entries"]
    return [json.loads((directory / key / "entry.json").read_text()) for key in keys]


def _starts(run_dir: Path) -> list[dict]:
    return [e for e in read_metrics(run_dir) if e["event"] == "RunStarted"]


# Verdicts and the report, on hand-made summaries -------------------------------------------------


def test_verdict_within_one_point_below_above_and_runs_that_did_not_finish() -> None:
    assert verdict("finished", 76.37, 77.37).kind == "within"  # exactly one point, despite 1.0000000000000142
    assert verdict("finished", 76.37, 77.37).text == "within 1 point (-1.00)"
    assert verdict("finished", 78.0, 77.37).text == "within 1 point (+0.63)"
    assert verdict("finished", 70.12, 77.37).kind == "below"
    assert verdict("finished", 70.12, 77.37).text == "below by 7.25 points"
    assert verdict("finished", 80.0, 77.37).text == "above by 2.63 points"
    assert verdict("finished", 80.0, 77.37, modified=True).text == "above by 2.63 points (modified)"
    quick = verdict("finished", 10.0, 77.37, quick=True)
    assert quick.kind == "quick" and "quick" in quick.text and "below" not in quick.text
    assert verdict("failed", None, 77.37).kind == "failed"
    assert verdict("pending", None, 77.37).kind == "not run"
    for state in ("interrupted", "running", "waiting", "stopped"):
        assert verdict(state, 77.0, 77.37).kind == "interrupted"
    assert verdict("finished", None, 35.0).kind == "no result"


def test_wall_time_counts_each_session_and_not_the_time_between() -> None:
    events = [{"event": "PhaseStarted", "time": 90.0}, {"event": "RunStarted", "time": 100.0},
              {"event": "PhaseStarted", "time": 110.0}, {"event": "StepMetrics", "time": 130.0},
              {"event": "PhaseStarted", "time": 990.0}, {"event": "RunStarted", "time": 1000.0},
              {"event": "RunFinished", "time": 1045.5}]
    assert wall_seconds(events) == pytest.approx(40.0 + 55.5)
    assert wall_seconds([]) is None


def test_rows_read_the_test_split_or_the_best_validation_epoch() -> None:
    summary = {"test_top1": 76.5, "test_top5": 97.1, "best_val_top1": 80.0, "epochs": 100, "steps": 62500,
               "train_seconds": 3000.0, "device": "cuda:1"}
    events = [{"event": "RunStarted", "time": 0.0, "step": 0},
              {"event": "EpochEnded", "time": 1800.0, "epoch": 0, "step": 625, "val_top1": 80.0, "val_top5": 96.0},
              {"event": "EpochEnded", "time": 3600.0, "epoch": 1, "step": 1250, "val_top1": 70.0, "val_top5": 99.0}]
    row = report_row(LABEL, state="finished", summary=summary, events=events, epochs_planned=100, device="cuda:0")
    assert (row.reproduced_top1, row.reproduced_top5, row.difference) == (76.5, 97.1, pytest.approx(-0.87))
    assert row.verdict == "within" and row.device == "cuda:1" and row.wall_seconds == 3600.0
    assert (row.epochs_done, row.steps) == (100, 62500)

    validation = dict(LABEL, measured_on="validation", reported_top1=35.0)
    row = report_row(validation, state="finished", summary=summary, events=events, epochs_planned=100)
    assert (row.reproduced_top1, row.reproduced_top5) == (80.0, 96.0)  # the top-5 of the best top-1's epoch
    assert row.verdict == "above" and row.verdict_text == "above by 45.00 points"

    # No metrics: the summary's training time stands in for the wall time.
    row = report_row(LABEL, state="finished", summary=summary, events=[], epochs_planned=100)
    assert row.wall_seconds == 3000.0

    # A run that did not finish has no reproduced number, only how far it got.
    row = report_row(LABEL, state="interrupted", summary=None, events=events, epochs_planned=100, device="cuda:0")
    assert row.reproduced_top1 is None and row.verdict == "interrupted" and row.epochs_done == 2


def test_markdown_and_json_show_every_column_in_the_order_named() -> None:
    summary = {"test_top1": 70.0, "test_top5": 95.0, "epochs": 100, "steps": 100, "device": "cuda:0"}
    rows = [report_row(dict(LABEL, recipe=name), state=state, summary=summary if state == "finished" else None,
                       events=[] if state == "pending" else [{"event": "RunStarted", "time": 0.0},
                                                             {"event": "RunFinished", "time": 125.0}],
                       epochs_planned=100, device=None if state == "pending" else "cuda:0",
                       message="exit code 1" if state == "failed" else "")
            for name, state in (("zeta", "finished"), ("alpha", "failed"), ("mid", "pending"))]
    plan = {"recipes": ["zeta", "alpha", "mid"], "quick": False, "modified": []}
    text = render_markdown(rows, plan, "runs/x")
    lines = text.splitlines()
    assert lines[0] == "# Reproduction of the write-ups" and "quick" not in text.lower().split("|")[0]
    header = next(line for line in lines if line.startswith("| recipe"))
    assert header == "| recipe | source | reported | reproduced | epochs | wall time | device | verdict |"
    table = [line for line in lines if line.startswith("| ") and not line.startswith(("| recipe", "| ---"))]
    assert [line.split(" | ")[0] for line in table] == ["| zeta", "| alpha", "| mid"]
    assert table[0] == ("| zeta | 001_2977eeb2eae8fb0c: Deep Learning Lab, Episode 2: CIFAR-10 | 77.37 / - (test) | "
                        "70.00 / 95.00 | 100/100 | 2m05s | cuda:0 | below by 7.37 points |")
    assert table[1].endswith("| failed |") and table[2].endswith("(test) | - | - | - | - | not run |")
    assert "- alpha: failed: exit code 1" in text

    data = render_json(rows, plan, "runs/x")
    assert data["quick"] is False and data["modified"] == [] and data["within_points"] == 1.0
    assert [row["recipe"] for row in data["rows"]] == ["zeta", "alpha", "mid"]
    assert data["rows"][0]["reproduced_top1"] == 70.0 and data["rows"][0]["verdict"] == "below"
    assert data["rows"][0]["difference"] == pytest.approx(-7.37) and data["rows"][0]["wall_seconds"] == 125.0

    quick = {"recipes": ["zeta"], "quick": True, "modified": ["--dataset synthetic"],
             "quick_budget": {"max_steps": QUICK_MAX_STEPS, "epochs": QUICK_EPOCHS}}
    quick_rows = [report_row(LABEL, state="finished", summary=summary, events=[], epochs_planned=1, quick=True,
                             modified=True)]
    text = render_markdown(quick_rows, quick)
    assert text.startswith("# Quick reproduction") and f"{QUICK_MAX_STEPS} steps" in text
    assert "**Modified:**" in text and "`--dataset synthetic`" in text and "quick budget, not judged" in text
    data = render_json(quick_rows, quick)
    assert data["quick"] is True and data["modified"] == ["--dataset synthetic"]
    assert data["rows"][0]["verdict"] == "quick" and "quick" in data["title"].lower()


def test_selection_in_the_order_named_and_every_seed_recipe_by_default() -> None:
    chosen = select_recipes(["cnn3-cifar10-150ep", "cnn3-cifar10"], load=presets.load,
                            seed_recipes=presets.seed_recipes)
    assert [name for name, _ in chosen] == ["cnn3-cifar10-150ep", "cnn3-cifar10"]
    everything = select_recipes([], load=presets.load, seed_recipes=presets.seed_recipes)
    assert [name for name, _ in everything] == list(presets.seed_recipes())
    assert all(config.reference.seed and config.reference.top1 > 0 for _, config in everything)
    with pytest.raises(ConfigError, match="nothing to reproduce"):
        select_recipes([], load=presets.load, seed_recipes=dict)


# The command -------------------------------------------------------------------------------------


def test_bad_input_is_refused_in_one_line_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    cases = [
        (["reproduce", "no-such-recipe"], "unknown preset 'no-such-recipe'"),
        (["reproduce", "demo-synthetic"], "'demo-synthetic': reports no result (reference.top1 is 0), so it has "
         "nothing to reproduce; the seed recipes are: cnn3-adam-cifar100,"),
        (["reproduce", "cnn3-cifar10", "cnn3-cifar10"], "named twice"),
        (["reproduce", "cnn3-cifar10", "--quick", "--set", "train.max_steps=500"], "conflicts with --quick"),
        (["reproduce", "cnn3-cifar10", "--set", "train.nonsense=1"], "'train.nonsense': unknown key"),
        (["reproduce", "cnn3-cifar10", "--dataset", "imagenet"], "unknown dataset preset 'imagenet'"),
        (["reproduce", "cnn3-cifar10", "--parallel", "0"], "--parallel"),
        (["reproduce", "cnn3-cifar10", "--devices", "0"], "names GPUs"),
        (["reproduce", "--resume", str(tmp_path / "nowhere")], "reproduction.json: missing"),
        (["reproduce", "--resume", str(tmp_path), "--quick"], "keeps its plan; --quick cannot change it"),
        (["reproduce", "--resume", str(tmp_path), "cnn3-cifar10"], "keeps its plan; a PRESET cannot change it"),
        (["reproduce", "--resume", str(tmp_path), "--set", "train.epochs=2"], "keeps its plan; --set cannot"),
    ]
    for argv, message in cases:
        if "--resume" not in argv:
            argv = argv + ["--runs-dir", str(runs)] + (["--device", "cpu"] if "--devices" not in argv else [])
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in " ".join(err.split()), (argv, err)
        assert len(err.strip().splitlines()) <= 3 and "Traceback" not in err  # one message, wrapped at most
        assert not runs.exists(), argv


@pytest.mark.slow
def test_quick_reproduction_reports_both_splits_then_resumes_only_what_was_interrupted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    user_presets = tmp_path / "config" / "presets"  # $CIFARTUI_CONFIG/presets (tests/conftest.py)
    user_presets.mkdir(parents=True)
    (user_presets / "tiny-validation.toml").write_text(VALIDATION_RECIPE)
    runs, markdown, table = tmp_path / "runs", tmp_path / "out" / "report.md", tmp_path / "out" / "report.json"

    code = main(["reproduce", "tiny-validation", "cnn3-cifar10", "--quick", *TINY, "--parallel", "2",
                 "--runs-dir", str(runs), "--markdown", str(markdown), "--json", str(table)])
    out = capsys.readouterr().out
    assert code == 0, out
    (directory,) = runs.iterdir()
    assert directory.name.endswith("-reproduce-quick")
    entries = _entries(directory)
    assert [e["state"] for e in entries] == ["finished", "finished"]
    assert [e["label"]["recipe"] for e in entries] == ["tiny-validation", "cnn3-cifar10"]
    run_dirs = [directory / e["key"] / e["run_dir"] for e in entries]
    summaries = [json.loads((run_dir / "summary.json").read_text()) for run_dir in run_dirs]
    configs = [json.loads((run_dir / "config.json").read_text()) for run_dir in run_dirs]
    for config in configs:  # the recipe as written, cut to the quick budget and moved to the tiny data
        assert (config["train"]["max_steps"], config["train"]["epochs"]) == (QUICK_MAX_STEPS, QUICK_EPOCHS)
        assert config["dataset"]["name"] == "synthetic" and config["dataset"]["train_size"] == 128
    assert configs[1]["optimizer"] == presets.load("cnn3-cifar10").to_dict()["optimizer"]

    data = json.loads((directory / "report.json").read_text())
    assert json.loads(table.read_text()) == data
    assert data["quick"] is True and data["quick_budget"] == {"max_steps": QUICK_MAX_STEPS, "epochs": QUICK_EPOCHS}
    assert data["modified"][0] == "--dataset synthetic" and "--set dataset.train_size=128" in data["modified"]
    validation, test = data["rows"]
    assert validation["recipe"] == "tiny-validation" and validation["measured_on"] == "validation"
    assert validation["reported_top1"] == 42.0 and validation["reported_top5"] == 90.0
    assert validation["reproduced_top1"] == summaries[0]["best_val_top1"] is not None
    assert test["recipe"] == "cnn3-cifar10" and test["seed"] == "001_2977eeb2eae8fb0c"
    assert (test["reproduced_top1"], test["reproduced_top5"]) == (summaries[1]["test_top1"],
                                                                  summaries[1]["test_top5"])
    for row, run_dir, summary in zip(data["rows"], run_dirs, summaries):
        events = read_metrics(run_dir)
        assert row["wall_seconds"] == pytest.approx(events[-1]["time"] - events[0]["time"])
        assert row["verdict"] == "quick" and row["state"] == "finished" and row["device"] == "cpu"
        assert (row["epochs_done"], row["steps"]) == (summary["epochs"], summary["steps"])

    text = (directory / "report.md").read_text()
    assert markdown.read_text() == text
    assert text.startswith("# Quick reproduction") and "**Modified:**" in text
    lines = [line for line in text.splitlines() if line.startswith("| tiny-validation") or
             line.startswith("| cnn3-cifar10")]
    assert [line.split(" | ")[0] for line in lines] == ["| tiny-validation", "| cnn3-cifar10"]
    assert "| 42.00 / 90.00 (validation) |" in lines[0]
    assert f"{summaries[1]['test_top1']:.2f} / {summaries[1]['test_top5']:.2f}" in lines[1]
    assert all(line.endswith("| quick budget, not judged |") for line in lines)
    assert "Quick reproduction" in out and out.count("judged") == 2  # the table on the terminal, 80 columns here

    # The second run was interrupted after its last checkpoint, before it wrote its summary.
    first_summary = (run_dirs[0] / "summary.json").read_bytes()
    second = run_dirs[1]
    (second / "summary.json").unlink()
    (directory / "002" / "summary.json").unlink()
    status = json.loads((second / "status.json").read_text())
    (second / "status.json").write_text(json.dumps(dict(status, status="stopped")))
    entry = json.loads((directory / "002" / "entry.json").read_text())
    (directory / "002" / "entry.json").write_text(json.dumps(dict(entry, state="interrupted")))
    assert main(["reproduce", "--resume", str(directory)]) == 0, capsys.readouterr().out
    assert [e["state"] for e in _entries(directory)] == ["finished", "finished"]
    assert len(_starts(run_dirs[0])) == 1 and (run_dirs[0] / "summary.json").read_bytes() == first_summary
    starts = _starts(second)
    assert len(starts) == 2 and starts[1]["resumed"] is True
    resumed = json.loads((directory / "report.json").read_text())
    assert [row["state"] for row in resumed["rows"]] == ["finished", "finished"]
    assert resumed["rows"][0] == data["rows"][0]
    assert resumed["quick"] is True and resumed["modified"] == data["modified"]

    # `cifartui runs` shows the reproduction's table (its runs live inside its directory).
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "160")  # wide enough for every column on one line
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    listed = capsys.readouterr().out
    assert f"Reproduction {directory.name}:" in listed
    assert any("tiny-validation" in line and "999" in line and "42.00 / 90.00" in line and line.rstrip().endswith(
        "quick budget, not judged") for line in listed.splitlines())
    assert listed.count("quick budget, not judged") == 2


def test_planning_and_reading_a_reproduction_need_neither_textual_nor_torch() -> None:
    code = ("import sys\nimport cifartui.engine.orchestration.reproduce\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'torch')))\n")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_every_recipe_name_reads_whole_in_the_report_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from cifartui.cli.reproduce import report_table

    monkeypatch.setenv("COLUMNS", "80")
    names = list(presets.seed_recipes())
    summary = {"test_top1": 70.0, "test_top5": 95.0, "epochs": 100, "steps": 100, "device": "cuda:0"}
    rows = [report_row(dict(LABEL, recipe=name), state="finished", summary=summary, epochs_planned=100,
                       events=[{"event": "RunStarted", "time": 0.0}, {"event": "RunFinished", "time": 125.0}],
                       device="cuda:0", message="") for name in names]
    console = Console(file=io.StringIO(), force_terminal=False)
    assert console.width == 80
    console.print(report_table(rows, {"recipes": names, "quick": False, "modified": []}, width=console.width))
    lines = console.file.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any("below by" in line for line in lines)  # the last column is on screen, not cut off
    first_column = "".join(line[:19].strip() if line[:19].strip().endswith("-") else line[:19].strip() + " "
                           for line in lines)
    for name in names:
        assert name in first_column.split(), name
