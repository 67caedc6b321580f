"""The library as a host process embeds it: one SearchOptions value, mixed batches, a cold start from threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossgap_index import CrossGapIndex, SearchOptions
from crossgap_index.errors import QueryError
from crossgap_index.inversion import InversionConfig
from tests.support.cli import REPO
from tests.support.photos import MODEL, write_photo

FAST = InversionConfig(oti_steps=2, ovi_steps=2)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("library")
    for i in range(8):
        write_photo(root / "photos" / f"p{i}.png", seed=40 + i)
    with CrossGapIndex.create(root / "idx", model=MODEL, device="cpu") as index:
        index.index_folders([root / "photos"])
        index.add_texts(["a red circle", "a blue square", "a green star"])
    return root


def test_options_value_equals_keywords(built):
    with CrossGapIndex.open(built / "idx", device="cpu") as index:
        query = built / "photos" / "p1.png"
        options = SearchOptions(k=4, mode="fused", merge="score", alpha=0.3, inversion=FAST)
        by_value = index.search(image=query, options=options)
        by_keywords = index.search(image=query, k=4, mode="fused", merge="score", alpha=0.3, inversion=FAST)
        overridden = index.search(image=query, options=options, k=2)
    assert [h.id for h in by_value] == [h.id for h in by_keywords] and len(by_value) == 4
    assert [h.id for h in overridden] == [h.id for h in by_value[:2]]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"k": 0}, "k must be"),
        ({"k": True}, "k must be"),
        ({"target": "videos"}, "unknown target"),
        ({"merge": "max"}, "unknown merge"),
        ({"alpha": 1.5}, "alpha"),
        ({"depth": 0}, "depth"),
    ],
)
def test_options_refuse_bad_settings_in_one_line(settings, message):
    with pytest.raises(QueryError, match=message):
        SearchOptions(**settings)


def test_unknown_search_keyword_is_a_type_error(built):
    with CrossGapIndex.open(built / "idx", device="cpu") as index, pytest.raises(TypeError, match="colour"):
        index.search(text="a red circle", colour="red")


def test_readme_mixed_batch_runs_and_each_query_equals_its_solo_search(built):
    """README's example: an image and a text query in one batch with mode='cross'. The text query against
    images is already inter-modal: it is served as it is instead of failing the batch."""
    with CrossGapIndex.open(built / "idx", device="cpu") as index:
        image = str(built / "photos" / "p2.png")
        batch = index.search_batch([{"image": image}, {"text": "a red bicycle"}], mode="cross", inversion=FAST)
        solo_image = index.search(image=image, mode="cross", inversion=FAST)
        plain_text = index.search(text="a red bicycle", mode="intra")
        served = index.describe_mode("text", mode="cross")
    assert [h.id for h in batch[0]] == [h.id for h in solo_image]
    assert [h.id for h in batch[1]] == [h.id for h in plain_text]
    assert served["name"] == "intra"


def test_a_raw_vector_without_modality_cannot_be_inverted(built):
    with CrossGapIndex.open(built / "idx", device="cpu") as index:
        vector = index.embed_query(image=built / "photos" / "p3.png").feature
        with pytest.raises(QueryError, match="name its modality"):
            index.search(vector=vector, mode="cross", inversion=FAST)
        named = {"vector": vector, "modality": "image"}
        batch = index.search_batch([named, {"text": "a red circle"}], mode="cross", inversion=FAST)
        solo = index.search_batch([named], mode="cross", inversion=FAST)
        assert [h.id for h in batch[0]] == [h.id for h in solo[0]] and len(solo[0]) == 8


COLD_START = r"""
import io, json, logging, sys, threading, warnings
import crossgap_index.models as models
import crossgap_index.models.factory as factory
from crossgap_index import CrossGapIndex

loads = []
real = factory.load_model
def counting(*args, **kwargs):
    loads.append(threading.get_ident())
    return real(*args, **kwargs)
models.load_model = counting

logging.getLogger().setLevel(logging.INFO)  # the host's own logging set-up
host_stdout, filters = sys.stdout, list(warnings.filters)
index = CrossGapIndex.open(sys.argv[1], device="cpu")
barrier, errors, found = threading.Barrier(8), [], []

def search(i):
    barrier.wait()
    try:
        query = {"text": f"shape number {i}"} if i % 2 else {"image": sys.argv[2]}
        found.append(len(index.search(**query, k=3)))
    except BaseException as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=search, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print("host output still arrives")
report = {
    "loads": len(loads), "errors": errors, "found": found,
    "stdout_is_host": sys.stdout is host_stdout, "root_level": logging.getLogger().level,
    "filters_unchanged": list(warnings.filters) == filters,
}
print(json.dumps(report), file=sys.stderr)
"""


@pytest.mark.slow  # over 3 s (a CLI eval of every mode or a fresh interpreter): the full suite runs it
def test_cold_start_from_eight_threads_loads_once_and_leaves_the_host_alone(built):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", COLD_START, str(built / "idx"), str(built / "photos" / "p0.png")],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert "host output still arrives" in proc.stdout
    assert report["errors"] == [] and report["found"] == [3] * 8
    assert report["loads"] == 1
    assert report["stdout_is_host"] and report["root_level"] == 20 and report["filters_unchanged"]
