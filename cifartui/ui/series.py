"""Bounded chart history: old points are averaged pairwise so memory stays flat."""

from __future__ import annotations


class BoundedSeries:
    """(x, y) points; past `limit` points the older half is downsampled by two.

    The newest points keep full resolution, so a 165k-iteration run shows its recent
    steps exactly and its history in an ever coarser summary, in at most `limit` points.
    """

    def __init__(self, limit: int = 600) -> None:
        if limit < 4:
            raise ValueError("limit must be at least 4")
        self.limit = limit
        self.xs: list[float] = []
        self.ys: list[float] = []

    def __len__(self) -> int:
        return len(self.xs)

    def append(self, x: float, y: float) -> None:
        self.xs.append(float(x))
        self.ys.append(float(y))
        if len(self.xs) > self.limit:
            half = (len(self.xs) // 2) & ~1  # an even number of the oldest points
            old_x, old_y = self.xs[:half], self.ys[:half]
            self.xs = [(old_x[i] + old_x[i + 1]) / 2 for i in range(0, half, 2)] + self.xs[half:]
            self.ys = [(old_y[i] + old_y[i + 1]) / 2 for i in range(0, half, 2)] + self.ys[half:]

    def last(self, count: int) -> tuple[float, ...]:
        return tuple(self.ys[-count:])
