"""`cgx`: the Typer app and its commands, one module each (crossgap_index/cli/*_command.py).

Start-up stays light: the command modules import only torch-free modules at their top; the library, rich
rendering, numpy, FAISS and torch load inside the commands that use them (`cgx --help` and `cgx info`
never import torch).
"""

from __future__ import annotations

from typing import Annotated

import typer

from crossgap_index import __version__
from crossgap_index.cli.build_command import build_index_command
from crossgap_index.cli.check_command import check_command
from crossgap_index.cli.compact_command import compact_command
from crossgap_index.cli.demo_command import demo_command
from crossgap_index.cli.duplicates_command import duplicates_command
from crossgap_index.cli.eval_command import eval_command
from crossgap_index.cli.export_command import export_command
from crossgap_index.cli.failures import fails_cleanly
from crossgap_index.cli.import_command import import_command
from crossgap_index.cli.info_command import info_command
from crossgap_index.cli.ls_command import ls_command
from crossgap_index.cli.process import set_up_process
from crossgap_index.cli.query_command import query_command
from crossgap_index.cli.remove_command import remove_command
from crossgap_index.cli.serve_command import serve_command
from crossgap_index.cli.texts_command import add_texts_command
from crossgap_index.cli.tune_command import train_inverter_command, tune_command
from crossgap_index.cli.watch_command import watch_command

app = typer.Typer(
    help="crossgap-index: CLIP image/text search with modality-inversion reranking.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich markup would eat "[default: ...]" and cost start-up time
)

# In the order `cgx --help` lists them.
COMMANDS = (
    ("build-index", build_index_command),
    ("add-texts", add_texts_command),
    ("query", query_command),
    ("info", info_command),
    ("demo", demo_command),
    ("eval", eval_command),
    ("export", export_command),
    ("duplicates", duplicates_command),
    ("import", import_command),
    ("tune", tune_command),
    ("train-inverter", train_inverter_command),
    ("remove", remove_command),
    ("ls", ls_command),
    ("check", check_command),
    ("compact", compact_command),
    ("serve", serve_command),
    ("watch", watch_command),
)
for _name, _command in COMMANDS:
    app.command(_name)(fails_cleanly(_command))


def _version(value: bool) -> None:
    if value:
        print(f"cgx (crossgap-index) {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    set_up_process()


def main() -> None:
    app()
