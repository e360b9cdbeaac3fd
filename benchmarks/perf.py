"""Speed of the engine against a plain PyTorch loop, the app's overhead, first paint, memory.

    python benchmarks/perf.py [--repeat 2] [--json results.json] [--only engine,app,paint,speedrun]

Every measurement runs in its own process (so peak memory is that process's own), and
the runs that are compared alternate, so a noisy machine slows both sides alike:

1. `cifartui train PRESET --dataset synthetic` against a hand-written loop over the same
   synthetic images: the same model, batch size, optimizer settings and precision, with
   the data in a Dataset that yields PIL images (as torchvision's CIFAR10 does), the
   torchvision transforms the preset's augmentation names, and a standard DataLoader.
   On a GPU both train 4 epochs of 45,000 CIFAR-shaped images (50,000 with a tenth held
   out), and the report gives steady-state images/s (the epochs after the first) apart
   from warm-up: the time from the data being on the GPU to the first step, and the
   first epoch against a later one. On a CPU, a short run of each (images/s of
   training steps).
2. `cifartui train` against `cifartui run` in tmux with the app drawing live charts.
3. Time from starting `cifartui` in tmux to its first screen.
4. Peak resident memory of each process, and peak GPU memory on a GPU.
5. On a GPU, `speedrun-cifar10` on 50,000 synthetic images of CIFAR-10's shape, and,
   when the optional `airbench` package is installed (`pip install 'cifartui[bench]'`),
   airbench94, the published record's own code, on the very same images (its data file
   is written from them, never downloaded).

Prints a Markdown table; writes the same rows as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# --- the plain loop (runs in its own process: `perf.py plain ...`) ---------------------------

def plain_loop(preset: str, device_name: str, workers: int, max_steps: int, epochs: int,
               sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """A training loop as people write it by hand, on the preset's model and settings."""
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from cifartui import presets
    from cifartui.engine.train.data import load_dataset, split_validation
    from cifartui.engine.train.models import build_model

    config = presets.compose(presets.load(preset), dataset="synthetic", epochs=epochs, device=device_name,
                             sets=list(sets))
    device = torch.device("cuda" if device_name == "auto" and torch.cuda.is_available() else
                          device_name if device_name != "auto" else "cpu")
    torch.manual_seed(config.train.seed)
    data = load_dataset(config.dataset)
    train_index, _ = split_validation(len(data.train_labels), config.dataset.val_fraction, config.train.seed)
    images = data.train_images[train_index].transpose(0, 2, 3, 1)  # HWC, as torchvision keeps CIFAR
    labels = data.train_labels[train_index]

    steps: list[Any] = []
    augment = config.augment
    if augment.crop_padding:
        steps.append(transforms.RandomCrop(32, padding=augment.crop_padding))
    if augment.flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps.append(transforms.ToTensor())
    if "standardize" in augment.preprocess:
        mean = images.reshape(-1, 3).mean(0) / 255.0
        std = images.reshape(-1, 3).std(0) / 255.0
        steps.append(transforms.Normalize(mean.tolist(), std.tolist()))
    transform = transforms.Compose(steps)

    class ArrayDataset(Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, index: int) -> tuple[Any, int]:
            return transform(Image.fromarray(images[index])), int(labels[index])

    loader = DataLoader(ArrayDataset(), batch_size=config.train.batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0, drop_last=False)
    model = build_model(config.model, data.num_classes).to(device)
    use_gpu_tricks = device.type == "cuda"
    if use_gpu_tricks:
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    opt = config.optimizer
    if opt.name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov,
                                    weight_decay=opt.weight_decay)
    elif opt.name in ("adam", "adamw"):
        kind = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
        optimizer = kind(model.parameters(), lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps,
                         weight_decay=opt.weight_decay)
    else:
        optimizer = torch.optim.RMSprop(model.parameters(), lr=opt.lr, alpha=opt.alpha, eps=opt.eps,
                                        momentum=opt.momentum, weight_decay=opt.weight_decay)
    total_steps = max_steps or epochs * len(loader)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    running = torch.zeros((), device=device)
    step, seen = 0, 0
    epoch_seconds: list[float] = []
    first_step_s = 0.0

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    started = epoch_started = time.perf_counter()
    while step < total_steps:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if use_gpu_tricks:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_gpu_tricks):
                loss = F.cross_entropy(model(x), y, label_smoothing=config.train.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.detach()  # read every 100 steps, not every step
            step += 1
            seen += len(y)
            if step == 1:
                sync()
                first_step_s = time.perf_counter() - started
            if step % 100 == 0:
                running.item()
            if step >= total_steps:
                break
        sync()
        now = time.perf_counter()
        epoch_seconds.append(now - epoch_started)
        epoch_started = now
    seconds = time.perf_counter() - started
    result = {"images_per_s": seen / seconds, "train_seconds": seconds, "steps": step,
              "epoch_seconds": epoch_seconds, "images_per_epoch": len(labels), "first_step_s": first_step_s}
    if len(epoch_seconds) > 1:
        result["steady_images_per_s"] = len(labels) / statistics.median(epoch_seconds[1:])
    if device.type == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


# --- measuring processes -------------------------------------------------------------------

def _run_measured(command: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and output of a child process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, text=True)
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed with exit code {process.returncode}:\n{output[-3000:]}")
    peak = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
    return wall, peak, output


def _limits(max_steps: int, epochs: int) -> list[str]:
    return ["--epochs", str(epochs)] + (["--set", f"train.max_steps={max_steps}"] if max_steps else [])


def _set_options(sets: tuple[str, ...]) -> list[str]:
    return [part for item in sets for part in ("--set", item)]


def engine_run(preset: str, device: str, max_steps: int, epochs: int, folder: Path,
               sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """`cifartui train` in its own process; speed from its summary, warm-up from its metrics."""
    summary = folder / f"engine-{uuid.uuid4().hex[:6]}.json"
    runs = folder / f"runs-{uuid.uuid4().hex[:6]}"
    command = [sys.executable, "-m", "cifartui", "train", preset, "--dataset", "synthetic", "--device", device,
               "--runs-dir", str(runs), "--summary-json", str(summary), "--set", "train.log_every=1",
               *_set_options(sets), *_limits(max_steps, epochs)]
    wall, peak, _ = _run_measured(command)
    result = json.loads(summary.read_text())
    (run_dir,) = list(runs.iterdir())
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    started = next(e for e in events if e["event"] == "RunStarted")
    first = next(e for e in events if e["event"] == "StepMetrics")
    epoch_seconds = [e["seconds"] for e in events if e["event"] == "EpochEnded"]
    row = {"images_per_s": result["images_per_s"], "train_seconds": result["train_seconds"], "wall_s": wall,
           "peak_rss_mib": peak, "steps": result["steps"], "peak_gpu_mib": result.get("peak_gpu_mib"),
           "graphs": result.get("graphs", ""), "epoch_seconds": epoch_seconds,
           "images_per_epoch": started["train_size"],
           # From the data on the device (RunStarted) to the first metrics line, which goes out
           # after the first step (at most 0.1 s later with log_every = 1).
           "first_step_s": first["time"] - started["time"]}
    if len(epoch_seconds) > 1:
        row["steady_images_per_s"] = started["train_size"] / statistics.median(epoch_seconds[1:])
    return row


def plain_run(preset: str, device: str, workers: int, max_steps: int, epochs: int, folder: Path,
              sets: tuple[str, ...] = ()) -> dict[str, Any]:
    out = folder / f"plain-{uuid.uuid4().hex[:6]}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "plain", preset, "--device", device,
               "--workers", str(workers), "--max-steps", str(max_steps), "--epochs", str(epochs), "--out", str(out),
               *_set_options(sets)]
    wall, peak, _ = _run_measured(command, cwd=ROOT)
    result = json.loads(out.read_text())
    return {**result, "wall_s": wall, "peak_rss_mib": peak}


# --- airbench94, the published record's own code, on the same images --------------------------

SPEEDRUN_SETS = ("dataset.train_size=50000", "dataset.test_size=10000")


def airbench_loop(out: Path) -> None:
    """airbench94's train94 on the synthetic images the engine's speedrun trains on (runs in its own process)."""
    import contextlib
    import io

    import torch

    import airbench
    from cifartui.config import DatasetConfig
    from cifartui.engine.train.data import load_dataset

    data = load_dataset(DatasetConfig(name="synthetic", classes=10, train_size=50000, test_size=10000,
                                      val_fraction=0.0))
    with tempfile.TemporaryDirectory() as temporary:
        os.chdir(temporary)  # airbench reads cifar10/train.pt and cifar10/test.pt from here
        Path("cifar10").mkdir()
        for name, images, labels in (("train", data.train_images, data.train_labels),
                                     ("test", data.test_images, data.test_labels)):
            torch.save({"images": torch.from_numpy(images.transpose(0, 2, 3, 1).copy()),
                        "labels": torch.from_numpy(labels), "classes": list(data.class_names)},
                       Path("cifar10") / f"{name}.pt")
        with contextlib.redirect_stdout(io.StringIO()):
            airbench.warmup94()  # as its README runs it: compile and tune once, untimed
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            airbench.train94()
    # Its last table row is the final (mirror) evaluation; the last column, total_time_seconds,
    # counts training and that evaluation.
    rows = [line for line in printed.getvalue().splitlines() if line.count("|") > 3]
    seconds = float(rows[-1].strip().strip("|").split("|")[-1])
    out.write_text(json.dumps({"train_seconds": seconds, "epochs": 9.9}))


def airbench_run(folder: Path) -> dict[str, Any] | None:
    try:
        import airbench  # noqa: F401
    except ImportError:
        return None
    out = folder / f"airbench-{uuid.uuid4().hex[:6]}.json"
    wall, peak, _ = _run_measured([sys.executable, str(Path(__file__).resolve()), "airbench", "--out", str(out)],
                                  cwd=ROOT)
    return {**json.loads(out.read_text()), "wall_s": wall}


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def _new_session(session: str, command: str) -> None:
    """Start a detached 120x40 tmux session; retried, since a server still shutting down refuses one."""
    for attempt in range(5):
        try:
            _tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", f"bash -c {shlex.quote(command)}")
            return
        except subprocess.CalledProcessError:
            if attempt == 4:
                raise
            time.sleep(0.5)


def _tmux_env(folder: Path) -> str:
    env = {"CIFARTUI_DATA": str(folder / "data"), "CIFARTUI_CONFIG": str(folder / "config"),
           "TERM": "tmux-256color"}
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


def app_run(preset: str, device: str, max_steps: int, epochs: int, folder: Path) -> dict[str, Any]:
    """`cifartui run PRESET` in a 120x40 tmux window; the run's own summary gives its speed."""
    runs = folder / f"app-runs-{uuid.uuid4().hex[:6]}"
    session = f"cifartui-bench-{uuid.uuid4().hex[:8]}"
    arguments = ["run", preset, "--dataset", "synthetic", "--device", device, "--runs-dir", str(runs),
                 *_limits(max_steps, epochs)]
    command = f"exec env {_tmux_env(folder)} {shlex.quote(sys.executable)} -m cifartui {shlex.join(arguments)}"
    _new_session(session, command)
    try:
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            summaries = list(runs.glob("*/summary.json"))
            if summaries:
                result = json.loads(summaries[0].read_text())
                return {"images_per_s": result["images_per_s"], "train_seconds": result["train_seconds"]}
            time.sleep(0.5)
        raise SystemExit("the app's run did not finish within an hour")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def first_paint(folder: Path) -> float:
    """Seconds from starting `cifartui` in tmux until its first screen is on the terminal."""
    session = f"cifartui-paint-{uuid.uuid4().hex[:8]}"
    command = (f"exec env {_tmux_env(folder)} {shlex.quote(sys.executable)} -m cifartui --runs-dir "
               f"{shlex.quote(str(folder / 'paint-runs'))}")
    started = time.perf_counter()
    _new_session(session, command)
    try:
        while time.perf_counter() - started < 60:
            if "No runs yet" in _tmux("capture-pane", "-p", "-t", session):
                return time.perf_counter() - started
            time.sleep(0.01)
        raise SystemExit("the app showed no first screen within 60 s")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


# --- the report ------------------------------------------------------------------------------

def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    model = ""
    try:
        model = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)  # type: ignore
    except (OSError, AttributeError):
        pass
    text = f"{model or cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return text


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plain"]:
        parser = argparse.ArgumentParser(prog="perf.py plain")
        parser.add_argument("preset")
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--workers", type=int, default=0)
        parser.add_argument("--max-steps", type=int, default=0)
        parser.add_argument("--epochs", type=int, default=1)
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--set", dest="sets", action="append", default=[])
        args = parser.parse_args(argv[1:])
        args.out.write_text(json.dumps(plain_loop(args.preset, args.device, args.workers, args.max_steps,
                                                  args.epochs, tuple(args.sets))))
        return
    if argv[:1] == ["airbench"]:
        parser = argparse.ArgumentParser(prog="perf.py airbench")
        parser.add_argument("--out", type=Path, required=True)
        airbench_loop(parser.parse_args(argv[1:]).out)
        return

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="alternating repeats of each comparison")
    parser.add_argument("--only", default="engine,app,paint,speedrun",
                        help="comma-separated parts: engine, app, paint, speedrun")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))

    import torch

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        print(f"  {row['measure']}: {row['value']}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        if "engine" in parts:
            if gpu:
                measure_gpu_engine(args.repeat, folder, add)
            else:
                measure_cpu_engine(args.repeat, folder, add)
        if "app" in parts:
            if not shutil.which("tmux"):
                add({"measure": "app overhead", "value": "not measured: tmux is not installed"})
            else:
                preset, max_steps, epochs = ("cnn3-cifar10", 0, 2) if not gpu else ("resnet18-cifar10", 0, 2)
                headless, attached = [], []
                for _ in range(args.repeat):
                    headless.append(engine_run(preset, device, max_steps, epochs, folder))
                    attached.append(app_run(preset, device, max_steps, epochs, folder))
                h = statistics.median(r["images_per_s"] for r in headless)
                a = statistics.median(r["images_per_s"] for r in attached)
                add({"measure": f"{preset}: headless / app attached images/s",
                     "value": f"{h:,.0f} / {a:,.0f} (overhead {100 * (h - a) / h:+.1f}%)",
                     "overhead_percent": 100 * (h - a) / h, "raw": {"headless": headless, "app": attached}})
        if "paint" in parts:
            if not shutil.which("tmux"):
                add({"measure": "first screen", "value": "not measured: tmux is not installed"})
            else:
                first_paint(folder)  # warm the file cache once
                times = [first_paint(folder) for _ in range(5)]
                add({"measure": "`cifartui` to first screen (median of 5)",
                     "value": f"{statistics.median(times):.2f} s (max {max(times):.2f} s)", "raw": times})
        if "speedrun" in parts:
            if not gpu:
                add({"measure": "speedrun-cifar10 training seconds", "value": "not measured: no GPU here"})
            else:
                measure_speedrun(args.repeat, folder, add)

    print(f"Machine: {machine()}")
    print()
    print("| measure | value |")
    print("| --- | --- |")
    for row in rows:
        print(f"| {row['measure']} | {row['value']} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def measure_cpu_engine(repeat: int, folder: Path, add: Any) -> None:
    """Short runs on two cores: images/s of training steps, engine and plain loop alternating."""
    workers_options = [0, 2]
    # On two CPU cores a ResNet-18 epoch takes minutes; a fixed number of steps says the same.
    for preset, max_steps, epochs in (("cnn3-cifar10", 0, 1), ("resnet18-cifar10", 20, 1)):
        engine, plain = [], {w: [] for w in workers_options}
        for _ in range(repeat):
            engine.append(engine_run(preset, "cpu", max_steps, epochs, folder))
            for w in workers_options:
                plain[w].append(plain_run(preset, "cpu", w, max_steps, epochs, folder))
        engine_rate = _median(engine, "images_per_s")
        add({"measure": f"{preset}: engine images/s", "value": f"{engine_rate:,.0f}", "raw": engine})
        for w in workers_options:
            rate = _median(plain[w], "images_per_s")
            add({"measure": f"{preset}: plain loop, DataLoader {w} workers, images/s",
                 "value": f"{rate:,.0f} (engine {engine_rate / rate:.2f}x)", "ratio": engine_rate / rate,
                 "raw": plain[w]})
        add({"measure": f"{preset}: peak RSS engine / plain",
             "value": f"{max(r['peak_rss_mib'] for r in engine):,.0f} / "
                      f"{max(r['peak_rss_mib'] for w in workers_options for r in plain[w]):,.0f} MiB"})


GPU_CASES = (("resnet18-cifar10", 128), ("cnn3-cifar10", 64))
GPU_SETS = ("dataset.train_size=50000", "dataset.val_fraction=0.1", "dataset.test_size=2000")
GPU_EPOCHS = 4


def measure_gpu_engine(repeat: int, folder: Path, add: Any) -> None:
    """4 epochs of 45,000 images each side; steady state from epochs 2-4, warm-up reported apart."""
    for preset, batch in GPU_CASES:
        sets = (*GPU_SETS, f"train.batch_size={batch}")
        engine, plain = [], []
        for _ in range(repeat):
            engine.append(engine_run(preset, "cuda", 0, GPU_EPOCHS, folder, sets))
            plain.append(plain_run(preset, "cuda", 8, 0, GPU_EPOCHS, folder, sets))
        steady, plain_steady = _median(engine, "steady_images_per_s"), _median(plain, "steady_images_per_s")
        first = statistics.median(r["epoch_seconds"][0] for r in engine)
        later = statistics.median(statistics.median(r["epoch_seconds"][1:]) for r in engine)
        add({"measure": f"{preset} batch {batch}: engine, steady images/s ({engine[0]['graphs'] or 'eager'})",
             "value": f"{steady:,.0f}", "raw": engine})
        add({"measure": f"{preset} batch {batch}: plain loop, DataLoader 8 workers pinned, steady images/s",
             "value": f"{plain_steady:,.0f} (engine {steady / plain_steady:.2f}x)", "ratio": steady / plain_steady,
             "raw": plain})
        add({"measure": f"{preset} batch {batch}: engine first step after the data is on the GPU; first / later "
                        "epoch", "value": f"{_median(engine, 'first_step_s'):.2f} s; {first:.2f} / {later:.2f} s "
                                          f"({first / later:.2f}x)"})
        add({"measure": f"{preset} batch {batch}: plain loop first step; first / later epoch",
             "value": f"{_median(plain, 'first_step_s'):.2f} s; "
                      f"{statistics.median(r['epoch_seconds'][0] for r in plain):.2f} / "
                      f"{statistics.median(statistics.median(r['epoch_seconds'][1:]) for r in plain):.2f} s"})
        add({"measure": f"{preset} batch {batch}: peak GPU memory engine / plain",
             "value": f"{max(r['peak_gpu_mib'] for r in engine):,.0f} / "
                      f"{max(r['peak_gpu_mib'] for r in plain):,.0f} MiB"})


def measure_speedrun(repeat: int, folder: Path, add: Any) -> None:
    """speedrun-cifar10 as written (10 epochs) and airbench94, alternating, on the same 50,000 images."""
    ours, theirs = [], []
    for _ in range(repeat):
        ours.append(engine_run_full("speedrun-cifar10", "cuda", folder))
        result = airbench_run(folder)
        if result is not None:
            theirs.append(result)
    best = min(ours, key=lambda r: r["train_seconds"])
    add({"measure": "speedrun-cifar10 (50,000 synthetic CIFAR-10-shaped images): training seconds / epochs",
         "value": f"{best['train_seconds']:.2f} s / {best['epochs']} epochs (first process of each: "
                  f"{ours[0]['train_seconds']:.2f} s)", "raw": ours})
    if theirs:
        fastest = min(theirs, key=lambda r: r["train_seconds"])
        add({"measure": "airbench94 on the same images: seconds (its own count: training + final evaluation)",
             "value": f"{fastest['train_seconds']:.2f} s / 9.9 epochs (speedrun-cifar10 "
                      f"{best['train_seconds'] / fastest['train_seconds']:.2f}x its time)", "raw": theirs})
    else:
        add({"measure": "airbench94", "value": "not measured: `pip install 'cifartui[bench]'` installs it"})


def engine_run_full(preset: str, device: str, folder: Path) -> dict[str, Any]:
    """The preset as written (its own epochs), on synthetic data of the real set's shape."""
    summary = folder / f"full-{uuid.uuid4().hex[:6]}.json"
    command = [sys.executable, "-m", "cifartui", "train", preset, "--dataset", "synthetic",
               *_set_options(SPEEDRUN_SETS), "--device", device,
               "--runs-dir", str(folder / "runs"), "--summary-json", str(summary)]
    wall, peak, _ = _run_measured(command)
    result = json.loads(summary.read_text())
    return {"train_seconds": result["train_seconds"], "epochs": result["epochs"], "wall_s": wall,
            "peak_rss_mib": peak, "test_top1": result["test_top1"], "graphs": result.get("graphs", "")}


if __name__ == "__main__":
    main()
