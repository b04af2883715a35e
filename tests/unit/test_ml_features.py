"""The batch feature path (`FeatureExtractor.transform`) against its definitions: the text counts
against scikit-learn's CountVectorizer, and both views against an event-by-event reference, on the
whole shipped data set plus events with the odd values real senders put in tags and metrics."""

from __future__ import annotations

import math
import pickle
import random
from itertools import compress
from typing import Sequence

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer

from ml.features import FeatureExtractor, FeatureViews, categoricals_of, ordinals_of, text_of
from ml.interface import ClassifierInput
from ml.text import TOKEN, TermIndex, batch_words
from ml.training import load_shipped
from tests.unit.test_ml_model import base_model

ODD_EVENTS = [
    ClassifierInput(title="x"),
    ClassifierInput(title="", description="ΣΑΣ straße -dash- a- ab-cd-- 9ab _ab gpu-oom-", source=" Sentinel ",
                    source_severity=" High ", tags={"environment": True, "tier": 1}),
    ClassifierInput(title="Totally new thing 🚀", source="brand-new-source", event_type="novel-kind_x",
                    category="unheard", resource_type="quantum", source_severity="apocalyptic",
                    tags={"environment": "moon", "Environment": "PRODUCTION", "nested": "a" * 500, "flag": True,
                          "n": 1, "f": 1.0, "z": -0.0, "list": [1, 2], "map": {"a": 1}, "none": None, "tier": 1.0},
                    metrics={"latency_p99_ms": float("inf"), "error_rate": float("nan"), "text": "high", "ok": True,
                             "never_seen_metric": 12.0, "impact_score": -0.5, "IMPACT_SCORE": 3,
                             "anomaly_score": np.float64(0.3), "records_affected": 10**300, "nested": [1]}),
    ClassifierInput(title="", tags={"environment": 1, "tier": True, "a": 1, "b": True, "c": "1", "d": "true"},
                    source_severity="critical", metrics={"Impact_Score": 1e39, "impact_score": 0.5}),
]


def shipped_inputs() -> list[ClassifierInput]:
    train, held_out = load_shipped()
    return train.inputs + held_out.inputs


