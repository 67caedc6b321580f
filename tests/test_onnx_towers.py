"""The torch-free query path (models/onnx_towers.py, models/pixels.py, models/query_encoder.py): its pixels equal
torchvision's, its features equal the torch encoder's (cosine >= 0.9999 fp32) with the same hits, a fresh query
process imports no torch, and every way it cannot serve (no onnxruntime, a damaged file, a refused export) falls
back to torch with the same answer."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossgap_index import CrossGapIndex
from crossgap_index.models.onnx_towers import (
    FORMAT,
    IMAGE_MODEL,
    IMAGE_SIDECAR,
    MIN_COSINE,
    _probe_input,
    export_image_tower,
    load_image_tower,
    needs_export,
    read_sidecar,
    towers_dir,
)
from crossgap_index.models.pixels import recipe_of
from crossgap_index.models.query_encoder import SWITCH_ENV_VAR, onnx_allowed
from tests.support.photos import write_photo

pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
BUNDLED = "crossgap-small"

# Runs `cgx` in this interpreter, then reports its exit code and the modules it imported on the last stderr line;
# onnxruntime is made unimportable when the first argument is "no-onnxruntime".
CGX_REPORTING_MODULES = """
import json, runpy, sys
if sys.argv[1] == "no-onnxruntime":
    sys.modules["onnxruntime"] = None  # what an absent package looks like: import fails, find_spec says None
sys.argv = ["cgx", *sys.argv[2:]]
try:
    runpy.run_module("crossgap_index", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
imported = sorted(name for name, module in sys.modules.items() if module is not None)
print(json.dumps({"exit": code, "modules": imported}), file=sys.stderr)
"""


def cgx_query(index: Path, image: Path, *extra: str, hide_onnxruntime: bool = False, env: dict | None = None):
    """Hits (id, score) of a `cgx query --json` in a fresh process, and the modules that process imported."""
    args = ["no-onnxruntime" if hide_onnxruntime else "-", "query", str(image), "--index", str(index), "-k", "5"]
    proc = subprocess.run(
        [sys.executable, "-c", CGX_REPORTING_MODULES, *args, "--json", "--quiet", *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=600,
        cwd=REPO,
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["exit"] in (0, None), proc.stderr[-2000:]
    hits = [(hit["id"], hit["score"]) for hit in json.loads(proc.stdout)["hits"]]
    return hits, set(report["modules"])


@pytest.fixture(scope="module")
def bundled_index(tmp_path_factory) -> tuple[Path, Path]:
    """A crossgap-small index of ten photos, with no ONNX tower yet."""
    root = tmp_path_factory.mktemp("towers")
    photos = root / "photos"
    for seed in range(10):
        write_photo(photos / f"p{seed}.png", seed=seed, size=(96, 80))
    with CrossGapIndex.create(root / "idx", model=BUNDLED, device="cpu") as index:
        index.index_folders([photos])
    return root / "idx", photos


@pytest.fixture(scope="module")
def loaded():
    from crossgap_index.models import load_model

    return load_model(BUNDLED, "cpu")


@pytest.fixture(scope="module")
def exported(loaded, tmp_path_factory) -> Path:
    """A folder holding crossgap-small's exported, verified tower (tests copy it before changing it)."""
    folder = tmp_path_factory.mktemp("exported")
    sidecar = export_image_tower(loaded, folder)
    assert sidecar["status"] == "verified", sidecar.get("reason")
    assert sidecar["probe_min_cosine"] >= MIN_COSINE
    return folder


def test_pixel_recipe_equals_torchvision_preprocessing(loaded):
    recipe = recipe_of(loaded.preprocess)
    assert recipe is not None and recipe.input_size == 64
    rng = np.random.default_rng(3)
    sizes = [(96, 80), (31, 200), (13, 9), (64, 64), (301, 97)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    images.append(Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8)))  # grey: the rgb step converts it
    for image in images:
        exact = loaded.preprocess(image).numpy()
        np.testing.assert_allclose(recipe.apply([image])[0], exact, rtol=0, atol=1e-6)


def test_a_preprocessing_step_it_cannot_run_is_refused_once(loaded, tmp_path):
    from torchvision import transforms

    odd = dataclasses.replace(loaded, preprocess=transforms.Compose([transforms.RandomCrop(32), transforms.ToTensor()]))
    assert recipe_of(odd.preprocess) is None
    sidecar = export_image_tower(odd, tmp_path)
    assert sidecar["status"] == "refused" and "preprocessing" in sidecar["reason"]
    assert not needs_export(tmp_path, BUNDLED)  # recorded: later queries do not try again
    assert load_image_tower(tmp_path, BUNDLED) is None


def test_exported_tower_equals_the_torch_encoder(loaded, exported):
    from crossgap_index.models import Encoder

    tower = load_image_tower(exported, BUNDLED)
    assert tower is not None
    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, (70 + i, 90, 3), dtype=np.uint8)) for i in range(6)]
    exact = Encoder(loaded, batch_size=1, precision="fp32").encode_images(images)
    fast = tower.encode(images)
    assert fast.shape == exact.shape and fast.dtype == np.float32
    assert np.sum(exact * fast, axis=1).min() >= MIN_COSINE
    assert load_image_tower(exported, "tiny-random") is None  # a tower serves only the model it came from


