"""Pictures made of text: RGB images in half-block characters, and colour-scaled heatmaps.

Half blocks work in every terminal that shows colour, over SSH and in tmux: each
character cell shows two pixels, the upper one as the foreground colour of "▀" and
the lower one as its background.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from rich.color import Color
from rich.style import Style
from rich.text import Text


def half_block_image(image: np.ndarray, scale: int = 1) -> Text:
    """A 3xHxW uint8 image as H/2 lines of W cells (each pixel repeated `scale` times)."""
    pixels = np.asarray(image, dtype=np.uint8).transpose(1, 2, 0)  # H, W, 3
    if scale > 1:
        pixels = pixels.repeat(scale, 0).repeat(scale, 1)
    if len(pixels) % 2:
        pixels = np.concatenate([pixels, pixels[-1:]])
    text = Text()
    for row in range(0, len(pixels), 2):
        for upper, lower in zip(pixels[row], pixels[row + 1]):
            text.append("▀", Style(color=Color.from_rgb(*upper.tolist()), bgcolor=Color.from_rgb(*lower.tolist())))
        if row + 2 < len(pixels):
            text.append("\n")
    return text


def _heat(fraction: float) -> Color:
    """Dark blue (0) through teal to bright yellow (1)."""
    fraction = min(max(fraction, 0.0), 1.0)
    stops = [(0.0, (18, 22, 48)), (0.35, (30, 110, 140)), (0.7, (120, 190, 90)), (1.0, (250, 230, 60))]
    for (a, ca), (b, cb) in zip(stops, stops[1:]):
        if fraction <= b:
            t = (fraction - a) / (b - a)
            return Color.from_rgb(*(round(x + (y - x) * t) for x, y in zip(ca, cb)))
    return Color.from_rgb(*stops[-1][1])


def heatmap(matrix: np.ndarray, labels: Sequence[str], *, label_width: int = 16, cell_width: int = 4) -> Text:
    """A confusion matrix with each row scaled to its own total: rows true, columns predicted.

    Every cell shows its count; its colour is the share of the row's images it holds,
    so a well-classified class has one bright cell on the diagonal.
    """
    text = Text()
    short = [label[:cell_width - 1] for label in labels]
    numbered = len(set(short)) < len(short)  # abbreviations would be ambiguous: number the columns
    if numbered:
        short = [str(i) for i in range(len(labels))]
        labels = [f"{i} {label}" for i, label in enumerate(labels)]
    header = " " * (label_width + 1) + "".join(f"{name:>{cell_width}}" for name in short)
    text.append(header + "\n", style="bold")
    for row, label in enumerate(labels):
        total = max(int(matrix[row].sum()), 1)
        text.append(f"{label[:label_width]:<{label_width}} ", style="bold")
        for column, count in enumerate(matrix[row].tolist()):
            share = count / total
            background = _heat(share)
            foreground = "black" if share > 0.5 else "white"
            cell = f"{count:>{cell_width - 1}} " if count < 10 ** (cell_width - 1) else "#" * (cell_width - 1) + " "
            style = Style(color=foreground, bgcolor=background, bold=row == column)
            text.append(cell, style)
        text.append(f" {100.0 * matrix[row, row] / total:5.1f}%")
        if row + 1 < len(labels):
            text.append("\n")
    return text


__all__ = ["half_block_image", "heatmap"]
