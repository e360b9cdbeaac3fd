"""Sweeps: which settings to try, when to stop a run early, and how the settings rank.

A sweep varies some settings of one recipe, on a grid (every combination of the
listed values) or at random (values drawn from ranges, or picked from lists), and
trains each setting once per seed. It is a client of the run queue (`engine/orchestration/queue.py`):
the queue trains the runs; this module plans them and reads their results.

    SWEEP_DIR/sweep.json   the plan: recipe, varied keys, seeds, early stopping
    SWEEP_DIR/...          the queue (queue.json, one folder per run)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cifartui.config import ConfigError, RunConfig, parse_value, replace_path, to_plain
from cifartui.engine.orchestration.queue import PlannedRun, QueueEntry, QueueError, RunQueue, find_queue_dirs
from cifartui.engine.orchestration.sweep_results import (SettingResult, SweepRun, format_value, rank_settings,
                                                         sweep_runs)

SWEEP_FORMAT = "cifartui-sweep-1"
# Settings a sweep may not vary: seeds have --seeds, and where runs go is the queue's business.
NOT_VARIED = {"train.seed": "use --seeds K to repeat each setting with seeds 0..K-1",
              "train.device": "use --devices and --parallel to place runs"}


@dataclass(frozen=True)
class Grid:
    """A setting and the values it takes (`--grid KEY=V1,V2,...`)."""

    key: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Range:
    """A numeric setting drawn uniformly, or log-uniformly, from [low, high] (`--range KEY=LOW:HIGH[:log]`)."""

    key: str
    low: float
    high: float
    log: bool


def split_values(text: str) -> list[str]:
    """Split V1,V2,... at the commas that are outside brackets and quotes (a value may be a list)."""
    items, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:index])
            start = index + 1
    items.append(text[start:])
    return [item.strip() for item in items]


def parse_grid(text: str) -> Grid:
    key, sep, values_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError("--grid", text, "expected KEY=V1,V2,..., for example optimizer.lr=0.01,0.1")
    texts = split_values(values_text)
    if not any(texts):
        raise ConfigError("--grid", key, "empty list of values: expected KEY=V1,V2,...")
    if not all(texts):
        raise ConfigError("--grid", key, f"an empty value in '{values_text}': expected KEY=V1,V2,...")
    values = tuple(parse_value(item) for item in texts)
    for index, value in enumerate(values):
        if value in values[:index]:
            raise ConfigError("--grid", key, f"value {texts[index]} is listed twice")
    return Grid(key, values)


def parse_range(text: str) -> Range:
    key, sep, bounds = text.partition("=")
    key = key.strip()
    usage = "expected KEY=LOW:HIGH or KEY=LOW:HIGH:log, for example optimizer.lr=1e-4:1e-1:log"
    if not sep or not key:
        raise ConfigError("--range", text, usage)
    parts = [part.strip() for part in bounds.split(":")]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ConfigError("--range", key, f"'{bounds}': {usage}")
    numbers = [parse_value(part) for part in parts[:2]]
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and math.isfinite(n) for n in numbers):
        raise ConfigError("--range", key, f"'{bounds}': LOW and HIGH must be numbers; {usage}")
    low, high = float(numbers[0]), float(numbers[1])
    if not low < high:
        raise ConfigError("--range", key, f"'{bounds}': expected LOW < HIGH")
    log = len(parts) == 3
    if log and low <= 0:
        raise ConfigError("--range", key, f"'{bounds}': a log range needs LOW > 0")
    return Range(key, low, high, log)


def check_varied(base: RunConfig, grids: Sequence[Grid], ranges: Sequence[Range]) -> None:
    """Every varied key exists, is varied once, may be varied, and each value fits it (as `--set` checks)."""
    seen: set[str] = set()
    for spec, source in [(g, "--grid") for g in grids] + [(r, "--range") for r in ranges]:
        if spec.key in seen:
            raise ConfigError(source, spec.key, "varied twice; give each key once")
        seen.add(spec.key)
        if spec.key in NOT_VARIED:
            raise ConfigError(source, spec.key, f"cannot be varied by a sweep: {NOT_VARIED[spec.key]}")
        if isinstance(spec, Grid):
            for value in spec.values:
                apply_settings(base, {spec.key: value}, source)
            continue
        current = _current_value(base, spec.key, source)
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            raise ConfigError(source, spec.key, f"is {type(current).__name__} {current!r}, not a number; "
                              "use --grid to list its values")
        if isinstance(current, int) and math.ceil(spec.low) > math.floor(spec.high):
            raise ConfigError(source, spec.key, f"an integer setting, and no integer lies in "
                              f"[{spec.low:g}, {spec.high:g}]")
        for bound in (spec.low, spec.high):
            apply_settings(base, {spec.key: _as_type(current, bound, spec)}, source)


def _current_value(config: RunConfig, key: str, source: str) -> Any:
    replace_path(config, key, _lookup(to_plain(config), key), source)  # the same unknown-key messages as --set
    return _lookup(to_plain(config), key)


def _lookup(plain: Any, key: str) -> Any:
    node = plain
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _as_type(current: Any, value: float, spec: Range) -> Any:
    if isinstance(current, int):
        return min(max(round(value), math.ceil(spec.low)), math.floor(spec.high))
    return value


def apply_settings(config: RunConfig, settings: Mapping[str, Any], source: str = "--grid") -> RunConfig:
    """The config with the settings applied, each checked as `--set` checks it.

    An explicit epoch count wins over a recipe's iteration budget, as `--epochs` does.
    """
    for key, value in settings.items():
        config = replace_path(config, key, value, source)
        if key == "train.epochs":
            config = replace_path(config, "train.max_steps", 0, source)
    return config


def expand(grids: Sequence[Grid], ranges: Sequence[Range] = (), random_count: int | None = None, *,
           base: RunConfig | None = None, draw_seed: int = 0) -> list[dict[str, Any]]:
    """The settings to try: every combination of the grids, or `random_count` random draws.

    A random draw takes each range's value uniformly (or log-uniformly) and each grid's
    value as a uniform pick. Draws are seeded, so a plan can be made again; the plan on
    disk keeps the values drawn.
    """
    if random_count is None:
        keys = [g.key for g in grids]
        return [dict(zip(keys, combination)) for combination in itertools.product(*(g.values for g in grids))]
    capacity = distinct_draws(grids, ranges, base)
    if capacity is not None and capacity < random_count:
        raise ConfigError("--random", str(random_count), f"the grids and ranges give only {capacity} distinct "
                          f"setting{'s' if capacity != 1 else ''}; expected at most {capacity} (--grid alone tries "
                          "every combination, --seeds repeats each)")
    rng = random.Random(draw_seed)
    settings: list[dict[str, Any]] = []
    seen: set[str] = set()
    attempts = 0
    while len(settings) < random_count:
        attempts += 1
        if attempts > 1000 * random_count:  # a space too narrow at 4 significant digits
            raise ConfigError("--random", str(random_count), f"found only {len(settings)} distinct settings in "
                              f"{attempts - 1} draws; widen the ranges or draw fewer")
        draw: dict[str, Any] = {}
        for spec in list(grids) + list(ranges):
            if isinstance(spec, Grid):
                draw[spec.key] = rng.choice(spec.values)
                continue
            if spec.log:
                value = math.exp(rng.uniform(math.log(spec.low), math.log(spec.high)))
            else:
                value = rng.uniform(spec.low, spec.high)
            current = _lookup(to_plain(base), spec.key) if base is not None else None
            rounded = min(max(float(f"{value:.4g}"), spec.low), spec.high)  # 4 significant digits read well
            draw[spec.key] = _as_type(current, rounded, spec)
        identity = json.dumps(draw, sort_keys=True)
        if identity not in seen:  # a repeated draw is no new setting: the ranking would take it for a seed
            seen.add(identity)
            settings.append(draw)
    return settings


def distinct_draws(grids: Sequence[Grid], ranges: Sequence[Range], base: RunConfig | None) -> int | None:
    """How many distinct settings random draws can give: finite when every range is of an integer
    setting, None (no bound worth counting) when one is of a real number."""
    count = 1
    for spec in grids:
        count *= len(spec.values)
    for spec in ranges:
        current = _lookup(to_plain(base), spec.key) if base is not None else None
        if not isinstance(current, int) or isinstance(current, bool):
            return None
        count *= max(0, math.floor(spec.high) - math.ceil(spec.low) + 1)
    return count


# Planning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepRequest:
    """What to sweep, as `cifartui sweep` and the app's form take it (the texts of --grid and --range).

    `seed` is a seed given for every run (`--seed`), which --seeds would contradict;
    `explicit` names the settings the options of train already set, and the option
    that set each, so that a sweep cannot vary them as well.
    """

    grids: tuple[str, ...] = ()
    ranges: tuple[str, ...] = ()
    random: int | None = None
    seeds: int | None = None
    halving: int | None = None
    seed: int | None = None
    explicit: Mapping[str, str] = field(default_factory=dict)
    max_runs: int | None = None  # a larger plan is refused before it is validated or written


def plan_sweep(base: RunConfig, request: SweepRequest, *, check_model: Callable[[RunConfig], None] | None = None,
               announce: Callable[[int, int, int], None] | None = None) -> tuple[dict[str, Any], list[PlannedRun]]:
    """The plan and its runs, every one validated as `--set` validates; nothing is written.

    A mistake is a ConfigError naming the option, the key and the value. `check_model`
    builds a model the base recipe does not use (a varied model), so that a model that
    cannot be built is refused before any run starts; it is the caller's, since
    building a model needs PyTorch and planning does not. `announce(runs, settings, seeds)`
    hears the plan's size before any run is validated; a plan over `request.max_runs` is refused.
    """
    from cifartui.engine.train.rules import validate

    grids = [parse_grid(text) for text in request.grids]
    ranges = [parse_range(text) for text in request.ranges]
    if request.random is not None and request.random < 1:
        raise ConfigError("--random", str(request.random), "expected a positive number of settings to draw")
    if ranges and request.random is None:
        raise ConfigError("--range", ranges[0].key, "needs --random N: how many settings to draw")
    if request.random is not None and not (grids or ranges):
        raise ConfigError("--random", str(request.random), "needs --range or --grid: what to draw")
    if request.seeds is not None and request.seeds < 1:
        raise ConfigError("--seeds", str(request.seeds), "expected a positive number of seeds")
    if request.seeds is not None and request.seed is not None:
        raise ConfigError("--seed", str(request.seed), "conflicts with --seeds K, which trains seeds 0..K-1")
    if not grids and not ranges and (request.seeds or 1) == 1:
        raise ConfigError("sweep", "", "nothing to sweep: give --grid KEY=V1,V2,..., --random N with "
                          "--range KEY=LOW:HIGH, or --seeds K")
    for spec, source in [(g, "--grid") for g in grids] + [(r, "--range") for r in ranges]:
        if spec.key in request.explicit:
            raise ConfigError(source, spec.key, f"also set by {request.explicit[spec.key]}; set it one way")
    check_varied(base, grids, ranges)
    if request.halving is not None:
        if request.halving < 1:
            raise ConfigError("--halving", str(request.halving), "expected the first rung in epochs, at least 1")
        if base.dataset.val_fraction <= 0:
            raise ConfigError("--halving", "dataset.val_fraction", "successive halving compares validation "
                              "accuracy; expected a validation split (dataset.val_fraction > 0)")

    if request.seeds is not None and request.seeds > 2**32:  # train.seed goes up to 2^32 - 1
        raise ConfigError("--seeds", str(request.seeds), f"seeds 0..K-1 must be valid seeds; expected at most "
                          f"{2**32:,}")
    # The plan's size is known before any setting is drawn or combined, so a plan far too large
    # is refused before it fills the memory.
    setting_count = request.random if request.random is not None else math.prod(len(g.values) for g in grids)
    seed_count = request.seeds if request.seeds is not None else 1
    size = setting_count * seed_count
    if announce is not None:
        announce(size, setting_count, seed_count)
    if request.max_runs is not None and size > request.max_runs:
        raise ConfigError("sweep", "", f"the plan has {size:,} runs ({setting_count:,} settings x {seed_count:,} "
                          f"seeds), more than the {request.max_runs:,} allowed; pass --max-runs {size} (or --yes) "
                          "to plan them all, or sweep fewer values or seeds")
    settings = expand(grids, ranges, request.random, base=base)
    seeds = list(range(request.seeds)) if request.seeds is not None else [base.train.seed]
    runs, checked_models = [], {repr(base.model)}
    source = "--range" if ranges else "--grid"
    checked = []  # each setting validated once; its seeds differ in train.seed alone
    for setting in settings:
        config = validate(apply_settings(base, setting, source), source)
        if repr(config.model) not in checked_models:
            if check_model is not None:
                check_model(config)
            checked_models.add(repr(config.model))
        checked.append(config)
    for seed in seeds:  # every setting's first seed first, so that the ranking fills in early
        for setting, config in zip(settings, checked):
            # Only the seed differs from the checked config, and seeds are counts: no check to repeat.
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
            runs.append(PlannedRun(config, {"settings": setting, "seed": seed}))
    if request.halving is not None and not any(request.halving < run.config.train.epochs for run in runs):
        raise ConfigError("--halving", str(request.halving), f"the first rung (epoch {request.halving}) is not "
                          "before the end of the runs; expected a smaller one")
    plan = {"preset": base.name, "varied": [spec.key for spec in grids + ranges],
            "grid": {g.key: list(g.values) for g in grids},
            "range": {r.key: {"low": r.low, "high": r.high, "log": r.log} for r in ranges},
            "random": request.random, "seeds": seeds, "halving": request.halving, "runs": len(runs)}
    return plan, runs


def create_sweep(runs_dir: Path, plan: Mapping[str, Any], runs: Sequence[PlannedRun], *, device: str,
                 parallel: int | None = None, devices: str | None = None,
                 data_dir: Path | None = None) -> RunQueue:
    """Write a new sweep directory in `runs_dir`: the plan, then the queue (not locked)."""
    from cifartui.engine.runs.folders import new_run_dir

    directory = new_run_dir(runs_dir, f"sweep-{plan['preset']}")
    write_plan(directory, plan)
    return RunQueue.create(directory, runs, kind="sweep", device=device, parallel=parallel, devices=devices,
                           data_dir=data_dir)


# Early stopping ------------------------------------------------------------------------------


class SuccessiveHalving:
    """Stop the worse half of the runs at rungs of epochs: first, 2*first, 4*first, ... below a run's length.

    A run is judged when it reaches a rung, against every run that reached that rung
    before it, itself included (the asynchronous variant, as in ASHA), so no run waits
    for the others: it is stopped when its best validation top-1 so far ranks in the
    worse half. The first run at a rung always goes on.
    """

    def __init__(self, first_rung: int = 1):
        self.first_rung = max(1, int(first_rung))
        self.records: dict[int, dict[str, float]] = {}
        self.judged: dict[str, int] = {}  # run key -> epochs it has been judged up to

    def rungs(self, total_epochs: int) -> list[int]:
        rungs, rung = [], self.first_rung
        while rung < total_epochs:
            rungs.append(rung)
            rung *= 2
        return rungs

    def remember(self, key: str, val_top1_best_until: Any, epochs_done: int, total_epochs: int) -> None:
        """Record a run's rungs passed before now (a resumed sweep), without judging them again."""
        for rung in self.rungs(total_epochs):
            if rung <= epochs_done:
                value = val_top1_best_until(rung)
                if value is not None:
                    self.records.setdefault(rung, {})[key] = value
        self.judged[key] = max(self.judged.get(key, 0), epochs_done)

    def judge(self, key: str, val_top1_best_until: Any, epochs_done: int, total_epochs: int) -> str | None:
        """Why the run should stop now, or None when it goes on."""
        verdict = None
        for rung in self.rungs(total_epochs):
            if rung <= self.judged.get(key, 0) or rung > epochs_done:
                continue
            value = val_top1_best_until(rung)
            if value is None:
                continue
            record = self.records.setdefault(rung, {})
            record[key] = value
            rank = 1 + sum(1 for other in record.values() if other > value)
            keep = math.ceil(len(record) / 2)
            if verdict is None and rank > keep:
                verdict = (f"halving at epoch {rung}: best val top-1 {value:.2f}% ranks {rank} of {len(record)} "
                           f"runs there (the best {keep} go on)")
        self.judged[key] = max(self.judged.get(key, 0), epochs_done)
        return verdict


