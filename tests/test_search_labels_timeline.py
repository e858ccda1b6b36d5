"""`audioclip serve --head` and the timeline: the label filter and `/api/timeline`, by the API and in Chromium.

The index's rows are steered so that a head's decisions are known: the long recording's
best window for the text QUERY is the query's own vector (the head says "dog"), every
window of the short one is its opposite (the head says "cat").
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import urllib.parse

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch
from PIL import Image

from audioclip import AudioCLIP, save_model
from audioclip.cli.serve import timeline_scores
from audioclip.heads import Head
from audioclip.index import Index
from audioclip.index.server import make_server
from audioclip.index.web import MAX_QUERY_CHARS
from browser import browser_or_skip, launch

SR = 44100
QUERY = "a dog barking"


def set_vectors(index: Index, path: str, vector_of) -> None:
    """Replace the vectors of ``path``'s rows by ``vector_of(row)``."""
    record = next(r for r in index.files() if r.path == path)
    rows = index.store.rows([record.file_id])
    vectors = [np.asarray(vector_of(row), dtype=np.float32) for row in rows.to_pylist()]
    column = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(vectors)), len(vectors[0]))
    rows = rows.set_column(rows.schema.get_field_index("vector"), "vector", column)
    index.store.delete_files([record.file_id])
    index.store.add(rows)


