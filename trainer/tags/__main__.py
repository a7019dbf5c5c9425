"""``python -m trainer.tags {build,build-matrix,show}``: build or inspect a tag-semantics artifact.

  build        --shards <train shard set> --out <dir|s3://..> [--config f.yaml] [key=value ...]
  build-matrix --npz <file> --out <dir> [--tags-key tags] [--labels-key labels] [...overrides]
               (an image x tag 0/1 matrix; columns are named tag_0000.. like the shards converter)
  show         <dir|s3://..>
"""
from __future__ import annotations

import argparse
import json
import sys

from shards.config import load

EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.tags", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="count tags over a shard set (Ray) and build the artifact")
    b.add_argument("--shards", required=True, help="train shard set (directory, s3:// prefix or manifest.json)")
    b.add_argument("--partial", action="store_true",
                   help="build even when a shard holds fewer samples than its manifest (recorded in the stats)")
    b.add_argument("--verify-sha256", action="store_true", help="check every shard's sha256 before counting")
    m = sub.add_parser("build-matrix", help="build from an .npz image x tag matrix")
    m.add_argument("--npz", required=True)
    m.add_argument("--tags-key", default="tags")
    m.add_argument("--labels-key", default="labels", help="optional label matrix for the report")
    for q in (b, m):
        q.add_argument("--out", required=True, help="artifact directory or s3:// prefix")
        q.add_argument("--config", help="YAML file of TagConfig")
        q.add_argument("overrides", nargs="*", help="key=value, e.g. graph.eps=0.1 vectors.source=cooccurrence")
    s = sub.add_parser("show", help="print an artifact's summary")
    s.add_argument("artifact")
    args = p.parse_args(argv)

    from trainer.tags import TagConfig, TagSemantics, build_from_matrix, build_from_shards

    try:
        if args.cmd == "show":
            sem = TagSemantics.load(args.artifact)
            print(json.dumps({"hash": sem.hash, "T": sem.T, "dim": sem.dim, **sem.stats.get("sizes", {})}))
            return 0
        cfg = load(TagConfig, args.config, args.overrides)
        if args.cmd == "build":
            from shards.manifest import Manifest, check_shards

            manifest = Manifest.load(args.shards)
            check_shards(manifest, checksums=args.verify_sha256)  # before any Ray task starts
            sem = build_from_shards(manifest.shard_urls(), cfg, [e.count for e in manifest.shards], args.partial)
        else:
            sem = _build_matrix(args, cfg, build_from_matrix)
        sem.save(args.out)
    except (ValueError, OSError) as e:
        # ConfigError, ArtifactError, NoTagsError, VectorFileError, VectorSourceError, ManifestError
        # and storage errors are ValueError/OSError subclasses whose message names the culprit
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(json.dumps({"out": args.out, "hash": sem.hash, **sem.stats["sizes"]}))
    return 0


def _build_matrix(args, cfg, build_from_matrix):
    import numpy as np

    with np.load(args.npz, allow_pickle=False) as d:
        if args.tags_key not in d:
            raise ValueError(f"{args.npz}: no array {args.tags_key!r} (has {', '.join(d.files)})")
        tags = d[args.tags_key]
        labels = d[args.labels_key] if args.labels_key in d else None
        concepts = [str(c) for c in d["concepts"]] if "concepts" in d else None
    if tags.ndim != 2:
        raise ValueError(f"{args.npz}: {args.tags_key!r} must be 2-D (images x tags), got shape {tags.shape}")
    names = [f"tag_{j:04d}" for j in range(tags.shape[1])]
    return build_from_matrix(tags, names, cfg, labels, concepts)


if __name__ == "__main__":
    sys.exit(main())
