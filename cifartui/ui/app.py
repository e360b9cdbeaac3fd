"""The Textual app: runs in tabs, each training in its own background thread.

The app talks to the engine only through events (posted as `RunEvent` messages from
the training thread, which never waits for the screen) and each run's `RunControl`, all
from `cifartui.engine.api`. The runs themselves, and all that happens to them (launch,
placement on GPUs, follow, attach, resume, stop), are `self.registry`'s
(`cifartui.ui.registry`); the App keeps the screen: tabs, panels, keys, dialogs.
`make_app` builds it with a trainer factory, so tests can drive the real app with tiny
runs or a scripted engine.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from textual import events, work
from textual.app import App, ComposeResult, SystemCommand
from textual.screen import Screen
from textual.widgets import Header, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from cifartui.config import RunConfig
from cifartui.engine import api
from cifartui.engine.api import list_runs
from cifartui.ui import keys
from cifartui.ui.messages import RunEvent
from cifartui.ui.registry import (RESUMABLE, SHUTDOWN_WAIT_S, RunHandle, RunRegistry, TrainerFactory, event_from_json,
                                  spread_across_gpus)
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

STATUS_MARK = {"running": "▶", "paused": "⏸", "finished": "✓", "stopped": "■", "failed": "✗",
               "following": "◉", "viewing": "·", "starting": "…", "interrupted": "↯"}


class CifarTuiApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "cifartui"
    BINDINGS = keys.BINDINGS  # the app's keys, and the palette's commands, are in cifartui.ui.keys
    RUN_SCREEN_ACTIONS = keys.RUN_SCREEN_ACTIONS

    def __init__(self, *, runs_dir: Path | None = None, data_dir: Path | None = None,
                 trainer_factory: TrainerFactory | None = None, initial: Iterable[RunConfig] = (),
                 offer_resume: bool = True, image_mode: str = "halfblock", detach: bool = False) -> None:
        super().__init__()
        self.image_mode = image_mode  # "sixel", "kitty" or "halfblock": see cifartui.ui.graphics
        # The runs in the tabs and their lifecycle. New runs train in a process of their own
        # with `detach` (the default over SSH), outliving the app.
        self.registry = RunRegistry(self, runs_dir=Path(runs_dir) if runs_dir else api.default_runs_dir(),
                                    data_dir=data_dir, trainer_factory=trainer_factory, detach=detach)
        self.initial = list(initial)
        self.offer_resume = offer_resume
        self._panels: dict[str, RunPanel] = {}
        self._gc_threshold: tuple[int, int, int] | None = None  # Python's, while the app runs its own
        self.comparison: list[Path] = []
        self._shutting_down = False

    @property
    def handles(self) -> dict[str, RunHandle]:
        """The runs in the tabs, by tab id, in tab order (the registry's)."""
        return self.registry.handles

    @property
    def runs_dir(self) -> Path:
        return self.registry.runs_dir

    @property
    def data_dir(self) -> Path | None:
        return self.registry.data_dir

    @data_dir.setter
    def data_dir(self, value: Path | None) -> None:  # the picker's data folder, for the runs launched after
        self.registry.data_dir = value

    @property
    def detach_default(self) -> bool:
        return self.registry.detach_default

    def launch(self, config: RunConfig, **options: Any) -> RunHandle | None:
        """Start training `config` (see `RunRegistry.launch`)."""
        return self.registry.launch(config, **options)

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
            self.registry.launch(config)
        self.registry.attach_background_runs()
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
        yield from keys.app_commands(self)

    # --- runs ---------------------------------------------------------------------------------

    def add_run_tab(self, handle: RunHandle) -> RunPanel:
        """A new tab, in front, with the panel that shows `handle`'s run."""
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

    def show_run(self, run_id: str) -> None:
        """Bring the run's tab to the front."""
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
        if isinstance(event, (api.LossNotFinite, api.MemoryExhausted)):
            self.bell()
            self.notify(event.message, title=f"{name}: paused", severity="error", timeout=15)
        elif isinstance(event, api.CheckpointFailed):
            self.notify(event.error, title=f"{name}: checkpoint failed", severity="error", timeout=15)
        elif isinstance(event, api.RunFailed):
            self.notify(f"{event.error_type}: {event.error}", title=f"{name} failed", severity="error", timeout=15)
        elif isinstance(event, api.RunFinished):
            self.notify(f"test top-1 {event.test_top1:.2f}%", title=f"{name} finished")
        self.registry.set_status(handle, panel.status)

    def relabel_tab(self, handle: RunHandle) -> None:
        """The tab says the run's state again (the registry calls it when the state changes)."""
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
        self.registry.set_status(handle, "failed")

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
                self.registry.launch(config, detach=picker.detach)
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
        if self.registry.remote_live(handle):
            panel = self.panel(handle.run_id)
            self.registry.remote(handle, "resume" if panel is not None and panel.status == "paused" else "pause")
            return
        if self._no_active_run(handle):
            return
        if handle.control.paused:
            handle.control.resume()
        else:
            handle.control.pause()

    def action_stop_run(self) -> None:
        handle = self.focused_handle()
        remote = self.registry.remote_live(handle)
        if not remote and self._no_active_run(handle):
            return

        def answer(yes: bool | None) -> None:
            if yes and remote:
                self.registry.remote(handle, "stop")
            elif yes:
                handle.control.stop("stopped from the app")
        self.push_screen(ConfirmScreen(f"Stop {handle.run_dir.name}?\nIt writes a checkpoint first; "
                                       f"r in its tab (or `cifartui resume`) continues it later.", yes="Stop"), answer)

    def action_checkpoint(self) -> None:
        handle = self.focused_handle()
        if self.registry.remote_live(handle):
            self.registry.remote(handle, "checkpoint")
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
            self.registry.resume_run(handle.run_dir)

    def action_close_tab(self) -> None:
        handle = self.focused_handle()
        if handle is None:
            return
        if handle.active:
            self.notify("Stop the run first (s); its tab stays while it trains.", severity="warning")
            return
        self.registry.close(handle)
        self.run_tabs.remove_pane(handle.run_id)
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

    def _offer_resume(self) -> None:
        runs = [p for p in self.registry.interrupted_runs() if self.registry.showing(p) is None]
        if not runs:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                for path in runs:
                    self.registry.resume_run(path)
        self.push_screen(ResumeOfferScreen([p.name for p in runs]), answer)

    # --- leaving ------------------------------------------------------------------------------

    async def action_quit(self) -> None:
        active = self.registry.active_handles()
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
        self.registry.stop_and_wait(reason)
        self.call_from_thread(self.exit, 0)

    def on_unmount(self) -> None:
        """However the app ends, no paused or running training thread is left waiting."""
        self.registry.stop_all("app closed")
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
        self.registry.stop_and_wait(f"interrupted by {name}")
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


def _import_engine() -> None:
    api.load_training()

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


__all__ = ["CifarTuiApp", "make_app", "event_from_json", "spread_across_gpus", "STATUS_MARK"]
