"""`cgx eval` inverts each (content, features) once: a caption repeated with the same features takes the first
run's vectors, and a gallery caption that is also a query the cache's. Pinned to the straightforward path (every
row inverted where it is met): the same vectors, and the same metrics for every mode."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import crossgap_index.inversion as inversion
from crossgap_index.evaluation.features import FeatureSet, MemoryCache
from crossgap_index.evaluation.measure import InversionCosts, query_cost_ms
from crossgap_index.evaluation.protocol import TEXTS, evaluate
from crossgap_index.evaluation.runner import RunContext, Transformers, distinct_rows
from crossgap_index.evaluation.settings import EvalSettings
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.inverter import DEFAULT_STEPS
from crossgap_index.models import Encoder, load_model
from crossgap_index.search.modes import resolve_mode
from crossgap_index.search.run import Queries
from tests.support.photos import MODEL

FEW_STEPS = InversionConfig(oti_steps=2, ovi_steps=2)
DATASET = "synthetic:3:32"  # two repeated gallery captions, one gallery caption that is also a query


def _queries(rows: np.ndarray, digests: list[str]) -> Queries:
    return Queries(rows.astype(np.float32), "text", tuple(digests))


def test_distinct_rows_are_the_last_row_of_each_content_and_features_leaving_out_known():
    rows = np.array([[0, 1], [2, 3], [0, 1], [4, 5], [2, 3], [6, 7], [9, 9]], np.float32)
    queries = _queries(rows, ["a", "b", "a", "c", "b", "d", "a"])  # the last "a" has other features
    last = distinct_rows(queries)
    assert list(last.values()) == [2, 3, 4, 5, 6]
    assert [digest for digest, _ in last] == ["a", "c", "b", "d", "a"]
    assert list(distinct_rows(queries, frozenset({"b", "d"})).values()) == [2, 3, 6]
    assert distinct_rows(queries, frozenset("abcd")) == {}


@pytest.fixture(scope="module")
def tiny():
    return load_model(MODEL, "cpu")


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_inverting_each_content_once_gives_every_row_its_own_inversion(tiny, precision):
    """Repeated rows and rows the cache already holds get exactly what inverting every row gives (bf16 lanes:
    bit for bit; fp32: within its batch-to-batch rounding)."""
    config = dataclasses.replace(FEW_STEPS, precision=precision, batch_size=4)
    encoder = Encoder(tiny, precision="fp32")
    texts = ["a red circle", "a blue star", "a green square", "a tiny heart", "a purple cross"]
    features = encoder.encode_texts(texts)
    digests = [f"d{i}" for i in range(len(texts))]
    order = [0, 1, 0, 2, 3, 1, 4, 4, 2]  # repeats, as a synthetic gallery has
    rows, names = features[order], [digests[i] for i in order]
    rows[-1] = features[3]  # d2 once more with other features (its caption embedded in another batch)
    queries = _queries(rows, names)
    settings = EvalSettings(model=MODEL, device="cpu", config=config)
    ctx = RunContext(encoder, config.resolved(encoder.loaded), (), settings, lambda *a: None, {})
    leg = resolve_mode("cross", inversion=config).legs[0]
    own, cache = Transformers(encoder), MemoryCache()
    first = own.invert(cache, leg, _queries(features[:2], digests[:2]), "first", ctx)
    with pytest.MonkeyPatch.context() as patch:
        counted = _count_ovi_rows(patch)
        fast = own.invert(cache, leg, queries, "rest", ctx, known=frozenset(digests[:2]))
    assert sum(counted) == 4  # d2 twice (two feature rows), d3 and d4 once: d0 and d1 were known
    oracle_cache = MemoryCache()  # the straightforward path: every row through the engine, in order
    own.make(oracle_cache).search_vectors(leg, _queries(features[:2], digests[:2]), "text")
    oracle = own.make(oracle_cache).search_vectors(leg, queries, "text")
    assert np.array_equal(fast[[0, 1]], first) and np.array_equal(fast[[2, 5]], first)
    assert oracle_cache.items().keys() == cache.items().keys()
    if precision == "bf16":
        assert np.array_equal(fast, oracle)
        assert all(np.array_equal(v, oracle_cache.items()[k]) for k, v in cache.items().items())
    else:
        assert np.abs(fast - oracle).max() <= 1e-5


def _invert_every_row(self, cache, leg, queries, stage, ctx, known=frozenset()):
    """The straightforward inversion (the oracle): every row through the engine with the task's cache."""
    direction = "oti" if queries.modality == "image" else "ovi"
    stepping = ctx.stepping(stage, len(queries.features), leg, direction)
    return self.make(cache, progress=stepping).search_vectors(leg, queries, queries.modality)


