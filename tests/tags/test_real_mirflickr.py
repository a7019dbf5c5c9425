"""The real MIRFLICKR-25K Cleared-Set tag matrix (20,015 images x 1,386 tags, 24 labels)."""
import numpy as np
import pytest

from trainer.tags.__main__ import main
from trainer.tags import TagSemantics


@pytest.mark.real_data
def test_real_tag_matrix_builds_1178_units_and_reports_label_agreement(mirflickr_real, tmp_path, capsys):
    npz = mirflickr_real / "cleared20015_tags1386_labels24.npz"
    out = tmp_path / "mirflickr"
    assert main(["build-matrix", "--npz", str(npz), "--out", str(out), "graph.target_units=1178"]) == 0
    sem = TagSemantics.load(str(out))
    st = sem.stats
    assert st["images"] == 20015
    assert st["sizes"]["raw_tags"] == 1386 and st["sizes"]["vocab_tags"] == 1386
    assert st["vectors"]["source"] == "cooccurrence"   # columns are ids, not words
    assert sem.T == 1178 and sem.embeddings.shape == (1178, 64)
    la = st["label_agreement"]
    assert la["images"] == 20015 and la["labels"] == 24 and la["random_pairs"] == 500
    assert la["merged_pairs"] > 0 and 0 <= la["merged_share_label"] <= 1
    report = (out / "report.md").read_text()
    assert "tags merged into one unit:" in report and "random tag pairs (baseline):" in report
    # the targets reproduce the OR-merge of the raw tag columns (methods.md merge_labels)
    with np.load(npz, allow_pickle=False) as d:
        rows = d["tags"][:50]
    lists = [[f"tag_{j:04d}" for j in np.flatnonzero(r)] for r in rows]
    y = sem.targets(lists)
    unit_of = np.array([sem.merge_map[f"tag_{j:04d}"] for j in range(1386)])
    expected = np.zeros_like(y)
    for i, r in enumerate(rows):
        expected[i, unit_of[np.flatnonzero(r)]] = 1
    assert np.array_equal(y, expected)
