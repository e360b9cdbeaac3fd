"""Model-based search: an Optuna study whose trials are runs of the queue.

A search is a sweep whose settings are not planned up front: a sampler (TPE by
default, CMA-ES or random) proposes each trial's settings from the results so far,
and a pruner (asynchronous successive halving or Hyperband) may stop a trial at an
epoch where it ranks badly, without waiting for the others. Each trial is one entry of
the run queue (`queue.py`), so it is its own `cifartui train` process with its run
folder and control channel, and whatever follows runs (the app, `cifartui runs`)
follows trials too.

    SWEEP_DIR/sweep.json      the plan, with a "search" part: sampler, pruner, trials, space
    SWEEP_DIR/recipe.toml     the recipe every trial starts from, frozen when the search was made
    SWEEP_DIR/study.journal   the Optuna study (JournalStorage over a JournalFileBackend)
    SWEEP_DIR/queue.json ...  the queue; an entry is added as its trial is asked for

The journal is a file appended under a lock that works on a folder several machines
share (SQLite's locking does not). A driver killed at any moment resumes exactly: the
journal keeps every trial asked, reported and told; a trial asked but not yet in the
queue is added to it, a trial whose run ended while nobody drove the search is told
now, and a running trial's run resumes from its checkpoint.

Optuna is imported only inside functions: reading a search's folder (the app's Sweeps
view) needs only the queue's files.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from cifartui.config import ConfigError, RunConfig, from_mapping, parse_value, replace_path, to_plain
from cifartui.engine.orchestration.queue import (ENDED_STATES, EntryChanged, QueueEntry, QueueError, QueueRunner,
                                                 RunQueue, load_summary, toml_document)
from cifartui.engine.orchestration.sweep import NOT_VARIED, read_plan, split_values, write_plan
from cifartui.engine.runs.folders import write_json_atomic, write_text_atomic

SAMPLERS = ("tpe", "cmaes", "random")
PRUNERS = ("asha", "hyperband", "none")
# Short names for the settings searched most; any other setting goes by its dotted key.
SHORT_KEYS = {"lr": "optimizer.lr", "wd": "optimizer.weight_decay", "dropout": "model.dropout"}
# model.dropout holds one rate per dropout group; a search draws one rate for all of them.
ALL_GROUPS = "model.dropout"
RECIPE_FILE = "recipe.toml"
JOURNAL_FILE = "study.journal"
STUDY_NAME = "sweep"
SPACE_USAGE = ("expected KEY=LOW..HIGH, KEY=log:LOW..HIGH, KEY=int:LOW..HIGH or KEY=A,B,C, "
               "for example lr=log:1e-3..1e-1")


@dataclass(frozen=True)
class Dimension:
    """One searched setting (`--space`): a float or integer range, uniform or log, or a list of choices."""

    key: str
    kind: str  # "float", "int" or "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "low": self.low, "high": self.high, "log": self.log,
                "choices": list(self.choices)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Dimension":
        return cls(str(data["key"]), str(data["kind"]), data.get("low"), data.get("high"), bool(data.get("log")),
                   tuple(data.get("choices") or ()))


def require_optuna(sampler: str) -> None:
    """A ConfigError saying what to install when Optuna (or CMA-ES's library) is missing."""
    import importlib

    for module in ("optuna",) + (("cmaes",) if sampler == "cmaes" else ()):
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError("--search", sampler, f"needs the {module} package, which is not installed; "
                              "install it with: pip install 'cifartui[search]'") from None


def parse_space(text: str) -> Dimension:
    """One --space text as a Dimension; a ConfigError naming the text when it is malformed."""
    name, sep, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not name or not spec:
        raise ConfigError("--space", text, SPACE_USAGE)
    key = SHORT_KEYS.get(name, name)
    kinds: list[str] = []
    while spec.split(":", 1)[0] in ("int", "log") and ":" in spec:
        prefix, spec = spec.split(":", 1)
        if prefix in kinds:
            raise ConfigError("--space", text, f"'{prefix}:' is given twice; {SPACE_USAGE}")
        kinds.append(prefix)
    if ".." in spec:
        low_text, _, high_text = spec.partition("..")
        bounds = [parse_value(part.strip()) for part in (low_text, high_text)]
        if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds):
            raise ConfigError("--space", text, f"LOW and HIGH of '{spec}' must be numbers; {SPACE_USAGE}")
        low, high = bounds
        is_int = "int" in kinds
        if is_int and not all(isinstance(b, int) or float(b).is_integer() for b in bounds):
            raise ConfigError("--space", text, f"int: needs whole numbers, got '{spec}'")
        if not low < high:
            raise ConfigError("--space", text, f"empty range '{spec}': expected LOW < HIGH")
        if "log" in kinds and low <= 0:
            raise ConfigError("--space", text, f"a log range needs LOW > 0, got {low_text.strip()}")
        if is_int:
            return Dimension(key, "int", int(low), int(high), "log" in kinds)
        return Dimension(key, "float", float(low), float(high), "log" in kinds)
    if kinds:
        raise ConfigError("--space", text, f"'{':'.join(kinds)}:' needs a range LOW..HIGH; {SPACE_USAGE}")
    texts = split_values(spec)
    if len(texts) < 2 or not all(texts):
        raise ConfigError("--space", text, f"expected a range LOW..HIGH or at least two choices A,B; {SPACE_USAGE}")
    choices = tuple(parse_value(item) for item in texts)
    for index, choice in enumerate(choices):
        if not isinstance(choice, (bool, int, float, str)) or choice is None:
            raise ConfigError("--space", text, f"choice {texts[index]} is not a number, text or true/false")
        if choice in choices[:index]:
            raise ConfigError("--space", text, f"choice {texts[index]} is listed twice")
    return Dimension(key, "choice", choices=choices)


