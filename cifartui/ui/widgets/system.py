"""The machine a run trains on: GPU utilisation, memory and temperature, and its process's CPU and memory.

GPU figures come from NVML (nvidia-ml-py), which answers without a CUDA context and
for any process's GPU; without an NVIDIA driver the pane says so and shows the rest.
The process is the one that trains the run: this app for its own runs, the pid in
status.json for a run followed from another shell. Its CPU and resident memory are
read from /proc, so the pane costs no dependency and works for any pid we may read.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline, Static

from cifartui.ui.series import BoundedSeries

SAMPLE_EVERY_S = 2.0
HISTORY_POINTS = 120  # four minutes at one sample every two seconds


@dataclass(frozen=True)
class GpuSample:
    name: str
    utilisation: float  # percent
    memory_used: float  # bytes
    memory_total: float
    temperature: float  # degrees Celsius


@dataclass(frozen=True)
class ProcessSample:
    cpu_percent: float  # of one core: 200 is two cores busy
    rss: float  # bytes
    threads: int


class Nvml:
    """NVML, initialised once; `unavailable` says why when there is no driver or library."""

    def __init__(self) -> None:
        self.unavailable = ""
        self._handles: dict[int, object] = {}
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except ImportError:
            self.unavailable = "GPU figures need nvidia-ml-py"
        except Exception as error:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.unavailable = f"no NVIDIA driver ({error})" if str(error) else "no NVIDIA driver"

    def sample(self, index: int) -> GpuSample | None:
        nvml = self._nvml
        if nvml is None:
            return None
        try:
            handle = self._handles.get(index)
            if handle is None:
                handle = self._handles[index] = _nvml_handle(nvml, index)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            return GpuSample(name=name.decode() if isinstance(name, bytes) else str(name),
                             utilisation=float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                             memory_used=float(memory.used), memory_total=float(memory.total),
                             temperature=float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)))
        except Exception as error:  # a GPU that fell off the bus must not take the screen down
            self.unavailable = f"NVML: {error}"
            return None


def _nvml_handle(nvml, index: int):  # noqa: ANN001, ANN202
    """NVML numbers all GPUs; CUDA only the visible ones, in CUDA_VISIBLE_DEVICES order."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible):
        chosen = visible[index]
        if chosen.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(chosen))
        return nvml.nvmlDeviceGetHandleByUUID(chosen)
    return nvml.nvmlDeviceGetHandleByIndex(index)


_nvml: Nvml | None = None


def nvml() -> Nvml:
    global _nvml
    if _nvml is None:
        _nvml = Nvml()
    return _nvml


def gpu_index(device: str) -> int | None:
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    return None


