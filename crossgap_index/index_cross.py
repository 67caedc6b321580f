"""The cross-modal part of CrossGapIndex (api.py): what ``--cross`` searches against (gallery inversions,
derived collections), the mode each query is served (tuned records, ``tune``) and the inversion networks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crossgap_index.index_info import apply_tuned_record, check_tuned_record
from crossgap_index.index_inverters import inverter_file, train_index_inverter
from crossgap_index.index_runtime import IndexRuntime, reads
from crossgap_index.inversion import InversionConfig
from crossgap_index.search.modes import Mode
from crossgap_index.search.options import SearchOptions
from crossgap_index.store.directory import Store
from crossgap_index.words import CountProgress, check_modality

if TYPE_CHECKING:  # torch loads with the first network, the engines with the first write
    from crossgap_index.engines import Engine
    from crossgap_index.inversion.inverter import Inverter, InverterConfig


class IndexCross:
    """Methods of CrossGapIndex over the store it holds (``_store``) and its loaded parts (``_runtime``)."""

    _store: Store
    _runtime: IndexRuntime
    _device: str

    # -- gallery-side inversion ------------------------------------------------------------
    def invert_gallery(
        self,
        config: InversionConfig | None = None,
        progress: CountProgress | None = None,
        modality: str = "image",
        engine: str | Engine = "local",
    ) -> int:
        """Store each gallery item's inverted feature, so queries of its modality can be compared inter-modally
        with no optimisation at query time (mode ``cross-gallery``): each image's OTI text-space feature
        (collection ``image-oti``), or with ``modality="text"`` each stored text's OVI image-space feature
        (``text-ovi``). Resumable: only items without a stored feature are inverted. Returns how many were.
        ``config`` None: the settings the gallery was inverted with (kept current), else the defaults.
        ``engine``: where the inversions run (``local``: this process; ``ray``: an actor pool); this process
        writes them either way."""
        from crossgap_index.engines import get_engine
        from crossgap_index.engines.build import invert_gallery_items

        check_modality(modality)
        engine = get_engine(engine)
        with self._store.writing():
            manifest = self._store.manifest
            stored = manifest.gallery_inversion if modality == "image" else manifest.text_gallery_inversion
            if config is None:
                config = InversionConfig(**stored) if stored else InversionConfig()
            loaded = lambda: self._runtime.encoder.loaded  # noqa: E731 - the local engine's model, loaded on first use
            return invert_gallery_items(self._store, config, modality, engine, loaded, self._device, progress)

    def build_derived(self, engine: str | Engine = "local") -> list[str]:
        """Build now the derived collections (span, iso, concept, peer maps) that ``--cross`` (mode ``auto``)
        searches against, so the first query finds them current instead of building them. ``engine``: where the
        maps are applied (``ray``: an actor pool, vectors in blocks). Returns the names of those built (none when
        they were current, or the served modes need none)."""
        from crossgap_index.engines import get_engine
        from crossgap_index.engines.derived import build_served_derived

        engine = get_engine(engine)
        with self._store.writing():
            return build_served_derived(self._store, self._runtime.searcher, engine)

    @reads
    def prepare_derived(self) -> list[str]:
        """Bring the derived collections ``--cross`` (mode ``auto``) searches up to date with the state this handle
        holds, now and in this process (no writer lock: a reader after ``refresh``), so the first query finds them
        current. Returns the names built (those already current on disk are loaded by the first query)."""
        from crossgap_index.engines.derived import served_maps
        from crossgap_index.search.gallery import derived_name

        gallery = self._runtime.searcher.gallery
        return [
            derived_name(collection, projection)
            for collection, projection in served_maps(self._store, self._runtime.searcher)
            if gallery.refresh(collection, projection)
        ]

    def served_mode(self, options: SearchOptions, query_modality: str) -> Mode:
        """The Mode a query of ``query_modality`` asked with ``options`` runs (``auto``: the tuned one);
        e.g. ``.inverts`` tells a server which queries to batch."""
        return self._runtime.searcher.served(options, query_modality)

    def describe_mode(self, query_modality: str, options: SearchOptions | None = None, **settings) -> dict:
        """The mode a query of ``query_modality`` is served with (``auto`` resolved), as data and as one line."""
        chosen = self.served_mode(SearchOptions.of(options, **settings), query_modality)
        return {"name": chosen.name, "summary": chosen.describe(), **chosen.to_dict()}

    @property
    def tuned_mode(self) -> dict | None:
        """The record ``cgx tune`` stored last: the mode, its task, selection and report mAPs, the dataset, the date."""
        return self._store.manifest.tuned_mode

    @property
    def tuned_modes(self) -> dict[str, dict]:
        """Every stored tune record by task (image-to-image, text-to-text, text-to-image; ``any``: a record
        that names no task). ``mode="auto"`` serves a query the record of its task."""
        return dict(self._store.manifest.tuned_modes)

    def set_tuned_mode(self, record: dict | None, task: str | None = None) -> None:
        """Store the mode that ``mode="auto"`` and ``cgx query --cross`` serve for the record's task (its
        ``task`` field; none: every query), replacing only that task's record. ``None`` clears ``task``'s
        record, or with no ``task`` every record."""
        check_tuned_record(record)
        with self._store.writing():
            apply_tuned_record(self._store.manifest, record, task)
            self._store.save()
        self._runtime.forget_searcher()

    def tune(self, dataset, *, inversion: bool = True, seed: int = 0, progress=None, task: str | None = None):
        """Choose the mode that wins on labelled ``dataset`` (the forms ``cgx eval`` takes) and store it for
        the task tuned (``task``: image-to-image or text-to-text; default: images when the dataset has them):
        ``mode="auto"`` and ``cgx query --cross`` serve it to that task's queries. Stores nothing when the data
        is below tune's minimum or the winner's held-out gain is not above noise (``result.stored``,
        ``result.reason``). Returns the TuneResult."""
        from crossgap_index.tuning import tune

        kwargs = {"task": task} if task is not None else {}
        result, network = tune(
            dataset, self._runtime.encoder, inversion=inversion, seed=seed, progress=progress, **kwargs
        )
        if not result.stored:
            return result
        with self._store.writing():
            if network is not None:
                network.save(inverter_file(self._store.path, network.query_modality))
                self._runtime.keep_inverter(network.query_modality, network)
            self.set_tuned_mode(result.record)
        return result

    # -- inversion networks ---------------------------------------------------------------
    def train_inverter(
        self, config: InverterConfig | None = None, progress=None, modality: str = "image", replace: bool = False
    ) -> Inverter:
        """Train the one-pass inversion network for ``modality`` queries on this index's own items, no labels,
        and save it beside the index: ``image`` (OTI: the image vectors through the text tower) or ``text``
        (OVI: the stored texts through the image tower). ``config.direction`` follows ``modality``. A network
        that ``max_seconds`` cut short of its steps does not replace a stored one unless ``replace``: the
        stored one is kept and a StoreError says so (nothing is replaced silently)."""
        check_modality(modality)
        network = train_index_inverter(self._store, self._runtime.encoder, config, progress, modality, replace)
        self._runtime.keep_inverter(modality, network)
        return network

    def inverter(self, modality: str = "image") -> Inverter:
        """The saved network for ``modality`` queries (image: OTI, text: OVI); StoreError when there is none,
        or when the file is another model's or another direction's."""
        return self._runtime.inverter(modality)
