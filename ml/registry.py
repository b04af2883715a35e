"""Model registry: versions persisted as joblib files (SHA-256 checked) plus a DB row each.

* Files live in `ml.model_path` (relative paths are under DATA_DIR), one `<version>.joblib` each,
  written to a temporary name and renamed, so a reader never sees half a file.
* Exactly one row is `active` (a partial unique index enforces it). `activate` loads and verifies a
  file before switching to it: a corrupted or missing file is refused with a clear error and the
  active version stays.
* `load_active_classifier()` is what `ml.interface.get_classifier()` calls in every worker and web
  process: it keeps the loaded model in memory and looks at the active row at most every
  `REFRESH_SECS`, so a newly activated version is served without a restart. If the new active file
  cannot be loaded, the process keeps serving the model it has (or, in a fresh process, the most
  recently active version that does load) and logs the error.

Files are pickles: only files whose checksum matches their DB row are ever unpickled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import joblib
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from app.adapters.db import read_session, unit_of_work
from app.adapters.ml_models import ModelVersion
from app.config import get_settings

log = logging.getLogger(__name__)

REFRESH_SECS = 5.0


class ModelLoadError(RuntimeError):
    """A model file is missing, altered (checksum) or not a model of ours."""


class RegistryError(RuntimeError):
    """An operator's request that cannot be carried out (unknown version, nothing to roll back to)."""


def model_dir() -> Path:
    """`ml.model_path`, under DATA_DIR when relative."""
    settings = get_settings()
    path = Path(settings.ml.model_path)
    return path if path.is_absolute() else (settings.data_dir / path).resolve()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_version_file(file_path: str, checksum: str) -> Any:
    """Load and verify a model file. Raises ModelLoadError saying what is wrong."""
    from ml.classifier import IncidentClassifier

    path = Path(file_path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    actual = sha256_of(path)
    if actual != checksum:
        raise ModelLoadError(f"model file {path} is corrupted: SHA-256 {actual[:12]}… does not match the "
                             f"registered {checksum[:12]}…")
    try:
        model = joblib.load(path)
    except Exception as exc:  # unpickling a damaged file can raise almost anything
        raise ModelLoadError(f"model file {path} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, IncidentClassifier):
        raise ModelLoadError(f"model file {path} holds a {type(model).__name__}, not an IncidentClassifier")
    return model


def version_to_dict(row: ModelVersion) -> dict[str, Any]:
    return {
        "version": row.version,
        "status": row.status,
        "active": row.active,
        "trained_at": row.trained_at.isoformat().replace("+00:00", "Z"),
        "activated_at": row.activated_at.isoformat().replace("+00:00", "Z") if row.activated_at else None,
        "training_size": row.training_size,
        "feedback_samples": row.feedback_samples,
        "held_out_score": row.held_out_score,
        "metrics": row.metrics,
        "file": os.path.basename(row.file_path),
        "checksum": row.checksum,
        "trained_by": row.trained_by,
        "notes": row.notes,
    }


def list_versions() -> list[dict[str, Any]]:
    """Every version, newest first."""
    with read_session() as session:
        rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc()))
        return [version_to_dict(r) for r in rows]


def active_version_row() -> ModelVersion | None:
    with read_session() as session:
        return session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))).first()


def store_version(model: Any, training_size: int, feedback_samples: int, metrics: dict[str, Any], score: float,
                  actor: str, notes: str | None = None) -> dict[str, Any]:
    """Write the model file (atomically) and its row, as a candidate."""
    directory = model_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{model.version}.joblib"
    partial = path.with_suffix(".joblib.partial")
    joblib.dump(model, partial, compress=3)
    os.replace(partial, path)
    checksum = sha256_of(path)
    with unit_of_work() as session:
        row = ModelVersion(version=model.version, trained_at=datetime.now(timezone.utc), training_size=training_size,
                           feedback_samples=feedback_samples, metrics=metrics, held_out_score=score, active=False,
                           status="candidate", file_path=str(path), checksum=checksum, trained_by=actor, notes=notes)
        session.add(row)
        session.flush()
        return version_to_dict(row)


def activate(version: str, actor: str = "system") -> dict[str, Any]:
    """Make `version` the active one after checking its file loads. Raises RegistryError /
    ModelLoadError (the active version is then unchanged)."""
    with read_session() as session:
        target = session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()
    if target is None:
        raise RegistryError(f"no model version {version!r}")
    load_version_file(target.file_path, target.checksum)  # refuse a file that would not serve
    return _switch_to(version, actor, previous_status="retired")


