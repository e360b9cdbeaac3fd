"""Does cifartui work on this machine's GPU? Trains for real and prints a pass/fail table.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--json FILE]

On a CUDA machine (the default when one is visible) it checks, each on a short run of
the synthetic dataset:

- training with `--device auto`, `cuda` and `cuda:0` (the run's device, and whether its
  steps ran as CUDA graphs);
- Ctrl-C mid-run, then `cifartui resume` to the end;
- a NaN injected into one batch: the update skipped, the weights finite, the run paused;
- the learning rate and a dropout rate changed mid-run: applied at once, with the
  recorded graphs replayed, captured again only where a dropout layer turned on or off;
- `torchrun --nproc_per_node 1` (NCCL on a GPU, gloo on the CPU).

With `--device cpu` the same checks run on the CPU (eager steps, gloo), which is how
this script itself is kept working on machines without a GPU. Exit code 0 when every
check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
SMALL = ("--set", "dataset.train_size=4000", "--set", "dataset.test_size=500", "--set", "train.log_every=1",
         "--set", "train.checkpoint_minutes=0")


def _cli(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cifartui", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=cwd)


def _only(folder: Path) -> Path:
    (run,) = [p for p in folder.iterdir() if p.is_dir()]
    return run


def _events(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def check_device_names(device: str, folder: Path) -> str:
    names = ("auto", "cuda", "cuda:0") if device == "cuda" else ("auto", "cpu")
    notes = []
    for name in names:
        runs = folder / f"names-{name.replace(':', '-')}"
        job = _cli("train", "demo-synthetic", "--epochs", "1", "--device", name, "--runs-dir", str(runs),
                   "--summary-json", str(runs / "summary.json"), *SMALL)
        output, _ = job.communicate(timeout=600)
        if job.returncode != 0:
            raise AssertionError(f"--device {name}: exit {job.returncode}: {output[-600:]}")
        summary = json.loads((runs / "summary.json").read_text())
        expected = "cuda" if device == "cuda" else "cpu"
        if not summary["device"].startswith(expected):
            raise AssertionError(f"--device {name} trained on {summary['device']}")
        notes.append(f"{name} -> {summary['device']} ({summary.get('graphs') or 'eager'}, "
                     f"{summary['images_per_s']:,.0f} img/s)")
    return "; ".join(notes)


def check_interrupt_and_resume(device: str, folder: Path) -> str:
    runs = folder / "interrupt"
    job = _cli("train", "demo-synthetic", "--epochs", "3", "--device", device, "--runs-dir", str(runs), *SMALL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        metrics = list(runs.glob("*/metrics.jsonl"))
        if metrics and metrics[0].read_text().count('"StepMetrics"') >= 20:
            break
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    output, _ = job.communicate(timeout=120)
    if job.returncode != 130:
        raise AssertionError(f"Ctrl-C gave exit {job.returncode}: {output[-600:]}")
    run = _only(runs)
    stopped_at = json.loads((run / "status.json").read_text())["step"]
    resumed = _cli("resume", str(run))
    output, _ = resumed.communicate(timeout=600)
    if resumed.returncode != 0:
        raise AssertionError(f"resume gave exit {resumed.returncode}: {output[-600:]}")
    finished = next(e for e in _events(run) if e["event"] == "RunFinished")
    return f"stopped at step {stopped_at}, resumed to step {finished['steps']}, test top-1 {finished['test_top1']:.1f}%"


def _trainer(device: str, folder: Path, name: str, epochs: int = 2):  # noqa: ANN202
    from cifartui import presets
    from cifartui.engine.train.trainer import RunControl, Trainer

    config = presets.compose(presets.load("demo-synthetic"), epochs=epochs, device=device,
                             sets=["dataset.train_size=4000", "dataset.test_size=500", "train.log_every=1",
                                   "train.checkpoint_minutes=0"])
    events: list[Any] = []
    control = RunControl()
    return Trainer(config, folder / name, listeners=[events.append], control=control), events, control


def check_nan(device: str, folder: Path) -> str:
    import torch

    from cifartui.engine.runs import events as ev

    trainer, events, control = _trainer(device, folder, "nan")
    poison_at = 30
    original_setup = trainer._setup

    def setup() -> None:  # poison the data of one batch: a graph replays whatever the buffers hold
        original_setup()
        run_step = trainer.run_step

        def poisoned(images: Any, labels: Any) -> None:
            if trainer.progress.step == poison_at:
                images = images * float("nan")
            run_step(images, labels)
        trainer.run_step = poisoned
    trainer._setup = setup
    thread = trainer.start()
    deadline = time.monotonic() + 300
    while not any(isinstance(e, ev.RunPaused) for e in events):
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("the run did not pause after the NaN")
        time.sleep(0.05)
    bad = next(e for e in events if isinstance(e, ev.LossNotFinite))
    paused = next(e for e in events if isinstance(e, ev.RunPaused))
    finite = all(torch.isfinite(p).all() for p in trainer.model.parameters())
    control.stop("check over")
    thread.join(120)
    if bad.step != poison_at or not finite:
        raise AssertionError(f"NaN at step {bad.step} (injected at {poison_at}), weights finite: {finite}")
    return (f"loss {bad.loss} at step {bad.step} skipped, paused at step {paused.step} "
            f"({paused.step - bad.step} steps later), weights finite")


def check_live_changes(device: str, folder: Path) -> str:
    from cifartui.engine.runs import events as ev
    from cifartui.engine.train.step import GraphedSteps

    trainer, events, control = _trainer(device, folder, "changes", epochs=3)
    answer: dict[str, Any] = {}

    def listener(event: Any) -> None:
        if isinstance(event, ev.StepMetrics) and event.step >= 40 and "future" not in answer:
            graphs = trainer.run_step.captures if isinstance(trainer.run_step, GraphedSteps) else None
            answer["captures_before"] = graphs
            group = next(iter(trainer.dropout_schedule.group_rates()))
            answer["future"] = control.submit("set", {"updates": {"optimizer.lr": 0.0007, f"dropout.{group}": 0.55},
                                                      "source": "check"})
    trainer.bus.listeners.append(listener)
    result = trainer.run()
    reply = answer["future"].result(timeout=5)
    if not reply["ok"] or result.status != "finished":
        raise AssertionError(f"change refused or run {result.status}: {reply}")
    changed_at = reply["step"]
    after = [e.lr for e in events if isinstance(e, ev.StepMetrics) and e.step > changed_at]
    if not after or any(abs(lr - 0.0007) > 1e-12 for lr in after):
        raise AssertionError(f"LR after the change: {sorted(set(after))[:4]}")
    note = f"applied at step {changed_at}; LR 0.0007 in every later step"
    if isinstance(trainer.run_step, GraphedSteps):
        runner = trainer.run_step
        if runner.failed:
            raise AssertionError(f"graphs gave up: {runner.failed}")
        # One capture per shape (full batches, the last partial one), none for a new rate; again
        # only when a dropout layer turned on or off (a layer at rate 0 draws no mask).
        if runner.captures > len(runner.graphs) * (1 + runner.layout_changes):
            raise AssertionError(f"{runner.captures} captures for {len(runner.graphs)} shapes and "
                                 f"{runner.layout_changes} dropout layers turned on or off")
        note += (f"; {runner.captures} graph captures in all ({answer['captures_before']} before the change, "
                 f"{runner.layout_changes} dropout layers turned on or off)")
    return note


def check_torchrun(device: str, folder: Path) -> str:
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                            "-m", "cifartui", "train", "demo-synthetic", "--epochs", "1", "--device", device,
                            "--runs-dir", "runs", "--summary-json", "summary.json", *SMALL],
                           cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = job.communicate(timeout=600)
    if job.returncode != 0:
        raise AssertionError(f"exit {job.returncode}: {output[-800:]}")
    backend = "nccl" if "(nccl)" in output else "gloo" if "(gloo)" in output else "?"
    summary = json.loads((folder / "summary.json").read_text())
    return f"{backend}, {summary['processes']} process, test top-1 {summary['test_top1']:.1f}%"


CHECKS: list[tuple[str, Callable[[str, Path], str]]] = [
    ("train with auto, cuda and cuda:0", check_device_names),
    ("Ctrl-C, then resume", check_interrupt_and_resume),
    ("NaN injected into a batch", check_nan),
    ("LR and dropout changed mid-run", check_live_changes),
    ("torchrun --nproc_per_node 1", check_torchrun),
]


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("No CUDA GPU is visible; `--device cpu` runs the same checks on the CPU.", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        os.environ["CIFARTUI_DATA"] = str(Path(temporary) / "data")
        for name, check in CHECKS:
            folder = Path(temporary) / name.split()[0].lower().strip(",")
            folder.mkdir(exist_ok=True)
            started = time.monotonic()
            try:
                detail, passed = check(args.device, folder), True
            except Exception as error:  # noqa: BLE001 - every failure is a row of the report
                detail, passed = f"{type(error).__name__}: {error}", False
                traceback.print_exc(file=sys.stderr)
            rows.append({"check": name, "passed": passed, "seconds": time.monotonic() - started, "detail": detail})
            print(f"  {'PASS' if passed else 'FAIL'}  {name}: {detail}", file=sys.stderr, flush=True)
    print(f"Device: {where}, torch {torch.__version__}")
    print()
    print("| check | result | seconds | detail |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['check']} | {'pass' if row['passed'] else 'FAIL'} | {row['seconds']:.0f} | {row['detail']} |")
    if args.json:
        args.json.write_text(json.dumps({"device": where, "rows": rows}, indent=2) + "\n")
    return 0 if all(row["passed"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
