"""`/items/N/thumb` never serves a cached thumbnail of a file that changed since it was indexed, even when the
new content has the same size and the old mtime: it answers 410 exactly as `/items/N/image` does."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.server.settings import ServeSettings
from tests.support.serve import copy_index, running_server


@pytest.fixture(scope="module")
def served(serve_template, tmp_path_factory):
    index_dir, photos = copy_index(serve_template, tmp_path_factory.mktemp("thumbs"))
    with CrossGapIndex.open(index_dir, device="cpu") as cgx, running_server(cgx, ServeSettings()) as url:
        yield cgx, sorted(photos.rglob("*.png")), url


def refused_gone(response: httpx.Response) -> None:
    assert response.status_code == 410, response.text
    message = response.json()["error"]
    assert "\n" not in message and "changed since it was indexed" in message, message


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["rewritten", "rewritten-mtime-restored"])
def test_a_same_size_rewrite_is_not_served_from_the_thumbnail_cache(served, tmp_path, keep_mtime):
    cgx, photos, url = served
    photo = photos[3 if keep_mtime else 4]
    item = cgx.search(image=photo, k=1)[0]
    original = tmp_path / "original.png"
    shutil.copy2(photo, original)
    with httpx.Client(base_url=url, timeout=60) as client:
        first = client.get(f"/items/{item.id}/thumb")
        assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
        assert client.get(f"/items/{item.id}/thumb").content == first.content  # served from the cache
        try:
            before = os.stat(photo)
            data = bytearray(photo.read_bytes())
            data[len(data) // 2] ^= 0xFF  # same size, other content
            with open(photo, "r+b") as f:  # in place: same inode, as an editor saving over it would
                f.write(data)
            if keep_mtime:
                os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))
            assert os.stat(photo).st_size == before.st_size
            refused_gone(client.get(f"/items/{item.id}/image"))
            refused_gone(client.get(f"/items/{item.id}/thumb"))
        finally:
            shutil.copy2(original, photo)
        assert client.get(f"/items/{item.id}/thumb").status_code == 200  # the indexed content again