def reference_views(extractor: FeatureExtractor, items: Sequence[ClassifierInput]) -> FeatureViews:
    """The features by their definition, one event at a time (what the batch path must equal)."""
    from app.domain.severity import SEVERITIES, map_source_severity

    vocabulary, n = extractor.text.vocabulary_, len(items)
    counts = sp.lil_matrix((n, len(vocabulary)), dtype=np.float32)
    categorical = sp.lil_matrix((n, len(extractor.categorical_columns)), dtype=np.float32)
    metric_index = {name: j for j, name in enumerate(extractor.metric_names)}
    raw = np.full((n, len(metric_index)), np.nan, dtype=np.float32)
    codes = np.full((n, len(extractor.levels)), np.nan, dtype=np.float32)
    source_level = np.zeros((n, 1), dtype=np.float32)
    for row, item in enumerate(items):
        for term in extractor.text.terms(text_of(item)):
            if term in vocabulary:
                counts[row, vocabulary[term]] += 1
        for name in categoricals_of(item):
            if name in extractor.categorical_columns:
                categorical[row, extractor.categorical_columns[name]] = 1
        for key, value in (item.metrics or {}).items():
            column = metric_index.get(str(key).lower())
            if column is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                raw[row, column] = float(value) if math.isfinite(float(value)) else np.nan
        codes[row] = [levels.get(level, np.nan) for levels, level in zip(extractor.levels, ordinals_of(item),
                                                                         strict=True)]
        source_level[row] = SEVERITIES.index(map_source_severity(item.source_severity))
    text = counts.tocsr()
    text.data = (1.0 + np.log(text.data)) * extractor.text.idf[text.indices]
    norms = np.sqrt(np.asarray(text.multiply(text).sum(axis=1), dtype=np.float64)).ravel()
    text = sp.csr_matrix(sp.diags(1 / np.where(norms > 0, norms, 1)) @ text, dtype=np.float32)
    raw[~np.isfinite(raw)] = np.nan
    scaled = np.clip(np.nan_to_num(np.log1p(np.abs(raw)) / extractor.metric_scale, nan=0.0), 0.0, 1.0)
    no_metrics = np.isnan(raw).all(axis=1, keepdims=True)
    # Each kind: the largest value / reference over the event's matched pairs with a positive reference.
    ratios = np.full((n, len(extractor.ratio_kinds)), np.nan, dtype=np.float32)
    for row in range(n):
        for value, reference, kind in extractor.ratio_pairs:
            if raw[row, reference] > 0 and np.isfinite(raw[row, value]):
                ratio = np.float32(raw[row, value] / raw[row, reference])
                if np.isfinite(ratio) and not ratios[row, kind] >= ratio:
                    ratios[row, kind] = ratio
    log_ratios = np.clip(np.nan_to_num(np.log2(ratios) / 4.0, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    sparse = sp.hstack([text, categorical.tocsr(), sp.csr_matrix(scaled), sp.csr_matrix(log_ratios),
                        sp.csr_matrix(no_metrics)], format="csr", dtype=np.float32)
    keywords = (text[:, extractor.keyword_columns] > 0).toarray()
    dense = np.hstack([codes, raw, ratios, source_level, keywords]).astype(np.float32)
    return FeatureViews(sparse=sparse, dense=dense)


def assert_views_equal(got: FeatureViews, expected: FeatureViews, text_columns: int = 0) -> None:
    """Equal views; the first `text_columns` sparse columns to float32 rounding (the reference
    normalises in float64), everything else exactly (NaNs in the same places)."""
    assert got.sparse.shape == expected.sparse.shape and got.dense.shape == expected.dense.shape
    assert got.sparse.dtype == np.float32 and got.dense.dtype == np.float32
    assert got.sparse.has_canonical_format
    got_sparse, expected_sparse = got.sparse.toarray(), expected.sparse.toarray()
    np.testing.assert_allclose(got_sparse[:, :text_columns], expected_sparse[:, :text_columns], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got_sparse[:, text_columns:], expected_sparse[:, text_columns:])
    np.testing.assert_array_equal(got.dense, expected.dense)


def test_text_counts_match_scikit_learn_count_vectorizer_on_the_shipped_data() -> None:
    text = base_model().extractor.text
    texts = [text_of(item) for item in shipped_inputs() + ODD_EVENTS]
    sklearn_counts = CountVectorizer(token_pattern=TOKEN.pattern, ngram_range=(1, 2), dtype=np.float32,
                                     vocabulary={text.term_name(t): j for t, j in text.vocabulary_.items()},
                                     ).transform(texts)
    weights = sklearn_counts.tocsr()
    weights.data = (1.0 + np.log(weights.data)) * text.idf[weights.indices]
    weights = sp.csr_matrix(sp.diags(1 / np.maximum(sp.linalg.norm(weights, axis=1), 1e-30)) @ weights)
    np.testing.assert_allclose(text.transform(texts).toarray(), weights.toarray(), rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # 10**300 as float32: NaN, as it should
def test_batch_transform_equals_the_event_by_event_definition_on_the_shipped_data() -> None:
    extractor = base_model().extractor
    items = ODD_EVENTS + shipped_inputs() + ODD_EVENTS[::-1]
    assert_views_equal(extractor.transform(items), reference_views(extractor, items),
                       text_columns=len(extractor.text.vocabulary_))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize("size", [1, 7])
def test_a_batch_gives_each_event_what_it_gets_alone(size: int) -> None:
    """Values are looked up once per distinct value of a batch: no event may see another's."""
    extractor = base_model().extractor
    _, held_out = load_shipped()
    items = ODD_EVENTS + held_out.inputs[:200]
    batched = extractor.transform(items)
    for start in range(0, len(items), size):
        alone = extractor.transform(items[start:start + size])
        np.testing.assert_array_equal(batched.sparse[start:start + size].toarray(), alone.sparse.toarray())
        np.testing.assert_array_equal(batched.dense[start:start + size], alone.dense)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_model_files_carry_the_vocabulary_not_the_term_index() -> None:
    """The index is derived: model files keep the format the code before it wrote and reads."""
    extractor = base_model().extractor
    extractor.transform(ODD_EVENTS)  # builds the index
    restored = pickle.loads(pickle.dumps(extractor))
    assert "_index" not in restored.text.__dict__
    assert_views_equal(restored.transform(ODD_EVENTS), extractor.transform(ODD_EVENTS))


def test_empty_batch_and_unfitted_extractor() -> None:
    views = base_model().extractor.transform([])
    assert views.sparse.shape[0] == 0 and views.dense.shape[0] == 0
    with pytest.raises(RuntimeError):
        FeatureExtractor().transform(ODD_EVENTS)


def _findall_flat(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    found = [TOKEN.findall(text) for text in texts]
    return [w for words in found for w in words], np.repeat(np.arange(len(texts)), [len(w) for w in found])


@pytest.mark.parametrize("alphabet", ["ab-_9 .,/\t\nz", "ab-_9 .,é²\u0301\tZΣ\x00\x7fz"])
def test_batch_words_are_the_regex_matches_on_random_text(alphabet: str) -> None:
    """The C-speed split (ASCII) and its fallback (a batch with non-ASCII text) against TOKEN.findall:
    dashes at either end, digits and underscores before letters, single letters, empty texts."""
    rng = random.Random(7)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))).lower() for _ in range(5000)]
    texts += ["", "a- ab-cd-- 9ab _ab gpu-oom- 5-pro x-ab 9-ab a--b -ab ab_ _-a ab-_-", ""]
    for batch in (texts, texts[:1], [t for t in texts if t.isascii()][:300] + ["straße ab", "Σ-ab"]):
        words, rows, kept = batch_words(batch)
        expected_words, expected_rows = _findall_flat(batch)
        assert list(compress(words, kept.tolist())) == expected_words
        np.testing.assert_array_equal(rows[kept], expected_rows)


