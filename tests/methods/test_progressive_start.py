"""The progressive codebooks' start: residual k-means for wsdhq_progressive, DPQ's random start kept."""
from __future__ import annotations

import pytest
import torch

from trainer.encoders import EncoderConfig
from trainer.methods import build_method, label_embeddings, method_config
from trainer.quantizers import ProgressiveQuantizer

ENC = EncoderConfig(kind="mlp", in_features=12, hidden=16)


def _method(name, **kw):
    cfg = method_config(**{"name": name, "embed_dim": 8, "M": 3, "K": 16, "seed": 3, "feature_epochs": 2, **kw})
    return build_method(cfg, ENC, label_embeddings(5, 8))


def test_wsdhq_progressive_starts_from_residual_kmeans_once_before_lq_switches_on():
    m = _method("wsdhq_progressive")
    assert [m.needs_codebook_update(e) for e in range(5)] == [False, True, False, False, False]
    # a run that ends before feature_epochs still starts its codebooks, after its last epoch
    assert _method("wsdhq_progressive", feature_epochs=4).needs_codebook_update(1, epochs=2)
    x = torch.randn(300, 12, generator=torch.Generator().manual_seed(0))
    emb = m.embed(x)
    before = m.quantizer.codebooks.detach().clone()
    info = m.codebook_update(emb)
    assert info == {"codebook_updates": 1, "samples": 300, "dead_codewords": 0}
    expected = ProgressiveQuantizer(8, M=3, K=16).fit(emb, seed=3).codebooks.detach()
    torch.testing.assert_close(m.quantizer.codebooks.detach(), expected)
    assert not torch.allclose(before, expected)
    # the start is a real quantizer of the embeddings: each level lowers the reconstruction error
    codes = m.quantizer.encode(emb)
    errs = [float((emb ** 2).sum(1).mean())] + [
        float(((emb - m.quantizer.decode(codes[:, :level])) ** 2).sum(1).mean()) for level in range(1, 4)]
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert m.quantizer.codebooks.requires_grad  # still trained by gradient afterwards


def test_dpq_keeps_its_random_start_unless_asked():
    m = _method("dpq")
    assert not any(m.needs_codebook_update(e) for e in range(5))
    with pytest.raises(RuntimeError, match="init=kmeans"):
        m.codebook_update(torch.randn(20, 8))
    assert _method("dpq", init="kmeans").needs_codebook_update(1)


def test_wsdhq_progressive_quantizes_and_retrieves_on_the_sphere_and_dpq_on_raw_f():
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(1))
    wp, dpq = _method("wsdhq_progressive"), _method("dpq")
    assert (wp.cfg.space, dpq.cfg.space) == ("sphere", "raw")
    torch.testing.assert_close(wp.embed(x).norm(dim=1), torch.ones(40))
    assert not torch.allclose(dpq.embed(x).norm(dim=1), torch.ones(40))
    out = wp.net(x)  # the progressive quantizer sees the unit-norm z, not f
    torch.testing.assert_close(out["t"], out["f"] / out["f"].norm(dim=1, keepdim=True))
