"""manifest.json: what an index directory is, readable without loading anything heavy."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from crossgap_index import __version__
from crossgap_index.errors import StoreError

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# A gallery's inverted features, by the modality of its items: (derived collection, inversion direction, the
# manifest field recording the settings they were inverted with).
GALLERY_INVERTED = {
    "image": ("image-oti", "oti", "gallery_inversion"),
    "text": ("text-ovi", "ovi", "text_gallery_inversion"),
}


@dataclass
class Manifest:
    model: str
    dim: int
    factories: dict[str, str]
    metric: str = "inner_product"
    counts: dict[str, int] = field(default_factory=dict)
    generation: int = 0
    # InversionConfig (as a dict) the gallery's OTI features were made with, once --invert-gallery is used.
    gallery_inversion: dict | None = None
    # InversionConfig (as a dict) the stored texts' OVI features were made with (collection text-ovi).
    text_gallery_inversion: dict | None = None
    # The modes `cgx tune` chose, one per task (image-to-image, text-to-text, text-to-image; "any" for a record
    # that names no task): {"mode": Mode.to_dict(), "task", "selection", "report", "dataset", "date"}.
    tuned_modes: dict[str, dict] = field(default_factory=dict)
    # The record stored last: what a reader that knows no per-task records (tuned_modes) serves.
    tuned_mode: dict | None = None
    # Each FAISS file as last saved: {"image": {"size": bytes, "crc32": int}}; verified on open.
    files: dict[str, dict[str, int]] = field(default_factory=dict)
    # Precision of the stored vectors: "fp32", "bf16", or "mixed" once both were written (crossgap_index.precision).
    # Indexes from before this field were embedded in fp32 on CPU (bf16 autocast on CUDA) and read as "fp32".
    precision: str = "fp32"
    # Min cosine of fp32 vs bf16 features on the model's probe; measured when a second precision first meets the index.
    precision_agreement: float | None = None
    schema_version: int = MANIFEST_SCHEMA_VERSION
    crossgap_version: str = __version__

    def save(self, directory: Path) -> None:
        """Atomic and durable: written beside, flushed to disk, then renamed over; a failed write (a full
        disk) leaves the old manifest and no ``.tmp``."""
        self.crossgap_version = __version__
        tmp = directory / (MANIFEST_NAME + ".tmp")
        try:
            with tmp.open("w") as f:
                f.write(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, directory / MANIFEST_NAME)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise StoreError(f"no crossgap index at {directory} (build one with `cgx build-index DIR`)")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{path}: unreadable manifest ({exc})") from exc
        if not isinstance(data, dict):
            raise StoreError(f"{path}: damaged manifest (a JSON {type(data).__name__}, not an object)")
        version = data.get("schema_version", 0)
        if isinstance(version, int) and version > MANIFEST_SCHEMA_VERSION:
            raise StoreError(
                f"{directory}: index schema {version} is newer than this crossgap-index understands "
                f"({MANIFEST_SCHEMA_VERSION}); upgrade crossgap-index"
            )
        problem = _schema_problem(data)
        if problem:
            raise StoreError(f"{path}: damaged manifest ({problem})")
        known = set(cls.__dataclass_fields__)
        if "tuned_modes" not in data and data.get("tuned_mode"):  # one record, from before per-task records
            data["tuned_modes"] = {tuned_task(data["tuned_mode"]): data["tuned_mode"]}
        return cls(**{k: v for k, v in data.items() if k in known})


ANY_TASK = "any"


def tuned_task(record: dict) -> str:
    """The task slot a tune record fills: its ``task``, or ``any`` (served to every query) when it names none."""
    task = record.get("task")
    return task if isinstance(task, str) and task else ANY_TASK


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_map(value: object, check: Callable[[object], bool]) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and check(v) for k, v in value.items())


def _is_record(value: object) -> bool:
    return isinstance(value, dict) and isinstance(value.get("mode"), dict)


def _is_file_record(value: object) -> bool:
    return _is_map(value, _is_int) and {"size", "crc32"} <= set(value)


# key -> (required, check, what it must be)
_FIELDS: dict[str, tuple[bool, Callable[[object], bool], str]] = {
    "model": (True, lambda v: isinstance(v, str) and bool(v), "a model spec"),
    "dim": (True, lambda v: _is_int(v) and v > 0, "a positive integer"),
    "factories": (True, lambda v: _is_map(v, lambda f: isinstance(f, str)) and bool(v), "names -> factory strings"),
    "metric": (False, lambda v: v == "inner_product", "'inner_product'"),
    "counts": (False, lambda v: _is_map(v, lambda c: _is_int(c) and c >= 0), "names -> counts"),
    "generation": (False, lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "gallery_inversion": (False, lambda v: v is None or isinstance(v, dict), "null or an object"),
    "precision": (False, lambda v: isinstance(v, str), "a precision name"),
    "precision_agreement": (False, lambda v: v is None or isinstance(v, int | float), "null or a number"),
    "tuned_mode": (False, lambda v: v is None or _is_record(v), "null or a tune record"),
    "tuned_modes": (False, lambda v: _is_map(v, _is_record), "tasks -> tune records"),
    "text_gallery_inversion": (False, lambda v: v is None or isinstance(v, dict), "null or an object"),
    "files": (False, lambda v: _is_map(v, _is_file_record), "names -> {size, crc32}"),
    "schema_version": (False, lambda v: _is_int(v) and v >= 0, "an integer"),
    "crossgap_version": (False, lambda v: isinstance(v, str), "a string"),
}


def _schema_problem(data: dict) -> str | None:
    """What is wrong with a manifest's fields, or None."""
    for key, (required, check, what) in _FIELDS.items():
        if key not in data:
            if required:
                return f"no '{key}'"
        elif not check(data[key]):
            return f"'{key}' must be {what}, not {json.dumps(data[key])[:60]}"
    return None