# Results (in sweep_results.py) and the plan file ----------------------------------------------


def write_plan(directory: Path, plan: Mapping[str, Any]) -> None:
    from cifartui.engine.runs.folders import write_json_atomic

    write_json_atomic(Path(directory) / "sweep.json", {"format": SWEEP_FORMAT, **plan})


def read_plan(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "sweep.json"
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QueueError(f"{path}: missing; is {directory} a sweep directory?") from None
    except (OSError, ValueError) as error:
        raise QueueError(f"{path}: not readable JSON: {error}") from None
    if not isinstance(plan, dict) or plan.get("format") != SWEEP_FORMAT:
        raise QueueError(f"{path}: not a cifartui sweep (expected format {SWEEP_FORMAT})")
    return plan


# Reading sweeps --------------------------------------------------------------------------------

PLAN_FILE = "sweep.json"
DRIVER_LOG = "sweep.log"  # the output of a sweep process started in the background (by the app)


def is_sweep_dir(directory: Path) -> bool:
    return (Path(directory) / PLAN_FILE).is_file()


def find_sweeps(runs_dir: Path) -> list[Path]:
    """The sweep directories in a runs directory, newest first (their names start with the UTC time)."""
    return find_queue_dirs(runs_dir, PLAN_FILE)


def sweep_run_dirs(sweep_dir: Path) -> list[tuple[str, Path]]:
    """(entry key, run directory) of each run of a sweep that has one yet, in queue order.

    A reproduction's queue has the same layout, so its runs are found the same way.

    Only names are read, no metrics: listings of every run (history, `cifartui runs`)
    read each run's own files anyway.
    """
    try:
        keys = json.loads((Path(sweep_dir) / "queue.json").read_text(encoding="utf-8")).get("entries", [])
    except (OSError, ValueError, AttributeError):
        return []
    found = []
    for key in keys if isinstance(keys, list) else []:
        if not isinstance(key, str) or not key.isdigit():
            continue
        try:
            names = sorted(child.name for child in (Path(sweep_dir) / key).iterdir()
                           if child.is_dir() and (child / "config.json").is_file())
        except OSError:
            continue
        if names:
            found.append((key, Path(sweep_dir) / key / names[-1]))
    return found


def sweep_of(run_dir: Path) -> Path | None:
    """The sweep directory a run belongs to (runs/<sweep>/<NNN>/<run>), or None for a run of its own."""
    parent = Path(run_dir).parent
    if parent.name.isdigit() and is_sweep_dir(parent.parent):
        return parent.parent
    return None


@dataclass(frozen=True)
class SweepStatus:
    """A sweep as its files say now, whichever process drives it (or none)."""

    directory: Path
    plan: dict[str, Any]
    entries: tuple[QueueEntry, ...]
    driven: bool  # a process drives it now: it holds the sweep directory's lock
    runs: tuple[SweepRun, ...]
    ranked: tuple[SettingResult, ...]

    @property
    def varied(self) -> list[str]:
        return [str(key) for key in self.plan.get("varied", [])]

    @property
    def state(self) -> str:
        """running (driven now), finished, failed (a run failed), pending (never started) or interrupted."""
        if self.driven:
            return "running"
        states = {run.state for run in self.runs}
        if states <= {"finished", "failed", "stopped"}:
            return "failed" if "failed" in states else "finished"
        if states == {"pending"}:
            return "pending"
        return "interrupted"

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.runs:
            counts[run.state] = counts.get(run.state, 0) + 1
        return counts


def read_sweep(directory: Path, *, progress: Callable[[Path], Any] | None = None) -> SweepStatus:
    """What a sweep directory holds now, ranked; a QueueError naming the file when it is damaged.

    `progress` is passed to `RunQueue.open` (a `ProgressTails` reads only what each
    run's metrics gained since the last look).
    """
    from cifartui.engine.runs.folders import is_locked

    directory = Path(directory)
    plan = read_plan(directory)
    queue = RunQueue.open(directory, progress=progress)
    runs = sweep_runs(queue.entries)
    return SweepStatus(directory, plan, tuple(queue.entries), is_locked(directory), tuple(runs),
                       tuple(rank_settings(runs)))


def drive_in_background(directory: Path, *, python: str = sys.executable) -> Any:
    """Start `cifartui sweep --resume DIRECTORY` in a session of its own, its output in sweep.log.

    The process outlives whoever started it (the app may quit; the sweep goes on) and
    takes the sweep's lock, so a second driver is refused as on the command line.
    Returns the subprocess.Popen; the caller reaps it.
    """
    import subprocess

    directory = Path(directory)
    command = [python, "-m", "cifartui.cli", "sweep", "--resume", str(directory)]
    with (directory / DRIVER_LOG).open("ab") as output:
        output.write(f"$ {' '.join(command)}\n".encode())
        output.flush()
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)


def last_log_line(directory: Path) -> str:
    """The last line a background sweep process wrote, e.g. why it stopped at once."""
    try:
        lines = (Path(directory) / DRIVER_LOG).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    lines = [line.strip() for line in lines if line.strip() and not line.startswith("$ ")]
    return lines[-1] if lines else ""


__all__ = ["Grid", "Range", "parse_grid", "parse_range", "parse_value", "split_values", "check_varied",
           "apply_settings", "expand", "distinct_draws", "SuccessiveHalving", "SweepRun", "SettingResult", "sweep_runs",
           "rank_settings", "format_value", "write_plan", "read_plan", "SweepRequest", "plan_sweep",
           "create_sweep", "find_sweeps", "sweep_run_dirs", "sweep_of", "is_sweep_dir", "SweepStatus",
           "read_sweep", "drive_in_background", "last_log_line", "DRIVER_LOG"]
