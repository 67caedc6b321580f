"""The one JSON-lines reader (ingest/jsonl.py) under real faults, through each of its three callers: a text
corpus (`cgx add-texts`), import metadata (`cgx import --meta`) and an eval caption file (`cgx eval`).

Every fault is one line naming the file (and the line, where one line is at fault), never a RecursionError,
a hang on a FIFO or a read of /dev/zero without end. A text corpus keeps its good lines around a bad one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from crossgap_index.errors import InputFileError
from crossgap_index.evaluation.data import load_dataset
from crossgap_index.ingest.import_sources import open_source
from crossgap_index.ingest.jsonl import MAX_LINE_BYTES, jsonl_objects, read_jsonl
from crossgap_index.ingest.texts import read_text_corpus

DEEP = "[" * 100_000 + "]" * 100_000


def _corpus_lines(n: int) -> list[str]:
    return [json.dumps({"text": f"a caption number {i}", "group": i // 2}) for i in range(n)]


def _read_texts(path: Path) -> object:
    return read_text_corpus(path)


def _read_meta(path: Path) -> object:
    """Import metadata as `cgx import` reads it before writing: one metadata-only pass over every batch."""
    npy = path.with_name("emb.npy")
    np.save(npy, np.ones((4, 8), np.float32))
    return list(open_source(npy, path).batches(2, vectors=False))


def _read_captions(path: Path) -> object:
    return load_dataset(str(path))


CALLERS: dict[str, Callable[[Path], object]] = {"texts": _read_texts, "meta": _read_meta, "eval": _read_captions}


def _write(path: Path, lines: list[bytes | str], end: bytes = b"\n") -> Path:
    path.write_bytes(end.join(x if isinstance(x, bytes) else x.encode() for x in lines) + end)
    return path


def _one_line(exc: BaseException, path: Path) -> str:
    message = str(exc)
    assert "\n" not in message and str(path) in message, message
    return message


@pytest.mark.parametrize("caller", list(CALLERS))
def test_a_100000_deep_line_is_one_line_not_a_recursion_error(tmp_path, caller):
    path = _write(tmp_path / "captions.jsonl", [*_corpus_lines(2), DEEP, *_corpus_lines(2)])
    if caller == "texts":
        corpus = read_text_corpus(path)
        assert corpus.bad_lines == [(3, "invalid JSON (nested too deeply)")] and len(corpus.texts) == 4
        return
    with pytest.raises(InputFileError) as caught:
        CALLERS[caller](path)
    assert _one_line(caught.value, path).endswith("captions.jsonl:3: invalid JSON (nested too deeply)")


@pytest.mark.parametrize("caller", list(CALLERS))
def test_a_truncated_last_line_names_its_line(tmp_path, caller):
    good = _corpus_lines(3)
    path = tmp_path / "captions.jsonl"
    path.write_bytes(("\n".join(good) + "\n" + good[0][: len(good[0]) // 2]).encode())  # cut mid-string
    if caller == "texts":
        corpus = read_text_corpus(path)
        assert corpus.texts == [json.loads(g)["text"] for g in good]
        assert [n for n, _ in corpus.bad_lines] == [4] and corpus.bad_lines[0][1].startswith("invalid JSON (")
        return
    with pytest.raises(InputFileError) as caught:
        CALLERS[caller](path)
    assert "captions.jsonl:4: invalid JSON (Unterminated string" in _one_line(caught.value, path)


@pytest.mark.parametrize("caller", list(CALLERS))
def test_invalid_utf8_is_one_line_naming_the_line(tmp_path, caller):
    path = _write(tmp_path / "captions.jsonl", [*_corpus_lines(2), b'{"text": "caf\xe9", "group": 9}'])
    with pytest.raises(InputFileError) as caught:
        CALLERS[caller](path)
    assert "captions.jsonl:3: not UTF-8 text (invalid continuation byte at byte" in _one_line(caught.value, path)


@pytest.mark.parametrize("caller", list(CALLERS))
def test_a_fifo_is_refused_without_blocking(tmp_path, caller):
    path = tmp_path / "captions.jsonl"
    os.mkfifo(path)  # no writer: a reader that opened it blocking would wait for ever
    with pytest.raises(InputFileError) as caught:
        CALLERS[caller](path)
    message = _one_line(caught.value, path)
    assert "not a regular file (a FIFO)" in message or "expected a folder" in message  # eval: not a dataset


@pytest.mark.parametrize("caller", list(CALLERS))
def test_a_link_to_dev_zero_is_refused_unread(tmp_path, caller):
    path = tmp_path / "captions.jsonl"
    path.symlink_to("/dev/zero")
    with pytest.raises(InputFileError) as caught:
        CALLERS[caller](path)
    message = _one_line(caught.value, path)
    assert "not a regular file (a character device)" in message or "expected a folder" in message


@pytest.mark.parametrize(
    "make,kind", [(os.mkfifo, "a FIFO"), (lambda p: p.symlink_to("/dev/zero"), "a character device")]
)
def test_the_reader_itself_refuses_fifos_and_devices_before_reading(tmp_path, make, kind):
    """The eval caller turns a FIFO away before the reader sees it; the reader refuses it on its own too."""
    path = tmp_path / "odd.jsonl"
    make(path)
    with pytest.raises(InputFileError, match=rf"not a regular file \({kind}\)"):
        list(read_jsonl(path, None))


def test_a_file_over_its_cap_is_refused_before_a_byte_is_read(tmp_path):
    path = _write(tmp_path / "big.jsonl", _corpus_lines(100))
    with pytest.raises(InputFileError) as caught:
        list(jsonl_objects(path, 100, "--max-file-mb"))
    assert "is over the --max-file-mb limit" in _one_line(caught.value, path)
    assert len(list(jsonl_objects(path, path.stat().st_size, "--max-file-mb"))) == 100


def test_an_over_long_line_is_one_problem_and_the_next_line_is_read(tmp_path):
    long = json.dumps({"text": "x" * (2 * MAX_LINE_BYTES)})
    path = _write(tmp_path / "c.jsonl", [*_corpus_lines(1), long, *_corpus_lines(1)])
    lines = list(read_jsonl(path, None))
    assert [(x.lineno, x.problem) for x in lines] == [
        (1, None),
        (2, f"a line longer than {MAX_LINE_BYTES:,} bytes"),
        (3, None),
    ]


def test_one_set_of_messages_for_every_caller(tmp_path):
    """The same faulty line reads the same to each caller that stops at it."""
    path = _write(tmp_path / "captions.jsonl", [*_corpus_lines(2), "[1, 2]"])
    messages = set()
    for caller in ("meta", "eval"):
        with pytest.raises(InputFileError) as caught:
            CALLERS[caller](path)
        messages.add(str(caught.value).split(": ", 1)[-1])
    corpus = read_text_corpus(path)
    assert messages == {"needs a JSON object, not list"} == {problem for _, problem in corpus.bad_lines}
