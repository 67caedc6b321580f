"""The offline demo: a synthetic folder, an index built with the bundled model, intra vs cross queries.

Everything it needs ships with the package, so it runs on a fresh machine with no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crossgap_index.inversion import InversionConfig

if TYPE_CHECKING:  # the CLI imports DEMO_MODEL for its help text; the stack loads when the demo runs
    from crossgap_index.api import BuildReport, Hit, ProgressFn

DEMO_MODEL = "crossgap-small"
DEMO_SEED = 2026  # not the training seed: the demo gallery is held-out data
DEMO_MODES = ("intra", "cross", "fused")


@dataclass
class DemoResult:
    folder: Path
    index: Path
    query: Path
    query_label: str
    build: BuildReport
    hits: dict[str, list[Hit]]
    sheet: Path


def run_demo(
    out_dir: str | Path,
    model: str = DEMO_MODEL,
    n_images: int = 240,
    k: int = 8,
    inversion: InversionConfig | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> DemoResult:
    """Generate ``n_images`` synthetic photos (one folder per class), index them, then query with a
    held-out photo in each of DEMO_MODES and draw a contact sheet of the results."""
    from crossgap_index.api import CrossGapIndex
    from crossgap_index.contact_sheet import contact_sheet
    from crossgap_index.datasets.synthetic import export_folder, make_item

    out = Path(out_dir).expanduser().resolve()
    folder = export_folder(out / "images", DEMO_SEED, n_images)
    held_out = make_item(DEMO_SEED, n_images)  # the next item of the same world: not in the gallery
    query = out / "query.png"
    held_out.image.save(query)
    with CrossGapIndex.open_or_create(out / "index", model=model, device=device) as index:
        build = index.index_folders([folder], progress=progress)
        hits = {mode: index.search(image=query, k=k, mode=mode, inversion=inversion) for mode in DEMO_MODES}
    sheet = contact_sheet(
        query,
        {mode: [Path(h.path) for h in mode_hits] for mode, mode_hits in hits.items()},
        out / "contact_sheet.png",
        label_of=lambda p: held_out.class_name if p == query else p.parent.name.replace("_", " "),
    )
    return DemoResult(folder, out / "index", query, held_out.class_name, build, hits, sheet)