def test_batch_words_on_the_shipped_text() -> None:
    texts = [text_of(item).lower() for item in shipped_inputs()]
    words, rows, kept = batch_words(texts)
    expected_words, expected_rows = _findall_flat(texts)
    assert list(compress(words, kept.tolist())) == expected_words
    np.testing.assert_array_equal(rows[kept], expected_rows)


def test_term_index_finds_every_pair_and_nothing_else() -> None:
    """The pair hash table (open addressing, linear probing) on a vocabulary dense enough to collide."""
    words = [f"w{j}" for j in range(300)]
    rng = random.Random(3)
    pairs = {(rng.choice(words), rng.choice(words)) for _ in range(5000)}
    vocabulary = {term: column for column, term in enumerate(sorted(words[:200]) + sorted(pairs))}
    index = TermIndex.of(vocabulary)
    ids = {word: index.word_ids[word] for word in words}
    every = np.array([ids[a] * index.width + ids[b] for a in words for b in words], dtype=np.int64)
    expected = [vocabulary.get((a, b), -1) for a in words for b in words]
    np.testing.assert_array_equal(index.pair_columns(every), expected)
    np.testing.assert_array_equal(index.pair_columns(np.array([0, 1, index.width], dtype=np.int64)), [-1, -1, -1])


def test_metrics_are_paired_with_their_thresholds_and_baselines() -> None:
    """The naming rule pairs what the guide's senders send, and nothing else."""
    from ml.features import RELATIVE_KINDS, relative_pairs

    names = ["affected_requests", "baseline_ms", "current_rpm", "duration_sec", "error_rate", "error_rate_threshold",
             "limit_rpm", "p95_latency_ms", "threshold_ms", "throttled_requests", "confidence_score"]
    pairs = {(names[m], names[r], RELATIVE_KINDS[k]) for m, r, k in relative_pairs(names)}
    assert pairs == {("p95_latency_ms", "threshold_ms", "vs_threshold"),
                     ("p95_latency_ms", "baseline_ms", "vs_baseline"), ("current_rpm", "limit_rpm", "vs_threshold"),
                     ("error_rate", "error_rate_threshold", "vs_threshold")}
