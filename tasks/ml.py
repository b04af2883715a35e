"""ML tasks (queue `ml`): beat's retrain check and an on-demand training. Thin: the work is in
`ml.training`."""

from __future__ import annotations

import logging
from typing import Any

from tasks.celery_app import app

log = logging.getLogger(__name__)


@app.task(name="ml.check_retrain")
def check_retrain() -> dict[str, Any] | None:
    """Beat: retrain when at least `ml.training_batch_size` new training samples exist."""
    from ml.training import train_if_due

    result = train_if_due(actor="beat")
    return result.as_dict() if result is not None else None


@app.task(name="ml.train")
def train_model(actor: str = "api", force: bool = False) -> dict[str, Any]:
    """Train now (the not-worse gate decides activation unless `force`)."""
    from ml.training import train_new_version

    return train_new_version(trigger="requested", actor=actor, force=force).as_dict()
