"""`--exclude GLOB` and the default exclusions (NAS thumbnails, trash, archive debris) in discovery and build-index."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.ingest.discover import DEFAULT_EXCLUDES, find_images, is_excluded
from tests.support.photos import MODEL, write_photo


def tree(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    return root


def found(root: Path, **kwargs) -> list[str]:
    return [p.relative_to(root).as_posix() for p in find_images([root], **kwargs)]


def test_nas_and_system_folders_are_left_out_by_default(tmp_path):
    root = tree(
        tmp_path,
        [
            "2024/a.jpg",
            "2024/@eaDir/a.jpg/SYNOPHOTO_THUMB_XL.jpg",
            "#recycle/old.jpg",
            "@Recycle/old.jpg",
            "share/.Trash-1000/files/gone.jpg",
            "share/.thumbnails/normal/t.png",
            "zip/__MACOSX/._a.jpg",
            "$RECYCLE.BIN/x.png",
            "System Volume Information/x.png",
            "repo/.git/x.png",
        ],
    )
    assert found(root) == ["2024/a.jpg"]
    # hidden folders come back with include_hidden, the default exclusions do not
    assert found(root, include_hidden=True) == ["2024/a.jpg"]
    assert "@eaDir" in DEFAULT_EXCLUDES and ".Trash-*" in DEFAULT_EXCLUDES


def test_name_and_path_patterns(tmp_path):
    root = tree(tmp_path, ["2019/drafts/a.jpg", "2019/final/b.jpg", "2020/drafts/c.jpg", "raw/d.png", "e.tmp.jpg"])
    assert found(root, exclude=["drafts"]) == ["2019/final/b.jpg", "e.tmp.jpg", "raw/d.png"]
    assert found(root, exclude=["2019/drafts"]) == ["2019/final/b.jpg", "2020/drafts/c.jpg", "e.tmp.jpg", "raw/d.png"]
    assert found(root, exclude=["*.tmp.jpg", "raw"]) == ["2019/drafts/a.jpg", "2019/final/b.jpg", "2020/drafts/c.jpg"]
    assert found(root, exclude=["Drafts"]) == found(root)  # case-sensitive, as the file system
    assert is_excluded("a/b/c.jpg", ["a/*"]) and not is_excluded("x/a/c.jpg", ["a/*"])


@pytest.mark.slow  # two builds through the CLI
def test_build_index_exclude_leaves_out_and_removes(tmp_path):
    photos = tmp_path / "photos"
    for i in range(3):
        write_photo(photos / "keep" / f"k{i}.png", seed=i)
    write_photo(photos / "drafts" / "d0.png", seed=7)
    write_photo(photos / "@eaDir" / "thumb.png", seed=8)
    index = tmp_path / "index"
    runner = CliRunner()
    first = runner.invoke(app, ["build-index", str(photos), "--index", str(index), "--model", MODEL, "--quiet"])
    assert first.exit_code == 0, first.output
    with CrossGapIndex.open(index, device="cpu") as cgx:
        assert sorted(Path(r.path).name for r in cgx.ls("image")) == ["d0.png", "k0.png", "k1.png", "k2.png"]
    args = ["build-index", str(photos), "--index", str(index), "--exclude", "drafts", "--exclude", "k2.*", "--quiet"]
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    with CrossGapIndex.open(index, device="cpu") as cgx:
        assert sorted(Path(r.path).name for r in cgx.ls("image")) == ["k0.png", "k1.png"]
