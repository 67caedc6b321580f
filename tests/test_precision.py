"""bf16 against fp32: embeddings and inversion agree; ``auto`` follows the hardware (and, for inversion on a CPU,
the model's size); indexes keep their precision.

Thresholds: embeddings >= MIX_MIN_COSINE (the mixing rule's own bound); a few inversion steps from the
same init >= INVERSION_AGREE (measured 0.9995 on ViT-B-32 and 0.9998 on ViT-B-16-SigLIP after 3 steps).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import open_clip
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index import precision as precision_module
from crossgap_index.cli.app import app
from crossgap_index.inversion import InversionConfig, oti, ovi
from crossgap_index.models import Encoder, load_model
from crossgap_index.models.encoder import precision_agreement
from crossgap_index.models.factory import LoadedModel, ModelSpec
from crossgap_index.models.family import text_tower
from crossgap_index.models.text_tower import fast_text_features, reference_text_features, tokenize_prompt
from crossgap_index.precision import MIX_MIN_COSINE, PrecisionError
from tests.support.photos import MODEL, write_photo

INVERSION_AGREE = 0.998
EXACT = 0.99999  # the same function computed two ways, both fp32
CPU = torch.device("cpu")


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)) for _ in range(n)]


def _targets(n: int, dim: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)


def _embedding_agreement(loaded: LoadedModel, n: int = 2) -> float:
    texts = ["a photo of a dog", "a red circle on a white background", "text"][:n]
    feats = [
        np.concatenate([enc.encode_images(_images(n)), enc.encode_texts(texts)])
        for enc in (Encoder(loaded, precision="fp32"), Encoder(loaded, precision="bf16"))
    ]
    return float(np.sum(feats[0] * feats[1], axis=1).min())


def _inversion_agreement(loaded: LoadedModel, method, steps: int = 3) -> float:
    targets = _targets(2, loaded.embed_dim)
    out = [
        method(loaded, targets, InversionConfig(oti_steps=steps, ovi_steps=steps, precision=p), [1, 2])
        for p in ("fp32", "bf16")
    ]
    return float(np.sum(out[0] * out[1], axis=1).min())


def _text_path_agreement(loaded: LoadedModel) -> float:
    """Encoder's op-by-op text path against open_clip's own ``encode_text``, both fp32 (the oracle twin)."""
    texts = ["a", "a photo of a cat sitting on a long wooden bench in the park at noon", "two words", ""]
    with torch.inference_mode():
        reference = torch.nn.functional.normalize(loaded.model.encode_text(loaded.tokenizer(texts)), dim=-1)
    return float(np.sum(Encoder(loaded, precision="fp32").encode_texts(texts) * reference.numpy(), axis=1).min())


def _siglip_tokenizer(texts: list[str]) -> torch.Tensor:
    """SigLIP's HF tokenizer cannot be downloaded here: CLIP BPE ids folded into its 32k vocab, padded to 64."""
    return SimpleTokenizer()(texts, context_length=64) % 32000


def _siglip(model: torch.nn.Module, name: str, image_size: int) -> LoadedModel:
    model.eval().requires_grad_(False)
    preprocess = open_clip.image_transform(image_size, is_train=False)
    return LoadedModel(ModelSpec("pretrained", name, "random-init"), model, preprocess, _siglip_tokenizer, CPU)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model(MODEL, "cpu")


@pytest.fixture(scope="module")
def siglip_small() -> LoadedModel:
    """The SigLIP family (timm ViT with MAP pooling, bidirectional text, 'last' pooling, biased projection), small."""
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
    return _siglip(model, "siglip-small", 224)


# -- auto and the cast ------------------------------------------------------------------------


def test_auto_falls_back_to_fp32_where_bf16_is_not_native(tiny: LoadedModel, monkeypatch) -> None:
    monkeypatch.setattr(precision_module, "bf16_native", lambda device: False)
    encoder = Encoder(tiny, precision="auto")
    assert encoder.precision == "fp32" and encoder.model is tiny.model
    assert InversionConfig().precision_on(tiny) == "fp32"
    assert InversionConfig().resolved(tiny).precision == "fp32"
    monkeypatch.setattr(precision_module, "bf16_native", lambda device: True)
    assert Encoder(tiny, precision="auto").precision == "bf16"


