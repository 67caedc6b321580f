"""Settings and environments a user can get wrong: inversion bounds (one definition for the CLI, library and server),
factory strings tried before they are accepted, an unreachable Ray address, a huge synthetic dataset, and
train-inverter's --max-seconds; each refused in one line, quickly, creating nothing.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import threading

import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.datasets.synthetic import generate
from crossgap_index.errors import QueryError, StoreError
from crossgap_index.evaluation.data import MAX_SYNTHETIC_ITEMS, _png, load_dataset
from crossgap_index.inversion import InversionConfig
from crossgap_index.inversion.config import LR_MAX, N_PATCHES_MAX, N_TOKENS_MAX
from crossgap_index.inversion.inverter import InverterConfig
from tests.support.cli import REPO, cgx, cgx_env
from tests.support.faults import build, cli, one_line, photos
from tests.support.photos import MODEL


# -- one definition of the inversion bounds, for the CLI and the server
def test_inversion_bounds_are_one_definition_for_cli_library_and_server():
    from pydantic import ValidationError

    from crossgap_index.server.models import SearchRequest

    bounds = (("lr", "lr", LR_MAX), ("tokens", "n_tokens", N_TOKENS_MAX), ("patches", "n_patches", N_PATCHES_MAX))
    for field, key, top in bounds:
        over = top * 2
        InversionConfig(**{key: top})  # the bound itself is accepted everywhere
        SearchRequest(**{field: top})
        with pytest.raises(QueryError):
            InversionConfig(**{key: over})
        with pytest.raises(ValidationError):
            SearchRequest(**{field: over})
    with pytest.raises(QueryError, match="lr must be"):
        InversionConfig(lr=1e30)


def test_cli_refuses_an_lr_beyond_the_bound_in_one_line(tmp_path):
    index = tmp_path / "idx"
    photo_dir = photos(tmp_path / "photos", 4)
    build(index, photo_dir)
    query = photo_dir / "p0000.png"
    result = cli("query", query, "--index", index, "--mode", "cross", "--lr", "1e30")
    assert result.exit_code == 1  # was: 0 hits and "the merged lists ran short"
    assert f"lr must be > 0 and <= {LR_MAX:g}" in one_line(result.output)
    ok = cli("query", query, "--index", index, "--mode", "cross", "--lr", "0.05", "--steps", "2", "-k", "3", "-q")
    assert ok.exit_code == 0, ok.output


# -- factory strings are tried on a tiny index before they are accepted
@pytest.mark.slow
def test_factory_strings_the_store_cannot_use_are_refused_once_in_one_line(tmp_path):
    photo_dir = photos(tmp_path / "photos", 4)
    for factory in ("IDMap,Flat", "IDMap2,Flat", "Flat,IDMap", "IVF4,PQ7", "nonsense"):
        index = tmp_path / f"idx-{factory.replace(',', '-')}"
        result = cli(
            "build-index", photo_dir, "--index", index, "--model", MODEL, "--device", "cpu", "--factory", factory
        )
        assert result.exit_code == 1, (factory, result.output)  # IDMap,Flat was accepted, then every query crashed
        assert f"invalid FAISS factory string '{factory}'" in one_line(result.output)
        assert not index.exists()
    good = tmp_path / "idx-hnsw"
    result = cli("build-index", photo_dir, "--index", good, "--model", MODEL, "--device", "cpu", "--factory", "HNSW16")
    assert result.exit_code == 0, result.output


def test_a_hand_edited_manifest_factory_is_refused_by_every_command(tmp_path):
    photo_dir = photos(tmp_path / "photos", 4)
    index = tmp_path / "idx"
    build(index, photo_dir)
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["factories"]["image"] = "IDMap,Flat"
    (index / "manifest.json").write_text(json.dumps(manifest))
    for args in (("check",), ("build-index", photo_dir), ("query", "a cat"), ("ls",)):
        result = cli(*args, "--index", index)
        assert result.exit_code == 1, (args, result.output)  # check passed, build-index crashed
        line = one_line(result.output)
        assert "manifest.json" in line and "invalid FAISS factory string 'IDMap,Flat'" in line


# -- an unreachable Ray address: seconds, one line, SIGTERM honoured, no index folder
def _silent_listener() -> tuple[socket.socket, threading.Event]:
    """A TCP port that accepts connections and never answers (not a Ray cluster); the event is set on
    the first connection."""
    server = socket.create_server(("127.0.0.1", 0))
    connected = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            connected.set()

    threading.Thread(target=accept, daemon=True).start()
    return server, connected


@pytest.mark.slow
def test_unreachable_ray_address_fails_in_seconds_with_one_line_and_creates_nothing(tmp_path):
    photo_dir = photos(tmp_path / "photos", 2)
    server, _ = _silent_listener()
    try:
        for address in ("127.0.0.1:1", f"127.0.0.1:{server.getsockname()[1]}"):
            index = tmp_path / f"idx-{address.split(':')[1]}"
            args = ("build-index", photo_dir, "--index", index, "--model", MODEL, "--engine", "ray")
            result = cgx(*args, "--ray-address", address, timeout=90)  # was: retried for > 150 s
            assert result.returncode == 1, result.stderr[-800:]
            assert f"cannot reach Ray at {address}" in one_line(result.stderr)
            assert not index.exists()  # was: the index folder was already made
    finally:
        server.close()


@pytest.mark.slow
def test_sigterm_stops_a_build_waiting_for_a_ray_address(tmp_path):
    server, connected = _silent_listener()
    index = tmp_path / "idx"
    try:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        process = subprocess.Popen(
            [sys.executable, "-m", "crossgap_index", "build-index", str(photos(tmp_path / "photos", 2))]
            + ["--index", str(index), "--model", MODEL, "--engine", "ray", "--ray-address", address],
            cwd=REPO,
            env=cgx_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        assert connected.wait(60), "the build never tried the address"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)  # was: SIGTERM ignored while Ray retried
        assert process.returncode in (-signal.SIGTERM, 1, 143), err
        assert "Traceback" not in err
        assert not index.exists()
    finally:
        server.close()


# -- cgx tune synthetic:1:HUGE: capped in one line; generation reports progress
def test_tune_caps_a_huge_synthetic_dataset_in_one_line(tmp_path):
    result = cli("tune", "synthetic:1:99999999999", "--index", tmp_path / "idx")
    assert result.exit_code == 1  # was: no progress and memory growing without bound
    assert f"at most {MAX_SYNTHETIC_ITEMS}" in one_line(result.output)
    assert not (tmp_path / "idx").exists()


def test_synthetic_generation_reports_progress_and_equals_the_full_generation():
    seen: list[tuple[str, int, int]] = []
    data = load_dataset("synthetic:3:130", progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert seen[-1] == ("generating synthetic items", 130, 130) and len(seen) > 2
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen)
    assert data.images.items == [_png(item.image) for item in generate(3, 130)]  # the straightforward twin


# -- train-inverter --max-seconds is validated; a worse network never silently replaces one
@pytest.mark.parametrize("value", ["-1", "nan", "0"])
def test_train_inverter_refuses_a_meaningless_max_seconds(tmp_path, value):
    result = cli("train-inverter", "--index", tmp_path / "idx", f"--max-seconds={value}")
    assert result.exit_code == 1  # was: -1 trained one step and replaced the network; nan was ignored
    assert "max_seconds must be a positive number" in one_line(result.output)


def test_a_network_cut_short_does_not_replace_the_stored_one_unless_asked(tmp_path):
    index = tmp_path / "idx"
    build(index, photos(tmp_path / "photos", 6))
    stored = index / "inverter.safetensors"
    with CrossGapIndex.open(index, device="cpu") as cgx:
        cgx.train_inverter(InverterConfig(steps=3, batch_size=4))
        before = stored.read_bytes()
        short = InverterConfig(steps=10**6, batch_size=4, max_seconds=0.2)
        with pytest.raises(StoreError, match="is kept"):
            cgx.train_inverter(short)
        assert stored.read_bytes() == before
        network = cgx.train_inverter(short, replace=True)
        assert network.cut_short and stored.read_bytes() != before
    with pytest.raises(QueryError):
        InverterConfig(max_seconds=math.nan)
