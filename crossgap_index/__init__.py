"""crossgap-index: CLIP vector search with modality-inversion reranking."""

__version__ = "0.1.0"

from crossgap_index import _openmp  # noqa: E402, F401  (first: before anything loads torch or faiss)
from crossgap_index.api import BuildReport, CrossGapIndex, Hit, IndexInfo, TextReport  # noqa: E402
from crossgap_index.errors import CrossGapError  # noqa: E402

__all__ = ["BuildReport", "CrossGapError", "CrossGapIndex", "Hit", "IndexInfo", "TextReport", "__version__"]
