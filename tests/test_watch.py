"""`cgx watch` and `cgx serve --watch`: a watched folder's new, edited, moved and deleted files reach the index in
batches, through the build's own path (ids kept across edits and moves), a killed watcher resumes, Ctrl-C stops
it cleanly, and a server with --watch serves a file copied into the folder. Real files, inotify (watchfiles),
processes, SQLite, FAISS and HTTP; every wait is a bounded poll for a condition."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.folder_watch import FolderWatcher, WatchSettings
from crossgap_index.ingest.discover import paths_to_sync
from crossgap_index.store.catalog import Catalog
from tests.support.cli import REPO, cgx_process
from tests.support.photos import MODEL, write_photo

FAST = WatchSettings(debounce_ms=500, step_ms=100)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 120.0):
    """Poll ``condition`` until it is truthy (its value is returned); fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stored(index: Path) -> dict[str, int]:
    """path -> id of every image in the committed catalog (read as another process would)."""
    if not (index / "catalog.sqlite").exists():
        return {}
    catalog = Catalog(index / "catalog.sqlite", readonly=True)
    try:
        return {item.path: item.id for item in catalog.items("image")}
    finally:
        catalog.close()


def top_hit(index: Path, image: Path) -> tuple[int, float] | None:
    with CrossGapIndex.open(index, device="cpu", readonly=True) as cgx:
        hits = cgx.search(image=image, k=1)
    return (hits[0].id, hits[0].score) if hits else None


