"""Gallery inversion and derived collections through the build engines.

The Ray tests run a real local Ray instance (2 CPUs, a small object store) against the local engine on copies of
one tiny-random index; the one quick test checks the local engine's post-build derived collection without Ray.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.inversion import InversionConfig
from crossgap_index.search import gallery
from tests.support.photos import MODEL, write_photo

N_IMAGES = 14
# OTI settings that keep a test short: 3 steps; blocks of 4 (14 images: 4 blocks, the last one short).
CONFIG = InversionConfig(oti_steps=3, ovi_steps=3, batch_size=4)
# Both engines run the same oti() with the same seeds, settings (bf16 resolved the same way on one CPU) and block
# shapes; what differs is the process and its thread count, which changes only the order of fp32 sums (1e-7 a
# step, a few steps): far below the 1e-5 asserted, and far below the gaps between neighbours' scores.
ATOL = 1e-5


@pytest.fixture(scope="module")
def base_index(tmp_path_factory) -> tuple[Path, Path]:
    """(photos folder, an index of them built locally: no gallery inversion, no derived collections)."""
    root = tmp_path_factory.mktemp("base")
    photos = root / "photos"
    for i in range(N_IMAGES):
        write_photo(photos / f"img{i:02d}.png", seed=i)
    with CrossGapIndex.open_or_create(root / "index", model=MODEL, device="cpu") as cgx:
        cgx.index_folders([photos], batch_size=8)
        cgx.add_texts([f"a photo of shape {i}" for i in range(6)])
    return photos, root / "index"


def copy_of(base: Path, tmp_path: Path, name: str) -> Path:
    shutil.copytree(base, tmp_path / name)
    return tmp_path / name


def derived_files(index: Path) -> list[Path]:
    return sorted((index / gallery.DERIVED_DIR).glob("*.faiss"))


def read_derived(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of a saved derived collection (an exact IDMap2 index at this size)."""
    index = faiss.read_index(str(path))
    ids = faiss.vector_to_array(index.id_map)
    vectors = faiss.downcast_index(index.index).reconstruct_n(0, index.ntotal)
    order = np.argsort(ids)
    return ids[order], vectors[order]


def counting_builds(monkeypatch) -> list[str]:
    """Every derived collection built from here on (the one builder, whoever calls it)."""
    calls: list[str] = []
    real = gallery.make_derived

    def counted(store, collection, projection, map_blocks=None):
        calls.append(gallery.derived_name(collection, projection))
        return real(store, collection, projection, map_blocks)

    monkeypatch.setattr(gallery, "make_derived", counted)
    return calls


def test_local_build_leaves_the_default_cross_collection_current(tmp_path, base_index, monkeypatch):
    """The quick tier's check: after build_derived, a fresh process-like open serves --cross with no rebuild."""
    photos, base = base_index
    index = copy_of(base, tmp_path, "local")
    with CrossGapIndex.open(index, device="cpu") as cgx:
        built = cgx.build_derived()
        assert built and all(name.startswith(("image@span-", "text@span-")) for name in built)
        assert cgx.build_derived() == []  # current now: nothing to do
    saved = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in derived_files(index)}
    assert {f.stem for f in saved} == set(built)
    builds = counting_builds(monkeypatch)
    with CrossGapIndex.open(index, device="cpu") as cgx:
        cgx.search(image=photos / "img03.png", mode="auto", k=5)
        cgx.search(text="a photo of shape 2", target="texts", mode="auto", k=3)
    assert builds == []
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in derived_files(index)} == saved


# -- on a real local Ray instance --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=80 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def ray_engine(**kwargs):
    from crossgap_index.engines.ray_data import RayEngine

    return RayEngine(actors=2, **kwargs)


def stored(index: Path, collection: str) -> tuple[np.ndarray, np.ndarray]:
    with CrossGapIndex.open(index, device="cpu") as cgx:
        return cgx._store.ids_and_vectors(collection)


