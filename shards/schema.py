"""The sample schema of a shard: field names, key rules, and the only decoders a shard is read with.

A sample is ``__key__`` + one image (``jpg|jpeg|png|webp``, bytes as the source had them) +
``tags.json`` (list of raw tag strings) + optional ``labels.json`` (list of label names), ``txt``
(caption) and ``feat.npy`` (float32 1-D). Decoding is json, utf-8 text and ``np.load`` with
``allow_pickle=False``: nothing in a shard is ever unpickled.
"""
from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
PIL_FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
KNOWN_FIELDS = frozenset(IMAGE_EXTS + ("tags.json", "labels.json", "txt", "feat.npy", "json"))
_KEY_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_/\-]*$")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_/\-]")


class SampleError(ValueError):
    """A sample that cannot be used; ``reason`` is the skip-counter name (e.g. ``corrupt_image``)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def make_key(text: str) -> str:
    """A webdataset-safe key from a source id/path: no dots (webdataset splits extensions on the
    first dot), no leading ``_`` (metadata), everything else outside ``[A-Za-z0-9_/-]`` -> ``_``."""
    key = _KEY_BAD.sub("_", str(text).strip().strip("/"))
    key = key.lstrip("_/") or "x"
    return key


def check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_OK.match(key):
        raise SampleError("bad_key", f"sample key {key!r} is not a valid shard key ([A-Za-z0-9_/-], no dots)")
    return key


def image_field(sample: dict) -> str | None:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext
    return None


def clean_tags(tags: Any, where: str) -> list[str]:
    """Raw tag strings, order kept, blanks and exact duplicates dropped; anything else is an error."""
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise SampleError("bad_tags", f"{where}: tags must be a list of strings, got {type(tags).__name__}")
    out: list[str] = []
    seen = set()
    for t in tags:
        t = t.strip()
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def encode_sample(key: str, image: bytes, image_ext: str, tags: list[str], labels: list[str] | None = None,
                  caption: str | None = None, feat: np.ndarray | None = None) -> dict:
    """The raw (bytes-valued) dict a TarWriter writes; validates key, image field and tag types."""
    if image_ext not in IMAGE_EXTS:
        raise SampleError("unsupported_image_format", f"{key}: image extension {image_ext!r} not in {IMAGE_EXTS}")
    sample = {"__key__": check_key(key), image_ext: bytes(image),
              "tags.json": json.dumps(clean_tags(list(tags), key), ensure_ascii=False).encode("utf-8")}
    if labels is not None:
        sample["labels.json"] = json.dumps(sorted(set(clean_tags(list(labels), key)))).encode("utf-8")
    if caption is not None:
        sample["txt"] = caption.encode("utf-8")
    if feat is not None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(feat, dtype=np.float32).reshape(-1), allow_pickle=False)
        sample["feat.npy"] = buf.getvalue()
    return sample


def decode_fields(raw: dict, need_image: bool = True) -> dict:
    """Decode the non-image fields of a raw sample (image bytes stay bytes).

    Raises ``SampleError`` with a skip reason: ``missing_image``, ``missing_tags``, ``bad_tags``
    (not JSON / not UTF-8 / not a list of strings), ``bad_labels``, ``bad_caption``, ``bad_feat``.
    """
    key = raw.get("__key__", "?")
    where = f"{raw.get('__url__', '?')}:{key}"
    ext = image_field(raw)
    if ext is None and need_image:
        raise SampleError("missing_image", f"{where}: no image field ({'/'.join(IMAGE_EXTS)})")
    if "tags.json" not in raw:
        raise SampleError("missing_tags", f"{where}: no tags.json")
    out = {"__key__": key, "__url__": raw.get("__url__")}
    if ext is not None:
        out["image_ext"], out["image"] = ext, raw[ext]
    out["tags"] = _json_strings(raw["tags.json"], "bad_tags", where)
    out["labels"] = _json_strings(raw["labels.json"], "bad_labels", where) if "labels.json" in raw else []
    if "txt" in raw:
        try:
            out["txt"] = raw["txt"].decode("utf-8")
        except UnicodeDecodeError:
            raise SampleError("bad_caption", f"{where}: txt is not UTF-8") from None
    if "feat.npy" in raw:
        out["feat"] = decode_npy(raw["feat.npy"], where)
    return out


def _json_strings(data: bytes, reason: str, where: str) -> list[str]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SampleError(reason, f"{where}: {reason.split('_')[1]}.json is not UTF-8 JSON") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SampleError(reason, f"{where}: {reason.split('_')[1]}.json is not a list of strings")
    return value


def decode_npy(data: bytes, where: str) -> np.ndarray:
    """``np.load(allow_pickle=False)``: an object array in a shard is refused, never unpickled."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exn:
        raise SampleError("bad_feat", f"{where}: feat.npy unreadable ({exn})") from None
    if arr.dtype.kind not in "fiu" or arr.ndim != 1:
        raise SampleError("bad_feat", f"{where}: feat.npy must be a 1-D numeric array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.float32, copy=False)
