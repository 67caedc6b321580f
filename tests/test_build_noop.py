"""A rebuild with nothing to do: broken files that failed before are not read again while their size and mtime
stay, the model is not loaded, no new generation is committed (FAISS files and derived collections stay current),
and the CLI says "nothing to do". Real files, SQLite, FAISS and the CLI."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.store.catalog import Catalog
from tests.support.photos import MODEL, write_broken_files, write_photo

runner = CliRunner()


def build(index_path, folder, **kwargs):
    with CrossGapIndex.open_or_create(index_path, model=MODEL, device="cpu") as cgx:
        report = cgx.index_folders([folder], max_megapixels=5, **kwargs)
        loaded = cgx._runtime.encoder_loaded
    return report, loaded


def generation(index_path) -> int:
    return json.loads((index_path / "manifest.json").read_text())["generation"]


def failed_paths(index_path) -> set[str]:
    catalog = Catalog(index_path / "catalog.sqlite")
    try:
        return set(catalog.failed_files())
    finally:
        catalog.close()


def same_size_photo_over(path, seed: int) -> None:
    """Put a decodable image at ``path`` with the old size and mtime: a build that trusts the stat cannot tell."""
    info = path.stat()
    write_photo(path, seed=seed)
    data = path.read_bytes()
    assert len(data) <= info.st_size
    path.write_bytes(data + b"\0" * (info.st_size - len(data)))  # PNG readers ignore bytes after IEND
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_unchanged_broken_files_are_not_read_again_and_nothing_is_committed(tmp_path, photo_folder):
    broken = write_broken_files(photo_folder / "broken")
    broken["noise"] = photo_folder / "broken" / "noise.png"
    broken["noise"].write_bytes(b"\x89PNG" + os.urandom(20_000))
    index = tmp_path / "idx"
    first, _ = build(index, photo_folder)
    assert (first.added, len(first.skipped), first.known_failures) == (6, 6, 0)
    decoded_failures = {str(p.resolve()) for p in broken.values()}
    assert failed_paths(index) == decoded_failures
    files = {p.name: p.read_bytes() for p in index.glob("*.faiss")}
    before = generation(index)

    again, loaded = build(index, photo_folder)
    assert (again.added, again.updated, again.removed, again.embedded, again.unchanged) == (0, 0, 0, 0, 6)
    assert again.known_failures == 6 and sorted(again.skipped) == sorted(first.skipped)
    assert not loaded  # no model load
    assert generation(index) == before and {p.name: p.read_bytes() for p in index.glob("*.faiss")} == files

    # the proof that they are not read: a valid image with the old size and mtime stays skipped ...
    same_size_photo_over(broken["noise"], seed=31)
    assert build(index, photo_folder)[0].known_failures == 6
    # ... until --retry-failed reads every remembered failure again
    retried, _ = build(index, photo_folder, retry_failed=True)
    assert (retried.added, retried.known_failures, len(retried.skipped)) == (1, 0, 5)
    assert str(broken["noise"].resolve()) not in failed_paths(index)


def test_a_changed_broken_file_is_retried_and_a_deleted_one_forgotten(tmp_path, photo_folder):
    broken = write_broken_files(photo_folder / "broken")
    index = tmp_path / "idx"
    build(index, photo_folder)
    write_photo(broken["corrupt"], seed=40)  # fixed: new size and mtime
    broken["empty"].unlink()
    report, _ = build(index, photo_folder)
    assert (report.added, report.known_failures, len(report.skipped)) == (1, 3, 3)
    assert failed_paths(index) == {str(broken[k].resolve()) for k in ("truncated", "misnamed_text", "bomb")}
    # a higher pixel limit retries what the old limit refused
    with CrossGapIndex.open(index, device="cpu") as cgx:
        raised = cgx.index_folders([photo_folder], max_megapixels=10)
    assert raised.added == 1 and str(broken["bomb"].resolve()) not in failed_paths(index)


def test_a_touched_file_updates_its_stat_without_a_new_generation(tmp_path, photo_folder):
    index = tmp_path / "idx"
    build(index, photo_folder)
    before = generation(index)
    os.utime(photo_folder / "a" / "img0.png", ns=(10**18, 10**18))
    report, _ = build(index, photo_folder)
    assert (report.unchanged, report.embedded) == (6, 0) and generation(index) == before
    report, loaded = build(index, photo_folder)  # the new stat was recorded: not even read this time
    assert report.unchanged == 6 and not loaded


@pytest.mark.slow
def test_cli_says_nothing_to_do_and_builds_no_derived_collection_again(tmp_path, photo_folder):
    write_broken_files(photo_folder / "broken")
    args = ["build-index", str(photo_folder), "--index", str(tmp_path / "idx"), "--model", MODEL, "--device", "cpu"]
    first = runner.invoke(app, [*args, "--max-image-megapixels", "5"])
    assert first.exit_code == 0, first.output
    before = generation(tmp_path / "idx")
    derived = sorted(p.name for p in (tmp_path / "idx" / "derived").iterdir())
    again = runner.invoke(app, [*args, "--max-image-megapixels", "5"])
    assert again.exit_code == 0, again.output
    assert again.stdout == ""  # progress and summaries go to stderr
    assert "nothing to do: 6 files unchanged; 5 files that failed before" in again.stderr
    assert "--retry-failed" in again.stderr and "derived collection" not in again.stderr
    assert "skipped" not in again.stderr  # the known failures are not listed again
    assert generation(tmp_path / "idx") == before
    assert sorted(p.name for p in (tmp_path / "idx" / "derived").iterdir()) == derived


@pytest.mark.slow
def test_a_noop_rebuild_of_an_inverted_gallery_inverts_nothing(tmp_path, photo_folder):
    from crossgap_index.inversion import InversionConfig

    index = tmp_path / "idx"
    with CrossGapIndex.create(index, model=MODEL, device="cpu") as cgx:
        cgx.index_folders([photo_folder])
        cgx.invert_gallery(InversionConfig(oti_steps=2))
    before = generation(index)
    with CrossGapIndex.open(index, device="cpu") as cgx:
        cgx.index_folders([photo_folder])
        assert cgx.invert_gallery() == 0
        assert not cgx._runtime.encoder_loaded
    assert generation(index) == before
    shutil.copy(photo_folder / "a" / "img0.png", photo_folder / "a" / "dup.png")
    with CrossGapIndex.open(index, device="cpu") as cgx:
        assert cgx.index_folders([photo_folder]).added == 1
        assert cgx.invert_gallery() == 1
