"""OTI and OVI: one optimisation loop, two feature functions (fast path or oracle) per modality.

Each query gets its own init, drawn from a generator seeded with the query's int seed, and
its own loss term (the batch loss is their sum); AdamW is element-wise. So a query's result
does not depend on its batch neighbours, and batching is a speed choice only.

Rounding, too: bf16 matmul kernels round a row differently with the batch's shape (its row count),
which made a query's bf16 result depend on how many neighbours it came with (6 of 64 top-5 lists
changed). In bf16 every query therefore runs in a chunk of exactly ``lane`` rows, the last chunk
padded with copies of its last query: same shape, same rounding, whatever the batch. The lanes are
sized by cost (ViT-B-32 bf16 on CPU, benchmarks/results/server.md): the text tower gains from
batching (8 rows cost 1.6x one), the image tower does not (its cost grows linearly with rows).
fp32 runs in ``batch_size`` chunks; its batch-to-batch differences are ~1e-7.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from crossgap_index.errors import QueryError
from crossgap_index.inversion import compiled as compiled_step
from crossgap_index.inversion.config import InversionConfig
from crossgap_index.inversion.threads import running_on, step_flops, step_threads
from crossgap_index.models.factory import LoadedModel
from crossgap_index.models.family import FeatureFn, text_tower, vision_tower
from crossgap_index.models.text_tower import fast_text_features, reference_text_features, tokenize_prompt
from crossgap_index.models.vision_tower import fast_image_features, fill_index, reference_image_features
from crossgap_index.precision import dtype_of

Progress = Callable[[int, float], None]
OTI_LANE = 8  # bf16 rows per OTI chunk (the text tower)
OVI_LANE = 1  # bf16 rows per OVI chunk (the image tower)


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What the loop runs: the feature function, one query's pseudo-token shape, and one query's arithmetic per
    step (FLOPs, forward and backward), which sets the loop's threads."""

    features: FeatureFn
    shape: tuple[int, int]
    query_flops: float
    losses: compiled_step.Losses | None = None  # the compiled step (forward, loss, backward), where it compiles
    dim: int = 0  # the features' dimension (set beside a compiled step, whose graph cannot raise _losses' check)


