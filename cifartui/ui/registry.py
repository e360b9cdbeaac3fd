"""The runs the app shows, one per tab, and what happens to them: their registry and lifecycle.

`RunRegistry` holds a `RunHandle` for every tab's run, in tab order, and does everything
that happens to a run: launch it here (a training thread) or in a process of its own
(detached), place it on the least busy GPU, follow a run another process trains (reading
its metrics.jsonl and status.json once a second), attach at start to the runs an earlier
app left training in the background, act on them (here through the run's `RunControl`,
elsewhere through its control channel), resume one from its last checkpoint, and stop
them all when the app leaves. Screens ask it (`app.registry`) rather than each other.

The App keeps what is on screen: it makes a run's tab and panel when the registry asks
(`add_run_tab`), relabels the tab when a run's state changes (`relabel_tab`), and turns
the events a training thread posts (`RunEvent`) into panels and notifications.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cifartui.config import RunConfig, replace_path
from cifartui.engine import api
from cifartui.engine.api import RunControl, RunDirError, gpu_count, list_runs, new_run_dir, read_config, read_status
from cifartui.ui import background
from cifartui.ui.messages import RunEvent

if TYPE_CHECKING:
    import subprocess

    from textual.app import App
    from textual.timer import Timer

# How long quitting waits for runs to write their checkpoints before leaving anyway.
SHUTDOWN_WAIT_S = 8.0
ACTIVE = ("starting", "running", "paused")
# A run in one of these states can go on from its last checkpoint (r).
RESUMABLE = ("stopped", "interrupted", "failed", "viewing")
# How often a followed run's metrics.jsonl and status.json are read again.
FOLLOW_EVERY_S = 1.0

TrainerFactory = Callable[..., Any]


@dataclass
class RunHandle:
    run_id: str
    run_dir: Path
    config: RunConfig | None
    control: RunControl | None  # None for a run this app only views or follows
    status: str = "starting"
    done: threading.Event = field(default_factory=threading.Event)
    tail_offset: int = 0
    process: subprocess.Popen | None = None  # the process training a run this app started in the background

    @property
    def active(self) -> bool:
        return self.control is not None and self.status in ACTIVE and not self.done.is_set()

    @property
    def name(self) -> str:
        """What the run's tab says: the recipe, or the directory when its config is unknown."""
        return self.config.name if self.config is not None else self.run_dir.name


def event_from_json(data: Any) -> api.Event | None:
    """An event back from a metrics.jsonl line; None for anything unknown or malformed."""
    if not isinstance(data, dict):  # a line of JSON that is not an object
        return None
    kind = api.EVENT_TYPES.get(str(data.get("event")))
    if kind is None or not api.well_formed_event(data):  # a damaged line: fields missing or of the wrong type
        return None
    names = {f.name for f in dataclasses.fields(kind)}
    try:
        return kind(**{k: v for k, v in data.items() if k in names})
    except TypeError:
        return None


def spread_across_gpus(config: RunConfig, busy_devices: list[str], gpus: int) -> RunConfig:
    """A run left on `auto` goes to the GPU with the fewest active runs when there are several."""
    if config.train.device != "auto" or gpus < 2:
        return config
    from cifartui.engine.api import least_busy_gpu  # the engine decides devices, in one place

    return replace_path(config, "train.device", f"cuda:{least_busy_gpu(busy_devices, gpus)}", "device")


