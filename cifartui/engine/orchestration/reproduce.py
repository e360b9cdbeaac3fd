"""Reproductions: train the seed recipes as written and set what they reach beside what their write-ups report.

A seed recipe is a preset whose `reference.seed` names one of the write-ups it comes
from, and whose `reference.top1` is the result that write-up reports. A reproduction
is a client of the run queue (`engine/orchestration/queue.py`): the queue trains one run per recipe;
this module picks the recipes, plans the runs, and turns their summaries into a report.

    REPRODUCTION_DIR/reproduction.json   the plan: recipes, quick or not, what was changed
    REPRODUCTION_DIR/report.md           the table, as Markdown, written after each drive
    REPRODUCTION_DIR/report.json         the same rows as JSON
    REPRODUCTION_DIR/...                 the queue (queue.json, one folder per run)

Nothing here imports torch or textual: planning reads presets, the report reads files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from cifartui.config import ConfigError, RunConfig, replace_path
from cifartui.engine.orchestration.queue import PlannedRun, QueueEntry, QueueError, RunQueue, find_queue_dirs, load_summary

REPRODUCTION_FORMAT = "cifartui-reproduction-1"
REPORT_FORMAT = "cifartui-reproduction-report-1"
PLAN_FILE = "reproduction.json"
REPORT_MARKDOWN = "report.md"
REPORT_JSON = "report.json"

# --quick trains every recipe for this budget, whichever ends first, so that the whole
# table comes out on a CPU in minutes; validation and test still cover their full splits.
QUICK_MAX_STEPS = 50
QUICK_EPOCHS = 1
# A reproduction within this many points of the reported top-1 counts as reproduced:
# the write-ups report single runs, and seeds alone move these numbers by about a point.
WITHIN_POINTS = 1.0
# The settings --quick owns; a --set of one of them would be silently overruled.
QUICK_KEYS = ("train.max_steps", "train.epochs")


# Choosing the recipes ------------------------------------------------------------------------


def has_reported_result(config: RunConfig) -> bool:
    return config.reference.top1 > 0


def select_recipes(names: Sequence[str], *, load: Callable[[str], RunConfig],
                   seed_recipes: Callable[[], Mapping[str, RunConfig]]) -> list[tuple[str, RunConfig]]:
    """The recipes to reproduce, in the order named (every seed recipe when none is named).

    `load` loads a preset by name or path (`presets.load`); `seed_recipes` gives the
    presets with a write-up (`presets.seed_recipes`), read only when needed. A preset
    that reports no result has nothing to reproduce: a ConfigError says so and lists
    the seed recipes.
    """
    if not names:
        found = dict(seed_recipes())
        if not found:
            raise ConfigError("reproduce", "", "nothing to reproduce: no preset has reference.seed set")
        return list(found.items())
    chosen: list[tuple[str, RunConfig]] = []
    for name in names:
        config = load(name)
        if any(config.name == known for known, _ in chosen):
            raise ConfigError("reproduce", name, "named twice; each recipe is reproduced once")
        if not has_reported_result(config):
            listing = ", ".join(seed_recipes()) or "(none)"
            raise ConfigError("reproduce", name, "reports no result (reference.top1 is 0), so it has nothing to "
                              f"reproduce; the seed recipes are: {listing}")
        chosen.append((config.name, config))  # a path reads as its file's name, as in run directories
    return chosen


def quick_budget(config: RunConfig) -> RunConfig:
    """The recipe cut to the quick budget: QUICK_MAX_STEPS steps or QUICK_EPOCHS epochs, whichever ends first."""
    config = replace_path(config, "train.epochs", QUICK_EPOCHS, "--quick")
    return replace_path(config, "train.max_steps", QUICK_MAX_STEPS, "--quick")


def modifications(dataset: str | None, sets: Sequence[str]) -> list[str]:
    """The options that change the recipes, as a reader of the report should see them."""
    return ([f"--dataset {dataset}"] if dataset else []) + [f"--set {text.strip()}" for text in sets]


def reference_label(name: str, config: RunConfig) -> dict[str, Any]:
    """What the report needs of a recipe, kept in its queue entry's label."""
    reference = config.reference
    return {"recipe": name, "seed": reference.seed, "source": reference.source,
            "measured_on": reference.measured_on, "reported_top1": reference.top1,
            "reported_top5": reference.top5 or None}


