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


class TrainingClock:
    """Seconds of training at each reported step, with paused and stopped time left out.

    The time axis of a run's charts reads from this: a run paused overnight, or stopped
    and resumed the next day (a `kill -9` too), shows no flat stretch for the gap, as
    TensorBoard's and W&B's relative-time axes would. A gap is counted from the pause,
    the stop, or the last event before a resume, to the resume.
    """

    def __init__(self, limit: int = 2000) -> None:
        self.points = BoundedSeries(limit)  # (step, seconds of training)
        self.origin: float | None = None  # wall time of the first start: zero on the axis
        self.paused_since: float | None = None
        self.paused_total = 0.0
        self.last_time: float | None = None

    def __len__(self) -> int:
        return len(self.points)

    def started(self, time: float, *, resumed: bool) -> None:
        if self.origin is None:
            self.origin = time
        elif resumed:
            self.resumed(time, since=self.last_time)  # after a stop or a kill: the gap is not training
        self.last_time = time

    def paused(self, time: float) -> None:
        if self.paused_since is None:
            self.paused_since = time
        self.last_time = time

    def resumed(self, time: float, since: float | None = None) -> None:
        start = self.paused_since if self.paused_since is not None else since
        if start is not None and time > start:
            self.paused_total += time - start
        self.paused_since = None
        self.last_time = time

    def at(self, step: float, time: float) -> None:
        """A step reported at wall time `time`, while training."""
        if self.origin is None:
            self.origin = time
        self.points.append(step, time - self.origin - self.paused_total)
        self.last_time = time

    def truncate_after(self, step: float) -> None:
        self.points.truncate_after(step)

    def seconds_at(self, steps):  # noqa: ANN001, ANN201 - numpy arrays in and out
        """Training seconds at each of `steps` (numpy), interpolated between reported steps."""
        import numpy as np

        return np.interp(steps, np.asarray(self.points.xs), np.asarray(self.points.ys))
