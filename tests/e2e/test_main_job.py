"""The main job (`wsdhq demo`) end to end on a reduced budget: a real local Ray head, Ray jobs for
tags / training / encoding, 2 Ray Train workers, evaluation against faiss baselines."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cluster.demo import main as demo_main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _numbers(node, path=""):
    """Every number in a JSON tree, with its path."""
    if isinstance(node, bool):
        return
    if isinstance(node, (int, float)):
        yield path, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _numbers(v, f"{path}[{i}]")


def _aqd(report, method, bits):
    rows = [r for r in report["rows"] if r["method"] == method and r["scoring"] == "aqd" and r["bits"] == bits]
    assert len(rows) == 1, (method, bits, [(r["method"], r["scoring"], r["bits"]) for r in report["rows"]])
    return rows[0]["metrics"]["mAP"][report["headline_convention"]]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rc = demo_main([f"out={out}", "bits=[16]", "epochs=4", "workers=2",
                    "baselines=[pq,random]"])
    assert rc == 0
    return out


def test_main_job_writes_a_finite_report_where_wsdhq_beats_random_codes(demo_run):
    results = json.loads((demo_run / "results.json").read_text())
    assert set(results) == {"WSDHQ", "WSDHQ-progressive", "faiss PQ", "random codes"}
    assert sorted(results["WSDHQ-progressive"], key=int) == ["8", "16"]  # one model, every prefix of max(bits)
    for name in ("wsdhq-16", "wsdhq_progressive"):
        report = json.loads((demo_run / "reports" / name / "report.json").read_text())
        bad = [(p, v) for p, v in _numbers(report) if not math.isfinite(v)]
        assert not bad, bad
        for png in ("pr_curves.png", "map_vs_bits.png", "top10_grid.png"):
            assert (demo_run / "reports" / name / png).stat().st_size > 1000
    report = json.loads((demo_run / "reports" / "wsdhq-16" / "report.json").read_text())
    assert report["splits"]  # disjointness was checked and recorded
    wsdhq, rand = _aqd(report, "wsdhq", 16), _aqd(report, "random", 16)
    # 10 balanced classes: random ranking is ~0.1; measured WSDHQ here is well above 0.3
    assert wsdhq > rand + 0.1, (wsdhq, rand)
    assert "| WSDHQ |" in (demo_run / "results.md").read_text()


def test_progressive_codes_are_the_models_own_and_every_longer_prefix_reconstructs_better(demo_run):
    """The code set holds what the trained model's quantizer gives for the stored features (the
    encode job changed nothing), and each added level lowers the features' reconstruction error:
    the property that makes one progressive model serve every code length."""
    import torch

    from eval.codes import load_code_set
    from trainer.inference import load_inference

    cs = load_code_set(str(demo_run / "codes" / "wsdhq_progressive" / "database"))
    assert cs.kind == "progressive" and cs.M == 2 and cs.codes.dtype == np.uint8  # max(bits)=16
    model = load_inference(str(demo_run / "runs" / "wsdhq_progressive" / "final"))
    assert np.array_equal(model.encode_embeddings(torch.from_numpy(cs.feat)).numpy(), cs.codes)
    x = cs.feat.astype(np.float64)
    residual, errors = x.copy(), [float((x * x).sum(1).mean())]
    for level in range(cs.M):
        residual -= np.asarray(cs.codebooks, dtype=np.float64)[level][cs.codes[:, level]]
        errors.append(float((residual * residual).sum(1).mean()))
    # measured on the features-mode demo at this budget (4 epochs, L_Q from epoch 2): 1.000 (unit z,
    # nothing coded) -> 0.639 (8 bits) -> 0.578 (16 bits); codebooks that code nothing stay at 1.0
    assert errors[1] < 0.8 * errors[0] and errors[2] < errors[1], errors


def test_running_the_main_job_again_redoes_nothing(demo_run, capsys):
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in demo_run.rglob("*") if p.is_file()}
    assert demo_main([f"out={demo_run}", "bits=[16]", "epochs=4", "workers=2", "baselines=[pq,random]"]) == 0
    log = capsys.readouterr().out
    assert "starting a local Ray head" not in log and "submitted Ray job" not in log
    for stage in ("data", "tags", "train wsdhq-16", "train wsdhq_progressive", "encode wsdhq-16",
                  "evaluate wsdhq_progressive"):
        assert f"{stage}: already done" in log, stage
    after = {p for p in demo_run.rglob("*") if p.is_file()}
    assert after == set(files)  # no file added or removed
    summaries = {demo_run / "results.json", demo_run / "results.md"}
    # every stage's output untouched; the two summaries are re-derived from the reports, to the same bytes
    rewritten = sorted(str(p) for p in set(files) - summaries if p.stat().st_mtime_ns != files[p][0])
    assert not rewritten, rewritten
    for p in summaries:
        assert p.read_bytes() == files[p][1], p
