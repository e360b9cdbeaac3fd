"""A run on disk and live: its folder, lock and status, checkpoints, events, live settings, control channel.

Everything another process needs to read, follow or steer a run lives here, so the app,
the command line and the queue's driver read a run the way the run writes it. The bottom
layer of the engine: imports only `cifartui.config`, never `train` or `orchestration`.
"""
