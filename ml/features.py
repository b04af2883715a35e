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
import re
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
import scipy.sparse as sp
from sklearn.feature_selection import chi2
from sklearn.preprocessing import normalize

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


def categoricals_of(item: ClassifierInput) -> list[str]:
    """The one-hot categorical features of an event (`name=value`)."""
    names = [
        f"source={(item.source or '').lower()}",
        f"event_type={(item.event_type or '').lower()}",
        f"category={(item.category or '').lower()}",
        f"resource_type={(item.resource_type or '').lower()}",
        f"source_severity={(item.source_severity or '').strip().lower()}",
    ]
    for key, value in (item.tags or {}).items():
        if isinstance(value, (str, int, float)):  # bool is an int
            text = str(value).lower()
            if len(text) <= MAX_TAG_VALUE_CHARS:
                names.append(f"tag:{str(key).lower()}={text}")
    return names


def ordinals_of(item: ClassifierInput) -> tuple[str, ...]:
    """The categorical fields the trees read, as strings (coded by the fitted extractor)."""
    tags = item.tags or {}
    environment, tier = ORDINAL_TAGS
    return ((item.source or "").lower(), (item.event_type or "").lower(), (item.category or "").lower(),
            (item.resource_type or "").lower(), (item.source_severity or "").strip().lower(),
            str(tags.get(environment, "")).lower(), str(tags.get(tier, "")).lower())


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


def lookup_matrix(columns: Mapping[Any, int], rows: Sequence[Sequence[Any]]) -> sp.csr_matrix:
    """Counts of known names per row as CSR (unknown names dropped). The lookups run in C
    (`map(dict.get, names, repeat(-1))`); misses are removed with numpy afterwards."""
    indices: list[int] = []
    indptr = [0]
    get = columns.get
    for names in rows:
        indices.extend(map(get, names, repeat(-1)))
        indptr.append(len(indices))
    index = np.array(indices, dtype=np.int32)
    missing = index < 0
    index[missing] = 0
    data = (~missing).astype(np.float32)
    matrix = sp.csr_matrix((data, index, np.array(indptr, dtype=np.int64)), shape=(len(rows), len(columns)))
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix


TOKEN = re.compile(r"\b[a-z][\w\-]+\b")
Term = Union[str, tuple[str, str]]  # a word, or a pair of adjacent words


class TextVectorizer:
    """TF-IDF over words and word pairs (sublinear tf, smoothed idf, L2-normalised rows), the
    same weighting as scikit-learn's TfidfVectorizer, with a tokenizer that does one regex pass
    and one dict lookup per term: the batch path spends its time here, so it is kept lean."""

    def __init__(self, min_df: int = 2, max_features: int = 20000) -> None:
        self.min_df = min_df
        self.max_features = max_features
        self.vocabulary_: dict[Term, int] = {}
        self.idf = np.zeros(0, dtype=np.float32)

    @staticmethod
    def terms(text: str) -> list[Term]:
        """Words, then word pairs as tuples (made by zip in C: no string formatting per pair)."""
        words: list[str] = TOKEN.findall(text.lower())
        terms: list[Term] = list(words)
        terms.extend(zip(words, words[1:], strict=False))
        return terms

    @staticmethod
    def term_name(term: Term) -> str:
        return term if isinstance(term, str) else " ".join(term)

    def fit_transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        document_frequency: dict[Term, int] = {}
        for text in texts:
            for term in set(self.terms(text)):
                document_frequency[term] = document_frequency.get(term, 0) + 1
        kept = [t for t, df in document_frequency.items() if df >= self.min_df]
        kept = sorted(sorted(kept, key=self.term_name), key=lambda t: -document_frequency[t])[: self.max_features]
        ordered = sorted(kept, key=self.term_name)
        self.vocabulary_ = {term: j for j, term in enumerate(ordered)}
        df = np.array([document_frequency[t] for t in ordered], dtype=np.float64)
        self.idf = (np.log((1 + len(texts)) / (1 + df)) + 1.0).astype(np.float32)
        return self.transform(texts)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        matrix = lookup_matrix(self.vocabulary_, [self.terms(text) for text in texts])
        matrix.data = (1.0 + np.log(matrix.data)) * self.idf[matrix.indices]
        return normalize(matrix, norm="l2", copy=False)


