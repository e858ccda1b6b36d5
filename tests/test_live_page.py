"""`audioclip serve --listen`: the live feed (server-sent events at /api/live) and the page's live timeline.

The server tests publish into a :class:`LiveFeed` by hand; the browser test runs the real command on a
generated recording played at real time, and is skipped (saying why) without Chromium and Playwright.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from audioclip import AudioCLIP, save_model
from audioclip.index import Index
from audioclip.index.live_feed import LiveFeed
from audioclip.index.server import ConnectionLimits, make_server
from browser import browser_or_skip, launch

SR = 44100
# deadlines far shorter than the stream is kept open in the tests
LIMITS = ConnectionLimits(head_timeout=1.0, keep_alive=0.5, body_idle_timeout=1.0, write_timeout=1.5,
                          drain_timeout=1.0)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    torch.manual_seed(0)
    checkpoint = save_model(AudioCLIP("AudioCLIP-tiny"), root / "tiny.pt")
    media = root / "media"
    media.mkdir()
    rng = np.random.default_rng(0)
    sf.write(media / "noise.wav", (0.1 * rng.standard_normal((SR * 2, 1))).astype(np.float32), SR)
    index = Index.open(root / "db", checkpoint=checkpoint, config="AudioCLIP-tiny", device="cpu")
    index.add(media)
    return index


def serving(index, **options):
    return make_server(index, port=0, quiet=True, limits=LIMITS, **options).start()


def open_stream(port: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("GET", "/api/live", headers={"Accept": "text/event-stream"})
    return conn, conn.getresponse()


def next_message(response) -> dict:
    """The next server-sent event (comments skipped): its fields, ``data`` parsed as JSON."""
    fields: dict = {}
    while True:
        line = response.readline()
        if not line:
            raise EOFError("the stream ended")
        line = line.decode().rstrip("\n")
        if not line:
            if fields:
                if "data" in fields:
                    fields["data"] = json.loads(fields["data"])
                return fields
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        fields[name] = value


def test_messages_arrive_in_order_and_the_stream_outlives_the_connection_deadlines(index):
    feed = LiveFeed({"source": "test.wav", "labels": ["dog", "rain"]})
    server = serving(index, live=feed)
    try:
        feed.publish("frame", {"start_s": 0.0, "end_s": 2.0, "scores": {"dog": 0.9, "rain": 0.1}})  # before any page
        conn, response = open_stream(server.port)
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Content-Security-Policy"]  # the security headers on the stream too
        hello = next_message(response)
        assert hello["event"] == "hello" and hello["data"]["labels"] == ["dog", "rain"]
        first = next_message(response)  # published before the page connected: from the backlog
        assert first["event"] == "frame" and first["data"]["end_s"] == 2.0
        for i in range(1, 6):
            feed.publish("frame", {"start_s": 0.5 * i, "end_s": 2.0 + 0.5 * i, "scores": {"dog": 0.1, "rain": 0.9}})
        feed.publish("event", {"label": "dog", "start_s": 0.0, "end_s": 1.25, "score": 0.9})
        got = [next_message(response) for _ in range(6)]
        assert [m["event"] for m in got] == ["frame"] * 5 + ["event"]
        assert [m["data"].get("end_s") for m in got[:5]] == [2.5, 3.0, 3.5, 4.0, 4.5]
        ids = [int(m["id"]) for m in [first, *got]]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        # longer than the head, keep-alive and write deadlines: the stream is still open and delivers
        time.sleep(3 * max(LIMITS.head_timeout, LIMITS.keep_alive, LIMITS.write_timeout))
        feed.publish("status", {"state": "ended"})
        late = next_message(response)
        assert late["event"] == "status" and late["data"] == {"state": "ended"}
        feed.close()  # the server stops: the stream ends
        with pytest.raises(EOFError):
            next_message(response)
        conn.close()
    finally:
        server.shutdown()
        server.server_close()


def test_a_slow_page_loses_its_oldest_messages_counted_and_stalls_nobody():
    feed = LiveFeed({"labels": ["dog"]}, queue_size=5)
    total = 40

    async def main():
        fast = (await feed.stream(None)).body_iterator
        slow = (await feed.stream(None)).body_iterator  # never read until the end
        received: list[bytes] = []
        got_one = threading.Event()

        async def read_fast():
            assert b"event: hello" in await fast.__anext__()
            while len(received) < total:
                received.append(await fast.__anext__())
                got_one.set()

        def publish():  # the listener's thread: each message goes out before the next is made
            for i in range(total):
                got_one.clear()
                feed.publish("frame", {"i": i})
                assert got_one.wait(10), "the fast page did not get a message"

        reader = asyncio.ensure_future(read_fast())
        await asyncio.get_running_loop().run_in_executor(None, publish)
        await reader
        slow_messages = [await slow.__anext__() for _ in range(1 + 1 + 5)]  # hello, dropped, the newest 5
        return received, slow_messages

    received, slow_messages = asyncio.run(main())
    assert [json.loads(m.decode().split("data: ")[1])["i"] for m in received] == list(range(total))
    assert slow_messages[0].startswith(b"retry:") and b"event: hello" in slow_messages[0]
    assert slow_messages[1] == f"event: dropped\ndata: {json.dumps({'dropped': total - 5})}\n\n".encode()
    assert [json.loads(m.decode().split("data: ")[1])["i"] for m in slow_messages[2:]] == list(range(total - 5, total))


def test_a_late_page_gets_the_recent_past_and_misses_nothing_it_is_told_of():
    feed = LiveFeed({"labels": ["dog"]}, queue_size=4, backlog=10)
    for i in range(12):  # before any page: into the backlog only (the last 10 kept)
        feed.publish("frame", {"i": i})

    async def main():
        late = (await feed.stream(None)).body_iterator
        got = [await late.__anext__() for _ in range(1 + 4)]  # hello, the newest 4 (what fits its queue)
        feed.close()
        return got + [m async for m in late]

    messages = asyncio.run(main())
    assert b"event: hello" in messages[0] and not any(b"event: dropped" in m for m in messages)
    assert [json.loads(m.decode().split("data: ")[1])["i"] for m in messages[1:]] == [8, 9, 10, 11]


def test_live_pages_are_capped_and_without_listen_there_is_no_live_address(index):
    feed = LiveFeed({"labels": ["dog"]}, max_clients=1)
    server = serving(index, live=feed)
    try:
        conn, response = open_stream(server.port)
        assert next_message(response)["event"] == "hello"
        other, refused = open_stream(server.port)
        assert refused.status == 503 and "too many live pages" in json.loads(refused.read())["error"]
        other.request("HEAD", "/api/live")  # the head alone: answered at once, the stream not started
        head = other.getresponse()
        assert head.status == 200 and head.headers["Content-Type"].startswith("text/event-stream") and not head.read()
        other.close()
        conn.close()
    finally:
        feed.close()
        server.shutdown()
        server.server_close()
    server = serving(index)  # no --listen
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        conn.request("GET", "/api/live")
        answer = conn.getresponse()
        assert answer.status == 404 and json.loads(answer.read()) == {"error": "not found"}
        conn.request("GET", "/")
        assert b'src="/static/live.js"' in conn.getresponse().read()
        conn.request("GET", "/static/live.js")
        script = conn.getresponse()
        assert script.status == 200 and b"/api/live" in script.read()
        conn.close()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("given, option", [
    (["--labels", "dog"], "--labels"),
    (["--hop", "1"], "--hop"),  # options with a default of their own, too
    (["--emit", "onset"], "--emit"),
    (["--no-drop"], "--no-drop"),
    (["--max-delay", "2"], "--max-delay"),
    (["--format", "s16le"], "--format"),  # even at its default value
])
def test_listening_options_without_listen_are_a_usage_error(index, given, option):
    result = subprocess.run([sys.executable, "-m", "audioclip", "serve", "--db", str(index.db), "--port", "1",
                             *given], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"error: {option} goes with --listen SOURCE" in result.stderr.strip().splitlines()[-1]


def test_without_listen_serve_has_the_listening_defaults():
    from audioclip.cli.live_page import add_live_options, check_live

    parser = argparse.ArgumentParser()
    add_live_options(parser)
    args = parser.parse_args([])
    assert check_live(args) is None
    assert (args.window, args.hop, args.emit, args.no_drop, args.rate, args.labels) == (2.0, 0.5, "end", False,
                                                                                         44100, None)


@pytest.mark.parametrize("extra, message", [
    (["--listen", "missing.wav", "--labels", "dog"], "missing.wav: no such file"),
    (["--listen", "{wav}"], "no labels"),
    (["--listen", "{wav}", "--labels", "dog", "--hop", "3"], "--hop 3 is longer than --window 2"),
])
def test_a_bad_listen_is_a_usage_error_before_the_model_loads(index, tmp_path, extra, message):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros((SR, 1), np.float32), SR)
    args = [a.replace("{wav}", str(wav)) for a in extra]
    result = subprocess.run([sys.executable, "-m", "audioclip", "serve", "--db", str(index.db), "--port", "1", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_without_labels_the_listener_uses_serves_head(index, tmp_path):
    from audioclip.heads import Head

    q = index.embed_query("a dog barking")
    head = Head(["dog", "cat", "noise"], torch.from_numpy(np.stack([10 * q, -10 * q, 0 * q])), torch.zeros(3),
                background="noise", info={"checkpoint": index.meta["checkpoint"]})
    head.save(tmp_path / "head")
    wav = tmp_path / "a.wav"
    sf.write(wav, (0.1 * np.random.default_rng(2).standard_normal((SR * 3, 1))).astype(np.float32), SR)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "audioclip", "serve", "--db", str(index.db), "--port", str(port),
                               "--quiet", "--head", str(tmp_path / "head"), "--listen", str(wav)],
                              stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:
            if "serving" in line:
                break
        threading.Thread(target=server.stderr.read, daemon=True).start()
        conn, response = open_stream(port)
        hello = next_message(response)
        assert hello["data"]["labels"] == ["dog", "cat"]  # the head's, its background class left out
        frame = next_message(response)
        assert frame["event"] == "frame" and set(frame["data"]["scores"]) == {"dog", "cat"}
        conn.close()
    finally:
        server.terminate()
        server.wait(30)


# -- the page in a real browser ---------------------------------------------------------------------



def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_live_timeline_in_a_real_browser(index, tmp_path):
    sync_playwright = browser_or_skip()
    rng = np.random.default_rng(1)
    recording = tmp_path / "street.wav"
    sf.write(recording, (0.1 * rng.standard_normal((SR * 6, 1))).astype(np.float32), SR)
    port = _free_port()
    # --threshold 0: every label is active from the first window, so the source's end must end an event
    command = [sys.executable, "-m", "audioclip", "serve", "--db", str(index.db), "--port", str(port), "--quiet",
               "--listen", str(recording), "--realtime", "--labels", "dog barking,rain", "--threshold", "0",
               "--window", "1", "--hop", "0.5"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in server.stderr:
            lines.append(line)
            if "serving" in line:
                break
        else:
            pytest.fail(f"serve --listen did not start: {''.join(lines)}")
        threading.Thread(target=server.stderr.read, daemon=True).start()  # the rest, so that it never blocks
        with sync_playwright() as p:
            browser = launch(p, tmp_path / "profile")
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#live-timeline polyline.live-scores", timeout=60_000)
            # (a string to evaluate, as wait_for_function takes, is refused by the page's CSP)
            page.wait_for_selector("#live-timeline rect.live-event", timeout=60_000)
            timeline = page.locator("#live-timeline")
            assert int(timeline.get_attribute("data-events")) >= 1
            assert int(timeline.get_attribute("data-frames")) >= 2
            assert page.locator("#live-timeline rect.live-event").count() >= 1
            assert page.locator("#live-timeline text", has_text="dog barking").count() == 1
            assert page.locator("#live h2").text_content() == "Listening to street.wav"  # no folder of the server
            assert page.locator("#live-events li").first.text_content().startswith(("dog barking: ", "rain: "))
            page.wait_for_selector("#live-status:has-text('the source ended')", timeout=30_000)
            page.screenshot(path=str(tmp_path / "live.png"))
            assert page.locator("#q").is_visible() and not errors  # the search page is still there
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
