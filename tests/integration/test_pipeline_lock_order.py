"""Incident row locks: one global order (fingerprint, then id: `INCIDENT_LOCK_ORDER`), taken up front.

Before this order, two pipeline batches deadlocked about every 3 s at 1,000 new incidents/s: the
route stage locked its own incidents in id order, then stamped the group on earlier root incidents
that another batch's route held. Each deadlock cost Postgres's 1 s `deadlock_timeout` and a retry,
and put p95 accept -> processed at 1.3 s (docs/pipeline.md, "Issue 11, third round"). These tests
pause one transaction while it holds its locks and show the other no longer closes a cycle: with
the old lock taking, each of them ends in a deadlock and a re-run. And route's write of a new
incident stays on the row's page (fillfactor 30): no new index entries."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import text

from app import metrics
from app.adapters.db import get_engine
from app.services import pipeline
from app.services.pipeline import routing
from tests.conftest import wait_for
from tests.integration.test_pipeline_fused import _events, _fresh_state, _ingest

pytestmark = pytest.mark.integration


def _route_retries() -> float:
    return float(metrics.DB_RETRIES.labels(operation="pipeline route", sqlstate="40P01")._value.get())


def _until_route(outbox_ids: list[int]) -> Any:
    """The batch as the route stage receives it: the first four stages run here."""
    value: Any = outbox_ids
    for name, stage in pipeline.STAGE_FUNCTIONS:
        if name == "route":
            return value
        value = stage(value, None)
    raise AssertionError("no route stage")


def _waiting_on_a_lock(fragment: str) -> bool:
    with get_engine().connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
            "AND query LIKE :q"), {"q": f"%{fragment}%"}).scalar())


def _incidents() -> list[tuple[str, str, int]]:
    """(id, fingerprint, page) of every incident."""
    with get_engine().connect() as conn:
        return [(r[0], r[1], int(r[2])) for r in conn.execute(text(
            "SELECT id, fingerprint, (ctid::text::point)[0] FROM incidents ORDER BY id"))]


def _run(target: Any, *args: Any) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def go() -> None:
        try:
            target(*args)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, errors


def test_route_writes_new_incidents_on_their_own_pages(db, test_env):
    """The route stage's one write of each new incident (classification, enrichment, group, team)
    finds room on the row's page: the row does not move, so no index gets a new entry (HOT)."""
    _fresh_state(test_env)
    outbox = _ingest(_events("p", 0, 120))
    before = {incident_id: page for incident_id, _, page in _incidents()}
    assert pipeline.run_batch(outbox)["events"] == 120
    after = {incident_id: page for incident_id, _, page in _incidents()}
    with get_engine().connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM incidents WHERE processed_at IS NULL "
                                 "OR enrichment IS NULL")).scalar() == 0
    assert len(before) == 60 and after == before


def test_route_waits_for_ingest_instead_of_deadlocking_with_it(db, test_env):
    """Ingest's upsert locks open incidents in fingerprint order. A route batch holding one incident
    while waiting for another that ingest holds, and ingest then wanting the first, is a cycle: the
    route stage takes its locks in the same order, so it waits holding nothing ingest wants next."""
    _fresh_state(test_env)
    batch = _until_route(_ingest(_events("i", 0, 40)))
    rows = _incidents()
    by_id = sorted(rows)
    by_fingerprint = sorted(rows, key=lambda r: (r[1], r[0]))
    # two incidents the two orders disagree on: `first` comes first by fingerprint, last by id
    first, second = next((a, b) for a in by_fingerprint for b in by_id
                         if a[1] < b[1] and a[0] > b[0])
    retries = _route_retries()
    engine = get_engine()
    with engine.connect() as ingest:  # stands for an ingest batch merging into both, in fingerprint order
        ingest.execute(text("SET lock_timeout = '5s'"))
        ingest.execute(text("SELECT 1 FROM incidents WHERE id = :id FOR NO KEY UPDATE"), {"id": first[0]})
        thread, errors = _run(routing.route_and_persist, batch)
        wait_for(lambda: _waiting_on_a_lock("FOR UPDATE"), 10, message="the route stage waiting for `first`")
        # the route stage holds nothing ingest needs next (it would hold `second` if it locked by id)
        ingest.execute(text("SELECT 1 FROM incidents WHERE id = :id FOR NO KEY UPDATE"), {"id": second[0]})
        ingest.commit()
    thread.join(30)
    assert not thread.is_alive() and errors == []
    assert _route_retries() == retries, "no deadlock was lost and re-run"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM incidents WHERE processed_at IS NULL")).scalar() == 0


def test_two_route_batches_stamping_each_others_roots_do_not_deadlock(db, test_env, monkeypatch):
    """Batch A's groups have a root in batch B and B's a root in A. The route stage used to lock its
    own incidents, then stamp the roots: A held its rows and wanted B's root, B held its rows and
    wanted A's. Now each locks its incidents and its roots in one ordered statement, so one waits."""
    _fresh_state(test_env)
    batch_a = _until_route(_ingest(_events("ra", 0, 8)))
    batch_b = _until_route(_ingest(_events("rb", 100, 8)))
    ids_a = sorted(s["id"] for s in batch_a["incidents"])
    ids_b = sorted(s["id"] for s in batch_b["incidents"])
    batch_a["correlation_roots"] = {ids_b[0]: "CG-root-of-a"}
    batch_b["correlation_roots"] = {ids_a[0]: "CG-root-of-b"}
    holding, go_on = threading.Event(), threading.Event()
    start = routing.escalation.start

    def paused_start(session: Any, routed: Any, now: Any) -> Any:
        if routed and routed[0]["id"] in ids_a:  # A: inside its transaction, locks held
            holding.set()
            assert go_on.wait(20)
        return start(session, routed, now)

    monkeypatch.setattr(routing.escalation, "start", paused_start)
    retries = _route_retries()
    thread_a, errors_a = _run(routing.route_and_persist, batch_a)
    assert holding.wait(20)
    thread_b, errors_b = _run(routing.route_and_persist, batch_b)
    wait_for(lambda: _waiting_on_a_lock("incidents"), 10, message="batch B waiting for batch A")
    go_on.set()
    thread_a.join(30)
    thread_b.join(30)
    assert not thread_a.is_alive() and not thread_b.is_alive()
    assert errors_a == [] and errors_b == []
    assert _route_retries() == retries, "no deadlock was lost and re-run"
    with get_engine().connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM incidents WHERE processed_at IS NULL")).scalar() == 0
