"""Ray Data engine: read, decode and preprocess in CPU tasks, embed in an actor pool, stream back.

The driver keeps the incremental diff and every write (catalog, FAISS, resume): only the paths of
new and changed files go out, and vectors come back in input order (``preserve_order``) so catalog
ids are the same as the local engine's. Actors are restarted and their batches retried by Ray when a
worker process dies. With GPUs the stages stay apart (decode tasks on CPUs, embedding actors on
GPUs); on a CPU-only cluster Ray Data fuses the decode map into the embedding actors (same resources),
so each actor decodes and embeds its own batches and no pixels cross the object store. Workers import
crossgap_index, so on a multi-node cluster it must be installed on every node (or in a runtime_env).

Gallery-side work (gallery OTI/OVI, derived collections) runs in a pool of Ray actors (``actor_pool``): each
loads its model (or feature map) once, blocks go out round-robin with at most ``IN_FLIGHT`` per actor and come
back in input order, so the driver writes block i while later blocks are still computing and neither side
holds more than a window of them. Actors are restarted and their blocks retried when a worker dies. Inverting
actors take one GPU each where the cluster has GPUs (else ``actor_cpus`` CPUs); mapping actors run numpy and
take CPUs.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data
import torch
from PIL import Image

from crossgap_index.engines import ModelSite, PrepareRequest
from crossgap_index.engines.ray_address import CONNECT_TIMEOUT_S
from crossgap_index.engines.work import GalleryInverter, VectorMapper
from crossgap_index.errors import QueryError
from crossgap_index.ingest.decode import FileBytes
from crossgap_index.ingest.pipeline import Prepared, ReadLimits, prepare
from crossgap_index.inversion.config import InversionConfig
from crossgap_index.models import Encoder, load_model
from crossgap_index.search.gallery import apply_here
from crossgap_index.search.projections import ConceptMap, FeatureMap, Projection

HASH_DTYPE = "S32"  # content_hash: 16-byte blake2b as hex
IN_FLIGHT = 2  # blocks queued per gallery actor: one computing, one waiting, so an actor never idles


@functools.lru_cache(maxsize=2)
def _preprocess(model: str) -> Callable[[Image.Image], torch.Tensor]:
    """The model's image transform, loaded once per worker process (the weights are dropped)."""
    return load_model(model, "cpu").preprocess


def read_and_preprocess(
    batch: dict[str, np.ndarray], *, model: str, known: list, limits: ReadLimits
) -> dict[str, np.ndarray]:
    """CPU task: read, hash and (unless the content's vector is stored) decode and preprocess each file.
    ``known`` is ``[ObjectRef]`` of the sorted stored hashes (nested, so Ray passes the ref unresolved)."""
    stored = ray.get(known[0])
    preprocess = _preprocess(model)
    out: dict[str, list] = {k: [] for k in ("path", "content_hash", "size", "mtime_ns", "reused", "error", "pixels")}
    for path in batch["path"].tolist():
        item = prepare(Path(path), functools.partial(_contains, stored), limits)
        file = item.file
        out["path"].append(path)
        out["content_hash"].append(file.content_hash if file else "")
        out["size"].append(file.size if file else -1)
        out["mtime_ns"].append(file.mtime_ns if file else -1)
        out["reused"].append(item.reused)
        out["error"].append(item.error or "")
        pixels = preprocess(item.image).numpy().astype(np.float32).tobytes() if item.image is not None else b""
        out["pixels"].append(pixels)
    return {
        "path": np.array(out["path"], dtype=object),
        "content_hash": np.array(out["content_hash"], dtype=object),
        "size": np.array(out["size"], np.int64),
        "mtime_ns": np.array(out["mtime_ns"], np.int64),
        "reused": np.array(out["reused"], bool),
        "error": np.array(out["error"], dtype=object),
        "pixels": np.array(out["pixels"], dtype=object),
    }


def _contains(sorted_hashes: np.ndarray, digest: str) -> bool:
    key = digest.encode("ascii")
    i = int(np.searchsorted(sorted_hashes, key))
    return i < len(sorted_hashes) and sorted_hashes[i] == key


