"""The tag pipeline end to end: counts -> vectors -> enhancement -> merge -> ``TagSemantics``.

Three front doors share ``semantics_from_counts``: in-memory tag lists, an image x tag matrix (the
real MIRFLICKR ``tags`` array), and a shard set counted by Ray tasks (``num_tasks`` groups of
shards; ``num_tasks=0`` runs both passes in this process).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from shards.config import at_least, to_dict
from trainer.tags.artifact import TagSemantics
from trainer.tags.counting import (CooccurrencePartial, FrequencyPartial, TagCounts, choose_vocab,
                                   count_cooccurrence, count_frequencies, count_tag_lists,
                                   counts_from_partials, iter_chunks)
from trainer.tags.graph import GraphConfig, dbscan_groups, enhance, eps_for_target, merge_units
from trainer.tags.normalize import NormalizeConfig
from trainer.tags.report import label_agreement
from trainer.tags.vectors import VectorConfig, embed_vocabulary

log = logging.getLogger(__name__)


class NoTagsError(ValueError):
    """No tag survives the pipeline, so there is nothing to train against; names the step and key."""


@dataclass
class VocabConfig:
    min_count: int = 2            # images a tag must appear on (this project's choice)
    max_vocab: int | None = 50000  # most frequent tags kept; bounds DBSCAN's O(V^2) distances

    def __post_init__(self):
        at_least(self, "min_count", 1)
        at_least(self, "max_vocab", 1, optional=True)


@dataclass
class TagConfig:
    """Configuration of the tag pipeline. ``num_tasks`` and ``label_sample`` do not change the artifact."""

    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    vectors: VectorConfig = field(default_factory=VectorConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    num_tasks: int = 2            # Ray tasks for the shard passes; 0 = in this process, no Ray
    label_sample: int = 50000     # images (bottom-k by key hash) kept for the label-agreement figure

    def __post_init__(self):
        at_least(self, "num_tasks", 0)
        at_least(self, "label_sample", 0)

    def semantic(self) -> dict:
        """The part of the configuration that determines the artifact (hashed)."""
        d = to_dict(self)
        d.pop("num_tasks")
        d.pop("label_sample")
        return d


def build_semantics(tag_lists: Iterable[list], cfg: TagConfig | None = None,
                    labels: Iterable[list[str]] | None = None) -> TagSemantics:
    """Build from an in-memory sequence of raw tag lists (optionally with label-name lists)."""
    cfg = cfg or TagConfig()
    tag_lists = list(tag_lists)
    counts = count_tag_lists(tag_lists, cfg.normalize, cfg.vocab.min_count, cfg.vocab.max_vocab,
                             labels, cfg.label_sample)
    sem = semantics_from_counts(counts, cfg)
    untagged = sum(not sem.unit_ids(t) for t in tag_lists)
    sem.stats["images_untagged_after_merge"] = {"count": untagged, "exact": True}
    return sem


def build_from_matrix(matrix, names: list[str], cfg: TagConfig | None = None,
                      labels: np.ndarray | None = None, label_names: list[str] | None = None) -> TagSemantics:
    """Build from an image x tag 0/1 matrix whose columns are called ``names``.

    The matrix is turned into tag lists so normalisation and vocabulary rules are the same as for
    shards (a 20k x 1.4k matrix is small; web scale goes through shards).
    """
    x = sp.csr_matrix(matrix)
    tag_lists = [[names[j] for j in x.indices[x.indptr[i]:x.indptr[i + 1]]] for i in range(x.shape[0])]
    label_lists = None
    if labels is not None:
        label_names = label_names or [f"label_{k}" for k in range(labels.shape[1])]
        label_lists = [[label_names[k] for k in np.flatnonzero(row)] for row in np.asarray(labels)]
    return build_semantics(tag_lists, cfg, label_lists)


def build_from_shards(shard_urls: list[str], cfg: TagConfig | None = None, counts: list[int] | None = None,
                      partial: bool = False) -> TagSemantics:
    """Count over shards (``count_shards``), then build the semantics."""
    cfg = cfg or TagConfig()
    return semantics_from_counts(count_shards(shard_urls, cfg, counts, partial), cfg)


def count_shards(shard_urls: list[str], cfg: TagConfig, counts: list[int] | None = None,
                 partial: bool = False) -> TagCounts:
    """Both counting passes over shards: one Ray task per group of shards, partials summed.

    With ``counts`` (the manifest's, per shard) every shard is accounted against its count; a shard
    that fell short (truncated, unreadable, ended early) stops the build after pass 1 with one error
    naming it (``IncompleteRead``) unless ``partial``, when the shortfall is recorded in the stats."""
    entries = sorted(zip(shard_urls, counts if counts is not None else [None] * len(shard_urls)))
    groups = list(iter_chunks(entries, max(cfg.num_tasks, 1)))
    if cfg.num_tasks == 0:
        freq = _sum(_freq_task(g, cfg.normalize) for g in groups)
        _check_short(freq, partial)
        vocab = choose_vocab(freq.freq, cfg.vocab.min_count, cfg.vocab.max_vocab)
        cooc = _merge_cooc((_cooc_task(g, cfg.normalize, vocab, cfg.label_sample) for g in groups),
                           len(vocab), cfg.label_sample)
    else:
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False)
        freq_remote = ray.remote(_freq_task)
        cooc_remote = ray.remote(_cooc_task)
        freq = _sum(ray.get([freq_remote.remote(g, cfg.normalize) for g in groups]))
        _check_short(freq, partial)
        vocab = choose_vocab(freq.freq, cfg.vocab.min_count, cfg.vocab.max_vocab)
        vocab_ref = ray.put(vocab)
        cooc = _merge_cooc(ray.get([cooc_remote.remote(g, cfg.normalize, vocab_ref, cfg.label_sample)
                                    for g in groups]), len(vocab), cfg.label_sample)
    result = counts_from_partials(freq, cooc, vocab, len(freq.freq))
    result.stats["shards"] = len(shard_urls)
    if freq.short_shards:
        result.stats["short_shards"] = freq.short_shards
    return result


def _check_short(freq: FrequencyPartial, partial: bool) -> None:
    from shards.reader import IncompleteRead

    if freq.short_shards and not partial:
        raise IncompleteRead(f"tags build: refusing an incomplete count, {len(freq.short_shards)} shard(s) fell "
                             f"short: {'; '.join(freq.short_shards[:3])} (pass --partial to accept it)")


def _freq_task(entries: list[tuple[str, int | None]], norm: NormalizeConfig) -> FrequencyPartial:
    from trainer.tags.shard_tags import iter_shard_tags

    total = FrequencyPartial()
    for url, expected in entries:
        skips: Counter = Counter()
        examples: list[str] = []
        short: list[str] = []
        part = count_frequencies(iter_shard_tags(url, skips, examples, expected, short), norm)
        part.skips.update({f"sample_{k}": v for k, v in skips.items()})
        part.skip_examples = examples
        part.short_shards = short
        total = total + part
    return total


def _cooc_task(entries: list[tuple[str, int | None]], norm: NormalizeConfig, vocab: list[str],
               sample_max: int) -> CooccurrencePartial:
    from trainer.tags.shard_tags import iter_shard_tags

    parts = (count_cooccurrence(iter_shard_tags(u, Counter(), [], n), norm, vocab, sample_max) for u, n in entries)
    return _merge_cooc(parts, len(vocab), sample_max)


def _sum(parts: Iterable[FrequencyPartial]) -> FrequencyPartial:
    total = FrequencyPartial()
    for p in parts:
        total = total + p
    return total


def _merge_cooc(parts: Iterable[CooccurrencePartial], V: int, sample_max: int) -> CooccurrencePartial:
    total = CooccurrencePartial(sp.csr_matrix((V, V), dtype=np.int64))
    for p in parts:
        total = total.merged(p, sample_max)
    return total


def semantics_from_counts(counts: TagCounts, cfg: TagConfig) -> TagSemantics:
    """Vectors, OOV policy, graph enhancement and DBSCAN merge over counted statistics."""
    stats = dict(counts.stats)
    if not counts.vocab:
        raise NoTagsError(f"no tag reaches the vocabulary: {stats['raw_tags']} distinct tags in "
                          f"{stats['images']} images, none on >= vocab.min_count={cfg.vocab.min_count} images")
    embedded = embed_vocabulary(counts.vocab, counts.cooc, cfg.vectors)
    kept = np.flatnonzero(embedded.kept)
    if len(kept) == 0:
        raise NoTagsError(f"none of the {len(counts.vocab)} vocabulary tags has an embedding "
                          f"(vectors.source={cfg.vectors.source!r}, vectors.oov={cfg.vectors.oov!r})")
    origin = Counter(embedded.origin)
    stats["vectors"] = {"source": embedded.source, "note": embedded.note, "dim": int(embedded.vectors.shape[1]),
                        "origin": dict(sorted(origin.items()))}
    sub = counts.cooc[kept][:, kept]
    enhanced = enhance(embedded.vectors[kept], sub, cfg.graph,
                       n_images=stats["images"] - stats["images_untagged_after_vocab"])
    eps = cfg.graph.eps
    if cfg.graph.target_units:
        eps = eps_for_target(enhanced, cfg.graph.target_units, cfg.graph.min_samples)
    groups, unit_emb = merge_units(dbscan_groups(enhanced, eps, cfg.graph.min_samples), enhanced)
    merge_map = {t: -1 for t in counts.vocab}
    for u, rows in enumerate(groups):
        for r in rows:
            merge_map[counts.vocab[kept[r]]] = u
    names = [counts.vocab[kept[rows[0]]] for rows in groups]
    stats["sizes"] = {"raw_tags": stats["raw_tags"], "vocab_tags": len(counts.vocab),
                      "with_vectors": int(len(kept)), "units": len(groups),
                      "merged_groups": sum(len(r) > 1 for r in groups)}
    stats["eps_used"] = eps
    sem = TagSemantics(names=names, embeddings=unit_emb, vocab=list(counts.vocab),
                       counts=[int(c) for c in counts.counts], merge_map=merge_map, config=cfg.semantic(),
                       stats=stats)
    if any(labels for _, labels in counts.label_sample):
        sem.stats["label_agreement"] = label_agreement(counts.label_sample, counts.vocab, sem)
    sem.stats["images_untagged_after_merge"] = _untagged_after_merge(counts, merge_map)
    log.info("tag semantics: %s", stats["sizes"])
    return sem


def _untagged_after_merge(counts: TagCounts, merge_map: dict[str, int]) -> dict:
    """Images left with no target: exact when no vocabulary tag was dropped, else from the sample."""
    dropped = np.array([merge_map[t] < 0 for t in counts.vocab], dtype=bool)
    base = int(counts.stats["images_untagged_after_vocab"])
    if not dropped.any() or not counts.label_sample:
        return {"count": base, "exact": not dropped.any()}
    sample = counts.label_sample
    lost = sum(bool(ids) and all(dropped[i] for i in ids) for ids, _ in sample)
    return {"count": base + round(lost / len(sample) * counts.stats["images"]), "exact": False}
