"""Answers that do not depend on what else happened: a query's hits are the same alone or in any batch in
bf16 (where a row's rounding would depend on its batch's shape but for the lanes), the inversion cache
holds the same whichever batch filled it, and a reader that has not refreshed still returns k live hits
after another process removes items."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.inversion import InversionConfig
from tests.support.cli import REPO
from tests.support.serve import copy_index

# bf16 asked for explicitly: the rounding under test (auto inverts this small model in fp32 on a CPU).
FEW_STEPS = InversionConfig(oti_steps=4, ovi_steps=4, precision="bf16")


@pytest.fixture(scope="module")
def built(serve_template, tmp_path_factory):
    return copy_index(serve_template, tmp_path_factory.mktemp("consistency"))


@pytest.fixture(scope="module")
def index(built):
    with CrossGapIndex.open(built[0], device="cpu") as cgx:
        yield cgx


@pytest.fixture(scope="module")
def photos(built) -> list[Path]:
    return sorted(built[1].rglob("*.png"))


TEXTS = ["a red circle", "a blue star", "a small green square", "a pink heart", "a yellow cross"]


def _answers(hit_lists) -> list[list[tuple[int, float]]]:
    return [[(h.id, round(h.score, 6)) for h in hits] for hits in hit_lists]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["images", "texts"])
def test_a_query_answers_the_same_alone_and_in_any_batch(index, photos, target):
    queries = [{"image": p} for p in photos[:11]] if target == "images" else [{"text": t} for t in TEXTS]
    common = {"target": target, "k": 5, "mode": "cross", "inversion": FEW_STEPS, "use_cache": False}
    solo = [index.search_batch([q], **common)[0] for q in queries]
    together = index.search_batch(queries, **common)
    assert _answers(together) == _answers(solo)
    reordered = index.search_batch(queries[::-1][:3], **common)  # other neighbours, another batch size
    assert _answers(reordered) == _answers(solo[::-1][:3])


@pytest.mark.slow
def test_the_cache_holds_the_same_whichever_batch_filled_it(built, photos, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(built[0], copy)
    queries = [{"image": p} for p in photos[20:29]]
    common = {"k": 5, "mode": "cross", "inversion": FEW_STEPS}
    with CrossGapIndex.open(copy, device="cpu") as cgx:
        solo = [cgx.search_batch([q], **common, use_cache=False)[0] for q in queries]
        timings: dict = {}
        cgx.search_batch(queries, **common, timings=timings)  # the batch runs first and fills cache.sqlite
        assert timings["inversion_batch_size"] == len(queries)
        cached = [cgx.search_batch([q], **common, timings=(t := {}))[0] for q in queries]
        assert t["inversion_batch_size"] == 0  # answered from the cache the batch wrote
    assert _answers(cached) == _answers(solo)


@pytest.mark.slow
def test_a_reader_that_has_not_refreshed_returns_k_live_hits(built, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(built[0], copy)
    with CrossGapIndex.open(copy, device="cpu") as reader:
        before = {t: reader.search(text="a red circle", target=t, k=10) for t in ("images", "texts")}
        removed = [h.id for hits in before.values() for h in hits[:4]]  # each list's best four
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        args = [arg for i in removed for arg in ("--id", str(i))]
        done = subprocess.run(
            [sys.executable, "-m", "crossgap_index", "remove", *args, "--index", str(copy)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        for target, old in before.items():
            hits = reader.search(text="a red circle", target=target, k=10)  # this process has not refreshed
            ids = [h.id for h in hits]
            assert len(hits) == 10, (target, ids)
            assert not set(ids) & set(removed)
            assert ids[:6] == [h.id for h in old[4:]]  # the survivors in their order, then the next ones
            assert len(set(ids)) == 10
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
