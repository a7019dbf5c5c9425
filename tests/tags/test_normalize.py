from trainer.tags.counting import count_frequencies, Sample
from trainer.tags.normalize import NormalizeConfig, TagNormalizer


def test_nfkc_lowercase_and_whitespace_collapse_make_one_key():
    n = TagNormalizer(NormalizeConfig())
    assert n.normalize("ＳＫＹ") == "sky"          # full-width letters
    assert n.normalize("  New   York ") == "new york"
    assert n.normalize("ﬁsh") == "fish"            # ligature
    assert n.skips == {}


def test_numeric_camera_and_stop_tags_are_dropped_and_counted():
    n = TagNormalizer(NormalizeConfig(drop_camera_tags=True, stop_tags=["Flickr"]))
    out = [n.normalize(t) for t in ["2007", "12:30", "nikond80", "canon eos 400d", "FLICKR", "cat"]]
    assert out == [None, None, None, None, None, "cat"]
    assert n.skips == {"numeric": 2, "camera": 2, "stop_tag": 1}


def test_rules_can_be_switched_off():
    n = TagNormalizer(NormalizeConfig(lowercase=False, drop_numeric=False))
    assert n.normalize("Sky") == "Sky"
    assert n.normalize("2007") == "2007"


def test_ten_thousand_character_tag_is_dropped_as_too_long():
    n = TagNormalizer(NormalizeConfig(max_tag_length=64))
    assert n.normalize("a" * 10_000) is None
    assert n.normalize("b" * 65) is None
    assert n.normalize("c" * 64) == "c" * 64
    assert n.skips == {"too_long": 2}


def test_non_utf8_bytes_and_non_strings_are_counted_skips():
    n = TagNormalizer(NormalizeConfig())
    assert n.normalize(b"\xff\xfesky") is None
    assert n.normalize("caf\u00e9".encode()) == "caf\u00e9"
    assert n.normalize(42) is None
    assert n.skips == {"non_utf8": 1, "not_a_string": 1}


def test_empty_tag_lists_count_as_untagged_images():
    part = count_frequencies([Sample("a", []), Sample("b", ["  "]), Sample("c", ["sky", "SKY"])],
                             NormalizeConfig())
    assert part.n_images == 3
    assert part.n_untagged_raw == 2
    assert part.freq == {"sky": 1}          # a tag counts once per image
    assert part.skips == {"tag_empty": 1}
