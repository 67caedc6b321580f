"""A model's image tower run through ONNX Runtime, so that a query needing no inversion embeds without torch.

Importing torch and open_clip costs seconds; ONNX Runtime with numpy and PIL (``pixels.py``) a fraction. The
tower is exported from the torch model in fp32 once per index (by the first process that loads the torch model
to embed a query image, or by ``export_image_tower`` directly) into ``<index>/query-towers/``: the ONNX file,
then a JSON sidecar naming the model, the preprocessing recipe and a probe. It is trusted only where:

* at export, its features of a fixed probe (8 pictures, each through both preprocessing paths) agree with the
  torch fp32 encoder to cosine ``MIN_COSINE`` or better; otherwise the sidecar records the refusal (and the
  reason) so later queries do not try again, and queries keep torch;
* at each load, it reproduces the torch tower's feature of a fixed probe input recorded at export to the same
  cosine, so a damaged or swapped file is never used (the query falls back to torch).

Files are written atomically (a temporary name, then ``os.replace``), the sidecar last.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from crossgap_index.models.pixels import PixelRecipe, recipe_of
from crossgap_index.models.spec import parse_spec, weights_file

TOWERS_DIR = "query-towers"
IMAGE_MODEL = "image.onnx"
IMAGE_SIDECAR = "image.json"
FORMAT = 3  # 3: the probe input is a hash of each position (1 drew it from numpy.random, whose import cost a query)
# fp32 ONNX Runtime against fp32 torch on the same weights: measured >= 0.99999 on crossgap-small and ViT-B-32.
MIN_COSINE = 0.9999
PROBE_SEED = 20261207
_SIDECAR_MAX_BYTES = 1 << 20
_OPSET = 17


@dataclass(frozen=True)
class ImageTower:
    """A verified ONNX image tower and the preprocessing that feeds it."""

    session: object  # onnxruntime.InferenceSession
    recipe: PixelRecipe

    def encode(self, images: Sequence[Image.Image], batch_size: int = 1) -> np.ndarray:
        """Unit fp32 features (n, d) of one or more decoded images, ``batch_size`` images per run."""
        step = max(1, batch_size)
        return _unit(
            np.concatenate([self._run(self.recipe.apply(images[i : i + step])) for i in range(0, len(images), step)])
        )

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixels": pixels})[0]


def towers_dir(index_path: Path) -> Path:
    return index_path / TOWERS_DIR


def weights_stamp(model: str) -> list[int] | None:
    """(size, mtime_ns) of the weights file a model spec loads from disk, None for pretrained and random specs:
    a tower exported from other weights than the file now holds is not used."""
    file = weights_file(parse_spec(model))
    if file is None or not file.is_file():
        return None
    stat = file.stat()
    return [stat.st_size, stat.st_mtime_ns]


def stamp_of(model: str) -> dict:
    """What a sidecar must match to serve ``model``: format, model spec and weights file."""
    return {"format": FORMAT, "model": model, "weights": weights_stamp(model)}


def read_sidecar(folder: Path) -> dict | None:
    """The sidecar's content, or None when it is missing, not a regular file, too large or not JSON."""
    path = folder / IMAGE_SIDECAR
    try:
        if not path.is_file() or path.stat().st_size > _SIDECAR_MAX_BYTES:
            return None
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def needs_export(folder: Path, model: str) -> bool:
    """True when no sidecar (verified or refused) exists for this model's current weights."""
    sidecar = read_sidecar(folder)
    return sidecar is None or sidecar.get("stamp") != stamp_of(model)


def load_image_tower(folder: Path, model: str) -> ImageTower | None:
    """The verified tower for ``model`` in ``folder``, or None (no onnxruntime, not exported, refused at export,
    stale, or failing its probe): the caller then embeds with torch."""
    sidecar = read_sidecar(folder)
    if sidecar is None or sidecar.get("status") != "verified" or sidecar.get("stamp") != stamp_of(model):
        return None
    try:
        import onnxruntime
    except ImportError:
        return None
    path = folder / IMAGE_MODEL
    try:
        if not path.is_file() or path.stat().st_size != sidecar["bytes"]:
            return None
        recipe = PixelRecipe.from_json(sidecar["recipe"])
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: a refused file is reported by the fallback, not by ORT
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        tower = ImageTower(session, recipe)
        probe = _probe_input(sidecar["input_shape"])
        reference = np.asarray(sidecar["probe_feature"], np.float32)
        if _cosine(_unit(tower._run(probe))[0], reference) < MIN_COSINE:
            return None
    except Exception:  # noqa: BLE001 - a damaged file fails in ORT in many ways; each means "use torch"
        return None
    return tower


