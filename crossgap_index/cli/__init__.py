"""The `cgx` command line: a thin typer layer over crossgap_index."""

import os

# OpenMP threads that spin while they wait make small torch ops far slower whenever another process
# holds a core (measured on 2 shared cores: 150 OTI steps on crossgap-small took 43.8 s spinning,
# 1.3 s passive). Set before torch loads; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
