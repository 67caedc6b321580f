"""Query arithmetic (search/arithmetic.py) and `cgx query --item` / filters in the CLI: the grammar, its errors, the
weighted sum it searches, and the same answers from the library and the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.errors import QueryError
from crossgap_index.search.arithmetic import is_expression, parse
from tests.support.photos import MODEL, make_photo_folder

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """An index of conftest's six photos (folders a/ and b/) plus three texts."""
    root = tmp_path_factory.mktemp("arith")
    photos = make_photo_folder(root)
    with CrossGapIndex.create(root / "idx", model=MODEL, device="cpu") as cgx:
        cgx.index_folders([photos])
        cgx.add_texts(["a red car", "a night street", "a green tree"], ids=["c", "n", "t"])
    return root / "idx", photos


def test_the_grammar():
    assert parse('2:"red car" + night - 0.5:"a, b"') == [
        (2.0, {"text": "red car"}),
        (1.0, {"text": "night"}),
        (-0.5, {"text": "a, b"}),
    ]
    assert parse("- night + item:42") == [(-1.0, {"text": "night"}), (1.0, {"item": 42})]
    assert parse("t-shirt + blue-green sky") == [(1.0, {"text": "t-shirt"}), (1.0, {"text": "blue-green sky"})]
    assert parse("10:30 meeting") == [(1.0, {"text": "10:30 meeting"})]  # a digit after the colon: not a weight
    assert parse("x.jpg + y", kind_of=lambda atom: "image" if atom.endswith(".jpg") else "text") == [
        (1.0, {"image": "x.jpg"}),
        (1.0, {"text": "y"}),
    ]
    assert not is_expression("a photo of a dog") and not is_expression("t-shirt") and not is_expression("./p.jpg")
    assert is_expression("cat - dog") and is_expression("2:cat") and is_expression("item:3") and is_expression('"x"')


@pytest.mark.parametrize(
    "text, message",
    [
        ('"red car + night', "quote at position 1 is never closed"),
        ("cat +", "a term is missing"),
        ("cat + + dog", "a term is missing"),
        ("0:cat", "weight 0 must be a positive number"),
        ("item:x", "'item:x' is not an item id"),
        ('"a" "b"', "expected ' + ' or ' - ' at position 5"),
        ('""', "an empty term"),
        (" + ".join(["a"] * 40), "more than 32 terms"),
    ],
)
def test_bad_expressions_are_one_line_errors(text, message):
    with pytest.raises(QueryError, match=re.escape(message)):
        parse(text)


def test_without_a_kind_rule_every_bare_term_is_text():
    assert parse("photo.jpg + item:2") == [(1.0, {"text": "photo.jpg"}), (1.0, {"item": 2})]


@pytest.mark.slow
def test_the_expression_searches_the_renormalised_weighted_sum(built):
    index, photos = built
    with CrossGapIndex.open(index, readonly=True) as cgx:
        image = str(photos / "a" / "img1.png")
        red, night, photo = (
            cgx.embed_query(text="red car").feature,
            cgx.embed_query(text="night").feature,
            cgx.embed_query(image=image).feature,
        )
        total = 2 * red + photo - night
        want = cgx.search(vector=total / np.linalg.norm(total), k=6)
        got = cgx.search(expression=f'2:"red car" + {image} - night', k=6)
        assert [h.id for h in got] == [h.id for h in want]
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
        # one modality: the sum is a text query, so a turning mode inverts it (cross on texts is OVI)
        texts_only = cgx.search_batch([{"terms": [(2, {"text": "red car"}), (-1, {"text": "night"})]}], k=2)
        assert len(texts_only[0]) == 2
        with pytest.raises(QueryError, match="a sum of texts and images has none"):
            cgx.search(expression=f'"red car" + {image}', target="texts", mode="cross", k=2)
        with pytest.raises(QueryError, match="cancel out"):
            cgx.search(expression="cat - cat", k=2)


@pytest.mark.slow
def test_item_terms_are_left_out_of_their_own_hits(built):
    index, _ = built
    with CrossGapIndex.open(index, readonly=True) as cgx:
        hits = cgx.search(expression="item:1 + item:2", k=6)
        assert {h.id for h in hits}.isdisjoint({1, 2}) and len(hits) == 4  # six images, two are the query
        kept = cgx.search(expression="item:1 + item:2", k=6, exclude_query=False)
        assert {1, 2} <= {h.id for h in kept}


@pytest.mark.slow
def test_cli_item_expression_and_filters(built):
    index, photos = built
    more = cli("query", "--item", 1, "--index", index, "--json", "-k", 3)
    assert more.exit_code == 0, more.output
    doc = json.loads(more.stdout)
    assert doc["query"] == {"kind": "item", "value": 1} and 1 not in [h["id"] for h in doc["hits"]]
    table = cli("query", "--item", 1, "--index", index, "-k", 3)
    assert table.exit_code == 0 and "item query: 1" in table.stdout, table.output
    with CrossGapIndex.open(index, readonly=True) as cgx:
        assert [h["id"] for h in doc["hits"]] == [h.id for h in cgx.search(item=1, k=3)]
        expected = [h.id for h in cgx.search(expression="2:night - item:3", k=2, target="texts")]
    arith = cli("query", "2:night - item:3", "--index", index, "--json", "-k", 2, "--target", "texts")
    assert arith.exit_code == 0, arith.output
    assert [h["id"] for h in json.loads(arith.stdout)["hits"]] == expected
    under = cli("query", "--item", 1, "--index", index, "--json", "--under", photos / "a", "--keep-query-item")
    paths = [h["path"] for h in json.loads(under.stdout)["hits"]]
    assert len(paths) == 5 and all(p.startswith(str(photos / "a") + "/") for p in paths)
    globbed = cli("query", "red", "--index", index, "--paths-only", "--glob", "*.JPG")
    assert globbed.stdout.split() == [str(photos / "b" / "IMG5.JPG")]
    assert "only 1 images pass the filters" in globbed.stderr
    only = cli("query", "red", "--index", index, "--json", "--only-id", 2, "--only-id", 4, "--exclude-id", 4)
    assert [h["id"] for h in json.loads(only.stdout)["hits"]] == [2]
    texts = cli("query", "red", "--index", index, "--json", "--target", "texts", "--external-id", "n")
    assert [h["external_id"] for h in json.loads(texts.stdout)["hits"]] == ["n"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["cat +"], "query expression: a term is missing at position 6"),
        ([], "give a QUERY or --item ID"),
        (["cat", "--item", "1"], "give a QUERY or --item ID"),
        (["--item", "999"], "no item with id 999"),
        (["cat", "--glob", "*.jpg", "--target", "texts"], "stored texts have no path"),
    ],
)
def test_cli_mistakes_are_one_line(built, args, message):
    index, _ = built
    result = cli("query", *args, "--index", index)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
