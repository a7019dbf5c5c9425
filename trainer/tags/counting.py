"""Exact tag statistics: image frequencies, then the sparse co-occurrence matrix over the vocabulary.

Two passes, because the vocabulary is unknown up front. Pass 1 counts image frequencies of every
normalised tag (one ``Counter`` per task, summed). The vocabulary is then chosen (min_count,
max_vocab) and pass 2 counts co-occurrences only over vocabulary ids, as ``X.T @ X`` of a sparse
image x tag indicator built chunk by chunk. Memory is O(raw vocab) for pass 1 and O(nnz of the
V x V co-occurrence) for pass 2, never O(images) and never O(raw-tag pairs): a one-pass design with
string-keyed pair counts would hold pairs of long-tail tags that min_count later discards, which is
where web vocabularies (10^5-10^6 raw tags) blow up. The price is reading ``tags.json`` twice.

Every partial is integer-valued and merged by addition, so the result does not depend on how
samples are split into tasks or in which order partials arrive.
"""
from __future__ import annotations

import heapq
import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from trainer.tags.normalize import NormalizeConfig, TagNormalizer

_CHUNK = 8192  # images per sparse indicator block in pass 2


@dataclass
class Sample:
    """The part of one image the tag pipeline reads."""

    key: str
    tags: list           # raw tags (str, or bytes from a lenient source)
    labels: list[str] | None = None


@dataclass
class FrequencyPartial:
    """Pass-1 result of one task; ``+`` merges two exactly."""

    freq: Counter = field(default_factory=Counter)
    n_images: int = 0
    n_untagged_raw: int = 0              # images with no tag left after normalisation
    skips: Counter = field(default_factory=Counter)
    skip_examples: list[str] = field(default_factory=list)
    short_shards: list[str] = field(default_factory=list)  # shards that held fewer samples than their manifest

    def __add__(self, other: "FrequencyPartial") -> "FrequencyPartial":
        return FrequencyPartial(self.freq + other.freq, self.n_images + other.n_images,
                                self.n_untagged_raw + other.n_untagged_raw,
                                self.skips + other.skips,
                                sorted(self.skip_examples + other.skip_examples)[:20],
                                sorted(self.short_shards + other.short_shards))


@dataclass
class CooccurrencePartial:
    """Pass-2 result of one task: V x V counts (diagonal = image frequency) and a label sample."""

    cooc: sp.csr_matrix
    n_untagged_vocab: int = 0            # images with no vocabulary tag (they get all-zero targets)
    label_sample: list = field(default_factory=list)  # [(key_hash, tag_ids, labels|None)], bottom-k

    def merged(self, other: "CooccurrencePartial", sample_max: int) -> "CooccurrencePartial":
        return CooccurrencePartial(self.cooc + other.cooc, self.n_untagged_vocab + other.n_untagged_vocab,
                                   _bottom_k(self.label_sample + other.label_sample, sample_max))


@dataclass
class TagCounts:
    """Everything downstream needs from the data: vocabulary, frequencies, co-occurrence, stats."""

    vocab: list[str]                      # sorted by (-count, tag)
    counts: np.ndarray                    # (V,) int64 image frequency
    cooc: sp.csr_matrix                   # (V, V) int64, symmetric, diagonal == counts
    stats: dict
    label_sample: list = field(default_factory=list)  # [(tag_ids, labels | None)], report only


def count_frequencies(samples: Iterable[Sample], norm: NormalizeConfig) -> FrequencyPartial:
    """Pass 1 over one task's samples."""
    normalizer = TagNormalizer(norm)
    out = FrequencyPartial()
    for s in samples:
        keys = normalizer.normalize_image(s.tags)
        out.n_images += 1
        if not keys:
            out.n_untagged_raw += 1
        out.freq.update(keys)
    out.skips.update({f"tag_{k}": v for k, v in normalizer.skips.items()})
    return out


def choose_vocab(freq: Counter, min_count: int, max_vocab: int | None) -> list[str]:
    """Tags with at least ``min_count`` images, most frequent first, ties by tag (deterministic)."""
    kept = sorted((t for t, c in freq.items() if c >= min_count), key=lambda t: (-freq[t], t))
    return kept[:max_vocab] if max_vocab else kept


