"""What ``cgx eval`` reports: one mode's numbers, one task's modes, the sweep, the whole run (``--json``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from crossgap_index.evaluation.metrics import METRICS
from crossgap_index.evaluation.settings import IMAGES


@dataclass
class ModeResult:
    """One mode's mean metrics and cost.

    ``map_vs_intra`` is the mean per-query AP difference against intra, ``map_vs_intra_se`` its standard
    error over queries (paired: same queries, same gallery), so a reader can tell a win from noise.
    ``ms_per_query``: the mode's own work for one query at batch 1 with no cache (transform, ranking,
    fusion over the in-memory gallery), to add to the model's query embedding time (``timings``).
    ``ms_per_query_batch``: the same per query when ``COST_BATCH`` queries run together (one inversion call).
    ``seconds``: the whole batch of queries, caches allowed (the cost of the evaluation itself).
    ``map_vs_intra_ci95``: the paired 95% interval of ``map_vs_intra`` (t over queries). ``uses_labels``: the
    mode's vocabulary, fit or selection used the evaluated data's labels or class names (``uses_labels``), so
    its gain is not one a user without those labels gets.
    """

    mode: str
    description: str
    metrics: dict[str, float]
    map_vs_intra: float
    map_vs_intra_se: float | None
    seconds: float
    ms_per_query: float | None = None
    settings: dict = field(default_factory=dict)
    ms_per_query_batch: float | None = None
    uses_labels: bool = False
    map_vs_intra_ci95: tuple[float, float] | None = None


@dataclass
class TaskResult:
    """Every mode of one task (image-to-image or text-to-text) on the same queries and gallery."""

    task: str
    relevant: str
    n_queries: int
    n_gallery: int
    n_skipped_queries: int  # queries with nothing relevant in the gallery, left out of the means
    leave_one_out: bool
    modes: dict[str, ModeResult] = field(default_factory=dict)

    def best(self) -> dict[str, str]:
        """The winning mode per metric (first in mode order on a tie)."""
        return {m: max(self.modes, key=lambda name: self.modes[name].metrics[m]) for m in METRICS}


@dataclass
class SweepPoint:
    """Cross-mode metrics after ``steps`` inversion steps: OTI on image-to-image with ``tokens`` pseudo-tokens,
    or OVI on text-to-text (``task``) with ``patches`` pseudo-patches; ``lr`` the inversion's learning rate.
    ``seconds``: the inversion run the point came from (one run per R or P and lr serves every step count)."""

    steps: int
    metrics: dict[str, float]
    map_vs_intra: float
    map_vs_intra_se: float | None
    seconds: float
    tokens: int = 1
    task: str = IMAGES
    patches: int | None = None
    lr: float | None = None


@dataclass
class EvalResult:
    """Everything ``cgx eval`` reports; ``to_dict`` is the ``--json`` document."""

    dataset: dict
    model: str
    dim: int
    device: str
    settings: dict
    tasks: dict[str, TaskResult]
    zero_shot: dict | None
    sweep: list[SweepPoint]
    timings: dict[str, float]

    def to_dict(self) -> dict:
        doc = dataclasses.asdict(self)
        for name, task in self.tasks.items():
            doc["tasks"][name]["best"] = task.best()
        return doc
