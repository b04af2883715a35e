"""Dedup fingerprints (stable, SHA-256 of source|event_type|title|sorted resource/service ids) and
SLA deadlines per severity."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from app.domain import sla
from app.domain.fingerprint import fingerprint, resource_ids

BASE = {
    "source": "llm-sentinel", "event_type": "anomaly", "title": "Latency Spike Detected",
    "resource": {"type": "endpoint", "id": "ep-chat-completion"}, "tags": {"service": "chat-api"},
}


def test_known_value():
    expected = hashlib.sha256(b"llm-sentinel|anomaly|latency spike detected|chat-api,ep-chat-completion").hexdigest()
    assert fingerprint(BASE) == expected
    assert len(fingerprint(BASE)) == 64


def test_stable_across_key_order_tag_order_and_calls():
    reordered = {"tags": {"service": "chat-api", "env": "prod"}, "title": "Latency Spike Detected",
                 "resource": {"id": "ep-chat-completion", "type": "endpoint", "name": "x"},
                 "event_type": "anomaly", "source": "llm-sentinel", "description": "differs", "severity": "low"}
    assert fingerprint(reordered) == fingerprint(BASE) == fingerprint(dict(BASE))


def test_title_case_and_surrounding_space_do_not_matter():
    assert fingerprint({**BASE, "title": "  LATENCY spike detected "}) == fingerprint(BASE)


@pytest.mark.parametrize("change", [
    {"source": "llm-shield"}, {"event_type": "violation"}, {"title": "Error Rate Spike"},
    {"resource": {"type": "endpoint", "id": "ep-embeddings"}}, {"tags": {"service": "other"}},
])
def test_each_field_matters(change):
    assert fingerprint({**BASE, **change}) != fingerprint(BASE)


def test_resource_and_service_ids_are_sorted_and_unique():
    assert resource_ids({"resource": {"id": "b"}, "service": "a", "tags": {"service": "a", "service_id": "c"}}) == [
        "a", "b", "c"]
    one = fingerprint({**BASE, "resource": {"id": "zzz"}, "service": "aaa", "tags": {}})
    two = fingerprint({**BASE, "resource": {"id": "aaa"}, "service": "zzz", "tags": {}})
    assert one == two


def test_explicit_dedup_key_wins_but_stays_per_source():
    a = fingerprint({**BASE, "dedup_key": "k1"})
    assert a == fingerprint({**BASE, "title": "anything else", "dedup_key": "k1"})
    assert a != fingerprint({**BASE, "dedup_key": "k2"})
    assert a != fingerprint({**BASE, "source": "pagerduty", "dedup_key": "k1"})


def test_configurable_fields():
    fields = ("source", "title")
    assert fingerprint({**BASE, "event_type": "x"}, fields) == fingerprint(BASE, fields)
    assert fingerprint({**BASE, "event_type": "x"}) != fingerprint(BASE)


def test_missing_fields_are_stable():
    assert fingerprint({"source": "s", "title": "t"}) == fingerprint({"source": "s", "title": "t", "event_type": None})


CREATED = datetime(2025, 11, 11, 10, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize("severity,resolve_secs", [
    ("P0", 15 * 60), ("P1", 3600), ("P2", 4 * 3600), ("P3", 24 * 3600), ("P4", 72 * 3600),  # CONTRACT.md
])
def test_resolve_deadlines_of_the_contract(severity, resolve_secs):
    d = sla.deadlines(severity, CREATED)
    assert d.resolve_by == CREATED + timedelta(seconds=resolve_secs)
    assert CREATED < d.acknowledge_by <= d.resolve_by


def test_acknowledge_targets_tighten_with_severity():
    acks = [sla.deadlines(s, CREATED).acknowledge_by for s in ("P0", "P1", "P2", "P3", "P4")]
    assert acks == sorted(acks) and len(set(acks)) == 5
    assert acks[0] == CREATED + timedelta(minutes=5)


def test_unknown_severity_has_no_sla():
    with pytest.raises(KeyError):
        sla.deadlines("P9", CREATED)
