"""Benchmark of playbooks (a throwaway Postgres database, in-process, no worker):

1. The route stage's hook: `playbooks.auto_start` on a batch of 1,000 new incidents, inside a
   transaction that is rolled back, with 0 stored playbooks (the floor: one SELECT), 20 that match
   nothing, and 20 of which one matches 10 % of the incidents (100 runs written). Median of rounds.
2. One step's machinery: a run of 20 `assign` steps executed by `playbooks.advance` in this process
   (claim + execute + record per step), against the step's own work done 20 times directly
   (`incidents.patch`, the same change) in the same run: the ratio is the cost of the guarantees.

    flock /tmp/im-bench.lock .venv/bin/python -m bench.playbooks [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timezone
from typing import Any, Callable

from bench.common import make_environment

INSERT_INCIDENTS = """
INSERT INTO incidents (id, title, description, source, severity, status, fingerprint, event_count, first_seen,
  last_seen, created_at, updated_at, tags, sla_acknowledge_breached, sla_resolve_breached, escalation_level)
SELECT 'INC-20270101-' || lpad(g::text, 5, '0'), 'Prompt Injection Detected', '', 'llm-shield', 'P2', 'NEW',
  md5(g::text), 1, now(), now(), now(), now(), '{}'::jsonb, false, false, 0
FROM generate_series(0, 999) AS g
"""


def _median_ms(run: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    environment = make_environment()
    os.environ.update(environment.env)
    try:
        from app.adapters.db import new_session
        from app.config import reset_settings_cache
        from app.services import escalation_config as config
        from app.services import incidents, playbooks

        reset_settings_cache()
        from sqlalchemy import text

        from app.adapters.db import get_engine

        with get_engine().begin() as conn:  # the incidents the hook's timeline rows refer to
            conn.execute(text(INSERT_INCIDENTS))
        batch = [{"id": f"INC-20270101-{i:05d}", "severity": "P0" if i % 10 == 0 else "P2", "category": "security",
                  "event_type": "violation", "source": "llm-shield", "title": "Prompt Injection Detected",
                  "tags": {"user_id": f"user-{i}"}} for i in range(1000)]

        def hook() -> None:
            session = new_session()
            try:
                playbooks.auto_start(session, batch, datetime.now(timezone.utc))
            finally:
                session.rollback()
                session.close()

        results: dict[str, Any] = {"load": open("/proc/loadavg").read().split()[:3]}
        results["hook_no_playbooks_ms"] = _median_ms(hook, args.rounds)
        step = {"type": "wait", "params": {"seconds": 1}}
        for i in range(20):
            config.create_object(config.PLAYBOOK, config.load(config.PLAYBOOK, {
                "name": f"never-{i}", "triggers": {"severity": ["P4"], "source": [f"other-{i}"]}, "steps": [step]}))
        results["hook_20_playbooks_none_match_ms"] = _median_ms(hook, args.rounds)
        config.update_object(config.PLAYBOOK, "never-0", {"triggers": {"severity": ["P0"],
                                                                       "event_type": ["prompt_injection"]}})
        results["hook_20_playbooks_100_runs_ms"] = _median_ms(hook, args.rounds)

        incident_id = _manual_incident()
        config.create_object(config.PLAYBOOK, config.load(config.PLAYBOOK, {"name": "assign-20", "steps": [
            {"name": f"a{i}", "type": "assign", "params": {"assignee": f"user-{i}"}} for i in range(20)]}))

        def steps() -> None:
            run = playbooks.start_run(incident_id, "assign-20", "bench")
            for _ in range(20):
                playbooks.advance(run["id"])
            assert playbooks.get_run(run["id"])["status"] == "succeeded"

        def direct() -> None:
            for i in range(20):
                incidents.patch(incident_id, "bench", {"assignee": f"direct-{i}"})

        results["direct_20_patches_ms"] = _median_ms(direct, args.rounds)
        results["run_of_20_assign_steps_ms"] = _median_ms(steps, args.rounds)
        results["per_step_ms"] = round(results["run_of_20_assign_steps_ms"] / 20, 2)
        results["ratio_run_vs_direct"] = round(
            results["run_of_20_assign_steps_ms"] / results["direct_20_patches_ms"], 2)
        results["ratio_hook_100_runs_vs_floor"] = round(
            results["hook_20_playbooks_100_runs_ms"] / results["hook_no_playbooks_ms"], 2)
        print(json.dumps(results, indent=2))
    finally:
        environment.close()


def _manual_incident() -> str:
    from app.domain.ingest import NewEvent
    from app.services.incidents import create_manual

    incident, _ = create_manual(NewEvent(source="manual", event_id="bench-1", title="bench", raw={},
                                         severity="P2"))
    return str(incident["id"])


if __name__ == "__main__":
    main()
