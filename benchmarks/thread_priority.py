"""Which CPU priority should the app give its training threads? Throughput and key latency under load.

    python benchmarks/thread_priority.py [--seconds 15] [--repeat 1] [--load N] [--schemes a,b] [--json FILE]

An in-app run is a training thread beside the screen's thread, in the app's process.
Linux sets nice per thread and a new thread inherits its creator's, so what PyTorch's
own worker threads get depends on which thread made them: in the app, PyTorch is
imported and first used by a thread at nice 0 (the import thread, the picker's model
summary), so its intra-op workers run at nice 0 whatever the training thread gets.

Each measurement is a fresh process that rebuilds that situation: PyTorch imported
and warmed up in a side thread at nice 0, then a real `Trainer` (cnn3 on synthetic
images, batch 64) in a training thread with the scheme's priorities, stopped after a
fixed time; meanwhile the main thread stands for the screen: it sleeps 20 ms, does
half a millisecond of Python (what answering a key costs, roughly), and records how
late it was. `--load N` busy processes at nice 0 stand for other runs and users on
the machine (default: one per core); every scheme runs with and without them, the
schemes alternating so that a drifting machine slows them alike.

Schemes:
  headless     training in the main thread, no screen (what `cifartui train` does)
  equal        nobody's priority changed
  trainer+10   the training thread at nice +10 (the app before this measurement)
  training+10  the training thread and PyTorch's worker threads at +10
  training+4   the same at +4
  workers+10   PyTorch's worker threads at +10, the training thread at 0

Prints a Markdown table: training images/s (median of repeats) and the screen's
lateness (median, 95th percentile, max over all samples) per scheme and load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMES = ("headless", "equal", "trainer+10", "training+10", "training+4", "workers+10")


# --- one measurement (runs in its own process: `thread_priority.py measure SCHEME SECONDS`) -------

def _renice(tid: int, niceness: int) -> None:
    os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness)


def _native_threads_not_python() -> list[int]:
    """Threads of this process that Python did not start: PyTorch's (OpenMP) workers."""
    python = {t.native_id for t in threading.enumerate()}
    return [int(tid) for tid in os.listdir("/proc/self/task") if int(tid) not in python]


def measure(scheme: str, seconds: float) -> dict[str, Any]:
    import dataclasses
    import tempfile

    imported = threading.Event()

    def import_and_warm_up() -> None:  # the app's import thread, at nice 0
        import torch

        from cifartui.engine.train.models import build_model
        from cifartui.config import ModelConfig

        with torch.no_grad():
            build_model(ModelConfig(name="cnn3"), 10)(torch.zeros(64, 3, 32, 32))  # the workers start here
        imported.set()

    threading.Thread(target=import_and_warm_up, name="import", daemon=True).start()
    imported.wait()

    from cifartui import presets
    from cifartui.engine.runs import events as ev
    from cifartui.engine.runs.control import RunControl
    from cifartui.engine.train.trainer import Trainer

    workers = _native_threads_not_python()
    config = presets.compose(presets.load("demo-synthetic"), epochs=1000, device="cpu")
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, checkpoint_minutes=0.0,
                                                                   log_every=1))
    steps: list[tuple[float, int]] = []
    control = RunControl()
    # The clock starts at the first step: loading and warming up take as long as the load makes them.
    timer = threading.Timer(seconds, control.stop, args=("benchmark over",))
    timer.daemon = True

    def listen(event: ev.Event) -> None:
        if isinstance(event, ev.StepMetrics):
            if not steps:
                timer.start()
            steps.append((time.monotonic(), event.step))

    trainer = Trainer(config, Path(tempfile.mkdtemp()) / "run", listeners=[listen], control=control)

    def train() -> None:
        if scheme in ("trainer+10", "training+10"):
            _renice(threading.get_native_id(), 10)
        if scheme == "training+4":
            _renice(threading.get_native_id(), 4)
        if scheme in ("training+10", "workers+10"):
            for tid in workers:
                _renice(tid, 10)
        if scheme == "training+4":
            for tid in workers:
                _renice(tid, 4)
        trainer.run()

    late: list[float] = []
    if scheme == "headless":
        trainer.run()
    else:
        thread = threading.Thread(target=train, name="training")
        thread.start()
        while thread.is_alive():
            started = time.perf_counter()
            time.sleep(0.02)
            woke = time.perf_counter()
            total = 0
            while time.perf_counter() - woke < 0.0005:  # half a millisecond of Python, like a key press
                total += 1
            late.append((time.perf_counter() - started - 0.02 - 0.0005) * 1000.0)
        thread.join()
    # Images/s over the steady part: from the first report after warm-up to the last.
    steady = [s for s in steps if s[0] - steps[0][0] >= 1.0] if steps else []
    rate = 0.0
    if len(steady) >= 2:
        (t0, s0), (t1, s1) = steady[0], steady[-1]
        rate = (s1 - s0) * config.train.batch_size / (t1 - t0)
    niceness = {tid: os.getpriority(os.PRIO_PROCESS, tid) for tid in workers}
    return {"scheme": scheme, "images_per_s": rate, "late_ms": late, "worker_threads": len(workers),
            "worker_nice": sorted(set(niceness.values()))}


# --- the load and the table --------------------------------------------------------------------

BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def run_one(scheme: str, seconds: float, load: int) -> dict[str, Any]:
    busy = [subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=seconds + 60)]) for _ in range(load)]
    try:
        out = subprocess.run([sys.executable, __file__, "measure", scheme, str(seconds)], capture_output=True,
                             text=True, cwd=ROOT, timeout=seconds + 240,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(os.cpu_count())})
    finally:
        for process in busy:
            process.kill()
            process.wait()
    if out.returncode:
        raise SystemExit(f"{scheme}: exit {out.returncode}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "measure":
        print(json.dumps(measure(sys.argv[2], float(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="training time per measurement")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes for the loaded case")
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        raise SystemExit("per-thread priorities are a Linux matter; this measures them on Linux")
    schemes = [s for s in args.schemes.split(",") if s]
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for _ in range(args.repeat):
        for load in (0, args.load):
            for scheme in schemes:
                result = run_one(scheme, args.seconds, load)
                results.setdefault((scheme, load), []).append(result)
                print(f"{scheme:12} load {load}: {result['images_per_s']:7.0f} images/s", file=sys.stderr)
    rows = []
    print("| scheme | busy processes | images/s | screen late ms: median / 95% / max |")
    print("| --- | --- | --- | --- |")
    for (scheme, load), runs in sorted(results.items(), key=lambda item: (item[0][1], schemes.index(item[0][0]))):
        rate = statistics.median(r["images_per_s"] for r in runs)
        late = [v for r in runs for v in r["late_ms"]]
        lateness = (f"{percentile(late, 0.5):.1f} / {percentile(late, 0.95):.1f} / {max(late):.1f}" if late
                    else "(no screen)")
        print(f"| {scheme} | {load} | {rate:,.0f} | {lateness} |")
        rows.append({"scheme": scheme, "load": load, "images_per_s": rate,
                     "late_ms": {"median": percentile(late, 0.5), "p95": percentile(late, 0.95),
                                 "max": max(late) if late else None}})
    print(f"\n{os.cpu_count()} cores, {sys.platform}, Python {sys.version.split()[0]}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
