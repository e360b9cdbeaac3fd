"""Runs of a queue on a Ray cluster: each run a Ray job whose entrypoint is our own `cifartui train`.

The queue stays what it is (a folder, each run its own process with its run folder and
control channel); only where the process starts changes. Each run becomes a Ray job
(`JobSubmissionClient.submit_job`) asking for one GPU (`entrypoint_num_gpus`) when the
cluster has GPUs, else one CPU, so Ray picks the node and sets CUDA_VISIBLE_DEVICES
there; the run is trained with `--device auto`. Every path is absolute and lies in the
runs folder, which every node must see at the same path (NFS or the like), so the run's
files, its output.log and its control channel are where the queue looks for them.

A job that ends without our process's own exit code (its supervisor died: its node was
lost, or Ray could not start it) reads as lost, and the queue starts the run again from
its last checkpoint wherever Ray finds room. Stopping a run goes through Ray's stop,
which sends SIGTERM to the run's process (it writes a checkpoint and ends, exit 143);
the grace before Ray's SIGKILL is raised from Ray's 3 seconds to `STOP_GRACE_S`.

Ray is an optional extra (`pip install 'cifartui[ray]'`); nothing here imports it
before `connect` is called.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cifartui.config import ConfigError

STOP_GRACE_S = 120  # how long Ray waits for a stopped run to write its checkpoint before SIGKILL
INSTALL_HINT = "pip install 'cifartui[ray]'"
# Environment the runs need from the process that drives the queue (where presets and data live).
FORWARDED_ENVIRONMENT = ("CIFARTUI_", "OMP_NUM_THREADS")
# The job's own exit code is there only when its entrypoint ran to its end; else the job was lost.
_OWN_EXIT = ("JOB_ENTRYPOINT_COMMAND_ERROR",)


@dataclass(frozen=True)
class ClusterShape:
    """What the cluster offers now: its live nodes and their GPUs and CPUs."""

    nodes: dict[str, str]  # node id -> node name (its IP unless `ray start --node-name` named it)
    gpus: float
    cpus: float


class RayCluster:
    """A connection to a Ray cluster's job server and the runs started through it."""

    def __init__(self, address: str, client: Any, option: str = "--ray"):
        self.address = address
        self.option = option
        self.client = client
        self._node_names: dict[str, str] = {}

    def shape(self) -> ClusterShape:
        from ray.util.state import list_nodes

        try:
            nodes = list_nodes(address=self.client.get_address(), filters=[("state", "=", "ALIVE")],
                               raise_on_missing_output=False)
        except Exception as error:  # the state API raises its own and requests' errors
            raise ConfigError(self.option, self.address, f"cannot list the cluster's nodes: {_first_line(error)}")
        names = {node.node_id: node.node_name or node.node_ip for node in nodes}
        self._node_names.update(names)
        gpus = sum(float((node.resources_total or {}).get("GPU", 0)) for node in nodes)
        cpus = sum(float((node.resources_total or {}).get("CPU", 0)) for node in nodes)
        return ClusterShape(names, gpus, cpus)

    def node_name(self, node_id: str | None) -> str | None:
        if not node_id:
            return None
        if node_id not in self._node_names:
            try:
                self.shape()
            except ConfigError:
                pass
        return self._node_names.get(node_id, node_id[:8])