def export_image_tower(loaded, folder: Path) -> dict:
    """Export ``loaded``'s image tower to ``folder``, verify it against the torch fp32 encoder, and record the
    outcome in the sidecar (``status`` verified or refused, with the measured cosine or the reason). Returns the
    sidecar. Needs torch, open_clip and onnxruntime; OSError (read-only or full disk) propagates."""
    model = loaded.spec.canonical
    folder.mkdir(parents=True, exist_ok=True)
    recipe = recipe_of(loaded.preprocess)
    if recipe is None:
        return _write_sidecar(folder, _refusal(model, f"its preprocessing ({loaded.preprocess}) has a step "
                                                      "the torch-free path does not run"))  # fmt: skip
    tmp = folder / f".{IMAGE_MODEL}.{os.getpid()}.tmp"
    try:
        shape = _export(loaded, tmp)
        cosine, probe_feature = _verify(loaded, tmp, recipe, shape)
        if cosine < MIN_COSINE:
            return _write_sidecar(folder, _refusal(model, f"ONNX features agree with torch to cosine {cosine:.6f}"))
        (folder / IMAGE_SIDECAR).unlink(missing_ok=True)  # no sidecar ever describes another file than the one there
        os.replace(tmp, folder / IMAGE_MODEL)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter and ORT raise many types; each means "not exportable"
        return _write_sidecar(folder, _refusal(model, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"))
    finally:
        tmp.unlink(missing_ok=True)
    return _write_sidecar(
        folder,
        {
            "status": "verified",
            "stamp": stamp_of(model),
            "bytes": (folder / IMAGE_MODEL).stat().st_size,
            "recipe": recipe.to_json(),
            "input_shape": list(shape),
            "probe_feature": [float(v) for v in probe_feature],
            "probe_min_cosine": cosine,
        },
    )


def _export(loaded, path: Path) -> tuple[int, int, int]:
    """The tower (``model.visual``, fp32) as ONNX with a free batch axis; returns the (3, H, W) input shape."""
    import warnings

    import torch

    visual = loaded.model.visual
    height, width = _image_size(visual)
    example = torch.zeros(1, 3, height, width)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes are about code paths a fixed-shape tower never takes
            torch.onnx.export(
                visual,
                (example,),
                str(path),
                input_names=["pixels"],
                output_names=["features"],
                dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                opset_version=_OPSET,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return 3, height, width


def _verify(loaded, path: Path, recipe: PixelRecipe, shape: tuple[int, int, int]) -> tuple[float, np.ndarray]:
    """(minimum cosine between ONNX and torch fp32 features of the probe pictures, the torch tower's unit feature
    of the fixed probe input that each load checks again)."""
    import onnxruntime
    import torch

    from crossgap_index.models.encoder import Encoder, _probe_images

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tower = ImageTower(session, recipe)
    pictures = _probe_images()
    exact = Encoder(loaded, batch_size=1, precision="fp32").encode_images(pictures)
    fast = tower.encode(pictures)
    probe = _probe_input(shape)
    with torch.no_grad():
        feature = loaded.model.visual(torch.from_numpy(probe).to(loaded.device)).float().cpu().numpy()
    reference = _unit(feature)[0]
    cosines = [*np.sum(exact * fast, axis=1), _cosine(_unit(tower._run(probe))[0], reference)]
    return float(min(cosines)), reference


def _image_size(visual) -> tuple[int, int]:
    size = getattr(visual, "image_size", None)
    if size is None:
        raise ValueError(f"{type(visual).__name__} does not say its input size")
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _refusal(model: str, reason: str) -> dict:
    return {"status": "refused", "stamp": stamp_of(model), "reason": reason}


def _write_sidecar(folder: Path, data: dict) -> dict:
    fd, tmp = tempfile.mkstemp(prefix=f".{IMAGE_SIDECAR}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, folder / IMAGE_SIDECAR)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return data


def _probe_input(shape: Sequence[int]) -> np.ndarray:
    """A fixed, noise-like input of unit variance over every channel and position: each position's index, offset by
    the seed, through an integer hash (Wellons' lowbias32: xor-shifts and two multiplies, so neighbouring positions
    are uncorrelated), its top 16 bits spread evenly over [-sqrt 3, sqrt 3]. Integer arithmetic, so every machine
    makes the same bits; no random generator, whose import costs a cold query more than the probe's own run."""
    x = np.arange(int(np.prod(shape)), dtype=np.uint32) + np.uint32(PROBE_SEED)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    uniform = (x >> np.uint32(16)).astype(np.float32) * np.float32(2 / 65535) - np.float32(1)
    return (uniform * np.float32(3**0.5)).reshape(1, *shape)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), np.float32(1e-12))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return -1.0
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
