"""Where a headless run's resident memory goes: the peak of each phase of `cifartui train`.

    python benchmarks/memory_phases.py [PRESET] [--steps 20] [--set PART.KEY=VALUE ...]

Runs `cifartui train PRESET --dataset synthetic --device cpu` in this process, as
benchmarks/perf.py's engine run does (one epoch, at most --steps steps), samples VmRSS
from /proc/self/status every 10 ms, and prints the highest value seen in each phase:
setup (data, model, optimizer), training steps, evaluation (validation and test),
checkpoint writes, and the rest (the command line, summaries, between phases).
Linux only.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

SAMPLE_EVERY_S = 0.01


def resident_mib(key: str = "VmRSS") -> float:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


class PhaseSampler:
    """A daemon thread recording the highest resident memory seen under each phase label."""

    def __init__(self) -> None:
        self.phase = "imports"
        self.order: list[str] = []
        self.peaks: dict[str, float] = {}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            phase, value = self.phase, resident_mib()
            if phase not in self.peaks:
                self.order.append(phase)
            self.peaks[phase] = max(self.peaks.get(phase, 0.0), value)
            time.sleep(SAMPLE_EVERY_S)

    def around(self, owner: Any, name: str, label: str) -> None:
        """Label the time spent in owner.name (a method) as `label`."""
        method: Callable[..., Any] = getattr(owner, name)
        sampler = self

        def labelled(*args: Any, **kwargs: Any) -> Any:
            previous, sampler.phase = sampler.phase, label
            try:
                return method(*args, **kwargs)
            finally:
                sampler.phase = previous

        setattr(owner, name, labelled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", nargs="?", default="resnet18-cifar10")
    parser.add_argument("--steps", type=int, default=20, help="training steps (perf.py's CPU run takes 20)")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()

    sampler = PhaseSampler()
    from cifartui.cli import main as cli_main
    from cifartui.engine.train.checkpointing import Checkpointer
    from cifartui.engine.train.trainer import Trainer

    sampler.around(Trainer, "_setup", "setup: data, model, optimizer")
    sampler.around(Trainer, "_take_step", "training steps")
    sampler.around(Trainer, "evaluate", "evaluation")
    sampler.around(Checkpointer, "save", "checkpoint writes")
    sampler.phase = "other (command line, summary)"
    with tempfile.TemporaryDirectory() as runs:
        code = cli_main(["train", args.preset, "--dataset", "synthetic", "--device", "cpu", "--runs-dir", runs,
                         "--epochs", "1", "--set", f"train.max_steps={args.steps}", "--set", "train.log_every=1",
                         *[part for item in args.sets for part in ("--set", item)]])
    time.sleep(2 * SAMPLE_EVERY_S)
    if code:
        raise SystemExit(code)
    print(f"\n{args.preset}, {args.steps} steps on the CPU: peak resident memory by phase")
    print("| phase | peak RSS |")
    print("| --- | --- |")
    for phase in sampler.order:
        print(f"| {phase} | {sampler.peaks[phase]:,.0f} MiB |")
    print(f"| whole process (VmHWM) | {resident_mib('VmHWM'):,.0f} MiB |")


if __name__ == "__main__":
    sys.exit(main())