@torch.inference_mode(False)  # callers may sit in inference mode; inversion needs autograd
def oti(
    loaded: LoadedModel,
    image_features: np.ndarray,
    config: InversionConfig,
    seeds: Sequence[int],
    progress: Progress | None = None,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """Invert image features into text features (float32 unit rows (n, d)) to search images inter-modally.

    ``seeds`` holds one int per query (derive it from the query's content so that the result
    is reproducible). ``progress(step, mean_loss)`` is called after every optimisation step,
    with ``step`` counted across chunks up to ``ceil(n / chunk) * oti_steps`` (chunk: ``batch_size`` in fp32,
    ``OTI_LANE`` in bf16).
    ``init`` (n, R, token width), when given, replaces the random start (an inverter's output: mode warm).
    ``final_losses(result, image_features)`` gives each query's loss at the returned feature.
    """
    config = config.resolved(loaded)
    setup = _setup(loaded, config, "oti")
    if init is not None and tuple(np.shape(init)) != (len(image_features), *setup.shape):
        raise QueryError(f"OTI init must have shape {(len(image_features), *setup.shape)}, got {tuple(np.shape(init))}")
    return _invert(setup, image_features, config, config.oti_steps, seeds, loaded.device, progress, init, OTI_LANE)


@torch.inference_mode(False)
def ovi(
    loaded: LoadedModel,
    text_features: np.ndarray,
    config: InversionConfig,
    seeds: Sequence[int],
    progress: Progress | None = None,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """Invert text features into image features (float32 unit rows) to search texts inter-modally; as ``oti``.

    ``init`` (n, P, patch width), when given, replaces the random start (a text inverter's output: mode warm).
    """
    config = config.resolved(loaded)
    setup = _setup(loaded, config, "ovi")
    if init is not None and tuple(np.shape(init)) != (len(text_features), *setup.shape):
        raise QueryError(f"OVI init must have shape {(len(text_features), *setup.shape)}, got {tuple(np.shape(init))}")
    return _invert(setup, text_features, config, config.ovi_steps, seeds, loaded.device, progress, init, OVI_LANE)


@torch.inference_mode(False)
def inversion_path(
    loaded: LoadedModel,
    targets: np.ndarray,
    config: InversionConfig,
    seeds: Sequence[int],
    direction: str,
    steps: Sequence[int],
) -> dict[int, np.ndarray]:
    """The features an OTI (``direction`` 'oti') or OVI ('ovi') run passes through at each of ``steps``.

    One optimisation up to ``max(steps)``: AdamW has no schedule, so the feature at step s is exactly what
    a run with s steps returns (same seeds, same init). A step sweep then costs one run, not one per point.
    """
    wanted = sorted({int(s) for s in steps})
    if not wanted or wanted[0] < 0:
        raise QueryError("inversion_path needs step counts >= 0")
    if direction not in ("oti", "ovi"):
        raise QueryError(f"unknown inversion direction {direction!r}: use oti or ovi")
    config = config.resolved(loaded)
    setup, lane = _setup(loaded, config, direction), OTI_LANE if direction == "oti" else OVI_LANE
    # the served lanes, so that a sweep point equals what a query with that many steps is served
    return _invert(setup, targets, config, wanted[-1], seeds, loaded.device, None, None, lane, wanted)


def _setup(loaded: LoadedModel, config: InversionConfig, direction: str) -> _Setup:
    """The loop's setup for ``direction``. Where the config compiles: on CUDA its feature function compiled; on the
    CPU the one this process keeps for these settings, with its compiled step (inversion/compiled.py)."""
    build = _oti_setup if direction == "oti" else _ovi_setup
    if not config.compiles(loaded.device):
        return build(loaded, config)
    if loaded.device.type == "cuda":
        setup = build(loaded, config)
        return dataclasses.replace(setup, features=torch.compile(setup.features))
    precision = config.precision_on(loaded)
    key = (direction, config.template, config.n_tokens, config.n_patches, precision)

    def with_step() -> _Setup:
        setup = build(loaded, config)
        features, dtype = setup.features, dtype_of(precision)
        with torch.no_grad():
            dim = features(torch.zeros(1, *setup.shape, dtype=dtype, device=loaded.device)).shape[-1]
        step = compiled_step.compiled(lambda p, t: _losses(features, p, t, dtype))
        return dataclasses.replace(setup, losses=step, dim=int(dim))

    return compiled_step.kept(loaded.model_in(precision), key, with_step)


def _ovi_setup(loaded: LoadedModel, config: InversionConfig) -> _Setup:
    """OVI's feature function (fast path or oracle) and the shape of one query's pseudo-patches."""
    tower = vision_tower(loaded.model_in(config.precision_on(loaded)), loaded.spec.canonical)
    n_patches = config.n_patches or tower.default_patches
    if n_patches > tower.n_grid:
        raise QueryError(f"n_patches={n_patches} exceeds the {tower.n_grid} patches of the image tower")
    index = fill_index(n_patches, tower.n_grid, loaded.device)
    with torch.no_grad():
        features = fast_image_features(tower, index) if config.fast else reference_image_features(tower, index)
    return _Setup(features, (n_patches, tower.width), step_flops(tower.module, tower.n_grid + 1))


def _oti_setup(loaded: LoadedModel, config: InversionConfig) -> _Setup:
    """OTI's feature function (fast path or oracle) and the shape of one query's pseudo-tokens."""
    name = loaded.spec.canonical
    tower = text_tower(loaded.model_in(config.precision_on(loaded)), name)
    with torch.no_grad():
        prompt = tokenize_prompt(loaded.tokenizer, config.template, config.n_tokens, tower, name, loaded.device)
        features = fast_text_features(tower, prompt) if config.fast else reference_text_features(tower, prompt)
    causal = tower.attn_mask is not None and config.fast  # the fast causal path runs placeholders..pool only
    rows = prompt.pool + 1 - prompt.start if causal else prompt.ids.shape[1]
    return _Setup(features, (config.n_tokens, tower.token_embedding.embedding_dim), step_flops(tower.transformer, rows))


def oti_reference(
    loaded: LoadedModel,
    image_features: np.ndarray,
    config: InversionConfig,
    seeds: Sequence[int],
    progress: Progress | None = None,
) -> np.ndarray:
    """``oti`` through the oracle (full context, fp32, everything recomputed): what the fast path must match."""
    return oti(loaded, image_features, _oracle(config), seeds, progress)


def ovi_reference(
    loaded: LoadedModel,
    text_features: np.ndarray,
    config: InversionConfig,
    seeds: Sequence[int],
    progress: Progress | None = None,
) -> np.ndarray:
    """``ovi`` through the oracle: what the fast path must match."""
    return ovi(loaded, text_features, _oracle(config), seeds, progress)


def final_losses(features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-query loss 1 - cos(inverted feature, target) of a finished inversion."""
    targets = np.asarray(targets, np.float32)
    unit = targets / np.maximum(np.linalg.norm(targets, axis=1, keepdims=True), 1e-12)
    return (1.0 - np.sum(np.asarray(features, np.float32) * unit, axis=1)).astype(np.float32)


def _oracle(config: InversionConfig) -> InversionConfig:
    return dataclasses.replace(config, fast=False, precision="fp32", compile=False)


def _invert(
    setup: _Setup,
    targets: np.ndarray,
    config: InversionConfig,
    steps: int,
    seeds: Sequence[int],
    device: torch.device,
    progress: Progress | None,
    init: np.ndarray | None = None,
    lane: int = 1,
    snapshots: Sequence[int] | None = None,
):
    """Split the queries into chunks and run the shared loop on each (from ``init`` when given).

    ``config`` is resolved (its precision fp32 or bf16). In bf16 every chunk has exactly ``lane`` rows (padded),
    so a query's rounding is batch-independent. With ``snapshots``: a dict step -> features at that step
    (``steps`` is the last of them)."""
    targets = np.asarray(targets, dtype=np.float32)
    if targets.ndim != 2:
        raise QueryError(f"inversion targets must be an (n, d) array, got shape {targets.shape}")
    if len(seeds) != len(targets):
        raise QueryError(f"got {len(seeds)} seeds for {len(targets)} queries; give one seed per query")
    shape = setup.shape
    precision = config.precision
    dtype = dtype_of(precision)
    chunk = _chunk_rows(config, lane)
    rows = min(chunk, len(targets)) if precision == "fp32" else chunk  # a bf16 chunk is always a whole lane
    threads = step_threads(config.cpu_threads, rows * setup.query_flops, device) if config.fast else 0
    out = []
    with running_on(threads):
        for first in range(0, len(targets), chunk):
            batch = slice(first, first + chunk)
            if init is None:
                start = torch.stack([_init(seed, shape, config.init_std) for seed in seeds[batch]]).to(device)
            else:
                start = torch.as_tensor(np.asarray(init[batch], np.float32), device=device)
            target = F.normalize(torch.from_numpy(targets[batch].copy()).to(device), dim=-1)
            real = len(target)
            if precision == "bf16" and real < chunk:  # pad to the lane: the same shape for every query
                start, target = _padded(start, chunk), _padded(target, chunk)
            offset = (first // chunk) * steps
            taken = snapshots or [steps]
            out.append(_optimise(setup, start, target, config, steps, dtype, progress, offset, real, taken))
    if snapshots is None:
        return _stack([batch[steps] for batch in out], targets.shape[1])
    return {s: _stack([batch[s] for batch in out], targets.shape[1]) for s in snapshots}


def _chunk_rows(config: InversionConfig, lane: int) -> int:
    """Queries inverted together: ``lane`` rows in bf16 (batch-independent rounding), else ``batch_size``."""
    if config.precision == "auto":
        raise ValueError("the inversion loop runs a resolved config: InversionConfig.resolved(loaded)")
    return lane if config.precision == "bf16" else config.batch_size


def progress_total(n: int, config: InversionConfig, direction: str) -> int:
    """The step count ``progress`` reaches when ``n`` queries invert (``direction`` oti or ovi) with ``config``
    resolved (``InversionConfig.resolved``): each chunk of queries runs all its steps, one chunk after another."""
    steps, lane = (config.oti_steps, OTI_LANE) if direction == "oti" else (config.ovi_steps, OVI_LANE)
    chunk = _chunk_rows(config, lane)
    return -(-n // chunk) * steps


def _stack(parts: list[torch.Tensor], dim: int) -> np.ndarray:
    if not parts:
        return np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(torch.cat(parts).cpu().numpy(), dtype=np.float32)


def _optimise(
    setup: _Setup,
    init: torch.Tensor,
    target: torch.Tensor,
    config: InversionConfig,
    steps: int,
    dtype: torch.dtype,
    progress: Progress | None,
    offset: int,
    real: int,
    snapshots: Sequence[int],
) -> dict[int, torch.Tensor]:
    """AdamW on the per-query sum of 1 - cos(feature(v), target); the unit features of the first ``real``
    rows (the rest pad the chunk to its lane) after each step of ``snapshots`` (the last step's among them).

    ``params`` are the fp32 master copy AdamW updates; the model sees them cast to ``dtype``. Where the setup
    holds a compiled step, it runs the losses and their backward, beside AdamW's fused kernel; the features
    returned are the eager function's of the optimised pseudo-tokens either way.
    """
    taken: dict[int, torch.Tensor] = {}
    features = setup.features
    if setup.losses is None:
        losses_of = functools.partial(_losses, features, dtype=dtype)
    elif target.shape[1] != setup.dim:
        raise QueryError(f"inversion targets have dimension {target.shape[1]}, the model's features {setup.dim}")
    else:
        losses_of = setup.losses

    def snapshot(step: int) -> None:
        if step in snapshots:
            with torch.no_grad():
                taken[step] = F.normalize(features(params.to(dtype)).float(), dim=-1)[:real]

    with torch.enable_grad():
        params = init.clone().requires_grad_(True)
        optimizer = compiled_step.optimizer(params, config.lr, config.weight_decay, fused=setup.losses is not None)
        snapshot(0)
        for step in range(1, steps + 1):
            losses = losses_of(params, target)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            if progress is not None:
                progress(offset + step, float(losses.detach()[:real].mean()))
            snapshot(step)
    return taken


def _losses(features: FeatureFn, params: torch.Tensor, target: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-query 1 - cos in fp32, whatever the model's dtype."""
    out = features(params.to(dtype)).float()
    if out.shape != target.shape:
        raise QueryError(f"inversion targets have dimension {target.shape[1]}, the model's features {out.shape[1]}")
    return 1.0 - (F.normalize(out, dim=-1) * target).sum(dim=-1)


def _padded(rows: torch.Tensor, size: int) -> torch.Tensor:
    """``rows`` followed by copies of its last row, ``size`` rows in all."""
    return torch.cat([rows, rows[-1:].expand(size - len(rows), *rows.shape[1:])])


def _init(seed: int, shape: tuple[int, int], std: float) -> torch.Tensor:
    """N(0, std^2) from a CPU generator seeded by the query alone (device-independent)."""
    generator = torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return torch.randn(shape, generator=generator) * std
