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

Everything is vectorised over a batch: per event only the text is formatted and tokenised; each
distinct categorical value of a batch is spelt and looked up once, and the rest is numpy.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from itertools import chain, compress
from operator import attrgetter, methodcaller
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.feature_selection import chi2

from app.domain.severity import SEVERITIES, map_source_severity
from ml.interface import ClassifierInput

# The vectoriser lives in ml.text; its names stay importable here, where model files written before
# the split pickled them (a rollback may load one).
from ml.text import TOKEN, TermIndex, TextVectorizer, batch_words, csr_counts  # noqa: F401

# Longer tag values are ids or free text: they would only add noise to the one-hot block.
MAX_TAG_VALUE_CHARS = 40
MIN_METRIC_SHARE = 0.005  # a metric must appear in >= 0.5 % of training rows (50 of 10,000) to get a column
MIN_UNMEASURED_ROWS = 5  # metric-less training rows of an event type before such events count as grounded
ORDINAL_TAGS = ("environment", "tier")
KEYWORD_FLAGS = 40
MAX_LEVELS = 250  # the trees' categorical splits take at most 255 levels (codes beyond are "other")


@dataclass
class FeatureViews:
    """The two matrices of one batch."""

    sparse: sp.csr_matrix
    dense: np.ndarray
    grounded: np.ndarray | None = None  # per row: like what the model learnt from (`FeatureExtractor.grounded`)


CATEGORICAL_FIELDS = ("source", "event_type", "category", "resource_type", "source_severity")


def text_of(item: ClassifierInput) -> str:
    """The text the vectorizer reads: title, description and the event type as words."""
    event_type = (item.event_type or "").replace("_", " ").replace("-", " ")
    return f"{item.title} {item.description} {event_type}"


def level_of(field: str, value: str | None) -> str:
    """A categorical field's value as the features spell it (lowercased; the source severity stripped)."""
    text = value or ""
    if field == "source_severity":
        text = text.strip()
    return text.lower()


def tag_name(key: Any, value: Any) -> str | None:
    """The one-hot name of a tag (`tag:key=value`), or None for a tag that gets no column."""
    if isinstance(value, (str, int, float)):  # bool is an int
        text = str(value).lower()
        if len(text) <= MAX_TAG_VALUE_CHARS:
            return f"tag:{str(key).lower()}={text}"
    return None


def categoricals_of(item: ClassifierInput) -> list[str]:
    """The one-hot categorical features of an event (`name=value`)."""
    names = [f"{field}={level_of(field, getattr(item, field))}" for field in CATEGORICAL_FIELDS]
    names.extend(name for key, value in (item.tags or {}).items() if (name := tag_name(key, value)) is not None)
    return names


def ordinal_tag_level(value: Any) -> str:
    """An ordinal tag's value as the trees' categorical level."""
    return str(value).lower()


def ordinals_of(item: ClassifierInput) -> tuple[str, ...]:
    """The categorical fields the trees read, as strings (coded by the fitted extractor)."""
    tags = item.tags or {}
    return (*(level_of(field, getattr(item, field)) for field in CATEGORICAL_FIELDS),
            *(ordinal_tag_level(tags.get(tag, "")) for tag in ORDINAL_TAGS))


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


def _plain(key: Any) -> bool:
    """Whether `key` may stand for every value equal to it: True == 1 == 1.0 as dict keys, yet they
    print differently, so only None, strings, types and pairs of strings are merged."""
    kind = type(key)
    return key is None or kind is str or kind is type or (kind is tuple and len(key) == 2 and type(key[0]) is str
                                                          and type(key[1]) is str)


