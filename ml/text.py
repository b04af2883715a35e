"""The text vectoriser: TF-IDF over words and word pairs of an event's text, vectorised over a batch.

Apart from the feature extractor (`ml.features`), which puts this block beside the categoricals and
metrics. Words are split out of a whole batch at C speed (`batch_words`, the same words as `TOKEN`),
looked up once each, and word pairs are counted as integer keys in a hash table (`TermIndex`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any, Mapping, Sequence, Union

import numpy as np
import scipy.sparse as sp
from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l2


def csr_counts(rows: np.ndarray, columns: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """How often each (row, column) occurs, as a canonical CSR matrix (float32 counts)."""
    keys, counts = np.unique(rows * shape[1] + columns, return_counts=True)
    indptr = np.zeros(shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(keys // shape[1], minlength=shape[0]), out=indptr[1:])
    return sp.csr_matrix((counts.astype(np.float32), (keys % shape[1]).astype(np.int32), indptr), shape=shape)




TOKEN = re.compile(r"\b[a-z][\w\-]+\b")
Term = Union[str, tuple[str, str]]  # a word, or a pair of adjacent words

# ASCII text as runs of the characters TOKEN's words are made of ([a-z0-9_-]; the text is lowercased),
# everything else a space. A TOKEN match never spans two runs and a run holds at most one: a run
# that starts with a letter and ends with a word character is the match itself; any other run is
# left to the regex (a number, "5-pro", "gpu-oom-").
_RUN_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_-")
_RUNS_OF_ASCII = bytes(b if b in _RUN_BYTES else 32 for b in range(256))
_A, _Z, _DASH = ord("a"), ord("z"), ord("-")


def batch_words(texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`TOKEN.findall` of every (lowercased) text, flattened in order: `(words, rows, kept)`, where
    the matches are the `words[j]` with `kept[j]` and `rows[j]` is the index of their text. The same
    words as the regex (a unit test checks it on random strings); ASCII texts are split at C speed
    (one `bytes.translate` and `str.split` for the batch), the regex only runs on the few runs that
    are not plain words and on non-ASCII texts."""
    if not all(map(str.isascii, texts)):
        return _with_non_ascii(texts)
    data = " ".join(texts).encode("ascii").translate(_RUNS_OF_ASCII)
    words = data.decode("ascii").split()
    codes = np.frombuffer(data, dtype=np.uint8)
    in_run = np.zeros(len(codes) + 2, dtype=bool)
    in_run[1:-1] = codes != 32
    edges = np.flatnonzero(in_run[1:] != in_run[:-1])
    starts, ends = edges[0::2], edges[1::2]
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    first_runs = np.searchsorted(starts, np.cumsum(lengths + 1) - lengths - 1)  # each text's first run
    rows = np.repeat(np.arange(len(texts)), np.diff(first_runs, append=len(starts)))
    first, last, size = codes[starts], codes[ends - 1], ends - starts
    kept = (first >= _A) & (first <= _Z) & (last != _DASH) & (size >= 2)
    for j in np.flatnonzero(~kept & (size >= 2)).tolist():
        # Only a run with a dash can hold a word that is not the whole run ("5-pro" -> "pro").
        found = TOKEN.findall(words[j]) if "-" in words[j] else None
        if found:
            words[j], kept[j] = found[0], True
    return words, rows, kept


