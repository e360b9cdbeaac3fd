"""`--ray ADDRESS` for the commands that drive a queue (sweep, reproduce): their runs as Ray jobs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cifartui.config import ConfigError


def add_ray_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", metavar="auto|ADDRESS",
                        help="run each run as a job on a Ray cluster, one GPU each (one CPU where it has no GPU): "
                        "auto (the cluster this machine belongs to) or its address, e.g. http://HEAD:8265; the "
                        "runs folder must be at the same path on every node (needs `pip install 'cifartui[ray]'`)")


def ray_launcher(args: argparse.Namespace, device: str) -> Any:
    """The launcher for `--ray`, or None without it; connects (or fails with the address named) before
    anything is written, and makes the runs folder and data folder absolute for the other nodes."""
    if args.ray is None:
        return None
    if args.devices is not None:
        raise ConfigError("--devices", args.devices, "names this machine's GPUs; with --ray, Ray gives each run "
                          "one GPU of the cluster")
    from cifartui.engine.orchestration.ray_backend import RayLauncher, absolute, connect

    launcher = RayLauncher(connect(args.ray), device=device, parallel=args.parallel)
    if args.resume is None:
        from cifartui.engine.runs.folders import default_runs_dir

        args.runs_dir = absolute(args.runs_dir or default_runs_dir())
    for name in ("data_dir", "resume"):
        if getattr(args, name, None) is not None:
            setattr(args, name, absolute(getattr(args, name)))
    return launcher


def resume_on_ray(directory: Path, data_dir: Path | None) -> Any:
    """An interrupted queue, locked by this process, to drive on Ray (a data dir given now serves this drive)."""
    from cifartui.engine.orchestration.queue import RunQueue

    queue = RunQueue.open(directory)
    if data_dir is not None:
        queue.settings["data_dir"] = str(data_dir)
    return queue.lock()


def resumed_queue(args: argparse.Namespace) -> tuple[Any, list[str], Any]:
    """`--resume SWEEP_DIR` of a queue, locked by this process: (queue, slots, launcher), on Ray
    with `--ray` (its device kept unless --device names one), else on this machine's devices."""
    from cifartui.engine.orchestration.queue import RunQueue

    launcher = ray_launcher(args, args.device or (RunQueue.open(args.resume).settings.get("device") if args.ray
                                                 else None) or "auto")
    if launcher is not None:  # Ray places the runs: this machine's devices do not matter
        return resume_on_ray(args.resume, args.data_dir), launcher.slots(), launcher
    queue, slots = RunQueue.resume(args.resume, device=args.device, devices=args.devices, parallel=args.parallel,
                                   data_dir=args.data_dir)
    return queue, slots, None


def new_slots(args: argparse.Namespace, device: str) -> tuple[list[str], Any]:
    """The run slots of a new queue and its launcher (None: this machine); checked, and on Ray
    connected, before anything is written."""
    from cifartui.engine.orchestration.placement import plan_slots

    launcher = ray_launcher(args, device)
    return (launcher.slots() if launcher is not None else plan_slots(device, args.devices, args.parallel)), launcher
