"""crossgap-index: CLIP vector search with modality-inversion reranking."""

__version__ = "0.1.0"