def plan_reproduction(recipes: Sequence[tuple[str, RunConfig]], *, compose: Callable[..., RunConfig], quick: bool = False,
                      dataset: str | None = None, sets: Sequence[str] = ()) -> tuple[dict[str, Any], list[PlannedRun]]:
    """The plan and one run per recipe, each validated; nothing is written.

    `compose` applies --dataset and --set to a recipe as `train` does (`presets.compose`);
    --quick goes on top, and a --set of a setting it owns is refused.
    """
    if not recipes:
        raise ConfigError("reproduce", "", "nothing to reproduce: no recipe selected")
    if quick:
        for text in sets:
            key = text.partition("=")[0].strip()
            if key in QUICK_KEYS:
                raise ConfigError("--set", key, f"conflicts with --quick, which trains every recipe for "
                                  f"{QUICK_MAX_STEPS} steps or {QUICK_EPOCHS} epoch; drop one of them")
    runs = []
    for name, recipe in recipes:
        config = compose(recipe, dataset=dataset, sets=sets)
        if quick:
            config = quick_budget(config)
        runs.append(PlannedRun(config, reference_label(name, recipe)))
    plan = {"recipes": [name for name, _ in recipes], "quick": quick,
            "quick_budget": {"max_steps": QUICK_MAX_STEPS, "epochs": QUICK_EPOCHS} if quick else None,
            "modified": modifications(dataset, sets)}
    return plan, runs


def create_reproduction(runs_dir: Path, plan: Mapping[str, Any], runs: Sequence[PlannedRun], *, device: str,
                        parallel: int | None = None, devices: str | None = None,
                        data_dir: Path | None = None) -> RunQueue:
    """Write a new reproduction directory in `runs_dir`: the plan, then the queue (not locked)."""
    from cifartui.engine.runs.folders import new_run_dir

    directory = new_run_dir(runs_dir, "reproduce-quick" if plan.get("quick") else "reproduce")
    write_plan(directory, plan)
    return RunQueue.create(directory, runs, kind="reproduce", device=device, parallel=parallel, devices=devices,
                           data_dir=data_dir)


def write_plan(directory: Path, plan: Mapping[str, Any]) -> None:
    from cifartui.engine.runs.folders import write_json_atomic

    write_json_atomic(Path(directory) / PLAN_FILE, {"format": REPRODUCTION_FORMAT, **plan})


def read_plan(directory: Path) -> dict[str, Any]:
    path = Path(directory) / PLAN_FILE
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QueueError(f"{path}: missing; is {directory} a reproduction directory?") from None
    except (OSError, ValueError) as error:
        raise QueueError(f"{path}: not readable JSON: {error}") from None
    if not isinstance(plan, dict) or plan.get("format") != REPRODUCTION_FORMAT:
        raise QueueError(f"{path}: not a cifartui reproduction (expected format {REPRODUCTION_FORMAT})")
    return plan


# Judging a run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """How a reproduction compares: kind is one of within, below, above, quick, failed, not run,
    interrupted, no result; text is what the table shows."""

    kind: str
    text: str


def verdict(state: str, reproduced: float | None, reported: float, *, quick: bool = False,
            modified: bool = False) -> Verdict:
    if state == "pending":
        return Verdict("not run", "not run")
    if state == "failed":
        return Verdict("failed", "failed")
    if state != "finished":  # running, waiting, interrupted, stopped: it resumes with --resume
        return Verdict("interrupted", "interrupted")
    if reproduced is None:
        return Verdict("no result", "no result: the run measured no accuracy on that split")
    if quick:
        return Verdict("quick", "quick budget, not judged")  # the title says how quick, and what was modified
    difference = round(reproduced - reported, 6)  # 77.37 - 76.37 is 1.0000000000000142 in floats
    suffix = " (modified)" if modified else ""
    if abs(difference) <= WITHIN_POINTS:
        return Verdict("within", f"within 1 point ({difference:+.2f}){suffix}")
    if difference < 0:
        return Verdict("below", f"below by {-difference:.2f} points{suffix}")
    return Verdict("above", f"above by {difference:.2f} points{suffix}")


# Reading a run's files -------------------------------------------------------------------------


def wall_seconds(events: Iterable[Mapping[str, Any]]) -> float | None:
    """Time the run's processes spent on it, from the "time" of its metrics events.

    Each process writes its session's events: the phases that load data, then
    RunStarted, then the run. A session runs from its first event to its last, so the
    time a run sat interrupted between sessions is not counted.
    """
    timed = [event for event in events
             if isinstance(event.get("time"), (int, float)) and not isinstance(event.get("time"), bool)]
    if not timed:
        return None
    starts = [index for index, event in enumerate(timed) if event.get("event") == "RunStarted"]
    boundaries = []
    for index in starts[1:]:  # a later session begins with the phases just before its RunStarted
        while index > 0 and timed[index - 1].get("event") == "PhaseStarted":
            index -= 1
        boundaries.append(index)
    total = 0.0
    for begin, end in zip([0] + boundaries, boundaries + [len(timed)]):
        if end > begin:
            total += float(timed[end - 1]["time"]) - float(timed[begin]["time"])
    return total


def best_validation(events: Iterable[Mapping[str, Any]]) -> tuple[float | None, float | None]:
    """(best validation top-1, validation top-5 at that epoch) from the run's EpochEnded events."""
    best: tuple[float | None, float | None] = (None, None)
    for event in events:
        if event.get("event") != "EpochEnded":
            continue
        top1, top5 = event.get("val_top1"), event.get("val_top5")
        if isinstance(top1, (int, float)) and (best[0] is None or top1 > best[0]):
            best = (float(top1), float(top5) if isinstance(top5, (int, float)) else None)
    return best


