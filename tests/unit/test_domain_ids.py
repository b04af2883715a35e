"""Incident ids: INC-YYYYMMDD-NNNNN, UTC day, at least five digits, growing past 99999."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from app.domain.ids import format_incident_id, is_incident_id, parse_incident_id, utc_day


@pytest.mark.parametrize("number,expected", [
    (1, "INC-20251111-00001"),
    (42, "INC-20251111-00042"),
    (99999, "INC-20251111-99999"),
    (100000, "INC-20251111-100000"),
    (1234567, "INC-20251111-1234567"),
])
def test_format(number, expected):
    assert format_incident_id(date(2025, 11, 11), number) == expected


@pytest.mark.parametrize("number", [0, -1])
def test_sequence_starts_at_one(number):
    with pytest.raises(ValueError):
        format_incident_id(date(2025, 11, 11), number)


def test_parse_round_trip():
    for number in (1, 99999, 100000, 31337000):
        value = format_incident_id(date(2024, 2, 29), number)
        assert parse_incident_id(value) == (date(2024, 2, 29), number)


@pytest.mark.parametrize("value", [
    "INC-20251111-00042", "INC-20251111-100000",
])
def test_valid_ids(value):
    assert is_incident_id(value)


@pytest.mark.parametrize("value", [
    "INC-2025-12345",          # the guide's diagram shows this; the contract's format wins
    "INC-20251111-0042",       # fewer than five digits
    "inc-20251111-00042", "INC-20251111-00042 ", "INC-251111-00042", "20251111-00042", "INC-20251111-", "",
])
def test_invalid_ids(value):
    assert not is_incident_id(value)
    with pytest.raises(ValueError):
        parse_incident_id(value)


def test_utc_day_uses_utc_not_local_time():
    # 23:30 at UTC-5 on Nov 11 is Nov 12 in UTC
    moment = datetime(2025, 11, 11, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert utc_day(moment) == date(2025, 11, 12)
    assert utc_day(datetime(2025, 11, 11, 0, 0, tzinfo=timezone.utc)) == date(2025, 11, 11)
    assert utc_day() == datetime.now(timezone.utc).date()
