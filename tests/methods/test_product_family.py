"""The product coding (MeCoQ, MoPQ) and their losses against values worked out by hand on tiny inputs."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from shards.config import ConfigError, from_dict
from trainer.encoders import EncoderConfig
from trainer.methods import MeCoQLossConfig, MethodConfig, MethodSpec, MoPQLossConfig, build_method, method_config
from trainer.methods.objectives import MeCoQObjective, MoPQObjective, debiased_contrastive
from trainer.quantizers import ProductQuantizer, load_quantizer

SPEC = MethodSpec("tags", False, "product", "sphere", "pos_neg", "random")


def hand_quantizer(alpha: float = 1.0) -> ProductQuantizer:
    """D=4, M=2, K=2: block 0 (dims 0,1) holds e0, e1; block 1 (dims 2,3) holds e2, e3. The weight is
    3x the unit codewords plus junk outside each block, which the masks and normalisation remove."""
    q = ProductQuantizer(4, M=2, K=2, alpha=alpha)
    w = torch.full((2, 2, 4), 5.0)
    w[0, :, :2] = 3 * torch.eye(2)
    w[1, :, 2:] = 3 * torch.eye(2)
    with torch.no_grad():
        q.weight.copy_(w)
    return q


def test_product_quantizer_soft_hard_and_codes_by_hand():
    q = hand_quantizer(alpha=1.0)
    expected = torch.zeros(2, 2, 4)
    expected[0, :, :2] = torch.eye(2)
    expected[1, :, 2:] = torch.eye(2)
    assert torch.equal(q.codebooks, expected)  # block-diagonal unit codewords
    x = torch.tensor([[3.0, 1.0, 0.0, -2.0]])
    out = q(x)
    # block 0: cos = (3, 1)/√10 -> p = softmax(0.948683, 0.316228); block 1: cos = (0, -1)
    p0 = 1 / (1 + math.exp(-(3 - 1) / math.sqrt(10)))
    p1 = 1 / (1 + math.exp(-1))
    assert out["probs"][0].flatten().tolist() == pytest.approx([p0, 1 - p0, p1, 1 - p1], abs=1e-6)
    assert out["soft"][0].tolist() == pytest.approx([p0, 1 - p0, p1, 1 - p1], abs=1e-6)
    assert out["hard"][0].tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert out["codes"].tolist() == [[0, 0]] and q.encode(x).tolist() == [[0, 0]]
    assert q.decode(torch.tensor([[1, 0]])).tolist() == [[0.0, 1.0, 1.0, 0.0]]
    assert q.lut(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).tolist() == [[[1.0, 2.0], [3.0, 4.0]]]
    # a reconstruction of unit codewords on disjoint blocks has norm exactly √M
    assert q.decode(torch.tensor([[1, 1], [0, 1]])).norm(dim=1).tolist() == pytest.approx([math.sqrt(2)] * 2)


def test_straight_through_hard_reconstruction_passes_the_soft_assignments_gradient_to_x():
    torch.manual_seed(0)
    q = ProductQuantizer(6, M=2, K=5, alpha=4.0, seed=1)
    x = torch.randn(3, 6, requires_grad=True)
    w = torch.randn(3, 6)
    out = q(x)
    (gx_hard,) = torch.autograd.grad((out["hard"] * w).sum(), x, retain_graph=True)
    (gx_soft,) = torch.autograd.grad((q.reconstruct(out["probs"], q.codebooks) * w).sum(), x)
    assert torch.allclose(gx_hard, gx_soft, atol=1e-6) and gx_hard.abs().sum() > 0
    assert torch.allclose(out["hard"].detach(), q.decode(out["codes"]), atol=1e-6)  # forward: argmax codewords


def test_product_quantizer_saves_loads_and_exports_to_faiss_with_the_aqd_scores(tmp_path):
    from eval.faiss_export import build

    torch.manual_seed(0)
    q = ProductQuantizer(8, M=2, K=4, alpha=3.0, seed=2)
    x = torch.randn(20, 8)
    codes = q.encode(x)
    buf = io.BytesIO()
    q.save(buf)
    buf.seek(0)
    back = load_quantizer(buf)
    assert isinstance(back, ProductQuantizer) and back.alpha == 3.0
    assert torch.equal(back.encode(x), codes) and torch.equal(back.codebooks, q.codebooks)
    assert back.spec.to_dict() == {"kind": "product", "M": 2, "K": 4, "D": 8, "bits": 4}
    queries = torch.randn(3, 8)
    aqd = queries @ q.decode(codes).T
    # the exact tiled PQ scan (K <= 16 would pick FastScan, whose 8-bit tables are approximate)
    scores, ids = build(q.codebooks.numpy(), codes.numpy(), "pq").search(queries.numpy(), 20)
    got = np.take_along_axis(aqd.numpy(), ids, axis=1)
    assert np.allclose(scores, got, atol=1e-5) and np.allclose(np.sort(aqd.numpy())[:, ::-1], scores, atol=1e-5)


def test_debiased_contrastive_by_hand():
    # two samples, views equal: each row's positive has cos 1, its two negatives cos 0; T = 0.5
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = math.exp(2)
    simple = debiased_contrastive(z, z.clone(), None, 0.5, None)
    assert simple.item() == pytest.approx(-math.log(pos / (pos + 2)), abs=1e-6)  # 0.239545
    # τ⁺ = 0.1: N_g = (2 − 0.1·2·e²)/0.9 = 0.580210 (above the floor 2e^-2)
    debiased = debiased_contrastive(z, z.clone(), None, 0.5, 0.1)
    assert debiased.item() == pytest.approx(0.0755924, abs=1e-6)
    # τ⁺ = 0.5 drives the estimate below zero: the floor n·e^{-1/T} = 2e^-2 takes over
    assert debiased_contrastive(z, z.clone(), None, 0.5, 0.5).item() == pytest.approx(0.0359763, abs=1e-6)
    # one memory row (1, 1)/√2: one more negative of cos 1/√2 for every row (and n = 3)
    mem = torch.tensor([[2.0, 2.0]])
    assert debiased_contrastive(z, z.clone(), mem, 0.5, None).item() == pytest.approx(0.6028605, abs=1e-6)
    assert debiased_contrastive(z, z.clone(), mem, 0.5, 0.1).item() == pytest.approx(0.4611720, abs=1e-6)


def test_mecoq_entropy_and_codeword_terms_by_hand_and_the_memory_fifo():
    cfg = MeCoQLossConfig(temperature=0.5, debias=False, entropy_weight=2.0, codeword_weight=3.0,
                          memory_size=5, memory_epoch=1)
    obj = MeCoQObjective(cfg, torch.zeros(1, 4), SPEC)
    q = hand_quantizer()
    obj.bind(q)
    # soft reconstructions e0 / e1 as two samples, both views alike; uniform soft codes over K=2
    soft = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    probs = torch.full((2, 2, 2), 0.5)
    out = {"soft": torch.cat([soft, soft]), "probs": torch.cat([probs, probs * 1.0])}
    total, terms = obj.loss(out, torch.zeros(4, 1), epoch=0)
    pos = math.exp(2)
    assert terms["contrastive"] == pytest.approx(-math.log(pos / (pos + 2)), abs=1e-6)
    assert terms["entropy"] == pytest.approx(math.log(2), abs=1e-6)  # per block, averaged
    # orthonormal codewords per block: c_mkᵀc_mk' = identity, mean over (m, k, k') = 1/K
    assert terms["codeword"] == pytest.approx(0.5, abs=1e-6)
    assert total.item() == pytest.approx(terms["contrastive"] + 2 * math.log(2) + 3 * 0.5, abs=1e-5)
    assert terms["memory"] == 0.0  # before memory_epoch the memory is filled, not used
    assert obj.memory.shape == (4, 2, 2)
    # FIFO: view-1 rows then view-2 rows appended, the oldest dropped past memory_size
    new = torch.arange(4 * 4, dtype=torch.float32).view(4, 2, 2)
    obj.enqueue(new[:3])
    assert obj.memory.shape == (5, 2, 2)
    assert torch.equal(obj.memory[-3:], new[:3]) and torch.equal(obj.memory[:2], torch.full((2, 2, 2), 0.5))
    state = obj.state_dict()
    other = MeCoQObjective(cfg, torch.zeros(1, 4), SPEC)
    other.load_state_dict(state)
    assert torch.equal(other.memory, obj.memory)
    # from memory_epoch on, the memory's rows (decoded with the current codebooks) are negatives
    _, terms = obj.loss(out, torch.zeros(4, 1), epoch=1)
    assert terms["memory"] == 5.0


def test_mopq_multinoulli_loss_by_hand_in_both_key_modes():
    q = hand_quantizer(alpha=1.0)
    # two images whose embeddings quantize to (e0 + e2) and (e1 + e3); tag keys along the same
    # directions; T = 1: the logits are the cosines, 1 (own key) and 0 (the other)
    t = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 1, 0], [0, 1.0, 0, 1]]), dim=1)
    out = {"t": t, **q(t)}
    V = torch.tensor([[1.0, 0, 1, 0], [0, 1.0, 0, 1], [0, 0, 0, 0.0]])
    cfg = MoPQLossConfig(keys="tags", temperature=1.0, dense_weight=0.5)
    obj = MoPQObjective(cfg, V, SPEC)
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    out3 = {"t": torch.cat([t, t[:1]]), "hard": torch.cat([out["hard"], out["hard"][:1]])}
    total, terms = obj.loss(out3, y)
    ce = -math.log(math.e / (math.e + 1))  # logits: cos = 1 (own key), 0 (the other)
    assert terms["mcl"] == pytest.approx(ce, abs=1e-6) and terms["dense"] == pytest.approx(ce, abs=1e-6)
    assert total.item() == pytest.approx(1.5 * ce, abs=1e-6)
    assert terms["untagged"] == 1.0 and terms["negatives"] == 1.0  # the untagged row is left out
    views = MoPQObjective(MoPQLossConfig(keys="views", temperature=1.0, dense_weight=0.0), V, SPEC)
    both = {"t": torch.cat([t, t]), "hard": torch.cat([out["hard"], out["hard"]])}
    total, terms = views.loss(both, y[:2])
    assert total.item() == pytest.approx(ce, abs=1e-6) and "dense" not in terms


def test_presets_compose_loss_and_quantizer_sections_and_refuse_a_contrastive_loss_without_product_codes():
    mecoq = method_config("mecoq", M=2, memory_size=10)
    assert (mecoq.loss.kind, mecoq.quantizer.kind, mecoq.quantizer.init, mecoq.space) == \
        ("mecoq", "product", "kmeans", "sphere")
    assert mecoq.loss.memory_size == 10 and mecoq.end_to_end
    mopq = from_dict(MethodConfig, {"name": "mopq", "loss": {"keys": "views"}, "quantizer": {"M": 8}}, "method")
    assert (mopq.loss.kind, mopq.loss.keys, mopq.quantizer.M) == ("mopq", "views", 8)
    assert MethodConfig().loss.kind == "margin" and not MethodConfig().end_to_end
    with pytest.raises(ConfigError, match="quantizer.kind"):
        from_dict(MethodConfig, {"name": "wsdhq", "loss": {"kind": "mecoq"}}, "method")
    with pytest.raises(ConfigError, match="pos_prior"):
        from_dict(MethodConfig, {"name": "mecoq", "loss": {"pos_prior": 1.0}}, "method")


def test_mecoq_method_trains_on_two_views_and_its_memory_travels_in_the_state_dict():
    enc = from_dict(EncoderConfig, {"kind": "mlp", "in_features": 16, "hidden": 0}, "encoder")
    cfg = method_config("mecoq", M=2, K=4, memory_size=6, memory_epoch=0, embed_dim=8)
    m = build_method(cfg, enc, np.zeros((3, 8), np.float32))
    from trainer.methods import OptimConfig

    opt = m.build_optimizer(OptimConfig(lr=1e-2, codebook_lr=1e-2))
    assert len(opt.optimizers) == 1 and len(opt.optimizers[0].param_groups) == 2  # DeepSpeed takes one
    torch.manual_seed(0)
    x = torch.randn(5, 16)
    before = m.quantizer.codebooks.clone()
    for epoch in range(2):
        opt.zero_grad()
        loss, terms = m.loss({"x": x, "y": torch.zeros(5, 3)}, epoch)
        loss.backward()
        opt.step()
    assert not torch.equal(before, m.quantizer.codebooks)  # trained by gradient
    assert terms["memory"] == 6.0  # 2 views x 5 rows enqueued after step 1, the newest 6 kept
    state = m.state_dict()
    assert state["objective"]["memory"].shape == (6, 2, 4)
    again = build_method(cfg, enc, np.zeros((3, 8), np.float32))
    again.load_state_dict(state)
    assert torch.equal(again.objective.memory, m.objective.memory)
    assert torch.equal(again.encode(x), m.encode(x))


def test_product_coding_refit_runs_after_the_last_epoch_and_leaves_the_kmeans_centroids():
    """``quantizer.refit``: a second spherical k-means after the last epoch (besides the start after
    ``kmeans_epoch``), whose centroids replace the gradient-trained codewords. Two well-separated
    pairs of rows per block: the centroids are the (unit) rows themselves, so the codes are known."""
    enc = from_dict(EncoderConfig, {"kind": "mlp", "in_features": 16, "hidden": 0}, "encoder")
    plain = build_method(method_config("mecoq", M=2, K=2, kmeans_epoch=2, embed_dim=4), enc,
                         np.zeros((3, 4), np.float32))
    m = build_method(method_config("mecoq", M=2, K=2, kmeans_epoch=2, embed_dim=4, refit=True), enc,
                     np.zeros((3, 4), np.float32))
    assert [e for e in range(5) if plain.needs_codebook_update(e, 5)] == [1]
    assert [e for e in range(5) if m.needs_codebook_update(e, 5)] == [1, 4]
    assert [e for e in range(1) if m.needs_codebook_update(e, 1)] == [0]  # a 1-epoch run: the refit only
    x = torch.tensor([[2.0, 0, 0, 3], [2, 0, 0, 3], [0, 5, 1, 0], [0, 5, 1, 0]])
    info = m.codebook_update(x, epoch=4)
    assert (info["codebook_updates"], info["samples"]) == (1, 4)
    C = m.quantizer.codebooks
    assert sorted(map(tuple, C[0, :, :2].round(decimals=5).tolist())) == [(0.0, 1.0), (1.0, 0.0)]
    assert sorted(map(tuple, C[1, :, 2:].round(decimals=5).tolist())) == [(0.0, 1.0), (1.0, 0.0)]
    assert C[0, :, 2:].abs().max() == 0 and C[1, :, :2].abs().max() == 0  # block-diagonal still
    codes = m.quantizer.encode(x)
    assert codes[0].tolist() == codes[1].tolist() and codes[2].tolist() == codes[3].tolist()
    assert (codes[0] != codes[2]).all()
    assert torch.allclose(m.quantizer.decode(codes[:1]), torch.tensor([[1.0, 0, 0, 1]]))
    assert from_dict(MethodConfig, {"name": "mecoq"}, "method").quantizer.refit is False


def test_tagless_objectives_take_any_embed_dim_and_the_tag_readers_refuse_a_mismatch():
    """MeCoQ and MoPQ with view keys never compare f with the tag embeddings V, so
    ``method.embed_dim`` is free; every objective that reads V still needs V's dimension."""
    enc = from_dict(EncoderConfig, {"kind": "mlp", "in_features": 16, "hidden": 0}, "encoder")
    V = np.zeros((3, 8), np.float32)
    m = build_method(method_config("mecoq", M=2, K=4, embed_dim=4), enc, V)
    assert m.quantizer.D == 4 and m.embed(torch.randn(5, 16)).shape == (5, 4)
    views = from_dict(MethodConfig, {"name": "mopq", "embed_dim": 4, "loss": {"keys": "views"},
                                     "quantizer": {"M": 2, "K": 4}}, "method")
    assert build_method(views, enc, V).quantizer.D == 4
    tags = from_dict(MethodConfig, {"name": "mopq", "embed_dim": 4, "quantizer": {"M": 2, "K": 4}}, "method")
    for cfg in (tags, method_config("wsdhq", M=2, K=4, embed_dim=4)):
        with pytest.raises(ValueError, match=r"method.embed_dim=4 but the tag/label embeddings have shape \(3, 8\)"):
            build_method(cfg, enc, V)
