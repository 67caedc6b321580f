"""`cgx serve --compile-inversion`: the server compiles the cross mode's OTI step at start (server/warmup.py) and then
answers cross queries with it, as the library does in a process that compiles (the compiled step against the eager
loop: tests/test_inversion_compiled.py)."""

from __future__ import annotations

import base64

import httpx
import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.inversion import compiled
from crossgap_index.server.settings import ServeSettings
from crossgap_index.server.warmup import warm_compiled_inversion
from tests.support.serve import copy_index, running_server


@pytest.mark.slow  # compiling the step takes seconds to a minute of CPU
def test_a_compiling_server_warms_at_start_and_serves_what_the_library_gives(serve_template, tmp_path) -> None:
    index_path, photos = copy_index(serve_template, tmp_path)
    photo = sorted(photos.rglob("*.png"))[0]
    with CrossGapIndex.open(index_path, device="cpu") as cgx:
        try:
            # the compilation itself, before the server (running_server waits 30 s for a start)
            warm_compiled_inversion(cgx)
            assert compiled.kept_steps() >= 1
            want = [hit.id for hit in cgx.search(image=photo, mode="cross", use_cache=False, k=5)]
            with running_server(cgx, ServeSettings(compile_inversion=True)) as url:  # warms again: already compiled
                body = {"image_base64": base64.b64encode(photo.read_bytes()).decode(), "mode": "cross", "k": 5}
                response = httpx.post(f"{url}/search", json={**body, "use_cache": False}, timeout=120)
            assert response.status_code == 200, response.text
            assert [hit["id"] for hit in response.json()["hits"]] == want
        finally:
            compiled.compile_in_process(False)
