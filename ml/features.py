"""Feature extraction: one `ClassifierInput` -> two views of the same event.

* the **sparse view** (linear and naive-Bayes members): TF-IDF of the text (title, description,
  event type; words and word pairs, sublinear tf), one-hot categoricals (source, event type,
  source category, resource type, source severity, scalar tags) and numeric metrics as
  `log1p(|value|)` scaled to 0..1 by the largest value seen in training (non-negative, as complement
  naive Bayes needs), plus a flag for events that sent none of the known metrics;
* the **dense view** (the gradient-boosting member): the categoricals as ordinal codes (the
  trees' native categorical splits; unseen levels are missing), the raw values of the metrics seen
  often enough in training (missing ones as NaN, which the trees handle natively), the mapped
  source severity as a number, and flags for the words that tell most about the severity in the
  training data (chi-squared; "confirmed", "all regions", "suspected", ...), so the trees see the
  qualifiers that move a severity as well as the numbers.

Everything is vectorised over a batch: the only per-event Python is building one small dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction import DictVectorizer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.feature_selection import chi2

from app.domain.severity import SEVERITIES, map_source_severity
from ml.interface import ClassifierInput

# Longer tag values are ids or free text: they would only add noise to the one-hot block.
MAX_TAG_VALUE_CHARS = 40
MIN_METRIC_SHARE = 0.01  # a metric must appear in >= 1 % of training rows to get a dense column
ORDINAL_TAGS = ("environment", "tier")
KEYWORD_FLAGS = 40
MAX_LEVELS = 250  # the trees' categorical splits take at most 255 levels (codes beyond are "other")


@dataclass
class FeatureViews:
    """The two matrices of one batch."""

    sparse: sp.csr_matrix
    dense: np.ndarray


def text_of(item: ClassifierInput) -> str:
    """The text the vectorizer reads: title, description and the event type as words."""
    event_type = (item.event_type or "").replace("_", " ").replace("-", " ")
    return f"{item.title} {item.description} {event_type}"


def categoricals_of(item: ClassifierInput) -> dict[str, float]:
    """One-hot categorical features as a dict (`name=value` -> 1)."""
    features: dict[str, float] = {
        f"source={item.source.lower()}": 1.0,
        f"event_type={(item.event_type or '').lower()}": 1.0,
        f"category={(item.category or '').lower()}": 1.0,
        f"resource_type={(item.resource_type or '').lower()}": 1.0,
        f"source_severity={(item.source_severity or '').strip().lower()}": 1.0,
    }
    for key, value in item.tags.items():
        if isinstance(value, (str, int, float)):  # bool is an int
            text = str(value).lower()
            if len(text) <= MAX_TAG_VALUE_CHARS:
                features[f"tag:{str(key).lower()}={text}"] = 1.0
    return features


def ordinals_of(item: ClassifierInput) -> tuple[str, ...]:
    """The categorical fields the trees read, as strings (coded by the fitted extractor)."""
    return ((item.source or "").lower(), (item.event_type or "").lower(), (item.category or "").lower(),
            (item.resource_type or "").lower(), (item.source_severity or "").strip().lower(),
            *(str(item.tags.get(tag, "")).lower() for tag in ORDINAL_TAGS))


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric metrics of an event (booleans and non-numbers are dropped)."""
    result: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        number = float(value)
        if math.isfinite(number):
            result[str(key).lower()] = number
    return result


