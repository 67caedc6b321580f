"""Encoder: images and texts in, float32 L2-normalised (n, d) numpy arrays out."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from crossgap_index.errors import TruncatedTextWarning
from crossgap_index.models.factory import LoadedModel


class Encoder:
    """Batched, no-grad embedding with a loaded open_clip model."""

    def __init__(self, loaded: LoadedModel, batch_size: int = 64):
        self.loaded = loaded
        self.batch_size = batch_size
        self.dim = loaded.embed_dim

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
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Embed an already preprocessed (n, 3, H, W) batch."""
        out = [
            self._autocast(self.loaded.model.encode_image, pixels[i : i + self.batch_size])
            for i in range(0, len(pixels), self.batch_size)
        ]
        return _unit_rows(out, self.dim)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_pixels(self.image_tensor(images))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.loaded.tokenizer(list(texts[i : i + self.batch_size]))
            out.append(self._autocast(self.loaded.model.encode_text, tokens))
        return _unit_rows(out, self.dim)

    def _autocast(self, fn, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device)
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return fn(batch).float()
        return fn(batch).float()


def _unit_rows(chunks: list[torch.Tensor], dim: int) -> np.ndarray:
    if not chunks:
        return np.zeros((0, dim), np.float32)
    feats = torch.nn.functional.normalize(torch.cat(chunks).float(), dim=-1)
    return np.ascontiguousarray(feats.cpu().numpy(), dtype=np.float32)
