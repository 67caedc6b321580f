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


def _weights_and_buffers(model) -> dict:
    """Every state-dict entry and every buffer (non-persistent ones too: the causal mask)."""
    return {**model.state_dict(), **{f"buffer {k}": v for k, v in model.named_buffers()}}


def test_a_checkpoint_builds_without_random_fills_and_equals_a_filled_build(tmp_path, monkeypatch):
    """Weights a checkpoint replaces are never filled with random numbers first (factory.py); the model is the
    same, bit for bit, as one built with the fills, and random specs keep theirs."""
    import threading

    import torch
    from safetensors.torch import save_file

    from crossgap_index.models import factory

    random_model = load_model("tiny-random", "cpu").model
    folder = tmp_path / "local"
    folder.mkdir()
    config = factory.bundled_dir("tiny-random") / "open_clip_config.json"
    (folder / "open_clip_config.json").write_text(config.read_text())
    save_file({k: v.contiguous() for k, v in random_model.state_dict().items()}, folder / "open_clip_model.safetensors")
    spec = str(folder)  # a folder holding open_clip_config.json and weights
    assert factory._loads_every_weight(parse_spec(spec))
    assert not factory._loads_every_weight(parse_spec("tiny-random"))
    assert not factory._loads_every_weight(parse_spec("ViT-B-32/random"))

    skipped_fills = []

    class Spy(factory._RandomFillsSkipped):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in self._SKIPPED:
                skipped_fills.append(func)
            return super().__torch_function__(func, types, args, kwargs)

    monkeypatch.setattr(factory, "_RandomFillsSkipped", Spy)
    skipped = load_model(spec, "cpu").model
    assert skipped_fills  # the checkpoint's build skipped its random fills
    before = len(skipped_fills)
    load_model("tiny-random", "cpu")
    assert len(skipped_fills) == before  # a random spec keeps them: they are its weights
    monkeypatch.setattr(factory, "_loads_every_weight", lambda spec: False)
    filled = load_model(spec, "cpu").model
    expected, got = _weights_and_buffers(filled), _weights_and_buffers(skipped)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert all(torch.equal(v, _weights_and_buffers(random_model)[k]) for k, v in got.items())

    # The mode is this thread's: another thread's fills are real meanwhile.
    inside = []
    with factory._RandomFillsSkipped():
        mine = [torch.nn.init.normal_(torch.zeros(100)), torch.nn.init.xavier_uniform_(torch.zeros(10, 10))]
        worker = threading.Thread(target=lambda: inside.append(torch.nn.init.normal_(torch.zeros(1000))))
        worker.start()
        worker.join()
    assert all(float(t.abs().sum()) == 0.0 for t in mine)
    assert float(inside[0].std()) > 0.5
    assert float(torch.nn.init.normal_(torch.zeros(1000)).std()) > 0.5  # and this thread's again after


def test_loads_of_one_model_share_its_tokenizer_until_its_config_changes(tmp_path):
    import os

    first, second = load_model("tiny-random", "cpu"), load_model("tiny-random", "cpu")
    assert first.tokenizer is second.tokenizer and first.model is not second.model  # the weights are each load's own
    texts = ["a red bicycle", "two blue shapes"]
    assert first.tokenizer(texts).tolist() == second.tokenizer(texts).tolist()
    from crossgap_index.models import factory

    folder = tmp_path / "model"
    folder.mkdir()
    config = folder / "open_clip_config.json"
    config.write_text((factory.bundled_dir("tiny-random") / "open_clip_config.json").read_text())
    before = factory._tokenizer(f"local-dir:{folder}", folder)
    assert factory._tokenizer(f"local-dir:{folder}", folder) is before
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    assert factory._tokenizer(f"local-dir:{folder}", folder) is not before  # an edited config: built again


def test_a_folder_whose_weights_vanish_during_the_build_is_refused(tmp_path, monkeypatch):
    """open_clip only warns when a folder holds no weights, and a checkpoint build leaves its weights unfilled:
    weights deleted between the check and the build must end in the one-line refusal, not in a model of garbage."""
    import open_clip
    from safetensors.torch import save_file

    from crossgap_index.models import factory

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        (factory.bundled_dir("tiny-random") / "open_clip_config.json").read_text()
    )
    weights = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in load_model("tiny-random", "cpu").model.state_dict().items()}, weights)
    real_create = open_clip.create_model_and_transforms

    def create_after_the_weights_are_gone(*args, **kwargs):
        weights.unlink()
        return real_create(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", create_after_the_weights_are_gone)
    with pytest.raises(ModelUnavailableError, match="no weights file") as refused:
        load_model(str(folder), "cpu")
    assert "\n" not in str(refused.value)