class FeatureExtractor:
    """Learns the vocabulary, categorical levels and metric scales from training inputs."""

    def __init__(self, max_text_features: int = 20000) -> None:
        self.text = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=max_text_features,
                                    sublinear_tf=True, dtype=np.float32, token_pattern=r"(?u)\b[a-zA-Z][\w\-]+\b")
        self.categorical = DictVectorizer(dtype=np.float32)
        self.metric_names: list[str] = []
        self.metric_scale = np.ones(0, dtype=np.float32)
        self.levels: list[dict[str, int]] = []
        self.keyword_columns = np.zeros(0, dtype=np.int64)
        self.fitted = False

    # -------------------------------------------------------------------------------- fitting

    def fit(self, items: Sequence[ClassifierInput], target: Sequence[str] | None = None) -> "FeatureExtractor":
        """Learn vocabulary, categorical levels and metric columns from `items`; with `target`
        (the severities), also the keywords the trees get as flags."""
        text = self.text.fit_transform([text_of(i) for i in items])
        if target is not None and text.shape[1]:
            scores, _ = chi2(text, np.asarray(target))
            self.keyword_columns = np.sort(np.argsort(-np.nan_to_num(scores))[:KEYWORD_FLAGS])
        self.categorical.fit([categoricals_of(i) for i in items])
        columns = list(zip(*(ordinals_of(i) for i in items)))
        self.levels = []
        for values in columns:
            frequent = sorted(set(values), key=lambda v: (-values.count(v), v))[:MAX_LEVELS]
            self.levels.append({v: code for code, v in enumerate(sorted(frequent))})
        counts: dict[str, int] = {}
        peaks: dict[str, float] = {}
        for item in items:
            for key, value in numeric_metrics(item.metrics).items():
                counts[key] = counts.get(key, 0) + 1
                peaks[key] = max(peaks.get(key, 0.0), math.log1p(abs(value)))
        minimum = max(1, int(MIN_METRIC_SHARE * len(items)))
        self.metric_names = sorted(k for k, c in counts.items() if c >= minimum)
        self.metric_scale = np.array([peaks[k] or 1.0 for k in self.metric_names], dtype=np.float32)
        self.fitted = True
        return self

    # -------------------------------------------------------------------------------- transform

    def transform(self, items: Sequence[ClassifierInput]) -> FeatureViews:
        """Both views of a batch; unseen words, levels and metrics are ignored."""
        if not self.fitted:
            raise RuntimeError("FeatureExtractor.transform called before fit")
        n = len(items)
        text = self.text.transform([text_of(i) for i in items])
        categorical = self.categorical.transform([categoricals_of(i) for i in items])
        index = {name: j for j, name in enumerate(self.metric_names)}
        raw = np.full((n, len(self.metric_names)), np.nan, dtype=np.float32)
        source_level = np.empty((n, 1), dtype=np.float32)
        codes = np.full((n, len(self.levels)), np.nan, dtype=np.float32)
        for row, item in enumerate(items):
            for j, value in enumerate(ordinals_of(item)):
                code = self.levels[j].get(value)
                if code is not None:
                    codes[row, j] = code
            for key, value in item.metrics.items():
                j = index.get(str(key).lower())
                if j is not None and not isinstance(value, bool) and isinstance(value, (int, float)):
                    raw[row, j] = value
            source_level[row, 0] = SEVERITIES.index(map_source_severity(item.source_severity))
        raw[~np.isfinite(raw)] = np.nan
        scaled = np.nan_to_num(np.log1p(np.abs(raw)) / self.metric_scale, nan=0.0)
        np.clip(scaled, 0.0, 1.0, out=scaled)
        # "Sent no metric we know" is not "every metric near zero": its own column, so the linear
        # members can learn what such events are (manual incidents, new kinds of alerts).
        no_metrics = (~np.isfinite(raw)).all(axis=1, keepdims=True).astype(np.float32) if raw.shape[1] else \
            np.ones((n, 1), dtype=np.float32)
        sparse = sp.hstack([text, categorical, sp.csr_matrix(scaled), sp.csr_matrix(no_metrics)], format="csr",
                           dtype=np.float32)
        keywords = (text[:, self.keyword_columns] > 0).toarray().astype(np.float32)
        dense = np.hstack([codes, raw, source_level, keywords])
        return FeatureViews(sparse=sparse, dense=dense)

    @property
    def categorical_mask(self) -> np.ndarray:
        """Which dense columns are categorical codes (for the trees' native categorical splits)."""
        mask = np.zeros(len(self.levels) + len(self.metric_names) + 1 + len(self.keyword_columns), dtype=bool)
        mask[: len(self.levels)] = True
        return mask

    @property
    def sizes(self) -> dict[str, int]:
        """Column counts per block (for the model card)."""
        return {"text": len(self.text.vocabulary_), "categorical": len(self.categorical.feature_names_),
                "metrics": len(self.metric_names), "keywords": len(self.keyword_columns)}


def inputs_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[ClassifierInput]:
    """ClassifierInputs from dict rows (CSV rows with JSON tags/metrics, or stored samples)."""
    import json

    result: list[ClassifierInput] = []
    for row in rows:
        tags = row.get("tags") or {}
        metrics = row.get("metrics") or {}
        if isinstance(tags, str):
            tags = json.loads(tags) if tags else {}
        if isinstance(metrics, str):
            metrics = json.loads(metrics) if metrics else {}
        result.append(ClassifierInput(
            title=str(row.get("title") or ""), description=str(row.get("description") or ""),
            source=str(row.get("source") or ""), event_type=row.get("event_type") or None,
            category=row.get("category") or None, resource_type=row.get("resource_type") or None,
            source_severity=row.get("source_severity") or None, tags=tags, metrics=metrics,
        ))
    return result
