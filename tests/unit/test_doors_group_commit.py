"""GroupCommitter: concurrent submitters share transactions, each gets its own result, and one
failing event does not fail the others of its group."""

from __future__ import annotations

import threading
import time
from typing import Sequence

import pytest

from app.services.group_commit import GroupCommitter
from app.services.ingest import IngestResult, NewEvent


def event(event_id: str) -> NewEvent:
    return NewEvent(source="llm-shield", event_id=event_id, title="t", raw={})


class SlowStore:
    """Records each group it is asked to store; refuses events whose id starts with 'bad'."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, events: Sequence[NewEvent]) -> list[IngestResult]:
        with self.lock:
            self.groups.append([e.event_id for e in events])
        time.sleep(0.02)  # a commit takes a while: later submitters pile up behind it
        if any(e.event_id.startswith("bad") for e in events):
            raise RuntimeError("constraint violated")
        return [IngestResult("accepted", e.event_id, f"INC-{e.event_id}") for e in events]


def submit_all(committer: GroupCommitter, ids: list[str]) -> dict[str, object]:
    outcomes: dict[str, object] = {}

    def run(event_id: str) -> None:
        try:
            outcomes[event_id] = committer.submit(event(event_id))
        except Exception as exc:  # the caller of a failed event sees its error
            outcomes[event_id] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return outcomes


def test_concurrent_submits_are_grouped_and_each_gets_its_result():
    store = SlowStore()
    ids = [f"e{i}" for i in range(16)]
    outcomes = submit_all(GroupCommitter(store), ids)
    assert {k: v.incident_id for k, v in outcomes.items()} == {i: f"INC-{i}" for i in ids}  # type: ignore[union-attr]
    assert len(store.groups) < len(ids)  # some shared a transaction
    assert sorted(i for g in store.groups for i in g) == sorted(ids)  # each stored exactly once


def test_a_failing_event_is_isolated():
    store = SlowStore()
    outcomes = submit_all(GroupCommitter(store), ["a", "bad", "b", "c"])
    assert isinstance(outcomes["bad"], RuntimeError)
    for ok in ("a", "b", "c"):
        assert isinstance(outcomes[ok], IngestResult) and outcomes[ok].status == "accepted"


def test_a_single_submit_commits_alone():
    store = SlowStore()
    result = GroupCommitter(store).submit(event("solo"))
    assert result.incident_id == "INC-solo" and store.groups == [["solo"]]


@pytest.mark.parametrize("size", [1, 3])
def test_max_batch_bounds_a_group(size):
    store = SlowStore()
    submit_all(GroupCommitter(store, max_batch=size), [f"m{i}" for i in range(9)])
    assert max(len(g) for g in store.groups) <= size


class GatedStore:
    """Holds its first commit until the test opens the gate; records groups and concurrency."""

    def __init__(self, fail_group: int | None = None) -> None:
        self.groups: list[list[str]] = []
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.fail_group = fail_group

    def __call__(self, events: Sequence[NewEvent]) -> list[IngestResult]:
        with self.lock:
            self.groups.append([e.event_id for e in events])
            number = len(self.groups)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if number == 1:
                assert self.gate.wait(10)
            if number == self.fail_group:
                raise Interrupted()
            return [IngestResult("accepted", e.event_id, f"INC-{e.event_id}") for e in events]
        finally:
            with self.lock:
                self.running -= 1


class Interrupted(BaseException):
    """Not an Exception: what a gevent.Timeout or SystemExit in the committing caller looks like."""


def start(committer: GroupCommitter, ids: list[str], outcomes: dict[str, object]) -> list[threading.Thread]:
    def run(event_id: str) -> None:
        try:
            outcomes[event_id] = committer.submit(event(event_id))
        except BaseException as exc:  # noqa: B036  # the test inspects what each caller got
            outcomes[event_id] = exc

    threads = []
    for event_id in ids:
        thread = threading.Thread(target=run, args=(event_id,))
        thread.start()
        threads.append(thread)
    return threads


def wait_until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def queue_one_by_one(committer: GroupCommitter, ids: list[str], outcomes: dict[str, object]) -> list[threading.Thread]:
    """Callers that queue behind a held commit one at a time, so their arrival order is known."""
    threads = []
    for queued, event_id in enumerate(ids, start=1):
        threads += start(committer, [event_id], outcomes)
        wait_until(lambda: len(committer._pending) >= queued, f"{event_id} to queue")  # noqa: B023  # waited for here
    return threads


def five_queued_behind_a_held_commit(
        store: GatedStore, committer: GroupCommitter) -> tuple[dict[str, object], list[threading.Thread]]:
    """"first" commits and is held; q0..q4 queue behind it in that order; then the commit goes on.
    Returns every caller's outcome and the callers' threads, all joined."""
    outcomes: dict[str, object] = {}
    threads = start(committer, ["first"], outcomes)
    wait_until(lambda: len(store.groups) == 1, "the first commit to start")
    threads += queue_one_by_one(committer, [f"q{i}" for i in range(5)], outcomes)
    store.gate.set()
    for thread in threads:
        thread.join(10)
    return outcomes, threads


def test_callers_queued_behind_a_commit_form_the_next_group_in_arrival_order():
    store = GatedStore()
    committer = GroupCommitter(store)
    outcomes, threads = five_queued_behind_a_held_commit(store, committer)
    assert store.groups == [["first"], ["q0", "q1", "q2", "q3", "q4"]]
    assert {k: v.incident_id for k, v in outcomes.items()} == {  # type: ignore[union-attr]
        i: f"INC-{i}" for i in ["first", "q0", "q1", "q2", "q3", "q4"]}


def test_an_interrupted_leader_wakes_its_group_and_passes_the_lead_on():
    store = GatedStore(fail_group=2)
    committer = GroupCommitter(store, max_batch=3)
    outcomes, threads = five_queued_behind_a_held_commit(store, committer)
    assert not any(thread.is_alive() for thread in threads)
    assert store.groups == [["first"], ["q0", "q1", "q2"], ["q3", "q4"]]
    assert isinstance(outcomes["q0"], Interrupted)  # the leader of the interrupted group
    assert all(isinstance(outcomes[i], RuntimeError) for i in ("q1", "q2"))
    assert all(isinstance(outcomes[i], IngestResult) for i in ("first", "q3", "q4"))
    assert committer.submit(event("after")).incident_id == "INC-after"  # the lead is free again


def test_parallel_lets_that_many_groups_commit_at_once():
    store = GatedStore()
    committer = GroupCommitter(store, parallel=2)
    outcomes: dict[str, object] = {}
    threads = start(committer, ["first"], outcomes)
    wait_until(lambda: len(store.groups) == 1, "the first commit to start")
    threads += start(committer, ["second"], outcomes)
    wait_until(lambda: len(store.groups) == 2, "a second group to commit beside the held one")
    assert store.most_running == 2
    store.gate.set()
    for thread in threads:
        thread.join(10)
    assert sorted(outcomes) == ["first", "second"]
