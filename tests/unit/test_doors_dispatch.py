"""The background hand-off to Redis: an idle process sends at once; commits made while the sender
waits for its next turn share one round trip."""

from __future__ import annotations

import threading
import time
from typing import Sequence

import pytest

from tasks import dispatch


class HeldSleep:
    """Stands in for time.sleep: records each wait and returns only when the test releases it."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.asked = threading.Event()
        self.release = threading.Event()

    def __call__(self, secs: float) -> None:
        self.waits.append(secs)
        self.asked.set()
        assert self.release.wait(10)


def wait_until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], list[tuple[str, str]]]]:
    sent: list[tuple[list[int], list[tuple[str, str]]]] = []

    def record(ids: Sequence[int], announcements: Sequence[tuple[str, str]] = ()) -> None:
        sent.append((list(ids), list(announcements)))

    monkeypatch.setattr(dispatch, "dispatch_pipeline", record)
    return sent


def test_an_idle_sender_sends_at_once_and_a_busy_one_joins_what_arrives_while_it_waits(trips):
    sleep = HeldSleep()
    sender = dispatch._BackgroundDispatch(min_interval_secs=60, sleep=sleep)
    sender([1], announcements=[("changes", "opened INC-1")])
    wait_until(lambda: len(trips) == 1, "the first trip")
    assert trips == [([1], [("changes", "opened INC-1")])] and sleep.waits == []  # nothing waited for

    sender([2])
    assert sleep.asked.wait(10)  # the sender waits for its next turn (60 s after the first trip)
    assert 59 < sleep.waits[0] <= 60
    sender([3, 4], announcements=[("changes", "opened INC-3")])
    sender([5])
    sleep.release.set()
    wait_until(lambda: len(trips) == 2, "the second trip")
    assert trips[1] == ([2, 3, 4, 5], [("changes", "opened INC-3")])  # one round trip for three commits


def test_flush_sends_what_is_still_queued(trips):
    sleep = HeldSleep()
    sender = dispatch._BackgroundDispatch(min_interval_secs=60, sleep=sleep)
    sender([1])
    wait_until(lambda: len(trips) == 1, "the first trip")
    sender([2])
    assert sleep.asked.wait(10)  # the sender holds [2] until its turn
    sender([3])
    sender.flush()  # what atexit does
    assert trips[1] == ([3], [])
    sleep.release.set()
    wait_until(lambda: len(trips) == 3, "the held id")
    assert trips[2] == ([2], [])
