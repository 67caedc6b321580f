"""Ctrl-C during `cgx train-inverter` says what is true: training keeps no checkpoint, so nothing is saved and a
stored network is left as it was. The SIGINT lands at a known point: once the progress bar shows training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.serve_support import copy_index


@pytest.mark.slow
def test_ctrl_c_during_training_says_nothing_was_saved(serve_template, tmp_path):
    index_dir, _ = copy_index(serve_template, tmp_path)
    # TTY_COMPATIBLE, TTY_INTERACTIVE: rich draws the bar on a pipe, so the test sees when the training loop runs
    env = {**os.environ, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "200"}
    command = [sys.executable, "-m", "crossgap_index", "train-inverter", "--index", str(index_dir)]
    command += ["--device", "cpu", "--steps", "100000000", "--batch-size", "4"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, env=env)
    try:
        seen = b""
        deadline = time.monotonic() + 300
        while b"training" not in seen:  # the first step is done: the loop is running
            assert time.monotonic() < deadline and process.poll() is None, seen.decode(errors="replace")
            seen += os.read(process.stderr.fileno(), 4096)
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        assert process.wait(timeout=120) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    said = (seen + rest).decode(errors="replace")
    assert "cgx: interrupted; no network was saved" in said and "resume" not in said, said
    assert "Traceback" not in said
    assert not (index_dir / "inverter.safetensors").exists()
    assert not any(path.name.endswith(".tmp") for path in index_dir.iterdir())
