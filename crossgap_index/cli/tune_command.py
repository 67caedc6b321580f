"""`cgx tune` and `cgx train-inverter`: choose and store the winning mode; train the one-pass inverter."""

from __future__ import annotations

import json
import signal
import threading
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from crossgap_index.cli.eval_command import DATASET_SPECS
from crossgap_index.cli.options import DeviceOpt, index_option

if TYPE_CHECKING:  # the inversion stack (torch) and rich load when a command runs
    from crossgap_index.inversion.inverter import InverterConfig


def tune_command(
    dataset: Annotated[
        str,
        typer.Argument(
            help="Labelled data, as `cgx eval` takes it: a class-per-subfolder folder, a captions .jsonl, "
            f"or a generated or shipped world: {DATASET_SPECS}."
        ),
    ],
    index: index_option("Index to tune [default: $CGX_INDEX].") = None,
    device: DeviceOpt = "auto",
    inversion: Annotated[
        bool, typer.Option(help="Also try OTI settings and the inverter (slower; --no-inversion: projections only).")
    ] = True,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the selection/report split.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars on stderr.")] = False,
) -> None:
    """Find the mode that wins on your labelled data and store it in the index: `cgx query --cross` and
    library mode="auto" then serve it. Half of each class selects, the other half reports; a mode is stored
    only when its report-half gain over intra has a 95% interval above 0, otherwise nothing is (exit 0).
    Needs at least 8 classes (one subfolder each) with 8 or more images each; smaller classes are left out."""
    from rich.markup import escape

    from crossgap_index import CrossGapIndex
    from crossgap_index.cli.bars import stage_bars
    from crossgap_index.cli.render import out
    from crossgap_index.evaluation.data import SYNTHETIC_PREFIX, synthetic_size

    if dataset.startswith(SYNTHETIC_PREFIX):
        synthetic_size(dataset)  # a bad or oversized spec is one line before the model loads
    with CrossGapIndex.open(index, device=device) as cgx, stage_bars(not quiet) as progress:
        result = cgx.tune(dataset, inversion=inversion, seed=seed, progress=progress)
    if json_out:
        print(json.dumps(_tune_document(result), indent=2))
        return
    _print_data(result)
    if result.record is not None:
        _print_candidates(result)
        _print_winner(result.record)
    if result.stored:
        out.print("stored in the index: `cgx query IMAGE --cross` now uses it", highlight=False)
    else:
        out.print(f"stored nothing: {escape(result.reason)}", highlight=False)


def _tune_document(result) -> dict:
    """`cgx tune --json`: what was stored (or null), why, what was measured, the data found and every candidate."""
    record = result.record
    return {
        "tuned": record if result.stored else None,
        "stored": result.stored,
        "reason": result.reason,
        "measured": record,
        "classes": result.classes,
        "left_out": result.left_out,
        "skipped": result.skipped,
        "minimum": result.minimum,
        "candidates": result.candidates,
    }


def _print_candidates(result) -> None:
    """The best candidates on the selection half with their tied hits, and those left out for collapsing."""
    from rich.markup import escape
    from rich.table import Table

    from crossgap_index.cli.render import out

    table = Table(
        title=f"candidates on the selection half ({result.record['selection']['queries']} queries)",
        title_justify="left",
    )
    table.add_column("candidate")
    table.add_column("mAP", justify="right")
    table.add_column("tied hits", justify="right")
    for row in result.candidates[:15]:
        ties = f"{row['tied_share'] * 100:.0f}%" + (" (collapses: not chosen)" if row["collapses"] else "")
        table.add_row(escape(row["name"]), f"{row['selection_map'] * 100:.2f}", ties)
    out.print(table)
    collapsing = [row["name"] for row in result.candidates if row["collapses"]]
    if collapsing:
        from crossgap_index.tuning.tune import COLLAPSE_SHARE, TIE_TOP_K

        out.print(
            f"not chosen, they collapse scores (one score for over {COLLAPSE_SHARE:.0%} of a top {TIE_TOP_K}): "
            + ", ".join(escape(name) for name in collapsing),
            highlight=False,
        )


def _print_winner(record: dict) -> None:
    """The winner and its report-half numbers against intra."""
    from rich.markup import escape

    from crossgap_index.cli.render import out

    rep = record["report"]
    low, high = rep["delta_map_ci95"]
    out.print(
        f"winner: {escape(record['candidate'])} ({escape(record['summary'])})\n"
        f"report half ({rep['queries']} queries, not used to choose): mAP {rep['map'] * 100:.2f} vs intra "
        f"{rep['intra_map'] * 100:.2f} ({rep['delta_map'] * 100:+.2f}, 95% interval "
        f"[{low * 100:+.2f}, {high * 100:+.2f}])",
        highlight=False,
    )


def _print_data(result) -> None:
    """The classes tune found (and left out) and the files it skipped, so a wrong folder shows at once."""
    from rich.markup import escape

    from crossgap_index.cli.render import err, out

    found = ", ".join(f"{escape(name)} {n}" for name, n in result.classes.items())
    out.print(f"found: {found}", highlight=False)
    minimum = result.minimum
    if result.left_out:
        out.print(
            f"left out ({len(result.left_out)} classes below {minimum['items_per_class']} items): "
            + ", ".join(escape(c) for c in result.left_out),
            highlight=False,
        )
    for note in result.skipped:
        err.print(f"cgx: skipped: {escape(note)}", highlight=False)


