"""The options several `cgx` commands share, declared once as ``Annotated`` aliases with their help.

A command names an alias as its parameter's type (``index: IndexOpt = None``); the flag, its help and its
limits are then the same in every command that takes it. Only light modules are imported here: `cgx --help`
builds every alias.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from crossgap_index.models import DEFAULT_MODEL, bundled_names
from crossgap_index.words import TARGETS

_INDEX_DEFAULT = "$CGX_INDEX or the user data dir"

IndexOpt = Annotated[
    Path | None,
    typer.Option("--index", envvar="CGX_INDEX", help=f"Index directory [default: {_INDEX_DEFAULT}]."),
]
# `cgx serve` and `cgx watch` state the same default in parentheses.
ServiceIndexOpt = Annotated[
    Path | None,
    typer.Option("--index", envvar="CGX_INDEX", help=f"Index directory (default: {_INDEX_DEFAULT})."),
]


def model_option(use: str) -> Any:
    """``--model`` (or $CGX_MODEL): every spec form, then ``use``, what the command does with the model."""
    forms = f"ARCH/TAG (default {DEFAULT_MODEL}), ARCH::/path/weights, a model folder, or a bundled name"
    return Annotated[
        str | None,
        typer.Option("--model", envvar="CGX_MODEL", help=f"Model spec: {forms} ({', '.join(bundled_names())}). {use}"),
    ]


def index_option(help: str) -> Any:
    """``--index`` (or $CGX_INDEX) with this command's ``help``."""
    return Annotated[Path | None, typer.Option("--index", envvar="CGX_INDEX", help=help)]


ModelOpt = model_option("New indexes only; an existing index keeps its model.")
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA when available), cpu, cuda, cuda:N (the Nth GPU) or mps (Apple GPU)."),
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto (bf16 where the CPU/GPU runs it natively, else fp32; a small model inverts in fp32 on a CPU), "
        "fp32 or bf16: the model's compute "
        "precision; an index takes another precision than its vectors' only within the measured agreement.",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries on stderr.")]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", help="Also show the engine's own logs (Ray's INFO/WARNING lines).")
]
NoWaitOpt = Annotated[
    bool, typer.Option("--no-wait", help="Fail at once if another process is writing the index, instead of waiting.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
RayAddressOpt = Annotated[
    str | None, typer.Option(help="--engine ray: auto, or a cluster address [default: a new local instance].")
]

# Which files a folder walk reads (build-index, watch).
IncludeHiddenOpt = Annotated[bool, typer.Option(help="Also index hidden files and folders.")]
MaxImageMegapixelsOpt = Annotated[
    float, typer.Option(min=0.0, help="Skip images larger than this (decompression-bomb guard).")
]
MaxFileMbOpt = Annotated[float, typer.Option(min=0.0, help="Skip files larger than this many MB without reading them.")]


def exclude_option(help: str) -> Any:
    """``--exclude GLOB`` (repeatable) with this command's ``help``: which folders and files a walk leaves out."""
    return Annotated[list[str] | None, typer.Option(metavar="GLOB", help=help)]


def engine_option(help: str) -> Any:
    """``--engine`` (local or ray) with this command's ``help``: where the command's heavy work runs."""
    return Annotated[str, typer.Option(help=help)]


# The collection a search reads, as users name it (crossgap_index.words.TARGETS).
Target = Enum("Target", {name: name for name in TARGETS}, type=str)
