"""The analytics rollup (Postgres): closed days rolled up by beat's `analytics.rollup` answer the same
counts, means and SLA figures as the incidents themselves, and percentiles within half a histogram
bucket; a day whose incidents change after its rollup is read from the incidents until it is rolled
up again, including a change committed while the rollup ran; concurrent runs agree."""

from __future__ import annotations

import random
import threading
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import numpy as np
import psycopg
import pytest
from sqlalchemy import insert, text

from app.adapters import analytics_sql
from app.adapters.db import get_engine, read_session, unit_of_work
from app.adapters.models import Incident
from app.config import reset_settings_cache
from tests.conftest import wait_for

TODAY = datetime.now(timezone.utc).date()
FIRST_DAY = TODAY - timedelta(days=8)
DAYS = 6  # FIRST_DAY .. FIRST_DAY + 5, all closed and settled
# The rollups below run "at noon today" (a run in the first minutes after midnight would not take
# yesterday yet, which test_a_day_is_rolled_up_once_it_settled checks on purpose).
# Half a bucket: a bucket's middle is within a factor sqrt(1.05) of every value in it.
REL = analytics_sql.BUCKET_RATIO ** 0.5 - 1 + 1e-9


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=timezone.utc)


NOON = midnight(TODAY) + timedelta(hours=12)


def make_rows(per_day: int = 150, seed: int = 5) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for d in range(DAYS):
        for _ in range(per_day):
            created = midnight(FIRST_DAY + timedelta(days=d)) + timedelta(seconds=rng.randint(0, 86_399))
            status = rng.choice(["NEW", "ACKNOWLEDGED", "RESOLVED", "CLOSED"])
            acked = created + timedelta(seconds=rng.uniform(1, 3_600)) if status != "NEW" else None
            resolved = (created + timedelta(seconds=rng.uniform(600, 200_000))
                        if status in ("RESOLVED", "CLOSED") else None)
            n = len(rows) + 1
            rows.append({
                "id": f"INC-ROLLUP-{n:05d}", "title": "t", "description": "",
                "source": rng.choice(["sentinel", "shield", "edge"]),
                "severity": rng.choice(["P0", "P1", "P2", "P3"]), "category": rng.choice(["performance", None]),
                "team": rng.choice(["ml", "platform", None]), "status": status, "fingerprint": f"fp{n}",
                "event_count": 1, "first_seen": created, "last_seen": created, "created_at": created,
                "updated_at": created, "tags": {}, "acknowledged_at": acked, "resolved_at": resolved,
                "escalation_level": 0, "sla_acknowledge_breached": rng.random() < 0.2,
                "sla_resolve_breached": rng.random() < 0.1,
                "merged_into": "INC-ROLLUP-00001" if n % 97 == 0 else None,  # merged: not counted
            })
    return rows


