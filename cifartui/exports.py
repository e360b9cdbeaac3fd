"""A run's metrics history as TensorBoard event files or as PNG plots.

Both need an optional dependency (`pip install 'cifartui[tensorboard]'` or
`'cifartui[plots]'`); without it the export stops with a message saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ExportUnavailable(RuntimeError):
    """The optional package an export needs is not installed."""


def _series(events: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Scalar series by TensorBoard tag, from the events of metrics.jsonl."""
    series: dict[str, list[tuple[int, float]]] = {}

    def add(tag: str, step: Any, value: Any) -> None:
        if _finite(value) and _finite(step):  # NaN stays out of the plots
            series.setdefault(tag, []).append((int(step), float(value)))

    for event in events:
        kind, step = event.get("event"), event.get("step", 0)
        if kind == "StepMetrics":
            add("train/loss", step, event.get("loss"))
            add("train/top1", step, event.get("top1"))
            add("train/lr", step, event.get("lr"))
            add("train/images_per_s", step, event.get("images_per_s"))
        elif kind == "EpochEnded":
            add("epoch/train_loss", step, event.get("train_loss"))
            add("epoch/train_top1", step, event.get("train_top1"))
            add("epoch/val_loss", step, event.get("val_loss"))
            add("epoch/val_top1", step, event.get("val_top1"))
            add("epoch/val_top5", step, event.get("val_top5"))
        elif kind == "DropoutChanged":
            new = event.get("new")
            rates = [rate for rate in new.values() if _finite(rate)] if isinstance(new, dict) else []
            if rates:
                add("dropout/mean_rate", step, sum(rates) / len(rates))
        elif kind == "RunFinished":
            add("test/top1", event.get("steps", step), event.get("test_top1"))
            add("test/top5", event.get("steps", step), event.get("test_top5"))
            add("test/loss", event.get("steps", step), event.get("test_loss"))
    return series


def _finite(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
            and abs(value) != float("inf"))


def export_tensorboard(events: list[dict[str, Any]], folder: Path) -> Path:
    """Write the series as TensorBoard scalars into `folder` (open with `tensorboard --logdir`)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ExportUnavailable("--format tensorboard needs the tensorboard package: "
                                "pip install 'cifartui[tensorboard]'") from None
    folder.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for tag, points in _series(events).items():
            for step, value in points:
                writer.add_scalar(tag, value, global_step=step)
    finally:
        writer.close()
    return folder


def export_png(events: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Loss and accuracy (train and validation) over steps, and the LR, as one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a GPU box over SSH
        import matplotlib.pyplot as plt
    except ImportError:
        raise ExportUnavailable("--format png needs matplotlib: pip install 'cifartui[plots]'") from None
    series = _series(events)
    figure, (loss_axes, accuracy_axes, lr_axes) = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    for tag, label, axes in (("train/loss", "train (running)", loss_axes), ("epoch/val_loss", "validation", loss_axes),
                             ("train/top1", "train top-1 (running)", accuracy_axes),
                             ("epoch/val_top1", "validation top-1", accuracy_axes),
                             ("epoch/val_top5", "validation top-5", accuracy_axes), ("train/lr", "learning rate", lr_axes)):
        points = series.get(tag)
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, label=label, marker="o" if tag.startswith("epoch/") else None, markersize=3)
    loss_axes.set_ylabel("loss")
    accuracy_axes.set_ylabel("accuracy, %")
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_xlabel("step")
    for axes in (loss_axes, accuracy_axes, lr_axes):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="best")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(path, dpi=110, format="png")  # exactly `path`: matplotlib adds no extension then
    finally:
        plt.close(figure)
    return path


__all__ = ["ExportUnavailable", "export_png", "export_tensorboard"]
