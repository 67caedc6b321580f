"""`cgx eval`: measure which retrieval mode wins on labelled data. Parse, call the library, render."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from crossgap_index.cli.options import DeviceOpt, model_option
from crossgap_index.errors import QueryError
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.flags import InversionFlags

# The generated and shipped worlds evaluation.data reads, stated here so that --help needs no numpy
# (a test checks them against that module's own usage lines).
DATASET_SPECS = (
    "synthetic:SEED:N, optionally with :vocab=tune|test and :relevance=shape|colour|both (e.g. "
    "synthetic:1001:480:vocab=test), or fashion-mnist:test or fashion-mnist:train, optionally with :N and "
    ":seed=S (Debian's dataset-fashion-mnist)"
)

if TYPE_CHECKING:  # the evaluation stack (torch, matplotlib) loads when the command runs
    from crossgap_index.evaluation.data import EvalDataset
    from crossgap_index.evaluation.results import EvalResult
    from crossgap_index.evaluation.settings import EvalSettings


class Task(str, Enum):
    all = "all"
    images = "images"
    texts = "texts"
    text_to_image = "text-to-image"


DatasetArg = Annotated[
    str,
    typer.Argument(
        help="A folder with one subfolder per class (plus an optional captions.jsonl), a .jsonl of "
        '{"text", "group", "label"?} captions, or a generated or shipped world: ' + DATASET_SPECS + "."
    ),
]
ModelOpt = model_option("The model evaluated (with --index: the index's own).")
VocabOpt = Annotated[
    Path | None,
    typer.Option("--vocab", help="Span projection concepts, one name per line (default: the class names)."),
]
SpanComponentsOpt = Annotated[
    int | None,
    typer.Option("--span-components", min=1, help="Directions kept by span projection [default: the model's rule]."),
]
TaskOpt = Annotated[
    Task,
    typer.Option(
        "--task",
        help="images (image-to-image), texts (text-to-text), text-to-image (each caption queries the images), "
        "or all: image-to-image and text-to-text, whichever the dataset has.",
    ),
]
StepsOpt = Annotated[
    int | None,
    typer.Option(
        "--steps",
        min=0,
        help="Inversion steps of the query's own direction, as in cgx query: OTI for image queries, OVI for "
        "text queries [default: 25, served].",
    ),
]
TokensOpt = Annotated[int, typer.Option("--tokens", min=1, help="OTI pseudo-tokens R.")]
OviStepsOpt = Annotated[
    int | None,
    typer.Option("--ovi-steps", min=0, help="OVI steps of text queries only, over --steps (the paper publishes 1000)."),
]
PatchesOpt = Annotated[
    int | None, typer.Option("--patches", min=1, help="OVI pseudo-patches P [default: 1 for /32 ViTs, else 4].")
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Queries inverted together (speed only).")]
SweepStepsOpt = Annotated[
    str | None,
    typer.Option(
        "--sweep-steps",
        help="Also measure the cross mode (OTI on images, OVI on texts) at these step counts, e.g. 5,10,25,50. "
        "One inversion run per setting serves every count.",
    ),
]
SweepTokensOpt = Annotated[
    str, typer.Option("--sweep-tokens", help="Pseudo-token counts R for --sweep-steps (OTI), e.g. 1,2,4.")
]
SweepPatchesOpt = Annotated[
    str | None, typer.Option("--sweep-patches", help="Pseudo-patch counts P for --sweep-steps (OVI), e.g. 1,4,16.")
]
SweepLrOpt = Annotated[
    str | None,
    typer.Option("--sweep-lr", help="Learning rates for --sweep-steps, e.g. 0.01,0.02,0.05 [default: --lr]."),
]
LrOpt = Annotated[float, typer.Option("--lr", min=0.0, help="Inversion learning rate (OTI and OVI).")]
IndexOpt = Annotated[
    Path | None,
    typer.Option(
        "--index",
        help="Evaluate what this index serves, with its model: its tuned mode per task (as 'tuned') and its "
        "stored inverters as they are (not retrained).",
    ),
]
TransductiveOpt = Annotated[
    bool,
    typer.Option(
        help="With --index: also measure inverters trained here on the evaluated items (inverter-transductive)."
    ),
]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", min=2, help="Use a fixed random subset of N images and N caption groups.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
PlotsOpt = Annotated[Path | None, typer.Option("--plots", help="Write PNG plots of every metric to this folder.")]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto (bf16 where native, else fp32; a small model inverts in fp32 on a CPU), fp32 or bf16: "
        "embedding and inversion.",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars on stderr.")]


@dataclass(frozen=True)
class EvalFlags:
    """`cgx eval`'s command line as given (``eval_settings`` turns it into the run's settings)."""

    dataset: str
    model: str | None
    device: str
    vocab: Path | None
    span_components: int | None
    task: Task
    steps: int | None
    tokens: int
    ovi_steps: int | None
    patches: int | None
    batch_size: int
    sweep_steps: str | None
    sweep_tokens: str
    sweep_patches: str | None
    sweep_lr: str | None
    lr: float
    index: Path | None
    transductive: bool
    limit: int | None
    precision: str


def eval_command(
    dataset: DatasetArg,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    vocab: VocabOpt = None,
    span_components: SpanComponentsOpt = None,
    task: TaskOpt = Task.all,
    steps: StepsOpt = None,
    tokens: TokensOpt = InversionConfig.n_tokens,
    ovi_steps: OviStepsOpt = None,
    patches: PatchesOpt = None,
    batch_size: BatchSizeOpt = InversionConfig.batch_size,
    sweep_steps: SweepStepsOpt = None,
    sweep_tokens: SweepTokensOpt = "1",
    sweep_patches: SweepPatchesOpt = None,
    sweep_lr: SweepLrOpt = None,
    lr: LrOpt = InversionConfig.lr,
    index: IndexOpt = None,
    transductive: TransductiveOpt = False,
    limit: LimitOpt = None,
    json_out: JsonOpt = False,
    plots: PlotsOpt = None,
    precision: PrecisionOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Evaluate every retrieval mode on labelled data and report which wins.

    Image-to-image: every image queries all the others, relevant = same class. Text-to-text: each
    group's first caption queries the other captions, relevant = same group. Modes (each run exactly as
    `cgx query` serves it, with its cost per query): intra, cross (OTI / OVI), fused (rrf and score),
    cross-gallery, span (the vocabulary's and ImageNet's), concept, iso, inverter, warm, and with --index
    the index's tuned mode; plus zero-shot accuracy as a control. Metrics: mAP (headline), mAP@R,
    R-precision, Recall@1.
    """
    from crossgap_index.cli.bars import stage_bars
    from crossgap_index.evaluation.protocol import evaluate

    flags = EvalFlags(
        dataset=dataset, model=model, device=device, vocab=vocab, span_components=span_components, task=task,
        steps=steps, tokens=tokens, ovi_steps=ovi_steps, patches=patches, batch_size=batch_size,
        sweep_steps=sweep_steps, sweep_tokens=sweep_tokens, sweep_patches=sweep_patches, sweep_lr=sweep_lr, lr=lr,
        index=index, transductive=transductive, limit=limit, precision=precision,
    )  # fmt: skip
    data, settings = eval_settings(flags)
    with stage_bars(enabled=not quiet) as progress:
        result = evaluate(data, settings, progress=progress)
    if vocab is not None:
        result.settings["span"]["vocabulary"] = str(vocab)
    _report(result, json_out, plots, quiet)


