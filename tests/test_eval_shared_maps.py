"""An evaluation fits each span/iso/concept map once per settings: every fresh transformer a cost measurement
makes shares the task's fitted maps (as one served index keeps its own), and the map is the one a lone
transformer fits."""

from __future__ import annotations

import numpy as np

from crossgap_index.evaluation.runner import Transformers
from crossgap_index.models import Encoder, load_model
from crossgap_index.search.mode_spec import Leg
from tests.support.photos import MODEL

ISO = Leg("iso", "project", "projected", {"kind": "iso"})


def test_fresh_transformers_of_a_task_share_one_fitted_map():
    transformers = Transformers(Encoder(load_model(MODEL, "cpu")))
    first, second = transformers.make(), transformers.make()
    assert first is not second
    shared = first.projection(ISO, "image")
    assert second.projection(ISO, "image") is shared  # not fitted again
    alone = Transformers(transformers.encoder).make().projection(ISO, "image")  # its own maps: fits afresh
    assert alone is not shared
    assert np.array_equal(alone.matrix, shared.matrix)
