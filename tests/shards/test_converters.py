"""Converters on small fixtures built here in each source layout, and on the real MIRFLICKR subset."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import webdataset as wds

from shards.__main__ import main
from shards.converters.generic import convert_folder, convert_list
from shards.converters.laion import LaionConfig, caption_tags, convert_laion
from shards.converters.mirflickr import convert_original
from shards.converters.nuswide import convert_nuswide
from shards.manifest import Manifest
from shards.reader import ReaderConfig, iter_samples, make_loader
from shards.writer import ShardingConfig
from tests.shards.conftest import jpeg, png

SHARD = ShardingConfig(max_count=4, query_fraction=0.25, train_fraction=0.5)


def read_split(root, split):
    m = Manifest.load(str(root / split))
    return {s["__key__"]: s for url in m.shard_urls() for s in iter_samples(url)}, m


def all_items(root):
    """Every converted item once (query + database, database includes train)."""
    q, _ = read_split(root, "query")
    d, _ = read_split(root, "database")
    assert not set(q) & set(d)
    return {**q, **d}


def test_jsonl_list_converts_good_rows_and_counts_every_bad_one(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    lines = []
    for i in range(6):
        (src / f"img{i}.jpg").write_bytes(jpeg(i))
        lines.append(json.dumps({"image": f"img{i}.jpg", "tags": [f"tag{i}", "Sky "], "labels": [f"c{i % 2}"]}))
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    lines += ['{"image": "gone.jpg", "tags": ["x"]}', "{not json", '{"image": "img0.jpg"}',
              '{"image": "broken.jpg", "tags": "a|b"}', json.dumps({"image": "img1.jpg", "tags": ["dup"]})]
    (src / "list.jsonl").write_text("\n".join(lines) + "\n")
    w = convert_list(str(src / "list.jsonl"), str(tmp_path / "out"), SHARD)
    assert dict(w.skipped) == {"missing_image_file": 1, "bad_list_line": 1, "missing_tags": 1,
                               "corrupt_image": 1, "duplicate_key": 1}
    items = all_items(tmp_path / "out")
    assert sorted(items) == [f"img{i}" for i in range(6)]
    assert items["img3"]["tags"] == ["tag3", "Sky"] and items["img3"]["labels"] == ["c1"]
    _, m = read_split(tmp_path / "out", "train")
    assert m.label_names == ["c0", "c1"] and m.skipped["corrupt_image"] == 1


def test_csv_list_splits_tag_cells_on_the_separator(tmp_path):
    for i in range(3):
        (tmp_path / f"p{i}.png").write_bytes(png(i))
    (tmp_path / "list.csv").write_text("image,tags,labels\np0.png,new york|sky,city\np1.png,,\np2.png,a|b|a,\n")
    convert_list(str(tmp_path / "list.csv"), str(tmp_path / "out"), SHARD)
    items = all_items(tmp_path / "out")
    assert items["p0"]["tags"] == ["new york", "sky"] and items["p0"]["labels"] == ["city"]
    assert items["p1"]["tags"] == [] and items["p2"]["tags"] == ["a", "b"] and items["p2"]["labels"] == []


def test_folder_with_sidecar_tag_files(tmp_path):
    src = tmp_path / "src" / "sub"
    src.mkdir(parents=True)
    for i in range(5):
        (src / f"a{i}.png").write_bytes(png(i))
    (src / "a0.tags.txt").write_text("beach\nsun, sea\n")
    (src / "a0.labels.txt").write_text("sea\n")
    (src / "a1.txt").write_text("dog")
    (src / "a2.tags.txt").write_bytes(b"caf\xe9\n")
    (src / "a3.tags.txt").write_text("")
    w = convert_folder(str(tmp_path / "src"), str(tmp_path / "out"), SHARD)
    assert dict(w.skipped) == {"missing_tags": 1, "non_utf8_tags": 1} and w.untagged == 1
    items = all_items(tmp_path / "out")
    assert items["sub/a0"]["tags"] == ["beach", "sun", "sea"] and items["sub/a0"]["labels"] == ["sea"]
    assert items["sub/a1"]["tags"] == ["dog"] and items["sub/a3"]["tags"] == []


def nuswide_fixture(root, n=8, short_label_file=False):
    names = ["sky", "water", "dog", "night", "car"]
    concepts = ["animal", "clouds", "sky"]
    (root / "ImageList").mkdir(parents=True)
    (root / "NUS_WID_Tags").mkdir()
    (root / "Groundtruth" / "AllLabels").mkdir(parents=True)
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (n, len(names)))
    labels = rng.integers(0, 2, (n, len(concepts)))
    lines = []
    for i in range(n):
        rel = f"actor\\{i:04d}_{1000 + i}.jpg"
        lines.append(rel)
        if i != 5:  # image 5 is listed but missing
            p = root / "images" / "Flickr" / "actor" / f"{i:04d}_{1000 + i}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(jpeg(i))
    (root / "ImageList" / "Imagelist.txt").write_text("\r\n".join(lines) + "\r\n")
    (root / "NUS_WID_Tags" / "TagList1k.txt").write_text("\n".join(names) + "\n")
    (root / "NUS_WID_Tags" / "AllTags1k.txt").write_text("\n".join(" ".join(map(str, r)) for r in bits) + "\n")
    for j, c in enumerate(concepts):
        rows = labels[: n - 1, j] if short_label_file and c == "clouds" else labels[:, j]
        (root / "Groundtruth" / "AllLabels" / f"Labels_{c}.txt").write_text("\n".join(map(str, rows)) + "\n")
    return names, concepts, bits, labels


def test_nuswide_layout_reads_lists_tags_and_labels_in_lockstep(tmp_path):
    names, concepts, bits, labels = nuswide_fixture(tmp_path / "nus")
    w = convert_nuswide(str(tmp_path / "nus"), str(tmp_path / "out"), SHARD)
    assert dict(w.skipped) == {"missing_image_file": 1}
    items = all_items(tmp_path / "out")
    assert len(items) == 7
    for i in (0, 3, 7):
        s = items[f"actor/{i:04d}_{1000 + i}"]
        assert s["tags"] == [t for t, b in zip(names, bits[i]) if b]
        assert s["labels"] == [c for c, b in zip(concepts, labels[i]) if b]
    assert Manifest.load(str(tmp_path / "out" / "query")).label_names == concepts


def test_nuswide_label_file_shorter_than_the_list_is_refused_naming_it(tmp_path, capsys):
    nuswide_fixture(tmp_path / "nus", short_label_file=True)
    assert main(["nuswide", str(tmp_path / "nus"), "--out", str(tmp_path / "out")]) == 2
    assert "Labels_clouds.txt: ends before line 8" in capsys.readouterr().err
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # aborted: no half-written set


def test_caption_rule_lowercases_drops_stopwords_short_words_and_numbers():
    cfg = LaionConfig(min_word_length=3, max_tags=4)
    from shards.converters.laion import STOPWORDS

    assert caption_tags("A photo of the Golden Gate bridge at 5 pm, golden hour", cfg, STOPWORDS) == \
        ["photo", "golden", "gate", "bridge"]


def write_laion_tar(src, first: int = 0) -> None:
    """An img2dataset-style shard: json tags, caption-only, a failed download, no caption, tag string."""
    with wds.TarWriter(str(src)) as tw:
        tw.write({"__key__": f"{first + 0:09d}", "jpg": jpeg(0), "txt": b"Red car on a street",
                  "json": json.dumps({"tags": ["car", "red"], "status": "success"}).encode()})
        tw.write({"__key__": f"{first + 1:09d}", "jpg": jpeg(1), "txt": b"Sunset over the sea",
                  "json": json.dumps({"status": "success"}).encode()})
        tw.write({"__key__": f"{first + 2:09d}", "txt": b"failed", "json": b'{"status": "failed_to_download"}'})
        tw.write({"__key__": f"{first + 3:09d}", "jpg": jpeg(3), "json": b"{}"})
        tw.write({"__key__": f"{first + 4:09d}", "jpg": jpeg(4), "txt": b"Dog", "json": b'{"tags": "dog, puppy"}'})


def test_laion_shards_use_json_tags_else_caption_rule(tmp_path):
    src = tmp_path / "in-000000.tar"
    write_laion_tar(src)
    w = convert_laion([str(src)], str(tmp_path / "out"), SHARD)
    assert dict(w.skipped) == {"missing_image": 1, "missing_tags": 1}
    items = all_items(tmp_path / "out")
    assert items["000000000"]["tags"] == ["car", "red"] and items["000000000"]["txt"] == "Red car on a street"
    assert items["000000001"]["tags"] == ["sunset", "sea"]
    assert items["000000004"]["tags"] == ["dog", "puppy"]


def test_splits_are_disjoint_and_database_includes_train(tmp_path):
    for i in range(40):
        (tmp_path / f"p{i}.png").write_bytes(png(i))
    (tmp_path / "l.jsonl").write_text("".join(json.dumps({"image": f"p{i}.png", "tags": ["a"]}) + "\n"
                                              for i in range(40)))
    convert_list(str(tmp_path / "l.jsonl"), str(tmp_path / "out"), SHARD)
    q, _ = read_split(tmp_path / "out", "query")
    t, _ = read_split(tmp_path / "out", "train")
    d, _ = read_split(tmp_path / "out", "database")
    assert q and t and not set(q) & (set(t) | set(d))
    assert set(t) <= set(d) and len(q) + len(d) == 40
    assert [s.count for s in Manifest.load(str(tmp_path / "out" / "database")).shards][:-1] == \
        [4] * (len(Manifest.load(str(tmp_path / "out" / "database")).shards) - 1)


def build_mirflickr_original(root, mirflickr_real, ids):
    """MIRFLICKR's original layout from the real images: im4 has no tag file, tags5.txt is not UTF-8."""
    z = np.load(mirflickr_real / "subset1000_with_images.npz", allow_pickle=False)
    concepts = [str(c) for c in z["concepts"]]
    (root / "mirflickr").mkdir(parents=True)
    (root / "meta" / "tags").mkdir(parents=True)
    (root / "annotations").mkdir()
    for n in ids:
        shutil.copy(mirflickr_real / "images_256" / f"im{n}.jpg", root / "mirflickr" / f"im{n}.jpg")
        if n != 4:
            (root / "meta" / "tags" / f"tags{n}.txt").write_text(f"photo{n}\nnikon\n")
    (root / "meta" / "tags" / "tags5.txt").write_bytes(b"\xff\xfe bad")
    for j, c in enumerate(concepts):
        rows = [str(n) for n in ids if z["labels"][n - 1, j]]
        (root / "annotations" / f"{c}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
        (root / "annotations" / f"{c}_r1.txt").write_text("")
    return z, concepts


@pytest.mark.real_data
def test_mirflickr_original_layout_from_real_images(mirflickr_real, tmp_path):
    root = tmp_path / "mir"
    z, concepts = build_mirflickr_original(root, mirflickr_real, list(range(1, 13)))
    w = convert_original(str(root), str(tmp_path / "out"), SHARD)
    assert dict(w.skipped) == {"missing_tags": 1, "non_utf8_tags": 1}
    items = all_items(tmp_path / "out")
    assert len(items) == 10
    for n in (1, 3, 12):
        s = items[f"mirflickr/im{n}"]
        assert s["tags"] == [f"photo{n}", "nikon"]
        assert s["labels"] == [concepts[j] for j in np.flatnonzero(z["labels"][n - 1])]
        assert s["image"] == (mirflickr_real / "images_256" / f"im{n}.jpg").read_bytes()


@pytest.mark.real_data
def test_real_mirflickr_subset_matrix_form_converts_and_reads_back(mirflickr_real, tmp_path):
    out = tmp_path / "mir"
    assert main(["mirflickr-matrix", str(mirflickr_real / "subset1000_with_images.npz"), "--out", str(out),
                 "--max-count", "300", "--no-validate-images"]) == 0
    z = np.load(mirflickr_real / "subset1000_with_images.npz", allow_pickle=False)
    q, qm = read_split(out, "query")
    d, dm = read_split(out, "database")
    assert len(q) + len(d) == 1000 and qm.label_names == sorted(str(c) for c in z["concepts"])
    untagged = sum(not s["tags"] for s in {**q, **d}.values())
    assert untagged == 270
    s = d.get("mirflickr/im4") or q["mirflickr/im4"]
    assert s["labels"] == [str(z["concepts"][j]) for j in np.flatnonzero(z["labels"][3])]
    assert s["tags"] == [f"tag_{j:04d}" for j in np.flatnonzero(z["tags"][3])]
    loader = make_loader(str(out / "query"), ReaderConfig(batch_size=50, image_size=32, num_workers=2), train=False)
    keys = [k for b in loader for k in b["key"]]
    assert sorted(keys) == sorted(q) and not loader.skips
    assert len(loader) == len(list(loader)) == -(-((len(q) + 1) // 2) // 50) + -(-(len(q) // 2) // 50)


@pytest.mark.real_data
def test_real_mirflickr_with_features_trains_on_tagged_images_only_and_stores_the_descriptor(mirflickr_real,
                                                                                            tmp_path):
    from PIL import Image

    from shards import descriptors

    out = tmp_path / "mir"
    assert main(["mirflickr-matrix", str(mirflickr_real / "subset1000_with_images.npz"), "--out", str(out),
                 "--features", "--query-fraction", "0.2", "--train-fraction", "0.8", "--train-needs-tags",
                 "--max-count", "200", "--no-validate-images"]) == 0
    split = {name: {s["__key__"]: s for url in Manifest.load(str(out / name)).shard_urls()
                    for s in iter_samples(url, fields=["tags.json", "feat.npy"])}
             for name in ("train", "query", "database")}
    # the fixed split of docs/results.md: every tagged non-query image trains, untagged ones never do
    assert (len(split["train"]), len(split["query"]), len(split["database"])) == (575, 213, 787)
    assert all(s["tags"] for s in split["train"].values())
    tagged_db = {k for k, s in split["database"].items() if s["tags"]}
    assert set(split["train"]) == tagged_db and len(split["database"]) - len(tagged_db) == 212
    assert not set(split["query"]) & set(split["database"])
    sample = split["query"].get("mirflickr/im4") or split["database"]["mirflickr/im4"]
    want = descriptors.colour_texture(Image.open(mirflickr_real / "images_256" / "im4.jpg"))
    assert sample["feat"].dtype == np.float32 and sample["feat"].shape == (descriptors.DIM,)
    np.testing.assert_array_equal(sample["feat"], want)
    assert "colour-texture-v2" in Manifest.load(str(out / "train")).source


def test_colour_texture_descriptor_blocks_are_unit_norm_and_see_colour_and_orientation():
    from PIL import Image

    from shards import descriptors

    red = np.zeros((40, 60, 3), np.uint8)
    red[..., 0] = 250
    d = descriptors.colour_texture(Image.fromarray(red))
    hist, layout, hog = d[:64], d[64:256], d[256:]
    assert [round(float(np.linalg.norm(b)), 5) for b in (hist, layout)] == [1.0, 1.0]
    assert hist[3 * 16] == pytest.approx(1.0) and not hog.any()  # one colour bin (r=3, g=b=0), no edges
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::8] = 255  # vertical edges: horizontal gradients, orientation bin 0
    h = descriptors.colour_texture(Image.fromarray(stripes))[256:].reshape(16, 8)
    assert h[:, 0].min() > 0 and np.allclose(h[:, 1:], 0) and np.linalg.norm(h) == pytest.approx(1.0)
    assert descriptors.colour_texture_of(png(1)).shape == (descriptors.DIM,)


def test_laion_labels_from_a_named_json_field_make_the_shards_evaluable(tmp_path, capsys):
    """LAION-style shards whose json carries ``categories`` (a list, or a comma-separated string)."""
    src = tmp_path / "in-000000.tar"
    with wds.TarWriter(str(src)) as tw:
        for i, cats in enumerate([["dog", "animal"], "car, street", None, 5, []]):
            meta = {"status": "success"} | ({} if cats is None else {"categories": cats})
            tw.write({"__key__": f"{i:09d}", "jpg": jpeg(i), "txt": b"A red car on the street",
                      "json": json.dumps(meta).encode()})
    assert main(["laion", str(src), "--label-field", "categories", "--out", str(tmp_path / "out"),
                 "--max-count", "10"]) == 0
    assert "bad_labels: 1" in capsys.readouterr().out  # "categories": 5
    items = all_items(tmp_path / "out")
    assert sorted(items) == ["000000000", "000000001", "000000002", "000000004"]
    assert items["000000000"]["labels"] == ["animal", "dog"] and items["000000001"]["labels"] == ["car", "street"]
    assert items["000000002"]["labels"] == [] and items["000000004"]["labels"] == []
    _, m = read_split(tmp_path / "out", "database")
    assert m.label_names == ["animal", "car", "dog", "street"]


def test_generic_converters_take_labels_from_a_named_field(tmp_path):
    for i in range(3):
        (tmp_path / f"p{i}.png").write_bytes(png(i))
    rows = [{"image": "p0.png", "tags": ["a"], "categories": ["x", "y"]},
            {"image": "p1.png", "tags": ["b"], "categories": "z|x", "labels": ["ignored"]},
            {"image": "p2.png", "tags": ["c"]}]
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    convert_list(str(tmp_path / "l.jsonl"), str(tmp_path / "j"), SHARD, label_field="categories")
    items = all_items(tmp_path / "j")
    assert [items[k]["labels"] for k in ("p0", "p1", "p2")] == [["x", "y"], ["x", "z"], []]
    (tmp_path / "l.csv").write_text("image,tags,categories\np0.png,a,x|y\np1.png,b,\n")
    convert_list(str(tmp_path / "l.csv"), str(tmp_path / "c"), SHARD, label_field="categories")
    items = all_items(tmp_path / "c")
    assert items["p0"]["labels"] == ["x", "y"] and items["p1"]["labels"] == []
    folder = tmp_path / "f"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.png").write_bytes(png(i))
        (folder / f"p{i}.txt").write_text("tag")
    (folder / "p0.json").write_text(json.dumps({"categories": ["x"]}))
    (folder / "p1.json").write_text(json.dumps({"categories": 3}))
    w = convert_folder(str(folder), str(tmp_path / "fo"), SHARD, label_field="categories")
    assert w.skipped == {"bad_labels": 1}
    items = all_items(tmp_path / "fo")
    assert items["p0"]["labels"] == ["x"] and items["p2"]["labels"] == []