def _lookup(plain: Any, key: str) -> Any:
    node = plain
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def dropout_group_count(config: RunConfig) -> int:
    """How many dropout groups the recipe's model has (PyTorch builds the model once)."""
    from cifartui.engine.train.models import ModelError, build_model, dropout_groups

    try:
        groups = dropout_groups(build_model(config.model, config.dataset.num_classes))
    except ModelError as error:
        raise ConfigError("--space", "dropout", str(error)) from None
    return len(groups)


def check_space(base: RunConfig, dimensions: Sequence[Dimension], groups: int | None) -> None:
    """Every searched key exists, is searched once, may be searched, and its bounds or choices fit it."""
    seen: set[str] = set()
    for dim in dimensions:
        if dim.key in seen:
            raise ConfigError("--space", dim.key, "searched twice; give each key once")
        seen.add(dim.key)
        if dim.key in NOT_VARIED:
            raise ConfigError("--space", dim.key, f"cannot be searched: {NOT_VARIED[dim.key]}")
        if dim.key == ALL_GROUPS:
            if not groups:
                raise ConfigError("--space", dim.key, f"model '{base.model.name}' has no dropout groups with "
                                  "rates in model.dropout; search its own key (e.g. model.classifier_dropout)")
            if dim.kind == "int":
                raise ConfigError("--space", dim.key, "a dropout rate is a float; expected LOW..HIGH")
            current: Any = 0.0
        else:
            plain = to_plain(base)
            replace_path(base, dim.key, _lookup(plain, dim.key), "--space")  # the messages of --set
            current = _lookup(plain, dim.key)
        if dim.kind != "choice":
            if isinstance(current, bool) or not isinstance(current, (int, float)):
                raise ConfigError("--space", dim.key, f"is {type(current).__name__} {current!r}, not a number; "
                                  "list its values instead: KEY=A,B,C")
            if isinstance(current, int) and dim.kind == "float":
                raise ConfigError("--space", dim.key, f"an integer setting; expected int:{dim.low:g}..{dim.high:g}")
            values: tuple[Any, ...] = (dim.low, dim.high)
        else:
            values = dim.choices
        for value in values:
            trial_config(base, {dim.key: value}, groups)