def test_auto_inverts_in_bf16_on_the_cpu_only_for_a_large_model(tiny: LoadedModel, monkeypatch) -> None:
    monkeypatch.setattr(precision_module, "bf16_native", lambda device: True)
    assert tiny.weight_bytes == 4 * sum(p.numel() for p in tiny.model.parameters())
    assert tiny.weight_bytes < precision_module.CPU_INVERSION_BF16_MIN_BYTES  # a small model: fp32 pays
    assert Encoder(tiny, precision="auto").precision == "bf16"  # embedding: bf16 wherever it is native
    assert InversionConfig().precision_on(tiny) == "fp32" and InversionConfig().resolved(tiny).precision == "fp32"
    assert InversionConfig(precision="bf16").precision_on(tiny) == "bf16"  # an explicit setting is taken as given
    monkeypatch.setattr(precision_module, "CPU_INVERSION_BF16_MIN_BYTES", tiny.weight_bytes)
    assert InversionConfig().precision_on(tiny) == "bf16"
    assert InversionConfig(fast=False).precision_on(tiny) == "fp32"  # the oracle never leaves fp32
    # Off the CPU the model's size does not decide: bf16 wherever it is native.
    resolve_inversion = precision_module.resolve_inversion
    assert resolve_inversion("auto", torch.device("cuda"), 1) == "bf16" and resolve_inversion("auto", CPU, 1) == "fp32"


def test_an_oti_in_the_precision_auto_picks_equals_one_asked_for_by_name(tiny: LoadedModel) -> None:
    target = Encoder(tiny, precision="fp32").encode_images(_images(2))
    config = InversionConfig(oti_steps=3, n_tokens=2)
    picked = config.precision_on(tiny)
    named = dataclasses.replace(config, precision=picked)
    np.testing.assert_array_equal(oti(tiny, target, config, [1, 2]), oti(tiny, target, named, [1, 2]))


def test_weights_are_cast_once_and_the_fp32_model_is_untouched(tiny: LoadedModel) -> None:
    first, second = Encoder(tiny, precision="bf16"), Encoder(tiny, precision="bf16")
    assert first.model is second.model is tiny.model_in("bf16") and first.model is not tiny.model
    assert {p.dtype for p in first.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in tiny.model.parameters()} == {torch.float32}
    feats = first.encode_texts(["a", "b"])
    assert feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)  # normalised in fp32


def test_unknown_precision_is_one_line(tiny: LoadedModel) -> None:
    with pytest.raises(PrecisionError, match="precision must be one of") as raised:
        Encoder(tiny, precision="fp16")
    assert "\n" not in str(raised.value)


# -- agreement: embeddings, inversion, the bf16 fast path ---------------------------------------


def test_op_by_op_text_path_matches_encode_text(tiny: LoadedModel, siglip_small: LoadedModel) -> None:
    assert _text_path_agreement(tiny) >= EXACT  # causal, truncated after the last EOT
    assert _text_path_agreement(siglip_small) >= EXACT  # bidirectional, 'last' pooling, full length


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_tiny_and_siglip_family_agree_in_bf16(tiny: LoadedModel, siglip_small: LoadedModel) -> None:
    assert precision_agreement(tiny) >= MIX_MIN_COSINE
    assert _embedding_agreement(siglip_small) >= MIX_MIN_COSINE
    for loaded in (tiny, siglip_small):
        assert _inversion_agreement(loaded, oti) >= INVERSION_AGREE
        assert _inversion_agreement(loaded, ovi, steps=2) >= INVERSION_AGREE


