"""The real ``cgx`` in its own process, importing this checkout's code (whatever the current directory)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cgx_env(**extra: str) -> dict[str, str]:
    """The environment of a ``cgx`` subprocess: this checkout first on the path, one OpenMP thread."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def cgx_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "crossgap_index", *map(str, args)]


def cgx(
    *args: object, timeout: float = 180, memory_gb: float | None = None, check: bool = False, **kwargs
) -> subprocess.CompletedProcess:
    """Run ``cgx args`` to the end and return it (text stdout/stderr). ``memory_gb`` caps its address space, so a
    defect that reads without bound fails fast instead of eating the machine; ``check`` asserts exit 0."""

    def limit() -> None:
        if memory_gb is not None:
            cap = int(memory_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    kwargs.setdefault("env", cgx_env())
    kwargs.setdefault("cwd", REPO)
    done = subprocess.run(
        cgx_command(*args), capture_output=True, text=True, timeout=timeout, preexec_fn=limit, **kwargs
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def cgx_process(*args: object, **kwargs) -> subprocess.Popen:
    """Start ``cgx args`` and return at once, for a test that stops or kills it at a known point. Its output is
    piped as text (bytes that are not UTF-8 shown as escapes) unless the caller says otherwise."""
    defaults = {"env": cgx_env(), "cwd": REPO, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    kwargs = {**defaults, "errors": "backslashreplace", **kwargs}
    return subprocess.Popen(cgx_command(*args), **kwargs)
