"""Generic sources: a JSONL/CSV list of images with tags, or a folder of images with sidecar tag files.

List form, one item per line/row, paths relative to the list file unless absolute:

* JSONL: ``{"image": "a/b.jpg", "tags": ["sky", "new york"], "labels": ["sky"], "caption": "...",
  "key": "optional-id"}``; ``tags`` may also be one string split on ``--tag-sep``.
* CSV with a header: columns ``image``, ``tags`` (split on ``--tag-sep``, default ``|``), optional
  ``labels``, ``caption``, ``key``.

Folder form: every ``*.jpg|jpeg|png|webp`` under the folder (sorted walk); tags from the sidecar
``<name>.tags.txt`` (else ``<name>.txt``), one tag per line or comma-separated; labels from an
optional ``<name>.labels.txt``. The key is the image path relative to the folder, without suffix.

Labels: the list's ``labels`` field/column, or the one named by ``label_field`` (e.g. ``categories``);
in folder form ``<name>.labels.txt``, or with ``label_field`` that field of a ``<name>.json`` sidecar
(img2dataset's layout on disk). A label value is a list of strings or one separated string.

An item without a tags field / sidecar is skipped as ``missing_tags`` (an empty tag list is kept as
untagged); a tag file that is not UTF-8 is skipped as ``non_utf8_tags``; an unreadable line, or a
field of the wrong JSON type (``"image": 5``, ``"caption": 123``), as ``bad_list_line`` naming the
line and field; a listed image that does not exist (or a broken symlink) as ``missing_image_file``;
in folder form an image in a format not stored (``.gif``, ``.bmp``, ``.tif``) as
``unsupported_image_format``. A refused conversion (e.g. a CSV without a header) leaves nothing.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterator

from shards.schema import make_key
from shards.writer import DatasetWriter, ShardingConfig

DEFAULT_SEP = "|"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def string_list(value, sep: str) -> list[str] | None:
    """A tag/label field as a list of strings: a list of strings as it is, a string split on ``sep``;
    None stays None (the field is absent); anything else is a ValueError naming the type."""
    if value is None:
        return None
    if isinstance(value, str):
        return [t for t in (v.strip() for v in value.split(sep)) if t]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f"expected a list of strings or a {sep!r}-separated string, got {type(value).__name__}")


def _wrong_type(row: dict) -> str | None:
    """The first field of a list row whose JSON type cannot be right (CSV cells are always strings)."""
    for name, types in (("image", (str,)), ("caption", (str, type(None))), ("key", (str, int, type(None)))):
        if name in row and not isinstance(row[name], types):
            return f"'{name}' must be {' or '.join(t.__name__ for t in types if t is not type(None))}, " \
                   f"got {type(row[name]).__name__} {str(row[name])[:40]!r}"
    return None


def _rows(path: Path) -> Iterator[tuple[int, dict | None, str]]:
    """(line number, row or None when unreadable, error) streamed from a .jsonl or .csv file."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8", errors="strict") as f:
            reader = csv.DictReader(f)
            try:
                for row in reader:
                    yield reader.line_num, row, ""
            except UnicodeDecodeError as exn:
                raise ValueError(f"{path}: not UTF-8 near line {reader.line_num + 1} ({exn.reason})") from None
        return
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
                yield n, row, ""
            except (UnicodeDecodeError, ValueError) as exn:
                yield n, None, f"{type(exn).__name__}: {exn}"


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        names = csv.DictReader(f).fieldnames
    if not names or "image" not in names:
        raise ValueError(f"{path}: CSV needs a header with an 'image' column (got {names})")
    return names


