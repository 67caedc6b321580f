"""Hostile files and names at ingest: real FIFOs, devices, symlinks,
non-UTF-8 names, oversized files and images, model folders without safe weights."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.errors import ModelUnavailableError, QueryError
from crossgap_index.ingest.decode import DecodeError, SkippedFile, _draft, decode_rgb, decode_side, read_file
from crossgap_index.ingest.texts import read_text_corpus
from crossgap_index.models import load_model
from crossgap_index.models._registry import bundled_dir
from crossgap_index.store.catalog import path_from_db, path_to_db
from tests.support.cli import REPO
from tests.support.photos import MODEL

runner = CliRunner()

LATIN1_NAME = b"\xff\xfe-caf\xe9.png"  # not valid UTF-8


def run_cgx(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real `cgx` entry point in a child process (this worktree's code first)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "crossgap_index", *map(str, args)],
        capture_output=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def png_bytes(size=(40, 30), seed=0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# -- file names that are not UTF-8 ------------------------------------------------------
def test_non_utf8_names_are_stored_losslessly_and_pruned_when_deleted(tmp_path, photo_folder):
    raw_folder = os.fsencode(photo_folder)
    raw_path = os.path.join(raw_folder, LATIN1_NAME)
    with open(raw_path, "wb") as f:
        f.write(png_bytes(seed=42))
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as index:
        report = index.index_folders([photo_folder])
        assert report.skipped == [] and report.added == 7
        hits = index.search(image=os.fsdecode(raw_path), k=1)
        assert os.fsencode(hits[0].path) == raw_path  # the very bytes of the name, back from SQLite
    os.remove(raw_path)
    with CrossGapIndex.open(tmp_path / "idx") as index:
        report = index.index_folders([photo_folder])
        assert report.removed == 1 and report.unchanged == 6
        assert index.info().counts["image"] == 6


def test_catalog_path_encoding_round_trips_every_name():
    for name in ["plain.png", "café.png", os.fsdecode(LATIN1_NAME), os.fsdecode(b"\xed\xa0\x80.png")]:
        assert path_from_db(path_to_db(name)) == name
    assert isinstance(path_to_db("café.png"), str)  # valid names stay readable text in SQLite


def test_cli_prints_non_utf8_and_newline_names_without_failing(tmp_path, photo_folder):
    raw_path = os.path.join(os.fsencode(photo_folder), LATIN1_NAME)
    with open(raw_path, "wb") as f:
        f.write(png_bytes(seed=43))
    newline_path = photo_folder / "two\nlines.png"
    newline_path.write_bytes(png_bytes(seed=44))
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as index:
        assert index.index_folders([photo_folder]).added == 8
    query = ["query", os.fsdecode(raw_path), "--index", str(tmp_path / "idx"), "-k", "8"]
    paths = runner.invoke(app, [*query, "--paths-only", "-0"])
    assert paths.exit_code == 0, paths.output
    items = paths.stdout_bytes.split(b"\0")
    assert items[-1] == b"" and raw_path in items and os.fsencode(newline_path) in items
    table = runner.invoke(app, query)
    assert table.exit_code == 0, table.output
    assert "\\xff\\xfe-caf\\xe9.png" in table.stdout  # shown escaped, in full
    skipped = tmp_path / "skipped.tsv"
    (photo_folder / os.fsdecode(b"\xe9t\xe9.png")).write_bytes(b"not an image")
    build = runner.invoke(
        app, ["build-index", str(photo_folder), "--index", str(tmp_path / "idx"), "--report", str(skipped)]
    )
    assert build.exit_code == 0, build.output
    assert skipped.read_bytes().startswith(os.fsencode(photo_folder / os.fsdecode(b"\xe9t\xe9.png")) + b"\t")


# -- only regular files are read, and not too much of them -------------------------------
@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_fifo_devices_and_dangling_links_are_skipped_not_read(tmp_path, photo_folder):
    os.mkfifo(photo_folder / "a.png")  # reading it would block forever
    (photo_folder / "z.jpg").symlink_to("/dev/zero")  # reading it would never end
    (photo_folder / "gone.png").symlink_to(tmp_path / "missing.png")
    (photo_folder / "link.png").symlink_to(photo_folder / "a" / "img0.png")  # a link to a regular file is fine
    report_file = tmp_path / "skipped.tsv"
    proc = run_cgx(
        "build-index", photo_folder, "--index", tmp_path / "idx", "--model", MODEL, "--device", "cpu",
        "--report", report_file, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    reasons = dict(line.split("\t") for line in report_file.read_text().splitlines())
    assert reasons[str(photo_folder / "a.png")] == "not a regular file (a FIFO)"
    assert reasons[str(photo_folder / "z.jpg")] == "not a regular file (a character device)"
    assert reasons[str(photo_folder / "gone.png")].startswith("unreadable: No such file")
    assert len(reasons) == 3
    assert b"added 7" in proc.stderr  # 6 photos and the link to one of them


def test_read_file_refuses_special_files_and_oversized_ones(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(SkippedFile, match="a FIFO"):
        read_file(fifo)
    with pytest.raises(SkippedFile, match="a character device"):
        read_file(Path("/dev/zero"))
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes() + b"\0" * 3_000_000)
    with pytest.raises(SkippedFile, match=r"3 MB is over the --max-file-mb limit of 2 MB"):
        read_file(big, max_bytes=2_000_000)
    assert read_file(big, max_bytes=4_000_000).size == big.stat().st_size


def test_size_cap_is_a_skip_reason_in_a_build(tmp_path, photo_folder):
    (photo_folder / "huge.png").write_bytes(png_bytes() + b"\0" * 200_000)
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as index:
        report = index.index_folders([photo_folder], max_file_bytes=100_000)
    assert report.added == 6
    assert report.skipped == [(str(photo_folder / "huge.png"), "0 MB is over the --max-file-mb limit of 0.1 MB")]


def big_jpeg(size=(2400, 1600)) -> bytes:
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    arr = np.stack([(x * 255 // size[0]), (y * 255 // size[1]), ((x + y) % 256)], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_jpeg_is_decoded_at_a_dct_scale_near_the_model_input():
    data = big_jpeg()
    img = Image.open(io.BytesIO(data))
    _draft(img, 224)
    assert img.size == (600, 400)  # 1/4 scale chosen before any pixel is decoded (1/8 would be < 224)
    bounded = decode_rgb(data, min_side=224)
    assert bounded.size == (336, 224)  # then scaled to exactly the side asked for
    assert decode_rgb(data).size == (2400, 1600)  # the full-resolution twin


def test_other_formats_are_reduced_before_conversion():
    buf = io.BytesIO()
    Image.new("P", (1300, 900), 3).save(buf, format="PNG")  # palette: converted, then reduced
    assert decode_rgb(buf.getvalue(), min_side=64).size == (92, 64)  # 1300 x 900 at the same aspect
    buf = io.BytesIO()
    Image.new("RGB", (1300, 900), (1, 2, 3)).save(buf, format="PNG")
    assert decode_rgb(buf.getvalue(), min_side=100).size == (145, 100)
    small = decode_rgb(png_bytes(size=(40, 30)), min_side=224)
    assert small.size == (40, 30)  # never enlarged


def test_bounded_decode_embeds_like_the_full_resolution_oracle():
    data = big_jpeg()
    loaded = load_model("crossgap-small", "cpu")
    from crossgap_index.models import Encoder

    encoder = Encoder(loaded)
    bounded_image = decode_rgb(data, min_side=decode_side(encoder.input_size))
    assert bounded_image.size == (192, 128)  # 1/8 DCT scale, then scaled to twice the 64-pixel input
    full, bounded = encoder.encode_images([decode_rgb(data), bounded_image])
    assert float(full @ bounded) > 0.999


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (nothing behind it): a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("size", "limit", "expected"),
    [
        ((10_000, 9_500), 90, "95 megapixels is over the --max-image-megapixels limit of 90"),  # Pillow warns at 89
        ((20_000, 20_000), 100, "400 megapixels is over the --max-image-megapixels limit of 100"),  # Pillow errors
        ((20_000, 20_000), 1000, "over Pillow's hard limit of 179 (Image.MAX_IMAGE_PIXELS)"),
    ],
)
def test_bomb_messages_name_our_setting(size, limit, expected):
    with pytest.raises(DecodeError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        decode_rgb(png_header_claiming(*size), max_megapixels=limit)


# -- model folders without safe weights ---------------------------------------------------
@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([], "has open_clip_config.json but no weights file"),
        (["model.pt"], "no weights file open_clip recognises, only model.pt"),
        (["pytorch_model.bin"], "open_clip would load pytorch_model.bin, a pickle checkpoint"),
    ],
)
def test_model_folder_without_safetensors_fails_in_one_line(tmp_path, photo_folder, files, message):
    folder = tmp_path / "my-model"
    folder.mkdir()
    shutil.copy(bundled_dir("tiny-random") / "open_clip_config.json", folder)
    for name in files:
        (folder / name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelUnavailableError, match=message):
        load_model(str(folder), "cpu")
    proc = run_cgx("build-index", photo_folder, "--index", tmp_path / "idx", "--model", folder)
    assert message in one_error_line(proc)
    assert not (tmp_path / "idx" / "manifest.json").exists()  # no index on random weights


def test_pickle_checkpoint_path_is_refused(tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\x80\x04")
    with pytest.raises(ModelUnavailableError, match="only .safetensors weights are loaded"):
        load_model(f"ViT-B-32::{weights}", "cpu")


# -- JSON lines holding lone surrogates ---------------------------------------------------
def test_jsonl_lone_surrogate_is_a_bad_line_and_the_rest_is_stored(tmp_path):
    corpus = tmp_path / "texts.jsonl"
    lines = [
        json.dumps({"text": "a red bicycle"}),
        '{"text": "broken \\ud800 text"}',
        '{"text": "fine", "id": "\\udfff"}',
        json.dumps({"text": "a blue car"}),
    ]
    corpus.write_text("\n".join(lines) + "\n")
    parsed = read_text_corpus(corpus)
    assert parsed.texts == ["a red bicycle", "a blue car"]
    assert [n for n, _ in parsed.bad_lines] == [2, 3]
    assert "lone surrogate" in parsed.bad_lines[0][1]
    proc = runner.invoke(app, ["add-texts", str(corpus), "--index", str(tmp_path / "idx"), "--model", MODEL])
    assert proc.exit_code == 0, proc.output
    stderr = proc.stderr
    assert "added 2 texts" in stderr and f"{corpus}:2:" in stderr and f"{corpus}:3:" in stderr
    with CrossGapIndex.open(tmp_path / "idx") as index:
        assert index.info().counts["text"] == 2
        with pytest.raises(QueryError, match="text 1 holds a lone surrogate"):
            index.add_texts(["ok", "bad \ud800"])
        assert index.info().counts["text"] == 2  # refused before anything was written


def test_nothing_about_one_file_stops_a_build(tmp_path, photo_folder):
    """Every kind of hostile file at once: the build ends, keeps the good photos, lists the rest."""
    os.mkfifo(photo_folder / "fifo.png")
    (photo_folder / "zero.jpg").symlink_to("/dev/zero")
    with open(os.path.join(os.fsencode(photo_folder), LATIN1_NAME), "wb") as f:
        f.write(b"\xff\xd8\xff garbage")
    (photo_folder / "bomb.png").write_bytes(png_header_claiming(20_000, 20_000))
    (photo_folder / "folder.png").mkdir()
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as index:
        report = index.index_folders([photo_folder])
    assert report.added == 6
    assert len(report.skipped) == 4
