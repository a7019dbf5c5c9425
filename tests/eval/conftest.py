"""Code sets written straight from arrays, so evaluation is tested without an encoder."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch

from eval.codes import pack_code_file, write_manifest
from shards import storage
from trainer.quantizers import AdditiveQuantizer, ProgressiveQuantizer


def brute_scores(queries, codes, codebooks):
    """Decode-and-dot reference scores in which items with the same code score exactly the same.

    ``queries @ decode(codes).T`` does not promise that: BLAS kernels may treat the last rows of a
    block differently, and on some CPUs two identical decoded rows then score one ulp apart, which
    breaks the ties the rankings under test are about."""
    from eval.scoring import Codebooks

    distinct, which = np.unique(codes, axis=0, return_inverse=True)
    return (queries @ Codebooks(codebooks).decoded(distinct).T)[:, which.reshape(-1)]


def write_code_set(url, codebooks, keys, codes, labels, feat=None, kind="additive", model="ckpt-a",
                   tags="tags-a", files=2):
    """A finished code set at ``url`` (local or s3://) split into ``files`` code files."""
    m, k, d = codebooks.shape
    q = AdditiveQuantizer(d, m, k) if kind == "additive" else ProgressiveQuantizer(d, m, k)
    with torch.no_grad():
        q.codebooks.copy_(torch.as_tensor(codebooks, dtype=torch.float32))
    buf = io.BytesIO()
    q.save(buf)
    storage.write_bytes(storage.join(url, "quantizer.npz"), buf.getvalue())
    entries = []
    for i, part in enumerate(np.array_split(np.arange(len(keys)), files)):
        name = f"codes-shard-{i:06d}.npz"
        data = pack_code_file([keys[j] for j in part], part, codes[part], [labels[j] for j in part],
                              None if feat is None else feat[part])
        storage.write_bytes(storage.join(url, name), data)
        entries.append({"url": name, "rows": len(part), "sha256": hashlib.sha256(data).hexdigest()})
    info = {"quantizer_kind": kind, "M": m, "K": k, "D": d, "bits": m * int(np.log2(k)), "method": "wsdhq",
            "checkpoint": f"/runs/{model}", "checkpoint_sha256": {"model.pt": model, "quantizer.npz": model},
            "tag_semantics_hash": tags, "has_features": feat is not None, "source": {"split": "x"}}
    return write_manifest(url, info, entries)


@pytest.fixture
def retrieval_data():
    """4 classes, features = class centre + noise; codes from a 2 x 16-word codebook fitted to them."""
    rng = np.random.default_rng(0)
    d, m, k = 8, 2, 16
    centres = rng.standard_normal((4, d)) * 2
    def make(n, prefix):
        cls = rng.integers(0, 4, n)
        f = (centres[cls] + rng.standard_normal((n, d)) * 0.7).astype(np.float32)
        labels = [[f"c{c}"] + (["extra"] if c == 0 and i % 3 == 0 else []) for i, c in enumerate(cls)]
        return [f"{prefix}{i:05d}" for i in range(n)], f, labels
    dkeys, dfeat, dlab = make(400, "db")
    qkeys, qfeat, qlab = make(30, "q")
    cb = rng.standard_normal((m, k, d)).astype(np.float32)
    cb[0] = centres[rng.integers(0, 4, k)] + rng.standard_normal((k, d)) * 0.3  # level 1 ~ class centres
    cb[1] *= 0.3

    def encode(x):  # greedy residual assignment (a stand-in for the trained encoder's codes)
        codes = np.zeros((len(x), m), np.uint8)
        r = x.copy()
        for j in range(m):
            codes[:, j] = ((r[:, None, :] - cb[j][None]) ** 2).sum(-1).argmin(1)
            r -= cb[j][codes[:, j]]
        return codes
    return {"cb": cb, "db": (dkeys, encode(dfeat), dlab, dfeat), "q": (qkeys, encode(qfeat), qlab, qfeat)}


def _png(rng) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_corpus(url, n, per_shard, seed=0, prefix="item", feat_dim=16, classes=4):
    """A shard set of ``n`` samples (tiny png, tags, labels, feat.npy) in shards of ``per_shard``."""
    from shards.schema import encode_sample
    from shards.writer import ShardSetWriter

    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((classes, feat_dim)) * 2
    w = ShardSetWriter(str(url), "eval-test", "database", label_names=[f"c{c}" for c in range(classes)],
                       max_count=per_shard)
    for i in range(n):
        c = int(rng.integers(0, classes))
        feat = centres[c] + rng.standard_normal(feat_dim) * 0.5
        w.write(encode_sample(f"{prefix}{i:05d}", _png(rng), "png", [f"t{c}"], [f"c{c}"], feat=feat))
    return w.close()


def make_checkpoint(url, name="wsdhq", tag_hash="tags-a", feat_dim=16, embed_dim=8, m=2, k=16, seed=0):
    """A real inference checkpoint (trainer.inference.save_inference) of a tiny MLP model."""
    from trainer.inference import save_inference
    from trainer.encoders import EncoderConfig
    from trainer.methods import method_config, build_method, label_embeddings

    torch.manual_seed(seed)
    enc = EncoderConfig(kind="mlp", in_features=feat_dim, hidden=32)
    cfg = method_config(name=name, embed_dim=embed_dim, M=m, K=k, seed=seed)
    method = build_method(cfg, enc, label_embeddings(6, embed_dim))
    if name == "wsdhq":
        x = torch.randn(400, feat_dim, generator=torch.Generator().manual_seed(seed))
        method.codebook_update(method.embed(x))
    method.encoder.eval()
    return save_inference(str(url), method, {"epoch": 1, "tag_semantics_hash": tag_hash})
