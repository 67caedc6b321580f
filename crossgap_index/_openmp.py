"""OpenMP's passive wait for every entry point, set before torch or faiss load their OpenMP runtime.

Threads that spin while they wait make small torch/FAISS ops far slower whenever another process
holds a core: two library processes searching at once on 2 shared cores ran 20x slower (51 s vs
2.5 s), 150 OTI steps took 43.8 s spinning vs 1.3 s passive. An explicit user setting wins; once
the runtime is loaded the variable is read no more, so it is left alone then.
"""

import os
import sys


def prefer_passive_wait() -> None:
    if not {"torch", "faiss"} & sys.modules.keys():
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


prefer_passive_wait()
