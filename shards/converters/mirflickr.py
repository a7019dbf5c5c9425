"""MIRFLICKR-25K, in its original layout and in the matrix form of cross-modal hashing works.

Original (``mirflickr25k.zip`` + ``mirflickr25k_annotations_v080.zip``): ``im{n}.jpg`` (in the root
or ``mirflickr/``), ``meta/tags/tags{n}.txt`` (cleaned) or ``meta/tags_raw/tags{n}.txt`` (as the users
typed them), one tag a line, and ``annotations/{concept}.txt`` listing the ids of the images with that
concept (``*_r1.txt`` "relevant" variants and README files are ignored). Labels: the 24 concepts.

Matrix form (DCMH/DJSRH/UCCH/NRCH; ``../shared/data/mirflickr25k_real``): an ``.npz`` with ``tags``
(N, 1386) binary bag-of-words whose words are unknown, ``labels`` (N, 24), ``concepts`` and
``image_id``, plus ``image_file`` (paths relative to the npz) in the subset file, or an image folder
holding ``im{image_id}.jpg``. Tag column ``j`` is named ``tag_{j:04d}`` (documented stand-in names,
so tags stay usable as ids for co-occurrence; word embeddings need the real names). Rows without an
image are skipped as ``missing_image_file``; rows with no tag (e.g. not in the Cleared-Set) are
written with ``tags.json = []`` and counted as untagged.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from shards import descriptors
from shards.writer import DatasetWriter, ShardingConfig

_IM = re.compile(r"^im(\d+)\.jpg$")


def _label_map(ann_dir: Path) -> tuple[list[str], dict[int, list[str]]]:
    concepts, by_id = [], {}
    for f in sorted(ann_dir.glob("*.txt")):
        name = f.stem
        if name.endswith("_r1") or name.lower().startswith("readme"):
            continue
        concepts.append(name)
        for line in f.read_text(encoding="utf-8", errors="strict").split():
            by_id.setdefault(int(line), []).append(name)
    return concepts, by_id


def convert_original(root: str, out: str, sharding: ShardingConfig | None = None, tags_dir: str = "tags",
                     overwrite: bool = False) -> DatasetWriter:
    base = Path(root)
    img_dir = base / "mirflickr" if (base / "mirflickr").is_dir() else base
    tag_dir = next((d for d in (base / "meta" / tags_dir, img_dir / "meta" / tags_dir) if d.is_dir()), None)
    ann_dir = base / "annotations"
    if tag_dir is None:
        raise FileNotFoundError(f"{base}: no meta/{tags_dir}/ folder (MIRFLICKR original layout)")
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"{ann_dir}: annotations folder not found")
    concepts, labels_of = _label_map(ann_dir)
    ids = sorted(int(m.group(1)) for m in map(_IM.match, (p.name for p in img_dir.iterdir())) if m)
    if not ids:
        raise FileNotFoundError(f"{img_dir}: no im{{n}}.jpg images")
    with DatasetWriter(out, f"MIRFLICKR-25K original layout ({tags_dir})", concepts, sharding, overwrite) as w:
        for n in ids:
            tag_file = tag_dir / f"tags{n}.txt"
            if not tag_file.is_file():
                w.skip("missing_tags", f"{tag_file}: missing")
                continue
            try:
                tags = tag_file.read_bytes().decode("utf-8").splitlines()
            except UnicodeDecodeError:
                w.skip("non_utf8_tags", f"{tag_file}: not UTF-8")
                continue
            img = img_dir / f"im{n}.jpg"
            w.add(f"mirflickr/im{n}", img.read_bytes(), tags, labels_of.get(n, []), where=str(img))
    return w


def convert_matrix(npz: str, out: str, sharding: ShardingConfig | None = None, images: str | None = None,
                   overwrite: bool = False, features: bool = False) -> DatasetWriter:
    """``features``: also store ``feat.npy`` = ``shards.descriptors.colour_texture`` of each image."""
    path = Path(npz)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: npz not found")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("tags", "labels", "concepts", "image_id") if k not in z.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing}; has {z.files}")
        tags, labels = z["tags"], z["labels"]
        concepts = [str(c) for c in z["concepts"]]
        image_ids = z["image_id"]
        files = [str(f) for f in z["image_file"]] if "image_file" in z.files and images is None else None
    if not (len(tags) == len(labels) == len(image_ids)) or labels.shape[1] != len(concepts):
        raise ValueError(f"{path}: shapes disagree: tags {tags.shape}, labels {labels.shape}, "
                         f"image_id {image_ids.shape}, concepts {len(concepts)}")
    img_root = Path(images) if images is not None else path.parent
    tag_names = [f"tag_{j:04d}" for j in range(tags.shape[1])]
    source = f"MIRFLICKR-25K matrix form ({path.name}; tag names tag_0000..tag_{tags.shape[1] - 1:04d}"
    source += f"; feat.npy = {descriptors.NAME})" if features else ")"
    with DatasetWriter(out, source, concepts, sharding, overwrite) as w:
        for row in range(len(tags)):
            n = int(image_ids[row])
            img = img_root / files[row] if files is not None else img_root / f"im{n}.jpg"
            try:
                data = img.read_bytes()
            except OSError:
                w.skip("missing_image_file", f"{path} row {row}: {img} not readable")
                continue
            try:
                feat = descriptors.colour_texture_of(data) if features else None
            except (OSError, ValueError, Image.DecompressionBombError) as exn:
                w.skip("corrupt_image", f"{img}: not a decodable image ({type(exn).__name__})")
                continue
            w.add(f"mirflickr/im{n}", data, [tag_names[j] for j in np.flatnonzero(tags[row])],
                  [concepts[j] for j in np.flatnonzero(labels[row])], feat=feat, where=str(img))
    return w