class ImageEmbedder:
    """Actor: embeds the preprocessed pixels of a batch; rows without pixels get a zero vector."""

    def __init__(self, model: str, device: str, batch_size: int, precision: str = "auto"):
        self.encoder = Encoder(load_model(model, device), batch_size, precision=precision)
        self.shape = tuple(self.encoder.loaded.preprocess(Image.new("RGB", (8, 8))).shape)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch.pop("pixels")
        rows = [i for i, px in enumerate(pixels) if len(px)]
        vectors = np.zeros((len(pixels), self.encoder.dim), np.float32)
        if rows:
            stacked = np.stack([np.frombuffer(pixels[i], np.float32).reshape(self.shape) for i in rows])
            vectors[rows] = self.encoder.encode_pixels(torch.from_numpy(stacked))
        batch["vector"] = vectors
        batch["embedded"] = np.array([len(px) > 0 for px in pixels], bool)
        return batch


def _resolved(config: InversionConfig, model: str, device: str) -> InversionConfig:
    """Remote: what ``auto`` precision means for ``model`` on the device an inverting actor gets (on a CPU it
    depends on the model's size: crossgap_index.precision), so the model is built there."""
    return config.resolved(load_model(model, device))


class RayEngine:
    """Runs on the Ray cluster at ``address`` (None: the running one, else a new local instance).

    ``actors``: embedding (and gallery) actors (default: one per GPU, else one per ``actor_cpus`` CPUs;
    never more than there are batches);
    ``actor_cpus``: CPUs reserved per actor on CPU-only clusters; ``embedder``, ``inverter``, ``mapper``:
    the actor classes.
    """

    def __init__(
        self,
        address: str | None = None,
        actors: int | None = None,
        actor_cpus: float = 1.0,
        embedder: type = ImageEmbedder,
        inverter: type = GalleryInverter,
        mapper: type = VectorMapper,
        verbose: bool = False,
    ):
        self.address = address
        self.verbose = verbose
        self.actors = actors
        self.actor_cpus = actor_cpus
        self.embedder = embedder
        self.inverter = inverter
        self.mapper = mapper

    def connect(self) -> None:
        """Start or join Ray (once). An explicit address that answers TCP but not as a Ray cluster is given
        up after about CONNECT_TIMEOUT_S (Ray's own default retries for 20 s, 120 s with RocksDB) unless
        the user set ``RAY_gcs_server_port_wait_time_s``."""
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(math.ceil(CONNECT_TIMEOUT_S)))
        level = logging.WARNING if self.verbose else logging.ERROR
        if not self.verbose:
            _quiet_ray()
        try:
            if self.address is None:
                ray.init(include_dashboard=False, log_to_driver=False, logging_level=level)
            else:
                ray.init(address=self.address, log_to_driver=False, logging_level=level)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise QueryError(f"cannot start or reach Ray at {self.address or 'a new local instance'}: {exc}") from exc

    def batches(self, paths: Sequence[Path], known: set[str], request: PrepareRequest) -> Iterator[list[Prepared]]:
        if not paths:
            return
        self.connect()
        resources = ray.cluster_resources()
        model, batch_size = request.model, request.batch_size
        gpus = int(resources.get("GPU", 0)) if request.device != "cpu" else 0
        blocks = max(1, math.ceil(len(paths) / batch_size))
        actors = min(blocks, self.actors or gpus or max(1, int(resources.get("CPU", 1) // self.actor_cpus)))
        stored = ray.put(np.array(sorted(known), dtype=HASH_DTYPE))
        context = ray.data.DataContext.get_current()
        saved = context.execution_options.preserve_order, context.enable_progress_bars
        context.execution_options.preserve_order = True  # catalog ids in input order, as the local engine
        context.enable_progress_bars = False
        embedder_kwargs = {
            "model": model,
            "device": "cuda" if gpus else "cpu",
            "batch_size": batch_size,
            "precision": request.precision,
        }
        try:
            dataset = (
                ray.data.from_items([{"path": str(p)} for p in paths], override_num_blocks=blocks)
                .map_batches(
                    read_and_preprocess,
                    batch_size=batch_size,
                    batch_format="numpy",
                    fn_kwargs={"model": model, "known": [stored], "limits": request.limits},
                )
                .map_batches(
                    self.embedder,
                    batch_size=batch_size,
                    batch_format="numpy",
                    fn_constructor_kwargs=embedder_kwargs,
                    compute=ray.data.ActorPoolStrategy(size=actors),
                    num_gpus=1 if gpus else 0,
                    num_cpus=0 if gpus else self.actor_cpus,
                )
            )
            for rows in dataset.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=1):
                yield [_prepared(rows, i) for i in range(len(rows["path"]))]
        finally:
            context.execution_options.preserve_order, context.enable_progress_bars = saved

    # -- gallery-side work ----------------------------------------------------------------------
    def inversion_config(self, config: InversionConfig, site: ModelSite) -> InversionConfig:
        """Resolved where the actors run: a task with an inverting actor's resources answers (a GPU's bf16
        support, or a worker CPU's), not the driver, which may have neither."""
        if config.precision != "auto":
            return config
        self.connect()
        resources, worker_device = self._model_resources(site.device)
        return ray.get(ray.remote(_resolved).options(**resources).remote(config, site.model, worker_device))

    def invert(
        self,
        blocks: Iterable[tuple[np.ndarray, Sequence[int]]],
        direction: str,
        config: InversionConfig,
        site: ModelSite,
    ) -> Iterator[np.ndarray]:
        self.connect()
        resources, worker_device = self._model_resources(site.device)
        args = (site.model, worker_device, direction, config)
        calls = ((np.ascontiguousarray(targets, np.float32), list(seeds)) for targets, seeds in blocks)
        yield from actor_pool(self.inverter, args, calls, self._pool_size(resources), resources)

    def map_vectors(self, projection: FeatureMap, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Linear and concept maps (plain arrays) go to CPU actors; a peer map (dba, nnn, center) reads the
        index's own statistics through the driver's store, so it is applied here by the same ``apply``."""
        if not isinstance(projection, Projection | ConceptMap):
            yield from apply_here(projection, blocks)
            return
        self.connect()
        resources = {"num_cpus": self.actor_cpus}
        calls = ((np.ascontiguousarray(block, np.float32),) for block in blocks)
        yield from actor_pool(self.mapper, (ray.put(projection),), calls, self._pool_size(resources), resources)

    def _model_resources(self, device: str) -> tuple[dict[str, float], str]:
        """An inverting actor's resources and device: one GPU each where the cluster has GPUs (unless the index
        runs on the CPU), else ``actor_cpus`` CPUs, as the embedding actors."""
        gpus = int(ray.cluster_resources().get("GPU", 0)) if device != "cpu" else 0
        return ({"num_gpus": 1, "num_cpus": 0}, "cuda") if gpus else ({"num_cpus": self.actor_cpus}, "cpu")

    def _pool_size(self, resources: dict[str, float]) -> int:
        if self.actors:
            return self.actors
        cluster = ray.cluster_resources()
        if resources.get("num_gpus"):
            return max(1, int(cluster.get("GPU", 1)))
        return max(1, int(cluster.get("CPU", 1) // max(self.actor_cpus, 1e-9)))


def actor_pool(
    actor_class: type, args: tuple, calls: Iterable[tuple], size: int, resources: dict[str, Any]
) -> Iterator[np.ndarray]:
    """``actor.run(*call)`` for each call, on up to ``size`` actors of ``actor_class(*args)`` made as calls arrive
    (never more than there are calls), round-robin with at most ``IN_FLIGHT`` calls per actor outstanding;
    results are yielded in call order. A dead actor is restarted and its calls retried (``max_restarts``,
    ``max_task_retries``); the actors are killed when the stream ends or is abandoned."""
    remote = ray.remote(actor_class).options(max_restarts=-1, max_task_retries=-1, **resources)
    actors: list = []
    pending: collections.deque = collections.deque()
    try:
        for i, call in enumerate(calls):
            if len(actors) < size:
                actors.append(remote.remote(*args))
            pending.append(actors[i % size].run.remote(*call))
            if len(pending) >= IN_FLIGHT * size:
                yield np.array(ray.get(pending.popleft()), np.float32)
        while pending:
            yield np.array(ray.get(pending.popleft()), np.float32)
    finally:
        for actor in actors:
            ray.kill(actor)


def _prepared(rows: dict[str, np.ndarray], i: int) -> Prepared:
    path = Path(rows["path"][i])
    # The bytes stay on the worker: the driver re-reads a file only in the rare case it must embed it itself.
    file = FileBytes(path, b"", str(rows["content_hash"][i]), int(rows["size"][i]), int(rows["mtime_ns"][i]))
    if rows["error"][i]:  # a file read but not decoded keeps its stat: the build remembers the failure by it
        return Prepared(file if file.size >= 0 else None, path, error=str(rows["error"][i]))
    if rows["embedded"][i]:
        return Prepared(file, path, vector=np.array(rows["vector"][i], np.float32))
    return Prepared(file, path, reused=bool(rows["reused"][i]))


def _quiet_ray() -> None:
    """Keep Ray's own chatter off a successful run's terminal: its Python loggers (``ray``, ``ray.data``:
    token notices, execution plans, "execution finished", the progress-bar notice) show errors only. Its
    C++ core worker's lines are left as they are: RAY_BACKEND_LOG_LEVEL would silence them but prints a
    line of its own saying so."""
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
