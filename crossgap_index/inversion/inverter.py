"""Amortised inversion: a small network that predicts a query's pseudo-tokens (or pseudo-patches) in one pass.

Implemented from the SEARLE paper's description (Baldrati et al., ICCV 2023), not from its code: an MLP
phi: feature (d) -> 4d -> 4d -> R x width, GELU, dropout 0.5, trained end to end through a frozen tower
with the inversion objective on the index's own features (no labels). Two directions, mirror images:
  * ``oti`` (image queries): phi(image feature) are R pseudo-token embeddings; the frozen text tower turns
    them into a text feature; loss 1 - cos(text_feature(phi(f)), f) over the gallery's images;
  * ``ovi`` (text queries): phi(text feature) are P pseudo-patches filling the ViT's patch grid (as OVI's);
    the frozen image tower turns them into an image feature; loss 1 - cos(image_feature(phi(t)), t) over
    the index's texts.
Modes: ``inverter`` (phi's output through the tower: one forward pass) and ``warm`` (phi's output as the
start of a few OTI / OVI steps). Weights, direction and settings live in one safetensors file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crossgap_index.errors import QueryError, StoreError
from crossgap_index.inversion.checkpoint import TrainingInterrupted, TrainingState, load_state, run_identity, save_state
from crossgap_index.inversion.threads import running_on, step_flops, step_threads
from crossgap_index.models.factory import LoadedModel
from crossgap_index.models.family import FeatureFn, text_tower, vision_tower
from crossgap_index.models.text_tower import fast_text_features, tokenize_prompt
from crossgap_index.models.vision_tower import fast_image_features, fill_index
from crossgap_index.words import EpochProgress

FORMAT = "crossgap-inverter/1"
# A saved network is tens of MB (ViT-L/14: about 60 MB); a file far larger is not one, and is refused unread.
MAX_INVERTER_BYTES = 1 << 30
DIRECTIONS = ("oti", "ovi")  # image -> text-space (pseudo-tokens), text -> image-space (pseudo-patches)
# Training steps (of 128 items) measured on development seeds: the OTI network peaks at 48 and then decays
# (benchmarks/RESULTS.md); the OVI network was still improving at 128 (16: -22.7, 48: -1.1, 128: +1.2 mAP over
# intra on seed 21, benchmarks/results/text.md), so 128, where its training stays near 2 minutes of CPU.
DEFAULT_STEPS = {"oti": 48, "ovi": 128}
# progress(step, total_steps, mean_loss)


@dataclass(frozen=True)
class InverterConfig:
    """Training settings. ``steps`` is a quality knob, as OTI's step count is: trained long, phi learns to
    reproduce the image feature itself and retrieval falls back to intra-modal quality, so training stops
    after a measured number of steps (benchmarks/RESULTS.md). ``max_seconds`` bounds the time besides.
    ``direction``: ``oti`` (image queries; ``n_tokens`` pseudo-tokens spliced into ``template``) or ``ovi``
    (text queries; ``n_tokens`` pseudo-patches, None: the model's OVI default; ``template`` unused)."""

    n_tokens: int | None = 1
    template: str = "a photo of {}"
    steps: int = 48
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    dropout: float = 0.5
    seed: int = 0
    max_seconds: float | None = None
    direction: str = "oti"

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise QueryError(f"inverter: direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        if self.n_tokens is None and self.direction == "oti":
            raise QueryError("inverter: an OTI inverter needs n_tokens >= 1")
        if (self.n_tokens is not None and self.n_tokens < 1) or self.steps < 1 or self.batch_size < 1:
            raise QueryError("inverter: n_tokens, steps and batch_size must be >= 1")
        if not self.lr > 0 or not 0.0 <= self.dropout < 1.0 or self.weight_decay < 0:
            raise QueryError("inverter: lr must be > 0, dropout in [0, 1), weight_decay >= 0")
        if self.template.count("{}") != 1:
            raise QueryError(f"inverter: template must contain '{{}}' exactly once, got {self.template!r}")
        seconds = self.max_seconds
        if seconds is not None and (isinstance(seconds, bool) or not math.isfinite(seconds) or seconds <= 0):
            raise QueryError(f"inverter: max_seconds must be a positive number of seconds, got {seconds!r}")


class InverterNet(nn.Module):
    """phi: d -> 4d -> 4d -> R x width (SEARLE's shape)."""

    def __init__(self, dim: int, width: int, n_tokens: int, dropout: float = 0.5):
        super().__init__()
        hidden = 4 * dim
        self.n_tokens, self.width = n_tokens, width
        self.layers = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_tokens * width),
        )
        nn.init.normal_(self.layers[-1].weight, std=0.02 / hidden**0.5)  # start near OTI's N(0, 0.02^2) init
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).view(len(features), self.n_tokens, self.width)


