"""PHPQ's partial codebook attention (``quantizer.top_k``): the soft assignment restricted to each
sub-vector's top-k codewords, on the progressive and product quantizers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shards.config import ConfigError, from_dict
from trainer.encoders import EncoderConfig
from trainer.methods import MethodConfig, OptimConfig, build_method, method_config
from trainer.quantizers import ProductQuantizer, ProgressiveQuantizer, load_quantizer
from trainer.quantizers.base import top_k_softmax


def test_top_k_softmax_is_zero_outside_sums_to_one_inside_and_renormalises_the_kept_logits():
    logits = torch.tensor([[3.0, -1.0, 2.0, 0.5, 1.0], [0.0, 4.0, -2.0, 3.5, 3.0]])
    p = top_k_softmax(logits, 2)
    kept = [[0, 2], [1, 3]]
    for row, keep in enumerate(kept):
        drop = [i for i in range(5) if i not in keep]
        assert (p[row, drop] == 0).all()
        torch.testing.assert_close(p[row, keep], torch.softmax(logits[row, keep], 0), rtol=0, atol=1e-7)
    torch.testing.assert_close(p.sum(1), torch.ones(2), rtol=0, atol=1e-6)
    assert (p > 0).sum(1).tolist() == [2, 2]


def test_top_k_of_k_or_more_and_zero_are_the_full_softmax_bit_for_bit():
    logits = torch.randn(7, 3, 16)
    full = torch.softmax(logits, -1)
    for k in (0, 16, 17, 1000):
        assert torch.equal(top_k_softmax(logits, k), full)


def test_exactly_k_are_kept_when_logits_tie():
    p = top_k_softmax(torch.zeros(2, 6), 4)
    assert (p > 0).sum(1).tolist() == [4, 4]
    torch.testing.assert_close(p.sum(1), torch.ones(2))


def test_gradient_reaches_only_the_kept_logits():
    logits = torch.randn(4, 10, requires_grad=True)
    p = top_k_softmax(logits, 3)
    (p * torch.randn(4, 10)).sum().backward()
    keep = logits.detach().topk(3, -1).indices
    mask = torch.zeros(4, 10, dtype=torch.bool).scatter_(1, keep, True)
    assert (logits.grad[~mask] == 0).all() and (logits.grad[mask] != 0).all()


def _rows_with_grad(grad: torch.Tensor) -> list[set[int]]:
    """Per codebook (level / block), the codewords whose gradient is not all zero."""
    return [set(torch.nonzero(g.abs().sum(-1)).flatten().tolist()) for g in grad]


def test_product_quantizer_top_k_probs_codes_and_gradients():
    torch.manual_seed(0)
    D, M, K, k = 12, 3, 16, 4
    q = ProductQuantizer(D, M, K, alpha=10.0, seed=1, top_k=k)
    full = ProductQuantizer(D, M, K, alpha=10.0, seed=1)
    x = torch.randn(1, D)
    out, ref = q(x), full(x)
    probs = out["probs"]
    assert ((probs > 0).sum(-1) == k).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, M))
    top = q.similarities(x).topk(k, -1).indices[0]  # (M, k)
    for m in range(M):
        assert set(torch.nonzero(probs[0, m]).flatten().tolist()) == set(top[m].tolist())
    assert torch.equal(out["codes"], ref["codes"])  # the hard path is unchanged (its value: one-hot
    torch.testing.assert_close(out["hard"], ref["hard"], rtol=0, atol=1e-6)  # + p - p, to an ulp)
    assert not torch.allclose(out["soft"], ref["soft"])
    (out["soft"].square().sum() + out["hard"].sum()).backward()
    assert _rows_with_grad(q.weight.grad) == [set(t.tolist()) for t in top]


def test_product_quantizer_top_k_of_k_equals_the_full_softmax_and_round_trips(tmp_path):
    x = torch.randn(5, 8)
    a, b = ProductQuantizer(8, 2, 8, seed=3, top_k=8), ProductQuantizer(8, 2, 8, seed=3)
    for key in ("probs", "soft", "hard", "codes"):
        assert torch.equal(a(x)[key], b(x)[key])
    q = ProductQuantizer(8, 2, 8, seed=3, top_k=2)
    q.save(tmp_path / "q.npz")
    again = load_quantizer(tmp_path / "q.npz")
    assert again.top_k == 2 and torch.equal(again(x)["probs"], q(x)["probs"])


def test_progressive_quantizer_top_k_soft_path_and_gradients_per_level():
    torch.manual_seed(0)
    D, L, K, k = 6, 3, 12, 3
    q = ProgressiveQuantizer(D, L, K, gamma=5.0, init_std=1.0, seed=2, top_k=k)
    full = ProgressiveQuantizer(D, L, K, gamma=5.0, init_std=1.0, seed=2)
    x = torch.randn(1, D)
    out, ref = q(x), full(x)
    assert torch.equal(out.codes, ref.codes) and all(torch.equal(a, b) for a, b in zip(out.hard, ref.hard))
    # level by level: the residual (hard path) and its top-k codewords; the soft increment is their mix
    r, tops = x, []
    for level, C in enumerate(q.codebooks.detach()):
        sim = torch.nn.functional.normalize(r, dim=1) @ torch.nn.functional.normalize(C, dim=1).T
        top = sim.topk(k, 1).indices[0]
        tops.append(set(top.tolist()))
        p = torch.softmax(5.0 * sim[0, top], 0)
        prev = out.soft[level - 1] if level else torch.zeros_like(x)
        torch.testing.assert_close(out.soft[level] - prev, (p @ C[top])[None], rtol=0, atol=1e-6)
        r = r - C[sim.argmax(1)]
    (out.soft[-1].square().sum() + out.hard[-1].sum()).backward()
    assert _rows_with_grad(q.codebooks.grad) == tops


def test_progressive_quantizer_top_k_of_k_equals_the_full_softmax():
    x = torch.randn(4, 6)
    a, b = ProgressiveQuantizer(6, 2, 8, seed=1, top_k=8)(x), ProgressiveQuantizer(6, 2, 8, seed=1)(x)
    assert all(torch.equal(s, t) for s, t in zip(a.soft + a.hard, b.soft + b.hard))


def test_config_routes_top_k_to_the_learned_codebooks_and_refuses_it_on_the_additive_kind():
    assert method_config("mecoq", top_k=8).quantizer.top_k == 8
    assert method_config("wsdhq_progressive", top_k=32).quantizer.top_k == 32
    with pytest.raises(ConfigError, match=r"method\.quantizer\.top_k: .*additive quantizer has none"):
        from_dict(MethodConfig, {"name": "wsdhq", "quantizer": {"top_k": 8}}, "method")
    with pytest.raises(ConfigError, match=r"method\.quantizer\.top_k: .*0 \(all\) to K \(16\), got 17"):
        method_config("dpq", K=16, top_k=17)
    with pytest.raises(ConfigError, match=r"method\.quantizer\.top_k: .*got -1"):
        method_config("mopq", top_k=-1)


def test_mecoq_with_top_k_trains_with_finite_gradients():
    """MeCoQ's entropy term sees exact zeros in the restricted soft codes: its gradient stays finite."""
    enc = from_dict(EncoderConfig, {"kind": "mlp", "in_features": 16, "hidden": 0}, "encoder")
    cfg = method_config("mecoq", M=2, K=8, top_k=2, memory_size=6, memory_epoch=0, embed_dim=8)
    m = build_method(cfg, enc, np.zeros((3, 8), np.float32))
    assert m.quantizer.top_k == 2
    opt = m.build_optimizer(OptimConfig(lr=1e-2, codebook_lr=1e-2))
    torch.manual_seed(0)
    x = torch.randn(5, 16)
    before = m.quantizer.codebooks.clone()
    for epoch in range(2):
        opt.zero_grad()
        loss, terms = m.loss({"x": x, "y": torch.zeros(5, 3)}, epoch)
        loss.backward()
        params = [*m.encoder.parameters(), *m.quantizer.parameters()]
        grads = [p.grad for p in params if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert np.isfinite(terms["entropy"])
        opt.step()
    assert not torch.equal(before, m.quantizer.codebooks)
