"""A task for the dead-letter CLI test (imported by the worker through IM_EXTRA_TASK_MODULES).
It fails while its flag file exists and records every run, so the test can see the retries, the
dead letter, and the replay's successful run."""

from __future__ import annotations

from pathlib import Path

from tasks.celery_app import app


@app.task(name="ops.test_flaky_until_fixed")
def flaky_until_fixed(record_path: str) -> str:
    path = Path(record_path)
    failing = Path(record_path + ".fail").exists()
    with path.open("a") as handle:
        handle.write("fail\n" if failing else "ok\n")
    if failing:
        raise RuntimeError("downstream still broken")
    return "ok"
