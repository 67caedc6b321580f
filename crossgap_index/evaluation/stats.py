"""Paired statistics of one mode against intra on the same queries: what ``cgx eval`` prints and ``cgx tune``
stores by.

Two intervals, for two questions:

* ``paired_interval``: a t-interval over queries. Queries share one gallery (and in leave-one-out each query is
  in every other query's gallery), so they are not independent samples; ``cgx eval`` prints it as a yardstick
  for noise per query, not as a test.
* ``class_interval``: the interval ``cgx tune`` decides by. The unit of independence is the class, not the
  query: the queries of one class share their relevant set, and a mode that happens to pull one class's items
  together (or apart) moves every query of that class at once. On six folders of pure noise a per-query interval
  stored a mode at +10.3 mAP, interval [+4.5, +16.1]. So each class's queries are averaged first and the
  interval is Student's t over the per-class mean differences with (classes - 1) degrees of freedom: the
  cluster-robust interval that stays honest with the 8 to 20 classes tune sees, where a percentile bootstrap
  over so few clusters is known to be too narrow. Alternatives considered: splitting each gallery into
  disjoint query and gallery halves removes the leave-one-out overlap but not the shared relevant set within a
  class, and halves the data. Measured: benchmarks/bench_tune_noise.py (false-store rate on noise folders).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedComparison:
    """One mode against a base (intra) on the same queries: ``mean`` the mean per-query difference, ``se`` its
    standard error (None with one query), ``low`` / ``high`` its 95% interval (NaN when too few units)."""

    mean: float
    se: float | None
    low: float
    high: float

    @property
    def interval(self) -> tuple[float, float] | None:
        """(low, high), or None where there is no interval."""
        return None if np.isnan(self.low) else (self.low, self.high)


def per_query_comparison(values: np.ndarray, base: np.ndarray) -> PairedComparison:
    """``values - base`` over queries: mean and standard error (``paired_difference``) with the per-query
    t-interval (``paired_interval``), what ``cgx eval`` prints beside each mode."""
    mean, se = paired_difference(values, base)
    low, _, high = paired_interval(values, base)
    return PairedComparison(mean, se, low, high)


def per_class_comparison(values: np.ndarray, base: np.ndarray, classes: np.ndarray) -> PairedComparison:
    """``values - base`` as ``cgx tune`` decides by it: the mean per-query difference, with the interval over
    classes (``class_interval``) and the standard error that interval implies (its half-width over t)."""
    mean, _ = paired_difference(values, base)
    low, centre, high = class_interval(values, base, classes)
    units = len(np.unique(classes))
    se = (high - centre) / t_quantile_975(units - 1) if units > 1 else None
    return PairedComparison(mean, se, low, high)


def paired_difference(values: np.ndarray, base: np.ndarray) -> tuple[float, float | None]:
    """Mean of per-query ``values - base`` over the queries that count (not NaN) and its standard error
    (None with a single query). Queries share one gallery, so read it as a yardstick, not a test."""
    valid = ~np.isnan(base)
    diff = values[valid] - base[valid]
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None
    return float(diff.mean()), se


def paired_interval(values: np.ndarray, base: np.ndarray) -> tuple[float, float, float]:
    """(low, mean, high): the mean per-query difference ``values - base`` with its paired 95% t-interval over
    the queries that count (an interval of NaN with fewer than 2). Queries share one gallery, so the
    interval is a yardstick for noise, not an exact test: ``class_interval`` is the test."""
    valid = ~np.isnan(base)
    return _t_interval(values[valid] - base[valid])


def class_interval(values: np.ndarray, base: np.ndarray, classes: np.ndarray) -> tuple[float, float, float]:
    """(low, mean, high): the per-query mean difference ``values - base`` and a 95% interval that treats each
    class (``classes``, one label per query) as one independent unit: Student's t over the per-class means of
    the differences, (classes - 1) degrees of freedom (see the module docstring for why). The centre is the
    mean over classes, each class weighing the same. NaN bounds with fewer than 2 classes."""
    valid = ~np.isnan(base)
    diff = values[valid] - base[valid]
    labels = np.asarray(classes)[valid]
    if not len(diff):
        return float("nan"), float("nan"), float("nan")
    _, inverse = np.unique(labels, return_inverse=True)
    means = np.bincount(inverse, weights=diff) / np.bincount(inverse)
    return _t_interval(means)


def _t_interval(samples: np.ndarray) -> tuple[float, float, float]:
    if len(samples) < 2:
        mean = float(samples.mean()) if len(samples) else float("nan")
        return float("nan"), mean, float("nan")
    half = t_quantile_975(len(samples) - 1) * samples.std(ddof=1) / np.sqrt(len(samples))
    mean = float(samples.mean())
    return mean - float(half), mean, mean + float(half)


def t_quantile_975(dof: int) -> float:
    """Student's t 0.975 quantile: tabled for 1-4 degrees of freedom, else the Cornish-Fisher expansion around
    the normal quantile (within 3e-3 from 5 degrees of freedom on; numpy has no t distribution)."""
    if dof < 1:
        raise ValueError("degrees of freedom must be >= 1")
    if dof <= 4:
        return (12.7062047, 4.30265273, 3.18244631, 2.77644511)[dof - 1]
    z, v = 1.959963985, float(dof)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )
