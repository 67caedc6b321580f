"""`cgx eval`: measure which retrieval mode wins on labelled data. Parse, call the library, render."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from crossgap_index.errors import QueryError
from crossgap_index.inversion import InversionConfig
from crossgap_index.models import DEFAULT_MODEL
from crossgap_index.search.modes import SERVED_OTI_STEPS

# The generated and shipped worlds evaluation.data reads, stated here so that --help needs no numpy
# (a test checks them against that module's own usage lines).
DATASET_SPECS = (
    "synthetic:SEED:N, optionally with :vocab=tune|test and :relevance=shape|colour|both (e.g. "
    "synthetic:1001:480:vocab=test), or fashion-mnist:test or fashion-mnist:train, optionally with :N and "
    ":seed=S (Debian's dataset-fashion-mnist)"
)

if TYPE_CHECKING:  # the evaluation stack (torch, matplotlib) loads when the command runs
    from crossgap_index.words import StageProgress


class Task(str, Enum):
    all = "all"
    images = "images"
    texts = "texts"
    text_to_image = "text-to-image"


def eval_command(
    dataset: Annotated[
        str,
        typer.Argument(
            help="A folder with one subfolder per class (plus an optional captions.jsonl), a .jsonl of "
            '{"text", "group", "label"?} captions, or a generated or shipped world: ' + DATASET_SPECS + "."
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            envvar="CGX_MODEL",
            help=f"Model spec: ARCH/TAG (default {DEFAULT_MODEL}), ARCH::/path/weights, a model folder, "
            "or a bundled name (tiny-random, crossgap-small).",
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device", help="auto (CUDA when available), cpu, cuda, cuda:N (the Nth GPU) or mps (Apple GPU)."
        ),
    ] = "auto",
    vocab: Annotated[
        Path | None,
        typer.Option("--vocab", help="Span projection concepts, one name per line (default: the class names)."),
    ] = None,
    span_components: Annotated[
        int | None,
        typer.Option(
            "--span-components", min=1, help="Directions kept by span projection [default: the model's rule]."
        ),
    ] = None,
    task: Annotated[
        Task,
        typer.Option(
            "--task",
            help="images (image-to-image), texts (text-to-text), text-to-image (each caption queries the images), "
            "or all: image-to-image and text-to-text, whichever the dataset has.",
        ),
    ] = Task.all,
    steps: Annotated[
        int | None, typer.Option("--steps", min=0, help="OTI steps of the cross and fused modes [default: 25, served].")
    ] = None,
    tokens: Annotated[int, typer.Option("--tokens", min=1, help="OTI pseudo-tokens R.")] = InversionConfig.n_tokens,
    ovi_steps: Annotated[
        int,
        typer.Option("--ovi-steps", min=0, help="OVI steps (text queries; the paper publishes 1000)."),
    ] = InversionConfig.ovi_steps,
    patches: Annotated[
        int | None, typer.Option("--patches", min=1, help="OVI pseudo-patches P [default: 1 for /32 ViTs, else 4].")
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Queries inverted together (speed only).")
    ] = InversionConfig.batch_size,
    sweep_steps: Annotated[
        str | None,
        typer.Option(
            "--sweep-steps",
            help="Also measure the cross mode (OTI on images, OVI on texts) at these step counts, e.g. 5,10,25,50. "
            "One inversion run per setting serves every count.",
        ),
    ] = None,
    sweep_tokens: Annotated[
        str, typer.Option("--sweep-tokens", help="Pseudo-token counts R for --sweep-steps (OTI), e.g. 1,2,4.")
    ] = "1",
    sweep_patches: Annotated[
        str | None,
        typer.Option("--sweep-patches", help="Pseudo-patch counts P for --sweep-steps (OVI), e.g. 1,4,16."),
    ] = None,
    sweep_lr: Annotated[
        str | None,
        typer.Option("--sweep-lr", help="Learning rates for --sweep-steps, e.g. 0.01,0.02,0.05 [default: --lr]."),
    ] = None,
    lr: Annotated[
        float, typer.Option("--lr", min=0.0, help="Inversion learning rate (OTI and OVI).")
    ] = InversionConfig.lr,
    index: Annotated[
        Path | None,
        typer.Option(
            "--index",
            help="Evaluate what this index serves, with its model: its tuned mode per task (as 'tuned') and its "
            "stored inverters as they are (not retrained).",
        ),
    ] = None,
    transductive: Annotated[
        bool,
        typer.Option(
            help="With --index: also measure inverters trained here on the evaluated items (inverter-transductive)."
        ),
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=2, help="Use a fixed random subset of N images and N caption groups.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
    plots: Annotated[
        Path | None, typer.Option("--plots", help="Write PNG plots of every metric to this folder.")
    ] = None,
    precision: Annotated[
        str,
        typer.Option("--precision", help="auto (bf16 where native, else fp32), fp32 or bf16: embedding and inversion."),
    ] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars on stderr.")] = False,
) -> None:
    """Evaluate every retrieval mode on labelled data and report which wins.

    Image-to-image: every image queries all the others, relevant = same class. Text-to-text: each
    group's first caption queries the other captions, relevant = same group. Modes (each run exactly as
    `cgx query` serves it, with its cost per query): intra, cross (OTI / OVI), fused (rrf and score),
    cross-gallery, span (the vocabulary's and ImageNet's), concept, iso, inverter, warm, and with --index
    the index's tuned mode; plus zero-shot accuracy as a control. Metrics: mAP (headline), mAP@R,
    R-precision, Recall@1.
    """
    from crossgap_index.cli.render import err, out
    from crossgap_index.evaluation.data import load_dataset, read_vocab
    from crossgap_index.evaluation.protocol import evaluate
    from crossgap_index.evaluation.report import render, write_plots

    sweep = _parse_steps(sweep_steps, "--sweep-steps") if sweep_steps else []
    sweep_r = _parse_steps(sweep_tokens, "--sweep-tokens")
    sweep_p = _parse_steps(sweep_patches, "--sweep-patches") if sweep_patches else [patches]
    sweep_lrs = _parse_rates(sweep_lr) if sweep_lr else []
    data = load_dataset(dataset, limit)
    names = read_vocab(vocab) if vocab is not None else None
    config = InversionConfig(
        oti_steps=SERVED_OTI_STEPS if steps is None else steps,
        n_tokens=tokens,
        ovi_steps=ovi_steps,
        n_patches=patches,
        lr=lr,
        batch_size=batch_size,
        precision=precision,
    )
    labelled: list[str] = []
    served: dict = {}
    if transductive and index is None:
        raise QueryError("--transductive compares with an index's own inverters: give --index IDX")
    if index is not None:
        from crossgap_index import CrossGapIndex

        with CrossGapIndex.open(index, device=device) as cgx:
            served = _served(cgx)
            info = cgx.info()
            model = info.model
        records = (info.tuned_modes or {}).values()
        if any(record.get("dataset", {}).get("spec") == data.spec for record in records):
            labelled.append("tuned")  # chosen on this very data's labels
    with _progress(enabled=not quiet) as progress:
        result = evaluate(
            data,
            model,
            device=device,
            precision=precision,
            config=config,
            vocab=names,
            tasks=None if task is Task.all else [task.value],
            sweep_steps=sweep,
            sweep_tokens=sweep_r,
            sweep_patches=sweep_p,
            sweep_lrs=sweep_lrs,
            span_components=span_components,
            transductive=transductive,
            progress=progress,
            labelled_modes=labelled,
            **served,
        )
    if vocab is not None:
        result.settings["span"]["vocabulary"] = str(vocab)
    if json_out:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        out.print(render(result))
    if plots is not None:
        for path in write_plots(result, plots):
            if not quiet:
                err.print(f"wrote {path}", highlight=False)


def _served(cgx) -> dict:
    """What an index serves, as ``evaluate`` keywords: its tuned mode for each task (the default where none
    is stored) as ``tuned``, and its stored inverters as they are."""
    from crossgap_index.evaluation.protocol import IMAGES, TEXT_TO_IMAGE, TEXTS
    from crossgap_index.search.options import SearchOptions

    targets = {IMAGES: ("image", "images"), TEXTS: ("text", "texts"), TEXT_TO_IMAGE: ("text", "images")}
    task_modes = {
        task: {"tuned": cgx.served_mode(SearchOptions(mode="auto", target=target), modality)}
        for task, (modality, target) in targets.items()
    }
    info, networks = cgx.info(), {}
    for modality, keyword, stats in (
        ("image", "inverter", info.inverter),
        ("text", "text_inverter", info.text_inverter),
    ):
        if stats is not None:  # else none is stored: one is trained here, transductively, as without --index
            networks[keyword] = cgx.inverter(modality)
    return {"task_modes": task_modes, **networks}


def _parse_rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise QueryError(f"--sweep-lr takes comma-separated numbers, e.g. 0.01,0.02; got {text!r}") from None
    if not rates or min(rates) <= 0:
        raise QueryError(f"--sweep-lr needs one or more rates > 0, got {text!r}")
    return rates


def _parse_steps(text: str, option: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise QueryError(f"{option} takes comma-separated integers, e.g. 10,25,50; got {text!r}") from None
    if not steps or min(steps) < 0:
        raise QueryError(f"{option} needs one or more counts >= 0, got {text!r}")
    return steps


@contextmanager
def _progress(enabled: bool) -> Iterator[StageProgress]:
    """A ``progress(stage, done, total)`` callback: one bar per stage on stderr, started on first use."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from crossgap_index.cli.render import err

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    )
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        if not enabled:
            return
        if not tasks:
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    try:
        yield update
    finally:
        if tasks:
            bar.stop()
