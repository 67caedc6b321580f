"""Compiling the served inversion step before the first request (``cgx serve --compile-inversion``).

A compiled shape costs seconds to a minute of CPU to build (inversion/compiled.py); a server pays it here, at start,
instead of in its first cross queries. The warm-up runs the cross mode's OTI at the served settings on a fixed
unit vector, once alone and once beside a second query: in bf16 both are one lane (one shape), in fp32 the second
size makes the batch dimension dynamic, so later batches of any size reuse the compiled step.
"""

from __future__ import annotations

import numpy as np

from crossgap_index.api import CrossGapIndex
from crossgap_index.inversion.compiled import compile_in_process


def warm_compiled_inversion(index: CrossGapIndex) -> None:
    """Ask this process for compiled inversion steps and compile the image queries' (OTI) step now."""
    compile_in_process(True)
    vectors = np.random.default_rng(0).standard_normal((2, index.info().dim)).astype(np.float32)
    queries = [{"vector": v / np.linalg.norm(v), "modality": "image"} for v in vectors]
    for batch in (queries[:1], queries):
        index.search_batch(batch, mode="cross", k=1, use_cache=False)
