"""Bounded per-camera frame queue: drop-oldest for live sources, blocking for files."""
import threading
import time

import pytest

from ultrares_stream.frame_queue import FrameQueue, QueueClosed


def test_drop_oldest_keeps_newest_and_counts_drops():
    dropped = []
    q = FrameQueue(3, "drop_oldest", on_drop=dropped.append)
    for i in range(10):
        assert q.put(i)
        assert q.depth <= 3
    assert q.depth == 3
    assert q.dropped == 7 and dropped == list(range(7))
    assert [q.get(0) for _ in range(3)] == [7, 8, 9]
    assert q.get(0.01) is None


def test_block_policy_loses_nothing_and_keeps_order():
    q = FrameQueue(2, "block")
    got = []

    def consume():
        while True:
            item = q.get(5)
            if item is None:
                return
            got.append(item)
            time.sleep(0.001)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(200):
        assert q.put(i, timeout=5)
        assert q.depth <= 2
    q.close()
    t.join(10)
    assert got == list(range(200))
    assert q.dropped == 0


def test_blocking_put_times_out_when_full():
    q = FrameQueue(1, "block")
    q.put("a")
    t0 = time.monotonic()
    assert q.put("b", timeout=0.2) is False
    assert 0.15 < time.monotonic() - t0 < 2
    assert q.get(0) == "a" and q.depth == 0


def test_wait_time_is_measured():
    q = FrameQueue(2)
    q.put("x")
    time.sleep(0.05)
    item, waited = q.get_with_wait(0)
    assert item == "x" and waited >= 0.04


def test_close_wakes_consumers_and_refuses_puts():
    q = FrameQueue(2, "block")
    result = []
    t = threading.Thread(target=lambda: result.append(q.get(10)))
    t.start()
    time.sleep(0.05)
    q.close()
    t.join(2)
    assert result == [None]
    with pytest.raises(QueueClosed):
        q.put(1)
    assert q.drained()


def test_waker_called_on_put():
    calls = []
    q = FrameQueue(2, waker=lambda: calls.append(1))
    q.put(1)
    q.put(2)
    assert len(calls) == 2


def test_bad_arguments():
    with pytest.raises(ValueError):
        FrameQueue(0)
    with pytest.raises(ValueError):
        FrameQueue(2, "lossy")
