"""The README's "pipeline on your own data" block, executed as written (through bash, from a fresh
working directory), on inputs built in each command's layout: a folder and JSONL/CSV lists of real
MIRFLICKR images, MIRFLICKR's original layout, the matrix form in ../shared, NUS-WIDE's layout and
LAION-style tars on a real S3 server (moto over HTTP).

Only paths are substituted (the README's /data/..., s3://bucket and the shard range point at the
fixtures) and, for the budget, the train command gets ``training.epochs=1 scaling.num_workers=0
reader.batch_size=8 method.quantizer.K=16`` appended (24 training images) and the encode commands ``--local``;
every flag the README shows is run. The cloud-cluster block (`ray up` / `ray down`) needs a cloud
account and is not run here: its submit command is the one tests/train/test_cluster_jobs.py runs
against a token-auth local head, and ray_cluster.yaml passes Ray's schema offline there.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shards.manifest import Manifest
from tests.shards.test_converters import build_mirflickr_original, nuswide_fixture, write_laion_tar

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.real_data, pytest.mark.s3]


def readme_block() -> list[str]:
    """The commands of the README's own-data block, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    block = text.split("## The pipeline on your own data", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands, current = [], ""
    for line in block.splitlines():
        line = line.split("  #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not line and not current:
            continue
        current += " " + line.strip()
        if current.endswith("\\"):
            current = current[:-1]
            continue
        if current.strip():
            commands.append(current.strip())
        current = ""
    return commands


def _own_images(root: Path, mirflickr_real: Path, n: int = 48) -> None:
    """photos/ with sidecar tag/label files, images.jsonl and images.csv over the same real images."""
    z = np.load(mirflickr_real / "subset1000_with_images.npz", allow_pickle=False)
    concepts = [str(c) for c in z["concepts"]]
    (root / "photos").mkdir(parents=True)
    rows, csv = [], ["image,tags,labels"]
    for i in range(n):
        name = f"im{i + 1}.jpg"
        shutil.copy(mirflickr_real / "images_256" / name, root / "photos" / name)
        tags = [f"tag_{j:04d}" for j in np.flatnonzero(z["tags"][i])]
        labels = [concepts[j] for j in np.flatnonzero(z["labels"][i])]
        (root / "photos" / f"im{i + 1}.tags.txt").write_text("\n".join(tags) + "\n")
        (root / "photos" / f"im{i + 1}.labels.txt").write_text("\n".join(labels) + "\n")
        rows.append(json.dumps({"image": f"photos/{name}", "tags": tags, "labels": labels}))
        csv.append(f"photos/{name},{'|'.join(tags)},{'|'.join(labels)}")
    (root / "images.jsonl").write_text("\n".join(rows) + "\n")
    (root / "images.csv").write_text("\n".join(csv) + "\n")


def test_every_readme_pipeline_command_runs_as_written(mirflickr_real, s3_server, s3_bucket, tmp_path):
    import boto3

    commands = readme_block()
    converters = [c for c in commands if c.startswith("python -m shards ") and " --out " in c]
    assert [c.split()[3] for c in converters] == ["from-folder", "from-manifest", "from-manifest", "mirflickr",
                                                  "mirflickr-matrix", "nuswide", "laion"]
    fixtures = tmp_path / "fixtures"
    build_mirflickr_original(fixtures / "mirflickr25k", mirflickr_real, list(range(1, 13)))
    nuswide_fixture(fixtures / "nus-wide")
    s3 = boto3.client("s3", endpoint_url=s3_server)
    for i in range(2):
        write_laion_tar(fixtures / f"{i:05d}.tar", first=10 * i)
        s3.upload_file(str(fixtures / f"{i:05d}.tar"), s3_bucket, f"laion/{i:05d}.tar")
    subs = {"/data/mirflickr25k": str(fixtures / "mirflickr25k"), "/data/nus-wide": str(fixtures / "nus-wide"),
            "../shared/data/mirflickr25k_real": str(mirflickr_real), "s3://bucket": f"s3://{s3_bucket}",
            "{00000..00099}": "{00000..00001}"}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DS_ACCELERATOR": "cpu"}

    def sub(text: str) -> str:  # one left-to-right pass: a substituted path is not substituted again
        return re.sub("|".join(map(re.escape, sorted(subs, key=len, reverse=True))), lambda m: subs[m[0]], text)

    def run(command: str, cwd: Path, extra: str = "") -> str:
        command = sub(command)
        done = subprocess.run(["bash", "-c", command + extra], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{command}{extra}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    # each converter is an alternative: its own fresh working directory, as a user would run one
    counts = {}
    for i, command in enumerate(converters):
        cwd = tmp_path / f"alt{i}"
        cwd.mkdir()
        (cwd / "configs").symlink_to(REPO / "configs")  # the README runs from the checkout
        _own_images(cwd, mirflickr_real)
        run(command, cwd)
        out = sub(command.split(" --out ", 1)[1].split()[0])
        root = out if out.startswith("s3://") else str(cwd / out)
        counts[command.split()[3] + str(i)] = sum(Manifest.load(f"{root}/{s}").total for s in ("query", "database"))
    # 48 own images; 10 usable of MIRFLICKR's 12 (one without tags, one not UTF-8); the 1000-image
    # subset; NUS-WIDE's 8 minus the missing image; 2 LAION shards x 3 usable samples
    assert counts == {"from-folder0": 48, "from-manifest1": 48, "from-manifest2": 48, "mirflickr3": 10,
                      "mirflickr-matrix4": 1000, "nuswide5": 7, "laion6": 6}

    # steps 1 (summary, verify) to 5 on the folder conversion
    cwd = tmp_path / "alt0"
    rest = commands[commands.index(next(c for c in commands if c.startswith("python -m shards summary"))):]
    assert [c.split()[2] for c in rest] == ["shards", "eval.extract", "trainer.tags", "trainer.train",
                                            "eval.encode", "eval.encode", "eval.evaluate"]
    assert "ok" in run(rest[0], cwd)
    run(rest[1], cwd, " --local")  # EfficientNet-Lite0 features of every split
    feats = {s: Manifest.load(str(cwd / "data/mine-lite0" / s)) for s in ("train", "query", "database")}
    images = {s: Manifest.load(str(cwd / "data/mine" / s)) for s in ("train", "query", "database")}
    assert {s: m.total for s, m in feats.items()} == {s: m.total for s, m in images.items()}
    tag_out = json.loads(run(rest[2], cwd).strip().splitlines()[-1])
    from trainer.tags import TagSemantics

    sem = TagSemantics.load(str(cwd / "data/mine-lite0/tags"))
    dim = sem.dim
    # the summary line the command prints describes the artifact it wrote
    assert tag_out["out"] == "data/mine-lite0/tags" and tag_out["hash"] == sem.hash
    assert tag_out["units"] == sem.T >= 2 and tag_out["vocab_tags"] >= tag_out["with_vectors"] >= tag_out["units"]
    subs["<tags dim>"] = str(dim)
    run(rest[3], cwd, " training.epochs=1 scaling.num_workers=0 reader.batch_size=8 method.quantizer.K=16")
    assert (cwd / "runs/mine-32bit/final/quantizer.npz").is_file()
    for command in rest[4:6]:
        run(command, cwd, " --local")
    out = run(rest[6], cwd)
    report = json.loads((cwd / "reports/mine/report.json").read_text())
    methods = {r["method"] for r in report["rows"]}
    # the model, the backbone's own float ranking, and faiss on the same features: raw, PCA, tag-ridge map
    assert {"wsdhq", "inputs", "pq", "lsq", "random"} <= methods, methods
    assert {m.split("/")[1].rstrip("0123456789") for m in methods if "/" in m} == {"pca", "tags"}, methods
    assert re.search(r"mAP@5000 skip=\d\.\d{4}", out)
    # OPQ trains an 8-bit PQ inside whatever the code size: 256 centroids from ~45 vectors is refused
    assert any(n.startswith("opq: faiss cannot train it on") for n in report["notes"]), report["notes"]
    # faiss's per-iteration k-means warning is one note instead (K=16: 39 x 16 = 624 vectors asked for)
    few = [n for n in report["notes"] if "faiss's k-means asks for" in n]
    assert len(few) == 1 and re.search(r": trained on \d+ vectors, fewer than the 624 ", few[0]), report["notes"]
