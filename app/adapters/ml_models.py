"""Tables of the ML classifier: model versions (one row per trained model file) and training
samples (human labels from feedback and from resolutions with a corrected severity)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import Boolean, Float, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.adapters.models import Base, BigIntPK, JSONType, UTCDateTime, utcnow


class ModelVersion(Base):
    """A trained model: its joblib file (checksummed), held-out metrics and lifecycle state.

    `status`: `active` (exactly one at most, enforced by a partial unique index), `candidate`
    (trained, not activated: the "not worse" gate refused it, or trained with `--no-activate`),
    `retired` (was active, replaced), `rolled_back` (was active, an operator rolled back from it)."""

    __tablename__ = "ml_model_versions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    trained_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    training_size: Mapped[int] = mapped_column(Integer)
    feedback_samples: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)
    held_out_score: Mapped[float] = mapped_column(Float)  # severity macro-F1 on the held-out set
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    activated_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    file_path: Mapped[str] = mapped_column(String(1000))
    checksum: Mapped[str] = mapped_column(String(64))  # SHA-256 of the file
    trained_by: Mapped[str] = mapped_column(String(200), default="system")
    notes: Mapped[Optional[str]] = mapped_column(Text, nullable=True)

    __table_args__ = (
        Index("uq_ml_model_versions_active", "active", unique=True,
              postgresql_where=text("active"), sqlite_where=text("active = 1")),
    )


class TrainingSample(Base):
    """A labelled example from people: `origin` is `feedback` (POST …/feedback) or `resolution`
    (a resolve that carried a corrected severity). `consumed_by` is the first model version whose
    training saw it (NULL: new, counts toward `ml.training_batch_size`)."""

    __tablename__ = "ml_training_samples"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    incident_id: Mapped[Optional[str]] = mapped_column(String(32), nullable=True, index=True)
    origin: Mapped[str] = mapped_column(String(20))
    features: Mapped[dict[str, Any]] = mapped_column(JSONType)  # the ClassifierInput fields
    severity: Mapped[Optional[str]] = mapped_column(String(2), nullable=True)
    category: Mapped[Optional[str]] = mapped_column(String(100), nullable=True)
    predicted_severity: Mapped[Optional[str]] = mapped_column(String(2), nullable=True)
    predicted_category: Mapped[Optional[str]] = mapped_column(String(100), nullable=True)
    model_version: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    consumed_by: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        Index("ix_ml_training_samples_pending", "created_at",
              postgresql_where=text("consumed_by IS NULL"), sqlite_where=text("consumed_by IS NULL")),
    )