class Modality(str, Enum):
    images = "images"
    texts = "texts"


# inversion.inverter.DEFAULT_STEPS, stated here so that --help needs no numpy (a test checks they agree)
INVERTER_STEPS_DEFAULT = {"oti": 48, "ovi": 128}


def _stop_between_steps() -> threading.Event:
    """The first Ctrl-C sets the event (training stops after the step it is in, and saves); a second one
    interrupts at once."""
    stop = threading.Event()

    def on_sigint(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, on_sigint)
    return stop


def train_inverter_command(
    index: index_option("Index to train for [default: $CGX_INDEX].") = None,
    modality: Annotated[
        Modality,
        typer.Option(
            "--modality",
            help="images: the OTI network for image queries (trained on the index's images); texts: the OVI "
            "network for text queries (trained on the index's texts).",
        ),
    ] = Modality.images,
    device: Annotated[
        str,
        typer.Option(
            "--device", help="auto (CUDA when available), cpu, cuda, cuda:N (the Nth GPU) or mps (Apple GPU)."
        ),
    ] = "auto",
    steps: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"Training steps [default: {INVERTER_STEPS_DEFAULT['oti']} for images, "
            f"{INVERTER_STEPS_DEFAULT['ovi']} for texts, the measured best; trained longer the network stops helping].",
        ),
    ] = None,
    tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Pseudo-tokens R (images) or pseudo-patches P (texts) the network predicts."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Items per step.")] = 128,
    max_seconds: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds (> 0); a network cut short does not replace a stored one."),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the stored network even with one --max-seconds cut short.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar on stderr.")] = False,
) -> None:
    """Train a one-pass inversion network (modes inverter and warm) on the index's own items, no labels:
    for image queries (OTI through the text tower) or, with --modality texts, for text queries (OVI through
    the image tower). Trained long it learns to reproduce the query's feature and stops helping: the default
    step count is the measured best (benchmarks/RESULTS.md); `cgx tune` tries several."""
    from crossgap_index import CrossGapIndex
    from crossgap_index.cli.bars import progress_bar
    from crossgap_index.cli.render import err
    from crossgap_index.inversion.checkpoint import TrainingInterrupted

    config = inverter_config(modality, steps, tokens, batch_size, max_seconds)
    kind = modality.value[:-1]
    stop = _stop_between_steps()

    def step_done(step: int, total: int, loss: float) -> None:
        bar(step, total)
        if stop.is_set():  # Ctrl-C: stop here, between two steps, where the run can be saved whole
            raise KeyboardInterrupt

    try:
        with CrossGapIndex.open(index, device=device) as cgx, progress_bar("training", "step", not quiet) as bar:
            network = cgx.train_inverter(config, progress=step_done, modality=kind, replace=replace)
    except TrainingInterrupted as stopped:
        err.print(
            f"cgx: interrupted after step {stopped.step} of {stopped.steps}; the training so far is saved "
            f"({stopped.path.name}): re-run the same command to resume",
            highlight=False,
        )
        raise typer.Exit(130) from None
    except KeyboardInterrupt:  # before the first step ended: there is nothing to keep
        err.print(
            "cgx: interrupted before a training step ended; no network was saved (a stored one is kept as it "
            "was): re-run to train",
            highlight=False,
        )
        raise typer.Exit(130) from None
    if not quiet:
        _print_trained(network, config, modality, cgx.path)


def inverter_config(
    modality: Modality, steps: int | None, tokens: int | None, batch_size: int, max_seconds: float | None
) -> InverterConfig:
    """The ``InverterConfig`` `cgx train-inverter`'s flags ask for: the direction of the modality's queries, its
    measured step count unless given, one pseudo-token for images unless given."""
    from crossgap_index.inversion.inverter import DEFAULT_STEPS, InverterConfig

    direction = "oti" if modality is Modality.images else "ovi"
    return InverterConfig(
        n_tokens=tokens if tokens is not None or direction == "ovi" else 1,
        steps=steps or DEFAULT_STEPS[direction],
        batch_size=batch_size,
        max_seconds=max_seconds,
        direction=direction,
    )


def _print_trained(network, config: InverterConfig, modality: Modality, index: Path) -> None:
    """One line on stderr: what the network was trained on, for how long, and where it is saved."""
    from crossgap_index.api import INVERTER_FILE, TEXT_INVERTER_FILE
    from crossgap_index.cli.render import err

    stats = network.stats
    file = INVERTER_FILE if modality is Modality.images else TEXT_INVERTER_FILE
    short = f" (stopped by --max-seconds, of {config.steps} asked)" if network.cut_short else ""
    err.print(
        f"trained on {stats[modality.value]} {modality.value}: {stats['steps']} steps{short} in "
        f"{stats['seconds']:.1f} s, final loss {stats['final_loss']:.4f}; saved to {index / file}",
        highlight=False,
    )
