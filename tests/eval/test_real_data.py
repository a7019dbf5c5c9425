import json

import pytest

from eval.encode import EncodeConfig, run
from eval.evaluate import main as evaluate_main


@pytest.mark.real_data
def test_real_mirflickr_images_encode_and_evaluate_with_a_top10_grid(mirflickr_real, tmp_path):
    """Real JPEGs through the image path (decode, eval transform, small CNN), real labels for relevance."""
    import torch

    from shards.converters.mirflickr import convert_matrix
    from shards.writer import ShardingConfig
    from trainer.inference import save_inference
    from trainer.encoders import EncoderConfig
    from trainer.methods import method_config, build_method, label_embeddings

    convert_matrix(str(mirflickr_real / "subset1000_with_images.npz"), str(tmp_path / "data"),
                   ShardingConfig(max_count=150, query_fraction=0.05, train_fraction=0.1,
                                  database_includes_train=False, validate_images=False))
    torch.manual_seed(0)
    m = build_method(method_config(name="dpq", embed_dim=16, M=2, K=16),
                     EncoderConfig(kind="small_cnn", width=8), label_embeddings(24, 16))
    save_inference(str(tmp_path / "ckpt"), m, {"tag_semantics_hash": "real"})
    for split in ("query", "database"):
        run(tmp_path / "ckpt", tmp_path / "data" / split, tmp_path / "codes" / split,
            EncodeConfig(image_size=32, batch_size=64), local=True, log=lambda *_: None)
    rc = evaluate_main(["--query", str(tmp_path / "codes/query"), "--database", str(tmp_path / "codes/database"),
                        "--out", str(tmp_path / "r"), "--train-shards", str(tmp_path / "data/train"),
                        "--query-shards", str(tmp_path / "data/query"),
                        "--database-shards", str(tmp_path / "data/database"),
                        "top_k=100", "precision_at=[10]", "baselines.methods=[random]", "grid_queries=3"])
    assert rc == 0
    rep = json.loads((tmp_path / "r/report.json").read_text())
    assert rep["label_count"] == 24 and rep["splits"] == {"query_vs_database": "disjoint", "query_vs_train": "disjoint"}
    assert [(r["method"], r["scoring"], r["bits"]) for r in rep["rows"]][:2] == [("dpq", "aqd", 4), ("dpq", "sqd", 4)]
    train_total = json.loads((tmp_path / "data/train/manifest.json").read_text())["total"]
    assert rep["query"]["items"] + rep["database"]["items"] + train_total == 1000  # database excludes train
    for r in rep["rows"]:
        assert 0 < r["metrics"]["mAP"]["skip"] <= 1
    assert (tmp_path / "r/top10_grid.png").read_bytes()[:4] == b"\x89PNG"

