"""What a cold `cgx query` loads: results printed as JSON or paths need no rich, a search never takes the writer
lock (no filelock), the write path and the other commands never load, and the labelled-data readers load only
with --vocab. The image path's own check (ONNX, no torch) is in test_onnx_towers.py; benchmarks/bench_cold_query.py
measures what these imports cost."""

from __future__ import annotations

import json

import pytest

from crossgap_index import CrossGapIndex
from tests.support.photos import MODEL
from tests.test_cli_startup import cgx_modules

NOT_FOR_A_QUERY = (
    *("rich", "filelock", "torch", "open_clip", "platformdirs"),
    *("crossgap_index.evaluation", "crossgap_index.server.app", "crossgap_index.engines"),
    *("crossgap_index.cli.build_command", "crossgap_index.cli.eval_command"),  # main builds the query command alone
)


@pytest.fixture(scope="module")
def text_index(tmp_path_factory):
    path = tmp_path_factory.mktemp("startup") / "idx"
    with CrossGapIndex.create(path, model=MODEL, device="cpu") as index:
        index.add_texts(["a red bicycle", "a blue car", "a green tree"])
    return path


def loaded(modules: list[str], name: str) -> bool:
    return any(module == name or module.startswith(name + ".") for module in modules)


@pytest.mark.parametrize("output", [["--json"], ["--paths-only"], ["--json", "--quiet"]])
def test_a_query_printing_json_or_paths_loads_no_rich(text_index, output):
    report, proc = cgx_modules("query", "--item", "1", "--target", "texts", "--index", str(text_index), *output)
    assert report["exit"] == 0, proc.stderr
    texts = [hit["text"] for hit in json.loads(proc.stdout)["hits"]] if "--json" in output else proc.stdout.split("\n")
    assert set(texts) - {""} == {"a blue car", "a green tree"}  # more like item 1: the others
    assert [name for name in NOT_FOR_A_QUERY if loaded(report["modules"], name)] == []


def test_the_table_still_renders_with_rich(text_index):
    report, proc = cgx_modules("query", "--item", "1", "--target", "texts", "--index", str(text_index), "-k", "2")
    assert report["exit"] == 0, proc.stderr
    assert "a blue car" in proc.stdout and "rank" in proc.stdout
    assert loaded(report["modules"], "rich")


@pytest.mark.slow
def test_vocab_loads_its_reader_only_when_given(text_index, tmp_path):
    vocab = tmp_path / "words.txt"
    vocab.write_text("bicycle\ncar\ntree\n")
    args = ("query", "--item", "1", "--target", "texts", "--index", str(text_index), "--json")
    report, proc = cgx_modules(*args, "--mode", "concept", "--vocab", str(vocab))
    assert report["exit"] == 0, proc.stderr
    assert loaded(report["modules"], "crossgap_index.evaluation")