def trial_config(base: RunConfig, params: Mapping[str, Any], groups: int | None) -> RunConfig:
    """The recipe with a trial's settings applied, each checked as `--set` checks it."""
    from cifartui.engine.train.rules import validate

    config = base
    for key, value in params.items():
        if key == ALL_GROUPS:
            value = [value] * int(groups or 0)
        config = replace_path(config, key, value, "--space")
        if key == "train.epochs":
            config = replace_path(config, "train.max_steps", 0, "--space")
    return validate(config, "--space")


# Planning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchRequest:
    """A search as `cifartui sweep --search` takes it: the texts of --space and the choices made."""

    space: tuple[str, ...]
    trials: int | None
    sampler: str = "tpe"
    pruner: str = "none"
    min_epochs: int = 1
    reduction_factor: int = 3
    seed: int | None = None  # the sampler's seed (--seed, which also seeds every trial)
    explicit: Mapping[str, str] = field(default_factory=dict)


def plan_search(base: RunConfig, request: SearchRequest) -> tuple[dict[str, Any], RunConfig]:
    """The plan of a search and the recipe its trials start from, every part checked; nothing is
    written. Mistakes are ConfigErrors naming the option and the value."""
    from cifartui.engine.train.rules import validate

    if request.sampler not in SAMPLERS:
        raise ConfigError("--search", request.sampler, f"unknown sampler; expected one of {', '.join(SAMPLERS)}")
    if request.pruner not in PRUNERS:
        raise ConfigError("--pruner", request.pruner, f"unknown pruner; expected one of {', '.join(PRUNERS)}")
    require_optuna(request.sampler)
    if request.trials is None:
        raise ConfigError("--trials", "", "a search needs --trials N: how many trials to run")
    if request.trials < 1:
        raise ConfigError("--trials", str(request.trials), "expected a positive number of trials")
    if not request.space:
        raise ConfigError("--space", "", f"a search needs at least one --space; {SPACE_USAGE}")
    dimensions = [parse_space(text) for text in request.space]
    for dim in dimensions:
        if dim.key in request.explicit:
            raise ConfigError("--space", dim.key, f"also set by {request.explicit[dim.key]}; set it one way")
    base = validate(base, "sweep")
    groups = dropout_group_count(base) if any(d.key == ALL_GROUPS for d in dimensions) else None
    check_space(base, dimensions, groups)
    epochs = base.train.epochs
    split = base.dataset.val_fraction > 0
    if request.pruner != "none":
        if not split:
            raise ConfigError("--pruner", request.pruner, "early stopping compares each epoch's validation "
                              "accuracy; expected a validation split (dataset.val_fraction > 0)")
        if request.min_epochs < 1:
            raise ConfigError("--pruner-min-epochs", str(request.min_epochs), "expected at least 1")
        if request.reduction_factor < 2:
            raise ConfigError("--pruner-factor", str(request.reduction_factor), "expected at least 2")
        if request.min_epochs >= epochs:
            raise ConfigError("--pruner-min-epochs", str(request.min_epochs), f"the first rung is not before "
                              f"the end of the trials ({epochs} epochs); expected a smaller one")
    seed = base.train.seed
    return {"preset": base.name, "varied": [d.key for d in dimensions], "grid": {}, "range": {}, "random": None,
            "seeds": [seed], "halving": None, "runs": request.trials,
            "search": {"sampler": request.sampler, "trials": request.trials,
                       "space": [d.to_dict() for d in dimensions], "pruner": request.pruner,
                       "min_epochs": request.min_epochs, "reduction_factor": request.reduction_factor,
                       "sampler_seed": request.seed if request.seed is not None else 0,
                       "metric": "val_top1" if split else "test_top1", "dropout_groups": groups,
                       "epochs": epochs, "study": STUDY_NAME, "journal": JOURNAL_FILE}}, base


def is_search_plan(plan: Mapping[str, Any]) -> bool:
    return isinstance(plan.get("search"), dict)