class Distinct(dict):  # type: ignore[type-arg]
    """Numbers the distinct values of a batch (`seen[number]`): batches repeat the same sources,
    event types and tags, so `per_value` computes a feature once per distinct value, and numbering
    runs in C (`map(self.__getitem__, ...)`), calling back into Python only for a new value."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def __missing__(self, key: Any) -> int:
        self.seen.append(key)
        if _plain(key):
            self[key] = len(self.seen) - 1
        return len(self.seen) - 1

    def number(self, value: Any) -> int:
        try:
            return self[value]
        except TypeError:  # unhashable (a list in a tag): a number of its own
            return self.__missing__(value)

    def numbers(self, values: Sequence[Any]) -> np.ndarray:
        try:
            return np.fromiter(map(self.__getitem__, values), dtype=np.int64, count=len(values))
        except TypeError:
            return np.fromiter(map(self.number, values), dtype=np.int64, count=len(values))


def per_value(compute: Callable[[Any], Any], values: Sequence[Any], dtype: Any = np.int64) -> np.ndarray:
    """`np.array([compute(v) for v in values], dtype)`, calling `compute` once per distinct value."""
    distinct = Distinct()
    numbers = distinct.numbers(values)
    return np.array([compute(value) for value in distinct.seen], dtype=dtype)[numbers]


def _flat(mappings: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, list[Any], list[Any]]:
    """The row, key and value of every entry of the batch's mappings (tags or metrics), in order."""
    counts = np.fromiter(map(len, mappings), dtype=np.int64, count=len(mappings))
    keys = list(chain.from_iterable(map(methodcaller("keys"), mappings)))
    values = list(chain.from_iterable(map(methodcaller("values"), mappings)))
    return np.repeat(np.arange(len(mappings)), counts), keys, values


def _csr_of_dense(block: np.ndarray) -> sp.csr_matrix:
    """`sp.csr_matrix(block)` (the non-zero values, canonical) without scipy's generic conversion."""
    rows, columns = np.nonzero(block)
    indptr = np.zeros(block.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=block.shape[0]), out=indptr[1:])
    return sp.csr_matrix((block[rows, columns], columns.astype(np.int32), indptr), shape=block.shape)


def _hstack_rows(blocks: Sequence[sp.csr_matrix]) -> sp.csr_matrix:
    """`sp.hstack(blocks, format="csr", dtype=np.float32)` of canonical CSR blocks with the same rows:
    each block's entries are copied to their place in each row, in one numpy step per block."""
    n = blocks[0].shape[0]
    per_block = [np.diff(block.indptr) for block in blocks]
    indptr = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.sum(per_block, axis=0), out=indptr[1:])
    data = np.empty(indptr[-1], dtype=np.float32)
    indices = np.empty(indptr[-1], dtype=np.int32)
    free, first_column = indptr[:-1].astype(np.int64), 0
    for block, counts in zip(blocks, per_block, strict=True):
        target = np.repeat(free - block.indptr[:-1], counts) + np.arange(block.nnz)
        data[target] = block.data
        indices[target] = block.indices + first_column
        free += counts
        first_column += block.shape[1]
    return sp.csr_matrix((data, indices, indptr), shape=(n, first_column))


# Metrics read relative to their references: a reference's name holds one of these words, and the rest
# of its name (its unit or subject: `ms`, `rpm`, `error_rate`) is part of the measured metric's name:
# `p95_latency_ms` / `threshold_ms`, `current_rpm` / `limit_rpm`, `error_rate` / `baseline_error_rate`.
REFERENCE_WORDS = {"threshold": 0, "limit": 0, "quota": 0, "budget": 0, "max": 0, "target": 0, "baseline": 1}
RELATIVE_KINDS = ("vs_threshold", "vs_baseline")


def relative_pairs(metric_names: Sequence[str]) -> list[tuple[int, int, int]]:
    """(measured column, reference column, kind) of every metric pair the rule above matches."""
    words = [set(name.split("_")) for name in metric_names]
    pairs = []
    for r, reference in enumerate(words):
        kinds = {REFERENCE_WORDS[w] for w in reference if w in REFERENCE_WORDS}
        unit = reference - REFERENCE_WORDS.keys()
        if len(kinds) != 1 or not unit:
            continue
        for m, measured in enumerate(words):
            if m != r and unit <= measured and not measured & REFERENCE_WORDS.keys():
                pairs.append((m, r, next(iter(kinds))))
    return pairs


