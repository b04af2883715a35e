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
