"""`--engine ray` keeps Ray's own logs off a successful build's terminal unless --verbose."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support.photos import MODEL, write_photo

pytest.importorskip("ray")

RAY_LOG = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+\t(INFO|WARNING) ", re.M)  # Ray's Python log format


@pytest.mark.slow  # starts a local Ray instance in a subprocess: tens of seconds
def test_a_ray_build_prints_only_our_own_lines(tmp_path):
    for i in range(4):
        write_photo(tmp_path / "photos" / f"p{i}.png", seed=i)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    args = [sys.executable, "-m", "crossgap_index", "build-index", str(tmp_path / "photos"), "--engine", "ray"]
    args += ["--index", str(tmp_path / "index"), "--model", MODEL, "--device", "cpu"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert not RAY_LOG.search(done.stderr), done.stderr
    assert "added 4" in done.stderr