class FeatureExtractor:
    """Learns the vocabulary, categorical levels and metric scales from training inputs."""

    def __init__(self, max_text_features: int = 20000) -> None:
        self.text = TextVectorizer(min_df=2, max_features=max_text_features)
        self.categorical_columns: dict[str, int] = {}
        self.metric_names: list[str] = []
        self.metric_scale = np.ones(0, dtype=np.float32)
        self.levels: list[dict[str, int]] = []
        self.keyword_columns = np.zeros(0, dtype=np.int64)
        # Event types the model learnt from events that carried no known metric (manual reports,
        # feedback on a new pattern): such events of these types are grounded without metrics.
        self.unmeasured_event_types: frozenset[str] = frozenset()
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
        raw = self._raw_metrics(items)  # the same matching as transform's
        # Pairs sent together by enough training events; one column per kind that has one (a column
        # the trees never see filled cannot be binned).
        pairs = [(m, r, kind) for m, r, kind in relative_pairs(self.metric_names)
                 if int((~np.isnan(raw[:, m]) & ~np.isnan(raw[:, r])).sum()) >= MIN_UNMEASURED_ROWS]
        self.ratio_kinds = sorted({kind for _, _, kind in pairs})
        self.ratio_pairs = [(m, r, self.ratio_kinds.index(kind)) for m, r, kind in pairs]
        measured = ~np.isnan(raw).all(axis=1)
        unmeasured = collections.Counter(
            level_of("event_type", item.event_type) for item, known in zip(items, measured.tolist(), strict=True)
            if not known)
        self.unmeasured_event_types = frozenset(t for t, n in unmeasured.items() if n >= MIN_UNMEASURED_ROWS)
        self.fitted = True
        return self

    # -------------------------------------------------------------------------------- transform

    def transform(self, items: Sequence[ClassifierInput]) -> FeatureViews:
        """Both views of a batch; unseen words, levels and metrics are ignored. Per event only a
        few attribute reads: each distinct value is spelt and looked up once (`per_value`), the rest
        is numpy."""
        if not self.fitted:
            raise RuntimeError("FeatureExtractor.transform called before fit")
        n = len(items)
        tags = [item.tags or {} for item in items]
        text = self.text.transform([text_of(item) for item in items])
        codes, one_hot_rows, one_hot_columns = self._categoricals(items, tags)
        categorical = csr_counts(one_hot_rows, one_hot_columns, (n, len(self.categorical_columns)))
        categorical.data[:] = 1.0  # one-hot, even if a tag repeats a name
        raw = self._raw_metrics(items)
        ratios = self._ratios(raw)
        scaled = np.nan_to_num(np.log1p(np.abs(raw)) / self.metric_scale, nan=0.0)
        np.clip(scaled, 0.0, 1.0, out=scaled)
        # "Sent no metric we know" is not "every metric near zero": its own column, so the linear
        # members can learn what such events are (manual incidents, new kinds of alerts).
        no_metrics = np.isnan(raw).all(axis=1, keepdims=True).astype(np.float32)
        blocks = [text, categorical, _csr_of_dense(scaled)]
        if ratios is not None:  # log2 of how far past its threshold/baseline, 0..1 for up to 16 times
            blocks.append(_csr_of_dense(np.clip(np.nan_to_num(np.log2(ratios) / 4.0, nan=0.0, posinf=1.0,
                                                              neginf=0.0), 0.0, 1.0).astype(np.float32)))
        sparse = _hstack_rows([*blocks, _csr_of_dense(no_metrics)])
        source_level = per_value(lambda value: SEVERITIES.index(map_source_severity(value)),
                                 [item.source_severity for item in items], np.float32).reshape(n, 1)
        dense = np.hstack([codes, raw, *(() if ratios is None else (ratios,)), source_level, self._keyword_flags(text)])
        return FeatureViews(sparse=sparse, dense=dense, grounded=self.grounded(items, no_metrics[:, 0] == 0))

    def grounded(self, items: Sequence[ClassifierInput], measured: np.ndarray) -> np.ndarray:
        """Per event: it carried a metric the model knows, or it is of an event type the model
        learnt from without metrics. Model files from before this attribute know no such types."""
        learnt: frozenset[str] = getattr(self, "unmeasured_event_types", frozenset())
        grounded = measured.copy()
        if learnt:
            for i in np.flatnonzero(~measured).tolist():
                grounded[i] = level_of("event_type", items[i].event_type) in learnt
        return grounded

    def _categoricals(self, items: Sequence[ClassifierInput],
                      tags: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The trees' ordinal codes (NaN: unseen level) and the (row, column) of each one-hot feature."""
        n = len(items)
        nan = float("nan")
        codes = np.empty((n, len(self.levels)), dtype=np.float32)
        rows, columns = [], []
        for position, field in enumerate(CATEGORICAL_FIELDS):
            def column_and_code(value: str | None, field: str = field, levels: dict[str, int] = self.levels[position]
                                ) -> tuple[int, float]:
                level = level_of(field, value)
                return self.categorical_columns.get(f"{field}={level}", -1), levels.get(level, nan)

            table = per_value(column_and_code, list(map(attrgetter(field), items)), np.float64).reshape(n, 2)
            codes[:, position] = table[:, 1]
            rows.append(np.arange(n))
            columns.append(table[:, 0].astype(np.int64))
        # Tags in one pass over every (key, value) pair: its one-hot column, and its ordinal code when
        # the key is an ordinal tag (an event without that tag has the code of "").
        ordinal = {tag: position for position, tag in enumerate(ORDINAL_TAGS, start=len(CATEGORICAL_FIELDS))}
        for position in ordinal.values():
            codes[:, position] = self.levels[position].get(ordinal_tag_level(""), nan)

        def tag_features(pair: tuple[Any, Any]) -> tuple[int, int, float]:
            key, value = pair
            name = tag_name(key, value)
            position = ordinal.get(key, -1) if isinstance(key, str) else -1
            return (-1 if name is None else self.categorical_columns.get(name, -1), position,
                    nan if position < 0 else self.levels[position].get(ordinal_tag_level(value), nan))

        tag_rows, keys, values = _flat(tags)
        table = per_value(tag_features, list(zip(keys, values, strict=True)), np.float64).reshape(len(keys), 3)
        has_code = table[:, 1] >= 0
        codes[tag_rows[has_code], table[has_code, 1].astype(np.int64)] = table[has_code, 2]
        rows.append(tag_rows)
        columns.append(table[:, 0].astype(np.int64))
        row, column = np.concatenate(rows), np.concatenate(columns)
        known = column >= 0
        return codes, row[known], column[known]

    def _raw_metrics(self, items: Sequence[ClassifierInput]) -> np.ndarray:
        """The known metrics' values (NaN: not sent, or not a number), the key matched as sent or
        lowercased."""
        metric_index = {name: j for j, name in enumerate(self.metric_names)}

        def column(key: Any) -> int:
            found = metric_index.get(key) if key in metric_index else metric_index.get(str(key).lower())
            return -1 if found is None else found

        def numeric(kind: type) -> bool:
            return issubclass(kind, (int, float)) and not issubclass(kind, bool)

        rows, keys, values = _flat([item.metrics or {} for item in items])
        columns = per_value(column, keys)
        keep = (columns >= 0) & per_value(numeric, list(map(type, values)), bool)
        raw = np.full((len(items), len(self.metric_names)), np.nan, dtype=np.float32)
        raw[rows[keep], columns[keep]] = np.array(list(compress(values, keep.tolist())), dtype=np.float64)
        raw[~np.isfinite(raw)] = np.nan
        return raw

    def _ratios(self, raw: np.ndarray) -> np.ndarray | None:
        """Per event and kind (`ratio_kinds`, of `RELATIVE_KINDS`), the largest value / reference over its pairs
        (NaN: no pair sent). None for model files from before these features (their trees do not
        expect the columns)."""
        pairs: list[tuple[int, int, int]] | None = getattr(self, "ratio_pairs", None)
        if pairs is None:
            return None
        result = np.full((raw.shape[0], len(self.ratio_kinds)), np.nan, dtype=np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            for value, reference, kind in pairs:
                ratio = raw[:, value] / raw[:, reference]
                ratio[~np.isfinite(ratio) | (raw[:, reference] <= 0)] = np.nan
                result[:, kind] = np.fmax(result[:, kind], ratio)
        return result

    def _keyword_flags(self, text: sp.csr_matrix) -> np.ndarray:
        """1 where the event's text has the keyword (every term present has a positive weight)."""
        flags = np.zeros((text.shape[0], len(self.keyword_columns)), dtype=np.float32)
        position = np.full(text.shape[1], -1, dtype=np.int64)
        position[self.keyword_columns] = np.arange(len(self.keyword_columns))
        found = position[text.indices]
        rows = np.repeat(np.arange(text.shape[0]), np.diff(text.indptr))
        flags[rows[found >= 0], found[found >= 0]] = 1.0
        return flags

    @property
    def categorical_mask(self) -> np.ndarray:
        """Which dense columns are categorical codes (for the trees' native categorical splits)."""
        ratios = len(getattr(self, "ratio_kinds", ()))
        mask = np.zeros(len(self.levels) + len(self.metric_names) + ratios + 1 + len(self.keyword_columns), dtype=bool)
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
