"""The search page in a real browser: Playwright driving Debian's chromium against a real uvicorn server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from PIL import Image

from crossgap_index import CrossGapIndex
from crossgap_index.server.settings import ServeSettings
from tests.support.serve import copy_index, running_server

SCREENSHOT = os.environ.get("CGX_PAGE_SCREENSHOT")  # set to refresh docs/serve-page.png
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium: apt-get update && apt-get install -y chromium"
)
# the results of an item query are in: hits are shown, and the query item is not among them
LEFT_OUT = """id => new URLSearchParams(location.search).get('item') === id
    && document.querySelectorAll('#results .hit').length > 0
    && ![...document.querySelectorAll('#results .hit')].some(hit => hit.dataset.id === id)"""


@pytest.fixture(scope="module")
def served(serve_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    index_path, photos = copy_index(serve_template, root)
    tiff = root / "extra" / "cmyk.tif"  # a format browsers do not show: the page gets server-side thumbnails
    tiff.parent.mkdir()
    Image.open(sorted(photos.rglob("*.png"))[0]).convert("CMYK").save(tiff)
    with CrossGapIndex.open(index_path, device="cpu") as cgx:
        cgx.add_images([tiff])
        with running_server(cgx, ServeSettings()) as url:
            yield url, sorted(photos.rglob("*.png")), tiff


@pytest.fixture
def page(served):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser.new_page(viewport={"width": 1100, "height": 800})
        finally:
            browser.close()


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_switching_mode_searches_again_through_inversion(served, page):
    url, photos, tiff = served
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")
    page.set_input_files("#photo", str(photos[4]))
    page.wait_for_selector("#results .hit .score")  # the photo's hits, not the browse cards
    # switching mode searches the same photo again through inversion, each hit shows both lists' ranks
    page.select_option("#mode", "fused")
    page.wait_for_selector("#results .hit .rank[data-list=cross]")
    assert "Plain + translated" in page.inner_text("#status")
    assert query_of(page.url)["mode"] == ["fused"]
    assert "inversion batch of 1" in page.inner_text("#status")


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlparse(url).query)


def tiff_card_id(url: str, tiff) -> int:
    """The catalog id of the TIFF item, through the API's own browsing."""
    doc = httpx.get(f"{url}/browse", params={"limit": 200}).json()
    return next(item["id"] for item in doc["items"] if item["path"] == str(tiff))