@pytest.mark.parametrize("damage", ["bit-flip", "truncate", "sidecar-garbage", "symlink-to-dev-zero"])
def test_a_damaged_tower_is_never_used(exported, tmp_path, damage):
    shutil.copytree(exported, tmp_path, dirs_exist_ok=True)
    assert load_image_tower(tmp_path, BUNDLED) is not None
    model = tmp_path / IMAGE_MODEL
    data = bytearray(model.read_bytes())
    if damage == "bit-flip":  # in the weights: the size still matches, the probe does not
        data[len(data) // 2] ^= 0x40
        model.write_bytes(bytes(data))
    elif damage == "truncate":
        model.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "sidecar-garbage":
        (tmp_path / "image.json").write_bytes(b"\x00{not json")
    else:
        model.unlink()
        model.symlink_to("/dev/zero")
    assert load_image_tower(tmp_path, BUNDLED) is None


def test_the_rule_for_when_onnx_may_serve(monkeypatch):
    monkeypatch.delenv(SWITCH_ENV_VAR, raising=False)
    assert onnx_allowed("cpu", "auto", "fp32", None)
    assert onnx_allowed("cpu", "fp32", "bf16", 0.9999)
    assert not onnx_allowed("cpu", "auto", "bf16", 0.99)  # fp32 queries would not agree with the bf16 vectors
    assert not onnx_allowed("cpu", "auto", "bf16", None)  # agreement not measured: torch decides
    assert not onnx_allowed("cpu", "bf16", "fp32", None)
    assert not onnx_allowed("cuda", "auto", "fp32", None)
    monkeypatch.setenv(SWITCH_ENV_VAR, "torch")
    assert not onnx_allowed("cpu", "auto", "fp32", None)


def test_the_probe_input_is_fixed_and_pinned_to_the_format():
    """Each load compares the tower's feature of this input with the one recorded at export: a change to the input
    must come with a new FORMAT (older sidecars are then exported again), which this pin makes a conscious edit."""
    probe = _probe_input((3, 64, 64))
    assert probe.shape == (1, 3, 64, 64) and probe.dtype == np.float32
    flat = probe.ravel()
    assert abs(float(flat.mean())) < 0.05 and abs(float(flat.std()) - 1) < 0.01  # unit variance
    assert abs(float(np.corrcoef(flat[:-1], flat[1:])[0, 1])) < 0.05  # neighbours uncorrelated, as noise is
    assert len(np.unique(probe[0, :, :8, :8])) == 3 * 8 * 8
    assert (FORMAT, zlib.crc32(probe.tobytes())) == (3, 3698105242)


def test_a_tower_from_an_older_format_is_exported_again(exported, tmp_path):
    shutil.copytree(exported, tmp_path, dirs_exist_ok=True)
    sidecar = json.loads((tmp_path / IMAGE_SIDECAR).read_text())
    sidecar["stamp"]["format"] = FORMAT - 1
    (tmp_path / IMAGE_SIDECAR).write_text(json.dumps(sidecar))
    assert needs_export(tmp_path, BUNDLED)
    assert load_image_tower(tmp_path, BUNDLED) is None


@pytest.mark.slow
def test_cold_query_runs_without_torch_and_finds_the_torch_hits(bundled_index):
    index, photos = bundled_index
    query = photos / "p3.png"
    towers = towers_dir(index)
    torch_hits, torch_modules = cgx_query(index, query, env={SWITCH_ENV_VAR: "torch"})
    assert "torch" in torch_modules and not towers.exists()  # switched off: no export either
    first_hits, first_modules = cgx_query(index, query)  # no tower yet: torch answers, then exports
    assert "torch" in first_modules and read_sidecar(towers)["status"] == "verified"
    assert first_hits == torch_hits
    for extra in ((), ("--cross",)):
        exact, _ = cgx_query(index, query, *extra, env={SWITCH_ENV_VAR: "torch"})  # --cross: fits and keeps its map
        fast, modules = cgx_query(index, query, *extra)
        assert "torch" not in modules and "open_clip" not in modules and "onnxruntime" in modules
        assert "rich" not in modules and "filelock" not in modules  # nothing drawn, nothing written
        assert "numpy.random" not in modules and "crossgap_index.engines" not in modules  # the probe; the write path
        assert [i for i, _ in fast] == [i for i, _ in exact]
        np.testing.assert_allclose([s for _, s in fast], [s for _, s in exact], atol=1e-3)


@pytest.mark.slow
def test_without_onnxruntime_the_query_takes_torch(bundled_index):
    index, photos = bundled_index
    query = photos / "p5.png"
    exact, _ = cgx_query(index, query, env={SWITCH_ENV_VAR: "torch"})
    hits, modules = cgx_query(index, query, hide_onnxruntime=True)
    assert "onnxruntime" not in modules and "torch" in modules
    assert hits == exact
