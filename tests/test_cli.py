"""The CLI through typer's runner, and once as the installed `cgx` in a subprocess."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossgap_index.cli.app import app
from tests.support.photos import MODEL, make_photo_folder, write_broken_files, write_photo

runner = CliRunner()


def cgx(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """conftest's photo folder plus one broken file of each kind, made once: no test writes into it."""
    folder = make_photo_folder(tmp_path_factory.mktemp("cli"))
    write_broken_files(folder / "broken")
    return folder


@pytest.fixture(scope="module")
def template(photos) -> Path:
    """The module's index of ``photos``, built once by `cgx build-index` (its skip report beside it)."""
    root = photos.parent
    result = cgx(
        "build-index",
        photos,
        "--index",
        root / "idx",
        "--model",
        MODEL,
        "--device",
        "cpu",
        "--max-image-megapixels",
        5,
        "--report",
        root / "skipped.tsv",
    )
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def built(template, tmp_path) -> Path:
    """Each test's own copy of the module's index: tests add texts and invert its gallery."""
    shutil.copytree(template / "idx", tmp_path / "idx")
    return tmp_path / "idx"


def test_build_summary_and_report(template):
    lines = (template / "skipped.tsv").read_text().splitlines()
    assert len(lines) == 5 and all("\t" in line for line in lines)


def test_query_json_shape(built, photos):
    query = photos / "a" / "img1.png"
    result = cgx("query", query, "--index", built, "-k", 3, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["query"] == {"kind": "image", "value": str(query)}
    assert doc["settings"]["k"] == 3 and doc["settings"]["target"] == "images"
    assert len(doc["hits"]) == 3
    assert set(doc["hits"][0]) >= {"id", "score", "modality", "path", "text", "ranks", "scores"}
    assert doc["hits"][0]["path"] == str(query.resolve())


def test_paths_only_pipes(built, photos):
    result = cgx("query", photos / "a" / "img1.png", "--index", built, "-k", 2, "--paths-only")
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].endswith("img1.png")


def test_texts_then_text_query_and_info(built, tmp_path):
    corpus = tmp_path / "captions.jsonl"
    corpus.write_text('{"text": "a red bicycle"}\n{"text": "a blue car"}\nbroken\n')
    result = cgx("add-texts", corpus, "--index", built)
    assert result.exit_code == 0 and "1 bad lines" in result.stderr and ":3:" in result.stderr
    result = cgx("query", "a blue car", "--index", built, "--target", "texts", "--paths-only", "-k", 1)
    assert result.stdout.strip() == "a blue car"
    info = json.loads(cgx("info", "--index", built, "--json").stdout)
    assert info["model"] == MODEL and info["counts"]["image"] == 6 and info["counts"]["text"] == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["query", "x", "--index", "{tmp}/missing"], "no crossgap index"),
        (["query", "x", "--target", "texts", "--index", "{idx}"], "is empty"),
        (["query", "{tmp}/bad.png", "--image", "--index", "{idx}"], "cannot decode query image"),
        (["query", "{tmp}/nope.png", "--image", "--index", "{idx}"], "cannot read query image"),
        (["add-texts", "{tmp}/c.csv", "--index", "{idx}"], "expected a .txt"),
        (["build-index", "{tmp}/nope", "--index", "{tmp}/new", "--model", MODEL], "no such file or folder"),
        (["build-index", "{tmp}", "--index", "{tmp}/new2", "--model", MODEL, "--factory", "Bogus"], "invalid FAISS"),
        (["build-index", "{tmp}", "--index", "{tmp}/new3", "--model", "ViT-B-32/nope"], "unknown pretrained tag"),
        (["info", "--index", "{tmp}/missing"], "no crossgap index"),
        (["query", "{tmp}/ok.png", "--mode", "cross-gallery", "--index", "{idx}"], "no OTI feature yet"),
        (["query", "{tmp}/ok.png", "--cross", "--template", "no placeholder", "--index", "{idx}"], "template"),
    ],
)
def test_error_paths_are_one_line_and_nonzero(built, tmp_path, args, message):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    (tmp_path / "c.csv").write_text("a,b\n")
    write_photo(tmp_path / "ok.png", seed=3)
    result = cgx(*[a.format(tmp=tmp_path, idx=built) for a in args])
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output


def test_fused_query_json_carries_both_lists(built, photos):
    query = photos / "a" / "img2.png"
    result = cgx("query", query, "--index", built, "--mode", "fused", "--steps", 3, "-k", 4, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    served = doc["settings"]["served"]
    assert served["name"] == "fused" and served["fusion"] == "rrf"
    assert served["legs"][1]["transform"] == "invert" and served["legs"][1]["params"]["oti_steps"] == 3
    assert all(set(h["ranks"]) == {"intra", "cross"} for h in doc["hits"])
    only_cross = json.loads(
        cgx("query", query, "--index", built, "--mode", "fused", "--merge", "none", "--steps", 3, "--json").stdout
    )
    assert only_cross["settings"]["served"]["name"] == "cross"
    assert all(set(h["ranks"]) == {"cross"} for h in only_cross["hits"])


def test_cross_flag_serves_the_untuned_default(built, photos):
    """--cross on an index nobody tuned: the documented default (span over the ImageNet names)."""
    result = cgx("query", photos / "a" / "img2.png", "--index", built, "--cross", "-k", 3, "--json")
    assert result.exit_code == 0, result.output
    served = json.loads(result.stdout)["settings"]["served"]
    assert served["name"] == "span" and served["legs"][0]["transform"] == "project"


def test_invert_gallery_then_cross_gallery(built, photos):
    result = cgx(
        "build-index",
        photos,
        "--index",
        built,
        "--invert-gallery",
        "--steps",
        2,
        "-q",
        "--max-image-megapixels",
        5,
    )
    assert result.exit_code == 0, result.output
    info = json.loads(cgx("info", "--index", built, "--json").stdout)
    assert info["counts"]["image-oti"] == 6 and info["gallery_inversion"]["oti_steps"] == 2
    result = cgx("query", photos / "a" / "img0.png", "--index", built, "--mode", "cross-gallery", "--json")
    assert result.exit_code == 0 and len(json.loads(result.stdout)["hits"]) == 6


@pytest.mark.slow  # four fresh interpreters; the built wheel's cgx is also checked by .ci/wheel-check
def test_installed_cgx_runs_as_a_subprocess(tmp_path, photo_folder):
    beside = Path(sys.executable).parent / "cgx"  # the running venv's own script: no activation needed
    exe = str(beside) if beside.is_file() else shutil.which("cgx") or pytest.fail("the cgx console script is missing")
    env = {**os.environ, "CGX_INDEX": str(tmp_path / "idx"), "CGX_MODEL": MODEL, "HF_HUB_OFFLINE": "1"}
    build = subprocess.run(
        [exe, "build-index", photo_folder, "--device", "cpu"], capture_output=True, text=True, env=env
    )
    assert build.returncode == 0, build.stderr
    assert "added 6" in build.stderr and build.stdout == ""
    again = subprocess.run([exe, "build-index", photo_folder, "-q"], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and again.stderr == ""
    query = subprocess.run(
        [exe, "query", photo_folder / "a" / "img4.png", "--paths-only", "-k", "1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert query.stdout.strip().endswith("img4.png")
    offline = subprocess.run(
        [
            sys.executable,
            "-m",
            "crossgap_index",
            "build-index",
            photo_folder,
            "--index",
            tmp_path / "other",
            "--model",
            "RN50/openai",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert offline.returncode == 1 and "Offline options" in offline.stderr
    assert len(offline.stderr.strip().splitlines()) == 1, offline.stderr
