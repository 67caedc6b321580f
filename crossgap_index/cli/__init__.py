"""The `cgx` command line: a thin typer layer over crossgap_index (whose import sets OpenMP's passive wait
before torch loads: crossgap_index/_openmp.py)."""
