"""Tune's statistics and gates: the class-level interval against plain arithmetic, a pure-noise folder whose
interval is wide enough not to store (where the per-query one was not), a world with a real winner that is still
stored, and a mode that collapses scores reported with its ties and never chosen (crossgap-small, real tune)."""

from __future__ import annotations

import importlib
import io

import numpy as np
import pytest
from PIL import Image

from crossgap_index.datasets.synthetic import CLASS_NAMES
from crossgap_index.evaluation.data import EvalDataset, ImageSet
from crossgap_index.evaluation.stats import class_interval, paired_interval, t_quantile_975
from crossgap_index.models import Encoder, load_model
from crossgap_index.search.modes import resolve_mode

tune_module = importlib.import_module("crossgap_index.tuning.tune")  # the module (the package exports the function)


def test_class_interval_is_t_over_class_means():
    base = np.array([0.5, 0.4, np.nan, 0.6, 0.3, 0.2, 0.7])
    values = np.array([0.6, 0.5, 0.9, 0.65, 0.35, 0.1, 0.9])
    classes = np.array([0, 0, 1, 1, 2, 2, 2])
    means = []
    for c in (0, 1, 2):
        diffs = [v - b for v, b, k in zip(values, base, classes, strict=True) if k == c and not np.isnan(b)]
        means.append(sum(diffs) / len(diffs))
    mean = sum(means) / 3
    sd = (sum((m - mean) ** 2 for m in means) / 2) ** 0.5
    half = t_quantile_975(2) * sd / 3**0.5
    assert class_interval(values, base, classes) == pytest.approx((mean - half, mean, mean + half))
    low, _, high = class_interval(values, base, np.zeros(7))  # one class: no interval
    assert np.isnan(low) and np.isnan(high)
    # queries that move together by class: the class interval is wider than the per-query one
    rng = np.random.default_rng(0)
    shift = np.repeat(rng.normal(0, 0.1, 8), 10)
    noise_base = rng.uniform(0.2, 0.6, 80)
    noisy = noise_base + shift + rng.normal(0, 0.01, 80)
    low_c, _, high_c = class_interval(noisy, noise_base, np.repeat(np.arange(8), 10))
    low_q, _, high_q = paired_interval(noisy, noise_base)
    assert high_c - low_c > 2 * (high_q - low_q)


NOISE_SEED = 0


def _noise_set(seed: int, classes: int = 8, items: int = 8) -> EvalDataset:
    """Pure noise images in ``classes`` labelled folders: nothing links an image to its label."""
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(classes * items):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)).save(buffer, format="PNG")
        data.append(buffer.getvalue())
    names = CLASS_NAMES[:classes]
    return EvalDataset(f"noise#{seed}", "folder", ImageSet(data, np.repeat(np.arange(classes), items), names), None)


@pytest.fixture(scope="module")
def small():
    return Encoder(load_model("crossgap-small", "cpu"), precision="fp32")


@pytest.fixture
def short_grid(monkeypatch):
    """Tune's grid cut to a few members of each family, so a run takes seconds; the gates are unchanged."""
    monkeypatch.setattr(tune_module, "SPAN_COMPONENTS", (8, 16))
    monkeypatch.setattr(tune_module, "IMAGENET_SPAN_COMPONENTS", ("ev:0.95",))
    monkeypatch.setattr(tune_module, "ISO_FRACTIONS", (None,))


@pytest.mark.slow
def test_noise_is_not_stored_and_its_interval_reaches_zero(small, short_grid):
    result, _ = tune_module.tune(_noise_set(NOISE_SEED), small, inversion=False)
    report = result.record["report"]
    low, high = report["delta_map_ci95"]
    assert not result.stored and low <= 0 <= high, report
    q_low, q_high = report["per_query_ci95"]
    assert high - low > q_high - q_low  # the class is the unit: wider than treating queries as independent


@pytest.mark.slow
def test_a_real_winner_is_still_stored(small, short_grid):
    result, _ = tune_module.tune("synthetic:7:480", small, inversion=False)
    assert result.stored, result.reason
    assert result.record["report"]["delta_map_ci95"][0] > 0


@pytest.mark.slow
def test_a_collapsing_mode_is_reported_and_not_chosen(small, short_grid):
    """Concept over two of the world's names at a sharp temperature maps most items onto two points: its ties
    are counted, it is marked, and the winner is another candidate."""
    collapsing = resolve_mode("concept", projection={"vocabulary": CLASS_NAMES[:2], "tau": 0.001})
    result, _ = tune_module.tune("synthetic:7:480", small, inversion=False, extra_candidates=[("two", collapsing)])
    rows = {row["name"]: row for row in result.candidates}
    assert rows["two"]["collapses"] and rows["two"]["largest_tie_share"] > tune_module.COLLAPSE_SHARE
    assert rows["two"]["tied_share"] > 0.5
    assert result.record["candidate"] != "two" and not rows[result.record["candidate"]]["collapses"]
    assert rows["intra"]["tied_share"] < 0.05 and not rows["intra"]["collapses"]
