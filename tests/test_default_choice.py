"""The untuned default: the rule that picks it from development measurements, and what each bundled model ships
(a label-free mode that resolves, with the evidence that chose it)."""

from __future__ import annotations

import pytest

from benchmarks.bench_default_choice import FLOOR, choose, cost_rank
from crossgap_index.datasets.fashion_mnist import CLASS_NAMES as FASHION_NAMES
from crossgap_index.datasets.synthetic import CLASS_NAMES as SYNTHETIC_NAMES
from crossgap_index.evaluation.protocol import uses_labels
from crossgap_index.search.modes import default_cross, describe_cross


def test_the_rule_guards_the_worst_cell_then_takes_the_mean_then_the_cheaper():
    dev = {
        "intra": {"a": 0.0, "b": 0.0},
        "big-but-loses": {"a": 0.08, "b": FLOOR - 0.001},  # best mean, one cell below the floor
        "nnn": {"a": 0.0201, "b": 0.0200},
        "span-imagenet+nnn": {"a": 0.0202, "b": 0.0202},  # within CLOSE of nnn's mean, one more step
        "span-imagenet": {"a": 0.01, "b": 0.01},
    }
    chosen, rule = choose(dev)
    assert chosen == "nnn" and "cheapest: nnn" in rule
    assert cost_rank("nnn") < cost_rank("span-imagenet+nnn") and cost_rank("intra") == 0
    only_intra, _ = choose({"intra": {"a": 0.0}, "bad": {"a": -0.02}})
    assert only_intra == "intra"


@pytest.mark.parametrize(("model", "names"), [("crossgap-small", SYNTHETIC_NAMES), ("crossgap-fashion", FASHION_NAMES)])
def test_each_bundled_default_is_label_free_and_says_where_it_came_from(model, names):
    default = default_cross(model)
    mode = default.mode()
    assert not uses_labels(mode, names)
    assert default.source == "bundled" and "bench_default_choice" in default.evidence
    described = describe_cross(model, None)
    assert described["source"] == "bundled" and described["summary"] == mode.describe()
