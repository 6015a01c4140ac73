"""Corpus reading: precise errors, hashing, counting, and the cached id file."""

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.corpus import CorpusError, default_corpus_path, encode_cached, iter_texts, scan
from charrnn.tokenizer import Tokenizer, split_words, split_words_v1

from samples import CHINESE, MIXED


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(p)


def test_scan_counts_and_hashes(tmp_path):
    a = write(tmp_path, "a.txt", MIXED)
    b = write(tmp_path, "b.txt", CHINESE)
    corpus = scan([a, b])
    assert corpus.num_chars == len(MIXED) + len(CHINESE)
    assert corpus.num_bytes == len((MIXED + CHINESE).encode())
    assert corpus.counts["喜"] == MIXED.count("喜") + CHINESE.count("喜")
    assert scan([a, b]).sha256 == corpus.sha256
    assert scan([b, a]).sha256 != corpus.sha256


def test_stdin_corpus(tmp_path):
    corpus = scan(["-"], stdin=io.BytesIO(CHINESE.encode()))
    assert "".join(corpus.texts()) == CHINESE


def test_invalid_utf8_names_the_byte_offset(tmp_path):
    p = write(tmp_path, "bad.txt", "我喜欢".encode() * 5 + b"\xfe\xff rest")
    with pytest.raises(CorpusError, match=r"not valid UTF-8 \(byte offset 45\).*--encoding-errors replace"):
        scan([p])
    corpus = scan([p], encoding_errors="replace")
    assert "\ufffd" in corpus.counts


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 7, 64])
def test_utf8_offset_is_exact_for_any_chunking(tmp_path, chunk):
    p = write(tmp_path, "bad.txt", "a😀b我".encode() * 3 + b"\x80")
    with pytest.raises(CorpusError, match=r"byte offset 27\)"):
        list(iter_texts([p], chunk_bytes=chunk))


@pytest.mark.parametrize(
    "content,message",
    [(b"", "empty"), (b"  \n\t \n", "only whitespace"), (b"abc\0def", "binary file")],
)
def test_unusable_corpora(tmp_path, content, message):
    p = write(tmp_path, "x.txt", content)
    with pytest.raises(CorpusError, match=message):
        scan([p])


def test_missing_and_directory(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        scan([str(tmp_path / "nope.txt")])
    with pytest.raises(CorpusError, match="directory"):
        scan([str(tmp_path)])


def test_word_level_chunks_never_split_words(tmp_path):
    text = "alpha beta gamma delta\nepsilon zeta " * 50
    p = write(tmp_path, "w.txt", text)
    pieces = list(iter_texts([p], level="word", chunk_bytes=13))
    assert "".join(pieces) == text
    assert all(piece[-1] not in " \n" for piece in pieces[:-1])  # cut before the space of " word"
    for split in (split_words, split_words_v1):
        assert [w for piece in pieces for w in split(piece)] == split(text)


def test_word_level_text_without_spaces_is_cut_at_ideographs(tmp_path):
    p = write(tmp_path, "zh.txt", CHINESE * 200)
    pieces = list(iter_texts([p], level="word", chunk_bytes=64))
    assert len(pieces) > 100 and "".join(pieces) == CHINESE * 200  # bounded pieces, not one


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from(list(" \n\t ab'1\u0301,.我学は🙂")) | st.characters(exclude_categories=("Cs",), exclude_characters="\0"), max_size=120),
       st.integers(1, 40))
def test_word_pieces_split_into_the_tokens_of_the_whole(text, chunk_bytes):
    pieces = list(iter_texts(["-"], stdin_bytes=text.encode(), level="word", chunk_bytes=chunk_bytes))
    assert "".join(pieces) == text
    for split in (split_words, split_words_v1):
        assert [w for piece in pieces for w in split(piece)] == split(text)


def test_cached_ids_equal_fresh_encoding_and_are_reused(tmp_path):
    text = (MIXED + CHINESE) * 30
    p = write(tmp_path, "c.txt", text)
    corpus = scan([p])
    tok = Tokenizer.from_counts(corpus.counts)
    ids = encode_cached(corpus, tok, tmp_path / "cache")
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
    np.testing.assert_array_equal(ids, tok.encode(text))
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    again = encode_cached(scan([p]), tok, tmp_path / "cache")
    np.testing.assert_array_equal(again, ids)
    assert files[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    write(tmp_path, "c.txt", text + "x")  # a changed corpus gets its own file
    encode_cached(scan([p]), tok, tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_chunked_encoding_equals_whole(tmp_path, monkeypatch):
    import charrnn.corpus as corpus_module

    text = (MIXED + CHINESE) * 20
    p = write(tmp_path, "c.txt", text)
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 5)
    corpus = scan([p])
    tok = Tokenizer.from_counts(corpus.counts)
    np.testing.assert_array_equal(encode_cached(corpus, tok, tmp_path), tok.encode(text))


def test_default_corpus_exists():
    assert default_corpus_path().is_file()
