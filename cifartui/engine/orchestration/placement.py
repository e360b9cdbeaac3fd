"""Where a queue's runs train: one slot per run at once, on the CPU or spread over GPUs."""

from __future__ import annotations

from cifartui.config import ConfigError

# Each run at once is a process of its own; far more than this per device is a typo, not a plan.
MAX_PARALLEL = 256


def plan_slots(device: str, devices: str | None = None, parallel: int | None = None) -> list[str]:
    """The device of each run slot: `parallel` runs at once on each chosen device.

    CPU: one run at a time unless told otherwise. GPUs (device auto or cuda): every
    visible GPU or those `devices` names ("0,2" or "cuda:0,cuda:2"), one run per GPU
    unless told otherwise; the slots alternate between GPUs so that the first runs
    spread out. A device of cuda:N keeps every run on that GPU.
    """
    if parallel is not None and (not isinstance(parallel, int) or isinstance(parallel, bool)
                                 or not 1 <= parallel <= MAX_PARALLEL):
        raise ConfigError("--parallel", "", f"expected a number of runs at once per device from 1 to {MAX_PARALLEL}, "
                          f"got {parallel!r}")
    if not isinstance(device, str) or (devices is not None and not isinstance(devices, str)):
        raise ConfigError("--device", "", f"expected a device name, got {device!r} (devices {devices!r})")
    per_device = parallel or 1
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError("--device", "", f"unknown device '{device}'; expected auto, cpu, cuda or cuda:N")
    import torch  # only here: reading a queue needs no torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cpu" or (device == "auto" and not visible):
        if devices is not None:
            where = "train.device is 'cpu'" if device == "cpu" else "no CUDA GPU is visible"
            raise ConfigError("--devices", devices, f"names GPUs, but the runs go to the CPU ({where})")
        return ["cpu"] * per_device
    if not visible:
        raise ConfigError("--device", device, "no CUDA GPU is visible; use --device cpu or auto")
    if device.startswith("cuda:"):
        index = device.partition(":")[2]
        if not index.isdigit() or int(index) >= visible:
            raise ConfigError("--device", device, f"no such GPU: {visible} visible (cuda:0..cuda:{visible - 1})")
        if devices is not None:
            raise ConfigError("--devices", devices, f"conflicts with device '{device}'; use --device cuda or "
                              "auto to spread runs over GPUs")
        return [device] * per_device
    chosen = list(range(visible)) if devices is None else _parse_devices(devices, visible)
    return [f"cuda:{index}" for _ in range(per_device) for index in chosen]


def _parse_devices(text: str, visible: int) -> list[int]:
    chosen: list[int] = []
    for item in text.split(","):
        name = item.strip().removeprefix("cuda:")
        if not name.isdigit():
            raise ConfigError("--devices", text, f"'{item.strip()}' is not a GPU; expected GPU numbers such as "
                              "0,1 or cuda:0,cuda:1")
        index = int(name)
        if index >= visible:
            raise ConfigError("--devices", text, f"no GPU {index}: {visible} visible (0..{visible - 1})")
        if index in chosen:
            raise ConfigError("--devices", text, f"GPU {index} is named twice")
        chosen.append(index)
    return chosen