def expected(rows: list[dict[str, Any]], key: str | None, start: datetime, end: datetime) -> dict[Any, dict[str, Any]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        if row["merged_into"] is None and start <= row["created_at"] < end:
            groups.setdefault(row[key] if key else "all", []).append(row)
    out = {}
    for group, members in groups.items():
        mtta = [(r["acknowledged_at"] - r["created_at"]).total_seconds() for r in members if r["acknowledged_at"]]
        mttr = [(r["resolved_at"] - r["created_at"]).total_seconds() for r in members if r["resolved_at"]]
        out[group] = {
            "count": len(members), "acknowledged": len(mtta), "resolved": len(mttr),
            "mtta_secs": {"mean": float(np.mean(mtta)), "p50": float(np.percentile(mtta, 50)),
                          "p90": float(np.percentile(mtta, 90))},
            "mttr_secs": {"mean": float(np.mean(mttr)), "p50": float(np.percentile(mttr, 50)),
                          "p90": float(np.percentile(mttr, 90))},
            "breached": sum(1 for r in members if r["sla_acknowledge_breached"] or r["sla_resolve_breached"]),
        }
    return out


def check(result: dict[str, Any], rows: list[dict[str, Any]], key: str | None, start: datetime, end: datetime,
          estimated: bool) -> None:
    assert result["percentiles"] == ("estimated" if estimated else "exact")
    want = expected(rows, key, start, end)
    got = {g["key"]: g for g in result["groups"]} if key else {"all": result["totals"]}
    assert set(got) == set(want)
    for group, figures in want.items():
        for field in ("count", "acknowledged", "resolved"):
            assert got[group][field] == figures[field], (group, field)
        assert got[group]["sla"]["compliance"] == round(1 - figures["breached"] / figures["count"], 4)
        for metric in ("mtta_secs", "mttr_secs"):
            # means come from exact sums in either case
            assert got[group][metric]["mean"] == pytest.approx(figures[metric]["mean"], abs=0.002), (group, metric)
            for stat in ("p50", "p90"):
                if estimated:
                    assert got[group][metric][stat] == pytest.approx(figures[metric][stat], rel=REL, abs=0.001), (
                        group, metric, stat)
                else:
                    assert got[group][metric][stat] == pytest.approx(figures[metric][stat], abs=0.002)


@pytest.fixture
def exact_max(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Set `escalation.analytics_exact_max_incidents` through config.yaml."""
    def set_to(value: int) -> None:
        config = tmp_path / "config.yaml"
        config.write_text(f"escalation:\n  analytics_exact_max_incidents: {value}\n")
        monkeypatch.setenv("CONFIG_FILE", str(config))
        reset_settings_cache()
    yield set_to
    reset_settings_cache()


def seed(rows: list[dict[str, Any]]) -> None:
    with get_engine().begin() as conn:
        conn.execute(insert(Incident), rows)


def metrics(client: Any, headers: dict[str, str], start: datetime, end: datetime, key: str | None) -> dict[str, Any]:
    query = f"from={start.isoformat().replace('+00:00', 'Z')}&to={end.isoformat().replace('+00:00', 'Z')}"
    response = client.get(f"/api/v1/metrics/incidents?{query}" + (f"&group_by={key}" if key else ""), headers=headers)
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json())


def dirty_days() -> set[date]:
    with read_session() as session:
        return {r[0] for r in session.execute(text("SELECT DISTINCT day FROM analytics_dirty"))}


def test_bucket_sql_matches_python(db):
    values = [0.0, 0.0004, 0.001, 0.00105, 1.0, 59.99, 3600.0, 86_400.0 * 400]
    with read_session() as session:
        got = [session.execute(text(f"SELECT {analytics_sql._bucket_sql(':v')}"), {"v": v}).scalar() for v in values]
    assert got == [analytics_sql.bucket_of(v) for v in values]
    for v in values[2:]:
        assert analytics_sql.bucket_value(analytics_sql.bucket_of(v)) == pytest.approx(v, rel=REL)


def test_rolled_up_days_answer_the_same_figures(client, admin_key, exact_max):
    from app.services.analytics import rollup

    rows = make_rows()
    seed(rows)
    headers = {"X-API-Key": admin_key}
    # inserting into closed days marked them; nothing is rolled up yet: every answer is exact
    assert dirty_days() == {FIRST_DAY + timedelta(days=d) for d in range(DAYS)}
    first = rollup(now=NOON)
    assert first["days"] == (TODAY - FIRST_DAY).days  # every closed day up to yesterday, empty ones too
    assert dirty_days() == set()
    assert rollup(now=NOON)["days"] == 0  # nothing left to do
    with read_session() as session:
        assert session.execute(text("SELECT sum(incidents) FROM analytics_days")).scalar() == sum(
            1 for r in rows if r["merged_into"] is None)
    # a range with partial first and last days: the middle days from the rollup, the edges raw
    start = midnight(FIRST_DAY) + timedelta(hours=5, minutes=17)
    end = midnight(FIRST_DAY + timedelta(days=DAYS - 1)) + timedelta(hours=7)
    exact_max(0)
    for key in (None, "severity", "category", "team", "source"):
        check(metrics(client, headers, start, end, key), rows, key, start, end, estimated=True)
    whole = (midnight(FIRST_DAY), midnight(TODAY))
    check(metrics(client, headers, *whole, "team"), rows, "team", *whole, estimated=True)
    # below the threshold the same range is computed exactly from the incidents
    exact_max(100_000)
    check(metrics(client, headers, start, end, "severity"), rows, "severity", start, end, estimated=False)


def test_a_changed_day_is_read_exactly_until_it_is_rolled_up_again(client, admin_key, exact_max):
    from app.services.analytics import rollup

    rows = make_rows(per_day=60, seed=9)
    seed(rows)
    rollup(now=NOON)
    exact_max(0)
    headers = {"X-API-Key": admin_key}
    whole = (midnight(FIRST_DAY), midnight(TODAY))
    target = next(r for r in rows if r["status"] == "NEW" and r["merged_into"] is None)
    answered = client.post(f"/api/v1/incidents/{target['id']}/acknowledge", json={"acknowledged_by": "alice"},
                           headers=headers)
    assert answered.status_code == 200, answered.get_json()
    with read_session() as session:
        target["acknowledged_at"] = session.execute(text("SELECT acknowledged_at FROM incidents WHERE id = :id"),
                                                    {"id": target["id"]}).scalar()
    target["status"] = "ACKNOWLEDGED"
    day = target["created_at"].date()
    assert dirty_days() == {day}
    # before the next rollup: that day comes from the incidents, the answer is already exact
    check(metrics(client, headers, *whole, "severity"), rows, "severity", *whole, estimated=True)
    assert rollup(now=NOON)["days"] == 1 and dirty_days() == set()
    check(metrics(client, headers, *whole, "severity"), rows, "severity", *whole, estimated=True)
    # a change to today's incidents marks nothing (today is never rolled up)
    with unit_of_work() as session:
        session.execute(insert(Incident), [{**rows[0], "id": "INC-TODAY-1", "fingerprint": "today",
                                            "created_at": datetime.now(timezone.utc)}])
    assert dirty_days() == set()


def test_a_change_committed_while_the_day_is_rolled_up_keeps_its_mark(client, admin_key, exact_max, test_env):
    from app.services.analytics import rollup

    rows = make_rows(per_day=40, seed=13)
    seed(rows)
    rollup(now=NOON)
    exact_max(0)
    target = next(r for r in rows if r["status"] == "ACKNOWLEDGED" and r["merged_into"] is None)
    day = target["created_at"].date()
    resolved_at = target["created_at"] + timedelta(hours=2)
    # a writer changes an incident of `day` and commits only after the day was rolled up again
    with psycopg.connect(test_env["DATABASE_URL"].replace("postgresql+psycopg", "postgresql")) as writer:
        writer.execute("UPDATE incidents SET status = 'RESOLVED', resolved_at = %s WHERE id = %s",
                       (resolved_at, target["id"]))
        with unit_of_work() as session:  # marks are read before the figures, the writer's is not committed
            analytics_sql.rollup_day(session, day)
        writer.commit()
    target.update(status="RESOLVED", resolved_at=resolved_at)
    assert dirty_days() == {day}
    whole = (midnight(FIRST_DAY), midnight(TODAY))
    check(metrics(client, {"X-API-Key": admin_key}, *whole, "source"), rows, "source", *whole, estimated=True)
    rollup(now=NOON)
    assert dirty_days() == set()
    check(metrics(client, {"X-API-Key": admin_key}, *whole, "source"), rows, "source", *whole, estimated=True)


def test_concurrent_rollups_agree(db):
    from app.services.analytics import rollup

    seed(make_rows(per_day=80, seed=21))
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(rollup(now=NOON))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with read_session() as session:
        repeated = session.execute(text(
            "SELECT day, dim, key, count(*) FROM analytics_daily GROUP BY day, dim, key HAVING count(*) > 1")).all()
        days = session.execute(text("SELECT count(*), sum(incidents) FROM analytics_days")).one()
    assert repeated == []
    assert days[0] == (TODAY - FIRST_DAY).days and days[1] == sum(
        1 for r in make_rows(per_day=80, seed=21) if r["merged_into"] is None)


def test_a_day_is_rolled_up_once_it_settled(db):
    from app.services.analytics import rollup

    seed(make_rows(per_day=10, seed=3))
    yesterday = TODAY - timedelta(days=1)
    # 5 minutes after midnight yesterday has not settled (600 s): rolled up to the day before
    assert rollup(now=midnight(TODAY) + timedelta(minutes=5))["days"] == (yesterday - FIRST_DAY).days
    with read_session() as session:
        assert session.execute(text("SELECT max(day) FROM analytics_days")).scalar() == yesterday - timedelta(days=1)
    assert rollup(now=midnight(TODAY) + timedelta(minutes=11))["days"] == 1


def test_beat_runs_the_rollup(db, start_worker, monkeypatch):
    monkeypatch.setenv("ANALYTICS_ROLLUP_SECS", "0.5")
    seed(make_rows(per_day=10, seed=4))
    start_worker(beat=True)

    def rolled() -> bool:
        with read_session() as session:
            # every seeded day (and up to yesterday, unless this runs in the minutes after midnight)
            return session.execute(text("SELECT count(*) FROM analytics_days")).scalar() >= DAYS

    wait_for(rolled, timeout=30, message="beat's analytics.rollup rolled up the closed days")
    assert dirty_days() == set()
