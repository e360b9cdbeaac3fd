"""Bounded chart history: recent points exact, older ones averaged into equal-width buckets.

A 165k-iteration run keeps at most `limit` points per series: the newest `limit/2`
exactly as reported, and everything before them as means of equal runs of points
whose width doubles whenever the buckets fill up. Memory and drawing time stay flat,
and the whole history stays on the chart, evenly summarized.
"""

from __future__ import annotations

from collections import deque


class BoundedSeries:
    def __init__(self, limit: int = 600) -> None:
        if limit < 8:
            raise ValueError("limit must be at least 8")
        self.half = limit // 2 - (limit // 2) % 2  # even, so buckets merge in pairs
        self.recent_x: deque[float] = deque()
        self.recent_y: deque[float] = deque()
        self.old_x: list[float] = []
        self.old_y: list[float] = []
        self.stride = 1  # points per bucket
        self._sum_x = self._sum_y = 0.0
        self._count = 0

    def __len__(self) -> int:
        return len(self.old_x) + len(self.recent_x)

    @property
    def xs(self) -> list[float]:
        return self.old_x + list(self.recent_x)

    @property
    def ys(self) -> list[float]:
        return self.old_y + list(self.recent_y)

    def append(self, x: float, y: float) -> None:
        self.recent_x.append(float(x))
        self.recent_y.append(float(y))
        if len(self.recent_x) > self.half:
            self._push_old(self.recent_x.popleft(), self.recent_y.popleft())

    def _push_old(self, x: float, y: float) -> None:
        self._sum_x += x
        self._sum_y += y
        self._count += 1
        if self._count < self.stride:
            return
        self.old_x.append(self._sum_x / self._count)
        self.old_y.append(self._sum_y / self._count)
        self._sum_x = self._sum_y = 0.0
        self._count = 0
        if len(self.old_x) >= self.half:
            # Every bucket holds `stride` points: merging neighbours keeps them equal.
            self.old_x = [(self.old_x[i] + self.old_x[i + 1]) / 2 for i in range(0, len(self.old_x), 2)]
            self.old_y = [(self.old_y[i] + self.old_y[i + 1]) / 2 for i in range(0, len(self.old_y), 2)]
            self.stride *= 2

    def truncate_after(self, x: float) -> None:
        """Drop every point past `x` (a resumed run restarts from an earlier step)."""
        while self.recent_x and self.recent_x[-1] > x:
            self.recent_x.pop()
            self.recent_y.pop()
        if not self.recent_x:
            keep = [i for i, old in enumerate(self.old_x) if old <= x]
            self.old_x = [self.old_x[i] for i in keep]
            self.old_y = [self.old_y[i] for i in keep]
            self._sum_x = self._sum_y = 0.0
            self._count = 0

    def last(self, count: int) -> tuple[float, ...]:
        ys = self.ys
        return tuple(ys[-count:])