class ProcessWatch:
    """CPU use between two looks at /proc/PID/stat, and resident memory."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._last: tuple[float, float] | None = None  # (cpu seconds, wall time)
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def sample(self) -> ProcessSample | None:
        if not sys.platform.startswith("linux"):
            return _own_process_sample() if self.pid == os.getpid() else None
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as stat:
                # The command name may hold spaces: the fields we need come after its ')'.
                fields = stat.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{self.pid}/statm", "rb") as statm:
                resident_pages = int(statm.read().split()[1])
        except (OSError, IndexError, ValueError):
            return None
        cpu_seconds = (int(fields[11]) + int(fields[12])) / self._ticks  # utime, stime
        threads = int(fields[17])
        now = time.monotonic()
        percent = 0.0
        if self._last is not None and now > self._last[1]:
            percent = 100.0 * (cpu_seconds - self._last[0]) / (now - self._last[1])
        self._last = (cpu_seconds, now)
        return ProcessSample(cpu_percent=max(percent, 0.0), rss=float(resident_pages * self._page), threads=threads)


def _own_process_sample() -> ProcessSample:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    return ProcessSample(cpu_percent=0.0, rss=float(peak), threads=0)


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f}"


class SystemPanel(Vertical):
    """One line always; with the `expanded` class also the figures over time as sparklines."""

    def __init__(self, device: str = "cpu", *, id: str | None = None) -> None:
        super().__init__(id=id, classes="system-panel")
        self.device = device
        self._pid: int | None = os.getpid()
        self._watch: ProcessWatch | None = ProcessWatch(os.getpid())
        self.history = {key: BoundedSeries(HISTORY_POINTS * 2) for key in ("gpu", "memory", "temperature", "cpu", "rss")}
        self.last_gpu: GpuSample | None = None
        self.last_process: ProcessSample | None = None
        self._samples = 0
        self._shown = ""

    @property
    def pid(self) -> int | None:
        return self._pid

    @pid.setter
    def pid(self, pid: int | None) -> None:
        """Whose process to watch: None for a run that nobody trains now."""
        if pid != self._pid:
            self._pid = pid
            self._watch = ProcessWatch(pid) if pid else None

    def compose(self) -> ComposeResult:
        yield Static(id="system-line")
        with Horizontal(id="system-graphs"):
            for key, label in (("gpu", "GPU util %"), ("memory", "GPU memory GiB"), ("temperature", "GPU °C"),
                               ("cpu", "process CPU %"), ("rss", "process RSS GiB")):
                with Vertical(classes="system-graph", id=f"graph-{key}"):
                    yield Static(label, classes="graph-label")
                    yield Sparkline([], id=f"spark-{key}")

    def on_mount(self) -> None:
        self.sample()
        self.call_after_refresh(self.show)  # the first sample came before the panel was on screen
        self.set_interval(SAMPLE_EVERY_S, self.sample)

    def sample(self) -> None:
        """Take one sample of the device and the process, keep it, and show it if on screen."""
        self._samples += 1
        index = gpu_index(self.device)
        gpu = nvml().sample(index) if index is not None else None
        process = self._watch.sample() if self._watch is not None else None
        self.last_gpu, self.last_process = gpu, process
        if gpu is not None:
            self.history["gpu"].append(self._samples, gpu.utilisation)
            self.history["memory"].append(self._samples, gpu.memory_used / 2**30)
            self.history["temperature"].append(self._samples, gpu.temperature)
        if process is not None:
            self.history["cpu"].append(self._samples, process.cpu_percent)
            self.history["rss"].append(self._samples, process.rss / 2**30)
        if self.is_on_screen:  # a panel in a hidden tab only records
            self.show()

    def line(self) -> str:
        gpu, process = self.last_gpu, self.last_process
        parts = []
        index = gpu_index(self.device)
        if index is not None:
            if gpu is not None:
                parts.append(f"GPU{index} {gpu.name}  util {gpu.utilisation:.0f}%  memory {_gib(gpu.memory_used)}/"
                             f"{_gib(gpu.memory_total)} GiB  {gpu.temperature:.0f}°C")
            else:
                parts.append(f"{self.device}: {nvml().unavailable or 'no figures'}")
        else:
            parts.append(f"CPU  {os.cpu_count()} cores")
        if process is not None:
            parts.append(f"pid {self._pid}  CPU {process.cpu_percent:.0f}%  RSS {_gib(process.rss)} GiB"
                         + (f"  {process.threads} threads" if process.threads else ""))
        elif self._pid is None:
            parts.append("no process trains this run now")
        else:
            parts.append(f"pid {self._pid}: not readable here")
        return "  ·  ".join(parts)

    def show(self) -> None:
        line = self.line()
        if line != self._shown:
            self._shown = line
            self.query_one("#system-line", Static).update(Text(line), layout=False)
        if self.has_class("expanded"):
            for key, series in self.history.items():
                self.query_one(f"#spark-{key}", Sparkline).data = list(series.last(HISTORY_POINTS))
            has_gpu = bool(len(self.history["gpu"]))
            for key in ("gpu", "memory", "temperature"):
                self.query_one(f"#graph-{key}").display = has_gpu

    def toggle(self) -> None:
        self.toggle_class("expanded")
        self.show()


__all__ = ["SystemPanel", "GpuSample", "ProcessSample", "Nvml", "nvml", "ProcessWatch", "gpu_index"]
