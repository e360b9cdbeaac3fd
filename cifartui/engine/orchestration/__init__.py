"""Many runs: the durable queue of `cifartui train` processes, sweeps, searches, PBT, reproductions, Ray.

Each run of a queue is its own process, so this layer launches and watches processes
and reads their run folders through `engine.runs`; it plans with `engine.train`'s rules
(and builds a model only to check it can be built) but never trains in its own process.
Imports `cifartui.config`, `engine.runs` and `engine.train`, never the app or the command line.
"""