def serve(index, **options):
    server = make_server(index, port=0, quiet=True, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    torch.manual_seed(0)
    checkpoint = save_model(AudioCLIP("AudioCLIP-tiny"), root / "tiny.pt")
    media = root / "media"
    media.mkdir()
    rng = np.random.default_rng(0)
    swell = 0.15 + 0.85 * np.abs(np.sin(np.linspace(0, 5 * np.pi, SR * 15)))[:, None] ** 2
    sf.write(media / "long.wav", (0.1 * swell * rng.standard_normal((SR * 15, 1))).astype(np.float32), SR)
    sf.write(media / "short.flac", (0.1 * rng.standard_normal((SR * 2, 1))).astype(np.float32), SR)
    Image.fromarray((rng.random((60, 90, 3)) * 255).astype(np.uint8)).save(media / "red.png")
    index = Index.open(root / "db", checkpoint=checkpoint, config="AudioCLIP-tiny", device="cpu")
    index.add(media)
    q = index.embed_query(QUERY)
    set_vectors(index, str(media / "long.wav"), lambda row: q if row["start_s"] == 5.0 else -q)
    set_vectors(index, str(media / "short.flac"), lambda row: -q)
    # logits 10 q.x, -10 q.x, 0: the query's own vector is "dog", its opposite "cat"
    head = Head(["dog", "cat", "noise"], torch.from_numpy(np.stack([10 * q, -10 * q, 0 * q])), torch.zeros(3),
                background="noise", info={"checkpoint": index.meta["checkpoint"]})
    head.save(root / "head")
    server, thread = serve(index, head=head, timeline=timeline_scores, max_upload=2_000_000)
    ids = {os.path.basename(r.path): r.file_id for r in index.files()}
    yield {"index": index, "media": media, "port": server.port, "server": server, "root": root, "ids": ids,
           "head": head}
    server.shutdown()
    server.server_close()
    thread.join(5)


def get(port: int, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def search(port: int, **params):
    return get(port, "/api/search?" + urllib.parse.urlencode({"q": QUERY, **params}))


def names(answer) -> list[str]:
    return [r["name"] for r in answer["results"]]


# -- the label filter ---------------------------------------------------------------------------


def test_labels_are_the_heads_without_its_background_class(site):
    assert get(site["port"], "/api/labels") == (200, {"labels": ["dog", "cat"]})


def test_a_label_keeps_only_the_sounds_the_head_gives_it(site):
    port = site["port"]
    assert names(search(port)[1]) == ["long.wav", "red.png", "short.flac"]  # ranked, unfiltered
    status, dog = search(port, label="dog")
    assert status == 200 and names(dog) == ["long.wav"] and dog["query"]["label"] == "dog"
    assert names(search(port, label="cat")[1]) == ["short.flac"]
    assert names(search(port, label="cat", modality="audio")[1]) == ["short.flac"]
    assert names(search(port, label="any")[1]) == names(search(port)[1])
    by_name = {r["name"]: r for r in search(port)[1]["results"]}  # where the page asks for a recording's timeline
    assert by_name["long.wav"]["timeline"] == f"/api/timeline?id={site['ids']['long.wav']}"
    assert by_name["red.png"]["timeline"] is None
    # paging: one per page, the second page of "any sound" is the cat
    first, second = search(port, k=1)[1], search(port, k=1, offset=1)[1]
    assert names(first) == ["long.wav"] and first["more"] is True and names(second) == ["red.png"]
    cat_page = search(port, label="cat", k=1)[1]
    assert names(cat_page) == ["short.flac"] and cat_page["more"] is False


def post(port: int, data: bytes, **params):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/api/search?" + urllib.parse.urlencode(params), body=data,
                     headers={"X-Audioclip": "1", "Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_uploads_are_filtered_by_label_too(site):
    data = (site["media"] / "long.wav").read_bytes()
    everything = post(site["port"], data, kind="audio", name="q.wav", modality="audio")[1]
    dog = post(site["port"], data, kind="audio", name="q.wav", label="dog")
    cat = post(site["port"], data, kind="audio", name="q.wav", label="cat")
    assert dog[0] == cat[0] == 200 and dog[1]["query"] == {"audio": "q.wav", "label": "dog"}
    # every sound gets one of the two labels (the head's threshold is 0): the two lists split the sounds
    assert sorted(names(dog[1]) + names(cat[1])) == sorted(names(everything))
    status, answer = post(site["port"], data, kind="audio", name="q.wav", label="bird")
    assert status == 400 and "unknown label" in answer["error"]


@pytest.mark.parametrize("params, message", [
    ({"label": "bird"}, "unknown label 'bird'"),
    ({"label": "noise"}, "unknown label 'noise'"),  # the background class is never a decision
    ({"label": "x" * 500}, "unknown label"),
    ({"label": "dog", "modality": "image"}, "modality must be audio or video"),
])
def test_bad_labels_get_400_in_one_line(site, params, message):
    status, answer = search(site["port"], **params)
    assert status == 400 and message in answer["error"] and "\n" not in answer["error"]
    assert len(answer["error"]) < 200


def test_without_a_head_there_are_no_labels(site):
    server, thread = serve(site["index"])
    try:
        assert get(server.port, "/api/labels") == (200, {"labels": []})
        status, answer = search(server.port, label="dog")
        assert status == 400 and "--head" in answer["error"]
        assert search(server.port, label="any")[0] == 200
        assert get(server.port, f"/api/timeline?id={site['ids']['long.wav']}&q=dog")[0] == 404  # no scorer given
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_serve_refuses_a_head_of_another_checkpoint(site, tmp_path):
    head = Head(["a", "b"], torch.zeros(2, site["head"].dim), torch.zeros(2), info={"checkpoint": "other@0000"})
    head.save(tmp_path / "other")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for given, said in ((tmp_path / "other", "other@0000"), (tmp_path / "missing", "no such folder")):
        done = subprocess.run([sys.executable, "-m", "audioclip", "serve", "--db", str(site["root"] / "db"),
                               "--head", str(given), "--port", "1"], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and said in lines[0] and "Traceback" not in done.stderr


# -- the timeline -----------------------------------------------------------------------------


def test_the_timeline_is_the_query_scores_of_the_indexed_file(site):
    from audioclip.detection import query_scores

    file_id = site["ids"]["long.wav"]
    status, answer = get(site["port"], f"/api/timeline?id={file_id}&q={urllib.parse.quote(QUERY)}")
    assert status == 200 and answer["id"] == file_id and answer["query"] == QUERY and answer["threshold"] == 0.6
    expected = query_scores(site["index"].model, site["media"] / "long.wav", QUERY, method="columns")
    assert answer["score"] == pytest.approx(expected.scores[:, 0].tolist(), abs=1e-4)
    assert answer["start"] == pytest.approx(expected.cell_start.tolist(), abs=1e-4)
    assert answer["end"] == pytest.approx(expected.cell_end.tolist(), abs=1e-4)
    assert answer["start"][0] == 0 and answer["end"][-1] == pytest.approx(15.0, abs=1e-3)
    assert answer["duration"] == pytest.approx(15.0, abs=1e-3)
    # events follow the threshold: all of it at 0, none above every score, the peaks in between
    everything = get(site["port"], f"/api/timeline?id={file_id}&q=dog&threshold=0")[1]
    assert [(e["start"], e["end"]) for e in everything["events"]] == [(0.0, pytest.approx(15.0, abs=1e-3))]
    assert get(site["port"], f"/api/timeline?id={file_id}&q=dog&threshold=1")[1]["events"] == []
    cut = float(np.median(everything["score"]))
    some = get(site["port"], f"/api/timeline?id={file_id}&q=dog&threshold={cut:.4f}")[1]["events"]
    assert some and all(e["score"] >= cut - 1e-4 for e in some)


@pytest.mark.parametrize("query, status, message", [
    ("q=dog", 400, "id must be"),
    ("id=abc&q=dog", 400, "id must be"),
    ("id=99999999999999999999&q=dog", 400, "id must be"),
    ("id=LONG", 400, "type something"),
    ("id=LONG&q=+++", 400, "type something"),
    (f"id=LONG&q={'a' * (MAX_QUERY_CHARS + 1)}", 400, "too long"),
    ("id=LONG&q=dog&threshold=2", 400, "threshold"),
    ("id=LONG&q=dog&threshold=nan", 400, "threshold"),
    ("id=LONG&q=dog&threshold=-0.5", 400, "threshold"),
    ("id=12345&q=dog", 404, "not found"),
    ("id=-9223372036854775808&q=dog", 404, "not found"),
    ("id=PICTURE&q=dog", 404, "no sound"),
])
def test_odd_timeline_requests_are_refused(site, query, status, message):
    query = query.replace("LONG", str(site["ids"]["long.wav"])).replace("PICTURE", str(site["ids"]["red.png"]))
    got, answer = get(site["port"], f"/api/timeline?{query}")
    assert got == status and message in answer["error"]


def test_timelines_are_bounded_in_length_and_number(site):
    server, thread = serve(site["index"], timeline=timeline_scores, max_query_seconds=10)
    try:
        status, answer = get(server.port, f"/api/timeline?id={site['ids']['long.wav']}&q=dog")
        assert status == 413 and "too long" in answer["error"]
        assert get(server.port, f"/api/timeline?id={site['ids']['short.flac']}&q=dog")[0] == 200
        with server.site.timeline._slot:  # another timeline is being drawn
            status, answer = get(server.port, f"/api/timeline?id={site['ids']['short.flac']}&q=dog")
        assert status == 503 and "busy" in answer["error"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_changed_file_gets_no_timeline(site):
    path = site["media"] / "short.flac"
    before = os.stat(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    try:
        status, _ = get(site["port"], f"/api/timeline?id={site['ids']['short.flac']}&q=dog")
        assert status == 404
    finally:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert get(site["port"], f"/api/timeline?id={site['ids']['short.flac']}&q=dog")[0] == 200


# -- the timeline of an uploaded recording -------------------------------------------------------


def post_timeline(port: int, body: bytes, params: str, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", f"/api/timeline?{params}", body=body,
                     headers={"X-Audioclip": "1", "Content-Type": "application/octet-stream"} if headers is None
                     else headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_an_uploaded_recording_gets_the_timeline_of_the_same_file_indexed(site):
    body = (site["media"] / "long.wav").read_bytes()
    q = urllib.parse.quote(QUERY)
    status, answer = post_timeline(site["port"], body, f"q={q}&name=mine.wav&threshold=0.5")
    assert status == 200, answer
    assert answer["name"] == "mine.wav" and answer["query"] == QUERY and answer["threshold"] == 0.5
    indexed = get(site["port"], f"/api/timeline?id={site['ids']['long.wav']}&q={q}&threshold=0.5")[1]
    for key in ("score", "start", "end"):
        assert answer[key] == pytest.approx(indexed[key], abs=1e-4)
    assert answer["duration"] == pytest.approx(15.0, abs=1e-3)
    assert [(e["start"], e["end"]) for e in answer["events"]] == \
        [(e["start"], e["end"]) for e in indexed["events"]]
    # a compressed copy of a part of it: its own length, the scores of that part
    part = root_file(site, "part.flac", sf.read(site["media"] / "long.wav")[0][: SR * 4])
    status, answer = post_timeline(site["port"], part.read_bytes(), f"q={q}&name=part.flac")
    assert status == 200 and answer["duration"] == pytest.approx(4.0, abs=1e-3) and answer["threshold"] == 0.6
    assert len(answer["score"]) == len(answer["start"]) == len(answer["end"]) >= 9


def root_file(site, name: str, samples) -> os.PathLike:
    path = site["root"] / name
    sf.write(path, samples, SR)
    return path


@pytest.mark.parametrize("what, params, headers, status, message", [
    ("long", "q=dog&name=a.wav", {}, 403, "X-Audioclip"),
    ("long", "name=a.wav", None, 400, "type something"),
    ("long", f"q={'a' * (MAX_QUERY_CHARS + 1)}", None, 400, "too long"),
    ("long", "q=dog&threshold=1.5", None, 400, "threshold"),
    ("picture", "q=dog&name=red.png", None, 400, "red.png: "),  # the decoder's reason: no sound in it
    ("garbage", "q=dog&name=x.wav", None, 400, "x.wav: "),
    ("empty", "q=dog&name=x.wav", None, 400, "empty"),
    ("large", "q=dog&name=big.wav", None, 413, "too large"),
])
def test_odd_uploaded_timelines_are_refused_in_one_line(site, what, params, headers, status, message, tmp_path,
                                                        monkeypatch):
    import tempfile

    folder = tmp_path / "uploads"  # where the server makes each upload's private folder
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    garbage = b"RIFF" + np.random.default_rng(7).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    body = {"long": (site["media"] / "long.wav").read_bytes(), "picture": (site["media"] / "red.png").read_bytes(),
            "garbage": garbage, "empty": b"", "large": b"\0" * 2_000_001}[what]
    got, answer = post_timeline(site["port"], body, params, headers)
    assert got == status and message in answer["error"], answer
    forbidden = ["\n", str(folder), "/tmp", "audioclip-query", "query."]
    assert not any(f in answer["error"] for f in forbidden), answer
    if what == "picture":
        assert "image" in answer["error"] or "audio" in answer["error"], answer
    assert site["server"].site.uploads == 0 and site["server"].site.receiving == 0
    assert list(folder.iterdir()) == []  # the upload's folder was deleted


def test_uploaded_timelines_are_bounded_like_uploads(site):
    body = (site["media"] / "long.wav").read_bytes()
    server, thread = serve(site["index"], timeline=timeline_scores, max_query_seconds=10)
    try:
        status, answer = post_timeline(server.port, body, "q=dog&name=long.wav")
        # 15 s, over --max-query-seconds: refused by the decoder, as an upload search is
        assert status == 400 and answer["error"].startswith("long.wav: "), answer
        assert "over the limit of 10 s (--max-query-seconds)" in answer["error"]
        with server.site.timeline._slot:  # another timeline is being drawn
            status, answer = post_timeline(server.port, (site["media"] / "short.flac").read_bytes(), "q=dog")
        assert status == 503 and "busy" in answer["error"]
        server.site.gate.uploads = server.site.gate.max_uploads  # every decoding slot taken
        try:
            status, answer = post_timeline(server.port, body, "q=dog")
        finally:
            server.site.gate.uploads = 0
        assert status == 503 and "busy" in answer["error"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    server, thread = serve(site["index"])  # no scorer: no timelines
    try:
        assert post_timeline(server.port, body, "q=dog")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- in a real browser ----------------------------------------------------------------------------


def test_label_filter_and_timeline_in_a_real_browser(site, tmp_path):
    sync_playwright = browser_or_skip()
    file_id = site["ids"]["long.wav"]
    scores = get(site["port"], f"/api/timeline?id={file_id}&q={urllib.parse.quote(QUERY)}&threshold=0")[1]["score"]
    cut = f"{float(np.median(scores)):.4f}"  # some of the recording above it, some below
    expected = get(site["port"], f"/api/timeline?id={file_id}&q={urllib.parse.quote(QUERY)}&threshold={cut}")[1]
    assert expected["events"]
    url = f"http://127.0.0.1:{site['port']}/"
    with sync_playwright() as p:
        browser = launch(p, tmp_path / "profile")
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(f"{url}?threshold={cut}")
            page.wait_for_function("() => !document.getElementById('label').hidden")
            assert page.locator("#label option").all_text_contents() == ["any label", "dog", "cat"]
            page.select_option("#label", "cat")
            page.fill("#q", QUERY)
            page.press("#q", "Enter")
            page.wait_for_function("() => document.body.dataset.state === 'done'")
            assert page.locator("li.hit .name").all_text_contents() == ["short.flac"]
            assert "label=cat" in page.url
            page.select_option("#label", "dog")
            page.press("#q", "Enter")
            page.wait_for_function("() => document.querySelector('li.hit .name')?.textContent === 'long.wav' "
                                   "&& document.querySelectorAll('li.hit').length === 1")
            page.select_option("#label", "")
            page.press("#q", "Enter")
            page.wait_for_function("() => document.querySelectorAll('li.hit').length === 3")
            first = page.locator("li.hit").nth(0)
            assert first.locator(".name").text_content() == "long.wav"
            assert page.locator("li.hit.image .timeline-button").count() == 0  # a picture has no timeline
            first.locator(".timeline-button").click()
            page.wait_for_function("() => document.querySelector('li.hit .timeline svg, li.hit .timeline .error')",
                                   timeout=60_000)
            assert first.locator(".timeline .error").count() == 0, first.locator(".timeline").inner_text()
            assert first.locator("svg.timeline-plot").is_visible()
            assert first.locator("svg .event").count() == len(expected["events"])
            assert first.locator(".timeline-note").text_content().startswith(f"{len(expected['events'])} event")
            points = first.locator("svg polyline").get_attribute("points").split()
            assert len(points) == len(expected["score"])
            audio = first.locator("audio")
            page.wait_for_function("() => document.querySelector('li.hit audio').readyState >= 1", timeout=30_000)
            box = first.locator("svg.timeline-plot").bounding_box()
            page.mouse.click(box["x"] + 0.8 * box["width"], box["y"] + box["height"] / 2)
            page.wait_for_function("() => document.querySelector('li.hit audio').currentTime >= 11.5", timeout=30_000)
            assert audio.evaluate("a => a.currentTime") == pytest.approx(0.8 * expected["duration"], abs=0.6)
            audio.evaluate("a => a.pause()")
            if os.environ.get("AUDIOCLIP_SCREENSHOT_TIMELINE"):
                first.screenshot(path=os.environ["AUDIOCLIP_SCREENSHOT_TIMELINE"])
            assert errors == []
        finally:
            browser.close()


def test_the_timeline_of_an_uploaded_recording_in_a_real_browser(site, tmp_path):
    sync_playwright = browser_or_skip()
    body = (site["media"] / "long.wav").read_bytes()
    q = urllib.parse.quote(QUERY)
    scores = post_timeline(site["port"], body, f"q={q}&threshold=0")[1]["score"]
    cut = f"{float(np.median(scores)):.4f}"
    expected = post_timeline(site["port"], body, f"q={q}&threshold={cut}")[1]
    assert expected["events"]
    with sync_playwright() as p:
        browser = launch(p, tmp_path / "profile")
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            failed = []  # answers of 400 and more, by address
            page.on("response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None)
            page.goto(f"http://127.0.0.1:{site['port']}/?threshold={cut}")
            assert page.locator("#upload-view").is_hidden()
            page.fill("#q", QUERY)
            page.set_input_files("#audio-file", str(site["media"] / "long.wav"))
            page.wait_for_function("() => document.body.dataset.state === 'done'", timeout=60_000)
            assert page.locator("li.hit").count() >= 1
            assert page.locator("#upload-view").is_visible()
            assert page.locator("#upload-name").text_content() == "long.wav"
            assert page.locator("#upload-player").get_attribute("src").startswith("blob:")
            assert page.locator("#upload-q").input_value() == QUERY  # the text typed before, to start from
            page.click("#upload-timeline-go")
            page.wait_for_function("() => document.querySelector('#upload-timeline svg, #upload-timeline .error')",
                                   timeout=60_000)
            view = page.locator("#upload-view")
            assert view.locator(".error").count() == 0, view.inner_text()
            assert view.locator("svg .event").count() == len(expected["events"])
            assert len(view.locator("svg polyline").get_attribute("points").split()) == len(expected["score"])
            page.wait_for_function("() => document.getElementById('upload-player').readyState >= 1", timeout=30_000)
            box = view.locator("svg.timeline-plot").bounding_box()
            page.mouse.click(box["x"] + 0.8 * box["width"], box["y"] + box["height"] / 2)
            page.wait_for_function("() => document.getElementById('upload-player').currentTime >= 11.5",
                                   timeout=30_000)
            player = page.locator("#upload-player")
            assert player.evaluate("a => a.currentTime") == pytest.approx(0.8 * expected["duration"], abs=0.6)
            player.evaluate("a => a.pause()")
            # another text over the same recording, without sending a new search
            page.fill("#upload-q", "x" * (MAX_QUERY_CHARS + 1))
            page.click("#upload-timeline-go")
            page.wait_for_function("() => document.querySelector('#upload-timeline .error')", timeout=30_000)
            assert "too long" in view.locator("#upload-timeline .error").text_content()
            # a text search puts the recording away
            page.press("#q", "Enter")
            page.wait_for_function("() => document.body.dataset.state === 'done'")
            assert page.locator("#upload-view").is_hidden()
            if os.environ.get("AUDIOCLIP_SCREENSHOT_UPLOAD_TIMELINE"):
                page.screenshot(path=os.environ["AUDIOCLIP_SCREENSHOT_UPLOAD_TIMELINE"])
            assert errors == []
            assert failed == [(400, f"http://127.0.0.1:{site['port']}/api/timeline?q={'x' * (MAX_QUERY_CHARS + 1)}"
                                    f"&name=long.wav&threshold={cut}")], failed
        finally:
            browser.close()
