"""Losses against hand computations (numbers written out)."""
from __future__ import annotations

import math

import torch

from trainer.losses import (adaptive_margin_loss, adaptive_margins, classification_loss,
                            progressive_distortions, quantization_loss, reading_target, reading_weights)

# Four tags on the unit circle's axes (raw norms differ, cosines do not): cos(v0,v1)=0, cos(v0,v2)=-1, ...
V = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -3.0]])
# image 0: f=(0.3,0.4) -> z=(0.6,0.8), cosines to tags [0.6, 0.8, -0.6, -0.8], tags {0}
# image 1: f=(0,0.5)   -> z=(0,1),     cosines [0, 1, 0, -1],               tags {1, 2}
# image 2: untagged
F3 = torch.tensor([[0.3, 0.4], [0.0, 0.5], [-0.7, 0.1]])
Y3 = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])


def test_adaptive_margins_are_one_minus_cosine_for_gamma_one_and_scaled_otherwise():
    m = adaptive_margins(V, gamma=1.0)
    assert torch.allclose(m, torch.tensor([[0., 1, 2, 1], [1, 0, 1, 2], [2, 1, 0, 1], [1, 2, 1, 0]]))
    # gamma=2: 2^(-1) (1-cos)^2 -> opposite tags 0.5*4 = 2, orthogonal 0.5
    assert torch.allclose(adaptive_margins(V, gamma=2.0)[0], torch.tensor([0.0, 0.5, 2.0, 0.5]))


def test_wsdhq_margin_loss_equals_hand_computation_on_three_images_four_tags():
    # image 0, j=0, k in {1,2,3}: max(0, 1-0.6+0.8)=1.2, max(0, 2-0.6-0.6)=0.8, max(0, 1-0.6-0.8)=0 -> 2.0
    # image 1, j=1, k in {0,3}: max(0,1-1+0)=0, max(0,2-1-1)=0; j=2, k in {0,3}: 2-0+0=2, max(0,1-0-1)=0 -> 2.0
    # image 2 untagged: nothing.  normaliser = 1*(4-1) + 2*(4-2) = 7
    loss = adaptive_margin_loss(F3, Y3, V, gamma=1.0, mask="pos_neg")
    assert math.isclose(float(loss), 4.0 / 7.0, rel_tol=1e-6)


def test_dpq_all_label_margin_loss_equals_hand_computation():
    # image 0, j=0, l over all 4: 0 + 1.2 + 0.8 + 0 = 2.0
    # image 1, j=1: l=0: 1-1+0=0, l=2: 1-1+0=0, l=3: 2-1-1=0 -> 0; j=2: l=0: 2-0+0=2, l=1: 1-0+1=2, l=3: 0 -> 4
    # normaliser L * sum|Y| = 4 * 3 = 12
    loss = adaptive_margin_loss(F3, Y3, V, gamma=1.0, mask="all")
    assert math.isclose(float(loss), 6.0 / 12.0, rel_tol=1e-6)


def test_untagged_images_change_nothing_and_an_untagged_batch_is_zero_with_a_graph():
    base = adaptive_margin_loss(F3[:2], Y3[:2], V)
    more = torch.cat([F3, torch.randn(5, 2)]), torch.cat([Y3, torch.zeros(5, 4, dtype=Y3.dtype)])
    assert float(adaptive_margin_loss(*more, V)) == float(base)
    f = F3.clone().requires_grad_(True)
    zero = adaptive_margin_loss(f, torch.zeros(3, 4), V)
    zero.backward()
    assert float(zero.detach()) == 0.0 and torch.equal(f.grad, torch.zeros(3, 2))


def test_margin_loss_pair_chunking_matches_the_full_cube():
    g = torch.Generator().manual_seed(0)
    f, Vr = torch.randn(16, 8, generator=g), torch.randn(30, 8, generator=g)
    y = (torch.rand(16, 30, generator=g) < 0.2).float()
    zn, vn = torch.nn.functional.normalize(f, dim=1), torch.nn.functional.normalize(Vr, dim=1)
    s = zn @ vn.T
    cube = torch.relu(adaptive_margins(Vr)[None] - s[:, :, None] + s[:, None, :])  # (B, j, k)
    cube = cube * y[:, :, None] * (1 - y[:, None, :])
    expect = cube.sum() / (y.sum(1) * (30 - y.sum(1))).sum()
    got = adaptive_margin_loss(f, y, Vr, pair_chunk=7)
    assert torch.allclose(got, expect, rtol=1e-5)


def test_quantization_loss_raw_reading_equals_hand_computation():
    Vq = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    f = torch.tensor([[0.5, 0.2], [0.0, 0.0]])
    recon = torch.tensor([[0.4, 0.0], [0.1, -0.1]])
    # sample 0: diff (0.1, 0.2) -> V diff (0.1, 0.3) -> 0.01 + 0.09 = 0.10
    # sample 1: diff (-0.1, 0.1) -> V diff (-0.1, 0.0) -> 0.01;   mean = 0.055
    loss = quantization_loss(reading_target(f, "raw"), recon, reading_weights(Vq, "raw"))
    assert math.isclose(float(loss), 0.055, rel_tol=1e-6)


def test_quantization_loss_sphere_reading_equals_hand_computation():
    Vq = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # normalised: (1,0), (1/sqrt2, 1/sqrt2)
    f = torch.tensor([[0.3, 0.4]])  # z = (0.6, 0.8): tag cosines 0.6 and 1.4/sqrt2
    z_hat = torch.tensor([[0.6, 0.6]])  # v̄ᵀẑ = 0.6 and 1.2/sqrt2
    # (0.6-0.6)^2 + ((1.4-1.2)/sqrt2)^2 = 0.04/2 = 0.02
    loss = quantization_loss(reading_target(f, "sphere"), z_hat, reading_weights(Vq, "sphere"))
    assert math.isclose(float(loss), 0.02, rel_tol=1e-6)


def test_quantization_loss_sends_no_gradient_into_the_reconstruction():
    f = torch.tensor([[0.5, 0.2]], requires_grad=True)
    recon = torch.tensor([[0.4, 0.0]], requires_grad=True)
    quantization_loss(f, recon, torch.eye(2)).backward()
    assert recon.grad is None
    assert torch.allclose(f.grad, torch.tensor([[0.2, 0.4]]))  # d/df (f-r)^2 = 2(f-r)


def test_dpq_distortions_and_jcl_on_a_tiny_case():
    x = torch.tensor([[1.0, 2.0]])
    soft = [torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 1.0]])]
    hard = [torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 2.0]])]
    d_soft, d_hard, jcl = progressive_distortions(x, soft, hard)
    assert math.isclose(float(d_soft), 1 / 2 + 1 / 2)  # (1^2+0)/2 + (0+1^2)/2
    assert math.isclose(float(d_hard), 4 / 2 + 0.0)  # (0+2^2)/2 + 0
    assert math.isclose(float(jcl), 1 / 2)  # (0 + 1^2)/2


def test_classification_loss_single_and_multi_label():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert math.isclose(float(classification_loss(logits, torch.tensor([[0, 1]]), False)),
                        -math.log(0.75), rel_tol=1e-6)
    # BCE mean over 2 entries: -log(sigmoid(0))/2 - log(1 - sigmoid(log 3))/2 = (log2 + log4)/2
    assert math.isclose(float(classification_loss(logits, torch.tensor([[1, 0]]), True)),
                        (math.log(2) + math.log(4)) / 2, rel_tol=1e-6)