def create_search(runs_dir: Path, plan: dict[str, Any], base: RunConfig, *, device: str, parallel: int | None = None,
                  devices: str | None = None, data_dir: Path | None = None) -> RunQueue:
    """Write a new search folder: the plan, the frozen recipe, the study, then the queue (not locked)."""
    from cifartui.engine.runs.folders import new_run_dir

    directory = new_run_dir(runs_dir, f"sweep-{plan['preset']}")
    write_text_atomic(directory / RECIPE_FILE, toml_document(to_plain(base)))
    write_plan(directory, plan)
    open_study(directory, plan, create=True)
    return RunQueue.create(directory, [], kind="sweep", device=device, parallel=parallel, devices=devices,
                           data_dir=data_dir)


def read_recipe(directory: Path) -> RunConfig:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    path = Path(directory) / RECIPE_FILE
    try:
        return from_mapping(RunConfig, tomllib.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise QueueError(f"{path}: missing; the search's recipe is needed to make its trials") from None
    except (OSError, ValueError) as error:
        raise QueueError(f"{path}: not a readable recipe: {error}") from None


# The study -----------------------------------------------------------------------------------


def make_sampler(search: Mapping[str, Any], number: int) -> Any:
    """The sampler for the trial numbered `number`: seeded from the plan's seed and the number, so
    that the draws do not depend on when a driver was restarted. What the samplers learn lives in
    the study (CMA-ES keeps its state in the trials), not in the sampler object."""
    import optuna

    seed = int(search.get("sampler_seed", 0)) * 1_000_003 + number
    name = search["sampler"]
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    # A third of the budget (at most Optuna's 10) is drawn at random before TPE models the results.
    startup = max(1, min(10, int(search["trials"]) // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)


def make_pruner(search: Mapping[str, Any]) -> Any:
    import optuna

    name, first, factor = search["pruner"], int(search["min_epochs"]), int(search["reduction_factor"])
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=factor)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=int(search["epochs"]),
                                              reduction_factor=factor)
    return optuna.pruners.NopPruner()


def open_study(directory: Path, plan: Mapping[str, Any], *, create: bool = False) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = plan["search"]
    storage = JournalStorage(JournalFileBackend(str(Path(directory) / search.get("journal", JOURNAL_FILE))))
    name = search.get("study", STUDY_NAME)
    if create:
        return optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                   sampler=make_sampler(search, 0), pruner=make_pruner(search))
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(search, 0),
                                 pruner=make_pruner(search))
    except KeyError:
        raise QueueError(f"{Path(directory) / JOURNAL_FILE}: holds no study '{name}'") from None


def width_for(trials: int) -> int:
    return max(3, len(str(trials)))


