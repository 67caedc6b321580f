"""Build engines: where reading, decoding and embedding of new files run.

The driver (CrossGapIndex.index_folders) decides which files go out and writes what comes back;
an engine turns paths into batches of ``Prepared`` items in input order. ``local`` decodes in
threads and leaves embedding to the driver's encoder; ``ray`` runs both on a Ray cluster and
returns items that carry their vectors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from crossgap_index.errors import QueryError
from crossgap_index.ingest.pipeline import Prepared, ReadLimits

ENGINES = ("local", "ray")


class Engine(Protocol):
    def batches(
        self,
        paths: Sequence[Path],
        known: set[str],
        *,
        model: str,
        device: str,
        precision: str,
        batch_size: int,
        workers: int,
        limits: ReadLimits,
    ) -> Iterator[list[Prepared]]:
        """Batches of prepared files in the order of ``paths``. ``known`` holds the content hashes
        whose vectors are stored (it grows while the driver writes); such files are not embedded.
        ``precision``: what an engine that embeds must embed in (the driver's, from the index's rule);
        ``limits``: the size caps and the side images are decoded to."""
        ...


def get_engine(engine: str | Engine, ray_address: str | None = None) -> Engine:
    """An engine object from its name (``local`` or ``ray``), or ``engine`` itself."""
    if not isinstance(engine, str):
        return engine
    if engine == "local":
        from crossgap_index.engines.local import LocalEngine

        return LocalEngine()
    if engine == "ray":
        from crossgap_index.engines.ray_address import check_reachable

        check_reachable(ray_address)  # seconds, before Ray loads and before an index is created
        try:
            from crossgap_index.engines.ray_data import RayEngine
        except ImportError as exc:
            raise QueryError(f'the ray engine needs Ray Data: pip install "crossgap-index[ray]" ({exc})') from exc
        engine = RayEngine(address=ray_address)
        if ray_address is not None:
            engine.connect()  # a cluster that is not there fails here, before an index folder is made
        return engine
    raise QueryError(f"unknown engine '{engine}': use one of {', '.join(ENGINES)}")