def read_events(run_dir: Path | None) -> list[dict[str, Any]]:
    if run_dir is None:
        return []
    from cifartui.engine.runs.folders import RunDirError, read_metrics

    try:
        return read_metrics(run_dir)
    except RunDirError:
        return []


# The report --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportRow:
    """One recipe's line of the report: what its write-up reported and what its run reached."""

    recipe: str
    seed: str
    source: str
    measured_on: str
    reported_top1: float
    reported_top5: float | None
    state: str
    reproduced_top1: float | None
    reproduced_top5: float | None
    difference: float | None  # reproduced - reported top-1, in points
    epochs_done: int
    epochs_planned: int
    steps: int
    wall_seconds: float | None
    device: str | None
    verdict: str
    verdict_text: str
    run_dir: str | None
    message: str


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def report_row(label: Mapping[str, Any], *, state: str, summary: Mapping[str, Any] | None,
               events: Sequence[Mapping[str, Any]], epochs_planned: int, device: str | None = None,
               run_dir: str | None = None, message: str = "", quick: bool = False,
               modified: bool = False) -> ReportRow:
    """A row from a run's label (`reference_label`), state, summary and metrics events."""
    measured_on = str(label.get("measured_on", "test"))
    reported = float(label.get("reported_top1") or 0.0)
    summary = summary if state == "finished" else None
    top1 = top5 = None
    if summary is not None:
        if measured_on == "validation":
            top1 = _number(summary.get("best_val_top1"))
            best, top5 = best_validation(events)
            if best is None or top1 is None or abs(best - top1) > 1e-6:
                top5 = None  # the epoch of the best top-1 is not in the metrics: no top-5 to pair with it
        else:
            top1, top5 = _number(summary.get("test_top1")), _number(summary.get("test_top5"))
    epochs_done = max((int(e.get("epoch", 0)) + 1 for e in events if e.get("event") == "EpochEnded"), default=0)
    steps = max((int(e.get("step", 0)) for e in events if isinstance(e.get("step"), int)), default=0)
    if summary is not None:
        epochs_done = int(_number(summary.get("epochs")) or epochs_done)
        steps = int(_number(summary.get("steps")) or steps)
    wall = wall_seconds(events)
    if wall is None and summary is not None:
        wall = _number(summary.get("train_seconds"))
    judged = verdict(state, top1, reported, quick=quick, modified=modified)
    difference = round(top1 - reported, 6) if top1 is not None else None
    return ReportRow(
        recipe=str(label.get("recipe", "")), seed=str(label.get("seed", "")), source=str(label.get("source", "")),
        measured_on=measured_on, reported_top1=reported, reported_top5=_number(label.get("reported_top5")),
        state=state, reproduced_top1=top1, reproduced_top5=top5, difference=difference, epochs_done=epochs_done,
        epochs_planned=epochs_planned, steps=steps, wall_seconds=wall,
        device=(str(summary["device"]) if summary is not None and summary.get("device") else device),
        verdict=judged.kind, verdict_text=judged.text, run_dir=run_dir, message=message)


def report_rows(entries: Iterable[QueueEntry], plan: Mapping[str, Any]) -> list[ReportRow]:
    """The report's rows, in the order the recipes were named (the queue's order)."""
    rows = []
    for entry in entries:
        summary = load_summary(entry) if entry.state == "finished" else None
        rows.append(report_row(entry.label, state=entry.state, summary=summary, events=read_events(entry.run_dir),
                               epochs_planned=entry.epochs, device=entry.device,
                               run_dir=str(entry.run_dir) if entry.run_dir is not None else None,
                               message=entry.message, quick=bool(plan.get("quick")),
                               modified=bool(plan.get("modified"))))
    return rows


def short_source(source: str, limit: int = 48) -> str:
    """The write-up's title, without the parenthesis that says which of its numbers the recipe takes."""
    text = source.split(" (", 1)[0].strip()
    if len(text) <= limit:
        return text
    return text[:limit - 1].rsplit(" ", 1)[0].rstrip(",:;") + "…"


