"""Shared fixtures: small real image folders (with broken files) and tiny-random indexes."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see crossgap_index/_openmp.py

import subprocess
from pathlib import Path

import pytest

from tests.support.photos import make_photo_folder


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    return make_photo_folder(tmp_path)


@pytest.fixture(scope="session")
def serve_template(tmp_path_factory) -> tuple[Path, Path]:
    """The serve tests' crossgap-small index and photos (``tests.support.serve.build_index``), built once per
    run and never opened: each module serves its own copy (``tests.support.serve.copy_index``)."""
    from tests.support.serve import build_index  # uvicorn and the server load only where a test serves

    return build_index(tmp_path_factory.mktemp("serve-template"))


@pytest.fixture
def small_disk(tmp_path):
    """A real, small tmpfs (root may mount one); resized with ``remount``, unmounted at the end."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