def _switch_to(version: str, actor: str, previous_status: str) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        current = session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True)).with_for_update()).first()
        target = session.scalars(select(ModelVersion).where(ModelVersion.version == version).with_for_update()).one()
        if current is not None and current.version != version:
            current.active = False
            current.status = previous_status
            session.flush()  # the partial unique index allows one active row at a time
        target.active = True
        target.status = "active"
        target.activated_at = now
        session.flush()
        result = version_to_dict(target)
    log.info("model version activated", extra={"version": version, "actor": actor,
                                              "previous": current.version if current is not None else None})
    invalidate()
    return result


def rollback(actor: str = "system") -> dict[str, Any]:
    """Go back to the version that was active before the current one (skipping versions already
    rolled back from and files that no longer load). Raises RegistryError when there is none."""
    current = active_version_row()
    if current is None:
        raise RegistryError("no active model version to roll back from")
    with read_session() as session:
        previous = list(session.scalars(
            select(ModelVersion).where(ModelVersion.status == "retired", ModelVersion.activated_at.is_not(None))
            .order_by(ModelVersion.activated_at.desc())))
    errors = []
    for row in previous:
        try:
            load_version_file(row.file_path, row.checksum)
        except ModelLoadError as exc:
            errors.append(str(exc))
            continue
        return _switch_to(row.version, actor, previous_status="rolled_back")
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise RegistryError(f"no earlier version to roll back to from {current.version}{detail}")


# ------------------------------------------------------------------------------ the serving cache

@dataclass
class _Cache:
    model: Any = None
    version: str | None = None
    checked_at: float = 0.0
    failed_version: str | None = None  # the active version whose file did not load (logged once)


_cache = _Cache()
_cache_lock = threading.Lock()


def invalidate() -> None:
    """Look at the active row on the next `load_active_classifier()` call."""
    _cache.checked_at = 0.0


def reset_cache() -> None:
    """Forget the loaded model (tests, settings changes)."""
    global _cache
    with _cache_lock:
        _cache = _Cache()


def load_active_classifier() -> Any:
    """The active model (cached; re-checked at most every REFRESH_SECS), or None when ML
    classification is disabled or no version loads."""
    settings = get_settings()
    if not (settings.ml.enabled and settings.enable_ml_classification):
        return None
    now = time.monotonic()
    if _cache.checked_at and now - _cache.checked_at < REFRESH_SECS:
        return _cache.model
    with _cache_lock:
        if _cache.checked_at and time.monotonic() - _cache.checked_at < REFRESH_SECS:
            return _cache.model
        _refresh()
        _cache.checked_at = time.monotonic()
        return _cache.model


def _refresh() -> None:
    try:
        row = active_version_row()
    except SQLAlchemyError as exc:
        log.warning("cannot read the active model version; serving the loaded one",
                    extra={"error": str(exc), "version": _cache.version})
        return
    if row is None:
        _cache.model, _cache.version = None, None
        return
    if row.version == _cache.version:
        return
    try:
        model = load_version_file(row.file_path, row.checksum)
    except ModelLoadError as exc:
        if _cache.failed_version != row.version:
            log.error("active model version cannot be loaded; keeping the previous one",
                      extra={"version": row.version, "error": str(exc), "serving": _cache.version})
            _cache.failed_version = row.version
        if _cache.model is None:
            _load_fallback(exclude=row.version)
        return
    _cache.model, _cache.version, _cache.failed_version = model, row.version, None
    log.info("model version loaded", extra={"version": row.version})


def _load_fallback(exclude: str) -> None:
    """A fresh process whose active file is broken: serve the most recently active version that loads."""
    with read_session() as session:
        rows = list(session.scalars(select(ModelVersion).where(ModelVersion.version != exclude,
                                                                ModelVersion.activated_at.is_not(None))
                                    .order_by(ModelVersion.activated_at.desc())))
    for row in rows:
        try:
            _cache.model, _cache.version = load_version_file(row.file_path, row.checksum), row.version
        except ModelLoadError:
            continue
        log.warning("serving a previously active model version", extra={"version": row.version})
        return


def serving_version() -> str | None:
    """The version this process serves right now (None: the rules classifier)."""
    load_active_classifier()
    return _cache.version


__all__ = ["ModelLoadError", "RegistryError", "activate", "active_version_row", "invalidate", "list_versions",
           "load_active_classifier", "load_version_file", "model_dir", "reset_cache", "rollback",
           "serving_version", "store_version"]