def eval_settings(flags: EvalFlags) -> tuple[EvalDataset, EvalSettings]:
    """The dataset and the ``EvalSettings`` a command line asks for: its sweeps parsed, its vocabulary read, its
    inversion flags as one ``InversionConfig``, and with ``--index`` what that index serves."""
    from crossgap_index.evaluation.data import load_dataset, read_vocab
    from crossgap_index.evaluation.settings import EvalSettings

    sweep_steps = _parse_steps(flags.sweep_steps, "--sweep-steps") if flags.sweep_steps else []
    sweep_tokens = _parse_steps(flags.sweep_tokens, "--sweep-tokens")
    sweep_patches = _parse_steps(flags.sweep_patches, "--sweep-patches") if flags.sweep_patches else [flags.patches]
    sweep_lrs = _parse_rates(flags.sweep_lr) if flags.sweep_lr else []
    data = load_dataset(flags.dataset, flags.limit)
    names = read_vocab(flags.vocab) if flags.vocab is not None else None
    inversion = InversionFlags(
        steps=flags.steps,
        ovi_steps=flags.ovi_steps,
        tokens=flags.tokens,
        patches=flags.patches,
        lr=flags.lr,
        batch_size=flags.batch_size,
        precision=flags.precision,
    )
    config = inversion.config_or_default()
    if flags.transductive and flags.index is None:
        raise QueryError("--transductive compares with an index's own inverters: give --index IDX")
    model, served, labelled = flags.model, {}, []
    if flags.index is not None:
        model, served, labelled = _served(flags.index, flags.device, data.spec)
    settings = EvalSettings(
        model=model,
        device=flags.device,
        precision=flags.precision,
        config=config,
        vocab=names,
        tasks=None if flags.task is Task.all else [flags.task.value],
        sweep_steps=sweep_steps,
        sweep_tokens=sweep_tokens,
        sweep_patches=sweep_patches,
        sweep_lrs=sweep_lrs,
        span_components=flags.span_components,
        transductive=flags.transductive,
        labelled_modes=labelled,
        **served,
    )
    return data, settings


def _report(result: EvalResult, json_out: bool, plots: Path | None, quiet: bool) -> None:
    """The result on stdout (a table, or one JSON document), and its plots where asked."""
    from crossgap_index.cli.render import err, out
    from crossgap_index.evaluation.report import render, write_plots

    if json_out:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        out.print(render(result))
    if plots is not None:
        for path in write_plots(result, plots):
            if not quiet:
                err.print(f"wrote {path}", highlight=False)


def _served(index: Path, device: str, spec: str) -> tuple[str, dict, list[str]]:
    """What an index serves: its model; as ``EvalSettings`` fields its tuned mode for each task (the default
    where none is stored) as ``tuned`` and its stored inverters as they are; and ``tuned`` among the modes
    chosen on labels when it was tuned on this very data (``spec``)."""
    from crossgap_index import CrossGapIndex
    from crossgap_index.evaluation.settings import IMAGES, TEXT_TO_IMAGE, TEXTS
    from crossgap_index.search.options import SearchOptions

    targets = {IMAGES: ("image", "images"), TEXTS: ("text", "texts"), TEXT_TO_IMAGE: ("text", "images")}
    with CrossGapIndex.open(index, device=device) as cgx:
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
    records = (info.tuned_modes or {}).values()
    labelled = ["tuned"] if any(record.get("dataset", {}).get("spec") == spec for record in records) else []
    return info.model, {"task_modes": task_modes, **networks}, labelled


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