def _count_ovi_rows(patch: pytest.MonkeyPatch) -> list[int]:
    """The rows of every OVI run while ``patch`` holds (each call's count appended to the list returned)."""
    rows: list[int] = []
    real_ovi = inversion.ovi

    def counting_ovi(loaded, targets, *args, **kwargs):
        rows.append(len(targets))
        return real_ovi(loaded, targets, *args, **kwargs)

    patch.setattr(inversion, "ovi", counting_ovi)
    return rows


def _text_eval(patch: pytest.MonkeyPatch, precision: str):
    patch.setitem(DEFAULT_STEPS, "ovi", 4)  # the text inverter's training: plumbing, not quality
    rows = _count_ovi_rows(patch)
    config = dataclasses.replace(FEW_STEPS, precision=precision)
    result = evaluate(DATASET, MODEL, device="cpu", config=config, tasks=["texts"], precision=precision)
    return result.tasks[TEXTS], sum(rows)


@pytest.mark.slow  # two text evaluations of every mode
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_shared_inversions_measure_what_the_straightforward_path_measures(precision):
    with pytest.MonkeyPatch.context() as patch:
        fast, fast_rows = _text_eval(patch, precision)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Transformers, "invert", _invert_every_row)
        oracle, oracle_rows = _text_eval(patch, precision)
    assert list(fast.modes) == list(oracle.modes) and "warm" in fast.modes
    for name, mode in oracle.modes.items():
        assert fast.modes[name].metrics == mode.metrics, name
        assert fast.modes[name].map_vs_intra == mode.map_vs_intra, name
    assert fast_rows < oracle_rows  # the repeated gallery caption is inverted once


@pytest.mark.parametrize("shared", [False, True])
def test_modes_sharing_an_inversion_time_it_once_per_cost_round(tiny, shared):
    """cross and its fusions run the same OVI: with ``InversionCosts`` each round's rows are inverted once for all
    of them (the warm-up's row too), without it once per mode; either way every mode gets a cost."""
    encoder = Encoder(tiny, precision="fp32")
    texts = [f"a {colour} {shape}" for colour in ("red", "blue", "green") for shape in ("star", "heart", "cross")]
    features = encoder.encode_texts(texts)
    labels = np.arange(len(texts)) % 3
    feature_set = FeatureSet(_queries(features, texts), labels, features, labels, False)
    own = Transformers(encoder)
    modes = [resolve_mode(name, inversion=FEW_STEPS) for name in ("cross", "fused", "intra")]
    sharing = InversionCosts(own.make) if shared else None
    with pytest.MonkeyPatch.context() as patch:
        rows = _count_ovi_rows(patch)
        costs = [
            query_cost_ms(mode, feature_set, own.make, "text", batch=batch, shared=sharing)
            for mode in modes
            for batch in (1, 4)
        ]
    assert all(np.isfinite(c) and c > 0 for c in costs)
    per_mode = 1 + 3 + 1 + 4  # warm-up and 3 rounds of one query; warm-up and a round of 4
    assert sum(rows) == (per_mode - 1 if shared else 2 * per_mode)  # shared: row 0's warm-up once for both
