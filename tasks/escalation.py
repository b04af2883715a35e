"""Escalation tasks (queue `escalation`): beat's sweep and SLA check. Thin: the work is in
`app.services.escalation` and `app.services.sla_monitor`. Neither takes arguments or carries state,
so a replayed or duplicated run finds nothing left to do."""

from __future__ import annotations

from typing import Any

from tasks.celery_app import app


@app.task(name="escalation.sweep")
def sweep() -> dict[str, Any]:
    """Beat: page the next level of every incident whose `next_escalation_at` has passed."""
    from app.services.escalation import sweep as run

    result = run()
    return {"fired": result.fired, "stopped": result.stopped, "deliveries": result.deliveries,
            "batches": result.batches, "seconds": round(result.seconds, 3)}


@app.task(name="sla.check")
def sla_check() -> dict[str, int]:
    """Beat: flag open incidents past their acknowledge or resolve deadline (once each)."""
    from app.services.sla_monitor import check

    return check()


@app.task(name="analytics.rollup")
def analytics_rollup() -> dict[str, object]:
    """Beat: roll up closed days for the incident analytics (docs/escalation.md "Analytics")."""
    from app.services.analytics import rollup

    return rollup()
