"""Encoder: images and texts in, float32 L2-normalised (n, d) numpy arrays out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

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
