"""Build engines: where reading, decoding and embedding of new files run, and the gallery-side work after them.

The driver (CrossGapIndex.index_folders) decides which files go out and writes what comes back;
an engine turns paths into batches of ``Prepared`` items in input order. ``local`` decodes in
threads and leaves embedding to the driver's encoder; ``ray`` runs both on a Ray cluster and
returns items that carry their vectors.

The same split holds for the gallery side: gallery inversion (OTI/OVI of every stored item, ``invert``) and
derived collections (a feature map applied to every stored vector, ``map_vectors``) go out in blocks and come
back in order; the driver keeps every write (catalog rows, FAISS files, the derived files) and the resume.
``local`` runs the blocks in this process, ``ray`` in an actor pool; both call the same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from crossgap_index.errors import QueryError
from crossgap_index.ingest.pipeline import Prepared, ReadLimits
from crossgap_index.inversion.config import InversionConfig

if TYPE_CHECKING:  # torch loads with the first model
    from crossgap_index.models.factory import LoadedModel
    from crossgap_index.search.projections import FeatureMap

# The driver's loaded model, loaded on first call (an engine that runs the model elsewhere never calls it).
LoadedFn = Callable[[], "LoadedModel"]

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class PrepareRequest:
    """How an engine prepares files: the index's ``model`` spec, the driver's ``device``, the ``precision`` an
    engine that embeds must embed in (the driver's, from the index's rule), ``batch_size`` files a batch,
    ``workers`` decoding threads, and ``limits``: the size caps and the side images are decoded to."""

    model: str
    device: str
    precision: str
    batch_size: int
    workers: int
    limits: ReadLimits


class Engine(Protocol):
    def batches(self, paths: Sequence[Path], known: set[str], request: PrepareRequest) -> Iterator[list[Prepared]]:
        """Batches of prepared files in the order of ``paths``. ``known`` holds the content hashes
        whose vectors are stored (it grows while the driver writes); such files are not embedded."""
        ...

    def inversion_config(
        self, config: InversionConfig, *, model: str, device: str, loaded: LoadedFn
    ) -> InversionConfig:
        """``config`` with ``auto`` precision replaced by what it means where this engine inverts (the driver's
        device, or the actors'): the setting recorded with the stored features and their resume."""
        ...

    def invert(
        self,
        blocks: Iterable[tuple[np.ndarray, Sequence[int]]],
        *,
        direction: str,
        config: InversionConfig,
        model: str,
        device: str,
        loaded: LoadedFn,
    ) -> Iterator[np.ndarray]:
        """Per block of (unit target features, one seed per row), in order: ``oti`` (``direction`` 'oti') or
        ``ovi`` of the rows with ``config`` (resolved by ``inversion_config``) and those seeds. A generator: the
        driver closes it when it stops early, and the engine's workers are released then."""
        ...

    def map_vectors(self, projection: FeatureMap, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Per block of stored vectors, in order: ``projection.apply(block)`` (a derived collection's rows)."""
        ...


def get_engine(engine: str | Engine, ray_address: str | None = None, verbose: bool = False) -> Engine:
    """An engine object from its name (``local`` or ``ray``), or ``engine`` itself. ``verbose``: let Ray
    print its own INFO/WARNING logs (quiet otherwise)."""
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
        engine = RayEngine(address=ray_address, verbose=verbose)
        if ray_address is not None:
            engine.connect()  # a cluster that is not there fails here, before an index folder is made
        return engine
    raise QueryError(f"unknown engine '{engine}': use one of {', '.join(ENGINES)}")
