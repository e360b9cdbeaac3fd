"""Wall time of `cifartui train demo-synthetic` from the command line, and its test accuracy.

    python benchmarks/demo_time.py [--repeat 3]

Prints a Markdown table; the numbers in the README come from this command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for attempt in range(args.repeat):
        with tempfile.TemporaryDirectory() as folder:
            summary = Path(folder) / "summary.json"
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "cifartui.cli", "train", "demo-synthetic", "--device", "cpu",
                            "--runs-dir", str(Path(folder) / "runs"), "--summary-json", str(summary)],
                           check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - started
            result = json.loads(summary.read_text())
            rows.append((attempt + 1, wall, result["train_seconds"], result["images_per_s"], result["test_top1"]))
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print()
    print("| run | wall time, command start to exit (s) | training steps (s) | images/s | test top-1 |")
    print("| --- | --- | --- | --- | --- |")
    for attempt, wall, train, rate, top1 in rows:
        print(f"| {attempt} | {wall:.1f} | {train:.1f} | {rate:,.0f} | {top1:.2f}% |")


if __name__ == "__main__":
    main()
