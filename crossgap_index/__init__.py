"""crossgap-index: CLIP vector search with modality-inversion reranking.

The public names load on first use (PEP 562): ``import crossgap_index.errors`` or reading
``__version__`` costs no numpy, FAISS or torch import.
"""

from importlib import import_module

__version__ = "0.1.0"

from crossgap_index import _openmp  # noqa: E402, F401  (first: before anything loads torch or faiss)

_LAZY = {
    "BuildOptions": "crossgap_index.build_options",
    "BuildReport": "crossgap_index.engines.build",
    "CrossGapIndex": "crossgap_index.api",
    "Hit": "crossgap_index.api",
    "ImportProgress": "crossgap_index.ingest.embeddings",
    "IndexInfo": "crossgap_index.api",
    "SearchOptions": "crossgap_index.search.options",
    "TextReport": "crossgap_index.engines.build",
    "CrossGapError": "crossgap_index.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
