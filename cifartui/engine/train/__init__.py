"""Training one run: data, augmentation, models, optimizers, schedules, the step, the loop.

The pieces are registries of small named functions (models, optimizers, schedules,
augmentations) and the step as one unit that a CUDA graph can capture; the trainer's
loop calls them and reports through `engine.runs` (events, checkpoints, live settings,
control requests). Imports `cifartui.config` and `cifartui.engine.runs`, never the
orchestration above it.
"""
