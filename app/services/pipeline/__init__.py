"""The pipeline: dedup -> classify -> enrich -> correlate -> route, over batches of event ids.

Each stage is a function from batch to batch (see `batch.py`) run by its own Celery task
(`pipeline.dedup`, `pipeline.classify`, ...); results travel forward in the task arguments and the
route stage writes each incident row once. Every stage is idempotent."""

from __future__ import annotations

from app.services.pipeline.batch import Batch, empty_batch, pack_outbox
from app.services.pipeline.classification import classify
from app.services.pipeline.correlation import correlate
from app.services.pipeline.dedup import BrokenEvent, deduplicate
from app.services.pipeline.enrichment import enrich
from app.services.pipeline.routing import route_and_persist

STAGES = ("pipeline.dedup", "pipeline.classify", "pipeline.enrich", "pipeline.correlate", "pipeline.route")


def process_outbox(outbox_ids: list[int]) -> int:
    """All stages in this process (the CLI and tests of the services use it; workers run the chain)."""
    return route_and_persist(correlate(enrich(classify(deduplicate(outbox_ids)))))


__all__ = ["Batch", "BrokenEvent", "STAGES", "classify", "correlate", "deduplicate", "empty_batch", "enrich",
           "pack_outbox", "process_outbox", "route_and_persist"]
