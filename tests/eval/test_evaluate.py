import json

import numpy as np
import pytest

from eval.codes import CodeSetError, load_code_set
from eval.evaluate import EvaluateConfig, EvaluationError, evaluate, main
from eval.baselines import BaselineConfig
from tests.eval.conftest import brute_scores, write_code_set


def _reference_map(q_feat, q_lab, db_codes, db_lab, cb, k):
    """mAP by the spec's formula, written independently: full stable sort, python loops."""
    scores = brute_scores(q_feat, db_codes, cb)
    aps = []
    for qi in range(len(q_feat)):
        order = np.argsort(-scores[qi], kind="stable")[:k]
        hits, total = 0, 0.0
        for rank, j in enumerate(order, 1):
            if set(q_lab[qi]) & set(db_lab[j]):
                hits += 1
                total += hits / rank
        aps.append(total / hits if hits else None)
    kept = [a for a in aps if a is not None]
    return float(np.mean(kept)), float(sum(kept) / len(aps))


def _sets(tmp_path, data, kind="additive", **kw):
    write_code_set(tmp_path / "q", data["cb"], *data["q"][:3], feat=data["q"][3], kind=kind, **kw.get("q", {}))
    write_code_set(tmp_path / "db", data["cb"], *data["db"][:3], feat=data["db"][3], kind=kind,
                   **kw.get("db", {}))
    return load_code_set(tmp_path / "q"), load_code_set(tmp_path / "db")


def test_aqd_map_equals_an_independent_brute_force_computation(tmp_path, retrieval_data):
    q, db = _sets(tmp_path, retrieval_data)
    cfg = EvaluateConfig(top_k=50, scorings=["aqd"], baselines=BaselineConfig(methods=[]), query_chunk=7,
                         db_chunk=64)
    result, top = evaluate(q, db, cfg, log=lambda *_: None)
    row = result["rows"][0]
    skip, zero = _reference_map(retrieval_data["q"][3], retrieval_data["q"][2], retrieval_data["db"][1],
                                retrieval_data["db"][2], retrieval_data["cb"], 50)
    assert (row["method"], row["scoring"], row["bits"]) == ("wsdhq", "aqd", 8)
    assert row["metrics"]["mAP"]["skip"] == pytest.approx(skip, abs=1e-12)
    assert row["metrics"]["mAP"]["zero"] == pytest.approx(zero, abs=1e-12)
    assert top.shape == (30, 10)
    assert result["splits"] == {"query_vs_database": "disjoint"}


def test_progressive_codes_are_evaluated_at_every_prefix_and_k_all(tmp_path, retrieval_data):
    q, db = _sets(tmp_path, retrieval_data, kind="progressive")
    cfg = EvaluateConfig(top_k="all", scorings=["aqd", "sqd", "feature"], baselines=BaselineConfig(methods=[]))
    result, _ = evaluate(q, db, cfg, log=lambda *_: None)
    got = [(r["scoring"], r["bits"]) for r in result["rows"]]
    assert got == [("aqd", 4), ("sqd", 4), ("aqd", 8), ("sqd", 8), ("feature", None)]
    assert result["k_used"] == 400
    # with K = all every query has a relevant item, so both conventions agree
    for r in result["rows"]:
        assert r["metrics"]["mAP"]["skip"] == pytest.approx(r["metrics"]["mAP"]["zero"])
    skip, _ = _reference_map(retrieval_data["q"][3], retrieval_data["q"][2], retrieval_data["db"][1][:, :1],
                             retrieval_data["db"][2], retrieval_data["cb"], 400)
    assert result["rows"][0]["metrics"]["mAP"]["skip"] == pytest.approx(skip, abs=1e-12)


def test_evaluate_cli_writes_report_table_plots_and_baselines(tmp_path, retrieval_data):
    _sets(tmp_path, retrieval_data)
    rc = main(["--query", str(tmp_path / "q"), "--database", str(tmp_path / "db"), "--out", str(tmp_path / "r"),
               "top_k=100", "precision_at=[10]", "baselines.methods=[pq,residual,random]",
               "baselines.max_train=400"])
    assert rc == 0
    rep = json.loads((tmp_path / "r/report.json").read_text())
    methods = {(r["method"], r["scoring"]) for r in rep["rows"]}
    assert methods == {("wsdhq", "aqd"), ("wsdhq", "sqd"), ("wsdhq", "feature"), ("pq", "aqd"),
                       ("residual", "aqd"), ("random", "aqd")}
    by = {(r["method"], r["scoring"]): r["metrics"]["mAP"]["skip"] for r in rep["rows"]}
    assert by[("wsdhq", "feature")] > by[("random", "aqd")] + 0.2
    assert rep["tie_breaking"].startswith("ties broken by ascending database index")
    assert rep["checkpoint_sha256"] == {"model.pt": "ckpt-a", "quantizer.npz": "ckpt-a"}
    md = (tmp_path / "r/report.md").read_text()
    assert "| random | aqd | 8 |" in md and "mAP@100 skip" in md
    for png in ("pr_curves.png", "map_vs_bits.png"):
        assert (tmp_path / "r" / png).read_bytes()[:4] == b"\x89PNG"


