"""A saved inverter is opened only when it is a regular file of a plausible size: a FIFO in its place (opening
it would wait for a writer forever), a link to /dev/zero, or a huge file is refused in one line, unread."""

from __future__ import annotations

import os

import pytest

from crossgap_index.errors import StoreError
from crossgap_index.inversion import inverter
from crossgap_index.inversion.inverter import Inverter


def test_a_fifo_in_place_of_an_inverter_is_refused_without_opening_it(tmp_path):
    path = tmp_path / "inverter.safetensors"
    os.mkfifo(path)
    with pytest.raises(StoreError, match="not a regular file"):
        Inverter.load(path, "crossgap-small")


def test_a_link_to_dev_zero_is_refused(tmp_path):
    path = tmp_path / "inverter.safetensors"
    path.symlink_to("/dev/zero")
    with pytest.raises(StoreError, match="not a regular file"):
        Inverter.load(path, "crossgap-small")


def test_a_file_over_the_cap_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "inverter.safetensors"
    with open(path, "wb") as handle:
        handle.truncate(4096)  # sparse: a size, no content to read
    monkeypatch.setattr(inverter, "MAX_INVERTER_BYTES", 1024)
    with pytest.raises(StoreError, match="more than an inverter file holds"):
        Inverter.load(path, "crossgap-small")
