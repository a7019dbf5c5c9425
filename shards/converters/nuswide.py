"""NUS-WIDE in its distributed layout, read line by line in lockstep (memory bounded).

* ``ImageList/Imagelist.txt``: one image path a line (``actor\\0001_2124494179.jpg``; backslashes ok),
  relative to the image root (``--images``, default ``<root>/images``; ``Flickr/`` inside it is also
  tried);
* tags, either ``NUS_WID_Tags/AllTags1k.txt`` (one row of 1000 0/1 values per image) with the names in
  ``NUS_WID_Tags/TagList1k.txt``, or, when those are absent, ``NUS_WID_Tags/All_Tags.txt`` (``photo_id
  tag tag ...`` per image; the id must match the number after ``_`` in the file name, else the row is
  skipped as ``tag_row_mismatch``);
* ``Groundtruth/AllLabels/Labels_{concept}.txt``: one 0/1 a line per image, 81 concepts.

Every file must have one line per listed image; a file that ends early is refused, naming it.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from shards.schema import make_key
from shards.writer import DatasetWriter, ShardingConfig


class LayoutError(ValueError):
    """The NUS-WIDE files disagree (line counts); the message names the file."""


def _lines(path: Path, stack: contextlib.ExitStack):
    f = stack.enter_context(open(path, "rb"))
    return (line.rstrip(b"\r\n") for line in f)


def convert_nuswide(root: str, out: str, sharding: ShardingConfig | None = None, images: str | None = None,
                    overwrite: bool = False) -> DatasetWriter:
    base = Path(root)
    img_list = base / "ImageList" / "Imagelist.txt"
    tag_dir = next((d for d in (base / "NUS_WID_Tags", base / "Tags") if d.is_dir()), base / "NUS_WID_Tags")
    label_dir = base / "Groundtruth" / "AllLabels"
    for p in (img_list, tag_dir, label_dir):
        if not p.exists():
            raise FileNotFoundError(f"{p}: missing (NUS-WIDE layout: ImageList/, NUS_WID_Tags/, Groundtruth/AllLabels/)")
    img_root = Path(images) if images else base / "images"
    label_files = sorted(label_dir.glob("Labels_*.txt"))
    concepts = [f.stem[len("Labels_"):] for f in label_files]
    tag_bits, tag_raw = tag_dir / "AllTags1k.txt", tag_dir / "All_Tags.txt"
    with DatasetWriter(out, "NUS-WIDE", concepts, sharding, overwrite) as w:
        with contextlib.ExitStack() as stack:
            if tag_bits.is_file():
                names = (tag_dir / "TagList1k.txt").read_text(encoding="utf-8").split()
                tag_lines, raw_mode = _lines(tag_bits, stack), False
            elif tag_raw.is_file():
                names, tag_lines, raw_mode = [], _lines(tag_raw, stack), True
            else:
                raise FileNotFoundError(f"{tag_dir}: neither AllTags1k.txt (+TagList1k.txt) nor All_Tags.txt")
            label_lines = [_lines(f, stack) for f in label_files]
            for n, entry in enumerate(_lines(img_list, stack), 1):
                rel = entry.decode("utf-8").strip().replace("\\", "/")
                tag_line = next(tag_lines, None)
                label_vals = [next(it, None) for it in label_lines]
                if tag_line is None:
                    raise LayoutError(f"{tag_bits if not raw_mode else tag_raw}: ends before line {n} of {img_list}")
                for f, v in zip(label_files, label_vals):
                    if v is None:
                        raise LayoutError(f"{f}: ends before line {n} of {img_list}")
                if not rel:
                    w.skip("bad_list_line", f"{img_list}:{n}: empty line")
                    continue
                try:
                    text = tag_line.decode("utf-8")
                except UnicodeDecodeError:
                    w.skip("non_utf8_tags", f"{tag_raw if raw_mode else tag_bits}:{n}: not UTF-8")
                    continue
                if raw_mode:
                    photo_id, *tags = text.split()
                    if not Path(rel).stem.endswith(f"_{photo_id}"):
                        w.skip("tag_row_mismatch", f"{tag_raw}:{n}: photo id {photo_id} is not {rel}")
                        continue
                else:
                    bits = text.split()
                    if len(bits) != len(names):
                        w.skip("bad_tags", f"{tag_bits}:{n}: {len(bits)} values, TagList1k has {len(names)} names")
                        continue
                    tags = [t for t, b in zip(names, bits) if b == "1"]
                labels = [c for c, v in zip(concepts, label_vals) if v.strip() == b"1"]
                img = next((p for p in (img_root / rel, img_root / "Flickr" / rel) if p.is_file()), None)
                if img is None:
                    w.skip("missing_image_file", f"{img_list}:{n}: {img_root / rel} not found")
                    continue
                w.add(make_key(str(Path(rel).with_suffix(""))), img.read_bytes(), tags, labels, where=str(img))
    return w
