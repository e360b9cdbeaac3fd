"""A durable queue of runs, each trained by its own `cifartui train` process.

A queue is a directory; everything it knows is on disk, written atomically, so the
process that drives it can die at any moment (kill -9, SIGHUP, a reboot) and a later
one carries on where it was:

    QUEUE_DIR/
        queue.json        what to run and where: the runs in order, device, parallel, data dir
        .lock             locked (flock) by the one process that drives the queue
        001/
            config.toml   the run's fully resolved recipe, frozen when the queue was made
            entry.json    the client's label, state, run directory, device, exit code, message
            output.log    the child's output
            summary.json  the child's --summary-json, once it finished
            <UTC time>-<preset>/   the run directory, made by the child
        002/ ...

A run's state is pending, running, waiting (another process trains its run directory),
finished, failed, stopped (by the client, e.g. early stopping; it keeps its checkpoints)
or interrupted (its process ended without finishing: the queue process was stopped or
killed, or someone stopped the child; the next drive resumes it from its checkpoint).

Children start in their own session, so a Ctrl-C at the terminal reaches the queue
process alone, which then stops each child exactly once; on Linux each child is also
told to stop (SIGTERM, so it writes a checkpoint) when the queue process dies, and a run
whose directory is still locked by a live process is waited for, never started twice.
What to run and how to judge results belongs to the clients (sweeps, reproductions).

The code is in four modules, all of whose names are importable from here:
queue_store.py (the directory, its entries and their states), run_progress.py (a run's
progress from its metrics), placement.py (slots on devices) and queue_driver.py (the
child processes).
"""

from __future__ import annotations

from cifartui.engine.orchestration.placement import plan_slots
from cifartui.engine.orchestration.queue_driver import (
                                                        EntryChanged,
                                                        EntryEpochEnded,
                                                        QueueRunner,
                                                        child_command,
)
from cifartui.engine.orchestration.queue_store import (
                                                        ENDED_STATES,
                                                        QUEUE_FORMAT,
                                                        STATES,
                                                        TRASH,
                                                        PlannedRun,
                                                        QueueBusy,
                                                        QueueEntry,
                                                        QueueError,
                                                        RunQueue,
                                                        find_queue_dirs,
                                                        load_summary,
                                                        lock_holder,
                                                        toml_document,
                                                        toml_value,
)
from cifartui.engine.orchestration.run_progress import (
                                                        MetricsTail,
                                                        ProgressTails,
                                                        RunProgress,
                                                        progress_update,
                                                        read_progress,
)

__all__ = ["RunQueue", "QueueRunner", "QueueEntry", "PlannedRun", "RunProgress", "ProgressTails", "QueueError",
           "QueueBusy", "EntryChanged", "EntryEpochEnded", "plan_slots", "child_command", "lock_holder", "STATES",
           "ENDED_STATES", "QUEUE_FORMAT", "TRASH", "find_queue_dirs", "load_summary", "toml_document",
           "toml_value", "MetricsTail", "progress_update", "read_progress"]
