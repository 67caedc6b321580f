"""What an opened index loads on first use: its model, its read side (the Searcher) and its inversion networks.
Threads that arrive together build each once; writes that change what the read side serves (a tuned mode, a
new network, another process's state) drop the Searcher so the next read builds it afresh."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from crossgap_index.index_inverters import inverter_file, load_inverter
from crossgap_index.index_model import load_encoder
from crossgap_index.search.gallery import StoreGallery
from crossgap_index.search.searcher import Searcher
from crossgap_index.store.directory import Store
from crossgap_index.words import check_modality

if TYPE_CHECKING:  # torch loads with the first model
    from crossgap_index.inversion.inverter import Inverter
    from crossgap_index.models import Encoder
    from crossgap_index.models.query_encoder import QueryEncoder


class IndexRuntime:
    """The model, Searcher and inverters of one opened index, each built on first use and shared by threads."""

    def __init__(self, store: Store, device: str, precision: str):
        self._store = store
        self.device = device
        self._precision = precision
        self._encoder: Encoder | None = None
        self._query_encoder: QueryEncoder | None = None
        self._searcher: Searcher | None = None
        self._inverters: dict[str, Inverter] = {}
        self._fits = None  # who runs gallery fits (search/fitting.py): this thread unless fit_in_background()
        self._loading = threading.RLock()

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            with self._loading:
                if self._encoder is None:
                    self._encoder = load_encoder(self._store, self.device, self._precision)
        return self._encoder

    @property
    def encoder_loaded(self) -> bool:
        """Whether the model is in memory (a build with nothing to embed never loads it)."""
        return self._encoder is not None

    def query_encoder(self) -> QueryEncoder:
        """What searches embed queries with: image queries on a verified ONNX tower where one serves this index,
        the rest on ``encoder`` (crossgap_index.models.query_encoder)."""
        if self._query_encoder is None:
            with self._loading:
                if self._query_encoder is None:
                    from crossgap_index.models.query_encoder import query_encoder_for

                    self._query_encoder = query_encoder_for(
                        self._store.path,
                        self._store.manifest,
                        self.device,
                        self._precision,
                        lambda: self.encoder,
                        lambda: self._encoder is not None,
                    )
        return self._query_encoder

    def use_encoder(self, encoder: Encoder) -> None:
        """Embed with ``encoder`` (one made with the index, or another handle's on the same index)."""
        self._encoder = encoder

    @property
    def searcher(self) -> Searcher:
        """The read side (search/searcher.py); one per opened index, shared by every thread."""
        if self._searcher is None:
            with self._loading:
                if self._searcher is None:
                    self._searcher = self._new_searcher()
        return self._searcher

    def _new_searcher(self) -> Searcher:
        path = self._store.path
        image = inverter_file(path, "image").is_file()
        text = inverter_file(path, "text").is_file()
        return Searcher(
            self._store,
            self._store.manifest.model,
            self.query_encoder,
            functools.partial(self.inverter, "image") if image else None,
            self._store.cache,
            text_inverter=functools.partial(self.inverter, "text") if text else None,
            gallery=StoreGallery(self._store, self._fits),
        )

    def forget_searcher(self) -> None:
        """The next read builds a new Searcher (tuned modes and inverter files are read again)."""
        self._searcher = None

    def fit_in_background(self):
        """Gallery fits run on a background thread from now on (search/fitting.py); returns the runner."""
        from crossgap_index.search.fitting import BackgroundFits

        with self._loading:
            self._fits = BackgroundFits()
            self._searcher = None
        return self._fits

    def inverter(self, modality: str = "image") -> Inverter:
        """The saved network for ``modality`` queries, loaded once."""
        check_modality(modality)
        if modality not in self._inverters:
            with self._loading:
                if modality not in self._inverters:
                    model, device = self._store.manifest.model, lambda: self.encoder.device
                    self._inverters[modality] = load_inverter(self._store.path, modality, model, device)
        return self._inverters[modality]

    def keep_inverter(self, modality: str, network: Inverter) -> None:
        """A network just saved for ``modality`` queries serves them from now on."""
        self._inverters[modality] = network
        self._searcher = None


def reads(method: Callable) -> Callable:
    """Run a CrossGapIndex read under the store's shared lock: a search sees FAISS and catalog rows of one state."""

    @functools.wraps(method)
    def reading(self, *args, **kwargs):
        with self._store.reading():
            return method(self, *args, **kwargs)

    return reading
