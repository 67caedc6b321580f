"""A stranger's first run: offline with no --model, and the bundled model on real photos."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.datasets.synthetic import export_folder
from crossgap_index.models.world import OUTSIDE_COSINE, outside_mask, world_note, world_reference

ROOT = Path(__file__).resolve().parent.parent
# where the three real photos come from: matplotlib (a dependency) and scikit-learn (a dev dependency)
REAL_PHOTOS = ["grace_hopper.jpg", "flower.jpg", "china.jpg"]
FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")  # Debian: dataset-fashion-mnist


def real_photos() -> list[Path]:
    import matplotlib

    found = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    sklearn = pytest.importorskip("sklearn")
    found += [Path(sklearn.__file__).parent / "datasets" / "images" / name for name in REAL_PHOTOS[1:]]
    return found


@pytest.fixture(scope="module")
def photo_crops(tmp_path_factory) -> Path:
    """Twelve square crops of three real photos: a folder outside crossgap-small's world."""
    folder = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    for path in real_photos():
        image = Image.open(path).convert("RGB")
        w, h = image.size
        for i in range(4):
            side = int(rng.uniform(0.4, 1.0) * min(w, h))
            x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
            image.crop((x, y, x + side, y + side)).save(folder / f"{path.stem}-{i}.jpg", quality=90)
    return folder


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CGX_MODEL", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return {**env, "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT), **extra}


# The CLI run in a fresh interpreter that reports, after the command, whether torch was ever imported.
_CLI_THEN_TORCH = """
import sys
from crossgap_index.cli.app import main
sys.argv = ["cgx", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print("torch imported:", "torch" in sys.modules, "exit:", code)
"""


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable hub"])
def test_offline_build_without_model_fails_at_once_naming_the_offline_options(tmp_path, how):
    extra = {"HF_HUB_OFFLINE": "1"} if how == "HF_HUB_OFFLINE" else {"HF_ENDPOINT": "http://127.0.0.1:9"}
    export_folder(tmp_path / "photos", seed=5, n=4)
    result = subprocess.run(
        [sys.executable, "-c", _CLI_THEN_TORCH, "build-index", tmp_path / "photos", "--index", tmp_path / "idx"],
        capture_output=True,
        text=True,
        env=offline_env(tmp_path, **extra),
        timeout=120,
    )
    assert result.stdout.strip() == "torch imported: False exit: 1"  # refused before the model stack loads
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("cgx: error: cannot load model 'ViT-B-32/datacomp_xl_s13b_b90k' (the default when no")
    for words in ("--model crossgap-small", "--model tiny-random", "--model ARCH::/path/to/weights.safetensors"):
        assert words in line
    assert not (tmp_path / "idx").exists()  # nothing made for a build that cannot start


def test_offline_refusal_defers_to_open_clip_when_weights_are_cached(tmp_path, monkeypatch):
    """Some open_clip weights in the cache: the early refusal steps aside (open_clip knows which tag is which)."""
    from crossgap_index.models.offline import any_cached_weights, refuse_download_offline

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not any_cached_weights()
    with pytest.raises(Exception, match="Offline options"):
        refuse_download_offline("RN50/openai")
    snapshot = tmp_path / "hf" / "hub" / "models--timm--some-clip" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"")
    assert any_cached_weights()
    refuse_download_offline("RN50/openai")  # no error: open_clip decides


def test_world_rule_separates_its_own_world_from_real_photos(photo_crops):
    """The measured rule on data at hand: held-out synthetic images are inside; crops of real photos, and
    Fashion-MNIST's grey garments where Debian's dataset-fashion-mnist is installed, mostly outside."""
    from crossgap_index.datasets.synthetic import generate
    from crossgap_index.models import Encoder, load_model

    reference = world_reference("crossgap-small")
    assert reference is not None and reference.shape[1] == 128
    assert world_reference("tiny-random") is None  # random weights have no world to be outside of
    encoder = Encoder(load_model("crossgap-small", "cpu"), precision="fp32")
    inside = outside_mask(encoder.encode_images([it.image for it in generate(77, 60)]), reference)
    assert inside.mean() < 0.1
    crops = [Image.open(p) for p in sorted(photo_crops.glob("*.jpg"))]
    assert outside_mask(encoder.encode_images(crops), reference).mean() > 0.5
    if FASHION.is_file():
        with gzip.open(FASHION) as f:
            garments = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:40]
        images = [Image.fromarray(g).convert("RGB") for g in garments]
        assert outside_mask(encoder.encode_images(images), reference).mean() > 0.9
    assert world_note("crossgap-small", 3, 4) and world_note("crossgap-small", 2, 4) is None
    assert 0 < OUTSIDE_COSINE < 1


@pytest.mark.slow  # builds and queries through the CLI
def test_bundled_model_on_real_photos_says_so_in_cli_library_and_page(tmp_path, photo_crops):
    runner = CliRunner()
    index = tmp_path / "real.cgx"
    result = runner.invoke(app, ["build-index", str(photo_crops), "--index", str(index), "--model", "crossgap-small"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("cgx: note:")]
    assert len(notes) == 1
    assert "look unlike anything crossgap-small was trained on" in notes[0]
    assert "--model ViT-B-32/datacomp_xl_s13b_b90k" in notes[0] and "--model ViT-B-32::/path" in notes[0]

    # once per index: the next commands on it do not repeat it; a new index is told again
    result = runner.invoke(app, ["query", "a cat", "--index", str(index), "-k", "3"])
    assert result.exit_code == 0 and "cgx: note" not in result.stderr
    shutil.copytree(index, tmp_path / "copy.cgx", ignore=shutil.ignore_patterns("model-note-shown", "lock"))
    result = runner.invoke(app, ["query", "a cat", "--index", str(tmp_path / "copy.cgx"), "-k", "3", "--quiet"])
    assert result.exit_code == 0 and "cgx: note" not in result.stderr  # --quiet: not told, not recorded
    result = runner.invoke(app, ["query", "a cat", "--index", str(tmp_path / "copy.cgx"), "-k", "3"])
    assert result.exit_code == 0 and "look unlike anything crossgap-small" in result.stderr

    from fastapi.testclient import TestClient

    from crossgap_index.server.app import create_app

    with CrossGapIndex.open(index, device="cpu") as cgx:
        note = cgx.model_note()
        assert note is not None and note == notes[0].removeprefix("cgx: note: ")
        with TestClient(create_app(cgx), base_url="http://127.0.0.1:8000") as client:  # a loopback Host
            assert client.get("/info").json()["page"]["model_note"] == note


@pytest.mark.slow  # builds and queries through the CLI
def test_no_note_inside_the_world(tmp_path):
    folder = export_folder(tmp_path / "photos", seed=8, n=24)
    result = CliRunner().invoke(
        app, ["build-index", str(folder), "--index", str(tmp_path / "idx"), "--model", "crossgap-small"]
    )
    assert result.exit_code == 0, result.output
    assert "cgx: note" not in result.stderr
    with CrossGapIndex.open(tmp_path / "idx") as cgx:
        assert cgx.model_note() is None