@pytest.mark.parametrize(("template", "n_tokens"), [("a photo of {}", 1), ("a photo of {} on a table", 2)])
def test_bf16_fast_text_path_matches_the_bf16_reference(tiny: LoadedModel, template: str, n_tokens: int) -> None:
    # The causal fast path's prefix keys/values are computed once in the tower's dtype; in bf16 they
    # must give what the full context gives in bf16 (in fp32 test_inversion.py holds them to 0.9999).
    tower = text_tower(tiny.model_in("bf16"), MODEL)
    prompt = tokenize_prompt(tiny.tokenizer, template, n_tokens, tower, MODEL, CPU)
    tokens = torch.randn(3, n_tokens, tower.token_embedding.embedding_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = fast_text_features(tower, prompt)(tokens.bfloat16()).float()
        reference = reference_text_features(tower, prompt)(tokens.bfloat16()).float()
    assert torch.nn.functional.cosine_similarity(fast, reference).min() >= MIX_MIN_COSINE


@pytest.mark.slow
def test_vit_b32_random_agrees_in_bf16() -> None:
    loaded = load_model("ViT-B-32/random", "cpu")
    if precision_module.bf16_native(CPU):  # 577 MiB of fp32 weights: auto inverts in bf16, as it embeds
        assert InversionConfig().precision_on(loaded) == "bf16"
    assert _text_path_agreement(loaded) >= EXACT
    assert _embedding_agreement(loaded) >= MIX_MIN_COSINE
    assert _inversion_agreement(loaded, oti) >= INVERSION_AGREE


@pytest.mark.slow
def test_siglip_b16_text_tower_agrees_in_bf16() -> None:
    # ViT-B-16-SigLIP's own text tower; a tiny image tower keeps construction cheap.
    torch.manual_seed(0)
    config = open_clip.get_model_config("ViT-B-16-SigLIP")
    tiny_vision = {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16}
    loaded = _siglip(open_clip.CustomTextCLIP(config["embed_dim"], tiny_vision, config["text_cfg"]), "siglip-b16", 32)
    assert _embedding_agreement(loaded) >= MIX_MIN_COSINE
    assert _inversion_agreement(loaded, oti) >= INVERSION_AGREE


# -- indexes keep their precision -----------------------------------------------------------------


def _fp32_index(tmp_path, n: int = 4) -> tuple:
    photos = [write_photo(tmp_path / "photos" / f"p{i}.png", i) for i in range(n)]
    index_dir = tmp_path / "idx"
    with CrossGapIndex.create(index_dir, model=MODEL, device="cpu", precision="fp32") as index:
        index.add_images(photos)
    return index_dir, photos


def _edit_manifest(index_dir, **fields) -> None:
    path = index_dir / "manifest.json"
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def test_a_new_auto_index_checks_the_model_and_records_its_agreement(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(precision_module, "bf16_native", lambda device: True)
    with CrossGapIndex.create(tmp_path / "a", model=MODEL, device="cpu") as index:
        assert index._runtime.encoder.precision == "bf16"
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["precision"] == "bf16" and manifest["precision_agreement"] >= MIX_MIN_COSINE
    # A model whose probe agreement misses the bound (forced here by asking for exact equality): fp32.
    monkeypatch.setattr(precision_module, "MIX_MIN_COSINE", 1.0)
    with CrossGapIndex.create(tmp_path / "b", model=MODEL, device="cpu") as index:
        assert index._runtime.encoder.precision == "fp32" and index.info().precision == "fp32"
    with CrossGapIndex.create(tmp_path / "c", model=MODEL, device="cpu", precision="bf16") as index:
        assert index._runtime.encoder.precision == "bf16"  # an explicit setting is taken as given for a new index


def test_mixing_within_the_agreement_is_allowed_and_recorded(tmp_path) -> None:
    index_dir, photos = _fp32_index(tmp_path)
    extra = write_photo(tmp_path / "photos" / "extra.png", 99)
    with CrossGapIndex.open(index_dir, device="cpu", precision="bf16") as index:
        assert index._runtime.encoder.precision == "bf16"
        index.add_images([extra])
        hits = index.search(image=extra, k=1)
    assert hits[0].path == str(extra)
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["precision"] == "mixed" and manifest["precision_agreement"] >= MIX_MIN_COSINE
    with CrossGapIndex.open(index_dir, device="cpu", precision="fp32") as index:  # mixed takes either
        assert index.search(image=photos[0], k=1)[0].path == str(photos[0])


def test_a_disagreeing_precision_is_refused_in_one_line(tmp_path) -> None:
    # The manifest records the agreement measured for a model whose bf16 features drift (0.98 here):
    # an explicit bf16 is refused before anything is embedded; auto keeps the index's fp32.
    index_dir, photos = _fp32_index(tmp_path)
    _edit_manifest(index_dir, precision_agreement=0.98)
    with pytest.raises(PrecisionError) as raised:
        CrossGapIndex.open(index_dir, device="cpu", precision="bf16")
    message = str(raised.value)
    assert "\n" not in message and "fp32 vectors" in message and "0.9800" in message
    with CrossGapIndex.open(index_dir, device="cpu", precision="auto") as index:
        assert index._runtime.encoder.precision == "fp32"
        assert index.search(image=photos[1], k=1)[0].path == str(photos[1])
    result = CliRunner().invoke(app, ["query", str(photos[0]), "--index", str(index_dir), "--precision", "bf16"])
    assert result.exit_code == 1 and "agree with them only to cosine 0.9800" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unknown_stored_precision_is_refused_and_old_manifests_read_as_fp32(tmp_path) -> None:
    index_dir, photos = _fp32_index(tmp_path)
    _edit_manifest(index_dir, precision="int4")  # as a newer crossgap-index might write
    with CrossGapIndex.open(index_dir, device="cpu") as index, pytest.raises(PrecisionError, match="'int4'"):
        index.search(image=photos[0], k=1)
    data = json.loads((index_dir / "manifest.json").read_text())
    for key in ("precision", "precision_agreement"):
        data.pop(key)
    (index_dir / "manifest.json").write_text(json.dumps(data))
    with CrossGapIndex.open(index_dir, device="cpu", precision="fp32") as index:
        assert index.info().precision == "fp32"
        assert index.search(image=photos[2], k=1)[0].path == str(photos[2])
