"""Reading text corpora: good lines kept, bad lines reported with their numbers."""

import pytest

from crossgap_index.errors import InputFileError
from crossgap_index.ingest.texts import read_text_corpus


def test_jsonl_bad_lines_are_reported_and_the_rest_kept(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"text": "a red bicycle", "id": "b1"}\n'
        "not json\n"
        '{"id": 3}\n'
        "\n"
        '["a list"]\n'
        '{"text": "a blue car", "id": 7}\n'
        '{"text": "   "}\n'
        '{"text": "x", "id": [1]}\n'
    )
    corpus = read_text_corpus(path)
    assert corpus.texts == ["a red bicycle", "a blue car"]
    assert corpus.ids == ["b1", "7"]
    assert [n for n, _ in corpus.bad_lines] == [2, 3, 5, 7, 8]
    assert "invalid JSON" in corpus.bad_lines[0][1]


def test_txt_is_one_document_per_line(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first doc\n\n  second doc  \n")
    corpus = read_text_corpus(path)
    assert corpus.texts == ["first doc", "second doc"] and corpus.ids == [None, None]


@pytest.mark.parametrize("name,content", [("c.csv", b"a,b"), ("c.txt", b"\xff\xfe\x00bad")])
def test_unusable_files_are_one_line_errors(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputFileError):
        read_text_corpus(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="cannot read"):
        read_text_corpus(tmp_path / "missing.jsonl")
