"""The pipeline: dedup -> classify -> enrich -> correlate -> route, over batches of event ids.

Each stage is a function from batch to batch (see `batch.py`); the route stage writes each incident
row once. Every stage is idempotent. By default one Celery task (`pipeline.batch`) runs the five
stages of a batch in one process (`run_batch`): the batch is handed from stage to stage as a Python
value, never serialized between stages. Each stage stays visible to operators by name: its time
per batch in `incident_manager_processing_duration_seconds{stage}`, in the task's result (Flower)
and in the batch's log line. `PIPELINE_STAGE_TASKS=true` runs each stage as its own task instead
(`pipeline.dedup`, `pipeline.classify`, ...; the batch travels as JSON in the task arguments)."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from app.config import Settings
from app.services.pipeline.batch import Batch, empty_batch, pack_outbox
from app.services.pipeline.classification import classify
from app.services.pipeline.correlation import correlate
from app.services.pipeline.dedup import BrokenEvent, deduplicate
from app.services.pipeline.enrichment import enrich
from app.services.pipeline.routing import route_and_persist

STAGES = ("pipeline.dedup", "pipeline.classify", "pipeline.enrich", "pipeline.correlate", "pipeline.route")

# (stage name as in the metrics' `stage` label, the stage's function), in order
STAGE_FUNCTIONS: tuple[tuple[str, Callable[[Any, Settings | None], Any]], ...] = (
    ("dedup", deduplicate), ("classify", classify), ("enrich", enrich), ("correlate", correlate),
    ("route", route_and_persist),
)


def run_batch(outbox_ids: Sequence[int], settings: Settings | None = None) -> dict[str, Any]:
    """The five stages over one batch in this process, the batch passed from stage to stage as it
    is (no serialization); `settings` None: each stage reads the process's own, as its task would.
    Returns {"events": finished, "incidents": new ones, "stages_ms": {stage:
    wall ms}} (each stage also records its own `processing_duration_seconds{stage}`)."""
    value: Any = list(outbox_ids)
    timings: dict[str, float] = {}
    incidents = 0
    for name, stage in STAGE_FUNCTIONS:
        began = time.perf_counter()
        value = stage(value, settings)
        timings[name] = round((time.perf_counter() - began) * 1000, 1)
        if name == "dedup":
            incidents = len(value["incidents"])
    return {"events": int(value), "incidents": incidents, "stages_ms": timings}


def process_outbox(outbox_ids: list[int]) -> int:
    """All stages in this process; the number of events finished."""
    return int(run_batch(outbox_ids)["events"])


__all__ = ["Batch", "BrokenEvent", "STAGES", "STAGE_FUNCTIONS", "classify", "correlate", "deduplicate", "empty_batch",
           "enrich", "pack_outbox", "process_outbox", "route_and_persist", "run_batch"]