def count_cooccurrence(samples: Iterable[Sample], norm: NormalizeConfig, vocab: list[str],
                       sample_max: int = 0) -> CooccurrencePartial:
    """Pass 2 over one task's samples: ``sum_chunks X_c.T @ X_c`` over vocabulary ids."""
    normalizer = TagNormalizer(norm)
    index = {t: i for i, t in enumerate(vocab)}
    V = len(vocab)
    total = sp.csr_matrix((V, V), dtype=np.int64)
    indptr, indices = [0], []
    n_untagged = 0
    sample: list = []
    for s in samples:
        ids = sorted({index[k] for k in normalizer.normalize_image(s.tags) if k in index})
        if not ids:
            n_untagged += 1
        indices.extend(ids)
        indptr.append(len(indices))
        if sample_max:
            sample.append((_key_hash(s.key), ids, None if s.labels is None else sorted(s.labels)))
            if len(sample) > 2 * sample_max:
                sample = _bottom_k(sample, sample_max)
        if len(indptr) > _CHUNK:
            total = total + _gram(indptr, indices, V)
            indptr, indices = [0], []
    if len(indptr) > 1:
        total = total + _gram(indptr, indices, V)
    return CooccurrencePartial(total.tocsr(), n_untagged, _bottom_k(sample, sample_max))


def counts_from_partials(freq: FrequencyPartial, cooc: CooccurrencePartial, vocab: list[str],
                         raw_vocab_size: int) -> TagCounts:
    counts = np.asarray(cooc.cooc.diagonal(), dtype=np.int64)
    stats = {
        "images": freq.n_images,
        "images_untagged_after_normalisation": freq.n_untagged_raw,
        "images_untagged_after_vocab": cooc.n_untagged_vocab,
        "raw_tags": raw_vocab_size,
        "tag_occurrences": int(sum(freq.freq.values())),
        "vocab_tags": len(vocab),
        "skips": dict(sorted(freq.skips.items())),
        "skip_examples": freq.skip_examples,
        "raw_top": [[t, c] for t, c in heapq.nsmallest(20, freq.freq.items(), key=lambda x: (-x[1], x[0]))],
        # frequency-of-frequencies: compact at any raw vocabulary size, enough for the plot
        "raw_count_histogram": sorted(Counter(freq.freq.values()).items()),
    }
    sample = [(ids, labels) for _, ids, labels in cooc.label_sample]
    return TagCounts(vocab, counts, cooc.cooc, stats, sample)


def count_tag_lists(tag_lists: Iterable[list], norm: NormalizeConfig, min_count: int,
                    max_vocab: int | None, labels: Iterable[list[str]] | None = None,
                    sample_max: int = 0) -> TagCounts:
    """Both passes in process over an in-memory sequence of tag lists (small data and tests)."""
    tag_lists = list(tag_lists)
    label_lists = list(labels) if labels is not None else [None] * len(tag_lists)
    samples = [Sample(f"{i:012d}", t, l) for i, (t, l) in enumerate(zip(tag_lists, label_lists))]
    freq = count_frequencies(samples, norm)
    vocab = choose_vocab(freq.freq, min_count, max_vocab)
    cooc = count_cooccurrence(samples, norm, vocab, sample_max)
    return counts_from_partials(freq, cooc, vocab, len(freq.freq))


def _gram(indptr: list[int], indices: list[int], V: int) -> sp.csr_matrix:
    n = len(indptr) - 1
    x = sp.csr_matrix((np.ones(len(indices), dtype=np.int64), np.asarray(indices, dtype=np.int64),
                       np.asarray(indptr, dtype=np.int64)), shape=(n, V))
    return (x.T @ x).tocsr()


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8).digest(), "big")


def _bottom_k(items: list, k: int) -> list:
    """The k items with the smallest key hash: a sample that does not depend on task boundaries."""
    return heapq.nsmallest(k, items, key=lambda x: (x[0], x[1], x[2] or [])) if k else []


def iter_chunks(items: list, n: int) -> Iterator[list]:
    """Split ``items`` into ``n`` contiguous, near-equal groups (empty groups omitted)."""
    n = max(1, min(n, len(items)))
    bounds = np.linspace(0, len(items), n + 1).round().astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            yield items[a:b]
