"""`cgx serve` on a port something already listens on: one line and exit 1, before the index or model load."""

from __future__ import annotations

import socket
import subprocess
import sys


def test_a_busy_port_is_refused_before_anything_loads(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        missing = tmp_path / "no-index-here"  # opening it would fail with another message: the port is checked first
        done = subprocess.run(
            [sys.executable, "-m", "crossgap_index", "serve", "--index", str(missing), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0] and "--port" in lines[0], lines
    assert "Traceback" not in done.stderr and not missing.exists()
