"""Evaluation behind ``cgx eval``: metrics (numpy only), datasets, the protocol, reports and plots.

Import from the submodules (``evaluation.protocol.evaluate``, ``evaluation.metrics.retrieval_metrics``),
so the metrics stay usable without loading torch.
"""