class FeatureExtractor:
    """Learns the vocabulary, categorical levels and metric scales from training inputs."""

    def __init__(self, max_text_features: int = 20000) -> None:
        self.text = TextVectorizer(min_df=2, max_features=max_text_features)
        self.categorical_columns: dict[str, int] = {}
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
        names = sorted({name for i in items for name in categoricals_of(i)})
        self.categorical_columns = {name: j for j, name in enumerate(names)}
        columns = list(zip(*(ordinals_of(i) for i in items), strict=True))
        self.levels = []
        for values in columns:
            frequent = sorted(set(values), key=lambda v: (-values.count(v), v))[:MAX_LEVELS]
            self.levels.append({v: code for code, v in enumerate(sorted(frequent))})
        counts: dict[str, int] = {}
        peaks: dict[str, float] = {}
        for item in items:
            for key, value in numeric_metrics(item.metrics or {}).items():
                counts[key] = counts.get(key, 0) + 1
                peaks[key] = max(peaks.get(key, 0.0), math.log1p(abs(value)))
        minimum = max(1, int(MIN_METRIC_SHARE * len(items)))
        self.metric_names = sorted(k for k, c in counts.items() if c >= minimum)
        self.metric_scale = np.array([peaks[k] or 1.0 for k in self.metric_names], dtype=np.float32)
        self.fitted = True
        return self

    # -------------------------------------------------------------------------------- transform

    def transform(self, items: Sequence[ClassifierInput]) -> FeatureViews:
        """Both views of a batch; unseen words, levels and metrics are ignored. One Python pass
        over the batch; the rest is numpy/scipy."""
        if not self.fitted:
            raise RuntimeError("FeatureExtractor.transform called before fit")
        n = len(items)
        metric_index = {name: j for j, name in enumerate(self.metric_names)}
        texts: list[str] = []
        categorical_names: list[list[str]] = []
        code_rows: list[list[float]] = []
        metric_rows: list[int] = []
        metric_columns: list[int] = []
        metric_values: list[float] = []
        levels: list[int] = []
        severity_levels: dict[str | None, int] = {}
        nan = float("nan")
        for row, item in enumerate(items):
            texts.append(text_of(item))
            categorical_names.append(categoricals_of(item))
            # dict.get(level, value, nan) for each categorical, in C
            code_rows.append(list(map(dict.get, self.levels, ordinals_of(item), repeat(nan))))
            for key, value in (item.metrics or {}).items():
                column = metric_index.get(key) if key in metric_index else metric_index.get(str(key).lower())
                if column is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                    metric_rows.append(row)
                    metric_columns.append(column)
                    metric_values.append(value)
            level = severity_levels.get(item.source_severity)
            if level is None:
                level = severity_levels[item.source_severity] = SEVERITIES.index(
                    map_source_severity(item.source_severity))
            levels.append(level)
        codes = np.array(code_rows, dtype=np.float32).reshape(n, len(self.levels))
        raw = np.full((n, len(self.metric_names)), np.nan, dtype=np.float32)
        raw[metric_rows, metric_columns] = np.array(metric_values, dtype=np.float64)
        source_level = np.array(levels, dtype=np.float32).reshape(n, 1)
        text = self.text.transform(texts)
        categorical = lookup_matrix(self.categorical_columns, categorical_names)
        categorical.data[:] = 1.0  # one-hot, even if a tag repeats a name
        raw[~np.isfinite(raw)] = np.nan
        scaled = np.nan_to_num(np.log1p(np.abs(raw)) / self.metric_scale, nan=0.0)
        np.clip(scaled, 0.0, 1.0, out=scaled)
        # "Sent no metric we know" is not "every metric near zero": its own column, so the linear
        # members can learn what such events are (manual incidents, new kinds of alerts).
        no_metrics = np.isnan(raw).all(axis=1, keepdims=True).astype(np.float32)
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
        return {"text": len(self.text.vocabulary_), "categorical": len(self.categorical_columns),
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
