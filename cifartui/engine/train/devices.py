"""Which device a run trains on: the one place that turns `auto`, `cpu`, `cuda`, `cuda:N` into a device.

CUDA calls need an indexed device (`torch.cuda.set_device(torch.device("cuda"))` is an
error), so every CUDA device leaves here with its index: `cuda` is the current CUDA
device, `auto` a GPU when there is one. The app spreads runs left on `auto` across GPUs
with `least_busy_gpu` before they get here.
"""

from __future__ import annotations

import re

import torch

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class DeviceError(ValueError):
    """The requested device does not exist here; the message names the option and what exists."""


def _visible_gpus() -> str:
    count = torch.cuda.device_count()
    if count == 0:
        return "no CUDA GPU is visible"
    return f"{count} CUDA GPU{'s' if count != 1 else ''} visible (cuda:0" + (
        f" to cuda:{count - 1})" if count > 1 else ")")


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """The device `name` means on this machine, CUDA devices always with their index.

    `option` is what the user wrote it as (`--device`, `train.device`), for the message;
    empty where the caller names the setting itself.
    """
    where = f"{option}: " if option else ""
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise DeviceError(f"{where}unknown device {name!r}; expected auto, cpu, cuda or cuda:N")
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device())
    if not torch.cuda.is_available():
        raise DeviceError(f"{where}{name} was asked for but {_visible_gpus()}; use cpu or auto")
    if name == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    index = int(name.partition(":")[2])
    if index >= torch.cuda.device_count():
        raise DeviceError(f"{where}{name} does not exist: {_visible_gpus()}")
    return torch.device("cuda", index)


def activate(device: torch.device) -> None:
    """Make `device` the current CUDA device of the calling thread (a no-op on the CPU)."""
    if device.type == "cuda":
        if device.index is None:  # resolve_device never gives this; a caller that skipped it would crash later
            raise DeviceError(f"internal: CUDA device without an index: {device}")
        torch.cuda.set_device(device)


def autocast_dtype(precision: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for train.precision on `device` (None: fp32), and a line for the log when auto chose fp32.

    `auto` means bf16 only where the GPU computes it fast (compute capability 8.0 and up:
    A100, H100, RTX 30xx on); on older ones (T4, V100) bf16 is emulated and slower than fp32.
    """
    if precision == "bf16":
        return torch.bfloat16, ""
    if precision != "auto" or device.type != "cuda":
        return None, ""
    major, minor = torch.cuda.get_device_capability(device)
    if major >= 8 and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16, ""
    return None, (f"precision auto: fp32 on {device} (compute capability {major}.{minor}; bf16 is fast from 8.0 on); "
                  "set train.precision = \"bf16\" to use it anyway")


def seed_torch(seed: int, device: torch.device) -> None:
    """Seed PyTorch's CPU generator and the run's own GPU's, leaving other GPUs to the runs using them.

    (torch.manual_seed would reseed every GPU of the process.)
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.default_generators[device.index].manual_seed(seed)


def least_busy_gpu(busy_devices: list[str], gpus: int) -> int:
    """The index of the GPU with the fewest of `busy_devices` on it (lowest index on ties).

    `busy_devices` are the devices of the runs active now, as written in their configs
    (`cuda` counts as the current device, `cuda:0` unless set otherwise).
    """
    load = {index: 0 for index in range(gpus)}
    try:
        current = torch.cuda.current_device() if gpus else 0
    except (RuntimeError, AssertionError):  # no CUDA here after all (the caller's count was a plan)
        current = 0
    for device in busy_devices:
        if device == "cuda":
            device = f"cuda:{current}"
        if device.startswith("cuda:") and device[5:].isdigit() and int(device[5:]) in load:
            load[int(device[5:])] += 1
    return min(load, key=lambda index: (load[index], index))


__all__ = ["DeviceError", "resolve_device", "activate", "autocast_dtype", "seed_torch", "least_busy_gpu"]
