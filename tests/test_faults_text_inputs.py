"""Inputs read as images are: text corpora and vocabularies are regular files under a size cap and a line cap, a deeply
nested JSON line is one bad line, and a query naming a FIFO or a device is refused in one line.
"""

from __future__ import annotations

import json
import os

import pytest

from crossgap_index.ingest.texts import MAX_LINE_CHARS, read_text_corpus
from tests.support.cli import cgx
from tests.support.faults import cli, corpus_lines, one_line, stored_items
from tests.support.photos import MODEL


# -- text inputs are read as images are: regular files, a size cap, a line cap
@pytest.mark.slow
def test_add_texts_and_vocab_refuse_a_link_to_dev_zero_in_one_line(tmp_path):
    link = tmp_path / "corpus.txt"
    link.symlink_to("/dev/zero")
    added = cgx("add-texts", link, "--index", tmp_path / "idx", "--model", MODEL, "--device", "cpu", memory_gb=3)
    assert added.returncode == 1, added.stderr[-500:]  # was: reads /dev/zero until memory runs out
    assert "not a regular file (a character device)" in one_line(added.stderr)
    assert not (tmp_path / "idx").exists()

    vocab = tmp_path / "names.txt"
    vocab.symlink_to("/dev/zero")
    query = cgx("query", "a cat", "--mode", "span", "--vocab", vocab, "--index", tmp_path / "idx", memory_gb=3)
    assert query.returncode == 1, query.stderr[-500:]
    assert "vocabulary" in one_line(query.stderr) and "not a regular file" in query.stderr


def test_text_files_over_the_size_cap_are_refused_naming_the_setting(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines(400)) + "\n")  # about 16 kB
    result = cli("add-texts", corpus, "--index", tmp_path / "idx", "--max-file-mb", "0.01")
    assert result.exit_code == 1
    assert "--max-file-mb limit of 0.01 MB" in one_line(result.output)
    assert not (tmp_path / "idx").exists()


def test_a_line_over_the_length_cap_is_one_bad_line(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(f"first document\n{'x' * (MAX_LINE_CHARS + 1)}\nthird document\n")
    parsed = read_text_corpus(corpus)
    assert parsed.texts == ["first document", "third document"]
    assert [lineno for lineno, _ in parsed.bad_lines] == [2]
    assert f"longer than {MAX_LINE_CHARS}" in parsed.bad_lines[0][1]


# -- a deeply nested JSON line is one bad line, the rest is stored
def test_deeply_nested_json_line_is_one_bad_line_and_the_rest_is_stored(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": "a red bicycle"}), "[" * 100_000, json.dumps({"text": "a blue boat", "id": 7})]
    corpus.write_text("\n".join(lines) + "\n")
    parsed = read_text_corpus(corpus)  # was: RecursionError
    assert parsed.texts == ["a red bicycle", "a blue boat"] and parsed.ids == [None, "7"]
    assert parsed.bad_lines == [(2, "invalid JSON (nested too deeply)")]

    index = tmp_path / "idx"
    result = cli("add-texts", corpus, "--index", index, "--model", MODEL, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "added 2 texts" in result.output and ":2: invalid JSON (nested too deeply)" in result.output
    assert stored_items(index, "text") == 2


# -- a query naming a FIFO or a device with an image extension is refused
def test_query_naming_a_fifo_or_device_with_an_image_extension_is_refused(tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    device = tmp_path / "device.jpg"
    device.symlink_to("/dev/null")
    for path, kind in ((fifo, "a FIFO"), (device, "a character device")):
        result = cli("query", path, "--index", tmp_path / "idx")
        assert result.exit_code == 1  # was: run as a text search for the path
        assert f"not a regular file ({kind})" in one_line(result.output)