class RunRegistry:
    """Every tab's run by its id, in tab order, and the lifecycle of each (see the module's docstring)."""

    def __init__(self, app: App[Any], *, runs_dir: Path, data_dir: Path | None,
                 trainer_factory: TrainerFactory | None, detach: bool) -> None:
        # The app must offer add_run_tab, panel, show_run and relabel_tab (CifarTuiApp does).
        self.app = app
        self.runs_dir = runs_dir
        self.data_dir = data_dir
        self.detach_default = detach  # new runs train in a process of their own, outliving the app
        self._trainer_factory = trainer_factory
        self.handles: dict[str, RunHandle] = {}  # in tab order
        self.follow_timers: dict[str, Timer] = {}
        self._counter = 0

    @property
    def trainer_factory(self) -> TrainerFactory:
        if self._trainer_factory is None:
            from cifartui.engine.api import Trainer  # PyTorch loads after the first screen is up

            self._trainer_factory = Trainer
        return self._trainer_factory

    # --- looking runs up ----------------------------------------------------------------------

    def _new_id(self) -> str:
        self._counter += 1
        return f"run-{self._counter}"

    def showing(self, run_dir: Path) -> RunHandle | None:
        """The handle of the tab that shows `run_dir`, if one does."""
        for handle in self.handles.values():
            if handle.run_dir == run_dir:
                return handle
        return None

    def active_handles(self) -> list[RunHandle]:
        return [h for h in self.handles.values() if h.active]

    def set_status(self, handle: RunHandle, status: str) -> None:
        if handle.status == status:
            return
        handle.status = status
        self.app.relabel_tab(handle)

    def close(self, handle: RunHandle) -> None:
        """Forget a run that does not train here (its tab is closed)."""
        self.stop_following(handle.run_id)
        self.handles.pop(handle.run_id, None)

    # --- launching ----------------------------------------------------------------------------

    def launch(self, config: RunConfig, *, run_dir: Path | None = None, resume: bool = False,
               detach: bool | None = None, branch: Any = None) -> RunHandle | None:
        """Start training `config` in a background thread: in a new tab, or a resumed run in its own.

        With `detach` (the app's default when None) the run trains in a process of its own
        instead, which quitting the app or losing the terminal leaves training; a branch
        too (through `cifartui branch --run-dir`).
        """
        busy = [h.config.train.device for h in self.handles.values() if h.active and h.config is not None]
        config = spread_across_gpus(config, busy, gpu_count())
        if self.detach_default if detach is None else detach:
            return self._launch_detached(config, run_dir=run_dir, resume=resume, branch=branch)
        try:
            run_dir = run_dir or new_run_dir(self.runs_dir, config.name)
        except RunDirError as error:  # a runs folder that cannot be written: say so, keep the app
            self.app.notify(str(error), title="The run cannot start", severity="error", timeout=15)
            return None
        handle = self.showing(run_dir) if resume else None
        if handle is not None and not handle.active:
            # The run's tab goes on: its charts, table and log keep their history.
            self.stop_following(handle.run_id)
            if handle.control is None:
                self.tail(handle.run_id)  # a viewed or followed run: what was written since the last read
            handle.config, handle.control = config, RunControl()
            handle.done = threading.Event()
            panel = self.app.panel(handle.run_id)
            assert panel is not None
            self.app.show_run(handle.run_id)
        else:
            handle = RunHandle(self._new_id(), run_dir, config, RunControl())
            self.handles[handle.run_id] = handle
            panel = self.app.add_run_tab(handle)
            if resume:
                self.replay(handle)  # the run so far, from metrics.jsonl, before the trainer appends
        panel.process_note = ""
        panel.status = "starting"
        panel.watch_process(os.getpid())
        self.set_status(handle, "starting")
        run_id = handle.run_id
        app = self.app

        def listener(event: api.Event) -> None:
            app.post_message(RunEvent(run_id, event))  # thread-safe; returns at once

        trainer = self.trainer_factory(config, run_dir, data_dir=self.data_dir, listeners=[listener],
                                       control=handle.control, resume=resume,
                                       **({"branch": branch} if branch is not None else {}))
        self.app.run_worker(partial(self._train, handle, trainer), thread=True, group="runs", name=run_id,
                            description=f"training {run_dir.name}", exit_on_error=False)
        return handle

    def _launch_detached(self, config: RunConfig, *, run_dir: Path | None, resume: bool,
                         branch: Any = None) -> RunHandle | None:
        try:
            run_dir = run_dir or new_run_dir(self.runs_dir, config.name)
            if branch is not None:
                child = background.start_branch(branch.parent, branch.checkpoint, dict(branch.changes), run_dir,
                                                data_dir=self.data_dir)
            else:
                child = background.start(None if resume else config, run_dir, data_dir=self.data_dir,
                                         resume=resume)
        except (RunDirError, OSError) as error:
            self.app.notify(str(error), title="The run cannot start", severity="error", timeout=15)
            return None
        handle = self.showing(run_dir)
        if handle is None:
            handle = self.open_tab(run_dir, follow=True, config=config)
        else:
            self.stop_following(handle.run_id)
            self.tail(handle.run_id)
            handle.control, handle.config = None, config
            self.app.show_run(handle.run_id)
            self.follow(handle)
        handle.process = child
        panel = self.app.panel(handle.run_id)
        if panel is not None:
            panel.watch_process(child.pid)
            panel.process_note = f"◉ pid {child.pid}, in the background"
        self.app.notify(f"{run_dir.name} trains in the background (pid {child.pid}); quitting the app leaves it "
                        "training, and the next cifartui opens it again.", timeout=8)
        return handle

    @staticmethod
    def _train(handle: RunHandle, trainer: Any) -> Any:
        # The training thread keeps the screen's CPU priority. A nicer one (it was +10)
        # starved whenever anything else wanted the CPU: benchmarks/thread_priority.py
        # measured 6-10 images/s against 44-73 at equal priority on a loaded 2-core
        # machine, and the screen answered no sooner, since a starved thread that holds
        # the interpreter lock makes the screen wait for it. On a GPU this thread launches
        # the kernels; the switch interval (SWITCH_INTERVAL_S in the app) is what gives the
        # screen its turn.
        try:
            return trainer.run()
        except BaseException:
            try:
                with (handle.run_dir / "error.log").open("a", encoding="utf-8") as log:
                    traceback.print_exc(file=log)
            except OSError:
                pass
            raise
        finally:
            handle.done.set()

    # --- viewing and following ----------------------------------------------------------------

    def open_run_view(self, path: Path, *, follow: bool) -> None:
        """Show a run from its metrics.jsonl; with follow, keep reading what another process appends."""
        handle = self.showing(path)
        if handle is not None:
            self.app.show_run(handle.run_id)
            self.app.pop_screen()
            if follow and not handle.active and handle.run_id not in self.follow_timers:
                self.follow(handle)
            return
        try:
            config = read_config(path)
        except RunDirError as error:
            self.app.notify(str(error), severity="error")
            return
        self.app.pop_screen()
        self.open_tab(path, follow=follow, config=config)

    def open_tab(self, path: Path, *, follow: bool, config: RunConfig | None) -> RunHandle:
        """A new tab showing a run from its metrics.jsonl, following it when it trains elsewhere."""
        handle = RunHandle(self._new_id(), path, config, None, status="following" if follow else "viewing")
        self.handles[handle.run_id] = handle
        panel = self.app.add_run_tab(handle)
        panel.watch_process(None)
        self.tail(handle.run_id)
        if follow:
            self.follow(handle)
        else:
            self._settle_view(handle)
        return handle

    def attach_background_runs(self) -> None:
        """Runs started in the background by an earlier app that still train: each in a tab, followed."""
        for path in background.live_detached_runs(self.runs_dir):
            if self.showing(path) is None:
                try:
                    config = read_config(path)
                except RunDirError:
                    continue
                self.open_tab(path, follow=True, config=config)

    def remote_live(self, handle: RunHandle | None) -> bool:
        """A run another process trains (one this app started in the background, or one it follows)."""
        return handle is not None and handle.control is None and handle.run_id in self.follow_timers

    def remote(self, handle: RunHandle, command: str) -> None:
        """Ask the process that trains a followed run, through its control channel (off the screen's thread)."""
        self.app.run_worker(partial(self._send, handle, command), thread=True, group="control",
                            exit_on_error=False)

    def _send(self, handle: RunHandle, command: str) -> None:
        from cifartui.engine.api import ControlError, send

        try:
            answer = send(handle.run_dir, command)
        except ControlError as error:
            self.app.call_from_thread(self.app.notify, str(error), title=handle.run_dir.name, severity="error",
                                      timeout=10)
            return
        self.app.call_from_thread(self.app.notify, background.describe_answer(command, answer),
                                  title=handle.run_dir.name)

    def follow(self, handle: RunHandle) -> None:
        panel = self.app.panel(handle.run_id)
        if panel is not None:
            self.follow_timers[handle.run_id] = self.app.set_interval(FOLLOW_EVERY_S, partial(self.tail, handle.run_id))
            self._check_followed(handle)

    def stop_following(self, run_id: str) -> None:
        timer = self.follow_timers.pop(run_id, None)
        if timer is not None:
            timer.stop()

    def replay(self, handle: RunHandle) -> None:
        """Everything metrics.jsonl holds now, into the run's panel."""
        handle.tail_offset = 0
        self.tail(handle.run_id)

    def tail(self, run_id: str) -> None:
        """Apply the whole lines appended to the run's metrics.jsonl since the last read."""
        handle = self.handles.get(run_id)
        panel = self.app.panel(run_id)
        if handle is None or panel is None or not self.app.is_running:
            return  # not running: the app is closing, and its panels' widgets are being removed
        path = handle.run_dir / "metrics.jsonl"
        try:
            with path.open("rb") as stream:
                stream.seek(handle.tail_offset)
                chunk = stream.read()
        except OSError:
            chunk = b""
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next read
        handle.tail_offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                event = event_from_json(json.loads(line))
            except (ValueError, RecursionError):  # a damaged line; RecursionError: nested too deeply
                continue
            if event is not None:
                panel.apply(event)
        if run_id in self.follow_timers:
            self._check_followed(handle)

    def _check_followed(self, handle: RunHandle) -> None:
        """Say what the process that trains a followed run is doing, or that it is gone."""
        panel = self.app.panel(handle.run_id)
        if panel is None or not self.app.is_running:
            return
        status = read_status(handle.run_dir)
        state = str(status.get("status", "unknown"))
        pid = status.get("pid") if isinstance(status.get("pid"), int) else None
        here = status.get("host") == socket.gethostname()
        if handle.process is not None and handle.process.poll() is not None and state in ("unknown", "starting"):
            # The background process ended before its run began (a bad setting, missing data).
            self.stop_following(handle.run_id)
            panel.fail("RunFailed", background.last_output(handle.run_dir) or
                       f"the process exited with code {handle.process.returncode}")
            self.set_status(handle, "failed")
            return
        if state in ("unknown", "starting"):
            # No status.json yet, or "starting" (its process holds the lock and is still loading its
            # data or building its model): the run is on its way. Keep reading.
            panel.process_note = "◉ waiting for the run's status" if state == "unknown" else f"◉ pid {pid}, starting"
            self.set_status(handle, "following")
            return
        if state in ("running", "paused"):
            panel.watch_process(pid if here else None)
            panel.process_note = f"◉ pid {pid}" if here else f"◉ pid {pid} on {status.get('host')}"
            panel.status = "following" if state == "running" else "paused"
            self.set_status(handle, "following")
            return
        self.stop_following(handle.run_id)
        panel.watch_process(None)
        panel.process_note = ""
        if state == "interrupted":
            step = status.get("step")
            at = f" (its last report: step {step:,})" if isinstance(step, int) else ""
            updated = status.get("updated")
            panel.interrupted(f"The process that trained this run (pid {pid}) is gone{at}. Press r to resume it "
                              "from its last checkpoint.", updated if isinstance(updated, (int, float)) else None)
            self.set_status(handle, "interrupted")
        else:
            self._settle_view(handle, state)

    def _settle_view(self, handle: RunHandle, state: str | None = None) -> None:
        """A run nobody trains: its tab shows how it ended (or viewing, when the file says nothing)."""
        panel = self.app.panel(handle.run_id)
        if panel is None:
            return
        state = state or str(read_status(handle.run_dir).get("status", "unknown"))
        if state == "interrupted":
            self._check_followed(handle)
            return
        if panel.status in ("starting", "running", "following") or state not in ("finished", "stopped", "failed"):
            panel.status = state if state in ("finished", "stopped", "failed") else "viewing"
        self.set_status(handle, panel.status)

    # --- resuming and stopping ----------------------------------------------------------------

    def resume_run(self, path: Path) -> None:
        """Train a stopped, failed or interrupted run on from its last checkpoint, in its tab."""
        if any(h.run_dir == path and h.active for h in self.handles.values()):
            self.app.notify(f"{path.name} is already training here.", severity="warning")
            return
        from cifartui.engine.api import CheckpointError, ResumeRefused, check_resumable

        try:
            config = check_resumable(path)
        except ResumeRefused as refusal:
            self.app.notify(str(refusal), severity="warning", timeout=10)
            return
        except (RunDirError, CheckpointError) as error:
            self.app.notify(str(error), severity="error", timeout=10)
            return
        from cifartui.ui.screens.history import HistoryScreen

        if isinstance(self.app.screen, HistoryScreen):  # resumed from History: back to the run's tab
            self.app.pop_screen()
        self.launch(config, run_dir=path, resume=True)

    def interrupted_runs(self) -> list[Path]:
        """Runs in the runs directory that an ended process left interrupted, with a checkpoint to go on from."""
        infos, _ = list_runs(self.runs_dir)
        found = []
        for info in infos:
            if info.status == "broken":
                continue
            status = read_status(info.path)
            reason = str(status.get("reason", ""))
            if status.get("status") == "interrupted" or (
                    status.get("status") == "stopped" and reason.startswith("interrupted by")):
                if (info.path / "checkpoints" / "last.pt").exists():
                    found.append(info.path)
        return found

    def stop_and_wait(self, reason: str) -> None:
        """Stop every run training here, and wait (at most SHUTDOWN_WAIT_S) for their checkpoints."""
        active = self.active_handles()
        for handle in active:
            handle.control.stop(reason)
        deadline = time.monotonic() + SHUTDOWN_WAIT_S
        for handle in active:
            handle.done.wait(max(0.0, deadline - time.monotonic()))

    def stop_all(self, reason: str) -> None:
        """Ask every run training here to stop, without waiting."""
        for handle in self.active_handles():
            handle.control.stop(reason)


__all__ = ["RunRegistry", "RunHandle", "event_from_json", "spread_across_gpus", "ACTIVE", "RESUMABLE",
           "SHUTDOWN_WAIT_S", "FOLLOW_EVERY_S"]
