"""Population-based training (PBT): a population of runs that copy the best and perturb their settings as they train.

A PBT sweep trains N members at once, each an entry of the sweep's queue (its own
`cifartui train` process, as a search's trials are). Every `interval` epochs, when a
member ends such an epoch, it is ranked against the other members' latest results at
the same or the nearest earlier interval (asynchronous, as Ray Tune's PBT is). A member
in the worst `quantile` EXPLOITS a member of the best quantile: it stops, and goes on as a new run folder in its
own entry, branched from the clone's checkpoint of that interval (`cifartui branch RUN
--checkpoint epoch-NNNN`, whose parent is the clone's run); and EXPLORES: its settings are
the clone's, each multiplied by 0.8 or 1.2, or (with probability 0.25) drawn again from
its --space, applied as the branch's live changes (the keys and checks of `control set`,
recorded as SettingsChanged, so `effective_config` replays them).

    SWEEP_DIR/sweep.json     the plan, with a "pbt" part: population, interval, quantile, space
    SWEEP_DIR/recipe.toml    the recipe every member starts from
    SWEEP_DIR/pbt_log.jsonl  one row per exploit: time, target and clone members, their epochs,
                             the checkpoint, old and new settings, the new run folder
    SWEEP_DIR/NNN/RUN...     a member's runs, the newest one the member now

A row is written before the member is stopped; a driver killed at any moment resumes
without deciding again: a member whose last row names a run without a checkpoint starts
that branch, any other member resumes its run. This module imports no PyTorch.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from cifartui.config import ConfigError, RunConfig, replace_path, to_plain
from cifartui.engine.orchestration.queue import (PlannedRun, QueueEntry, QueueRunner, RunQueue, load_summary,
                                                 toml_document, toml_value)
from cifartui.engine.orchestration.search import (ALL_GROUPS, RECIPE_FILE, Dimension, check_space, parse_space,
                                                  read_recipe, trial_config)
from cifartui.engine.orchestration.sweep import read_plan, write_plan
from cifartui.engine.runs.folders import new_run_dir, read_metrics, write_text_atomic
from cifartui.engine.runs.settings import CHANGEABLE, DROPOUT_PREFIX, LiveSettings

LOG_FILE = "pbt_log.jsonl"
DEFAULT_KEYS = ("optimizer.lr", "optimizer.weight_decay")
FACTORS = (0.8, 1.2)
RESAMPLE_PROBABILITY = 0.25
DEFAULT_QUANTILE = 0.25
# Live settings PBT itself relies on, or that are no hyperparameters: not explored.
MANAGED = {"train.epochs": "PBT sets every member's length (--pbt-epochs)",
           "train.max_steps": "PBT sets every member's length (--pbt-epochs)",
           "train.keep_every": "PBT keeps each interval's checkpoint to copy members from",
           "train.keep_max_mib": "PBT keeps each interval's checkpoint to copy members from",
           "train.checkpoint_minutes": "a checkpointing setting, not a hyperparameter",
           "train.log_every": "a logging setting, not a hyperparameter",
           "train.eval_batch_size": "an evaluation setting, not a hyperparameter"}


# The policy: pure functions of scores, settings and a seeded RNG ----------------------------------


def quantile_count(population: int, quantile: float) -> int:
    """Members in the worst (and in the best) quantile of `population`: floor(population * quantile)."""
    return int(math.floor(population * quantile + 1e-9))


def minimum_population(quantile: float) -> int:
    """The fewest members that put one in the worst quantile (and leave a different one in the best)."""
    return max(2, int(math.ceil(1.0 / quantile - 1e-9)))


def rank_members(scores: Mapping[str, float]) -> list[str]:
    """Members worst first; equal scores in key order (the lower key counts as the worse)."""
    return sorted(scores, key=lambda key: (scores[key], key))


def choose_clone(target: str, scores: Mapping[str, float], quantile: float, rng: random.Random) -> str | None:
    """The member `target` copies when it ranks in the worst quantile (one of the best quantile, drawn
    by `rng`), or None: it ranks better, or too few members have results for a quantile to hold one."""
    count = quantile_count(len(scores), quantile)
    if count < 1 or target not in scores:
        return None
    order = rank_members(scores)
    if target not in order[:count]:
        return None
    return rng.choice(order[-count:])


def sample(dim: Dimension, rng: random.Random) -> Any:
    """A value drawn from a --space dimension (uniform, or log-uniform; a choice at random)."""
    if dim.kind == "choice":
        return rng.choice(list(dim.choices))
    low, high = float(dim.low), float(dim.high)  # type: ignore[arg-type]
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if dim.log else rng.uniform(low, high)
    return int(round(value)) if dim.kind == "int" else value


def perturb(value: Any, dim: Dimension | None, rng: random.Random, factors: Sequence[float] = FACTORS) -> Any:
    """`value` times one of `factors` (a choice moves to a neighbouring choice), kept inside its dimension."""
    if dim is not None and dim.kind == "choice":
        choices = list(dim.choices)
        index = choices.index(value) if value in choices else 0
        return choices[min(len(choices) - 1, max(0, index + rng.choice((-1, 1))))]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    new = value * rng.choice(list(factors))
    if dim is not None:
        new = min(float(dim.high), max(float(dim.low), new))  # type: ignore[arg-type]
    return int(round(new)) if isinstance(value, int) else float(new)


def explore(settings: Mapping[str, Any], dims: Mapping[str, Dimension], rng: random.Random, *,
            resample_probability: float = RESAMPLE_PROBABILITY, factors: Sequence[float] = FACTORS) -> dict[str, Any]:
    """New settings from a clone's: each key drawn again from its space with `resample_probability`,
    else perturbed by a factor (Ray Tune's PBT explore step); keys in a fixed order, so a seeded RNG
    gives the same settings every time."""
    new = {}
    for key in sorted(settings):
        dim = dims.get(key)
        if dim is not None and rng.random() < resample_probability:
            new[key] = sample(dim, rng)
        else:
            new[key] = perturb(settings[key], dim, rng, factors)
    return new


def live_updates(settings: Mapping[str, Any], groups: Sequence[str]) -> dict[str, Any]:
    """Settings as the live changes `control set` takes: one dropout rate becomes dropout.GROUP of each group."""
    updates: dict[str, Any] = {}
    for key, value in settings.items():
        if key == ALL_GROUPS:
            updates.update({f"{DROPOUT_PREFIX}{group}": value for group in groups})
        else:
            updates[key] = value
    return updates


def decision_rng(seed: int, key: str, epoch: int, generation: int) -> random.Random:
    """The RNG of one decision: the same whenever and however often the driver was restarted."""
    return random.Random(f"pbt:{seed}:{key}:{epoch}:{generation}")


# Planning --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PbtRequest:
    population: int
    interval: int | None
    quantile: float = DEFAULT_QUANTILE
    epochs: int | None = None
    space: tuple[str, ...] = ()
    seed: int | None = None
    explicit: Mapping[str, str] | None = None


def check_request(request: PbtRequest, epochs: int) -> None:
    """The numbers of a PBT request; ConfigErrors naming the option and value."""
    if request.population < 2:
        raise ConfigError("--pbt", str(request.population), "expected a population of at least 2 members")
    if not 0.0 < request.quantile <= 0.5:
        raise ConfigError("--pbt-quantile", f"{request.quantile:g}", "expected a fraction in (0, 0.5]: the "
                          "worst and the best quantile must not overlap")
    if quantile_count(request.population, request.quantile) < 1:
        raise ConfigError("--pbt", str(request.population), f"with --pbt-quantile {request.quantile:g} no member "
                          f"falls in the worst quantile (floor({request.population} x {request.quantile:g}) = 0); "
                          f"expected at least {minimum_population(request.quantile)} members, or a larger quantile")
    if request.epochs is not None and request.epochs < 1:
        raise ConfigError("--pbt-epochs", str(request.epochs), "expected a positive number of epochs")
    if request.interval is None:
        raise ConfigError("--pbt-interval", "", "PBT needs --pbt-interval K: every how many epochs members "
                          "are compared")
    if not 1 <= request.interval < epochs:
        raise ConfigError("--pbt-interval", str(request.interval), f"expected 1 to {epochs - 1}: an interval "
                          f"before the end of the members' {epochs} epochs")


def check_keys(dims: Sequence[Dimension]) -> None:
    for dim in dims:
        if dim.key == ALL_GROUPS:
            continue
        if dim.key not in CHANGEABLE:
            raise ConfigError("--space", dim.key, "cannot change while a run trains, so PBT cannot explore it; "
                              "expected a key `cifartui control RUN set` takes (lr, wd, dropout, optimizer.*, "
                              "augment.*, train.label_smoothing, train.batch_size)")
        if dim.key in MANAGED:
            raise ConfigError("--space", dim.key, f"not explored by PBT: {MANAGED[dim.key]}")


def plan_pbt(base: RunConfig, request: PbtRequest, groups: Sequence[str]) -> tuple[dict[str, Any], RunConfig,
                                                                                  list[PlannedRun]]:
    """The plan, the frozen recipe and the members' first runs, every part checked; nothing is written.

    `groups` are the names of the dropout groups of the recipe's model (PyTorch builds it once).
    """
    from cifartui.engine.train.rules import validate

    base = validate(base, "sweep")
    if base.settings_schedule:
        raise ConfigError("--pbt", str(request.population), "the recipe has a settings_schedule of its own; PBT "
                          "makes each member's schedule: expected a recipe without one")
    epochs = request.epochs if request.epochs is not None else base.train.epochs
    check_request(request, epochs)
    if base.dataset.val_fraction <= 0:
        raise ConfigError("--pbt", str(request.population), "PBT ranks members by validation accuracy at each "
                          "interval; expected a validation split (dataset.val_fraction > 0)")
    dims = [parse_space(text) for text in request.space]
    check_keys(dims)
    for dim in dims:
        if request.explicit and dim.key in request.explicit:
            raise ConfigError("--space", dim.key, f"also set by {request.explicit[dim.key]}; set it one way")
    check_space(base, dims, len(groups) or None)
    base = replace_path(base, "train.epochs", epochs, "--pbt-epochs")
    base = replace_path(base, "train.max_steps", 0, "--pbt-epochs")
    keys = [dim.key for dim in dims] or list(DEFAULT_KEYS)
    seed = request.seed if request.seed is not None else base.train.seed
    rng = random.Random(f"pbt-initial:{seed}")
    by_key = {dim.key: dim for dim in dims}
    plain = to_plain(base)
    runs = []
    for index in range(request.population):
        settings = {key: sample(by_key[key], rng) if key in by_key else _current(plain, key, groups)
                    for key in keys}
        config = trial_config(base, settings, len(groups) or None)
        config = replace_path(config, "train.seed", base.train.seed + index, "--pbt")
        config = replace_path(config, "train.keep_every", request.interval, "--pbt-interval")
        runs.append(PlannedRun(config, {"settings": settings, "seed": config.train.seed, "member": index + 1}))
    plan = {"preset": base.name, "varied": keys, "grid": {}, "range": {}, "random": None,
            "seeds": [run.config.train.seed for run in runs], "halving": None, "runs": request.population,
            "pbt": {"population": request.population, "interval": request.interval, "quantile": request.quantile,
                    "epochs": epochs, "space": [dim.to_dict() for dim in dims], "keys": keys,
                    "dropout_groups": list(groups), "seed": seed, "factors": list(FACTORS),
                    "resample_probability": RESAMPLE_PROBABILITY, "metric": "val_top1", "log": LOG_FILE}}
    return plan, base, runs


def _current(plain: Mapping[str, Any], key: str, groups: Sequence[str]) -> Any:
    if key == ALL_GROUPS:
        rates = plain["model"]["dropout"]
        return float(rates[0]) if rates else 0.0
    node: Any = plain
    for part in key.split("."):
        node = node[part]
    return node


def is_pbt_plan(plan: Mapping[str, Any]) -> bool:
    return isinstance(plan.get("pbt"), dict)


def create_pbt(runs_dir: Path, plan: dict[str, Any], base: RunConfig, runs: Sequence[PlannedRun], *, device: str,
               parallel: int | None = None, devices: str | None = None, data_dir: Path | None = None) -> RunQueue:
    """Write a new PBT sweep folder: the recipe, the plan, then the queue of members (not locked)."""
    directory = new_run_dir(runs_dir, f"sweep-{plan['preset']}")
    write_text_atomic(directory / RECIPE_FILE, toml_document(to_plain(base)))
    write_plan(directory, plan)
    return RunQueue.create(directory, list(runs), kind="sweep", device=device,
                           parallel=parallel if parallel is not None else len(runs), devices=devices,
                           data_dir=data_dir)


# The log -----------------------------------------------------------------------------------------


def read_log(directory: Path) -> list[dict[str, Any]]:
    """The rows of pbt_log.jsonl, in order; a line cut off by a killed driver is left out."""
    try:
        lines = (Path(directory) / LOG_FILE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and {"target", "clone", "run", "clone_run", "clone_epoch", "new"} <= set(row):
            rows.append(row)
    return rows


def append_log(directory: Path, row: Mapping[str, Any]) -> None:
    path = Path(directory) / LOG_FILE
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# Driving ---------------------------------------------------------------------------------------------


@dataclass
class Member:
    """A member as PBT knows it: its settings now, where its current run starts, and what it inherited."""

    key: str
    settings: dict[str, Any]
    run: str | None = None  # its current run's folder name, once a branch made it (else the entry's own)
    start_epoch: int = 0
    inherited: dict[int, float] | None = None  # the clone's score at the epoch the branch starts at
    generation: int = 0  # exploits so far


class PopulationTraining:
    """A PBT sweep being driven: ranks members at their intervals, logs and plans each exploit."""

    def __init__(self, queue: RunQueue, plan: Mapping[str, Any]):
        self.queue = queue
        self.directory = queue.directory
        self.spec = plan["pbt"]
        self.interval = int(self.spec["interval"])
        self.quantile = float(self.spec["quantile"])
        self.dims = {d["key"]: Dimension.from_dict(d) for d in self.spec["space"]}
        self.groups = list(self.spec.get("dropout_groups") or [])
        self.base = read_recipe(self.directory)
        self.members = {e.key: Member(e.key, dict(e.label.get("settings", {}))) for e in queue.entries}
        self.rows = read_log(self.directory)
        self.messages: list[str] = []
        for row in self.rows:
            self._follow(row)

    def _follow(self, row: Mapping[str, Any]) -> None:
        member = self.members[row["target"]]
        member.settings = dict(row["new"])
        member.run = str(row["run"])
        member.start_epoch = int(row["clone_epoch"])
        score = row.get("clone_score")
        member.inherited = {member.start_epoch: float(score)} if isinstance(score, (int, float)) else {}
        member.generation += 1

    def entry(self, key: str) -> QueueEntry:
        return next(e for e in self.queue.entries if e.key == key)

    def pending_branch(self, key: str) -> dict[str, Any] | None:
        """The last row of a member whose branch has no checkpoint yet: it starts as that branch."""
        member = self.members[key]
        if member.run is None:
            return None
        if (self.entry(key).directory / member.run / "checkpoints" / "last.pt").is_file():
            return None
        return next(row for row in reversed(self.rows) if row["target"] == key)

    def reconcile(self) -> None:
        """After a driver that died: each member's entry names its current run (a pending branch: none)."""
        for entry in self.queue.entries:
            member = self.members[entry.key]
            if member.run is None:
                continue
            if self.pending_branch(entry.key) is not None:
                entry.run_name, entry.summary = None, None
                if entry.state not in ("pending",):
                    entry.state = "pending"
                    entry.message = f"exploits member {self.pending_branch(entry.key)['clone']}; starts its branch"
                self.queue.save(entry)
            elif entry.run_name != member.run:
                entry.run_name = member.run
                self.queue.refresh(entry)
                self.queue.save(entry)

    def scores(self, key: str) -> dict[int, float]:
        """A member's validation top-1 at each interval of its current run (and the one it started at)."""
        member, entry = self.members[key], self.entry(key)
        scores = dict(member.inherited or {})
        if member.run is None or entry.run_name == member.run:
            scores.update({epoch: value for epoch, value in entry.progress.val_top1.items()
                           if epoch % self.interval == 0 and epoch > member.start_epoch})
        return scores

    def latest_at(self, key: str, epoch: int) -> tuple[int, float] | None:
        """A member's result at the latest interval at or before `epoch`, or None."""
        scores = self.scores(key)
        known = [e for e in scores if e <= epoch]
        return (max(known), scores[max(known)]) if known else None

    def on_epoch(self, entry: QueueEntry) -> str | None:
        """The runner's judge: why a member stops now (it exploits another), or None."""
        epoch = entry.progress.epochs_done
        member = self.members.get(entry.key)
        if member is None or epoch % self.interval or epoch >= entry.epochs or entry.run_dir is None:
            return None
        if member.run is not None and entry.run_name != member.run:
            return None
        results = {key: found for key in self.members if (found := self.latest_at(key, epoch)) is not None}
        if entry.key not in results or results[entry.key][0] != epoch:
            return None
        rng = decision_rng(int(self.spec["seed"]), entry.key, epoch, member.generation)
        clone = choose_clone(entry.key, {key: score for key, (_, score) in results.items()}, self.quantile, rng)
        if clone is None:
            return None
        clone_epoch, clone_score = results[clone]
        clone_entry = self.entry(clone)
        checkpoint = f"epoch-{clone_epoch:04d}"
        if clone_entry.run_dir is None or not (clone_entry.run_dir / "checkpoints" / f"{checkpoint}.pt").is_file():
            self.messages.append(f"member {entry.key} at epoch {epoch}: member {clone} has no {checkpoint} yet")
            return None
        old = dict(member.settings)
        new = self._explore(self.members[clone].settings, rng)
        run = new_run_dir(entry.directory, f"{self.base.name}-pbt").name
        row = {"time": time.time(), "target": entry.key, "clone": clone, "target_epoch": epoch,
               "target_run": entry.run_name, "target_score": results[entry.key][1], "clone_epoch": clone_epoch,
               "clone_run": clone_entry.run_name, "checkpoint": checkpoint, "clone_score": clone_score,
               "clone_settings": dict(self.members[clone].settings), "old": old, "new": new, "run": run,
               "generation": member.generation + 1}
        append_log(self.directory, row)  # before the member is stopped: a killed driver finds it done
        self.rows.append(row)
        self._follow(row)
        return (f"exploits member {clone} (val top-1 {clone_score:.2f}% at epoch {clone_epoch}; its own "
                f"{results[entry.key][1]:.2f}% at epoch {epoch})")

    def _explore(self, settings: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
        """Perturbed settings, each checked as `control set` checks it; one it refuses keeps its old value."""
        new = explore(settings, self.dims, rng, resample_probability=float(self.spec["resample_probability"]),
                      factors=self.spec["factors"])
        config = trial_config(self.base, settings, len(self.groups) or None)
        rates = {group: float(settings.get(ALL_GROUPS, 0.0)) for group in self.groups}
        for key, value in list(new.items()):
            try:
                LiveSettings(config).check(live_updates({key: value}, self.groups), "pbt", rates)
            except ConfigError:
                new[key] = settings[key]
        return new

    def branch_command(self, entry: QueueEntry, row: Mapping[str, Any], device: str, *, data_dir: str | None,
                       python: str) -> list[str]:
        """`cifartui branch` of the clone's checkpoint into the member's new run folder, with its new settings."""
        clone_run = self.entry(row["clone"]).directory / str(row["clone_run"])
        run_dir = entry.directory / str(row["run"])
        if (run_dir / "config.json").exists():  # a branch killed before its first checkpoint: start it again
            shutil.rmtree(run_dir)
        run_dir.mkdir(exist_ok=True)
        command = [python, "-m", "cifartui.cli", "branch", str(clone_run), "--checkpoint", str(row["checkpoint"]),
                   "--run-dir", str(run_dir), "--device", device, "--summary-json", str(entry.summary_path)]
        if data_dir:
            command += ["--data-dir", data_dir]
        for key, value in live_updates(row["new"], self.groups).items():
            command += ["--set", f"{key}={toml_value(value)}"]
        return command


class PbtRunner(QueueRunner):
    """The queue's runner, which stops a member that exploits another and starts it again as its branch."""

    def __init__(self, queue: RunQueue, slots: Sequence[str], pbt: PopulationTraining, **options: Any):
        super().__init__(queue, slots, on_epoch=pbt.on_epoch, **options)
        self.pbt = pbt
        self._startable |= {e.key for e in queue.entries if pbt.pending_branch(e.key) is not None}

    def _command(self, entry: QueueEntry, device: str, resume: bool) -> list[str]:
        row = self.pbt.pending_branch(entry.key)
        if row is None:
            return super()._command(entry, device, resume)
        entry.run_name = str(row["run"])
        self.queue.save(entry)
        return self.pbt.branch_command(entry, row, device, data_dir=self.data_dir, python=self.python)

    def _settle(self, entry: QueueEntry, code: int, lost: str | None = None) -> None:
        row = self.pbt.pending_branch(entry.key)
        if row is None or entry.run_name == row["run"]:
            super()._settle(entry, code, lost)
            return
        self._stop_reason.pop(entry.key, None)  # the run it stopped stays as it is, a past of the member
        self._tail(entry)
        entry.run_name, entry.summary, entry.exit_code = None, None, code
        entry.summary_path.unlink(missing_ok=True)
        if not self.stopping:
            self._startable.add(entry.key)
        self._set_state(entry, "pending", f"exploits member {row['clone']} at its epoch {row['clone_epoch']}")


# Reading and exporting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberView:
    """A member as the Sweeps view shows it: its settings now and whom it copied, when."""

    key: str
    settings: dict[str, Any]
    lineage: tuple[dict[str, Any], ...]  # its rows: clone, target_epoch, clone_epoch, ...

    def lineage_text(self) -> str:
        if not self.lineage:
            return "own start"
        return "; ".join(f"copied {row['clone']} at epoch {row['clone_epoch']}" for row in self.lineage[-3:]) + (
            f" (+{len(self.lineage) - 3} earlier)" if len(self.lineage) > 3 else "")


def read_members(directory: Path, entries: Sequence[QueueEntry]) -> list[MemberView]:
    """Each member's settings now and its exploits, from the entries' labels and the log."""
    rows = read_log(directory)
    views = []
    for entry in entries:
        own = tuple(row for row in rows if row["target"] == entry.key)
        settings = dict(own[-1]["new"]) if own else dict(entry.label.get("settings", {}))
        views.append(MemberView(entry.key, settings, own))
    return views


def member_schedule(directory: Path, key: str) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
    """The member whose first run began a member's lineage, and the settings in force from each epoch on,
    following each branch back to the run it copied."""
    queue = RunQueue.open(directory)
    rows = {(row["target"], row["run"]): row for row in read_log(directory)}
    entry = next((e for e in queue.entries if e.key == key), None)
    if entry is None:
        raise ConfigError("--pbt-export", key, f"no such member in {directory}")
    current = (key, entry.run_name)
    segments: list[tuple[int, dict[str, Any]]] = []
    while current in rows:
        row = rows[current]
        segments.append((int(row["clone_epoch"]), dict(row["new"])))
        current = (row["clone"], row["clone_run"])
    root = next(e for e in queue.entries if e.key == current[0])
    segments.append((0, dict(root.label.get("settings", {}))))
    merged: dict[int, dict[str, Any]] = {}
    for epoch, settings in reversed(segments):  # a later branch at the same epoch wins
        merged[epoch] = settings
    return root.key, sorted(merged.items())


def best_member(directory: Path) -> str:
    """The member whose current run has the best validation top-1 (a finished one first)."""
    queue = RunQueue.open(directory)

    def score(entry: QueueEntry) -> tuple[int, float]:
        summary = load_summary(entry) if entry.state == "finished" else None
        value = (summary or {}).get("best_val_top1")
        if not isinstance(value, (int, float)):
            value = entry.progress.best_val_top1
        return (entry.state == "finished", float(value) if isinstance(value, (int, float)) else -1.0)

    if not queue.entries:
        raise ConfigError("--pbt-export", str(directory), "the sweep has no members")
    return max(queue.entries, key=score).key


def export_schedule(directory: Path, key: str | None = None) -> tuple[RunConfig, str, list[tuple[int, dict[str, Any]]]]:
    """A recipe that trains the (best) member's schedule from scratch: its lineage's first settings and
    seed, and a settings_schedule entry at each epoch where a branch changed them."""
    from cifartui.config import ScheduledChange

    directory = Path(directory)
    plan = read_plan(directory)
    if not is_pbt_plan(plan):
        raise ConfigError("--pbt-export", str(directory), "not a PBT sweep (its sweep.json has no pbt part)")
    key = key or best_member(directory)
    root, schedule = member_schedule(directory, key)
    spec = plan["pbt"]
    groups = list(spec.get("dropout_groups") or [])
    base = read_recipe(directory)
    queue = RunQueue.open(directory)
    root_entry = next(e for e in queue.entries if e.key == root)
    config = trial_config(base, schedule[0][1], len(groups) or None)
    config = replace_path(config, "train.seed", int(root_entry.label.get("seed", base.train.seed)), "--pbt-export")
    changes = []
    previous = schedule[0][1]
    for epoch, settings in schedule[1:]:
        differ = {k: v for k, v in settings.items() if previous.get(k) != v}
        previous = settings
        if differ:
            changes.append(ScheduledChange(epoch=epoch, set=tuple(
                f"{k}={toml_value(v)}" for k, v in live_updates(differ, groups).items())))
    config = replace(config, name=f"{base.name}-pbt-{key}", settings_schedule=tuple(changes),
                     description=f"the schedule of member {key} of PBT sweep {directory.name}")
    return config, key, schedule


def write_export(directory: Path, out: Path, key: str | None = None) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
    """Write the exported recipe to `out` (TOML, checked by loading it back); the member and its schedule."""
    from cifartui.engine.train.rules import validate

    config, key, schedule = export_schedule(directory, key)
    validate(config, str(out))
    write_text_atomic(Path(out), f"# {config.description}\n" + toml_document(to_plain(config)))
    return key, schedule


__all__ = ["LOG_FILE", "PbtRequest", "plan_pbt", "create_pbt", "is_pbt_plan", "PopulationTraining", "PbtRunner",
           "quantile_count", "minimum_population", "rank_members", "choose_clone", "explore", "perturb", "sample",
           "live_updates", "decision_rng", "read_log", "MemberView", "read_members", "member_schedule",
           "best_member", "export_schedule", "write_export", "check_request", "check_keys"]
