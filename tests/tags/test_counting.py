import random

import numpy as np

from trainer.tags.counting import (Sample, choose_vocab, count_cooccurrence, count_frequencies,
                                   count_tag_lists, iter_chunks)
from trainer.tags.normalize import NormalizeConfig


def test_frequencies_and_cooccurrence_match_hand_counts(corpus):
    tags, _ = corpus
    c = count_tag_lists(tags, NormalizeConfig(), min_count=2, max_vocab=None)
    assert c.vocab == ["sky", "clouds", "dog", "grass", "puppy"]
    assert c.counts.tolist() == [4, 3, 3, 2, 2]
    dense = c.cooc.toarray()
    assert dense[0, 1] == dense[1, 0] == 3      # sky-clouds
    assert dense[2, 4] == 2 and dense[2, 3] == 2 and dense[3, 4] == 1
    assert dense[0, 2] == 0
    assert np.array_equal(np.diag(dense), c.counts)
    assert c.stats["images"] == 8
    assert c.stats["images_untagged_after_normalisation"] == 1   # [] ("2007" image still has sky)
    assert c.stats["images_untagged_after_vocab"] == 1
    assert c.stats["raw_tags"] == 7 and c.stats["skips"] == {"tag_numeric": 1}


def test_max_vocab_keeps_most_frequent_with_tag_order_on_ties():
    from collections import Counter

    freq = Counter({"b": 5, "a": 5, "c": 3, "d": 1})
    assert choose_vocab(freq, min_count=2, max_vocab=None) == ["a", "b", "c"]
    assert choose_vocab(freq, min_count=1, max_vocab=2) == ["a", "b"]


def test_partials_over_any_split_and_order_sum_to_the_whole():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    tags = [rng.sample(words, rng.randint(0, 6)) for _ in range(300)]
    norm = NormalizeConfig()
    whole = count_tag_lists(tags, norm, 1, None)
    samples = [Sample(str(i), t) for i, t in enumerate(tags)]
    rng.shuffle(samples)
    parts = list(iter_chunks(samples, 7))
    assert sum(len(p) for p in parts) == 300 and len(parts) == 7
    freq = sum((count_frequencies(p, norm) for p in parts[1:]), count_frequencies(parts[0], norm))
    assert choose_vocab(freq.freq, 1, None) == whole.vocab
    cooc = sum(count_cooccurrence(p, norm, whole.vocab).cooc for p in parts)
    assert (cooc != whole.cooc).nnz == 0


def test_cooccurrence_chunking_is_exact_across_chunk_boundaries(monkeypatch):
    import trainer.tags.counting as counting

    tags = [["a", "b"], ["b", "c"], ["a", "b", "c"], ["c"]] * 5
    counts = count_tag_lists(tags, NormalizeConfig(), 1, None)
    assert counts.vocab == ["b", "c", "a"]
    full = counts.cooc.toarray()
    monkeypatch.setattr(counting, "_CHUNK", 3)
    small = count_tag_lists(tags, NormalizeConfig(), 1, None).cooc.toarray()
    assert np.array_equal(full, small)
    assert full.tolist() == [[15, 10, 10], [10, 15, 5], [10, 5, 10]]


def test_label_sample_is_the_same_bottom_k_whatever_the_split():
    from trainer.tags.counting import CooccurrencePartial
    import scipy.sparse as sp

    rng = random.Random(1)
    samples = [Sample(f"k{i}", [f"w{rng.randint(0, 5)}"], [f"l{i % 3}"]) for i in range(200)]
    vocab = [f"w{i}" for i in range(6)]
    norm = NormalizeConfig()
    whole = count_cooccurrence(samples, norm, vocab, sample_max=10)
    merged = CooccurrencePartial(sp.csr_matrix((6, 6), dtype=np.int64))
    for part in iter_chunks(samples[::-1], 4):
        merged = merged.merged(count_cooccurrence(part, norm, vocab, sample_max=10), 10)
    assert len(whole.label_sample) == 10
    assert merged.label_sample == whole.label_sample
