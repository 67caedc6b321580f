"""Model specs and device names, parsed and checked without importing torch or open_clip.

Kept apart from ``factory`` so that commands which never load a model (``cgx info``, ``--help``)
start without the seconds that importing torch costs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from crossgap_index.errors import ModelUnavailableError
from crossgap_index.models._registry import bundled_dir, bundled_names

DEFAULT_MODEL = "ViT-B-32/datacomp_xl_s13b_b90k"
MODEL_ENV_VAR = "CGX_MODEL"
RANDOM_TAG = "random"
# Weights are read only from safetensors: .bin/.pt/.pth checkpoints are pickles, which can run code.
SAFE_WEIGHTS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. ``canonical`` is what an index records and compares."""

    kind: str  # "bundled" | "pretrained" | "checkpoint" | "local-dir" | "random"
    arch: str
    source: str | None  # pretrained tag, checkpoint path, or folder

    @property
    def canonical(self) -> str:
        if self.kind == "bundled":
            return self.arch
        if self.kind == "local-dir":
            return str(self.source)
        return f"{self.arch}/{self.source}"


def default_model_spec() -> str:
    return os.environ.get(MODEL_ENV_VAR, DEFAULT_MODEL)


def parse_spec(spec: str) -> ModelSpec:
    """Parse a spec string without loading anything."""
    spec = spec.strip()
    if not spec:
        raise ModelUnavailableError("empty model spec")
    if bundled_dir(spec) is not None:
        return ModelSpec("bundled", spec, None)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise ModelUnavailableError(f"{spec}: a model folder needs open_clip_config.json beside its weights")
        return ModelSpec("local-dir", "local-dir", str(path.resolve()))
    if "::" in spec:
        arch, source = spec.split("::", 1)
    elif "/" in spec:
        arch, source = spec.split("/", 1)
    else:
        raise ModelUnavailableError(
            f"unknown model '{spec}': use ARCH/TAG (e.g. {DEFAULT_MODEL}), ARCH::/path/to/weights, "
            f"a model folder, or a bundled name ({', '.join(bundled_names())})"
        )
    if source == RANDOM_TAG:
        return ModelSpec("random", arch, RANDOM_TAG)
    source_path = Path(source).expanduser()
    if source_path.is_file():
        return ModelSpec("checkpoint", arch, str(source_path.resolve()))
    return ModelSpec("pretrained", arch, source)


def local_weights(spec: ModelSpec) -> Path | None:
    """The safetensors file a local spec loads (None for bundled, pretrained and random specs).

    A model folder without a safetensors file would make open_clip build the architecture on random
    weights without a word, and one holding only pickles would unpickle them: both are refused here.
    """
    if spec.kind == "checkpoint":
        file = Path(spec.source)
        if file.suffix.lower() != SAFE_WEIGHTS_SUFFIX:
            raise ModelUnavailableError(
                f"{file}: only .safetensors weights are loaded ({file.suffix or 'this file'} checkpoints are "
                "pickles, which can run code); convert it with safetensors.torch.save_file"
            )
        return file
    if spec.kind != "local-dir":
        return None
    folder = Path(spec.source)
    chosen = _open_clip_choice(folder)
    if chosen is not None and chosen.suffix == SAFE_WEIGHTS_SUFFIX:
        return chosen
    if chosen is not None:
        raise ModelUnavailableError(
            f"model folder {folder}: open_clip would load {chosen.name}, a pickle checkpoint, which is never "
            "loaded (pickles can run code): convert it to open_clip_model.safetensors"
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ModelUnavailableError(
            f"model folder {folder} has no weights file open_clip recognises, only {', '.join(pickles)} (a pickle, "
            "never loaded: pickles can run code); convert it to open_clip_model.safetensors"
        )
    raise ModelUnavailableError(
        f"model folder {folder} has open_clip_config.json but no weights file (open_clip_model.safetensors); "
        "refusing to build on random weights"
    )


# open_clip 3.x picks a folder's checkpoint in this order, then any .safetensors, .bin, .pth (sorted).
_OPEN_CLIP_PREFERRED = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)


def weights_file(spec: ModelSpec) -> Path | None:
    """The safetensors file on disk that ``spec``'s weights load from: a local file's or folder's
    (``local_weights``), or the one a bundled model ships; None for pretrained tags (open_clip fetches them), random
    specs, and a bundled model that ships no weights (tiny-random)."""
    if spec.kind != "bundled":
        return local_weights(spec)
    folder = bundled_dir(spec.arch)
    chosen = _open_clip_choice(folder) if folder is not None else None
    return chosen if chosen is not None and chosen.suffix == SAFE_WEIGHTS_SUFFIX else None


def _open_clip_choice(folder: Path) -> Path | None:
    """The weights file open_clip's ``local-dir:`` loader would pick in ``folder`` (None: it would pick none)."""
    found = {p.name: p for pattern in ("*.safetensors", "*.bin", "*.pth") for p in folder.glob(pattern)}
    for name in _OPEN_CLIP_PREFERRED:
        if name in found:
            return found[name]
    ranked = sorted(found.values(), key=lambda p: (p.suffix != SAFE_WEIGHTS_SUFFIX, p.name))
    return ranked[0] if ranked else None


def check_device(device: str) -> str:
    """``device`` if it names a torch device kind we can use (auto, cpu, cuda[:N], mps, xpu[:N])."""
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise ModelUnavailableError(f"unknown device '{device}': use auto, cpu, cuda, cuda:N or mps")
    return device
