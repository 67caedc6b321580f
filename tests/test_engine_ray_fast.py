"""The Ray engine's per-batch work without a Ray instance (the fast tier's touch of engines/ray_data.py;
the cluster itself is exercised by the slow tests in test_engine_ray.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray")

from crossgap_index.engines.ray_data import HASH_DTYPE, ImageEmbedder, _contains  # noqa: E402
from crossgap_index.models import Encoder, load_model  # noqa: E402
from tests.support.photos import MODEL, write_photo  # noqa: E402


def test_embedder_matches_the_local_encoder_and_zeroes_rows_without_pixels(tmp_path):
    from PIL import Image

    images = [Image.open(write_photo(tmp_path / f"{i}.png", seed=i)).convert("RGB") for i in range(3)]
    embedder = ImageEmbedder(MODEL, "cpu", batch_size=2, precision="fp32")
    preprocess = embedder.encoder.loaded.preprocess
    pixels = [preprocess(images[0]).numpy().tobytes(), b"", preprocess(images[2]).numpy().tobytes()]
    out = embedder({"path": np.array(["a", "b", "c"], dtype=object), "pixels": np.array(pixels, dtype=object)})
    assert out["embedded"].tolist() == [True, False, True]
    assert not out["vector"][1].any()
    expected = Encoder(load_model(MODEL, "cpu"), precision="fp32").encode_images([images[0], images[2]])
    np.testing.assert_allclose(out["vector"][[0, 2]], expected, atol=1e-5)


def test_stored_hash_lookup_is_exact():
    stored = np.sort(np.array([b"a" * 32, b"c" * 32], dtype=HASH_DTYPE))
    assert _contains(stored, "a" * 32) and _contains(stored, "c" * 32)
    assert not _contains(stored, "b" * 32) and not _contains(stored, "d" * 32)