def connect(address: str, option: str = "--ray") -> RayCluster:
    """The cluster at `address` ("auto": the one this machine belongs to; else its dashboard URL
    http://HOST:8265 or its GCS address HOST:6379), or a ConfigError naming the option and address."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise ConfigError(option, address, f"needs Ray, which is not installed: {INSTALL_HINT}") from None
    if not address or not address.strip():
        raise ConfigError(option, address, "expected auto or the cluster's address, e.g. http://HEAD:8265")
    try:
        client = JobSubmissionClient(address.strip(), verify=True)
    except Exception as error:  # ConnectionError, ValueError, RuntimeError: whatever Ray raises for "nobody there"
        raise ConfigError(option, address, f"no Ray cluster answers there ({_first_line(error)}); start one with "
                          "`ray start --head` or give its dashboard address, e.g. http://HEAD:8265") from None
    return RayCluster(address.strip(), client, option)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


class RayLauncher:
    """Starts a queue's runs as Ray jobs: the queue runner's way to start a run, beside local processes.

    `slots()` gives one slot per GPU of the cluster (`parallel` per GPU), or per CPU when
    it has none; a run asks Ray for 1/parallel of a GPU (or one CPU).
    """

    def __init__(self, cluster: RayCluster, *, device: str = "auto", parallel: int | None = None):
        if parallel is not None and parallel < 1:
            raise ConfigError("--parallel", "", f"expected a positive number of runs per device, got {parallel}")
        self.cluster = cluster
        self.per_device = parallel or 1
        shape = cluster.shape()
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise ConfigError("--device", device, "unknown device; expected auto, cpu, cuda or cuda:N")
        self.use_gpus = device != "cpu" and shape.gpus >= 1
        if device.startswith("cuda") and not self.use_gpus:
            raise ConfigError(cluster.option, cluster.address, f"the runs want {device}, but the cluster has no GPU")
        count = shape.gpus if self.use_gpus else shape.cpus
        if count < 1:
            raise ConfigError(cluster.option, cluster.address, "the cluster has no CPU or GPU to run on")
        self._count = int(count) * self.per_device
        # Ray sets CUDA_VISIBLE_DEVICES to the run's GPU: `auto` takes it (or the CPU where torch sees none).
        self.child_device = "auto" if self.use_gpus else "cpu"

    def slots(self) -> list[str]:
        return ["ray"] * self._count

    def start(self, entry: Any, command: Sequence[str]) -> "RayRun":
        """Submit the run's command as a Ray job; its output goes to the entry's output.log."""
        entrypoint = f"exec {shlex.join(command)} >> {shlex.quote(str(entry.output_path))} 2>&1"
        env = {name: value for name, value in os.environ.items() if name.startswith(FORWARDED_ENVIRONMENT)}
        env["RAY_JOB_STOP_WAIT_TIME_S"] = str(STOP_GRACE_S)
        resources: dict[str, Any] = ({"entrypoint_num_gpus": 1 / self.per_device} if self.use_gpus
                                     else {"entrypoint_num_cpus": 1 / self.per_device})
        job_id = f"cifartui-{entry.directory.parent.name}-{entry.key}-{uuid.uuid4().hex[:6]}"
        try:
            self.cluster.client.submit_job(entrypoint=entrypoint, submission_id=job_id,
                                           runtime_env={"env_vars": env}, metadata={"cifartui_entry": str(entry.directory)},
                                           **resources)
        except Exception as error:
            return RayRun(self.cluster, job_id, failed_to_start=_first_line(error))
        return RayRun(self.cluster, job_id)


class RayRun:
    """One run's Ray job, seen through the same calls as a child process (poll, send_signal, kill, wait).

    `lost` says why the job ended without its process's exit code (its node was lost);
    `where` names the node it runs on once Ray placed it.
    """

    def __init__(self, cluster: RayCluster, job_id: str, *, failed_to_start: str | None = None):
        self.cluster = cluster
        self.job_id = job_id
        self.lost: str | None = None
        self.where: str | None = None
        self._code: int | None = None
        self._stop_sent = False
        if failed_to_start is not None:
            self.lost, self._code = f"Ray did not take the run: {failed_to_start}", -int(signal.SIGKILL)

    def poll(self) -> int | None:
        if self._code is not None:
            return self._code
        try:
            info = self.cluster.client.get_job_info(self.job_id)
        except Exception:
            return None  # the head did not answer this time; ask again at the next poll
        if info.driver_node_id and self.where is None:
            self.where = f"ray {self.cluster.node_name(info.driver_node_id)}"
        status = str(getattr(info.status, "value", info.status))
        if status in ("PENDING", "RUNNING"):
            return None
        error_type = str(getattr(info.error_type, "value", info.error_type or ""))
        if status == "SUCCEEDED":
            self._code = 0
        elif status == "STOPPED":
            self._code = 143  # stopped through Ray: our process had SIGTERM and wrote its checkpoint
        elif error_type in _OWN_EXIT and info.driver_exit_code is not None:
            self._code = int(info.driver_exit_code)
        else:
            self.lost = _lost_reason(error_type, info.message or "")
            self._code = -int(signal.SIGKILL)
        return self._code

    def send_signal(self, number: int) -> None:
        """SIGTERM (and SIGINT) stop the run through Ray once; it checkpoints and ends."""
        if self._stop_sent or self._code is not None:
            return
        self._stop_sent = True
        try:
            self.cluster.client.stop_job(self.job_id)
        except Exception:
            self._stop_sent = False  # try again with the next request

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.job_id, timeout or 0)
            time.sleep(0.2)
        return code


def _lost_reason(error_type: str, message: str) -> str:
    if error_type == "JOB_SUPERVISOR_ACTOR_DIED":
        return "node lost"
    first = message.strip().splitlines()[0][:200] if message.strip() else ""
    return f"{error_type.lower().replace('_', ' ') or 'ended without an exit code'}" + (f": {first}" if first else "")


def absolute(path: Path | None) -> Path | None:
    """A path every node reads the same way (runs on other nodes do not start where this process did)."""
    return None if path is None else Path(path).expanduser().resolve()


__all__ = ["RayCluster", "RayLauncher", "RayRun", "connect", "absolute", "STOP_GRACE_S"]
