"""The Textual app: runs in tabs, each training in its own background thread.

The app talks to the engine only through events (posted as `RunEvent` messages from
the training thread, which never waits for the screen) and each run's `RunControl`.
`make_app` builds it with a trainer factory, so tests can drive the real app with tiny
runs or a scripted engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import signal
import subprocess
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

from textual import events, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Header, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from cifartui.config import RunConfig, replace_path
from cifartui.engine import events as ev
from cifartui.engine.control import RunControl
from cifartui.engine.runs import (RunDirError, default_runs_dir, list_runs, new_run_dir, read_config, read_status,
                                  well_formed_event)
from cifartui.ui import background
from cifartui.ui.messages import RunEvent
from cifartui.ui.screens.chart_view import ChartScreen
from cifartui.ui.screens.branch import start_branch
from cifartui.ui.screens.compare import CompareScreen
from cifartui.ui.screens.dialogs import ConfirmScreen, HelpScreen, ResumeOfferScreen
from cifartui.ui.screens.history import HistoryScreen
from cifartui.ui.screens.inspect import InspectScreen
from cifartui.ui.screens.picker import PickerScreen
from cifartui.ui.screens.settings_form import can_change_settings, open_for_run
from cifartui.ui.screens.sweeps import SweepsScreen
from cifartui.ui.text import plural
from cifartui.ui.widgets.charts import SMOOTHING_STEPS, X_AXES, MetricChart
from cifartui.ui.widgets.footer import KeyFooter
from cifartui.ui.widgets.run_panel import RunPanel
from cifartui.ui.widgets.system import SystemPanel

# How long quitting waits for runs to write their checkpoints before leaving anyway.
SHUTDOWN_WAIT_S = 8.0
ACTIVE = ("starting", "running", "paused")
# A run in one of these states can go on from its last checkpoint (r).
RESUMABLE = ("stopped", "interrupted", "failed", "viewing")
STATUS_MARK = {"running": "▶", "paused": "⏸", "finished": "✓", "stopped": "■", "failed": "✗",
               "following": "◉", "viewing": "·", "starting": "…", "interrupted": "↯"}
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


def event_from_json(data: Any) -> ev.Event | None:
    """An event back from a metrics.jsonl line; None for anything unknown or malformed."""
    if not isinstance(data, dict):  # a line of JSON that is not an object
        return None
    kind = ev.EVENT_TYPES.get(str(data.get("event")))
    if kind is None or not well_formed_event(data):  # a damaged line: fields missing or of the wrong type
        return None
    names = {f.name for f in dataclasses.fields(kind)}
    try:
        return kind(**{k: v for k, v in data.items() if k in names})
    except TypeError:
        return None


class CifarTuiApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "cifartui"
    # The footer shows the keys a new user needs first, in words that fit 80 columns;
    # every key is in the help (? or F1) and the command palette (ctrl+p).
    BINDINGS = [
        Binding("n", "new_run", "New"),
        Binding("p", "toggle_pause", "Pause"),
        Binding("s", "stop_run", "Stop"),
        Binding("c", "checkpoint", "Checkpoint", show=False),
        # In the footer while the focused run trains; elsewhere the same key says why it cannot.
        Binding("t", "tune", "Tune"),
        Binding("t", "tune(True)", "Tune", show=False),
        Binding("b", "branch", "Branch", show=False),
        Binding("r", "resume_run", "Resume", show=False),
        Binding("h", "history", "History"),
        Binding("v", "compare", "Compare"),
        Binding("S", "sweeps", "Sweeps"),
        Binding("i", "inspect", "Inspect"),
        Binding("z", "chart_view", "Charts"),
        Binding("w", "close_tab", "Close tab", show=False),
        Binding("e", "smoothing", "Smoothing", show=False),
        Binding("l", "log_scale", "Log scale", show=False),
        Binding("x", "x_axis", "X axis", show=False),
        Binding("m", "system_graphs", "System graphs", show=False),
        Binding("right_square_bracket", "next_tab", "Next tab", show=False),
        Binding("left_square_bracket", "previous_tab", "Previous tab", show=False),
        *[Binding(str(n), f"show_tab({n})", f"Tab {n}", show=False) for n in range(1, 10)],
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("q,f10", "quit", "Quit", key_display="q"),
    ]

    # Keys that act on the focused run's tab work where the tabs are; on History,
    # Compare or Inspect they would act on a run out of sight, and their footers stay short.
    RUN_SCREEN_ACTIONS = frozenset({
        "new_run", "toggle_pause", "stop_run", "checkpoint", "resume_run", "history", "inspect", "chart_view",
        "close_tab", "smoothing", "log_scale", "x_axis", "system_graphs", "next_tab", "previous_tab", "show_tab",
        "sweeps", "tune", "branch"})

    def __init__(self, *, runs_dir: Path | None = None, data_dir: Path | None = None,
                 trainer_factory: TrainerFactory | None = None, initial: Iterable[RunConfig] = (),
                 offer_resume: bool = True, image_mode: str = "halfblock", detach: bool = False) -> None:
        super().__init__()
        self.image_mode = image_mode  # "sixel", "kitty" or "halfblock": see cifartui.ui.graphics
        # New runs train in a process of their own, outliving the app (the default over SSH).
        self.detach_default = detach
        self.runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
        self.data_dir = data_dir
        self._trainer_factory = trainer_factory
        self.initial = list(initial)
        self.offer_resume = offer_resume
        self.handles: dict[str, RunHandle] = {}  # in tab order
        self._panels: dict[str, RunPanel] = {}
        self._follow_timers: dict[str, Timer] = {}
        self._gc_threshold: tuple[int, int, int] | None = None  # Python's, while the app runs its own
        self.comparison: list[Path] = []
        self._counter = 0
        self._shutting_down = False

    # --- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="welcome")
        yield TabbedContent(id="runs")
        yield KeyFooter()

    @property
    def run_tabs(self) -> TabbedContent:
        """The tabs of runs, which live on the first screen whatever screen is on top."""
        return self.screen_stack[0].query_one("#runs", TabbedContent)

    @property
    def trainer_factory(self) -> TrainerFactory:
        if self._trainer_factory is None:
            from cifartui.engine.trainer import (
                Trainer,  # PyTorch loads after the first screen is up
            )

            self._trainer_factory = Trainer
        return self._trainer_factory

    def _schedule_full_collections(self) -> None:
        self._gc_threshold = gc.get_threshold()
        young, middle, _ = self._gc_threshold
        gc.set_threshold(young, middle, AUTOMATIC_FULL_COLLECTIONS_OFF)
        self._last_input = self._last_full_collection = time.monotonic()
        self.set_interval(FULL_COLLECTION_CHECK_S, self.collect_garbage_when_idle)

    def collect_garbage_when_idle(self) -> bool:
        """A full collection now if one is due and the user is not at the keys; True if it ran."""
        now = time.monotonic()
        since_collection = now - self._last_full_collection
        idle = now - self._last_input >= IDLE_BEFORE_COLLECTION_S
        due = since_collection >= FULL_COLLECTION_AT_LATEST_S or (idle and since_collection >= FULL_COLLECTION_EVERY_S)
        if not due:
            return False
        gc.collect()
        self._last_full_collection = time.monotonic()
        return True

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, (events.Key, events.MouseDown)):
            self._last_input = time.monotonic()
        await super().on_event(event)

    def on_mount(self) -> None:
        # Import PyTorch while the user looks at the first screen, so that launching a run
        # does not wait for it and the screen does not wait for PyTorch.
        threading.Thread(target=_import_engine, name="cifartui-import-engine", daemon=True).start()
        # Training threads release the interpreter lock in every tensor operation, but the
        # screen must not wait the default 5 ms each time it asks for it back.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._schedule_full_collections()
        self._install_signal_handlers()
        self._layout_for(self.size.width, self.size.height)
        for config in self.initial:
            self.launch(config)
        self._attach_background_runs()
        self._update_welcome()
        if self.offer_resume:
            self.call_after_refresh(self._offer_resume)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.tabbed_content.id != "runs":
            return
        handle = self.handles.get(event.pane.id or "")
        self.sub_title = handle.run_dir.name if handle else ""
        panel = self.panel(event.pane.id or "")
        if panel is not None:
            panel.call_after_refresh(panel.redraw)  # catch up on what arrived while hidden

    def on_resize(self, event: Any) -> None:
        self._layout_for(event.size.width, event.size.height)

    def _layout_for(self, width: int, height: int) -> None:
        # The same widgets, arranged for the space: below 100 columns the tables stack,
        # below 30 rows the lower part shrinks; charts take the rows that are left.
        self.set_class(width < 100, "narrow")
        self.set_class(height < 30, "short")

    def _update_welcome(self) -> None:
        has_tabs = bool(self.handles)
        welcome = self.screen_stack[0].query_one("#welcome", Static)
        if not has_tabs:
            welcome.update(self.welcome_text())
        welcome.display = not has_tabs
        self.run_tabs.display = has_tabs

    def welcome_text(self) -> str:
        infos, _ = list_runs(self.runs_dir)
        keys = "Press [b]n[/] to start a run, [b]?[/] (or F1) for help, [b]q[/] to quit."
        if not infos:
            return f"No runs yet in {self.runs_dir}.\n{keys}"
        interrupted = sum(1 for info in infos if info.status == "interrupted")
        note = f", {interrupted} interrupted" if interrupted else ""
        return (f"{plural(len(infos), 'run')} in {self.runs_dir}{note}: press [b]h[/] to browse, open, follow, "
                f"resume or compare them.\n{keys}")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.RUN_SCREEN_ACTIONS and len(self.screen_stack) > 1:
            return False
        if action == "compare" and isinstance(self.screen, CompareScreen):
            return False
        if action == "tune" and not parameters:
            return can_change_settings(self.focused_handle())
        return True

    # --- command palette ----------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for command in super().get_system_commands(screen):
            if command.title != "Quit":  # Textual's quits at once; ours asks first when runs train
                yield command
        yield SystemCommand("New run", "Pick a recipe or compose its parts, then launch (n)", self.action_new_run)
        yield SystemCommand("Pause or resume run", "Pause the focused run, or resume it (p)", self.action_toggle_pause)
        yield SystemCommand("Stop run", "Stop the focused run after writing a checkpoint (s)", self.action_stop_run)
        yield SystemCommand("Checkpoint now", "Write the focused run's checkpoint now (c)", self.action_checkpoint)
        yield SystemCommand("Change settings", "Learning rate, schedule, dropout, augmentation, length of the "
                            "focused training run (t)", self.action_tune)
        yield SystemCommand("Branch from a checkpoint", "Start a new run from one of the focused run's checkpoints, "
                            "with changes (b)", self.action_branch)
        yield SystemCommand("Resume stopped run", "Continue the focused stopped or interrupted run (r)",
                            self.action_resume_run)
        yield SystemCommand("Next tab", "Show the next run's tab (])", self.action_next_tab)
        yield SystemCommand("Previous tab", "Show the previous run's tab ([)", self.action_previous_tab)
        yield SystemCommand("History", "Browse, open, follow, resume and compare runs (h)", self.action_history)
        yield SystemCommand("Compare runs", "One metric across runs, ranked (v)", self.action_compare)
        yield SystemCommand("Sweeps", "Start a sweep, follow its queue and ranking, open its runs (S)",
                            self.action_sweeps)
        yield SystemCommand("Inspect run", "Confusion matrix, accuracy per class, mistakes, model (i)",
                            self.action_inspect)
        yield SystemCommand("Full-screen charts", "The focused run's charts with a cursor and values (z)",
                            self.action_chart_view)
        yield SystemCommand("Smoothing", "Step the moving average of the training curves (e)", self.action_smoothing)
        yield SystemCommand("Log scale", "Loss and learning rate on a log scale, or back (l)", self.action_log_scale)
        yield SystemCommand("X axis", "Steps, epochs or wall time along the charts (x)", self.action_x_axis)
        yield SystemCommand("System graphs", "GPU and process figures over time, or one line (m)",
                            self.action_system_graphs)
        yield SystemCommand("Close tab", "Close the focused tab of a run that is not training (w)",
                            self.action_close_tab)
        yield SystemCommand("Help", "Keys and what they do (? or F1)", self.action_help)
        yield SystemCommand("Quit", "Leave the app; asks first when runs train, and each writes a checkpoint (q)",
                            self.action_quit)

    # --- runs ---------------------------------------------------------------------------------

    def _new_id(self) -> str:
        self._counter += 1
        return f"run-{self._counter}"

    def _add_panel(self, handle: RunHandle) -> RunPanel:
        panel = RunPanel(handle.run_id, handle.run_dir.name, id=f"panel-{handle.run_id}")
        self._panels[handle.run_id] = panel  # events may come before the tab is mounted
        tabs = self.run_tabs
        tabs.add_pane(TabPane(self._tab_label(handle), panel, id=handle.run_id))
        tabs.active = handle.run_id
        self.call_after_refresh(self._show_tab_of, handle.run_id)  # once mounted: the newest run in front
        self.sub_title = handle.run_dir.name
        self._update_welcome()
        return panel

    def _show_tab_of(self, run_id: str) -> None:
        if run_id in self.handles:
            self.run_tabs.active = run_id

    def _tab_label(self, handle: RunHandle) -> str:
        position = list(self.handles).index(handle.run_id) + 1 if handle.run_id in self.handles else 0
        number = f"{position} " if 0 < position < 10 else ""
        return f"{number}{STATUS_MARK.get(handle.status, '')} {handle.name}"

    def _relabel_tabs(self) -> None:
        for handle in self.handles.values():
            try:
                self.run_tabs.get_tab(handle.run_id).label = self._tab_label(handle)
            except Exception:  # not mounted yet
                pass

    def _tab_showing(self, run_dir: Path) -> RunHandle | None:
        for handle in self.handles.values():
            if handle.run_dir == run_dir:
                return handle
        return None

    def launch(self, config: RunConfig, *, run_dir: Path | None = None, resume: bool = False,
               detach: bool | None = None, branch: Any = None) -> RunHandle | None:
        """Start training `config` in a background thread: in a new tab, or a resumed run in its own.

        With `detach` (the app's default when None) the run trains in a process of its own
        instead, which quitting the app or losing the terminal leaves training. A branch
        trains in the app's process: `cifartui branch` starts one in a process of its own.
        """
        busy = [h.config.train.device for h in self.handles.values() if h.active and h.config is not None]
        config = spread_across_gpus(config, busy, gpu_count())
        if branch is None and (self.detach_default if detach is None else detach):
            return self._launch_detached(config, run_dir=run_dir, resume=resume)
        try:
            run_dir = run_dir or new_run_dir(self.runs_dir, config.name)
        except RunDirError as error:  # a runs folder that cannot be written: say so, keep the app
            self.notify(str(error), title="The run cannot start", severity="error", timeout=15)
            return None
        handle = self._tab_showing(run_dir) if resume else None
        if handle is not None and not handle.active:
            # The run's tab goes on: its charts, table and log keep their history.
            self._stop_following(handle.run_id)
            if handle.control is None:
                self._tail(handle.run_id)  # a viewed or followed run: what was written since the last read
            handle.config, handle.control = config, RunControl()
            handle.done = threading.Event()
            panel = self.panel(handle.run_id)
            assert panel is not None
            self.run_tabs.active = handle.run_id
        else:
            handle = RunHandle(self._new_id(), run_dir, config, RunControl())
            self.handles[handle.run_id] = handle
            panel = self._add_panel(handle)
            if resume:
                self._replay(handle)  # the run so far, from metrics.jsonl, before the trainer appends
        panel.process_note = ""
        panel.status = "starting"
        panel.watch_process(os.getpid())
        self._set_status(handle, "starting")
        run_id = handle.run_id

        def listener(event: ev.Event) -> None:
            self.post_message(RunEvent(run_id, event))  # thread-safe; returns at once

        trainer = self.trainer_factory(config, run_dir, data_dir=self.data_dir, listeners=[listener],
                                       control=handle.control, resume=resume,
                                       **({"branch": branch} if branch is not None else {}))
        self.run_worker(partial(self._train, handle, trainer), thread=True, group="runs", name=run_id,
                        description=f"training {run_dir.name}", exit_on_error=False)
        return handle

    def _launch_detached(self, config: RunConfig, *, run_dir: Path | None, resume: bool) -> RunHandle | None:
        try:
            run_dir = run_dir or new_run_dir(self.runs_dir, config.name)
            child = background.start(None if resume else config, run_dir, data_dir=self.data_dir, resume=resume)
        except (RunDirError, OSError) as error:
            self.notify(str(error), title="The run cannot start", severity="error", timeout=15)
            return None
        handle = self._tab_showing(run_dir)
        if handle is None:
            handle = self._open_tab(run_dir, follow=True, config=config)
        else:
            self._stop_following(handle.run_id)
            self._tail(handle.run_id)
            handle.control, handle.config = None, config
            self.run_tabs.active = handle.run_id
            self._follow(handle)
        handle.process = child
        panel = self.panel(handle.run_id)
        if panel is not None:
            panel.watch_process(child.pid)
            panel.process_note = f"◉ pid {child.pid}, in the background"
        self.notify(f"{run_dir.name} trains in the background (pid {child.pid}); quitting the app leaves it "
                    "training, and the next cifartui opens it again.", timeout=8)
        return handle

    @staticmethod
    def _train(handle: RunHandle, trainer: Any) -> Any:
        # The training thread keeps the screen's CPU priority. A nicer one (it was +10)
        # starved whenever anything else wanted the CPU: benchmarks/thread_priority.py
        # measured 6-10 images/s against 44-73 at equal priority on a loaded 2-core
        # machine, and the screen answered no sooner, since a starved thread that holds
        # the interpreter lock makes the screen wait for it. On a GPU this thread launches
        # the kernels; the switch interval (SWITCH_INTERVAL_S) is what gives the screen
        # its turn.
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

    def panel(self, run_id: str) -> RunPanel | None:
        # Looked up for every event a run sends. Panels are remembered from their creation:
        # a DOM query cost about a millisecond of the screen thread, and an app's queries
        # see only the screen on top, so a run's events would be lost under History.
        panel = self._panels.get(run_id)
        if panel is not None and (panel.is_attached or not panel.is_mounted):
            return panel
        self._panels.pop(run_id, None)
        return None

    def on_run_event(self, message: RunEvent) -> None:
        handle = self.handles.get(message.run_id)
        panel = self.panel(message.run_id)
        if handle is None or panel is None:
            return
        event = message.event
        panel.apply(event)
        name = handle.run_dir.name
        if isinstance(event, (ev.LossNotFinite, ev.MemoryExhausted)):
            self.bell()
            self.notify(event.message, title=f"{name}: paused", severity="error", timeout=15)
        elif isinstance(event, ev.CheckpointFailed):
            self.notify(event.error, title=f"{name}: checkpoint failed", severity="error", timeout=15)
        elif isinstance(event, ev.RunFailed):
            self.notify(f"{event.error_type}: {event.error}", title=f"{name} failed", severity="error", timeout=15)
        elif isinstance(event, ev.RunFinished):
            self.notify(f"test top-1 {event.test_top1:.2f}%", title=f"{name} finished")
        self._set_status(handle, panel.status)

    def _set_status(self, handle: RunHandle, status: str) -> None:
        if handle.status == status:
            return
        handle.status = status
        try:
            tab = self.run_tabs.get_tab(handle.run_id)
        except Exception:  # the tab was closed, or is not mounted yet
            return
        tab.label = self._tab_label(handle)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group != "runs" or event.state != WorkerState.ERROR:
            return
        handle = self.handles.get(worker.name)
        panel = self.panel(worker.name)
        if handle is None or panel is None:
            return
        error = worker.error
        panel.fail(type(error).__name__, str(error))
        self._set_status(handle, "failed")

    def focused_handle(self) -> RunHandle | None:
        active = self.run_tabs.active
        return self.handles.get(active) if active else None

    def focused_panel(self) -> RunPanel | None:
        handle = self.focused_handle()
        return self.panel(handle.run_id) if handle else None

    # --- actions ------------------------------------------------------------------------------

    def action_new_run(self) -> None:
        picker = PickerScreen(runs_dir=self.runs_dir, detach=self.detach_default)

        def launch(config: RunConfig | None) -> None:
            if config is not None:
                self.launch(config, detach=picker.detach)
        self.push_screen(picker, launch)

    def _no_active_run(self, handle: RunHandle | None) -> bool:
        if handle is not None and handle.active:
            return False
        if handle is not None and handle.status == "following":
            self.notify("This run trains in another process; stop it there (Ctrl-C).", severity="warning")
        elif handle is not None and handle.status in RESUMABLE:
            self.notify(f"{handle.run_dir.name} is {handle.status}; r resumes it.", severity="warning")
        else:
            self.notify("No active run in this tab.", severity="warning")
        return True

    def action_toggle_pause(self) -> None:
        handle = self.focused_handle()
        if self._remote_live(handle):
            panel = self.panel(handle.run_id)
            self._remote(handle, "resume" if panel is not None and panel.status == "paused" else "pause")
            return
        if self._no_active_run(handle):
            return
        if handle.control.paused:
            handle.control.resume()
        else:
            handle.control.pause()

    def action_stop_run(self) -> None:
        handle = self.focused_handle()
        remote = self._remote_live(handle)
        if not remote and self._no_active_run(handle):
            return

        def answer(yes: bool | None) -> None:
            if yes and remote:
                self._remote(handle, "stop")
            elif yes:
                handle.control.stop("stopped from the app")
        self.push_screen(ConfirmScreen(f"Stop {handle.run_dir.name}?\nIt writes a checkpoint first; "
                                       f"r in its tab (or `cifartui resume`) continues it later.", yes="Stop"), answer)

    def action_checkpoint(self) -> None:
        handle = self.focused_handle()
        if self._remote_live(handle):
            self._remote(handle, "checkpoint")
            return
        if self._no_active_run(handle):
            return
        handle.control.checkpoint_now()
        self.notify(f"Checkpoint of {handle.run_dir.name} requested.")

    def action_tune(self, explain: bool = False) -> None:
        """The settings form of the focused run; with `explain`, the key pressed where it cannot act says why."""
        open_for_run(self, self.focused_handle())

    def action_branch(self) -> None:
        handle = self.focused_handle()
        if handle is None:
            self.notify("Open a run first (n, or h for history).", severity="warning")
            return
        start_branch(self, handle.run_dir)

    def action_resume_run(self) -> None:
        handle = self.focused_handle()
        if handle is None:
            self.notify("Open a run first (h for history).", severity="warning")
        elif handle.active:
            self.notify(f"{handle.run_dir.name} is training already.", severity="warning")
        else:
            self.resume_run(handle.run_dir)

    def action_close_tab(self) -> None:
        handle = self.focused_handle()
        if handle is None:
            return
        if handle.active:
            self.notify("Stop the run first (s); its tab stays while it trains.", severity="warning")
            return
        self._stop_following(handle.run_id)
        self.run_tabs.remove_pane(handle.run_id)
        del self.handles[handle.run_id]
        self._panels.pop(handle.run_id, None)
        self.call_after_refresh(self._relabel_tabs)
        self.call_after_refresh(self._update_welcome)

    def action_show_tab(self, position: int) -> None:
        ids = list(self.handles)
        if 0 < position <= len(ids):
            self.run_tabs.active = ids[position - 1]

    def _step_tab(self, offset: int) -> None:
        ids = list(self.handles)
        if not ids:
            return
        current = self.run_tabs.active
        index = ids.index(current) if current in ids else 0
        self.run_tabs.active = ids[(index + offset) % len(ids)]

    def action_next_tab(self) -> None:
        self._step_tab(1)

    def action_previous_tab(self) -> None:
        self._step_tab(-1)

    def action_history(self) -> None:
        self.push_screen(HistoryScreen(self.runs_dir))

    def compared_runs(self) -> list[Path]:
        paths = list(self.comparison)
        for handle in self.handles.values():
            if handle.run_dir not in paths and (handle.run_dir / "config.json").exists():
                paths.append(handle.run_dir)
        return paths

    def action_compare(self) -> None:
        self.push_screen(CompareScreen(self.compared_runs()))

    def action_sweeps(self) -> None:
        self.push_screen(SweepsScreen(self.runs_dir, self.data_dir))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_inspect(self) -> None:
        handle = self.focused_handle()
        if handle is None:
            self.notify("Open a run first (n, or h for history).", severity="warning")
            return
        self.inspect_run(handle.run_dir)

    def action_chart_view(self) -> None:
        panel = self.focused_panel()
        if panel is None:
            self.notify("Open a run first (n, or h for history).", severity="warning")
            return
        self.push_screen(ChartScreen(panel))

    def _chart_setting(self, change: Callable[[RunPanel], str]) -> None:
        panel = self.focused_panel()
        if panel is None:
            return
        note = change(panel)
        panel.apply_chart_settings()
        panel.redraw_status()
        for chart in panel.query(MetricChart):
            chart.redraw()
        self.notify(note, timeout=2)

    def action_smoothing(self) -> None:
        def change(panel: RunPanel) -> str:
            steps = SMOOTHING_STEPS
            panel.smoothing = steps[(steps.index(panel.smoothing) + 1) % len(steps)] if panel.smoothing in steps else 0.0
            return f"smoothing {panel.smoothing:g}" if panel.smoothing else "smoothing off"
        self._chart_setting(change)

    def action_log_scale(self) -> None:
        def change(panel: RunPanel) -> str:
            panel.log_scale = not panel.log_scale
            return "loss and learning rate on a log scale" if panel.log_scale else "linear scale"
        self._chart_setting(change)

    def action_x_axis(self) -> None:
        def change(panel: RunPanel) -> str:
            panel.x_axis = X_AXES[(X_AXES.index(panel.x_axis) + 1) % len(X_AXES)]
            return f"x axis: {panel.x_axis}"
        self._chart_setting(change)

    def action_system_graphs(self) -> None:
        panel = self.focused_panel()
        if panel is not None:
            panel.query_one("#device", SystemPanel).toggle()

    def inspect_run(self, path: Path) -> None:
        """The Inspect view of a run (live or finished), from its best checkpoint."""
        if not (path / "checkpoints" / "best.pt").exists() and not (path / "checkpoints" / "last.pt").exists():
            self.notify(f"{path.name} has no checkpoint yet: one is written at the end of each epoch.",
                        severity="warning")
            return
        self.push_screen(InspectScreen(path, data_dir=self.data_dir))

    def toggle_comparison(self, path: Path) -> None:
        if path in self.comparison:
            self.comparison.remove(path)
            self.notify(f"{path.name} removed from the comparison.")
        else:
            self.comparison.append(path)
            self.notify(f"{path.name} added to the comparison ({plural(len(self.comparison), 'run')}).")

    def open_run_view(self, path: Path, *, follow: bool) -> None:
        """Show a run from its metrics.jsonl; with follow, keep reading what another process appends."""
        handle = self._tab_showing(path)
        if handle is not None:
            self.run_tabs.active = handle.run_id
            self.pop_screen()
            if follow and not handle.active and handle.run_id not in self._follow_timers:
                self._follow(handle)
            return
        try:
            config = read_config(path)
        except RunDirError as error:
            self.notify(str(error), severity="error")
            return
        self.pop_screen()
        self._open_tab(path, follow=follow, config=config)

    def _open_tab(self, path: Path, *, follow: bool, config: RunConfig | None) -> RunHandle:
        """A new tab showing a run from its metrics.jsonl, following it when it trains elsewhere."""
        handle = RunHandle(self._new_id(), path, config, None, status="following" if follow else "viewing")
        self.handles[handle.run_id] = handle
        panel = self._add_panel(handle)
        panel.watch_process(None)
        self._tail(handle.run_id)
        if follow:
            self._follow(handle)
        else:
            self._settle_view(handle)
        return handle

    def _attach_background_runs(self) -> None:
        """Runs started in the background by an earlier app that still train: each in a tab, followed."""
        for path in background.live_detached_runs(self.runs_dir):
            if self._tab_showing(path) is None:
                try:
                    config = read_config(path)
                except RunDirError:
                    continue
                self._open_tab(path, follow=True, config=config)

    def _remote_live(self, handle: RunHandle | None) -> bool:
        """A run another process trains (one this app started in the background, or one it follows)."""
        return handle is not None and handle.control is None and handle.run_id in self._follow_timers

    @work(thread=True, group="control", exit_on_error=False)
    def _remote(self, handle: RunHandle, command: str) -> None:
        """Ask the process that trains a followed run, through its control channel (off the screen's thread)."""
        from cifartui.engine.channel import ControlError, send

        try:
            answer = send(handle.run_dir, command)
        except ControlError as error:
            self.call_from_thread(self.notify, str(error), title=handle.run_dir.name, severity="error", timeout=10)
            return
        self.call_from_thread(self.notify, background.describe_answer(command, answer), title=handle.run_dir.name)

    def _follow(self, handle: RunHandle) -> None:
        panel = self.panel(handle.run_id)
        if panel is not None:
            self._follow_timers[handle.run_id] = self.set_interval(FOLLOW_EVERY_S, partial(self._tail, handle.run_id))
            self._check_followed(handle)

    def _stop_following(self, run_id: str) -> None:
        timer = self._follow_timers.pop(run_id, None)
        if timer is not None:
            timer.stop()

    def _replay(self, handle: RunHandle) -> None:
        """Everything metrics.jsonl holds now, into the run's panel."""
        handle.tail_offset = 0
        self._tail(handle.run_id)

    def _tail(self, run_id: str) -> None:
        """Apply the whole lines appended to the run's metrics.jsonl since the last read."""
        handle = self.handles.get(run_id)
        panel = self.panel(run_id)
        if handle is None or panel is None:
            return
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
        if run_id in self._follow_timers:
            self._check_followed(handle)

    def _check_followed(self, handle: RunHandle) -> None:
        """Say what the process that trains a followed run is doing, or that it is gone."""
        panel = self.panel(handle.run_id)
        if panel is None:
            return
        status = read_status(handle.run_dir)
        state = str(status.get("status", "unknown"))
        pid = status.get("pid") if isinstance(status.get("pid"), int) else None
        here = status.get("host") == socket.gethostname()
        if handle.process is not None and handle.process.poll() is not None and state in ("unknown", "starting"):
            # The background process ended before its run began (a bad setting, missing data).
            self._stop_following(handle.run_id)
            panel.fail("RunFailed", background.last_output(handle.run_dir) or
                       f"the process exited with code {handle.process.returncode}")
            self._set_status(handle, "failed")
            return
        if state in ("unknown", "starting"):
            # No status.json yet, or "starting" (its process holds the lock and is still loading its
            # data or building its model): the run is on its way. Keep reading.
            panel.process_note = "◉ waiting for the run's status" if state == "unknown" else f"◉ pid {pid}, starting"
            self._set_status(handle, "following")
            return
        if state in ("running", "paused"):
            panel.watch_process(pid if here else None)
            panel.process_note = f"◉ pid {pid}" if here else f"◉ pid {pid} on {status.get('host')}"
            panel.status = "following" if state == "running" else "paused"
            self._set_status(handle, "following")
            return
        self._stop_following(handle.run_id)
        panel.watch_process(None)
        panel.process_note = ""
        if state == "interrupted":
            step = status.get("step")
            at = f" (its last report: step {step:,})" if isinstance(step, int) else ""
            updated = status.get("updated")
            panel.interrupted(f"The process that trained this run (pid {pid}) is gone{at}. Press r to resume it "
                              "from its last checkpoint.", updated if isinstance(updated, (int, float)) else None)
            self._set_status(handle, "interrupted")
        else:
            self._settle_view(handle, state)

    def _settle_view(self, handle: RunHandle, state: str | None = None) -> None:
        """A run nobody trains: its tab shows how it ended (or viewing, when the file says nothing)."""
        panel = self.panel(handle.run_id)
        if panel is None:
            return
        state = state or str(read_status(handle.run_dir).get("status", "unknown"))
        if state == "interrupted":
            self._check_followed(handle)
            return
        if panel.status in ("starting", "running", "following") or state not in ("finished", "stopped", "failed"):
            panel.status = state if state in ("finished", "stopped", "failed") else "viewing"
        self._set_status(handle, panel.status)

    def resume_run(self, path: Path) -> None:
        if any(h.run_dir == path and h.active for h in self.handles.values()):
            self.notify(f"{path.name} is already training here.", severity="warning")
            return
        from cifartui.engine.checkpoint import CheckpointError
        from cifartui.engine.trainer import ResumeRefused, check_resumable

        try:
            config = check_resumable(path)
        except ResumeRefused as refusal:
            self.notify(str(refusal), severity="warning", timeout=10)
            return
        except (RunDirError, CheckpointError) as error:
            self.notify(str(error), severity="error", timeout=10)
            return
        if isinstance(self.screen, HistoryScreen):
            self.pop_screen()
        self.launch(config, run_dir=path, resume=True)

    def interrupted_runs(self) -> list[Path]:
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

    def _offer_resume(self) -> None:
        runs = [p for p in self.interrupted_runs() if not any(h.run_dir == p for h in self.handles.values())]
        if not runs:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                for path in runs:
                    self.resume_run(path)
        self.push_screen(ResumeOfferScreen([p.name for p in runs]), answer)

    # --- leaving ------------------------------------------------------------------------------

    def active_handles(self) -> list[RunHandle]:
        return [h for h in self.handles.values() if h.active]

    async def action_quit(self) -> None:
        active = self.active_handles()
        if not active:
            self.exit(0)
            return
        runs = plural(len(active), "run")

        def answer(yes: bool | None) -> None:
            if yes:
                self.notify(f"Stopping {runs}: writing checkpoints…", timeout=SHUTDOWN_WAIT_S)
                self._stop_all_then_exit("app quit")
        verb = "is" if len(active) == 1 else "are"
        self.push_screen(ConfirmScreen(f"{runs} {verb} training. Stop (each writes a checkpoint) and quit?",
                                       yes="Stop and quit"), answer)

    @work(thread=True, group="shutdown", exit_on_error=False)
    def _stop_all_then_exit(self, reason: str) -> None:
        self._stop_and_wait(reason)
        self.call_from_thread(self.exit, 0)

    def _stop_and_wait(self, reason: str) -> None:
        active = self.active_handles()
        for handle in active:
            handle.control.stop(reason)
        deadline = time.monotonic() + SHUTDOWN_WAIT_S
        for handle in active:
            handle.done.wait(max(0.0, deadline - time.monotonic()))

    def on_unmount(self) -> None:
        """However the app ends, no paused or running training thread is left waiting."""
        for handle in self.active_handles():
            handle.control.stop("app closed")
        if self._gc_threshold is not None:
            gc.set_threshold(*self._gc_threshold)  # Python's own full collections again

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for name in ("SIGHUP", "SIGTERM"):
            number = getattr(signal, name, None)
            if number is not None:
                loop.add_signal_handler(number, self.handle_terminate_signal, name)

    def handle_terminate_signal(self, name: str) -> None:
        """The terminal went away (SIGHUP) or we were asked to end (SIGTERM): checkpoint all, leave.

        Runs on the event loop. It blocks it on purpose while the runs write their
        checkpoints: nothing is left to draw, and the training threads never wait for
        the screen. A watchdog ends the process if the terminal cannot be restored.
        """
        if self._shutting_down:
            return
        self._shutting_down = True
        self._stop_and_wait(f"interrupted by {name}")
        code = SIGNAL_EXIT_CODES.get(name, 1)  # 143 for SIGTERM, 129 for SIGHUP, as headless
        threading.Thread(target=_exit_soon, args=(5.0, code), daemon=True, name="cifartui-exit-watchdog").start()
        self.exit(code, return_code=code)


SIGNAL_EXIT_CODES = {"SIGTERM": 143, "SIGHUP": 129}


def _exit_soon(seconds: float, code: int) -> None:
    time.sleep(seconds)
    os._exit(code)


SWITCH_INTERVAL_S = 0.001
# Full garbage collections hold every thread for 40-200 ms with four runs on screen (the
# screen's render caches are many small objects), so Python's automatic ones are
# switched off while the app runs and the app runs one itself: once a minute when no key
# or click came in the last IDLE_BEFORE_COLLECTION_S, and at the latest every five
# minutes. Young objects are still collected automatically, as often as before.
FULL_COLLECTION_CHECK_S = 5.0
FULL_COLLECTION_EVERY_S = 60.0
FULL_COLLECTION_AT_LATEST_S = 300.0
IDLE_BEFORE_COLLECTION_S = 2.0
AUTOMATIC_FULL_COLLECTIONS_OFF = 2**30
def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def spread_across_gpus(config: RunConfig, busy_devices: list[str], gpus: int) -> RunConfig:
    """A run left on `auto` goes to the GPU with the fewest active runs when there are several."""
    if config.train.device != "auto" or gpus < 2:
        return config
    from cifartui.engine.devices import least_busy_gpu  # the engine decides devices, in one place

    return replace_path(config, "train.device", f"cuda:{least_busy_gpu(busy_devices, gpus)}", "device")


def _import_engine() -> None:
    import cifartui.engine.trainer  # noqa: F401

    # Everything imported so far lives as long as the process. Moved out of the cyclic
    # collector's reach, it no longer lengthens each full collection (100-200 ms more,
    # measured with four runs in the app), during which no key would be answered.
    gc.freeze()


def make_app(*, runs_dir: Path | None = None, data_dir: Path | None = None,
             trainer_factory: TrainerFactory | None = None, initial: Iterable[RunConfig] = (),
             offer_resume: bool = True, image_mode: str = "halfblock", detach: bool = False) -> CifarTuiApp:
    """The app, with the engine swappable for tests."""
    return CifarTuiApp(runs_dir=runs_dir, data_dir=data_dir, trainer_factory=trainer_factory, initial=initial,
                       offer_resume=offer_resume, image_mode=image_mode, detach=detach)


__all__ = ["CifarTuiApp", "make_app", "event_from_json"]
