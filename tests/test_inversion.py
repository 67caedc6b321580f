"""Modality inversion on real, randomly initialised open_clip architectures.

The fast paths are checked against the oracle after the same steps from the same init; the
optimisation is checked to move each query towards its target, independently of its batch.
"""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from crossgap_index.errors import IncompatibleModelError, QueryError
from crossgap_index.inversion import (
    Family,
    InversionConfig,
    detect_family,
    final_losses,
    oti,
    oti_reference,
    ovi,
    ovi_reference,
)
from crossgap_index.models.factory import LoadedModel, ModelSpec, load_model

EXACT = 0.9999  # minimum cosine between fast-path and oracle features, both in fp32 (bf16: tests/test_precision.py)


def _loaded(model: torch.nn.Module, name: str, tokenizer=None) -> LoadedModel:
    model.eval().requires_grad_(False)
    return LoadedModel(ModelSpec("pretrained", name, "random-init"), model, None, tokenizer, torch.device("cpu"))


def _targets(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _siglip_tokenizer(texts: list[str]) -> torch.Tensor:
    """SigLIP's HF tokenizer cannot be downloaded here: CLIP BPE ids folded into its 32k vocab, padded to 64."""
    return SimpleTokenizer()(texts, context_length=64) % 32000


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("tiny-random", "cpu")


@pytest.fixture(scope="module")
def vit_b32() -> LoadedModel:
    torch.manual_seed(0)
    return _loaded(open_clip.create_model("ViT-B-32"), "ViT-B-32", open_clip.get_tokenizer("ViT-B-32"))


@pytest.fixture(scope="module")
def siglip_small() -> LoadedModel:
    """The SigLIP family (bidirectional text, 'last' pooling, biased projection, timm ViT with MAP pooling), small."""
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(
        embed_dim=192,
        vision_cfg={
            "image_size": 224,
            "timm_model_name": "vit_tiny_patch16_224",
            "timm_pool": "map",
            "timm_proj": "none",
        },
        text_cfg={
            "context_length": 64,
            "vocab_size": 32000,
            "width": 64,
            "heads": 2,
            "layers": 2,
            "no_causal_mask": True,
            "proj_bias": True,
            "pool_type": "last",
            "norm_kwargs": {"eps": 1e-6},
        },
    )
    return _loaded(model, "siglip-small", _siglip_tokenizer)


def test_tiny_fast_matches_reference_with_tail_and_several_tokens(tiny: LoadedModel) -> None:
    # A template tail after the placeholders and R = 2 exercise every row of the causal fast path.
    targets = _targets(3, tiny.embed_dim)
    cfg = InversionConfig(
        oti_steps=4, ovi_steps=4, n_tokens=2, template="a photo of {} on a table", batch_size=3, precision="fp32"
    )
    seeds = [11, 12, 13]
    assert _cosines(oti(tiny, targets, cfg, seeds), oti_reference(tiny, targets, cfg, seeds)).min() >= EXACT
    assert _cosines(ovi(tiny, targets, cfg, seeds), ovi_reference(tiny, targets, cfg, seeds)).min() >= EXACT


def test_bf16_path_stays_close_to_the_oracle(tiny: LoadedModel) -> None:
    # The bf16 path (model cast to bf16, fp32 loss and AdamW): the same code on CPU and CUDA.
    targets, seeds = _targets(3, tiny.embed_dim), [1, 2, 3]
    cfg = InversionConfig(oti_steps=4, ovi_steps=4, precision="bf16")
    assert _cosines(oti(tiny, targets, cfg, seeds), oti_reference(tiny, targets, cfg, seeds)).min() >= 0.99
    assert _cosines(ovi(tiny, targets, cfg, seeds), ovi_reference(tiny, targets, cfg, seeds)).min() >= 0.99


@pytest.mark.slow
def test_oti_fast_matches_reference_vit_b32(vit_b32: LoadedModel) -> None:
    targets, seeds = _targets(2, 512), [1, 2]
    cfg = InversionConfig(oti_steps=3, batch_size=2, precision="fp32")
    fast, reference = oti(vit_b32, targets, cfg, seeds), oti_reference(vit_b32, targets, cfg, seeds)
    assert fast.shape == (2, 512) and fast.dtype == np.float32
    assert _cosines(fast, reference).min() >= EXACT


@pytest.mark.slow
def test_ovi_fast_matches_reference_vit_b32(vit_b32: LoadedModel) -> None:
    targets, seeds = _targets(2, 512), [1, 2]
    cfg = InversionConfig(ovi_steps=2, batch_size=2, precision="fp32")
    fast, reference = ovi(vit_b32, targets, cfg, seeds), ovi_reference(vit_b32, targets, cfg, seeds)
    assert _cosines(fast, reference).min() >= EXACT


@pytest.mark.slow
def test_oti_fast_matches_reference_siglip_b16() -> None:
    # ViT-B-16-SigLIP's own text tower; a tiny image tower keeps construction cheap (OTI never runs it).
    torch.manual_seed(0)
    config = open_clip.get_model_config("ViT-B-16-SigLIP")
    tiny_vision = {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16}
    model = open_clip.CustomTextCLIP(config["embed_dim"], tiny_vision, config["text_cfg"])
    siglip = _loaded(model, "ViT-B-16-SigLIP", _siglip_tokenizer)
    assert detect_family(siglip.model).text == "bidirectional"
    targets, seeds = _targets(1, 768), [1]
    cfg = InversionConfig(oti_steps=2, precision="fp32")
    assert _cosines(oti(siglip, targets, cfg, seeds), oti_reference(siglip, targets, cfg, seeds)).min() >= EXACT


def test_siglip_family_small_fast_matches_reference(siglip_small: LoadedModel) -> None:
    assert detect_family(siglip_small.model) == Family("bidirectional", "timm-vit")
    targets, seeds = _targets(2, 192), [5, 6]
    cfg = InversionConfig(oti_steps=3, ovi_steps=1, batch_size=2, precision="fp32")
    for method, reference in ((oti, oti_reference), (ovi, ovi_reference)):
        fast = method(siglip_small, targets, cfg, seeds)
        assert _cosines(fast, reference(siglip_small, targets, cfg, seeds)).min() >= EXACT


@pytest.mark.parametrize("method", [oti, ovi])
def test_inversion_moves_towards_target(tiny: LoadedModel, method) -> None:
    targets, seeds = _targets(3, tiny.embed_dim, seed=1), [7, 8, 9]
    start = method(tiny, targets, InversionConfig(oti_steps=0, ovi_steps=0), seeds)
    losses: list[float] = []
    cfg = InversionConfig(oti_steps=25, ovi_steps=25)
    end = method(tiny, targets, cfg, seeds, progress=lambda step, loss: losses.append(loss))
    # one report per step of each chunk (bf16 runs fixed lanes: OVI one query per chunk)
    assert len(losses) % 25 == 0 and losses[24] < losses[0] and losses[-1] < losses[-25]
    assert np.all(final_losses(end, targets) < final_losses(start, targets))
    np.testing.assert_allclose(np.linalg.norm(end, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("method", [oti, ovi])
def test_query_result_does_not_depend_on_its_batch(tiny: LoadedModel, method) -> None:
    targets = _targets(4, tiny.embed_dim, seed=2)
    cfg = InversionConfig(oti_steps=5, ovi_steps=5, batch_size=4)
    together = method(tiny, targets, cfg, [21, 22, 23, 24])
    alone = method(tiny, targets[2:3], cfg, [23])
    other_neighbours = method(tiny, np.concatenate([targets[2:3], _targets(2, tiny.embed_dim, 9)]), cfg, [23, 5, 6])
    np.testing.assert_allclose(alone[0], together[2], atol=1e-5)
    np.testing.assert_allclose(other_neighbours[0], together[2], atol=1e-5)


def test_progress_counts_steps_across_batches(tiny: LoadedModel) -> None:
    steps: list[int] = []
    cfg = InversionConfig(oti_steps=3, batch_size=2, precision="fp32")  # fp32 chunks: batch_size
    oti(tiny, _targets(5, tiny.embed_dim), cfg, [1, 2, 3, 4, 5], progress=lambda step, loss: steps.append(step))
    assert steps == list(range(1, 10))
    steps.clear()
    bf16 = InversionConfig(oti_steps=3, batch_size=2, precision="bf16")  # bf16 chunks: the lane, 8 queries
    oti(tiny, _targets(9, tiny.embed_dim), bf16, list(range(9)), progress=lambda step, loss: steps.append(step))
    assert steps == list(range(1, 7))


def test_ovi_on_resnet_tower_is_incompatible() -> None:
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )
    resnet = _loaded(model, "tiny-resnet")
    family = detect_family(resnet.model)
    assert family.vision is None and "ResNet" in family.vision_problem and family.text == "causal"
    with pytest.raises(IncompatibleModelError) as raised:
        ovi(resnet, _targets(1, 32), InversionConfig(ovi_steps=1), [0])
    message = str(raised.value)
    assert "tiny-resnet" in message and "ResNet" in message and "\n" not in message


def test_bad_settings_and_inputs_raise_query_errors(tiny: LoadedModel) -> None:
    with pytest.raises(QueryError):
        InversionConfig(template="a photo of")
    with pytest.raises(QueryError):
        InversionConfig(fast=False, precision="bf16")
    with pytest.raises(QueryError):
        oti(tiny, _targets(2, tiny.embed_dim), InversionConfig(oti_steps=1), [1])
    with pytest.raises(QueryError):
        oti(tiny, _targets(1, tiny.embed_dim + 1), InversionConfig(oti_steps=1), [1])
    with pytest.raises(QueryError, match="separate tokens"):  # CLIP's BPE merges "*." into one token
        oti(tiny, _targets(1, tiny.embed_dim), InversionConfig(oti_steps=1, template="a photo of {}."), [1])
