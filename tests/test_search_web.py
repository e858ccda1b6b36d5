"""`audioclip serve`: the JSON API, uploads, media with ranges, path traversal, and a real browser.

The browser test drives Debian's chromium (/usr/bin/chromium, `apt-get install -y chromium`)
with Playwright's Python API; it is skipped, saying why, when either is missing.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch
from PIL import Image

from audioclip import AudioCLIP, save_model
from audioclip.index import Index
from audioclip.index.served_files import parse_range as _parse_range
from audioclip.index.server import make_server
from browser import browser_or_skip, launch

SR = 44100
QUERY = "a dog barking"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """An index of two sounds and two pictures, served on a free port.

    The long recording's rows are steered so that the text QUERY matches its
    second window (5-10 s) exactly and nothing else well: the page must then
    play it from 5 s.
    """
    root = tmp_path_factory.mktemp("site")
    torch.manual_seed(0)
    checkpoint = save_model(AudioCLIP("AudioCLIP-tiny"), root / "tiny.pt")
    media = root / "media"
    media.mkdir()
    rng = np.random.default_rng(0)
    swell = 0.15 + 0.85 * np.abs(np.sin(np.linspace(0, 5 * np.pi, SR * 15)))[:, None] ** 2  # a varied waveform
    sf.write(media / "long.wav", (0.1 * swell * rng.standard_normal((SR * 15, 1))).astype(np.float32), SR)
    sf.write(media / "short.flac", (0.1 * rng.standard_normal((SR * 2, 1))).astype(np.float32), SR)
    for name, seed in (("red.png", 1), ("blue.jpg", 2)):
        Image.fromarray((np.random.default_rng(seed).random((60, 90, 3)) * 255).astype(np.uint8)).save(media / name)
    index = Index.open(root / "db", checkpoint=checkpoint, config="AudioCLIP-tiny", device="cpu")
    index.add(media)
    steer(index, str(media / "long.wav"), index.embed_query(QUERY), best_start=5.0)

    server = make_server(index, port=0, quiet=True, max_upload=2_000_000)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield {"index": index, "media": media, "port": server.server_address[1], "server": server, "root": root}
    server.shutdown()
    server.server_close()
    thread.join(5)


def steer(index: Index, path: str, query: np.ndarray, best_start: float) -> None:
    """Give the window of ``path`` starting at ``best_start`` the vector ``query``, the others far ones."""
    record = next(r for r in index.files() if r.path == path)
    rows = index.store.rows([record.file_id])
    dim = len(query)
    far = -query  # cosine -1
    vectors = [query if row["start_s"] == best_start else far for row in rows.to_pylist()]
    rows = rows.set_column(rows.schema.get_field_index("vector"), "vector",
                           pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(vectors).astype(np.float32)), dim))
    index.store.delete_files([record.file_id])
    index.store.add(rows)


def request(site, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", site["port"], timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()  # names looked up without regard to case
    finally:
        conn.close()


def get_json(site, path: str):
    status, _, body = request(site, "GET", path)
    return status, json.loads(body)


def upload(site, path: Path, kind: str, **headers):
    return request(site, "POST", f"/api/search?kind={kind}&name={path.name}&k=4", body=path.read_bytes(),
                   headers={"X-Audioclip": "1", "Content-Type": "application/octet-stream", **headers})


def test_page_and_static_files(site):
    status, headers, body = request(site, "GET", "/")
    assert status == 200 and b'id="q"' in body and "script-src 'self'" in headers["Content-Security-Policy"]
    for name in ("app.js", "style.css"):
        status, _, body = request(site, "GET", f"/static/{name}")
        assert status == 200 and body


def test_text_search_api(site):
    status, answer = get_json(site, f"/api/search?q={QUERY.replace(' ', '+')}&k=4")
    assert status == 200 and len(answer["results"]) == 4
    top = answer["results"][0]
    assert top["name"] == "long.wav" and (top["start"], top["end"], top["windows"]) == (5.0, 10.0, 1)
    assert top["score"] == pytest.approx(1.0, abs=1e-4) and top["media"] == f"/media/{top['id']}"
    pictures = get_json(site, "/api/search?q=rain&modality=image")[1]["results"]
    assert {r["name"] for r in pictures} == {"red.png", "blue.jpg"} and all(r["thumb"] for r in pictures)
    assert top["wave"] == f"/wave/{top['id']}" and all(r["wave"] is None for r in pictures)
    # pages: two results, then the next two, then none
    first = get_json(site, f"/api/search?q={QUERY.replace(' ', '+')}&k=2")[1]
    second = get_json(site, f"/api/search?q={QUERY.replace(' ', '+')}&k=2&offset=2")[1]
    assert [r["rank"] for r in first["results"]] == [1, 2] and first["more"] is True
    assert [r["rank"] for r in second["results"]] == [3, 4] and second["more"] is False
    assert {r["id"] for r in first["results"] + second["results"]} == {r["id"] for r in answer["results"]}
    for bad in ("q=rain&k=0", "q=rain&k=many", "q=rain&modality=smell", "q=+", "k=3", "q=rain&offset=-1",
                "q=rain&offset=100000"):
        status, answer = get_json(site, f"/api/search?{bad}")
        assert status == 400 and answer["error"], bad
    assert get_json(site, "/api/stats")[1]["files"] == 4


def test_upload_queries_are_size_limited_and_deleted(site, tmp_path, monkeypatch):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(uploads))  # where the server's temporary folders go
    media = site["media"]

    status, _, body = upload(site, media / "short.flac", "audio")
    answer = json.loads(body)
    assert status == 200 and answer["results"][0]["name"] == "short.flac"
    assert answer["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    status, _, body = upload(site, media / "blue.jpg", "image")
    assert status == 200 and json.loads(body)["results"][0]["name"] == "blue.jpg"

    (tmp_path / "notes.txt").write_text("not a sound " * 50)
    status, _, body = upload(site, tmp_path / "notes.txt", "audio")
    assert status == 400 and "not a recognised" in json.loads(body)["error"]
    status, _, body = upload(site, media / "red.png", "audio")
    assert status == 400 and "has no sound" in json.loads(body)["error"]
    sf.write(tmp_path / "big.wav", np.zeros((SR * 30, 1), np.float32), SR)  # 2.6 MB > the 2 MB limit
    status, _, body = upload(site, tmp_path / "big.wav", "audio")
    assert status == 413 and "too large" in json.loads(body)["error"]
    status, _, _ = request(site, "POST", "/api/search?kind=audio", body=b"RIFF", headers={})
    assert status == 403  # no X-Audioclip header: a form on another site cannot post here
    status, _, _ = upload(site, media / "short.flac", "video")
    assert status == 400
    assert list(uploads.iterdir()) == []  # every upload was deleted after its query


def test_media_are_served_by_id_with_ranges(site):
    results = get_json(site, "/api/search?q=rain&k=4")[1]["results"]
    by_name = {r["name"]: r for r in results}
    long = by_name["long.wav"]
    data = (site["media"] / "long.wav").read_bytes()
    status, headers, body = request(site, "GET", long["media"])
    assert status == 200 and body == data and headers["Content-Type"] == "audio/wav"
    assert headers["Accept-Ranges"] == "bytes"
    status, headers, body = request(site, "GET", long["media"], headers={"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200] and headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    status, _, body = request(site, "GET", long["media"], headers={"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    status, headers, _ = request(site, "GET", long["media"], headers={"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    status, headers, body = request(site, "GET", f"/thumb/{by_name['blue.jpg']['id']}")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    assert request(site, "GET", f"/thumb/{long['id']}")[0] == 404
    assert request(site, "GET", f"/wave/{by_name['blue.jpg']['id']}")[0] == 404


def test_waveforms_are_drawn_once_and_cached_beside_the_index(site):
    from PIL import Image

    results = get_json(site, "/api/search?q=rain&k=4&modality=audio")[1]["results"]
    cache = site["server"].pictures
    for hit in results:
        status, headers, body = request(site, "GET", hit["wave"])
        assert status == 200 and headers["Content-Type"] == "image/png" and body[:4] == b"\x89PNG"
        with Image.open(io.BytesIO(body)) as picture:
            assert picture.size == (320, 56) and picture.getbbox() is not None  # something is drawn
        assert request(site, "GET", hit["wave"])[2] == body  # the second time from the cache
    assert cache.folder == site["root"] / "db" / ".cache" / "pictures"
    assert len([p for p in cache.folder.iterdir() if p.name.startswith("wave-")]) == 2


def test_the_picture_cache_is_bounded(tmp_path):
    import time

    from audioclip.index.pictures import PictureCache

    cache = PictureCache(tmp_path / "pictures", max_bytes=10_000)
    for i in range(30):
        cache.put(f"wave-{i}.png", bytes(1000))
        time.sleep(0.002)
        assert cache.get("wave-0.png") is not None or i > 9  # used: kept while it is among the recent
    assert cache.size() <= 10_000 and cache.get("wave-29.png") == bytes(1000)
    assert cache.get("wave-1.png") is None  # the least recently used went first
    assert _parse_range("bytes=5-", 10) == (5, 9) and _parse_range("bytes=0-99", 10) == (0, 9)
    assert _parse_range("bytes=a-b", 10) is None and _parse_range("bytes=1-2,4-5", 10) is None


@pytest.mark.parametrize("path", [
    "/media?path=../../etc/passwd",
    "/media?path=/etc/passwd",
    "/media/../../etc/passwd",
    "/media/%2e%2e/%2e%2e/etc/passwd",
    "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/media/..%2f..%2fetc%2fpasswd",
    "/media/%252e%252e%252fetc%252fpasswd",
    "/static/../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%5c..%5cetc%5cpasswd",
    "/static/app.js/../../../../etc/passwd",
    "/thumb/../../etc/passwd",
    "/wave/../../etc/passwd",
    "/wave/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/wave/0",
    "/..%2f..%2f..%2fetc%2fpasswd",
    "//etc/passwd",
    "/etc/passwd",
    "/media/",
    "/media/0",
    "/media/99999999999999999999999",
    "/media/12abc",
    "/media/1%00",
    "/static/",
    "/static/tiny.pt",
])
def test_only_indexed_files_can_be_read(site, path):
    status, _, body = request(site, "GET", path)
    assert status in (400, 403, 404), (path, status)
    assert b"root:" not in body and b"RIFF" not in body


def test_requests_for_another_host_are_refused(site):
    status, _, _ = request(site, "GET", "/api/stats", headers={"Host": "evil.example:8000"})
    assert status == 403  # a DNS-rebinding page cannot read the library
    assert request(site, "GET", "/api/stats", headers={"Host": f"localhost:{site['port']}"})[0] == 200


def test_search_page_in_a_real_browser(site, tmp_path):
    sync_playwright = browser_or_skip()
    url = f"http://127.0.0.1:{site['port']}/"
    with sync_playwright() as p:
        browser = launch(p, tmp_path / "profile")
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url)
            page.wait_for_function("() => document.getElementById('stats').textContent.includes('4 files')")
            page.fill("#q", QUERY)
            page.press("#q", "Enter")
            page.wait_for_selector("li.hit", timeout=30_000)
            hits = page.locator("li.hit")
            assert hits.count() == 4
            first = hits.nth(0)
            assert first.locator(".name").text_content() == "long.wav"
            assert "0:05.0 \u2013 0:10.0" in first.locator(".range").text_content()
            audio = first.locator("audio")
            assert audio.count() == 1 and audio.evaluate("a => a.controls")
            assert audio.evaluate("a => a.src").endswith("#t=5.00,10.00")
            # the browser fetched the sound from the server and stands at the matching time
            page.wait_for_function("() => document.querySelector('li.hit audio').readyState >= 1", timeout=30_000)
            assert audio.evaluate("a => a.currentTime") == pytest.approx(5.0, abs=0.05)
            assert audio.evaluate("a => a.duration") == pytest.approx(15.0, abs=0.1)
            # its waveform, drawn by the server, with the matching window (5-10 s of 15 s) marked over it
            page.wait_for_function("() => { const i = document.querySelector('li.hit .wave-img');"
                                   " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
            wave, mark = first.locator(".wave").bounding_box(), first.locator(".wave .mark").bounding_box()
            assert (mark["x"] - wave["x"]) / wave["width"] == pytest.approx(1 / 3, abs=0.02)
            assert mark["width"] / wave["width"] == pytest.approx(1 / 3, abs=0.02)
            audio.evaluate("a => { a.currentTime = 12; }")
            first.locator(".wave .mark").click()  # plays the match from its start
            page.wait_for_function("() => { const a = document.querySelector('li.hit audio');"
                                   " return !a.paused && a.currentTime >= 5 && a.currentTime < 9; }", timeout=30_000)
            audio.evaluate("a => a.pause()")
            assert hits.nth(1).locator(".wave").count() in (0, 1)
            assert page.locator("#more").is_hidden()  # 4 results of 4 files: no more

            # a page of two results, then "More results" adds the next ones
            page.goto(f"{url}?q={QUERY.replace(' ', '+')}&k=2")
            page.wait_for_function("() => document.querySelectorAll('li.hit').length === 2")
            assert page.locator("#more").is_visible()
            page.click("#more")
            page.wait_for_function("() => document.querySelectorAll('li.hit').length === 4")
            assert [page.locator("li.hit .rank").nth(i).text_content() for i in range(4)] == ["1", "2", "3", "4"]
            assert page.locator("#more").is_hidden()

            page.select_option("#k", "10")
            page.set_input_files("#image-file", str(site["media"] / "red.png"))
            page.wait_for_function("() => document.body.dataset.state === 'done' && "
                                   "document.getElementById('status').textContent.includes('red.png')")
            assert page.locator("li.hit .name").first.text_content() == "red.png"
            page.wait_for_function("() => [...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
            page.fill("#q", QUERY)
            page.press("#q", "Enter")
            page.wait_for_function("() => document.querySelector('li.hit .name').textContent === 'long.wav'")
            page.wait_for_function("() => [...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth > 0)")

            # file names are shown as text: markup in one (echoed back by the server) does nothing
            hostile = tmp_path / '<img src=x onerror="document.body.dataset.pwned=1">.png'
            hostile.write_bytes((site["media"] / "red.png").read_bytes())
            page.set_input_files("#image-file", str(hostile))
            page.wait_for_function("() => document.body.dataset.state === 'done' && "
                                   "document.getElementById('status').textContent.includes('onerror=')")
            broken = tmp_path / '<svg onload="document.body.dataset.pwned=2">.wav'
            broken.write_bytes(b"RIFF" + bytes(2000))  # not a sound: the server's error names the file
            page.set_input_files("#audio-file", str(broken))
            page.wait_for_function("() => document.body.dataset.state === 'error' && "
                                   "document.getElementById('status').textContent.includes('<svg onload=')")
            assert page.evaluate("() => document.body.dataset.pwned") is None
            assert page.locator("#status *, img[src='x'], svg[onload]").count() == 0
            page.fill("#q", QUERY)
            page.press("#q", "Enter")
            page.wait_for_function("() => document.querySelector('li.hit .name')?.textContent === 'long.wav'")
            page.wait_for_function("() => [...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
            shot = os.environ.get("AUDIOCLIP_SCREENSHOT") or str(tmp_path / "search.png")
            page.screenshot(path=shot, full_page=True)
            assert Path(shot).stat().st_size > 10_000
            assert errors == []
        finally:
            browser.close()


def test_the_page_fits_a_narrow_screen(site, tmp_path):
    """At 400 px wide (a phone): no sideways scrolling, the search button on screen, results within the width."""
    sync_playwright = browser_or_skip()
    url = f"http://127.0.0.1:{site['port']}/?q={QUERY.replace(' ', '+')}&k=4"
    with sync_playwright() as p:
        browser = launch(p, tmp_path / "profile", width=400)
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("() => document.querySelectorAll('li.hit').length === 4", timeout=30_000)
            page.wait_for_function("() => [...document.querySelectorAll('img.thumb')].every(i => i.complete)")
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 400
            button = page.locator("#go").bounding_box()
            assert button is not None and button["x"] >= 0 and button["x"] + button["width"] <= 400
            for box in (page.locator(sel).bounding_box() for sel in ("#q", "#modality", "#k", "li.hit >> nth=0")):
                assert box["x"] >= 0 and box["x"] + box["width"] <= 400
            for hit in page.locator("li.hit").all():  # a thumbnail or icon stays in its column, left of the name
                visual, name = hit.locator(".visual > *").bounding_box(), hit.locator(".name").bounding_box()
                assert visual["x"] + visual["width"] <= name["x"]
            if os.environ.get("AUDIOCLIP_SCREENSHOT_NARROW"):
                page.screenshot(path=os.environ["AUDIOCLIP_SCREENSHOT_NARROW"], full_page=True)
        finally:
            browser.close()
