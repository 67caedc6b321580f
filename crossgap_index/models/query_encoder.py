"""What a search embeds its queries with: a verified ONNX image tower where one serves, else the torch Encoder.

A one-shot ``cgx query IMAGE`` spends most of its time importing torch and open_clip and building the model.
Where the index allows fp32 query features on the CPU (below) and its ``query-towers/`` folder holds a tower
that passes its probe (``onnx_towers.py``), image queries are embedded by ONNX Runtime and the process imports
no torch, unless the mode needs the model itself (inversion, a projection still to fit, text queries: the
tokenizer lives in open_clip). Everything else goes to the torch ``Encoder``, built on first need. A process
that already holds the torch model keeps using it, so an index's own writer embeds exactly as before.

When an image query in a process that started without torch had to import it, the tower is exported and verified
right after it (once per index and weights; a refusal is recorded and not retried), so the next such process starts
light. A process that already holds torch (a server, a build, a test) is not the one a tower would spare and
exports nothing.

ONNX is allowed when the device is the CPU (``cpu``, or ``auto`` on a machine where CUDA cannot be present),
``precision`` is ``auto`` or ``fp32``, and fp32 features may search the index's vectors: they are fp32 or
mixed, or the model's recorded fp32/bf16 probe agreement meets ``MIX_MIN_COSINE`` (crossgap_index.precision).
``CGX_QUERY_TOWERS=torch`` turns the path off.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from crossgap_index.models.onnx_towers import ImageTower, export_image_tower, load_image_tower, needs_export
from crossgap_index.precision import MIX_MIN_COSINE, MIXED

SWITCH_ENV_VAR = "CGX_QUERY_TOWERS"


@dataclass(frozen=True)
class TowerSource:
    """Where an index's tower lives (``towers``: None where the ONNX path is not allowed), the model and feature
    dimension it must serve, and whether a tower may be exported there after an image query that loaded torch."""

    towers: Path | None
    model: str
    dim: int
    export: bool


class QueryEncoder:
    """The ``Encoder`` interface a Searcher uses, with image queries on the ONNX tower where it serves.

    ``torch_encoder`` builds (or returns) the torch Encoder; ``torch_loaded`` says whether it is built already."""

    def __init__(self, torch_encoder: Callable, torch_loaded: Callable[[], bool], source: TowerSource):
        self._torch = torch_encoder
        self._torch_loaded = torch_loaded
        self._source = source
        self._lock = threading.Lock()
        self._tower: ImageTower | None = None
        self._decided = self._export_tried = False

    @property
    def serves_images_without_torch(self) -> bool:
        """Whether image queries run on the ONNX tower in this process."""
        return self._image_tower() is not None

    @property
    def input_size(self) -> int | None:
        tower = self._image_tower()
        return tower.recipe.input_size if tower is not None else self._torch().input_size

    @property
    def query_batch_size(self) -> int:
        """Each query alone on the ONNX tower (its vector never depends on its neighbours), else the Encoder's."""
        return 1 if self._image_tower() is not None else self._torch().query_batch_size

    def encode_images(self, images: Sequence[Image.Image], batch_size: int | None = None) -> np.ndarray:
        if not images:
            return np.zeros((0, self._source.dim), np.float32)
        tower = self._image_tower()
        if tower is not None:
            return tower.encode(images, batch_size or 1)
        encoder = self._torch()
        features = encoder.encode_images(images, batch_size)
        self._export_after_torch(encoder)
        return features

    def __getattr__(self, name: str):
        """Everything else (texts, ``loaded`` for inversion, ``precision``, ``dim``) is the torch Encoder's."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._torch(), name)

    def _image_tower(self) -> ImageTower | None:
        if not self._decided:
            with self._lock:
                if not self._decided:
                    if self._source.towers is not None and not self._torch_loaded():
                        self._tower = load_image_tower(self._source.towers, self._source.model)
                    self._decided = True
        return self._tower

    def _export_after_torch(self, encoder) -> None:
        """Export and verify the tower for the next process (once; a read-only or full disk only skips it)."""
        with self._lock:
            towers, model = self._source.towers, self._source.model
            if self._export_tried or towers is None or not self._source.export:
                return
            self._export_tried = True
            if encoder.device.type != "cpu" or not _importable("onnxruntime", "onnx"):
                return
            if not needs_export(towers, model):
                return
            with contextlib.suppress(
                OSError
            ):  # read-only or full disk: the query is answered, the next one tries again
                export_image_tower(encoder.loaded, towers)


def _importable(*names: str) -> bool:
    """Whether every module imports (the exporter needs onnx, the check onnxruntime; absent, nothing is recorded,
    so installing them later still exports)."""
    try:
        for name in names:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


def onnx_allowed(device: str, precision: str, stored: str, agreement: float | None) -> bool:
    """Whether fp32 query features from the CPU may serve an index (the rule in the module docstring)."""
    if os.environ.get(SWITCH_ENV_VAR, "").strip().lower() == "torch":
        return False
    if device != "cpu" and (device != "auto" or cuda_possible()):
        return False
    if precision not in ("auto", "fp32"):
        return False
    return stored in ("fp32", MIXED) or (agreement is not None and agreement >= MIX_MIN_COSINE)


def cuda_possible() -> bool:
    """False only where no CUDA device can exist (no NVIDIA device node on Linux, macOS): there ``auto`` is the
    CPU without asking torch. Elsewhere the answer needs torch, so the query takes the torch path."""
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        return any(Path(node).exists() for node in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg"))
    return True


def query_encoder_for(
    index_path: Path, manifest, device: str, precision: str, torch_encoder: Callable, torch_loaded: Callable[[], bool]
) -> QueryEncoder:
    """The QueryEncoder of an opened index (``manifest``: its model, dim, precision and recorded agreement)."""
    from crossgap_index.models.onnx_towers import towers_dir

    allowed = onnx_allowed(device, precision, manifest.precision, manifest.precision_agreement)
    towers = towers_dir(index_path) if allowed else None
    export = "torch" not in sys.modules and os.access(index_path, os.W_OK)
    return QueryEncoder(torch_encoder, torch_loaded, TowerSource(towers, manifest.model, manifest.dim, export))
