"""What running a queue's runs on Ray costs: scheduling overhead per run, and a small sweep on 1 vs 2 nodes.

    python benchmarks/ray_overhead.py [--trials 5] [--seeds 4] [--json FILE]

Starts its own Ray cluster on this machine (tests/ray_cluster.py: `ray start --block`
processes stopped by their pids, one CPU and one logical GPU per node) and measures:

  scheduling overhead   from asking for a run to its process running, and from its process
                        ending to the caller knowing, for a process that does nothing
                        (`python -c ...` writing the time it started): a local child
                        (subprocess.Popen, what the queue does without --ray) against a Ray
                        job with entrypoint_num_gpus=1 (what `--ray` does), TRIALS times each
  sweep wall time       `cifartui sweep` of the tiny synthetic recipe over SEEDS seeds with
                        `--ray`, on a cluster of one node, then of two

Prints a Markdown table of medians (seconds). The machine's load counts: on a shared
machine the numbers say more about the ratio than about the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ray_cluster import Node, _start_node, _wait_for_nodes, free_ports, start_cluster  # noqa: E402
from tests.sweep_helpers import TINY_SWEEP_PRESET  # noqa: E402

PROBE = "import sys, time; open(sys.argv[1], 'w').write(repr(time.time()))"


def local_trial(folder: Path) -> tuple[float, float]:
    stamp = folder / "local.txt"
    asked = time.time()
    child = subprocess.Popen([sys.executable, "-c", PROBE, str(stamp)])
    while child.poll() is None:
        time.sleep(0.01)  # the queue polls its children; this polls faster than its 0.5 s
    known = time.time()
    started = float(stamp.read_text())
    return started - asked, known - started


def ray_trial(client: object, folder: Path) -> tuple[float, float]:
    stamp = folder / "ray.txt"
    stamp.unlink(missing_ok=True)
    asked = time.time()
    job = client.submit_job(entrypoint=shlex.join([sys.executable, "-c", PROBE, str(stamp)]),  # type: ignore[attr-defined]
                            entrypoint_num_gpus=1)
    while str(client.get_job_status(job).value) not in ("SUCCEEDED", "FAILED", "STOPPED"):  # type: ignore[attr-defined]
        time.sleep(0.01)
    known = time.time()
    started = float(stamp.read_text())
    return started - asked, known - started


def sweep_time(address: str, folder: Path, seeds: int, name: str) -> float:
    preset = folder / "tiny.toml"
    preset.write_text(TINY_SWEEP_PRESET)
    begun = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cifartui.cli", "sweep", str(preset), "--device", "auto",
                           "--seeds", str(seeds), "--runs-dir", str(folder / name), "--ray", address],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"the sweep failed:\n{done.stdout}\n{done.stderr}")
    return time.monotonic() - begun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from ray.job_submission import JobSubmissionClient

    results: dict[str, float] = {}
    cluster = start_cluster(workers=0)
    try:
        with tempfile.TemporaryDirectory() as temporary:
            folder = Path(temporary)
            client = JobSubmissionClient(cluster.address)
            local = [local_trial(folder) for _ in range(args.trials)]
            remote = [ray_trial(client, folder) for _ in range(args.trials)]
            for name, runs in (("local", local), ("ray", remote)):
                results[f"{name} start"] = statistics.median(start for start, _ in runs)
                results[f"{name} end noticed"] = statistics.median(end for _, end in runs)
            results["sweep on 1 node"] = sweep_time(cluster.address, folder, args.seeds, "one")
            ports = free_ports(7)
            names = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                     "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
                     "--ray-client-server-port")
            worker: Node = _start_node("worker1", ["--address", cluster.gcs, "--node-ip-address", "127.0.0.1",
                                                   "--num-cpus", "1", "--num-gpus", "1", "--disable-usage-stats",
                                                   *[x for n, p in zip(names, ports) for x in (n, str(p))]],
                                       cluster.temp_dir, dict(os.environ))
            cluster.nodes.append(worker)
            _wait_for_nodes(cluster.address, 2, cluster.nodes)
            results["sweep on 2 nodes"] = sweep_time(cluster.address, folder, args.seeds, "two")
    finally:
        cluster.stop()
    print(f"| what (median of {args.trials}; sweep of {args.seeds} tiny runs) | seconds |")
    print("|---|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
