"""Model spec resolution: every spec form, and one clear line when weights cannot be had."""

import numpy as np
import pytest
from PIL import Image

from crossgap_index.errors import ModelUnavailableError
from crossgap_index.models import Encoder, load_model, parse_spec


def test_spec_forms(tmp_path):
    assert parse_spec("tiny-random").kind == "bundled"
    assert parse_spec("ViT-B-32/datacomp_xl_s13b_b90k") == parse_spec("ViT-B-32::datacomp_xl_s13b_b90k")
    assert parse_spec("ViT-B-32/openai").canonical == "ViT-B-32/openai"
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    assert parse_spec(f"ViT-B-32::{weights}").kind == "checkpoint"
    with pytest.raises(ModelUnavailableError, match="open_clip_config.json"):
        parse_spec(str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="unknown model"):
        parse_spec("no-such-model")


def test_unknown_tag_and_arch_are_one_line_errors():
    with pytest.raises(ModelUnavailableError, match="unknown pretrained tag 'nope'") as info:
        load_model("ViT-B-32/nope", "cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelUnavailableError, match="unknown open_clip architecture"):
        load_model("ViT-Z-99/openai", "cpu")


def test_encoder_returns_unit_float32_rows():
    encoder = Encoder(load_model("tiny-random", "cpu"), batch_size=2)
    texts = encoder.encode_texts(["a", "b", "c"])
    images = encoder.encode_images([Image.new("RGB", (30, 20), c) for c in ("red", "blue", "green")])
    for feats in (texts, images):
        assert feats.dtype == np.float32 and feats.shape == (3, encoder.dim)
        np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    again = Encoder(load_model("tiny-random", "cpu")).encode_texts(["a"])
    np.testing.assert_allclose(again[0], texts[0], atol=1e-5)  # bundled random weights are deterministic
