import json

import numpy as np
import pytest

from trainer.tags import ArtifactError, GraphConfig, TagConfig, TagSemantics, VectorConfig, build_semantics


def _build(corpus, **graph):
    tags, labels = corpus
    cfg = TagConfig(vectors=VectorConfig(source="cooccurrence", cooccurrence_dim=4),
                    graph=GraphConfig(**graph))
    return build_semantics(tags, cfg, labels)


def test_targets_apply_the_counting_normalisation_and_the_merge_map(corpus):
    sem = _build(corpus, eps=1e-6)
    # grass and puppy have the same co-occurrence profile (each: dog twice, the other once), so their
    # PPMI-SVD vectors coincide and they merge even at a tiny eps; sky and clouds co-occur only with
    # each other, so the PPMI enhancement (each keeps 1-mix = 1/2 of itself, takes 1/2 of its only
    # neighbour) makes them identical. A unit is named by its first member in vocabulary order.
    assert sem.groups() == [["sky", "clouds"], ["dog"], ["grass", "puppy"]]
    assert sem.names == ["sky", "dog", "grass"]
    t = sem.targets([["ＳＫＹ ", "Puppy", "never-seen"], [], ["clouds"], ["2007"]])
    assert t.dtype == np.uint8 and t.shape == (4, 3)
    assert t.tolist() == [[1, 0, 1], [0] * 3, [1, 0, 0], [0] * 3]
    assert sem.stats["images_untagged_after_merge"] == {"count": 1, "exact": True}


def test_merged_units_or_their_member_tags(corpus):
    sem = _build(corpus, eps=1e-6)
    merged = TagSemantics(names=["sky", "dog"], embeddings=np.eye(2, dtype=np.float32), vocab=sem.vocab,
                          counts=sem.counts, merge_map={"sky": 0, "clouds": 0, "dog": 1, "puppy": 1, "grass": -1},
                          config=sem.config)
    assert merged.targets([["clouds", "sky"], ["puppy"], ["grass"]]).tolist() == [[1, 0], [0, 1], [0, 0]]
    assert merged.groups() == [["sky", "clouds"], ["dog", "puppy"]]


def test_embeddings_are_unit_rows_and_hash_is_stable_across_builds(corpus):
    a, b = _build(corpus, eps=0.05), _build(corpus, eps=0.05)
    assert np.allclose(np.linalg.norm(a.embeddings, axis=1), 1, atol=1e-6)
    assert a.hash == b.hash and len(a.hash) == 64
    assert _build(corpus, eps=0.5).hash != a.hash


def test_save_load_round_trip_and_report_files(corpus, tmp_path):
    sem = _build(corpus, eps=0.05)
    sem.save(str(tmp_path / "art"))
    names = sorted(p.name for p in (tmp_path / "art").iterdir())
    assert names == ["embeddings.npy", "merge_map.json", "report.md", "semantics.json", "tag_frequency.png",
                     "vocab.json"]
    back = TagSemantics.load(str(tmp_path / "art"))
    assert back.hash == sem.hash and back.names == sem.names
    assert np.array_equal(back.embeddings, sem.embeddings)
    assert back.targets([["sky"]]).tolist() == sem.targets([["sky"]]).tolist()
    report = (tmp_path / "art" / "report.md").read_text()
    assert "| merged units T | %d |" % sem.T in report
    assert (tmp_path / "art" / "tag_frequency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tampered_or_incomplete_artifact_is_refused_naming_it(corpus, tmp_path):
    sem = _build(corpus, eps=0.05)
    art = tmp_path / "art"
    sem.save(str(art))
    mm = json.loads((art / "merge_map.json").read_text())
    mm["map"]["sky"] = 1
    (art / "merge_map.json").write_text(json.dumps(mm))
    with pytest.raises(ArtifactError, match=r"art: content hash .* does not match"):
        TagSemantics.load(str(art))
    (art / "vocab.json").unlink()
    with pytest.raises(ArtifactError, match=r"art: tag-semantics artifact has no vocab.json"):
        TagSemantics.load(str(art))


@pytest.mark.s3
def test_artifact_round_trips_through_s3(corpus, s3_bucket):
    sem = _build(corpus, eps=0.05)
    url = f"s3://{s3_bucket}/tags/v1"
    sem.save(url)
    back = TagSemantics.load(url)
    assert back.hash == sem.hash and back.names == sem.names


def test_a_corpus_where_no_tag_survives_is_one_clear_error():
    from trainer.tags import NoTagsError

    with pytest.raises(NoTagsError, match=r"none on >= vocab.min_count=2 images"):
        build_semantics([[], ["once"], ["2007"]])


def test_cli_names_the_vector_file_and_line_of_a_wrong_dimension(tmp_path, capsys):
    from trainer.tags.__main__ import main

    npz = tmp_path / "m.npz"
    np.savez(npz, tags=np.array([[1, 1], [1, 0], [0, 1]], dtype=np.uint8))
    vec = tmp_path / "v.txt"
    vec.write_text("tag_0000 1 0\ntag_0001 0 1 0\n")
    rc = main(["build-matrix", "--npz", str(npz), "--out", str(tmp_path / "o"), "vocab.min_count=1",
               f"vectors.source=file:{vec}"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == f"error: {vec}:2: expected a word and 2 values, found 3 values"
