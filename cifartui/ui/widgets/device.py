"""What the training device is doing: GPU name, memory and utilisation, or CPU threads."""

from __future__ import annotations

import os
import resource
import sys

from textual.widgets import Static


def device_report(device: str) -> str:
    """One or two lines about the device; never raises."""
    import torch  # here, not at the top: the app paints its first screen before PyTorch loads

    try:
        if device.startswith("cuda") and torch.cuda.is_available():
            index = torch.device(device).index or 0
            name = torch.cuda.get_device_name(index)
            free, total = torch.cuda.mem_get_info(index)
            line = f"{name}  memory {(total - free) / 2**30:.1f}/{total / 2**30:.1f} GiB"
            try:
                line += f"  utilisation {torch.cuda.utilization(index)}%"
            except Exception:  # the driver library for utilisation may be missing
                pass
            return line
    except Exception as error:  # a device query must never take the screen down
        return f"{device}: {error}"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mib = rss / 2**20 if sys.platform == "darwin" else rss / 1024
    return f"CPU  {torch.get_num_threads()} torch threads of {os.cpu_count()} cores  peak RSS {peak_mib:,.0f} MiB"


class DevicePanel(Static):
    """Refreshes itself every few seconds."""

    def __init__(self, device: str = "cpu", *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.device = device
        self._shown = ""

    def on_mount(self) -> None:
        self.update_report()
        self.set_interval(3.0, self.refresh_if_shown)

    def update_report(self) -> None:
        report = device_report(self.device)
        if report != self._shown:
            self._shown = report
            self.update(report, layout=False)  # one row, fixed in app.tcss

    def refresh_if_shown(self) -> None:
        if self.is_on_screen:  # a panel in a hidden tab need not ask the driver
            self.update_report()
