"""A bounded work queue: model calls run one at a time (``concurrency``) in a dedicated thread, at most
``size`` more wait, and a request beyond that is refused at once instead of piling up on the CPU."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """The queue already holds as many requests as it may; the message says how many."""


class WorkQueue:
    """Runs blocking jobs in its own thread pool, admitting at most ``concurrency + size`` at a time."""

    def __init__(self, size: int, concurrency: int = 1) -> None:
        self.size = size
        self.concurrency = concurrency
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cascadepsp-model")
        self._lock = threading.Lock()
        self.admitted = 0  # running + waiting
        self.running = 0
        self.done = 0
        self.failed = 0
        self.rejected = 0

    @property
    def waiting(self) -> int:
        """Requests admitted but not yet running."""
        return self.admitted - self.running

    def stats(self) -> dict[str, int]:
        """Counters for ``/health``."""
        with self._lock:
            return {"running": self.running, "waiting": self.admitted - self.running, "limit": self.size,
                    "done": self.done, "failed": self.failed, "rejected": self.rejected}

    def _admit(self) -> None:
        with self._lock:
            if self.admitted >= self.concurrency + self.size:
                self.rejected += 1
                raise QueueFull(f"server busy: {self.admitted - self.running} requests already waiting (limit "
                                f"{self.size}); retry later")
            self.admitted += 1

    async def run(self, fn: Callable[..., T], *args: Any) -> tuple[T, float, float]:
        """Run ``fn(*args)`` in the queue's thread; returns (its result, seconds waited, seconds run).

        Raises :class:`QueueFull` at once when the queue is full. The slot is freed when the job ends, even if
        the awaiting request was cancelled meanwhile (a job that never started is dropped)."""
        self._admit()
        queued = time.perf_counter()
        times = [0.0, 0.0]

        def job() -> T:
            start = time.perf_counter()
            times[0] = start - queued
            with self._lock:
                self.running += 1
            ok = False
            try:
                result = fn(*args)
                ok = True
                return result
            finally:
                times[1] = time.perf_counter() - start
                with self._lock:
                    self.running -= 1
                    self.done += ok
                    self.failed += not ok

        def release(_: object) -> None:
            with self._lock:
                self.admitted -= 1

        try:
            future = self._executor.submit(job)
        except RuntimeError:  # shut down
            release(None)
            raise QueueFull("server shutting down; retry on another instance") from None
        future.add_done_callback(release)
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise
        return result, times[0], times[1]

    def shutdown(self) -> None:
        """Finish the running and waiting jobs, then stop the thread."""
        self._executor.shutdown(wait=True)