def convert_list(list_path: str, out: str, sharding: ShardingConfig | None = None, sep: str = DEFAULT_SEP,
                 source: str | None = None, overwrite: bool = False, label_field: str = "labels") -> DatasetWriter:
    path = Path(list_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image list not found")
    if path.suffix.lower() == ".csv":
        _csv_header(path)  # refused before any output exists
    with DatasetWriter(out, source or f"list:{path.name}", None, sharding, overwrite) as w:
        for n, row, err in _rows(path):
            where = f"{path}:{n}"
            if row is None:
                w.skip("bad_list_line", f"{where}: {err}")
                continue
            if not row.get("image"):
                w.skip("bad_list_line", f"{where}: no 'image' field")
                continue
            wrong = _wrong_type(row)
            if wrong:
                w.skip("bad_list_line", f"{where}: {wrong}")
                continue
            img = Path(row["image"]) if os.path.isabs(row["image"]) else path.parent / row["image"]
            try:
                tags = string_list(row.get("tags"), sep)
            except ValueError as exn:
                w.skip("bad_tags", f"{where}: 'tags': {exn}")
                continue
            try:
                labels = string_list(row.get(label_field) or None, sep)
            except ValueError as exn:
                w.skip("bad_labels", f"{where}: {label_field!r}: {exn}")
                continue
            if tags is None:
                w.skip("missing_tags", f"{where}: no 'tags' field")
                continue
            try:
                data = img.read_bytes()
            except OSError:
                w.skip("missing_image_file", f"{where}: {img} not readable")
                continue
            key = make_key(str(row.get("key") or os.path.splitext(row["image"])[0]))
            w.add(key, data, tags, labels, row.get("caption") or None, where=f"{where} ({img})")
    return w


def _read_tag_file(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8")  # UnicodeDecodeError -> counted by the caller
    return [t for line in text.splitlines() for t in (p.strip() for p in line.split(",")) if t]


def _other_image_suffixes() -> frozenset[str]:
    """Image formats Pillow knows that shards do not store (gif, bmp, tiff, ...): counted, not ignored."""
    from PIL import Image

    return frozenset(s for s in Image.registered_extensions() if s not in IMAGE_SUFFIXES)


def _images_under(folder: Path, w: DatasetWriter) -> Iterator[Path]:
    others = _other_image_suffixes()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_SUFFIXES:
                yield Path(dirpath, name)
            elif suffix in others:
                w.skip("unsupported_image_format", f"{Path(dirpath, name)}: {suffix} images are not stored "
                                                   f"({'/'.join(IMAGE_SUFFIXES)})")


def _json_labels(stem: Path, label_field: str) -> list[str] | None:
    """``label_field`` of the ``<stem>.json`` sidecar; None when there is no sidecar or no such field."""
    sidecar = Path(f"{stem}.json")
    if not sidecar.is_file():
        return None
    meta = json.loads(sidecar.read_bytes().decode("utf-8"))  # UnicodeDecodeError/ValueError: counted
    if not isinstance(meta, dict):
        raise ValueError(f"{sidecar}: not a JSON object")
    return string_list(meta.get(label_field), ",")


def convert_folder(folder: str, out: str, sharding: ShardingConfig | None = None, source: str | None = None,
                   overwrite: bool = False, label_field: str | None = None) -> DatasetWriter:
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: folder not found")
    with DatasetWriter(out, source or f"folder:{root.name}", None, sharding, overwrite) as w:
        for img in _images_under(root, w):
            stem = img.with_suffix("")
            sidecar = next((p for p in (Path(f"{stem}.tags.txt"), Path(f"{stem}.txt")) if p.is_file()), None)
            if sidecar is None:
                w.skip("missing_tags", f"{img}: no {stem.name}.tags.txt or {stem.name}.txt beside it")
                continue
            try:
                tags = _read_tag_file(sidecar)
            except UnicodeDecodeError:
                w.skip("non_utf8_tags", f"{sidecar}: not UTF-8")
                continue
            try:
                if label_field:
                    labels = _json_labels(stem, label_field)
                else:
                    labels_file = Path(f"{stem}.labels.txt")
                    labels = _read_tag_file(labels_file) if labels_file.is_file() else None
            except (UnicodeDecodeError, ValueError) as exn:
                w.skip("bad_labels", f"{stem}: labels unreadable ({type(exn).__name__}: {exn})")
                continue
            try:
                data = img.read_bytes()
            except OSError:  # a broken symlink, or unreadable: as the list converter counts it
                w.skip("missing_image_file", f"{img}: not readable (broken link?)")
                continue
            w.add(make_key(str(stem.relative_to(root))), data, tags, labels, where=str(img))
    return w
