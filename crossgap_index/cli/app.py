"""`cgx`: the Typer app and its commands, one module each (crossgap_index/cli/*_command.py).

Start-up stays light: the command modules import only torch-free modules at their top; the library, rich
rendering, numpy, FAISS and torch load inside the commands that use them (`cgx --help` and `cgx info`
never import torch). A run builds only the command its line names (`main`): importing the other sixteen
command modules and building their Typer parameters is most of what a CLI start costs beyond Python itself.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from importlib import import_module
from typing import Annotated

import typer

from crossgap_index import __version__
from crossgap_index.cli.failures import fails_cleanly
from crossgap_index.cli.process import set_up_process

# Every command: its name, and the module (crossgap_index/cli/) and function that implement it, in the order
# `cgx --help` lists them.
COMMANDS = {
    "build-index": ("build_command", "build_index_command"),
    "add-texts": ("texts_command", "add_texts_command"),
    "query": ("query_command", "query_command"),
    "info": ("info_command", "info_command"),
    "demo": ("demo_command", "demo_command"),
    "eval": ("eval_command", "eval_command"),
    "export": ("export_command", "export_command"),
    "duplicates": ("duplicates_command", "duplicates_command"),
    "import": ("import_command", "import_command"),
    "tune": ("tune_command", "tune_command"),
    "train-inverter": ("tune_command", "train_inverter_command"),
    "remove": ("remove_command", "remove_command"),
    "ls": ("ls_command", "ls_command"),
    "check": ("check_command", "check_command"),
    "compact": ("compact_command", "compact_command"),
    "serve": ("serve_command", "serve_command"),
    "watch": ("watch_command", "watch_command"),
}


def _version(value: bool) -> None:
    if value:
        print(f"cgx (crossgap-index) {__version__}")
        raise typer.Exit()


def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    set_up_process()


def build_app(names: Iterable[str] = COMMANDS) -> typer.Typer:
    """The `cgx` app with the commands ``names`` (default: all). The group callback keeps it a group even with
    one command, so `cgx query ...` parses, helps and fails the same whichever set is built."""
    built = typer.Typer(
        help="crossgap-index: CLIP image/text search with modality-inversion reranking.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # plain help: rich markup would eat "[default: ...]" and cost start-up time
    )
    for name in names:
        module, function = COMMANDS[name]
        command = getattr(import_module(f"crossgap_index.cli.{module}"), function)
        built.command(name)(fails_cleanly(command))
    built.callback()(_main)
    return built


def main() -> None:
    """Run `cgx`. A line whose first word is a command builds that command alone; anything else (no
    arguments, `--help`, `--version`, a misspelt command) builds them all, to list them or say what is unknown."""
    named = sys.argv[1] if len(sys.argv) > 1 else ""
    build_app([named] if named in COMMANDS else COMMANDS)()


def __getattr__(name: str) -> typer.Typer:
    """``app``: every command, built on first use (tests and `typer.testing.CliRunner` drive it)."""
    if name == "app":
        globals()["app"] = full = build_app()
        return full
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
