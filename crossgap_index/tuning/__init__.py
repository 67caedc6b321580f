"""`cgx tune`: choose the winning mode on labelled data and store it in the index."""

from crossgap_index.tuning.tune import TuneResult, tune

__all__ = ["TuneResult", "tune"]
