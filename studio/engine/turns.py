"""The manager's lock, shared by renders and background work (training) on the same model.

It is a re-entrant lock (``with lock:``) with one rule on top: a render waiting for the
model goes before background work. A training run takes the lock for one optimizer step
at a time through :meth:`ModelLock.background`, which first waits until no render is
queued; a render (:meth:`ModelLock.priority`) therefore waits at most for the step that
is running, never for the whole run. Python's own locks are not fair (a thread that
releases and re-acquires at once usually wins), hence the explicit count of waiters.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ModelLock:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._state = threading.Condition(threading.Lock())
        self._waiting = 0

    def __enter__(self) -> ModelLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    @property
    def waiting(self) -> int:
        """How many renders are waiting for the model now."""
        return self._waiting

    def owned(self) -> bool:
        """Whether the calling thread holds the lock."""
        return self._lock._is_owned()

    @contextlib.contextmanager
    def priority(self) -> Iterator[None]:
        """Hold the lock, ahead of any background work that wants it."""
        with self._state:
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._state:
                self._waiting -= 1
                self._state.notify_all()
        try:
            yield
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def background(self) -> Iterator[None]:
        """Hold the lock once no render is waiting for it (immediately when this thread holds it)."""
        if not self.owned():
            with self._state:
                self._state.wait_for(lambda: self._waiting == 0)
        with self:
            yield
