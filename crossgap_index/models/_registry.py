"""Models bundled inside the package, loadable offline by name.

Each bundled model is an open_clip ``local-dir`` folder (``open_clip_config.json`` and,
when trained, ``open_clip_model.safetensors``) under ``models/bundled/``, so it loads
through exactly the code path of a downloaded open_clip checkpoint. A folder here is registered by
existing: ``crossgap-small`` (the synthetic world), ``crossgap-fashion`` (Fashion-MNIST's train split; both
trained by ``benchmarks/train_small.py``, see their MODEL_CARD.md) and ``tiny-random`` (a config only).
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).parent / "bundled"

# Seed for bundled configs that ship without weights: the random init is reproducible.
RANDOM_INIT_SEED = 0


def bundled_names() -> list[str]:
    """Names of the models shipped with the package, e.g. ``tiny-random``."""
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "open_clip_config.json").is_file())


def bundled_dir(name: str) -> Path | None:
    """The folder of a bundled model, or None when ``name`` is not bundled.

    Only a plain name counts: ``BUNDLED_DIR / "/some/folder"`` would be that folder itself, and a user's
    model folder taken for a bundled one would be allowed to load without weights."""
    if not name or name != Path(name).name or name in (".", ".."):
        return None
    folder = BUNDLED_DIR / name
    return folder if (folder / "open_clip_config.json").is_file() else None