@pytest.mark.slow
def test_ray_gallery_oti_equals_local_resumes_and_serves_the_same(tmp_path, base_index, ray_instance):
    photos, base = base_index
    local, distributed = copy_of(base, tmp_path, "local"), copy_of(base, tmp_path, "ray")
    with CrossGapIndex.open(local, device="cpu") as cgx:
        assert cgx.invert_gallery(CONFIG) == N_IMAGES

    def stop_after_first_block(done: int, total: int) -> None:
        if done >= CONFIG.batch_size:
            raise KeyboardInterrupt

    with CrossGapIndex.open(distributed, device="cpu") as cgx, pytest.raises(KeyboardInterrupt):
        cgx.invert_gallery(CONFIG, progress=stop_after_first_block, engine=ray_engine())
    kept, _ = stored(distributed, "image-oti")
    assert len(kept) == CONFIG.batch_size  # the first block was written and committed before the interrupt
    with CrossGapIndex.open(distributed, device="cpu") as cgx:
        assert cgx.gallery_inversion == CrossGapIndex.open(local, device="cpu").gallery_inversion
        assert cgx.invert_gallery(engine=ray_engine()) == N_IMAGES - CONFIG.batch_size  # only the rest

    ids_local, oti_local = stored(local, "image-oti")
    ids_ray, oti_ray = stored(distributed, "image-oti")
    np.testing.assert_array_equal(ids_local, ids_ray)
    np.testing.assert_allclose(oti_ray, oti_local, atol=ATOL)
    with CrossGapIndex.open(local, device="cpu") as a, CrossGapIndex.open(distributed, device="cpu") as b:
        for query in ("img00.png", "img07.png", "img13.png"):
            hits_a = a.search(image=photos / query, mode="cross-gallery", k=6)
            hits_b = b.search(image=photos / query, mode="cross-gallery", k=6)
            assert [h.id for h in hits_a] == [h.id for h in hits_b]
            np.testing.assert_allclose([h.score for h in hits_a], [h.score for h in hits_b], atol=ATOL)


@pytest.mark.slow
def test_ray_derived_equals_the_lazy_one_survives_a_killed_worker_and_is_current(
    tmp_path, base_index, ray_instance, monkeypatch
):
    from crossgap_index.engines.work import VectorMapper

    photos, base = base_index
    lazy, distributed = copy_of(base, tmp_path, "lazy"), copy_of(base, tmp_path, "ray")
    monkeypatch.setattr(gallery, "DERIVED_BLOCK", 3)  # 14 images, 6 texts: several blocks per collection
    marker = tmp_path / "crashed"

    class CrashOnceMapper(VectorMapper):
        """Dies (the whole worker process) in its second block, the first time only."""

        calls = 0

        def run(self, block):
            self.calls += 1
            if self.calls == 2 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().run(block)

    with CrossGapIndex.open(distributed, device="cpu") as cgx:
        built = cgx.build_derived(engine=ray_engine(mapper=CrashOnceMapper))
    assert marker.exists()  # a mapping worker did die mid-run, and Ray retried its blocks
    assert sorted(f.stem for f in derived_files(distributed)) == sorted(built)

    queries = [dict(image=photos / "img05.png"), dict(text="a photo of shape 4", target="texts")]
    with CrossGapIndex.open(lazy, device="cpu") as cgx:  # the first queries build them, as before
        expected = [[(h.id, h.score) for h in cgx.search(**q, mode="auto", k=5)] for q in queries]
    assert sorted(f.stem for f in derived_files(lazy)) == sorted(built)
    for name in built:
        ids_lazy, vec_lazy = read_derived(lazy / gallery.DERIVED_DIR / f"{name}.faiss")
        ids_ray, vec_ray = read_derived(distributed / gallery.DERIVED_DIR / f"{name}.faiss")
        np.testing.assert_array_equal(ids_lazy, ids_ray)
        np.testing.assert_allclose(vec_ray, vec_lazy, atol=ATOL)

    saved = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in derived_files(distributed)}
    builds = counting_builds(monkeypatch)
    with CrossGapIndex.open(distributed, device="cpu") as cgx:
        served = [[(h.id, h.score) for h in cgx.search(**q, mode="auto", k=5)] for q in queries]
    assert builds == []  # found current: the query paid for no derived collection
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in derived_files(distributed)} == saved
    for got, want in zip(served, expected, strict=True):
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=ATOL)


@pytest.mark.slow
def test_cli_engine_ray_inverts_the_gallery_and_texts_and_leaves_cross_ready(tmp_path, base_index, ray_instance):
    from typer.testing import CliRunner

    from crossgap_index.cli.app import app

    photos, _ = base_index
    index = tmp_path / "cli"
    runner = CliRunner()
    common = ["--index", str(index), "--device", "cpu", "--engine", "ray", "--ray-address", "auto"]
    built = runner.invoke(
        app, ["build-index", str(photos), "--model", MODEL, *common, "--invert-gallery", "--steps", "2", "-q"]
    )
    assert built.exit_code == 0, built.output
    corpus = tmp_path / "texts.txt"
    corpus.write_text("".join(f"caption {i}\n" for i in range(5)))
    added = runner.invoke(app, ["add-texts", str(corpus), *common, "--invert-gallery", "--ovi-steps", "2"])
    assert added.exit_code == 0, added.output
    # texts moved the catalog's generation: the image collection's derived file is made again too
    assert "built 2 derived collection(s) for --cross: image@span-" in added.output
    with CrossGapIndex.open(index, device="cpu") as cgx:
        assert cgx.info().counts["image-oti"] == N_IMAGES and cgx.info().counts["text-ovi"] == 5
    names = {f.stem.split("@")[0] for f in derived_files(index)}
    assert names == {"image", "text"}