@pytest.mark.slow  # a browser launch and a dozen page loads: 12 s at load about 1 (2026-11-26); full suite only
def test_search_page_end_to_end(served, page, tmp_path):
    url, photos, tiff = served
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")
    assert "49 images" in page.inner_text("#status")
    # the mode offered first is what --cross serves, named by what it resolves to; only servable modes
    assert page.input_value("#mode") == "auto"
    assert page.inner_text("#mode option[value=auto]") == "Best for this index: Word directions"
    options = page.eval_on_selector_all(
        "#mode option", "options => options.map(o => [o.value, o.textContent, o.title])"
    )
    modes = {value for value, _, _ in options}
    assert {"intra", "cross", "fused", "span", "concept", "iso"} <= modes
    assert not modes & {"inverter", "warm", "cross-gallery"}  # no inverter, no gallery inversion in this index
    assert all(title and text != value for value, text, title in options if value != "auto")

    # no query yet: the stored images, as server-made thumbnails, TIFF included
    page.wait_for_selector("#results .hit.browse img")
    assert len(page.query_selector_all("#results .hit.browse")) == 48
    assert "browsing" in page.inner_text("#status")
    page.click("#more")
    page.wait_for_function("() => document.querySelectorAll('#results .hit.browse').length === 49")
    page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    tiff_card = page.query_selector(f"#results .hit[title='{tiff}']")
    assert tiff_card.query_selector("img").evaluate("img => img.naturalWidth") == 64

    # a text query: thumbnails of indexed images, each with its score and rank
    page.fill("#q", "a red circle")
    page.click("#go")
    page.wait_for_selector("#results .hit .score")  # search hits (browse cards carry no score)
    cards = page.query_selector_all("#results .hit")
    assert len(cards) == 12
    first_img = cards[0].query_selector("img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=first_img)
    assert first_img.evaluate("img => img.naturalWidth") == 64  # a thumbnail of the indexed file, by id
    assert first_img.get_attribute("src").endswith("/thumb")
    assert cards[0].query_selector(".rank[data-list=intra]").inner_text() == "Plain similarity #1"
    assert "already across" in page.inner_text("#status")  # auto on a text query for images: plain
    assert query_of(page.url)["q"] == ["a red circle"] and query_of(page.url)["mode"] == ["auto"]

    # upload a photo: the photo itself comes back first
    page.set_input_files("#photo", str(photos[4]))
    page.wait_for_selector("#query-view img")
    page.wait_for_function("path => document.querySelector('#results .hit')?.title === path", arg=str(photos[4]))
    assert float(page.inner_text("#results .hit .score")) == pytest.approx(1.0, abs=1e-3)

    # click a hit: "more like this" by item id, carried in the address; the item itself is left out of its hits
    third = page.query_selector_all("#results .hit")[2]
    clicked_id = third.get_attribute("data-id")
    third.click()
    page.wait_for_function(LEFT_OUT, arg=clicked_id)
    assert query_of(page.url)["item"] == [clicked_id]
    assert "more like this" in page.inner_text("#query-view")
    query_img = page.wait_for_selector("#query-view img")
    assert query_img.get_attribute("src") == f"/items/{clicked_id}/thumb"
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=query_img)
    assert "Word directions" in page.inner_text("#status")  # auto, image -> images: the default span

    # the TIFF item as a query, by address: its thumbnail shows, though browsers cannot show TIFF
    tiff_id = tiff_card_id(url, tiff)
    page.goto(f"{url}/?item={tiff_id}")
    page.wait_for_function(LEFT_OUT, arg=str(tiff_id))
    query_img = page.wait_for_selector("#query-view img")
    page.wait_for_function("img => img.complete && img.naturalWidth === 64", arg=query_img)

    # the address alone reproduces a result page
    page.goto(url + "/?q=a+blue+star&target=texts&k=5")
    page.wait_for_selector("#results .hit .text")
    assert len(page.query_selector_all("#results .hit")) == 5
    assert page.input_value("#q") == "a blue star"

    # a query the library refuses shows the server's one-line error
    page.select_option("#target", "images")
    page.wait_for_selector("#results .hit img")
    page.goto(url + "/?q=a+blue+star&k=100000")
    page.wait_for_selector("#status.error")
    assert "limit" in page.inner_text("#status")

    page.screenshot(path=str(tmp_path / "serve-page.png"), full_page=True)
    if SCREENSHOT:  # the README's picture: a photo searched the default way (what --cross serves)
        page.goto(url + "/?k=18")
        page.wait_for_selector("body[data-ready=true]")
        page.set_input_files("#photo", str(photos[4]))
        page.wait_for_selector("#results .hit .rank[data-list=span]")
        page.wait_for_function(
            "() => document.querySelectorAll('#results .hit img').length === 18 &&"
            " [...document.images].every(i => i.complete && i.naturalWidth > 0)"
        )
        page.screenshot(path=SCREENSHOT)
    assert (tmp_path / "serve-page.png").stat().st_size > 10_000
    assert errors == []


@pytest.mark.slow  # a browser launch and Swagger UI's 1.5 MB script on a loaded machine
def test_docs_render_the_operations_offline(served, page):
    """/docs is Swagger UI reading the server's OpenAPI 3.1 document: the operations list appears, and the
    page asks nothing of any other host."""
    url, _, _ = served
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=60_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.dataset.path || e.innerText)")
    assert {"/search", "/search/batch", "/items/{item_id}", "/texts"} <= {p.replace("\u200b", "") for p in paths}
    assert "Unable to render this definition" not in page.inner_text("body")
    assert "3.1" in page.inner_text(".information-container, .info")  # the OAS version badge
    assert requested and all(u.startswith(url) or u.startswith("data:") for u in requested)


