"""manifest.json: what an index directory is, readable without loading anything heavy."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from crossgap_index import __version__
from crossgap_index.errors import StoreError

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


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
    # Precision of the stored vectors: "fp32", "bf16", or "mixed" once both were written (crossgap_index.precision).
    # Indexes from before this field were embedded in fp32 on CPU (bf16 autocast on CUDA) and read as "fp32".
    precision: str = "fp32"
    # Min cosine of fp32 vs bf16 features on the model's probe; measured when a second precision first meets the index.
    precision_agreement: float | None = None
    schema_version: int = MANIFEST_SCHEMA_VERSION
    crossgap_version: str = __version__

    def save(self, directory: Path) -> None:
        self.crossgap_version = __version__
        tmp = directory / (MANIFEST_NAME + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, directory / MANIFEST_NAME)

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise StoreError(f"no crossgap index at {directory} (build one with `cgx build-index DIR`)")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"{path}: unreadable manifest ({exc})") from exc
        version = int(data.get("schema_version", 0))
        if version > MANIFEST_SCHEMA_VERSION:
            raise StoreError(
                f"{directory}: index schema {version} is newer than this crossgap-index understands "
                f"({MANIFEST_SCHEMA_VERSION}); upgrade crossgap-index"
            )
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})