class Search:
    """A search folder being driven: asks the study for trials, adds them to the queue, reports
    each epoch's accuracy, and tells the study how each trial ended."""

    def __init__(self, queue: RunQueue, plan: Mapping[str, Any]):
        self.queue = queue
        self.plan = plan
        self.search = plan["search"]
        require_optuna(self.search["sampler"])
        self.base = read_recipe(queue.directory)
        self.study = open_study(queue.directory, plan)
        self.dimensions = [Dimension.from_dict(d) for d in self.search["space"]]
        self.distributions = {d.key: d.distribution() for d in self.dimensions}
        self.messages: list[str] = []  # trials that could not be made, for the display
        self._reported: dict[int, set[int]] = {}

    # Asking -------------------------------------------------------------------------------

    def _trials(self, states: Sequence[Any] | None = None) -> list[Any]:
        return self.study.get_trials(deepcopy=False, states=states)

    def trials_left(self) -> int:
        from optuna.trial import TrialState

        asked = [t for t in self._trials() if t.state != TrialState.WAITING]
        return max(0, int(self.search["trials"]) - len(asked))

    def entry_of(self, number: int) -> QueueEntry | None:
        return next((e for e in self.queue.entries if e.label.get("trial") == number), None)

    def reconcile(self) -> None:
        """Bring study and queue together after a driver that died: a trial asked but not yet in
        the queue is added to it; a trial whose run ended without the study being told is told."""
        from optuna.trial import TrialState

        for trial in self._trials(states=(TrialState.RUNNING,)):
            entry = self.entry_of(trial.number)
            if entry is None:
                self._add(trial.number, dict(trial.params))
            elif entry.state in ENDED_STATES:
                self.tell(entry)

    def ask(self) -> QueueEntry | None:
        """A new trial, in the queue, or None when its settings made no valid recipe (told failed)."""
        from optuna.trial import TrialState

        number = len(self._trials())
        self.study.sampler = make_sampler(self.search, number)
        trial = self.study.ask(dict(self.distributions))
        try:
            return self._add(trial.number, dict(trial.params))
        except ConfigError as error:
            trial.set_user_attr("error", str(error))
            self.study.tell(trial, state=TrialState.FAIL)
            self.messages.append(f"trial {trial.number}: {error}")
            return None

    def _add(self, number: int, params: dict[str, Any]) -> QueueEntry:
        config = trial_config(self.base, params, self.search.get("dropout_groups"))
        queue = self.queue
        key = f"{len(queue.entries) + 1:0{width_for(int(self.search['trials']))}d}"
        entry_dir = queue.directory / key
        entry_dir.mkdir(exist_ok=True)  # one a driver killed while making it left behind
        write_text_atomic(entry_dir / "config.toml", toml_document(to_plain(config)))
        label = {"settings": params, "seed": config.train.seed, "trial": number}
        entry = QueueEntry(key, entry_dir, label, config.train.epochs)
        write_json_atomic(entry_dir / "entry.json", entry.to_dict())
        queue.settings["entries"] = [*queue.settings["entries"], key]
        write_json_atomic(queue.directory / "queue.json", queue.settings)  # the entry counts from here on
        queue.entries.append(entry)
        return entry

    # Reporting and telling ------------------------------------------------------------------

    def _handle(self, entry: QueueEntry) -> Any:
        import optuna

        frozen = self.study.get_trials(deepcopy=False)[int(entry.label["trial"])]
        return optuna.trial.Trial(self.study, frozen._trial_id), frozen

    def report(self, entry: QueueEntry) -> Any:
        """Report each epoch's validation top-1 the study has not had yet; the trial's handle."""
        trial, frozen = self._handle(entry)
        done = self._reported.setdefault(frozen.number, set(frozen.intermediate_values))
        if frozen.state.is_finished():
            return None
        for epoch, value in sorted(entry.progress.val_top1.items()):
            if epoch not in done:
                trial.report(value, epoch)
                done.add(epoch)
        return trial

    def on_epoch(self, entry: QueueEntry) -> str | None:
        """The runner's judge: why the trial should stop now (its rung says so), or None."""
        if "trial" not in entry.label:
            return None
        trial = self.report(entry)
        epochs = entry.progress.epochs_done
        if trial is None or self.search["pruner"] == "none" or epochs >= entry.epochs or not trial.should_prune():
            return None
        value = entry.progress.val_top1.get(epochs)
        shown = f"val top-1 {value:.2f}%" if value is not None else "no accuracy"
        return f"pruned at epoch {epochs} by {self.search['pruner']}: {shown} ranks too low at its rung"

    def objective(self, entry: QueueEntry) -> float | None:
        summary = load_summary(entry) or {}
        value = summary.get("best_val_top1" if self.search["metric"] == "val_top1" else "test_top1")
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def tell(self, entry: QueueEntry) -> None:
        from optuna.trial import TrialState

        if "trial" not in entry.label:
            return
        self.report(entry)
        _, frozen = self._handle(entry)
        if frozen.state.is_finished():
            return
        if entry.state == "finished" and self.objective(entry) is not None:
            self.study.tell(frozen.number, self.objective(entry))
        elif entry.state == "stopped":
            self.study.tell(frozen.number, state=TrialState.PRUNED)
        else:
            self.study.tell(frozen.number, state=TrialState.FAIL)

    def __call__(self, event: Any) -> None:
        """The runner's listener: a trial's run that ended is told to the study."""
        if isinstance(event, EntryChanged) and event.new in ENDED_STATES:
            entry = next(e for e in self.queue.entries if e.key == event.key)
            self.tell(entry)


