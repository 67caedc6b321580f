"""`cgx check --repair` on real damaged shards (truncated, deleted, bit-flipped), through the real CLI in its
own process: every shard an uncompressed FAISS file (Flat, IVF-Flat) still holds is written again, and
what cannot be repaired is one line naming the shard and what the user can do; never a crash."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from crossgap_index import CrossGapIndex
from tests.support.cli import cgx
from tests.support.photos import MODEL

pytestmark = pytest.mark.slow  # each test runs the real CLI in fresh interpreters

DIM = 64  # tiny-random's embed_dim
ROWS = 600
SHARD = Path("vectors") / "items-000000.f32"


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, Path]:
    """One index per factory, 600 vectors imported through the CLI, 20 of them removed (dead shard rows)."""
    root = tmp_path_factory.mktemp("repair")
    vectors = np.random.default_rng(11).standard_normal((ROWS, DIM)).astype(np.float32)
    np.save(root / "emb.npy", vectors)
    made = {}
    for factory in ("Flat", "IVF16,Flat", "IVF16,PQ8x4"):
        index = root / factory.replace(",", "-")
        done = cgx("import", root / "emb.npy", "--index", index, "--model", MODEL, "--factory", factory, "-q")
        assert done.returncode == 0, done.stderr
        removed = cgx("remove", *[f"--id={i}" for i in range(100, 120)], "--index", index, "-q")
        assert removed.returncode == 0, removed.stderr
        made[factory] = index
    return made


def damage(shard: Path, how: str) -> None:
    if how == "deleted":
        shard.unlink()
    elif how == "truncated":
        shard.write_bytes(shard.read_bytes()[: 7 * DIM * 4 + 13])
    else:
        data = bytearray(shard.read_bytes())
        data[300 * DIM * 4 + 5] ^= 0x40  # inside a live row
        shard.write_bytes(bytes(data))


def stored_vectors(index: Path) -> np.ndarray:
    with CrossGapIndex.open(index, readonly=True) as cgx_index:
        store = cgx_index._store
        return np.concatenate([v for _, v in store.vector_chunks("image")])


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
@pytest.mark.parametrize("how", ["truncated", "deleted", "bit-flipped"])
def test_a_damaged_shard_is_written_again_from_an_uncompressed_faiss_file(tmp_path, imported, factory, how):
    index = Path(shutil.copytree(imported[factory], tmp_path / "idx"))
    before = stored_vectors(index)
    damage(index / SHARD, how)
    if how != "bit-flipped":  # a short shard is refused on open, pointing at check --repair
        refused = cgx("info", "--index", index)
        assert refused.returncode == 1 and "cgx check --repair" in one_line(refused.stderr)
    found = cgx("check", "--no-files", "--index", index)
    assert found.returncode == 1 and "Traceback" not in found.stdout + found.stderr
    assert any(line.startswith(f"problem: {SHARD}") for line in found.stdout.splitlines()), found.stdout
    repaired = cgx("check", "--repair", "--no-files", "--index", index)
    assert repaired.returncode == 0, (repaired.returncode, repaired.stdout, repaired.stderr)  # was 139 for IVF
    assert f"repaired: {SHARD}" in repaired.stdout and "written again from the FAISS files" in repaired.stdout
    assert cgx("check", "--no-files", "--index", index).returncode == 0
    np.testing.assert_array_equal(stored_vectors(index), before)


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_a_shard_no_uncompressed_file_holds_is_named_with_what_to_do(tmp_path, imported, how):
    index = Path(shutil.copytree(imported["IVF16,PQ8x4"], tmp_path / "idx"))
    damage(index / SHARD, how)
    result = cgx("check", "--repair", "--no-files", "--index", index)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1, result.stdout
    assert str(SHARD) in problems[0] and "holds compressed codes" in problems[0]
    assert "restore the index directory from a backup, or build it again" in problems[0]
    assert result.stdout.splitlines()[-1].startswith("NOT OK")


def test_a_damaged_shard_with_a_stale_faiss_file_is_named_not_repaired(tmp_path, imported):
    """The FAISS file no longer matches the catalog (a killed writer's): it cannot vouch for the vectors."""
    import json

    index = Path(shutil.copytree(imported["Flat"], tmp_path / "idx"))
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["generation"] -= 1
    (index / "manifest.json").write_text(json.dumps(manifest))
    damage(index / SHARD, "truncated")
    result = cgx("check", "--repair", "--no-files", "--index", index)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem:")]
    assert any(str(SHARD) in p and "missing, stale or damaged" in p for p in problems), result.stdout
