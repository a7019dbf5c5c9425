"""Bad input: each case is a counted skip or one clear error naming the culprit."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from shards.__main__ import main
from shards.manifest import Manifest, ManifestError, ShardEntry, sha256_of
from shards.reader import ReaderConfig, make_loader
from tests.shards.conftest import jpeg, png, write_set

CFG = ReaderConfig(batch_size=2, image_size=8, num_workers=0)


def raw_set(path: Path, shards: list[list[dict]], raw_bytes: dict[int, bytes] | None = None) -> Path:
    """A shard set written member by member (bypassing the validating writer), with its manifest."""
    path.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, samples in enumerate(shards):
        f = path / f"shard-{i:06d}.tar"
        with wds.TarWriter(str(f)) as tw:
            for s in samples:
                tw.write(s)
        if raw_bytes and i in raw_bytes:
            f.write_bytes(raw_bytes[i])
        digest, n = sha256_of(str(f))
        entries.append(ShardEntry(f.name, len(samples), n, digest))
    Manifest(entries, "test", "train", base_url=str(path)).save()
    return path


def good(i: int, **extra) -> dict:
    return {"__key__": f"k{i:03d}", "png": png(i), "tags.json": json.dumps([f"t{i}"]).encode(), **extra}


def read_all(path, train=False):
    loader = make_loader(str(path), CFG, train=train)
    keys = [k for b in loader for k in b["key"]]
    return keys, loader.skips


def test_corrupt_and_truncated_images_are_skipped_and_counted(tmp_path):
    truncated = jpeg(7, 64)[:200]
    bad = [good(0), {**good(1), "png": b"not an image at all"}, {"__key__": "k002", "jpg": truncated,
                                                                 "tags.json": b'["x"]'}, good(3)]
    keys, skips = read_all(raw_set(tmp_path / "s", [bad]))
    assert keys == ["k000", "k003"]
    assert skips == {"corrupt_image": 2}


def test_decompression_bomb_is_skipped_as_image_too_large(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buf, format="PNG")  # 16 MP, tiny file
    path = raw_set(tmp_path / "s", [[good(0), {**good(1), "png": buf.getvalue()}]])
    loader = make_loader(str(path), ReaderConfig(batch_size=2, image_size=8, num_workers=0, max_pixels=1_000_000),
                         train=False)
    assert [k for b in loader for k in b["key"]] == ["k000"]
    assert loader.skips == {"image_too_large": 1}


def test_truncated_tar_keeps_the_samples_before_the_cut_and_counts_the_rest(tmp_path):
    path = raw_set(tmp_path / "s", [[good(i) for i in range(6)]])
    shard = path / "shard-000000.tar"
    data = shard.read_bytes()
    raw_set(tmp_path / "t", [[good(i) for i in range(6)]], raw_bytes={0: data[:3 * 4096 + 1000]})  # cut inside k003
    keys, skips = read_all(tmp_path / "t")
    assert keys == ["k000", "k001", "k002"]
    assert skips == {"truncated_tar": 3}  # per sample: read + skipped = the manifest's 6


def test_empty_shard_contributes_nothing_and_breaks_nothing(tmp_path):
    keys, skips = read_all(raw_set(tmp_path / "s", [[good(0), good(1)], [], [good(2)]]))
    assert keys == ["k000", "k001", "k002"] and not skips


def test_missing_tags_and_non_utf8_tags_are_counted(tmp_path):
    samples = [good(0), {"__key__": "k001", "png": png(1)}, {**good(2), "tags.json": b'["caf\xe9"]'},
               {**good(3), "tags.json": b'{"not": "a list"}'}, good(4)]
    keys, skips = read_all(raw_set(tmp_path / "s", [samples]))
    assert keys == ["k000", "k004"]
    assert skips == {"missing_tags": 1, "bad_tags": 2}


def test_duplicate_keys_in_a_shard_are_counted_once_read_once(tmp_path):
    keys, skips = read_all(raw_set(tmp_path / "s", [[good(0), good(1), good(0), good(2)]]))
    assert keys == ["k000", "k001", "k002"] and skips == {"duplicate_key": 1}


def test_pickled_npy_is_refused_never_unpickled(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    keys, skips = read_all(raw_set(tmp_path / "s", [[good(0, **{"feat.npy": buf.getvalue()}), good(1)]]))
    assert keys == ["k001"] and skips == {"bad_feat": 1}


def test_missing_shard_url_is_one_clear_error_naming_it(tmp_path):
    path = raw_set(tmp_path / "s", [[good(0)], [good(1)]])
    (path / "shard-000001.tar").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard-000001\.tar: shard listed in .*manifest\.json does not exist"):
        make_loader(str(path), CFG)


def test_missing_manifest_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no manifest\.json here"):
        make_loader(str(tmp_path / "nowhere"), CFG)


def test_changed_shard_is_refused_by_reader_and_by_verify(tmp_path, capsys):
    path = raw_set(tmp_path / "s", [[good(0)], [good(1)]])
    shard = path / "shard-000001.tar"
    same_size = bytearray(shard.read_bytes())
    same_size[600] ^= 0xFF  # flip bits inside the first member's data: size unchanged, sha256 differs
    shard.write_bytes(bytes(same_size))
    assert main(["verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert "shard-000001.tar: sha256" in err and "shard-000000.tar" not in err
    shard.write_bytes(bytes(same_size) + b"\0" * 512)
    with pytest.raises(ManifestError, match=r"shard-000001\.tar: \d+ bytes but .* says"):
        make_loader(str(path), CFG)


def test_manifest_total_mismatch_is_refused(tmp_path):
    path = raw_set(tmp_path / "s", [[good(0)]])
    d = json.loads((path / "manifest.json").read_text())
    d["total"] = 5
    (path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match=r"manifest\.json: total 5 != sum of shard counts 1"):
        Manifest.load(str(path))


def test_empty_shard_set_is_refused_clearly(tmp_path):
    with pytest.raises(Exception, match=r"shard set is empty"):
        make_loader(str(raw_set(tmp_path / "s", [])), CFG)


def test_train_stream_of_only_bad_samples_stops_with_an_error_instead_of_spinning(tmp_path):
    path = raw_set(tmp_path / "s", [[{**good(i), "png": b"junk"} for i in range(4)]])
    from shards.reader import ReaderError

    with pytest.raises(ReaderError, match=r"no usable (sample|image)"):
        list(make_loader(str(path), CFG, train=True))


def test_valid_set_reads_without_skips(tmp_path):
    write_set(tmp_path / "ok", n=5, max_count=2)
    keys, skips = read_all(tmp_path / "ok")
    assert len(keys) == 5 and not skips
