"""A real two-node Ray cluster on this machine for the tests: started with `ray start --block`, stopped by pid.

Each node is a `ray start --block` process in a session of its own; stopping a node kills
that process and every process it started (found by parentage before any is killed),
never anything else, so other Ray clusters on the machine are left alone. Both nodes
report one logical GPU, so GPU scheduling is tested on a machine without one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


RAY = str(Path(sys.executable).with_name("ray"))
# The head notices a node gone within a few seconds instead of Ray's default half minute.
FAST_FAILURE_DETECTION = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                          "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "0"}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""


def descendants(root: int) -> list[int]:
    """Every process under `root` by parentage, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "")


@dataclass
class Node:
    name: str
    pid: int  # the `ray start --block` process
    log: Path
    process: subprocess.Popen | None = None  # when this process started it (to reap it)
    known: set[int] = field(default_factory=set)  # every pid seen under it, so that none escapes the stop

    def descendants(self) -> list[int]:
        found = descendants(self.pid)
        self.known.update(found)
        return found

    def kill(self) -> None:
        """Lose the node at once: SIGKILL to it and to every process under it (its raylet, its workers, the runs)."""
        self.descendants()
        kill_pids([self.pid, *self.known])
        if self.process is not None:
            self.process.wait(timeout=30)


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


@dataclass
class Cluster:
    address: str  # the dashboard's, for job submission
    gcs: str
    temp_dir: Path
    nodes: list[Node]

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()

    def to_dict(self) -> dict:
        return {"address": self.address, "gcs": self.gcs, "temp_dir": str(self.temp_dir),
                "nodes": [{"name": n.name, "pid": n.pid, "log": str(n.log)} for n in self.nodes]}

    @classmethod
    def from_dict(cls, data: dict) -> "Cluster":
        return cls(data["address"], data["gcs"], Path(data["temp_dir"]),
                   [Node(n["name"], n["pid"], Path(n["log"])) for n in data["nodes"]])


def stop_by_pids(data: dict) -> None:
    """Stop a cluster another process may have started: its `ray start` processes and all under them."""
    Cluster.from_dict(data).stop()


def _start_node(name: str, arguments: list[str], temp_dir: Path, env: dict[str, str]) -> Node:
    log = temp_dir / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen([RAY, "start", "--block", "--node-name", name, *arguments],
                                   stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
    return Node(name, process.pid, log, process)


def _wait_for_nodes(address: str, count: int, nodes: list[Node], timeout: float = 120) -> None:
    from ray.util.state import list_nodes

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            node.descendants()
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"ray node {node.name} ended: {node.log.read_text()[-3000:]}")
        try:
            alive = list_nodes(address=address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
            if len(alive) >= count:
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError("the ray cluster did not come up: " + " | ".join(n.log.read_text()[-1500:] for n in nodes))


def start_cluster(*, gpus: int = 1, cpus: int = 1, workers: int = 1) -> Cluster:
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must stay short
    env = {**os.environ, **FAST_FAILURE_DETECTION, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs_port, dashboard_port, *ports = free_ports(2 + 7 * (1 + workers))
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--num-gpus", str(gpus),
              "--disable-usage-stats"]

    def node_ports() -> list[str]:
        names = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
                 "--ray-client-server-port")
        return [item for name in names for item in (name, str(ports.pop()))]

    nodes = [_start_node("head", ["--head", "--port", str(gcs_port), "--include-dashboard=true",
                                  "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
                                  "--temp-dir", str(temp_dir), *common, *node_ports()], temp_dir, env)]
    cluster = Cluster(f"http://127.0.0.1:{dashboard_port}", f"127.0.0.1:{gcs_port}", temp_dir, nodes)
    try:
        _wait_for_nodes(cluster.address, 1, nodes)
        for index in range(workers):
            arguments = ["--address", cluster.gcs, *common, *node_ports()]
            nodes.append(_start_node(f"worker{index + 1}", arguments, temp_dir, env))
        _wait_for_nodes(cluster.address, 1 + workers, nodes)
    except BaseException:
        cluster.stop()
        raise
    return cluster
