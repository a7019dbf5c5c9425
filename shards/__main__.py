"""``python -m shards <subcommand>``: converters into shard sets, ``summary`` and ``verify``.

Every converter streams its source and writes ``<out>/{train,query,database}/`` shard sets with a
manifest each; the conversion summary (counts per split, untagged, skipped by reason) is printed.
"""
from __future__ import annotations

import argparse
import sys

from shards.config import add_arguments, from_arguments
from shards.manifest import Manifest, ManifestError, verify
from shards.writer import SPLITS, ShardingConfig


def _sharding_args(p: argparse.ArgumentParser, defaults: ShardingConfig) -> None:
    """Output flags, and one flag per ``ShardingConfig`` field (``shards.config.add_arguments``)."""
    g = p.add_argument_group("sharding and splits (ShardingConfig)")
    g.add_argument("--out", required=True, help="output root (local dir or s3://bucket/prefix)")
    g.add_argument("--overwrite", action="store_true", help="replace existing shard sets under --out")
    add_arguments(g, ShardingConfig, defaults)


def build_parser() -> argparse.ArgumentParser:
    from shards.converters import demo, generic, laion

    parser = argparse.ArgumentParser(prog="python -m shards", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("demo", help="sklearn digits (1797 real images) with simulated, seeded weak tags")
    p.add_argument("--seed", type=int, default=0, help="seed of the tag simulation")
    p.add_argument("--features", action="store_true",
                   help="also store feat.npy (the 64 pixel values / 16) for features mode")
    _sharding_args(p, demo.demo_sharding())

    p = sub.add_parser("from-manifest", help="a JSONL or CSV list: image path, tags, optional labels")
    p.add_argument("manifest", help="the .jsonl / .csv file (image paths relative to it unless absolute)")
    p.add_argument("--tag-sep", default=generic.DEFAULT_SEP, help="separator of tags/labels in CSV cells")
    p.add_argument("--source", default=None, help="source name recorded in the manifests")
    p.add_argument("--label-field", default="labels", help="field/column holding the labels (e.g. categories)")
    _sharding_args(p, ShardingConfig())

    p = sub.add_parser("from-folder", help="a folder of images with sidecar tag files (<image stem>.tags.txt)")
    p.add_argument("folder")
    p.add_argument("--source", default=None)
    p.add_argument("--label-field", default=None,
                   help="labels from this field of a <image stem>.json sidecar (default: <stem>.labels.txt)")
    _sharding_args(p, ShardingConfig())

    p = sub.add_parser("mirflickr", help="MIRFLICKR-25K original layout (im{n}.jpg, meta/tags, annotations)")
    p.add_argument("root", help="folder holding im*.jpg (or mirflickr/), meta/tags*/ and annotations/")
    p.add_argument("--tags", choices=["tags", "tags_raw"], default="tags", help="meta/tags or meta/tags_raw")
    _sharding_args(p, ShardingConfig(max_count=1000))

    p = sub.add_parser("mirflickr-matrix", help="MIRFLICKR-25K matrix form (tag BoW + label matrices, npz)")
    p.add_argument("npz", help="e.g. ../shared/data/mirflickr25k_real/subset1000_with_images.npz")
    p.add_argument("--images", default=None, help="image folder (default: paths in the npz, beside it)")
    p.add_argument("--features", action="store_true",
                   help="also store feat.npy = a fixed colour/texture descriptor (shards.descriptors) for "
                        "features mode, a stand-in where no pretrained backbone is available")
    _sharding_args(p, ShardingConfig(max_count=1000))

    p = sub.add_parser("nuswide", help="NUS-WIDE: image list + tag list + concept label files")
    p.add_argument("root", help="folder with ImageList/, NUS_WID_Tags/ (or Tags/), Groundtruth/ and images")
    p.add_argument("--images", default=None, help="image root (default: <root>/images)")
    _sharding_args(p, ShardingConfig())

    p = sub.add_parser("laion", help="img2dataset / LAION-style shards (jpg + txt caption + json)")
    p.add_argument("inputs", nargs="+", help="input .tar shards (local or s3://)")
    p.add_argument("--tag-field", default=laion.LaionConfig.tag_field, help="json field holding tags")
    p.add_argument("--label-field", default=None, help="json field holding labels, e.g. categories")
    p.add_argument("--min-word-length", type=int, default=laion.LaionConfig.min_word_length)
    p.add_argument("--max-caption-tags", type=int, default=laion.LaionConfig.max_tags)
    p.add_argument("--stopwords", default=None, help="file with one stopword a line (default: built-in list)")
    _sharding_args(p, ShardingConfig())

    p = sub.add_parser("summary", help="per-split counts, tag and label statistics")
    p.add_argument("root", help="a dataset root or one shard set (dir or s3://)")

    p = sub.add_parser("verify", help="check every shard exists and matches the manifest's size and sha256 "
                                      "and sample count, and (for a dataset root) that query is disjoint from "
                                      "train/database")
    p.add_argument("sets", nargs="+", help="shard sets or dataset roots")
    p.add_argument("--sizes-only", action="store_true", help="byte sizes only (no sha256)")
    return parser


def _verify(urls: list[str], checksums: bool) -> int:
    from shards import storage

    bad = 0
    for url in urls:
        splits = [storage.join(url, s) for s in SPLITS if storage.exists(storage.join(url, s, "manifest.json"))]
        for s in splits or [url]:
            m = Manifest.load(s)
            problems = verify(m, checksums=checksums)
            if checksums and not problems:  # a tar cut and re-listed passes sha256: count its samples too
                from shards.reader import check_complete, iter_set

                reads: list = []
                for _ in iter_set(m, ["tags.json"], reads=reads):
                    pass
                problems = check_complete(reads, m.url, partial=True)
            for p in problems:
                print(f"FAIL {p}", file=sys.stderr)
            print(f"{'ok  ' if not problems else 'FAIL'} {m.url}: {len(m.shards)} shard(s), {m.total} samples")
            bad += bool(problems)
        if len(splits) == len(SPLITS):
            overlap = _split_overlap(url)
            if overlap:
                print(f"FAIL {url}: {len(overlap)} query key(s) also in train/database, e.g. {overlap[:3]}",
                      file=sys.stderr)
            else:
                print(f"ok   {url}: query is disjoint from train and database")
            bad += bool(overlap)
    return 1 if bad else 0


def _split_overlap(root: str) -> list[str]:
    """Query keys that also occur in train or database, read from the shards themselves."""
    from shards import storage
    from shards.reader import iter_samples

    def keys(split: str) -> set[str]:
        m = Manifest.load(storage.join(root, split))
        return {s["__key__"] for url in m.shard_urls() for s in iter_samples(url, fields=["tags.json"])}

    return sorted(keys("query") & (keys("train") | keys("database")))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from shards.converters import demo, generic, laion, mirflickr, nuswide

    try:
        if args.cmd == "summary":
            from shards.summary import summarize

            text, whole = summarize(args.root)
            print(text)
            return 0 if whole else 1
        if args.cmd == "verify":
            return _verify(args.sets, checksums=not args.sizes_only)
        sharding = from_arguments(ShardingConfig, args)
        if args.cmd == "demo":
            w = demo.convert_demo(args.out, demo.DemoConfig(seed=args.seed, features=args.features), sharding,
                                  args.overwrite)
        elif args.cmd == "from-manifest":
            w = generic.convert_list(args.manifest, args.out, sharding, args.tag_sep, args.source, args.overwrite,
                                     args.label_field)
        elif args.cmd == "from-folder":
            w = generic.convert_folder(args.folder, args.out, sharding, args.source, args.overwrite, args.label_field)
        elif args.cmd == "mirflickr":
            w = mirflickr.convert_original(args.root, args.out, sharding, args.tags, args.overwrite)
        elif args.cmd == "mirflickr-matrix":
            w = mirflickr.convert_matrix(args.npz, args.out, sharding, args.images, args.overwrite,
                                          args.features)
        elif args.cmd == "nuswide":
            w = nuswide.convert_nuswide(args.root, args.out, sharding, args.images, args.overwrite)
        else:
            cfg = laion.LaionConfig(tag_field=args.tag_field, label_field=args.label_field,
                                    min_word_length=args.min_word_length,
                                    max_tags=args.max_caption_tags, stopwords_file=args.stopwords)
            w = laion.convert_laion(args.inputs, args.out, sharding, cfg, args.overwrite)
    except (FileNotFoundError, FileExistsError, ManifestError, ValueError, OSError) as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    print(w.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
