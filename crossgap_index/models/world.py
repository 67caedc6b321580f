"""Whether images lie inside a bundled model's world, decided from the model's own image features.

``crossgap-small`` knows only its synthetic world of coloured shapes; on real photos it still returns
hits, confidently ranked and meaningless. A bundled model may ship ``world.safetensors``: the unit
image features of held-out pictures of its own world (written by ``benchmarks/world_reference.py``).
The rule, measured there (``benchmarks/results/first-run.md``): an image is *outside* the world when
its feature's nearest reference has cosine below ``OUTSIDE_COSINE``; an index is outside when more than
``OUTSIDE_SHARE`` of (a sample of) its images are. Zero-shot confidence over the model's vocabulary was
tried first and does not separate: colour alone gives real photos confident answers.

Torch-free (numpy and safetensors only), so ``cgx info`` and the server can ask cheaply.
"""

from __future__ import annotations

import numpy as np

from crossgap_index.models._registry import bundled_dir

WORLD_FILE = "world.safetensors"
WORLD_KEY = "image_features"
OUTSIDE_COSINE = 0.85
OUTSIDE_SHARE = 0.5
SAMPLE = 512  # images looked at per index: evenly spread ids
REAL_CLIP_HINT = (
    "for real photos use a real CLIP: --model ViT-B-32/datacomp_xl_s13b_b90k (downloaded once) "
    "or --model ViT-B-32::/path/to/weights.safetensors"
)


def world_reference(model: str) -> np.ndarray | None:
    """The reference image features of a bundled model's world (None: the model has no stated world)."""
    folder = bundled_dir(model)
    if folder is None or not (folder / WORLD_FILE).is_file():
        return None
    from safetensors.numpy import load_file

    return load_file(str(folder / WORLD_FILE))[WORLD_KEY].astype(np.float32)


def outside_mask(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """True for each row of ``vectors`` (unit image features) whose nearest reference is below the cut."""
    if len(vectors) == 0:
        return np.zeros(0, bool)
    return (np.asarray(vectors, np.float32) @ reference.T).max(axis=1) < OUTSIDE_COSINE


def world_note(model: str, outside: int, looked_at: int) -> str | None:
    """One line for a user whose images mostly lie outside ``model``'s world, else None."""
    if looked_at == 0 or outside <= OUTSIDE_SHARE * looked_at:
        return None
    return (
        f"{outside} of {looked_at} images look unlike anything {model} was trained on (its world is synthetic "
        f"coloured shapes), so its rankings of them mean little; {REAL_CLIP_HINT}"
    )
