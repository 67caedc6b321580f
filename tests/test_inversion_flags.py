"""Flags become inversion settings in one place (``inversion_from_flags``): ``steps`` sets the OTI and the OVI
steps alike, no flag leaves the served settings (None), and a server request reads its flags the same way."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from crossgap_index.errors import QueryError
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.config import inversion_from_flags
from crossgap_index.server.models import SearchRequest


def test_steps_mean_both_inversions_and_nothing_means_served():
    assert inversion_from_flags() is None
    config = inversion_from_flags(steps=7, tokens=2, lr=0.01)
    assert (config.oti_steps, config.ovi_steps, config.n_tokens, config.lr) == (7, 7, 2, 0.01)
    assert inversion_from_flags(precision="fp32") == InversionConfig(precision="fp32")
    with pytest.raises(QueryError):
        inversion_from_flags(lr=-1.0)


def test_a_server_request_reads_its_flags_through_the_same_builder():
    assert SearchRequest(text="a red circle").inversion() is None
    request = SearchRequest(text="a red circle", steps=3, patches=4, precision="fp32")
    assert request.inversion() == inversion_from_flags(steps=3, patches=4, precision="fp32")
    assert request.inversion().ovi_steps == 3
    with pytest.raises(ValidationError):
        SearchRequest(text="x", steps=-1)
