"""`cgx eval`'s inversion stages count their steps to the real total (not a bar stuck at 0/1 or 1/1)."""

from __future__ import annotations

import pytest

from crossgap_index.evaluation.protocol import evaluate
from crossgap_index.inversion import InversionConfig
from tests.support.photos import MODEL


@pytest.mark.slow  # a whole evaluation: two minutes on a loaded 2-core machine
def test_inversion_stages_report_every_step_up_to_their_total():
    reports: dict[str, list[tuple[int, int]]] = {}
    config = InversionConfig(oti_steps=3, ovi_steps=2, precision="bf16")  # several chunks: bf16 lanes of 8 and 1
    evaluate(
        "synthetic:3:24",
        MODEL,
        device="cpu",
        config=config,
        progress=lambda stage, done, total: reports.setdefault(stage, []).append((done, total)),
    )
    inverting = {stage: seen for stage, seen in reports.items() if stage.startswith(("OTI", "OVI"))}
    assert len(inverting) == 3, list(reports)  # OTI of the queries, OVI of the queries and of the gallery
    for stage, seen in inverting.items():
        total = seen[0][1]
        assert all(t == total for _, t in seen), stage
        done = [d for d, _ in seen]
        assert done == sorted(done) and done[0] == 0 and done[-1] == total, (stage, seen)
        assert len(set(done)) == total + 1 and total > (3 if stage.startswith("OTI") else 2), stage  # > one chunk
