"""The engine as the app sees it: one module, so the screen depends on a short list, not on the engine's layout.

What it offers, by what the app does with it:

- **the event vocabulary**: `Event` and the past-tense facts a run publishes (`RunStarted`,
  `StepMetrics`, `EpochEnded`, ... `RunFailed`), and `EVENT_TYPES` to read them back from
  a metrics.jsonl line (`well_formed_event` checks one first);
- **a run on disk**: `new_run_dir`, `list_runs`, `read_config`, `read_metrics`,
  `read_status`, `is_locked`, `default_runs_dir`, `write_text_atomic`, `RunDirError`;
- **a live run**: `RunControl` (pause, resume, stop, checkpoint, set) for a run trained in
  this process, `send` and `ControlError` for one another process trains, and the live
  settings (`LiveSettings`, `effective_config`, `parse_value`, `when_applied`,
  `NEXT_STEP`, `NEXT_EPOCH`, `DROPOUT_PREFIX`);
- **training one run**: `Trainer`, `Branch`, `check_resumable` and `ResumeRefused`,
  `load_checkpoint` and `CheckpointError`, `build_model`, `summarize`, `dropout_groups`,
  `DropoutSchedule`, `Augmenter`, `load_dataset`, `default_data_dir`, `ARCHIVES`,
  `DataError`, `inspect_run`, `InspectError`, and the devices: `gpu_count`,
  `least_busy_gpu`, `resolve_device`, `DeviceError`;
- **many runs**: sweeps (`SweepRequest`, `plan_sweep`, `create_sweep`, `drive_in_background`,
  `find_sweeps`, `read_sweep`, `sweep_of`, `sweep_run_dirs`, `is_sweep_dir`, `last_log_line`,
  `format_value`, `SweepStatus`, `SettingResult`) and their queue (`PlannedRun`,
  `plan_slots`, `ProgressTails`, `lock_holder`, `QueueError`, `toml_document`), and
  reproductions' folders (`is_reproduction_dir`, `reproduction_of`), and the members of a
  population-based training sweep (`is_pbt_plan`, `read_members`, `MemberView`).

Importing this module does not import PyTorch: the app draws its first screen before
PyTorch loads. The names of the training part load it on first use (`from
cifartui.engine.api import Trainer` inside a function, as the app does), and
`load_training()` loads it on purpose, in a thread, while the first screen is up.
The engine's own modules never import this one; it may import any of them.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

from cifartui.engine.orchestration.pbt import MemberView, is_pbt_plan, read_members
from cifartui.engine.orchestration.queue import PlannedRun, ProgressTails, QueueError, lock_holder, plan_slots, toml_document
from cifartui.engine.orchestration.reproduce import is_reproduction_dir, reproduction_of
from cifartui.engine.orchestration.sweep import (SettingResult, SweepRequest, SweepStatus, create_sweep,
                                                 drive_in_background, find_sweeps, format_value, is_sweep_dir,
                                                 last_log_line, plan_sweep, read_sweep, sweep_of, sweep_run_dirs)
from cifartui.engine.runs.channel import ControlError, send
from cifartui.engine.runs.control import RunControl
from cifartui.engine.runs.events import (EVENT_TYPES, CheckpointFailed, CheckpointSaved, DropoutChanged, EpochEnded,
                                         Event, LossNotFinite, LRChanged, MemoryExhausted, PhaseStarted, RunFailed,
                                         RunFinished, RunPaused, RunResumed, RunStarted, RunStopped, SettingsChanged,
                                         StepMetrics)
from cifartui.engine.runs.folders import (RunDirError, default_runs_dir, is_locked, list_runs, new_run_dir, read_config,
                                          read_metrics, read_status, well_formed_event, write_text_atomic)
from cifartui.engine.runs.settings import (DROPOUT_PREFIX, NEXT_EPOCH, NEXT_STEP, LiveSettings, effective_config,
                                           parse_value, when_applied)

if TYPE_CHECKING:  # what the lazy names below are, for readers and type checkers
    from cifartui.engine.runs.checkpoint import CheckpointError, load_checkpoint
    from cifartui.engine.train.augment import Augmenter
    from cifartui.engine.train.data import ARCHIVES, DataError, default_data_dir, load_dataset
    from cifartui.engine.train.devices import DeviceError, least_busy_gpu, resolve_device
    from cifartui.engine.train.inspect import InspectError, inspect_run
    from cifartui.engine.train.models import build_model, dropout_groups, summarize
    from cifartui.engine.train.schedules import DropoutSchedule
    from cifartui.engine.train.trainer import Branch, ResumeRefused, Trainer, check_resumable


# The names that need PyTorch, by the module that holds them; each loads on first use.
def _trainer() -> ModuleType:
    from cifartui.engine.train import trainer
    return trainer


def _models() -> ModuleType:
    from cifartui.engine.train import models
    return models


def _schedules() -> ModuleType:
    from cifartui.engine.train import schedules
    return schedules


def _data() -> ModuleType:
    from cifartui.engine.train import data
    return data


def _augment() -> ModuleType:
    from cifartui.engine.train import augment
    return augment


def _devices() -> ModuleType:
    from cifartui.engine.train import devices
    return devices


def _inspect() -> ModuleType:
    from cifartui.engine.train import inspect
    return inspect


def _checkpoint() -> ModuleType:
    from cifartui.engine.runs import checkpoint
    return checkpoint


_LAZY: dict[str, Callable[[], ModuleType]] = {
    **dict.fromkeys(("Trainer", "Branch", "ResumeRefused", "check_resumable"), _trainer),
    **dict.fromkeys(("build_model", "summarize", "dropout_groups"), _models),
    "DropoutSchedule": _schedules,
    **dict.fromkeys(("ARCHIVES", "DataError", "default_data_dir", "load_dataset"), _data),
    "Augmenter": _augment,
    **dict.fromkeys(("DeviceError", "least_busy_gpu", "resolve_device"), _devices),
    **dict.fromkeys(("InspectError", "inspect_run"), _inspect),
    **dict.fromkeys(("CheckpointError", "load_checkpoint"), _checkpoint),
}


def __getattr__(name: str) -> Any:
    loader = _LAZY.get(name)
    if loader is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(loader(), name)
    globals()[name] = value  # the next use finds it without asking again
    return value


def gpu_count() -> int:
    """How many CUDA devices this process sees (loads PyTorch)."""
    import torch

    return torch.cuda.device_count()


def load_training() -> None:
    """Import the trainer and PyTorch now, so that the first run launched does not wait for them."""
    _trainer()


__all__ = [
    # events
    "Event", "EVENT_TYPES", "well_formed_event", "RunStarted", "PhaseStarted", "StepMetrics", "EpochEnded",
    "LRChanged", "SettingsChanged", "DropoutChanged", "CheckpointSaved", "CheckpointFailed", "RunPaused",
    "RunResumed", "LossNotFinite", "MemoryExhausted", "RunStopped", "RunFinished", "RunFailed",
    # a run on disk
    "RunDirError", "default_runs_dir", "is_locked", "list_runs", "new_run_dir", "read_config", "read_metrics",
    "read_status", "write_text_atomic",
    # a live run
    "RunControl", "ControlError", "send", "LiveSettings", "effective_config", "parse_value", "when_applied",
    "NEXT_STEP", "NEXT_EPOCH", "DROPOUT_PREFIX",
    # training one run (load PyTorch on first use)
    *_LAZY, "gpu_count", "load_training",
    # many runs
    "SweepRequest", "SweepStatus", "SettingResult", "plan_sweep", "create_sweep", "drive_in_background",
    "find_sweeps", "read_sweep", "sweep_of", "sweep_run_dirs", "is_sweep_dir", "last_log_line", "format_value",
    "PlannedRun", "plan_slots", "ProgressTails", "lock_holder", "QueueError", "toml_document",
    "is_reproduction_dir", "reproduction_of", "MemberView", "is_pbt_plan", "read_members",
]
