"""The incident state machine: every allowed transition passes, every other one (repeating a
state included) raises IllegalTransition. The expected table is written out here, not derived
from the code under test."""

from __future__ import annotations

import itertools

import pytest

from app.domain.incident import (
    ACTIVE_STATUSES,
    IllegalTransition,
    Status,
    check_transition,
    is_active,
)

ALL = ["NEW", "ACKNOWLEDGED", "IN_PROGRESS", "ESCALATED", "RESOLVED", "CLOSED"]

ALLOWED = {
    ("NEW", "ACKNOWLEDGED"), ("NEW", "IN_PROGRESS"), ("NEW", "ESCALATED"), ("NEW", "RESOLVED"), ("NEW", "CLOSED"),
    ("ACKNOWLEDGED", "IN_PROGRESS"), ("ACKNOWLEDGED", "ESCALATED"), ("ACKNOWLEDGED", "RESOLVED"),
    ("ACKNOWLEDGED", "CLOSED"),
    ("IN_PROGRESS", "ACKNOWLEDGED"), ("IN_PROGRESS", "ESCALATED"), ("IN_PROGRESS", "RESOLVED"),
    ("IN_PROGRESS", "CLOSED"),
    ("ESCALATED", "ACKNOWLEDGED"), ("ESCALATED", "IN_PROGRESS"), ("ESCALATED", "RESOLVED"), ("ESCALATED", "CLOSED"),
    ("RESOLVED", "CLOSED"), ("RESOLVED", "IN_PROGRESS"),  # close, or reopen (back to work)
}
FORBIDDEN = sorted(set(itertools.product(ALL, ALL)) - ALLOWED)


def test_the_six_statuses_of_the_contract():
    assert [s.value for s in Status] == ALL


@pytest.mark.parametrize("current,target", sorted(ALLOWED))
def test_allowed_transition(current, target):
    check_transition("INC-20250101-00001", current, target)  # does not raise


@pytest.mark.parametrize("current,target", FORBIDDEN)
def test_forbidden_transition(current, target):
    with pytest.raises(IllegalTransition) as info:
        check_transition("INC-20250101-00001", current, target)
    assert info.value.current == current and info.value.target == target
    assert info.value.incident_id == "INC-20250101-00001"
    assert current in str(info.value) and target in str(info.value)


@pytest.mark.parametrize("status", ALL)
def test_repeating_a_state_is_not_a_transition(status):
    with pytest.raises(IllegalTransition):
        check_transition("INC-20250101-00001", status, status)


def test_closed_is_final():
    for target in ALL:
        with pytest.raises(IllegalTransition):
            check_transition("INC-20250101-00001", "CLOSED", target)


@pytest.mark.parametrize("current,target", [("NEW", "DONE"), ("BOGUS", "RESOLVED"), ("new", "RESOLVED"), ("", "NEW")])
def test_unknown_statuses_are_illegal(current, target):
    with pytest.raises(IllegalTransition):
        check_transition("INC-20250101-00001", current, target)


def test_forbidden_list_is_what_the_contract_names():
    # the contract's example: resolving a closed or a resolved incident is a 409
    assert ("CLOSED", "RESOLVED") in FORBIDDEN and ("RESOLVED", "RESOLVED") in FORBIDDEN
    assert len(ALLOWED) + len(FORBIDDEN) == 36


def test_active_statuses():
    assert {s.value for s in ACTIVE_STATUSES} == {"NEW", "ACKNOWLEDGED", "IN_PROGRESS", "ESCALATED"}
    for status in ALL:
        assert is_active(status) == (status not in ("RESOLVED", "CLOSED"))
