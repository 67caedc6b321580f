"""The Ray Data engine against the local one, on a real local Ray instance with tiny-random."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a Ray instance and its workers: 10-12 s a test (fast tier: test_engine_ray_fast.py)

from crossgap_index import CrossGapIndex  # noqa: E402
from crossgap_index.engines.ray_data import ImageEmbedder, RayEngine  # noqa: E402
from tests.support.photos import MODEL, write_broken_files, write_photo  # noqa: E402

BATCH = 4
ONE_ACTOR = RayEngine(actors=1)  # one model load per build keeps the module's time down on 2 cores


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    photos = tmp_path / "photos"
    for i in range(18):
        write_photo(photos / f"d{i % 3}" / f"img{i:02d}.png", seed=i)
    write_broken_files(photos / "broken")
    return photos


def build(index: Path, folder: Path, engine, precision: str = "auto", **kwargs):
    with CrossGapIndex.open_or_create(index, model=MODEL, device="cpu", precision=precision) as cgx:
        return cgx.index_folders([folder], batch_size=BATCH, max_megapixels=5, engine=engine, **kwargs)


def catalog_rows(index: Path) -> tuple[list[tuple], np.ndarray]:
    """(id, path, hash, size, mtime) of every image, and their vectors (from the shard files), in id order."""
    with sqlite3.connect(index / "catalog.sqlite") as conn:
        rows = conn.execute(
            "SELECT id, path, content_hash, size, mtime_ns, slot FROM items WHERE modality = 'image' ORDER BY id"
        ).fetchall()
    dim = json.loads((index / "manifest.json").read_text())["dim"]
    shard = np.fromfile(index / "vectors" / "items-000000.f32", np.float32).reshape(-1, dim)
    vectors = np.stack([shard[r[5]] for r in rows]) if rows else np.zeros((0, 0))
    return [r[:5] for r in rows], vectors


def assert_same_index(a: Path, b: Path, queries: list[Path]) -> None:
    rows_a, vec_a = catalog_rows(a)
    rows_b, vec_b = catalog_rows(b)
    assert rows_a == rows_b
    np.testing.assert_allclose(vec_a, vec_b, atol=1e-5)
    with CrossGapIndex.open(a, device="cpu") as ia, CrossGapIndex.open(b, device="cpu") as ib:
        for query in queries:
            assert [h.id for h in ia.search(image=query, k=5)] == [h.id for h in ib.search(image=query, k=5)]


def test_ray_build_equals_local_and_stays_incremental(tmp_path, folder):
    local, distributed = tmp_path / "local", tmp_path / "ray"
    expected = build(local, folder, "local")
    report = build(distributed, folder, ONE_ACTOR)
    assert (report.added, report.embedded, len(report.skipped)) == (18, 18, 5)
    assert (expected.added, expected.embedded) == (18, 18)
    assert sorted(report.skipped) == sorted(expected.skipped)
    queries = [folder / "d0" / "img00.png", folder / "d2" / "img17.png"]
    assert_same_index(local, distributed, queries)

    write_photo(folder / "d1" / "img01.png", seed=101)  # changed content
    write_photo(folder / "d1" / "new.png", seed=102)  # new
    (folder / "d0" / "img03.png").rename(folder / "d0" / "moved.png")  # renamed: reuses its vector
    for index, engine in ((local, "local"), (distributed, ONE_ACTOR)):
        again = build(index, folder, engine)
        assert (again.embedded, again.added, again.updated, again.moved, again.removed) == (2, 1, 1, 1, 0)
    assert_same_index(local, distributed, [*queries, folder / "d1" / "new.png"])


def test_killed_worker_is_retried_with_nothing_lost_or_doubled(tmp_path, folder):
    marker = tmp_path / "crashed"

    class CrashOnceEmbedder(ImageEmbedder):
        """Dies (the whole worker process) in its second batch, the first time only."""

        calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 2 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    build(tmp_path / "local", folder, "local")
    report = build(tmp_path / "ray", folder, RayEngine(embedder=CrashOnceEmbedder, actors=1))
    assert marker.exists()  # a worker did die mid-build
    assert (report.added, len(report.skipped)) == (18, 5)
    assert_same_index(tmp_path / "local", tmp_path / "ray", [folder / "d1" / "img04.png"])


def test_interrupted_driver_resumes_in_the_index_precision(tmp_path, folder):
    """fp32 asked for explicitly: the actors embed in the driver's precision, not their own auto choice
    (bf16 where the CPU runs it), so the vectors still equal the local build's to 1e-5."""
    index = tmp_path / "ray"

    def stop_after_two_batches(done: int, total: int) -> None:
        if done >= 2 * BATCH:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(index, folder, ONE_ACTOR, "fp32", progress=stop_after_two_batches)
    rows, _ = catalog_rows(index)
    assert 0 < len(rows) < 18  # the stored batches survived the interrupt

    resumed = build(index, folder, ONE_ACTOR, "fp32")
    assert resumed.unchanged == len(rows) and resumed.added == 18 - len(rows)
    build(tmp_path / "local", folder, "local", "fp32")
    assert_same_index(tmp_path / "local", index, [folder / "d2" / "img05.png"])


def test_cli_engine_ray_builds_and_unknown_engine_is_one_line(tmp_path, folder):
    from typer.testing import CliRunner

    from crossgap_index.cli.app import app

    runner = CliRunner()
    args = ["build-index", str(folder), "--model", MODEL, "--device", "cpu", "--max-image-megapixels", "5", "-q"]
    bad = runner.invoke(app, [*args, "--index", str(tmp_path / "bad"), "--engine", "spark"])
    assert not (tmp_path / "bad").exists()
    assert bad.exit_code == 1 and "unknown engine 'spark'" in bad.output and "Traceback" not in bad.output
    ok = runner.invoke(app, [*args, "--index", str(tmp_path / "ray"), "--engine", "ray", "--ray-address", "auto"])
    assert ok.exit_code == 0, ok.output
    assert len(catalog_rows(tmp_path / "ray")[0]) == 18