@pytest.mark.slow  # a browser launch and several page loads
def test_cards_name_their_files_and_open_the_originals(served, page, tmp_path):
    url, photos, tiff = served
    page.goto(url + "/")
    page.wait_for_selector("#results .hit.browse .name a")
    cards = page.query_selector_all("#results .hit.browse")
    assert len(cards) == 48
    for c in cards[:5]:
        link = c.query_selector(".name a")
        path = c.get_attribute("title")
        assert link.inner_text() == path.rsplit("/", 1)[-1]
        assert link.get_attribute("href") == f"/items/{c.get_attribute('data-id')}/image"
        original = httpx.get(url + link.get_attribute("href"), timeout=30)
        assert original.status_code == 200 and original.content == Path(path).read_bytes()
    # following the link opens the original, not "more like this"
    with page.context.expect_page() as opened:
        cards[0].query_selector(".name a").click()
    assert opened.value.url.endswith(cards[0].query_selector(".name a").get_attribute("href"))
    assert "item" not in query_of(page.url)
    # 49 images: one more page, then no "show more"
    page.click("#more")
    page.wait_for_function("() => document.querySelectorAll('#results .hit.browse').length === 49")
    assert page.query_selector("#more") is None

    # a merged ranking leads with the better list's similarity, not the RRF value
    item = int(cards[4].get_attribute("data-id"))
    page.goto(url + f"/?item={item}&mode=fused&k=8")
    page.wait_for_selector("#results .hit .score[data-kind=best-list]")
    doc = httpx.post(url + "/search", json={"item_id": item, "mode": "fused", "k": 8}, timeout=60).json()
    shown = [float(s) for s in page.eval_on_selector_all("#results .hit .score", "els => els.map(e => e.textContent)")]
    assert shown == [pytest.approx(max(h["scores"].values()), abs=1e-3) for h in doc["hits"]]
    assert all(v > 0.05 for v in shown)  # similarities, not 1/(60 + rank)
    assert httpx.get(url + "/favicon.ico").status_code == 204

    # a file the browser cannot show: its name, no broken-image icon, the server's one-line refusal
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a picture at all")
    page.set_input_files("#photo", str(bad))
    page.wait_for_selector("#status.error")
    assert "not a usable image" in page.inner_text("#status")
    page.wait_for_function("() => !document.querySelector('#query-view img')")
    assert "broken.png" in page.inner_text("#query-view")


@pytest.mark.slow
def test_a_mode_the_address_names_wrongly_falls_back_by_name(served, page):
    url, _, _ = served
    page.goto(url + "/?q=a+red+circle&mode=bogus")
    page.wait_for_selector("#results .hit .score")
    note = page.inner_text("#note")
    assert "mode 'bogus' is not offered here: searching with Best for this index" in note
    assert page.input_value("#mode") == "auto"
    assert "error" not in (page.get_attribute("#status", "class") or "")
    assert "unknown mode" not in page.inner_text("body")
    page.goto(url + "/?q=a+red+circle&mode=span")  # a valid address: no note
    page.wait_for_selector("#results .hit .score")
    assert page.is_hidden("#note") or "not offered" not in page.inner_text("#note")


@pytest.mark.slow  # builds its own small index without texts
def test_texts_are_offered_only_when_the_index_holds_some(served, page, tmp_path):
    _, photos, _ = served
    with CrossGapIndex.create(tmp_path / "no-texts", model="crossgap-small", device="cpu") as cgx:
        cgx.add_images(photos[:6])
        with running_server(cgx, ServeSettings()) as url:
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]")
            targets = page.eval_on_selector_all("#target option", "options => options.map(o => o.value)")
            assert targets == ["images"]
            page.goto(url + "/?q=a+red+circle&target=texts")
            page.wait_for_selector("#results .hit .score")
            assert "target 'texts' is not offered here (this index holds no texts)" in page.inner_text("#note")
            words = page.inner_text("body")
            assert str(tmp_path) not in words and "/no-texts" not in words  # no server path in any message
