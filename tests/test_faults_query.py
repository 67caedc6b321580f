"""Query arguments and settings: one-line errors from the real `cgx`
process, never a traceback, never a file-system error for text; notes for truncation and short lists."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.errors import ModelUnavailableError, QueryError
from crossgap_index.inversion import InversionConfig
from crossgap_index.search.query_arg import query_kind
from tests.support.cli import REPO
from tests.support.photos import MODEL

LONG_TEXT = "a small red bicycle leaning on a wall " * 12  # 456 bytes, about 100 tokens


def run_cgx(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "crossgap_index", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )


def one_line(proc: subprocess.CompletedProcess, exit_code: int = 1) -> str:
    assert proc.returncode == exit_code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    from tests.support.photos import write_photo

    root = tmp_path_factory.mktemp("query")
    for i in range(4):
        write_photo(root / "photos" / f"img{i}.png", seed=i)
    with CrossGapIndex.create(root / "idx", model=MODEL, device="cpu") as cgx:
        cgx.index_folders([root / "photos"])
        cgx.add_texts(["a red bicycle", "a blue car", "a green tree"])
    return root / "idx"


# -- what the query argument is ---------------------------------------------------------
def test_missing_image_path_is_an_error_not_a_text_search(index):
    line = one_line(run_cgx("query", "Pictures/astronot.png", "--index", index))
    assert line == "cgx: error: no such image file: Pictures/astronot.png; use --text to search for this text"


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_text_is_refused(index, text):
    assert "empty text query" in one_line(run_cgx("query", text, "--index", index))


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_long_text_is_searched_with_a_truncation_note(index):
    proc = run_cgx("query", LONG_TEXT, "--index", index, "--target", "texts", "-k", "2", "--paths-only")
    note = one_line(proc, exit_code=0)
    assert note.startswith("cgx: note: the query text is") and "truncated" in note
    assert len(proc.stdout.splitlines()) == 2


def test_query_kind_never_asks_the_file_system_about_text(tmp_path):
    assert query_kind("x" * 300) == "text"  # one 300-byte component: would be ENAMETOOLONG
    assert query_kind("/".join(["y" * 200] * 30)) == "text"  # over PATH_MAX
    assert query_kind("two\nlines.png") == "text"
    assert query_kind(LONG_TEXT + ".png") == "text"
    image = tmp_path / "photo.JPG"
    image.write_bytes(b"")
    assert query_kind(str(image)) == "image"
    assert query_kind(str(image), as_text=True) == "text"
    assert query_kind(str(tmp_path / "readme.txt")) == "text"
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(QueryError, match=r"not a regular file \(a FIFO\)"):  # never opened, never text
        query_kind(str(tmp_path / "pipe.png"))
    assert query_kind(str(tmp_path / "pipe.png"), as_text=True) == "text"
    with pytest.raises(QueryError, match="no such image file"):
        query_kind(str(tmp_path / "missing.webp"))
    with pytest.raises(QueryError, match="exclude each other"):
        query_kind("a", as_image=True, as_text=True)


def test_library_refuses_blank_text_and_fifo_query_images(index, tmp_path):
    os.mkfifo(tmp_path / "q.png")
    with CrossGapIndex.open(index) as cgx:
        with pytest.raises(QueryError, match="empty text query"):
            cgx.search(text=" ")
        with pytest.raises(QueryError, match=r"not a regular file \(a FIFO\)"):
            cgx.search(image=tmp_path / "q.png")  # returns at once: never opened for reading


# -- settings --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "nan"], "lr must be a finite number, got nan"),
        (["--lr", "inf"], "lr must be a finite number, got inf"),
        (["--lr", "0"], "lr must be > 0 and <= 10"),
        (["--lr=-1"], "lr must be > 0 and <= 10"),
        (["--template", "no braces"], "template must contain '{}' exactly once"),
        (["--template", "{} and {}"], "template must contain '{}' exactly once"),
        (["--device", "banana"], "unknown device 'banana'"),
    ],
)
def test_bad_settings_are_one_line(index, args, message):
    line = one_line(run_cgx("query", "a red bicycle", "--cross", "--index", index, *args))
    assert line.startswith("cgx: error: ") and message in line


def test_build_with_unknown_device_fails_before_creating_anything(tmp_path):
    line = one_line(run_cgx("build-index", REPO / "tests", "--index", tmp_path / "idx", "--device", "cuda:x"))
    assert "unknown device 'cuda:x'" in line
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize(
    "settings",
    [
        {"lr": math.nan},
        {"lr": math.inf},
        {"lr": -math.inf},
        {"lr": 0.0},
        {"weight_decay": math.nan},
        {"init_std": math.inf},
        {"oti_steps": -1},
        {"ovi_steps": 2.5},
        {"n_tokens": 0},
        {"batch_size": 0},
        {"template": "no placeholder"},
        {"template": "{}{}"},
        {"precision": "fp8"},
    ],
)
def test_inversion_config_refuses_bad_values_for_library_users(settings):
    with pytest.raises(QueryError, match="invalid inversion settings"):
        InversionConfig(**settings)


def test_library_refuses_unknown_devices(index):
    with pytest.raises(ModelUnavailableError, match="unknown device 'banana'"):
        CrossGapIndex.open(index, device="banana")
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        CrossGapIndex.open(index, device=device).close()


# -- progress where the work is long ---------------------------------------------------
def test_add_texts_and_ovi_report_progress(index):
    calls = []
    with CrossGapIndex.open(index) as cgx:
        cgx.add_texts([f"caption number {i}" for i in range(300)], progress=lambda d, t: calls.append((d, t)))
        assert calls[0] == (0, 300) and calls[-1] == (300, 300) and len(calls) == 3  # chunks of 256
        steps = []
        cgx.search(
            text="a red bicycle",
            target="texts",
            mode="cross",
            inversion=InversionConfig(ovi_steps=4),
            use_cache=False,
            progress=lambda step, loss: steps.append(step),
        )
    assert steps == [1, 2, 3, 4]
