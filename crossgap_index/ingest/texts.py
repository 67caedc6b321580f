"""Read a text corpus: ``.txt`` (one document per line) or ``.jsonl`` ({"text": ..., "id": optional}).

Bad lines are reported with their line numbers and the rest are kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from crossgap_index.errors import InputFileError, QueryError
from crossgap_index.ingest.jsonl import JsonLine, read_jsonl
from crossgap_index.ingest.limits import DEFAULT_MAX_FILE_MB, MAX_FILE_MB_SETTING

DEFAULT_MAX_TEXT_BYTES = int(DEFAULT_MAX_FILE_MB * 1e6)  # a text file is capped as an image file is
MAX_LINE_CHARS = 100_000  # one document; the model reads its first tokens only (77 for CLIP)


@dataclass
class TextCorpus:
    texts: list[str] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)


def read_text_corpus(path: str | Path, max_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> TextCorpus:
    """The documents of a corpus file. Read as images are: a regular file only, at most ``max_bytes``
    (``--max-file-mb``); a document longer than MAX_LINE_CHARS, or a JSON line ingest/jsonl.py refuses,
    is one bad line."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in (".txt", ".jsonl"):
        raise InputFileError(f"{path}: expected a .txt (one document per line) or .jsonl file")
    corpus = TextCorpus()
    if path.suffix.lower() == ".jsonl":
        lines = ((line.lineno, line) for line in read_jsonl(path, max_bytes, MAX_FILE_MB_SETTING))
    else:
        lines = enumerate(iter_utf8_lines(path, max_bytes=max_bytes), 1)
    for lineno, line in lines:
        try:
            text, ext_id = _document(line)
        except ValueError as exc:
            corpus.bad_lines.append((lineno, str(exc)))
            continue
        if text:
            corpus.texts.append(text)
            corpus.ids.append(ext_id)
    return corpus


def _document(line: str | JsonLine) -> tuple[str, str | None]:
    """(text, external id) of a corpus line ("" for a blank .txt line); ValueError says why a line is bad."""
    if isinstance(line, JsonLine) and line.problem is not None:
        raise ValueError(line.problem)
    text = line if isinstance(line, str) else line.value.get("text")
    if isinstance(text, str) and len(text) > MAX_LINE_CHARS:
        raise ValueError(f"longer than {MAX_LINE_CHARS} characters ({len(text)})")
    return (text.strip(), None) if isinstance(line, str) else _jsonl_document(line.value)


def read_utf8_lines(
    path: Path, what: str = "", max_bytes: int = DEFAULT_MAX_TEXT_BYTES, setting: str = MAX_FILE_MB_SETTING
) -> list[str]:
    """The lines of a UTF-8 text file (see ``iter_utf8_lines``)."""
    return list(iter_utf8_lines(path, what, max_bytes, setting))


def iter_utf8_lines(
    path: Path, what: str = "", max_bytes: int = DEFAULT_MAX_TEXT_BYTES, setting: str = MAX_FILE_MB_SETTING
) -> Iterator[str]:
    """The lines of a UTF-8 text file, one at a time. The file is read with the checks images get
    (ingest/decode.read_file): a regular file (a FIFO, device, or a link to /dev/zero is refused before
    a byte is read) of at most ``max_bytes``, so memory is bounded by the cap, not by the input.
    Anything else is a one-line InputFileError naming ``what`` and the ``setting`` that caps it."""
    from crossgap_index.ingest.decode import SkippedFile, read_file

    try:
        data = read_file(path, max_bytes, setting).data
    except SkippedFile as exc:
        raise InputFileError(f"cannot read {what}{path}: {exc}") from exc
    except OSError as exc:
        raise InputFileError(f"cannot read {what}{path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    del data
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        yield text[start:end].removesuffix("\r")
        start = end + 1


def unicode_problem(text: object) -> str | None:
    """Why ``text`` cannot be stored as UTF-8 (JSON allows lone surrogates such as "\\ud800"), or None."""
    if not isinstance(text, str):
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds a lone surrogate ({text[exc.start]!a}), which is not valid Unicode text"
    return None


def check_query_text(text: str) -> str:
    """``text`` if it can be searched for: a non-blank string of valid Unicode; else a one-line QueryError."""
    if not isinstance(text, str):
        raise QueryError(f"a text query must be a string, not {type(text).__name__}")
    if not text.strip():
        raise QueryError("empty text query: give some words to search for")
    problem = unicode_problem(text)
    if problem:
        raise QueryError(f"the query text {problem}")
    return text


def _jsonl_document(record: dict) -> tuple[str, str | None]:
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError('missing or empty "text" string')
    ext_id = record.get("id")
    if ext_id is not None and not isinstance(ext_id, (str, int)):
        raise ValueError('"id" must be a string or an integer')
    for name, value in (("text", text), ("id", ext_id)):
        problem = unicode_problem(value)
        if problem:
            raise ValueError(f'"{name}" {problem}')
    return text.strip(), None if ext_id is None else str(ext_id)
