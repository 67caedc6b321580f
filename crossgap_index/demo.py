"""The offline demo: a synthetic folder, an index built with the bundled model, `cgx tune` on labelled photos
of the same world, and a held-out query on which the tuned mode visibly changes the top results.

Everything it needs ships with the package, so it runs on a fresh machine with no network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crossgap_index.errors import QueryError

if TYPE_CHECKING:  # the CLI imports DEMO_MODEL for its help text; the stack loads when the demo runs
    from crossgap_index.api import BuildReport, Hit
    from crossgap_index.words import CountProgress

DEMO_MODEL = "crossgap-small"
DEMO_SEED = 2026  # not the training seed: the demo gallery is held-out data
TUNE_SEED = 2027  # the labelled photos tune chooses on: neither the gallery nor the queries
DEMO_MODES = ("intra", "tuned")
QUERY_CANDIDATES = 16  # held-out photos looked at to find one where the modes differ


@dataclass
class DemoResult:
    folder: Path
    index: Path
    query: Path
    query_label: str
    build: BuildReport
    hits: dict[str, list[Hit]]
    sheet: Path
    tuned: dict | None  # the tune record: mode, selection and report mAP (None: below tune's minimum)
    correct: dict[str, int]  # same-class hits in the top k, per mode, for the shown query
    tune_stored: bool = True  # False: tune stored nothing (tune_reason says why) and "tuned" is the default
    tune_reason: str = ""


@dataclass(frozen=True)
class DemoSettings:
    """The demo's size and model: ``n_images`` gallery photos, ``tune_images`` labelled photos for tune
    (projections only unless ``inversion``), the top ``k`` shown per mode."""

    model: str = DEMO_MODEL
    n_images: int = 240
    k: int = 8
    tune_images: int = 480
    inversion: bool = False
    device: str = "auto"


def run_demo(
    out_dir: str | Path,
    settings: DemoSettings | None = None,
    *,
    progress: CountProgress | None = None,
    tune_progress: Callable[[str, int, int], None] | None = None,
    **fields,
) -> DemoResult:
    """Generate ``n_images`` synthetic photos (one folder per class) and index them; tune on
    ``tune_images`` other labelled photos (projections only unless ``inversion``); then show the held-out
    photo, among a few, whose top ``k`` the tuned mode changes most, beside intra, in a contact sheet.
    ``settings``: a DemoSettings, or its fields as keywords (they override it).
    ``progress(done, total)`` follows the embedding, ``tune_progress(stage, done, total)`` tune's stages."""
    from crossgap_index.api import CrossGapIndex
    from crossgap_index.contact_sheet import contact_sheet
    from crossgap_index.datasets.synthetic import export_folder, make_item

    known = {f.name for f in dataclasses.fields(DemoSettings)}
    if unknown := sorted(set(fields) - known):
        raise TypeError(f"unknown demo setting(s): {', '.join(unknown)}")
    chosen = dataclasses.replace(settings or DemoSettings(), **fields)
    n_images, k = chosen.n_images, chosen.k
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise QueryError(f"{out} is a file: give a folder for the demo's images, index and contact sheet")
    folder = export_folder(out / "images", DEMO_SEED, n_images)
    with CrossGapIndex.open_or_create(out / "index", model=chosen.model, device=chosen.device) as index:
        build = index.index_folders([folder], progress=progress)
        dataset = f"synthetic:{TUNE_SEED}:{chosen.tune_images}"
        tune = index.tune(dataset, inversion=chosen.inversion, progress=tune_progress)
        best = None
        for i in range(QUERY_CANDIDATES):
            item = make_item(DEMO_SEED, n_images + i)  # the next items of the same world: not in the gallery
            hits = {
                "intra": index.search(image=item.image, k=k),
                "tuned": index.search(image=item.image, k=k, mode="auto"),
            }
            correct = {mode: sum(_label(h) == item.class_name for h in found) for mode, found in hits.items()}
            gain = correct["tuned"] - correct["intra"]
            if best is None or gain > best[0]:
                best = (gain, item, hits, correct)
    _, item, hits, correct = best
    query = out / "query.png"
    item.image.save(query)
    sheet = contact_sheet(
        query,
        {mode: [Path(h.path) for h in mode_hits] for mode, mode_hits in hits.items()},
        out / "contact_sheet.png",
        label_of=lambda p: item.class_name if p == query else p.parent.name.replace("_", " "),
    )
    return DemoResult(
        folder,
        out / "index",
        query,
        item.class_name,
        build,
        hits,
        sheet,
        tune.record,
        correct,
        tune.stored,
        tune.reason,
    )


def _label(hit: Hit) -> str:
    return Path(hit.path).parent.name.replace("_", " ")