class WatcherThread:
    """A FolderWatcher over ``folder`` on a thread of this process, with every batch it reports."""

    def __init__(self, index: Path, folder: Path, settings: WatchSettings = FAST):
        self.handle = CrossGapIndex.open_or_create(index, model=MODEL, device="cpu")
        self.batches = []
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.watcher = FolderWatcher(
            self.handle, [folder.resolve()], settings, on_batch=self.batches.append, on_problem=self.problems.append
        )
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.watcher.run(self.stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def __enter__(self) -> WatcherThread:
        self.thread.start()
        wait_for(lambda: self.watcher.listening.is_set() or self.errors, "the watcher to listen")
        assert not self.errors, self.errors
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join(60)
        self.handle.close()
        assert not self.thread.is_alive() and not self.errors, self.errors


def test_watching_a_file_is_one_line(tmp_path):
    write_photo(tmp_path / "a.png", seed=1)
    done = subprocess.run(
        [sys.executable, "-m", "crossgap_index", "watch", str(tmp_path / "a.png"), "--index", str(tmp_path / "i")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 1
    assert done.stderr.strip() == f"cgx: error: cannot watch {tmp_path / 'a.png'}: not a folder"


def test_paths_to_sync_follows_the_build_rules(tmp_path):
    root = tmp_path / "root"
    write_photo(root / "a.png", seed=1)
    write_photo(root / "sub" / "b.png", seed=2)
    write_photo(root / ".hidden" / "c.png", seed=3)
    write_photo(root / "node_modules" / "d.png", seed=4)
    (root / "notes.txt").write_text("not an image")
    changed = [root / "a.png", root / "sub", root / ".hidden" / "c.png", root / "node_modules", root / "notes.txt"]
    changed += [root / "gone.png", tmp_path / "elsewhere.png"]
    files, prune = paths_to_sync(changed, [root], include_hidden=False)
    assert files == [root / "a.png", root / "sub" / "b.png"]
    assert prune == [root / "a.png", root / "sub", root / "gone.png"]
    files, _ = paths_to_sync([root / ".hidden" / "c.png"], [root], include_hidden=True)
    assert files == [root / ".hidden" / "c.png"]


def test_paths_to_sync_leaves_out_what_build_index_excludes(tmp_path):
    """The watcher's rule for one changed path is build-index's: the default NAS/system folders and the user's
    --exclude patterns, for a changed file and for a changed folder walked."""
    root = tmp_path / "root"
    write_photo(root / "@eaDir" / "a.png", seed=1)
    write_photo(root / "drafts" / "b.png", seed=2)
    write_photo(root / "keep" / "c.png", seed=3)
    write_photo(root / "keep" / "c.tmp.png", seed=4)
    changed = [root / "@eaDir" / "a.png", root / "drafts" / "b.png", root / "keep"]
    files, prune = paths_to_sync(changed, [root], include_hidden=False, exclude=("drafts", "*.tmp.png"))
    assert files == [root / "keep" / "c.png"]
    assert prune == [root / "keep"]


@pytest.mark.slow
def test_watch_follows_new_edited_moved_and_deleted_files(tmp_path):
    folder, index = tmp_path / "photos", tmp_path / "idx"
    write_photo(folder / "before.png", seed=1)  # there before the watcher: the catch-up indexes it
    with WatcherThread(index, folder) as watching:
        assert list(stored(index)) == [str((folder / "before.png").resolve())]

        new = write_photo(tmp_path / "staging" / "new.png", seed=2)
        shutil.copy(new, folder / "new.png")
        new_path = str((folder / "new.png").resolve())
        wait_for(lambda: new_path in stored(index), "the new file to be indexed")
        new_id = stored(index)[new_path]
        assert top_hit(index, folder / "new.png") == (new_id, pytest.approx(1.0, abs=1e-5))

        write_photo(folder / "new.png", seed=3)  # edited in place
        wait_for(lambda: top_hit(index, folder / "new.png")[1] > 0.9999, "the edit to be searchable")
        assert top_hit(index, folder / "new.png")[0] == new_id  # same id, new vector

        (folder / "sub").mkdir()
        os.rename(folder / "new.png", folder / "sub" / "renamed.png")  # moved
        moved_path = str((folder / "sub" / "renamed.png").resolve())
        wait_for(lambda: moved_path in stored(index) and new_path not in stored(index), "the move")
        assert stored(index)[moved_path] == new_id

        os.rename(folder / "sub", folder / "album")  # a whole folder renamed
        in_album = str((folder / "album" / "renamed.png").resolve())
        wait_for(lambda: in_album in stored(index) and moved_path not in stored(index), "the folder's move")
        assert stored(index)[in_album] == new_id

        (folder / "before.png").unlink()  # deleted
        wait_for(lambda: str((folder / "before.png").resolve()) not in stored(index), "the deletion")
        assert list(stored(index).values()) == [new_id]
        (folder / "notes.txt").write_text("not an image")  # no write for it
        shutil.rmtree(folder / "album")  # a folder deleted with what it holds
        wait_for(lambda: not stored(index), "the folder's deletion")
        assert all(batch.changes for batch in watching.batches[1:])  # every batch after the catch-up had events
    with CrossGapIndex.open(index, device="cpu") as cgx:
        assert cgx.check().ok


@pytest.mark.slow
def test_a_file_name_that_is_not_utf8_is_indexed_and_the_watcher_goes_on(tmp_path):
    folder, index = tmp_path / "photos", tmp_path / "idx"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # Latin-1: watchfiles cannot report this name
    with WatcherThread(index, folder) as watching:
        shutil.copy(write_photo(tmp_path / "staging" / "a.png", seed=5), raw)
        wait_for(lambda: os.fsdecode(raw) in stored(index), "the non-UTF-8 name to be indexed")
        assert watching.problems and "catching up" in watching.problems[0]
        shutil.copy(write_photo(tmp_path / "staging" / "b.png", seed=6), folder / "b.png")  # still watching
        wait_for(lambda: str(folder / "b.png") in stored(index), "a later file to be indexed")


@pytest.mark.slow
def test_a_burst_of_files_is_written_in_batches(tmp_path):
    folder, index = tmp_path / "photos", tmp_path / "idx"
    folder.mkdir()
    staging = tmp_path / "staging"
    sources = [write_photo(staging / f"p{i:03d}.png", seed=1000 + i) for i in range(200)]
    with WatcherThread(index, folder) as watching:
        for source in sources:
            shutil.copy(source, folder / source.name)
        added = lambda: sum(b.report.added for b in watching.batches if b.changes)  # noqa: E731
        wait_for(lambda: added() == 200, "batches that add all 200 files", timeout=300)
        batches = [b for b in watching.batches if b.changes]
    assert 1 <= len(batches) < 200  # debounced: many files per batch
    assert len(stored(index)) == 200
    with CrossGapIndex.open(index, device="cpu") as cgx:
        assert cgx.check().ok and cgx.info().counts["image"] == 200


def read_until(stream, pattern: str, seen: list[str]) -> re.Match:
    """Read lines from a process's pipe until one matches (readline blocks; the caller's process has a bound)."""
    while line := stream.readline():
        seen.append(line)
        if found := re.search(pattern, line):
            return found
    raise AssertionError(f"{pattern!r} never appeared: {''.join(seen)}")


@pytest.mark.slow
def test_a_watcher_killed_mid_batch_resumes_and_ctrl_c_stops_it_cleanly(tmp_path):
    folder, index = tmp_path / "photos", tmp_path / "idx"
    folder.mkdir()
    sources = [write_photo(tmp_path / "staging" / f"p{i:03d}.png", seed=2000 + i) for i in range(120)]
    args = ("watch", folder, "--index", index, "--model", MODEL, "--device", "cpu", "--batch-size", "4")
    first = cgx_process(*args, "--debounce-ms", "300", "--step-ms", "100")
    seen: list[str] = []
    try:
        read_until(first.stderr, "caught up", seen)
        for source in sources:
            shutil.copy(source, folder / source.name)
        wait_for(lambda: len(stored(index)) >= 4, "the first commit of the burst")  # a batch is being written
        first.kill()  # kill -9
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()

    second = cgx_process(*args)
    try:
        wait_for(lambda: len(stored(index)) == 120, "the restarted watcher to catch up", timeout=300)
        read_until(second.stderr, "caught up", seen)
        second.send_signal(signal.SIGINT)  # Ctrl-C
        assert second.wait(60) == 0
        assert "stopped" in second.stderr.read() and second.stdout.read() == ""
    finally:
        if second.poll() is None:
            second.kill()
    assert sorted(stored(index)) == sorted(str((folder / s.name).resolve()) for s in sources)
    with CrossGapIndex.open(index, device="cpu") as cgx:
        assert cgx.check().ok


@pytest.mark.slow
def test_serve_watch_serves_a_file_copied_into_the_watched_folder(serve_template, tmp_path):
    from tests.support.serve import copy_index

    index, _ = copy_index(serve_template, tmp_path)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    server = cgx_process("serve", "--index", index, "--port", "0", "--device", "cpu", "--watch", incoming)
    seen: list[str] = []
    try:
        port = int(read_until(server.stderr, r"running on http://127\.0\.0\.1:(\d+)", seen).group(1))
        read_until(server.stderr, "cgx serve: watch: caught up", seen)
        photo = write_photo(tmp_path / "staging" / "arrival.png", seed=4242, size=(64, 64))
        shutil.copy(photo, incoming / "arrival.png")
        arrived = str((incoming / "arrival.png").resolve())

        def served_top() -> bool:
            reply = httpx.post(
                f"http://127.0.0.1:{port}/search",
                files={"image": ("arrival.png", photo.read_bytes(), "image/png")},
                data={"k": "1"},
                timeout=60,
            )
            assert reply.status_code == 200, reply.text
            return reply.json()["hits"][0]["path"] == arrived

        wait_for(served_top, "the copied file to be served as the top hit of its own image")
        info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=60).json()
        assert info["counts"]["image"] == 49
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(120)
        finally:
            if server.poll() is None:
                server.kill()


@pytest.mark.slow
def test_a_second_handle_shares_the_first_ones_model(tmp_path, photo_folder):
    from crossgap_index.errors import QueryError

    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as served:
        served.index_folders([photo_folder])
        with CrossGapIndex.open(tmp_path / "idx", device="cpu") as writer:
            writer.share_model(served)
            assert writer._runtime.encoder is served._runtime.encoder
            write_photo(photo_folder / "a" / "img0.png", seed=70)
            assert writer.index_folders([photo_folder]).updated == 1  # embeds with the shared model
            with (
                CrossGapIndex.create(tmp_path / "other", model=MODEL, device="cpu") as other,
                pytest.raises(QueryError, match="another index"),
            ):
                other.share_model(served)
