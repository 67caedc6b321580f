"""`cgx demo`: the offline tour: a synthetic gallery indexed, tuned, and one query shown mode by mode."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from crossgap_index.cli.options import DeviceOpt, QuietOpt
from crossgap_index.demo import DEMO_MODEL

if TYPE_CHECKING:
    from crossgap_index.demo import DemoResult


def demo_command(
    folder: Annotated[Path, typer.Argument(help="Where to write the demo images, index and contact sheet.")] = Path(
        "cgx-demo"
    ),
    model: Annotated[str, typer.Option(help="Model for the demo index.")] = DEMO_MODEL,
    images: Annotated[int, typer.Option(min=8, help="Synthetic images in the gallery.")] = 240,
    tune_images: Annotated[int, typer.Option(min=8, help="Labelled synthetic photos `cgx tune` chooses on.")] = 480,
    inversion: Annotated[bool, typer.Option(help="Let tune also try OTI settings and the inverter (slower).")] = False,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Hits per mode.")] = 8,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Offline demo: generate labelled synthetic photos, index them with the bundled crossgap-small model,
    tune the index on other labelled photos, and show a held-out query where the tuned mode changes the
    top results, beside plain intra-modal search, with a contact sheet."""
    from crossgap_index.cli.bars import progress_bar, stage_bars
    from crossgap_index.cli.render import build_summary, err
    from crossgap_index.demo import run_demo

    with progress_bar("embedding", "img", enabled=not quiet) as progress, stage_bars(not quiet) as tune_progress:
        result = run_demo(
            folder,
            model=model,
            n_images=images,
            k=top_k,
            tune_images=tune_images,
            inversion=inversion,
            device=device,
            progress=progress,
            tune_progress=tune_progress,
        )
    _show_demo(result, top_k)
    if not quiet:
        err.print(build_summary(result.build), highlight=False)
        err.print(f"contact sheet: {result.sheet}", highlight=False)


def _show_demo(result: DemoResult, top_k: int) -> None:
    """Each mode's hits for the demo query, what tune chose and why, and the command to try it."""
    import shlex

    from rich.markup import escape

    from crossgap_index.cli.render import hits_table, out

    tuned = result.tuned
    for mode, hits in result.hits.items():
        name = mode
        if mode == "tuned":
            name = f"tuned = {escape(tuned['candidate'])}" if result.tune_stored else "--cross (untuned default)"
        title = f"{name}: query {result.query} (a {result.query_label}), {result.correct[mode]}/{top_k} same class"
        out.print(hits_table(hits, title, label_of=lambda h: Path(h.path).parent.name.replace("_", " ")))
    if tuned is not None:
        rep = tuned["report"]
        out.print(
            f"tune chose {escape(tuned['candidate'])}: mAP {rep['map'] * 100:.2f} vs intra "
            f"{rep['intra_map'] * 100:.2f} ({rep['delta_map'] * 100:+.2f}) on held-out labelled photos",
            highlight=False,
        )
    if not result.tune_stored:
        out.print(f"tune: {escape(result.tune_reason)}", highlight=False)
    try_it = f"cgx query {shlex.quote(str(result.query))} --cross --index {shlex.quote(str(result.index))}"
    out.print(f"try it: {escape(try_it)}", highlight=False, soft_wrap=True)