def test_codes_from_another_checkpoint_or_tag_semantics_are_refused(tmp_path, retrieval_data):
    q, db = _sets(tmp_path, retrieval_data, db={"tags": "tags-b"})
    with pytest.raises(CodeSetError, match="query codes come from checkpoint /runs/ckpt-a .*tags tags-a.*tags tags-b"):
        evaluate(q, db, EvaluateConfig(), log=lambda *_: None)


def test_queries_without_labels_are_refused(tmp_path, retrieval_data):
    keys, codes, labels, feat = retrieval_data["q"]
    write_code_set(tmp_path / "q", retrieval_data["cb"], keys, codes, [[] for _ in keys], feat=feat)
    write_code_set(tmp_path / "db", retrieval_data["cb"], *retrieval_data["db"][:3], feat=retrieval_data["db"][3])
    with pytest.raises(EvaluationError, match="query codes .* carry no ground-truth labels"):
        evaluate(load_code_set(tmp_path / "q"), load_code_set(tmp_path / "db"), EvaluateConfig(), log=lambda *_: None)


def test_codes_with_the_wrong_m_are_refused_naming_the_file(tmp_path, retrieval_data):
    keys, codes, labels, feat = retrieval_data["db"]
    write_code_set(tmp_path / "db", retrieval_data["cb"], keys, np.hstack([codes, codes[:, :1]]), labels)
    # code files with 3 columns under a manifest and codebooks of M=2
    write_code_set(tmp_path / "ok", retrieval_data["cb"], keys, codes, labels)
    (tmp_path / "db/quantizer.npz").write_bytes((tmp_path / "ok/quantizer.npz").read_bytes())
    (tmp_path / "db/codes_manifest.json").write_text((tmp_path / "ok/codes_manifest.json").read_text())
    with pytest.raises(CodeSetError, match=r"codes-shard-000000.npz: codes have shape \(200, 3\), but the codebooks have M=2"):
        load_code_set(tmp_path / "db")


def test_overlapping_query_and_database_keys_are_refused(tmp_path, retrieval_data):
    keys, codes, labels, feat = retrieval_data["q"]
    write_code_set(tmp_path / "q", retrieval_data["cb"], ["db00003"] + keys[1:], codes, labels, feat=feat)
    write_code_set(tmp_path / "db", retrieval_data["cb"], *retrieval_data["db"][:3], feat=retrieval_data["db"][3])
    with pytest.raises(EvaluationError, match="1 query key.* also in the database .*'db00003'"):
        evaluate(load_code_set(tmp_path / "q"), load_code_set(tmp_path / "db"), EvaluateConfig(), log=lambda *_: None)


def test_cli_reports_bad_input_as_one_line_error(tmp_path, capsys):
    rc = main(["--query", str(tmp_path / "nope"), "--database", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert rc == 2
    assert "no codes_manifest.json" in capsys.readouterr().err


def test_packed_label_words_give_the_same_relevance_as_shared_labels_beyond_64_labels():
    from eval.evaluate import label_bits
    from eval.metrics import relevance

    rng = np.random.default_rng(0)
    for n_labels in (3, 64, 65, 130):
        a = (rng.random((20, n_labels)) < 0.05).astype(np.uint8)
        b = (rng.random((30, n_labels)) < 0.05).astype(np.uint8)
        wa, wb = label_bits(a), label_bits(b)
        assert wa.shape == (20, -(-n_labels // 64))
        got = ((wa[:, None, :] & wb[None, :, :]) != 0).any(-1)
        assert np.array_equal(got, relevance(a, b))


def test_code_set_keeps_one_id_per_label_combination_and_unpacks_them_exactly(tmp_path, retrieval_data):
    from eval.codes import label_matrix

    _, db = _sets(tmp_path, retrieval_data)
    want = [list(ls) for ls in retrieval_data["db"][2]]
    assert db.label_ids.dtype == np.int32 and len(db.label_combos) == len({tuple(ls) for ls in want})
    assert db.labels == want
    assert [db.labels_of(i) for i in (0, len(db) - 1)] == [want[0], want[-1]]
    names = db.label_names()
    assert names == sorted({x for ls in want for x in ls})
    np.testing.assert_array_equal(db.label_matrix(names), label_matrix(want, names))
    np.testing.assert_array_equal(db.label_matrix(names[::-1]), label_matrix(want, names[::-1]))