def title(plan: Mapping[str, Any]) -> str:
    if plan.get("quick"):
        return (f"Quick reproduction of the write-ups: {QUICK_MAX_STEPS} steps per recipe, "
                "not the recipes' budgets; no verdicts")
    return "Reproduction of the write-ups"


def format_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


COLUMNS = ("recipe", "source", "reported", "reproduced", "epochs", "wall time", "device", "verdict")


def row_cells(row: ReportRow) -> list[str]:
    """The row as the table's text cells, in COLUMNS order (Markdown and the terminal share them)."""
    reported = f"{format_pct(row.reported_top1)} / {format_pct(row.reported_top5)} ({row.measured_on})"
    reproduced = (f"{format_pct(row.reproduced_top1)} / {format_pct(row.reproduced_top5)}"
                  if row.reproduced_top1 is not None else "-")
    source = f"{row.seed}: {short_source(row.source)}" if row.seed else short_source(row.source) or "-"
    epochs = f"{row.epochs_done}/{row.epochs_planned}" if row.state != "pending" else "-"
    return [row.recipe, source, reported, reproduced, epochs, format_duration(row.wall_seconds),
            row.device or "-", row.verdict_text]


def render_markdown(rows: Sequence[ReportRow], plan: Mapping[str, Any], directory: Path | str | None = None) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"# {title(plan)}", ""]
    if plan.get("quick"):
        lines += [f"**Quick run:** every recipe trained for at most {QUICK_MAX_STEPS} steps ({QUICK_EPOCHS} epoch), "
                  "so the reproduced numbers say that the recipes train, not what they reach.", ""]
    if plan.get("modified"):
        changes = ", ".join(f"`{text}`" for text in plan["modified"])
        lines += [f"**Modified:** the recipes were not trained as written ({changes}).", ""]
    if directory is not None:
        lines += [f"Reproduction directory: `{directory}`", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(cell(text) for text in row_cells(row)) + " |")
    lines += ["", "Accuracies are top-1 / top-5 in percent. Reproduced is the test accuracy for results the "
              "write-up measured on the test set, and the best validation top-1 (with the top-5 of that epoch) "
              f"for those it measured on a validation split. A reproduction within {WITHIN_POINTS:g} point of the "
              "reported top-1 counts as reproduced."]
    problems = [row for row in rows if row.message and row.state in ("failed", "interrupted", "running", "waiting",
                                                                          "stopped")]
    if problems:
        lines += [""] + [f"- {row.recipe}: {row.state}: {cell(row.message)}" for row in problems]
    return "\n".join(lines) + "\n"


def render_json(rows: Sequence[ReportRow], plan: Mapping[str, Any], directory: Path | str | None = None) -> dict[str, Any]:
    return {"format": REPORT_FORMAT, "title": title(plan),
            "reproduction_dir": str(directory) if directory is not None else None,
            "quick": bool(plan.get("quick")), "quick_budget": plan.get("quick_budget"),
            "modified": list(plan.get("modified") or []), "within_points": WITHIN_POINTS,
            "rows": [asdict(row) for row in rows]}


# Reading reproductions ---------------------------------------------------------------------------


def is_reproduction_dir(directory: Path) -> bool:
    return (Path(directory) / PLAN_FILE).is_file()


def reproduction_of(run_dir: Path) -> Path | None:
    """The reproduction directory a run belongs to (runs/<reproduction>/<NNN>/<run>), or None."""
    parent = Path(run_dir).parent
    if parent.name.isdigit() and is_reproduction_dir(parent.parent):
        return parent.parent
    return None


def find_reproductions(runs_dir: Path) -> list[Path]:
    """The reproduction directories in a runs directory, newest first (their names start with the UTC time)."""
    return find_queue_dirs(runs_dir, PLAN_FILE)


def read_reproduction(directory: Path) -> tuple[dict[str, Any], list[ReportRow]]:
    """A reproduction's plan and its rows as its files say now; a QueueError naming the file when damaged."""
    plan = read_plan(directory)
    return plan, report_rows(RunQueue.open(directory).entries, plan)


def counts(rows: Iterable[ReportRow]) -> dict[str, int]:
    found: dict[str, int] = {}
    for row in rows:
        found[row.verdict] = found.get(row.verdict, 0) + 1
    return found


__all__ = ["is_reproduction_dir", "reproduction_of", "QUICK_MAX_STEPS", "QUICK_EPOCHS", "WITHIN_POINTS", "PLAN_FILE", "REPORT_MARKDOWN", "REPORT_JSON",
           "select_recipes", "quick_budget", "plan_reproduction", "create_reproduction", "write_plan", "read_plan",
           "Verdict", "verdict", "wall_seconds", "best_validation", "ReportRow", "report_row", "report_rows",
           "row_cells", "render_markdown", "find_reproductions", "read_reproduction", "render_json", "short_source", "title", "COLUMNS"]