class Inverter:
    """A trained phi for one model, with the settings it was trained with (``config.direction`` says which way)."""

    def __init__(self, net: InverterNet, model: str, config: InverterConfig, stats: dict | None = None):
        self.net = net.eval()
        self.model = model
        self.config = config
        self.stats = stats or {}

    @property
    def cut_short(self) -> bool:
        """Whether training stopped (``max_seconds``) before the steps it was asked for."""
        return self.stats.get("steps", self.config.steps) < self.config.steps

    @property
    def fingerprint(self) -> str:
        digest = hashlib.blake2b(digest_size=8)
        for tensor in self.net.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes())
        return digest.hexdigest()

    @property
    def direction(self) -> str:
        return self.config.direction

    @property
    def query_modality(self) -> str:
        """The queries this network inverts: ``image`` (OTI) or ``text`` (OVI)."""
        return "image" if self.direction == "oti" else "text"

    @torch.inference_mode()
    def tokens(self, features: np.ndarray) -> np.ndarray:
        """Pseudo-tokens (n, R, width) for unit image features, or pseudo-patches (n, P, width) for text ones.
        Row by row (a row of this small network costs microseconds), so a row's rounding, and the warm mode's
        start, never depend on the batch it came in."""
        x = torch.from_numpy(np.ascontiguousarray(features, np.float32)).to(next(self.net.parameters()).device)
        if len(x) == 0:
            return self.net(x).float().cpu().numpy()
        return torch.cat([self.net(x[i : i + 1]) for i in range(len(x))]).float().cpu().numpy()

    @torch.inference_mode()
    def features(self, loaded: LoadedModel, features: np.ndarray) -> np.ndarray:
        """One pass: phi's output through the other frozen tower; unit float32 features of the other modality."""
        feature_fn, _, _ = _feature_fn(loaded, self.config)
        tokens = torch.from_numpy(self.tokens(features)).to(loaded.device)
        return np.ascontiguousarray(F.normalize(feature_fn(tokens).float(), dim=-1).cpu().numpy(), np.float32)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        meta = {
            "format": FORMAT,
            "model": self.model,
            "config": json.dumps(dataclasses.asdict(self.config)),
            "dim": str(self.net.layers[0].in_features),
            "width": str(self.net.width),
            "n_out": str(self.net.n_tokens),
            "stats": json.dumps(self.stats),
        }
        tmp = path.with_name(path.name + ".tmp")
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}, str(tmp), meta)
            tmp.replace(path)
        except BaseException:  # a full disk: the stored network stays, no .tmp is left
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path, model: str, device: torch.device | str = "cpu", direction: str = "oti") -> Inverter:
        """Load a saved inverter; refuses (one line) a file for another model, another direction (a file that
        names no direction is an OTI one) or in another format."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        _check_inverter_file(path)
        try:
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
            weights = load_file(str(path))
            if meta.get("format") != FORMAT:
                raise StoreError(f"{path}: not a crossgap inverter file")
            if meta.get("model") != model:
                raise StoreError(f"{path}: inverter trained for model '{meta.get('model')}', index uses '{model}'")
            config = InverterConfig(**json.loads(meta["config"]))
            if config.direction != direction:
                raise StoreError(f"{path}: inverter trained for {config.direction.upper()}, not {direction.upper()}")
            n_out = int(meta.get("n_out", config.n_tokens or 0))
            net = InverterNet(int(meta["dim"]), int(meta["width"]), n_out, config.dropout)
            net.load_state_dict(weights)
        except (OSError, SafetensorError, KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise StoreError(f"{path}: unreadable inverter ({str(exc).splitlines()[0][:200]})") from exc
        return cls(net.to(device), model, config, json.loads(meta.get("stats", "{}")))


def _check_inverter_file(path: Path) -> None:
    """Refuse, before any byte is read, what cannot be a saved network: a FIFO (opening it would wait for a
    writer), a device or a link to one (/dev/zero), or a file over MAX_INVERTER_BYTES."""
    try:
        info = os.stat(path)  # follows links: a link to /dev/zero is a character device
    except OSError as exc:
        raise StoreError(f"{path}: unreadable inverter ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"{path}: not a regular file, not read")
    if info.st_size > MAX_INVERTER_BYTES:
        raise StoreError(f"{path}: {info.st_size} bytes, more than an inverter file holds; not read")


def _feature_fn(loaded: LoadedModel, config: InverterConfig) -> tuple[FeatureFn, tuple[int, int], float]:
    """The frozen tower phi's output goes through, the (count, width) of that output per query, and one item's
    arithmetic through the tower per training step (FLOPs, which set the training's threads)."""
    name = loaded.spec.canonical
    if config.direction == "ovi":
        vision = vision_tower(loaded.model, name)
        n_patches = config.n_tokens or vision.default_patches
        if n_patches > vision.n_grid:
            raise QueryError(f"inverter: {n_patches} pseudo-patches exceed the {vision.n_grid} patches of {name}")
        with torch.no_grad():
            features = fast_image_features(vision, fill_index(n_patches, vision.n_grid, loaded.device))
        return features, (n_patches, vision.width), step_flops(vision.module, vision.n_grid + 1)
    tower = text_tower(loaded.model, name)
    with torch.no_grad():
        prompt = tokenize_prompt(loaded.tokenizer, config.template, config.n_tokens, tower, name, loaded.device)
        features = fast_text_features(tower, prompt)
    rows = prompt.pool + 1 - prompt.start if tower.attn_mask is not None else prompt.ids.shape[1]
    return features, (config.n_tokens, tower.token_embedding.embedding_dim), step_flops(tower.transformer, rows)


@torch.inference_mode(False)
def train_inverter(
    loaded: LoadedModel,
    features: np.ndarray,
    config: InverterConfig | None = None,
    progress: EpochProgress | None = None,
    checkpoint: Path | None = None,
) -> Inverter:
    """Train phi on unit features (n, d) of the queries' modality (images for ``oti``, texts for ``ovi``) with
    the inversion objective through the other, frozen tower. ``checkpoint``: where a run cut short by Ctrl-C
    (KeyboardInterrupt) keeps its state, and where the same run (model, settings, features) resumes from; it is
    removed once the network is trained (inversion/checkpoint.py)."""
    config = config or InverterConfig()
    feats = np.array(features, np.float32)  # a writable copy for torch
    kind = "image" if config.direction == "oti" else "text"
    if feats.ndim != 2 or len(feats) < 2:
        raise QueryError(f"inverter training needs at least 2 {kind} features, got shape {feats.shape}")
    device = loaded.device
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    feature_fn, (n_out, width), item_flops = _feature_fn(loaded, config)
    threads = step_threads(None, config.batch_size * item_flops, device)
    net = InverterNet(feats.shape[1], width, n_out, config.dropout).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    data = torch.from_numpy(feats).to(device)
    start, losses, spent = time.perf_counter(), [], 0.0
    order = torch.randperm(len(data), generator=generator)
    position, first = 0, 1
    run = {k: v for k, v in dataclasses.asdict(config).items() if k != "max_seconds"}  # a bound, not the run
    identity = run_identity(loaded.spec.canonical, run, feats)
    saved = load_state(checkpoint, identity) if checkpoint is not None else None
    if saved is not None:  # the same run, cut short: on from where it stopped
        net.load_state_dict(saved.net)
        optimizer.load_state_dict(saved.optimizer)
        generator.set_state(saved.generator)
        torch.set_rng_state(saved.torch_rng)
        order, position, losses, spent, first = saved.order, saved.position, saved.losses, saved.seconds, saved.step + 1
    net.train()
    between_steps = True  # a checkpoint keeps only whole steps
    try:
        with torch.enable_grad(), running_on(threads):
            for step in range(first, config.steps + 1):
                between_steps = False
                if position + config.batch_size > len(order):  # a new epoch: reshuffle
                    order, position = torch.randperm(len(data), generator=generator), 0
                batch = data[order[position : position + config.batch_size].to(device)]
                position += config.batch_size
                out = F.normalize(feature_fn(net(batch)).float(), dim=-1)
                loss = (1.0 - (out * batch).sum(dim=-1)).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                between_steps = True
                if progress is not None:
                    progress(step, config.steps, losses[-1])
                if config.max_seconds is not None and time.perf_counter() - start + spent > config.max_seconds:
                    break
    except KeyboardInterrupt:
        if checkpoint is None or not between_steps or not losses:
            raise
        seconds = time.perf_counter() - start + spent
        state = TrainingState(
            len(losses), position, order, losses, seconds, net.state_dict(), optimizer.state_dict(),
            generator.get_state(), torch.get_rng_state(),
        )  # fmt: skip
        save_state(checkpoint, identity, state)
        raise TrainingInterrupted(len(losses), config.steps, checkpoint) from None
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    stats = {
        "steps": len(losses),
        "final_loss": losses[-1] if losses else None,
        "seconds": round(time.perf_counter() - start + spent, 3),
        "images" if kind == "image" else "texts": len(feats),
        "direction": config.direction,
    }
    return Inverter(net.eval(), loaded.spec.canonical, config, stats)