class SearchRunner(QueueRunner):
    """The queue's runner, which asks the study for a new trial whenever a slot has nothing to start."""

    def __init__(self, queue: RunQueue, slots: Sequence[str], search: Search, **options: Any):
        super().__init__(queue, slots, on_epoch=search.on_epoch, **options)
        self.search = search

    def _has_work(self) -> bool:
        return super()._has_work() or (not self.stopping and self.search.trials_left() > 0)

    def _start_free_slots(self) -> None:
        free = len(self.slots) - len(self._children)
        ready = sum(1 for e in self.queue.entries if e.key in self._startable and e.key not in self._children
                    and e.state in ("pending", "interrupted"))
        while free > ready and self.search.trials_left() > 0:
            entry = self.search.ask()
            if entry is not None:
                self._startable.add(entry.key)
                ready += 1
        super()._start_free_slots()


# Results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialResult:
    """One trial as the study and its run's files say."""

    number: int
    key: str | None
    state: str  # complete, pruned, failed, running or waiting
    params: dict[str, Any]
    value: float | None  # the objective (complete), or the last reported accuracy (pruned)
    epochs_done: int
    epochs: int
    run_dir: str | None
    test_top1: float | None
    rank: int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.number, "entry": self.key, "state": self.state, "settings": self.params,
                "value": self.value, "rank": self.rank, "epochs_done": self.epochs_done, "epochs": self.epochs,
                "run_dir": self.run_dir, "test_top1": self.test_top1, "message": self.message}


STATE_NAMES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
               "WAITING": "waiting"}


def search_results(study: Any, entries: Sequence[QueueEntry]) -> list[TrialResult]:
    """The trials, complete ones ranked by their objective (equal values share a rank), then the others."""
    by_trial = {e.label.get("trial"): e for e in entries}
    results = []
    for trial in study.get_trials(deepcopy=False):
        entry = by_trial.get(trial.number)
        summary = load_summary(entry) if entry is not None else None
        test = (summary or {}).get("test_top1")
        value = trial.value if trial.value is not None else (
            trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None)
        results.append(TrialResult(
            trial.number, entry.key if entry else None, STATE_NAMES.get(trial.state.name, trial.state.name.lower()),
            dict(trial.params), value, entry.progress.epochs_done if entry else 0, entry.epochs if entry else 0,
            str(entry.run_dir) if entry and entry.run_dir else None,
            float(test) if isinstance(test, (int, float)) else None, None,
            entry.message if entry else str(trial.user_attrs.get("error", ""))))
    complete = [r.value for r in results if r.state == "complete" and r.value is not None]
    ranked = []
    for result in results:
        rank = None
        if result.state == "complete" and result.value is not None:
            rank = 1 + sum(1 for v in complete if v > result.value)
        ranked.append(TrialResult(**{**result.__dict__, "rank": rank}))
    order = {"complete": 0, "running": 1, "pruned": 2, "waiting": 3, "failed": 4}
    return sorted(ranked, key=lambda r: (order.get(r.state, 5), r.rank if r.rank is not None else 0,
                                         -(r.value or 0.0), r.number))


def read_search(directory: Path) -> tuple[dict[str, Any], RunQueue, Any, list[TrialResult]]:
    """A search folder as its files say now: plan, queue, study and ranked trials."""
    plan = read_plan(directory)
    if not is_search_plan(plan):
        raise QueueError(f"{Path(directory) / 'sweep.json'}: a sweep of a grid or random draws, not a search")
    queue = RunQueue.open(directory)
    study = open_study(directory, plan)
    return plan, queue, study, search_results(study, queue.entries)


__all__ = ["Dimension", "parse_space", "check_space", "trial_config", "SearchRequest", "plan_search",
           "create_search", "is_search_plan", "open_study", "Search", "SearchRunner", "TrialResult",
           "search_results", "read_search", "SAMPLERS", "PRUNERS", "SHORT_KEYS"]
