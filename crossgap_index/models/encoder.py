"""Encoder: images and texts in, float32 L2-normalised (n, d) numpy arrays out."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from crossgap_index.errors import TruncatedTextWarning
from crossgap_index.models.factory import LoadedModel
from crossgap_index.precision import dtype_of, resolve

# A fixed probe for the agreement of two precisions: smooth and noisy pictures, varied prompts.
_PROBE_TEXTS = (
    "a photo of a dog",
    "a red circle on a white background",
    "two people walking along a beach at sunset",
    "a diagram",
    "a close-up of a yellow flower in the rain",
    "text",
    "a blue square and a green triangle",
    "an old map of the city",
)
_PROBE_SEED = 20251123


class Encoder:
    """Batched, no-grad embedding with a loaded open_clip model, run in one precision as a whole.

    ``precision`` is ``auto`` (bf16 where the device runs it natively, else fp32), ``fp32`` or
    ``bf16``; the output is fp32 and normalised in fp32 either way.
    """

    def __init__(self, loaded: LoadedModel, batch_size: int = 64, precision: str = "auto"):
        self.loaded = loaded
        self.batch_size = batch_size
        self.dim = loaded.embed_dim
        self.precision = resolve(precision, loaded.device)
        self.model = loaded.model_in(self.precision)
        self._dtype = dtype_of(self.precision)
        self._encode_text = _text_encoder(self.model, loaded.spec.canonical)

    @property
    def query_batch_size(self) -> int:
        """Rows embedded together for search queries. bf16 kernels round a row differently with the batch's
        shape, so there each query is embedded alone: its vector never depends on its neighbours."""
        return 1 if self.precision == "bf16" else self.batch_size

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def input_size(self) -> int | None:
        """The largest side the preprocessing resizes or crops to (e.g. 224); images need no more pixels
        than this on their shorter side. None when the transforms do not say."""
        sizes = []
        for transform in getattr(self.loaded.preprocess, "transforms", []):
            size = getattr(transform, "size", None)
            sizes += [size] if isinstance(size, int) else list(size) if isinstance(size, (tuple, list)) else []
        return max(sizes) if sizes else None

    @property
    def context_length(self) -> int | None:
        return getattr(self.loaded.tokenizer, "context_length", None)

    def note_truncation(self, text: str) -> bool:
        """Warn (TruncatedTextWarning) when ``text`` is longer than the model's context; True when it is."""
        context = self.context_length
        if context is None:
            return False
        tokens = self.loaded.tokenizer([text], context_length=8 * context)  # room to see the whole text
        pad = getattr(getattr(self.loaded.tokenizer, "tokenizer", None), "pad_token_id", None) or 0
        used = int((tokens[0] != pad).sum())
        if used <= context:
            return False
        warnings.warn(
            TruncatedTextWarning(
                f"the query text is {used} tokens, longer than the model's {context}-token context: "
                "it was truncated and only its first part is searched"
            ),
            stacklevel=3,
        )
        return True

    def image_tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Preprocess decoded RGB images into one model-input batch."""
        return torch.stack([self.loaded.preprocess(img) for img in images])

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        """Embed an already preprocessed (n, 3, H, W) batch, ``batch_size`` rows at a time (default: the encoder's)."""
        step = batch_size or self.batch_size
        out = [
            self.model.encode_image(pixels[i : i + step].to(self.device, self._dtype)).float()
            for i in range(0, len(pixels), step)
        ]
        return _unit_rows(out, self.dim)

    def encode_images(self, images: Sequence[Image.Image], batch_size: int | None = None) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_pixels(self.image_tensor(images), batch_size)

    @torch.inference_mode()
    def encode_texts(
        self, texts: Sequence[str], batch_size: int | None = None, *, normalize: bool = True
    ) -> np.ndarray:
        """Unit rows; ``normalize=False``: the text tower's raw output (the published span code centres that)."""
        out = []
        step = batch_size or self.batch_size
        for i in range(0, len(texts), step):
            tokens = self.loaded.tokenizer(list(texts[i : i + step]))
            out.append(self._encode_text(tokens.to(self.device)).float())
        if not normalize and out:
            return np.ascontiguousarray(torch.cat(out).cpu().numpy(), dtype=np.float32)
        return _unit_rows(out, self.dim)


def _text_encoder(model: torch.nn.Module, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.encode_text``, or the same function op by op where the text tower allows it (faster on CPU)."""
    from crossgap_index.models.attention import decomposable
    from crossgap_index.models.family import detect_family, text_tower
    from crossgap_index.models.text_tower import text_features_op_by_op

    if detect_family(model).text is None:
        return model.encode_text
    tower = text_tower(model, name)
    if not decomposable(tower.transformer):
        return model.encode_text
    return functools.partial(text_features_op_by_op, tower)


def precision_agreement(loaded: LoadedModel, first: str = "fp32", second: str = "bf16") -> float:
    """Minimum cosine between the features of a fixed probe (8 images, 8 prompts) in two precisions."""
    images = _probe_images()
    feats = []
    for precision in (first, second):
        encoder = Encoder(loaded, batch_size=8, precision=precision)
        feats.append(np.concatenate([encoder.encode_images(images), encoder.encode_texts(list(_PROBE_TEXTS))]))
    return float(np.min(np.sum(feats[0] * feats[1], axis=1)))


def _probe_images() -> list[Image.Image]:
    """Four noise pictures and four smooth colour ramps, the same on every machine."""
    rng = np.random.default_rng(_PROBE_SEED)
    noise = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(4)]
    y, x = np.mgrid[0:96, 0:96] / 95.0
    ramps = [np.stack(channels, axis=-1) for channels in ((x, y, 1 - x), (y, 1 - y, x), (x * y, x, y), (1 - x, x, x))]
    return [Image.fromarray(a) for a in noise] + [Image.fromarray((255 * r).astype(np.uint8)) for r in ramps]


def _unit_rows(chunks: list[torch.Tensor], dim: int) -> np.ndarray:
    if not chunks:
        return np.zeros((0, dim), np.float32)
    feats = torch.nn.functional.normalize(torch.cat(chunks).float(), dim=-1)
    return np.ascontiguousarray(feats.cpu().numpy(), dtype=np.float32)
