"""The manager's lock: a waiting render goes before background work (training steps) that wants the model."""

from __future__ import annotations

import threading
import time

from studio.engine.turns import ModelLock


def _wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.001)


def test_a_busy_training_loop_lets_each_render_in_after_at_most_one_step():
    """The loop re-takes the lock right after releasing it (Python locks are not fair); renders still get in."""
    lock = ModelLock()
    steps = [0]
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            with lock.background():
                steps[0] += 1
                busy = time.perf_counter() + 0.003
                while time.perf_counter() < busy:  # holds the GIL, like a training step's Python work
                    pass

    worker = threading.Thread(target=loop)
    worker.start()
    waited = []
    try:
        _wait_until(lambda: steps[0] > 0)
        for _ in range(10):
            before = steps[0]
            with lock.priority():
                waited.append(steps[0] - before)
            time.sleep(0.005)
    finally:
        stop.set()
        worker.join(5)
    assert max(waited) <= 1, waited


def test_background_work_runs_at_once_when_no_render_waits():
    lock = ModelLock()
    with lock.background():
        assert lock.owned()
    assert not lock.owned()


def test_background_inside_the_lock_does_not_wait_for_itself():
    lock = ModelLock()
    done = []
    with lock:
        waiter = threading.Thread(target=lambda: lock.priority().__enter__())
        waiter.daemon = True  # blocks until we release: a render queued behind us
        waiter.start()
        _wait_until(lambda: lock.waiting == 1)
        with lock.background():  # we already hold the model: no deadlock waiting for that render
            done.append(True)
    assert done == [True]