def _with_non_ascii(texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`batch_words` of a batch with non-ASCII texts: those by the regex, merged in text order."""
    others = [j for j, text in enumerate(texts) if not text.isascii()]
    plain = list(texts)
    for j in others:
        plain[j] = ""
    words, rows, kept = batch_words(plain)
    found = [TOKEN.findall(texts[j]) for j in others]
    words.extend(chain.from_iterable(found))
    rows = np.concatenate((rows, np.repeat(np.array(others, dtype=np.int64), [len(f) for f in found])))
    kept = np.concatenate((kept, np.ones(len(words) - len(kept), dtype=bool)))
    order = np.argsort(rows, kind="stable")
    return [words[j] for j in order.tolist()], rows[order], kept[order]


_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing


@dataclass(frozen=True)
class TermIndex:
    """The vocabulary as arrays, so a batch is counted with numpy rather than a dict lookup per
    term: each word of any term has an id (0: in no term), `unigram_columns[id]` is its own column
    (-1: none), and the pair (a, b) is the number `a * width + b`, found in an open-addressing hash
    table (`slot_keys`, -1: empty; its column at the same slot of `slot_columns`), a quarter full,
    so nearly every pair is settled by the first probe."""

    word_ids: dict[str, int]
    width: int
    unigram_columns: np.ndarray
    slot_keys: np.ndarray
    slot_columns: np.ndarray

    @classmethod
    def of(cls, vocabulary: Mapping[Term, int]) -> "TermIndex":
        words = sorted({word for term in vocabulary for word in ((term,) if isinstance(term, str) else term)})
        word_ids = {word: j for j, word in enumerate(words, start=1)}
        width = len(words) + 1
        unigram_columns = np.full(width, -1, dtype=np.int64)
        pairs: dict[int, int] = {}
        for term, column in vocabulary.items():
            if isinstance(term, str):
                unigram_columns[word_ids[term]] = column
            else:
                pairs[word_ids[term[0]] * width + word_ids[term[1]]] = column
        bits = max(4, (4 * len(pairs)).bit_length())
        slot_keys = np.full(1 << bits, -1, dtype=np.int64)
        slot_columns = np.full(1 << bits, -1, dtype=np.int64)
        mask = (1 << bits) - 1
        keys = sorted(pairs)
        for key, slot in zip(keys, _slots(np.array(keys, dtype=np.int64), bits).tolist(), strict=True):
            while slot_keys[slot] != -1:
                slot = (slot + 1) & mask
            slot_keys[slot], slot_columns[slot] = key, pairs[key]
        return cls(word_ids, width, unigram_columns, slot_keys, slot_columns)

    def pair_columns(self, keys: np.ndarray) -> np.ndarray:
        """The column of each pair key (-1: not a term)."""
        bits = len(self.slot_keys).bit_length() - 1
        mask = len(self.slot_keys) - 1
        columns = np.full(len(keys), -1, dtype=np.int64)
        pending, slots = np.arange(len(keys)), _slots(keys, bits)
        while len(pending):
            stored = self.slot_keys[slots]
            hit = stored == keys[pending]
            columns[pending[hit]] = self.slot_columns[slots[hit]]
            probe_on = ~hit & (stored != -1)
            pending, slots = pending[probe_on], (slots[probe_on] + 1) & mask
        return columns


def _slots(keys: np.ndarray, bits: int) -> np.ndarray:
    """Each key's first slot in a table of 2**bits (the top bits of key * golden ratio mod 2**64)."""
    return ((keys.astype(np.uint64) * _HASH_MULTIPLIER) >> np.uint64(64 - bits)).astype(np.int64)


class TextVectorizer:
    """TF-IDF over words and word pairs (sublinear tf, smoothed idf, L2-normalised rows), the
    same weighting as scikit-learn's TfidfVectorizer (a test checks the counts against its
    CountVectorizer). The batch path spends most of its time here: the words split out of the batch
    at C speed (`batch_words`), one dict lookup per word, and the pairs counted as integer keys with
    numpy."""

    def __init__(self, min_df: int = 2, max_features: int = 20000) -> None:
        self.min_df = min_df
        self.max_features = max_features
        self.vocabulary_: dict[Term, int] = {}
        self.idf = np.zeros(0, dtype=np.float32)
        self._index: TermIndex | None = None

    @staticmethod
    def terms(text: str) -> list[Term]:
        """Words, then word pairs as tuples: the terms of one text (what `fit` counts)."""
        words: list[str] = TOKEN.findall(text.lower())
        terms: list[Term] = list(words)
        terms.extend(zip(words, words[1:], strict=False))
        return terms

    @staticmethod
    def term_name(term: Term) -> str:
        return term if isinstance(term, str) else " ".join(term)

    @property
    def index(self) -> TermIndex:
        """The vocabulary's `TermIndex`, built on first use (model files carry only the vocabulary)."""
        index = getattr(self, "_index", None)
        if index is None:
            index = self._index = TermIndex.of(self.vocabulary_)
        return index

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the `TermIndex` (derived, rebuilt on first use): model files keep the format
        older versions of this code load too, which a rollback may need."""
        return {name: value for name, value in self.__dict__.items() if name != "_index"}

    def fit_transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        document_frequency: dict[Term, int] = {}
        for text in texts:
            for term in set(self.terms(text)):
                document_frequency[term] = document_frequency.get(term, 0) + 1
        kept = [t for t, df in document_frequency.items() if df >= self.min_df]
        kept = sorted(sorted(kept, key=self.term_name), key=lambda t: -document_frequency[t])[: self.max_features]
        ordered = sorted(kept, key=self.term_name)
        self.vocabulary_ = {term: j for j, term in enumerate(ordered)}
        self._index = None
        df = np.array([document_frequency[t] for t in ordered], dtype=np.float64)
        self.idf = (np.log((1 + len(texts)) / (1 + df)) + 1.0).astype(np.float32)
        return self.transform(texts)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        index = self.index
        words, rows, kept = batch_words(list(map(str.lower, texts)))
        ids = np.fromiter(map(index.word_ids.get, words, repeat(0)), dtype=np.int64, count=len(words))
        if not kept.all():
            ids, rows = ids[kept], rows[kept]
        unigrams = index.unigram_columns[ids]
        found = unigrams >= 0
        term_rows, term_columns = [rows[found]], [unigrams[found]]
        if len(ids) > 1:
            pairs = index.pair_columns(ids[:-1] * index.width + ids[1:])
            found = (pairs >= 0) & (rows[:-1] == rows[1:])  # a pair within one text
            term_rows.append(rows[1:][found])
            term_columns.append(pairs[found])
        matrix = csr_counts(np.concatenate(term_rows), np.concatenate(term_columns),
                             (len(texts), len(self.vocabulary_)))
        matrix.data = (1.0 + np.log(matrix.data)) * self.idf[matrix.indices]
        inplace_csr_row_normalize_l2(matrix)  # what sklearn's normalize(norm="l2") runs, without its validation
        return matrix
