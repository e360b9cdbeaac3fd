"""Everything that trains. Runs without the UI: nothing here imports textual.

Three layers, each importing only the ones below it and `cifartui.config`:

- `runs/`: a run on disk and live (folders, checkpoints, events, live settings, control channel);
- `train/`: training one run (data, models, optimizers, schedules, the step, the loop);
- `orchestration/`: many runs (the queue of run processes, sweeps, reproductions).

The app and the command line reach the engine through `cifartui.engine.api`.
"""
