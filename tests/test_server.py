"""`audioclip serve` under hostile clients: framing, deadlines, uploads, file identity, Host names, odd arguments.

Every hostile input is made here: raw sockets for what an HTTP library would
refuse to send, generated files for uploads. A module-wide server has short
deadlines (about a second) so that the timeout tests are quick; tests that need
other settings start their own server on the same index. Besides the status
of each answer, the tests check that the server logged no traceback
(``server_errors``): a hostile input must be answered, not crash a handler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import logging
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from audioclip import AudioCLIP, save_model
from audioclip.index import Index, IndexStoreError
from audioclip.index.server import ConnectionLimits, allowed_host_names, make_server
from audioclip.index.uploads import SearchesFirst, UploadError, decode_upload, embed_upload

SR = 44100
LIMITS = ConnectionLimits(head_timeout=1.5, keep_alive=1.0, body_idle_timeout=1.0, body_timeout=8.0,
                          write_timeout=1.5, drain_timeout=2.0)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny-model index of a short sound and a picture, served with short deadlines."""
    root = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    checkpoint = save_model(AudioCLIP("AudioCLIP-tiny"), root / "tiny.pt")
    media = root / "media"
    media.mkdir()
    rng = np.random.default_rng(0)
    sf.write(media / "tone.wav", (0.1 * rng.standard_normal((SR * 3, 1))).astype(np.float32), SR)
    Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)).save(media / "pic.png")
    index = Index.open(root / "db", checkpoint=checkpoint, config="AudioCLIP-tiny", device="cpu")
    index.add(media)
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "asyncio", "audioclip.serve")]
    for logger in loggers:
        logger.addHandler(records)
    server = make_server(index, port=0, quiet=True, max_upload=3_000_000, limits=LIMITS).start()
    yield {"index": index, "root": root, "media": media, "port": server.port, "server": server,
           "records": records.records}
    server.shutdown()
    server.server_close()
    for logger in loggers:
        logger.removeHandler(records)


@pytest.fixture
def server_errors(served):
    """Records of tracebacks the server logged during the test (it must log none)."""
    records = served["records"]
    records.clear()
    yield lambda: [r for r in records if r.exc_info or r.levelno >= logging.ERROR]


def started(index, **options):
    return make_server(index, port=0, quiet=True, **{"limits": LIMITS, **options}).start()


def stopped(server) -> None:
    server.shutdown()
    server.server_close()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def get_json(port: int, path: str, **kwargs):
    status, _, body = request(port, "GET", path, **kwargs)
    return status, json.loads(body)


def upload_bytes(port: int, data: bytes, name: str, kind: str = "audio", **params):
    query = "&".join(f"{k}={v}" for k, v in {"kind": kind, "name": name, "k": 2, **params}.items())
    return request(port, "POST", f"/api/search?{query}", body=data,
                   headers={"X-Audioclip": "1", "Content-Type": "application/octet-stream"})


def connect(port: int, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float | None]:
    """Everything the server sends until it closes (or ``limit`` s); and how long that took (None: still open)."""
    start = time.monotonic()
    data = b""
    while time.monotonic() - start < limit:
        sock.settimeout(max(0.01, limit - (time.monotonic() - start)))
        try:
            block = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return data, time.monotonic() - start
        if not block:
            return data, time.monotonic() - start
        data += block
    return data, None


def exchange(port: int, raw: bytes, limit: float = 10) -> tuple[bytes, float | None]:
    with connect(port) as sock:
        sock.sendall(raw)
        return read_until_closed(sock, limit)


def responses(data: bytes) -> list[int]:
    """Status codes of the HTTP responses in ``data``."""
    return [int(line.split()[1]) for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.")]


def body_json(data: bytes) -> dict:
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


def head(data: bytes) -> str:
    return data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()


# -- 2. framing -----------------------------------------------------------------------------


def test_transfer_encoding_with_content_length_is_refused_and_the_smuggled_request_never_answered(
        served, server_errors):
    port = served["port"]
    smuggled = b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for method, target in ((b"POST", b"/api/search?kind=audio&name=a.wav"), (b"GET", b"/api/stats")):
        attack = (method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Audioclip: 1\r\n"
                  b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled)
        data, took = exchange(port, attack)
        assert responses(data) == [400], data  # one answer: the smuggled GET is not answered
        assert took is not None and "connection: close" in head(data)  # and the connection is closed
        assert "framing" in body_json(data)["error"] and b'"files"' not in data
    # HTTP/1.0 with Transfer-Encoding is faulty framing as well
    data, took = exchange(port, b"POST /api/search HTTP/1.0\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                                b"\r\n0\r\n\r\n" + smuggled)
    assert responses(data) == [400] and took is not None
    assert server_errors() == []


@pytest.mark.parametrize("headers, status", [
    (b"Content-Length: 5\r\nContent-Length: 6\r\n", 400),  # conflicting
    (b"Content-Length: 5, 7\r\n", 400),
    (b"Content-Length: abc\r\n", 400),  # garbage
    (b"Content-Length: -5\r\n", 400),
    (b"Content-Length: +5\r\n", 400),
    (b"Content-Length: 99999999999999999999999999\r\n", 400),
    (b"Transfer-Encoding: gzip\r\n", 501),  # a coding h11 does not do
    (b"Transfer-Encoding: chunked, chunked\r\n", 501),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 501),
    (b"Transfer-Encoding : chunked\r\n", 400),  # whitespace before the colon
])
def test_malformed_framing_is_answered_4xx_in_json_without_a_traceback(served, server_errors, headers, status):
    raw = (b"POST /api/search?kind=audio HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Audioclip: 1\r\n" + headers +
           b"\r\nhello")
    data, took = exchange(served["port"], raw)
    assert responses(data) == [status] and took is not None, data
    assert "malformed request" in body_json(data)["error"]
    assert "x-content-type-options: nosniff" in head(data)
    assert server_errors() == []


def test_requests_that_are_not_http_get_4xx(served, server_errors):
    for raw in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",  # a TLS hello
                b"GET /\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # not ASCII
                b"GET / HTTP/1.1\r\n\r\n",  # no Host
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                b"GET / HTTP/1.1 and more\r\nHost: 127.0.0.1\r\n\r\n"):
        data, took = exchange(served["port"], raw)
        assert responses(data) and 400 <= responses(data)[0] < 600 and took is not None, (raw, data)
    # a head that keeps growing past 16 kB (h11's bound) without ending
    data, took = exchange(served["port"], b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"y" * 40_000)
    assert responses(data) and responses(data)[0] in (400, 431) and took is not None, data
    assert server_errors() == []


# -- 3. deadlines ---------------------------------------------------------------------------


def test_a_client_that_sends_nothing_or_half_a_head_is_dropped_after_the_head_timeout(served):
    port = served["port"]
    for partial in (b"", b"GET /api/sta", b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n"):
        with connect(port) as sock:
            sock.sendall(partial)
            data, took = read_until_closed(sock, 10)
        assert took is not None and LIMITS.head_timeout - 0.2 < took < LIMITS.head_timeout + 3, (partial, took)
        assert data == b""


def test_trickling_a_head_does_not_extend_its_deadline(served):
    with connect(served["port"]) as sock:
        start = time.monotonic()
        closed_after = None
        for byte in b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n":  # 42 bytes, one every 0.2 s: 8 s
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - start
                break
            time.sleep(0.2)
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    closed_after = time.monotonic() - start
                    break
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
    assert closed_after is not None and closed_after < LIMITS.head_timeout + 3


def test_idle_kept_alive_connections_are_closed(served):
    with connect(served["port"]) as sock:
        sock.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data, took = read_until_closed(sock, 10)
    assert responses(data) == [200]
    assert took is not None and took < LIMITS.keep_alive + 3  # closed by the keep-alive timeout


def test_a_stalled_upload_body_gets_408_and_is_dropped(served, server_errors):
    with connect(served["port"]) as sock:
        sock.sendall(b"POST /api/search?kind=audio&name=slow.wav HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Audioclip: 1\r\n"
                     b"Content-Length: 100000\r\n\r\nRIFF....")
        data, took = read_until_closed(sock, 10)
    assert responses(data) == [408] and "too slow" in body_json(data)["error"]
    assert took is not None and took < LIMITS.body_idle_timeout + 3
    assert server_errors() == []


def test_a_slow_upload_is_cut_at_its_total_deadline(served):
    limits = ConnectionLimits(body_idle_timeout=1.0, body_timeout=2.0)
    server = started(served["index"], limits=limits)
    try:
        with connect(server.port) as sock:
            sock.sendall(b"POST /api/search?kind=audio&name=drip.wav HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"X-Audioclip: 1\r\nContent-Length: 100000\r\n\r\n")
            start = time.monotonic()
            while time.monotonic() - start < 8:  # a byte every 0.3 s: never idle for 1 s
                try:
                    sock.sendall(b"x")
                except OSError:
                    break
                time.sleep(0.3)
                sock.setblocking(False)
                try:
                    if sock.recv(1):  # the answer has begun
                        break
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
            took = time.monotonic() - start
        assert took < limits.body_timeout + 3
    finally:
        stopped(server)


def test_searches_are_answered_while_slow_clients_hold_connections(served):
    server = started(served["index"], limits=ConnectionLimits(head_timeout=60, max_connections=64,
                                                              max_connections_per_client=64))
    slow = []
    try:
        for i in range(40):  # slowloris: heads that never end (from one address: no per-client cap here)
            sock = connect(server.port)
            sock.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-" + str(i).encode() + b": ")
            slow.append(sock)
        time.sleep(0.3)
        latencies = []
        for _ in range(3):
            start = time.monotonic()
            status, answer = get_json(server.port, "/api/search?q=a+dog&k=2", timeout=30)
            latencies.append(time.monotonic() - start)
            assert status == 200 and answer["results"]
        assert max(latencies) < 5, latencies
        for sock in slow:  # they were still held: the server did not just drop them
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in slow:
            sock.close()
        stopped(server)


def test_past_the_connection_cap_requests_get_503_at_once(served):
    server = started(served["index"], limits=ConnectionLimits(head_timeout=2, max_connections=8))
    slow = []
    try:
        for _ in range(8):
            sock = connect(server.port)
            sock.sendall(b"GET / HTTP/1.1\r\n")
            slow.append(sock)
        time.sleep(0.2)
        start = time.monotonic()
        status, _, _ = request(server.port, "GET", "/api/stats", timeout=10)
        assert status == 503 and time.monotonic() - start < 2
        for sock in slow:  # their heads time out, and the server is free again
            read_until_closed(sock, 10)
        assert request(server.port, "GET", "/api/stats", timeout=10)[0] == 200
    finally:
        for sock in slow:
            sock.close()
        stopped(server)


def test_a_client_that_stops_reading_is_dropped(served, tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    sf.write(folder / "big.wav", np.zeros((SR * 20, 2), np.float32), SR, subtype="FLOAT")  # 7 MB
    index = served["index"]
    before = {r.path for r in index.files()}
    index.add(folder)
    try:
        record = next(r for r in index.files() if r.path.endswith("big.wav"))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        sock.connect(("127.0.0.1", served["port"]))
        try:
            sock.sendall(f"GET /media/{record.file_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            time.sleep(LIMITS.write_timeout + 2)  # read nothing
            data, took = read_until_closed(sock, 10)
        finally:
            sock.close()
    finally:
        index.remove(folder)  # the module's index as it was: later tests do not depend on this one
    assert {r.path for r in index.files()} == before
    assert took is not None and len(data) < record.size  # aborted, not sent whole


# -- 4. uploads -----------------------------------------------------------------------------


def test_upload_query_vectors_equal_embed_query(served, tmp_path):
    """Decoded in a worker, embedded here in batches: the same vector as Index.embed_query, bit for bit."""
    index = served["index"]
    rng = np.random.default_rng(3)
    sound = tmp_path / "music.flac"  # 90 s: 18 windows, two batches of the model
    sf.write(sound, (0.05 * rng.standard_normal((SR * 90, 2))).astype(np.float32), SR)
    picture = tmp_path / "photo.jpg"
    Image.fromarray((rng.random((50, 70, 3)) * 255).astype(np.uint8)).save(picture)
    options = query_options_for(served)  # as the server decodes uploads: 8 channels at most, a bounded size
    assert options.limits.max_channels == 8
    for path, modality in ((sound, "audio"), (picture, "image")):
        work = tmp_path / f"work-{modality}"
        work.mkdir()
        copy = work / ("query" + path.suffix)
        copy.write_bytes(path.read_bytes())
        decoded = decode_upload(str(copy), path.name, options, budget=120)
        vector = embed_upload(index, decoded, modality, path.name, turns=SearchesFirst())
        expected = index.embed_query(**{modality: path})
        assert vector.dtype == expected.dtype and np.array_equal(vector, expected), modality


def test_text_searches_are_answered_while_a_long_upload_is_embedded(served, tmp_path, monkeypatch):
    """Four minutes of sound, embedded 4 windows per hold of the model lock: text searches go in between.

    Each batch is made to take 0.3 s longer (a real model on a small CPU is
    slower than the tiny one), so that the upload lasts seconds and holds the
    model lock most of that time. What is checked is the order of events, not
    timings (a loaded machine stretches those): searches were answered between
    the upload's batches, and a search that began to wait saw at most one batch
    start before it got the model (the one that may have just taken the lock).
    """
    index = served["index"]
    model = index.model
    encode_audio, encode_text = model.encode_audio, model.encode_text
    events: list[tuple[str, int]] = []  # ("wait" | "text" | "batch", thread), in the order they happened
    noting = threading.Lock()

    def note(kind: str) -> None:
        with noting:
            events.append((kind, threading.get_ident()))

    def slow_encode_audio(batch):
        note("batch")
        time.sleep(0.3)
        return encode_audio(batch)

    def noted_encode_text(*args, **kwargs):
        note("text")
        return encode_text(*args, **kwargs)

    monkeypatch.setattr(model, "encode_audio", slow_encode_audio)
    monkeypatch.setattr(model, "encode_text", noted_encode_text)
    server = started(index, upload_batch=4, max_upload=20_000_000)
    searching = server.site.turns.searching

    @contextlib.contextmanager
    def noted_searching():
        note("wait")
        with searching():
            yield

    monkeypatch.setattr(server.site.turns, "searching", noted_searching)
    t = np.arange(SR * 240) / SR
    sf.write(tmp_path / "long.flac", (0.01 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[:, None], SR)
    data = (tmp_path / "long.flac").read_bytes()
    done = {}

    def upload():
        start = time.monotonic()
        done["status"] = upload_bytes(server.port, data, "long.flac")[0]
        done["took"] = time.monotonic() - start
        done["at"] = time.monotonic()

    try:
        uploader = threading.Thread(target=upload)
        began = time.monotonic()
        uploader.start()
        time.sleep(0.5)
        answered = []  # (latency, finished at)
        while uploader.is_alive() and time.monotonic() - began < 600:
            start = time.monotonic()
            assert get_json(server.port, "/api/search?q=rain&k=2", timeout=300)[0] == 200
            answered.append((time.monotonic() - start, time.monotonic()))
            time.sleep(0.2)
        uploader.join(600)
    finally:
        stopped(server)
    assert done["status"] == 200
    during = [latency for latency, at in answered if at < done["at"]]
    print(f"upload {done['took']:.1f} s; {len(during)} text searches meanwhile, median "
          f"{statistics.median(during):.2f} s, max {max(during):.2f} s")
    kinds = [kind for kind, _ in events]
    batches = [i for i, kind in enumerate(kinds) if kind == "batch"]
    assert len(batches) == 240 // 5 // 4  # 48 windows, 4 a batch
    between = [i for i, kind in enumerate(kinds) if kind == "text" and batches[0] < i < batches[-1]]
    assert len(between) >= 3, kinds  # answered between two batches of the upload, not after it
    for i, (kind, thread) in enumerate(events):
        if kind == "wait":  # its search's model call is the next "text" of that thread
            j = next(j for j in range(i + 1, len(events)) if events[j] == ("text", thread))
            assert kinds[i:j].count("batch") <= 1, kinds[i:j + 1]


def test_searches_first_gives_way_after_its_patience():
    turns = SearchesFirst(patience=0.3)
    with turns.searching():
        assert turns.waiting == 1
        start = time.monotonic()
        turns.turn()  # a search never ends: the upload goes on after its patience
        assert time.monotonic() - start >= 0.25
    assert turns.waiting == 0
    start = time.monotonic()
    turns.turn()
    assert time.monotonic() - start < 0.1
    woke = []
    with turns.searching():
        waiter = threading.Thread(target=lambda: (turns.turn(), woke.append(time.monotonic())))
        turns.patience = 30
        waiter.start()
        time.sleep(0.2)
        assert not woke  # waits while a search is waiting
        ended = time.monotonic()
    waiter.join(10)
    assert woke and woke[0] - ended < 5  # and goes on as soon as none is


def hold_bodies(port: int, lengths, prefix: str = "held") -> list[socket.socket]:
    """Uploads whose heads are in and whose bodies stall after 4 bytes: slow senders."""
    held = []
    for i, length in enumerate(lengths):
        sock = connect(port)
        sock.sendall(f"POST /api/search?kind=audio&name={prefix}{i}.wav HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"X-Audioclip: 1\r\nContent-Length: {length}\r\n\r\nRIFF".encode())
        held.append(sock)
    time.sleep(0.5)
    return held


def test_stalled_bodies_do_not_take_the_decoding_slots(served):
    """Two slow senders (as many as max_uploads) hold their connections: a third, whole upload is searched."""
    server = started(served["index"], max_uploads=2, limits=ConnectionLimits(body_idle_timeout=20))
    held = hold_bodies(server.port, [50_000, 50_000])
    try:
        assert server.site.receiving == 2 and server.site.uploads == 0
        status, _, body = upload_bytes(server.port, (served["media"] / "pic.png").read_bytes(), "pic.png",
                                       kind="image")
        assert status == 200 and json.loads(body)["results"], body
        for sock in held:  # still held, not dropped to make room
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in held:
            sock.close()
        stopped(server)


def test_bodies_in_flight_are_capped_in_number_and_bytes(served):
    server = started(served["index"], max_receiving=2, max_receiving_bytes=120_000,
                     limits=ConnectionLimits(body_idle_timeout=20))
    held = hold_bodies(server.port, [50_000, 50_000])
    try:
        start = time.monotonic()
        status, headers, body = upload_bytes(server.port, b"RIFF" + bytes(1000), "third.wav")
        assert status == 503 and "arriving" in json.loads(body)["error"] and headers["Retry-After"]
        assert time.monotonic() - start < 5
    finally:
        for sock in held:
            sock.close()
    held = []
    try:
        deadline = time.monotonic() + 10  # the held ones end (their clients went away): room again
        while server.site.receiving and time.monotonic() < deadline:
            time.sleep(0.1)
        held = hold_bodies(server.port, [100_000], prefix="big")  # one body of 100 kB of the 120 kB
        status, _, body = upload_bytes(server.port, b"RIFF" + bytes(30_000), "over.wav")
        assert status == 503 and "arriving" in json.loads(body)["error"]
        status, _, body = upload_bytes(server.port, (served["media"] / "pic.png").read_bytes(), "pic.png",
                                       kind="image")
        assert status == 200, body  # a small one still fits
    finally:
        for sock in held:
            sock.close()
        stopped(server)


def test_uploads_past_the_decoding_cap_get_503_busy(served, monkeypatch):
    """Slots are taken by uploads being decoded or embedded: past max_uploads, 503 "busy" at once."""
    from audioclip.index import received as serving  # where uploads are decoded for every route

    release = threading.Event()
    decode = serving.decode_upload

    def slow_decode(*args, **kwargs):
        release.wait(60)
        return decode(*args, **kwargs)

    monkeypatch.setattr(serving, "decode_upload", slow_decode)
    server = started(served["index"], max_uploads=1)
    picture = (served["media"] / "pic.png").read_bytes()
    first = {}
    uploader = threading.Thread(target=lambda: first.update(answer=upload_bytes(server.port, picture, "a.png",
                                                                                 kind="image")))
    try:
        uploader.start()
        deadline = time.monotonic() + 30
        while server.site.uploads == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.site.uploads == 1
        start = time.monotonic()
        status, headers, body = upload_bytes(server.port, picture, "b.png", kind="image")
        assert status == 503 and "busy" in json.loads(body)["error"] and headers["Retry-After"]
        assert time.monotonic() - start < 5
        release.set()
        uploader.join(60)
        assert first["answer"][0] == 200
        assert upload_bytes(server.port, picture, "c.png", kind="image")[0] == 200
    finally:
        release.set()
        stopped(server)


def test_a_failing_mkdtemp_leaks_no_upload_slot(served, monkeypatch):
    made = []
    mkdtemp = tempfile.mkdtemp

    def failing(*args, **kwargs):
        made.append(1)
        if len(made) <= 2:
            raise OSError(28, "No space left on device")
        return mkdtemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", failing)
    server = started(served["index"], max_uploads=1, max_receiving=1)
    picture = (served["media"] / "pic.png").read_bytes()
    try:
        for _ in range(2):
            status, _, body = upload_bytes(server.port, picture, "pic.png", kind="image")
            assert status == 503 and "cannot store" in json.loads(body)["error"]
            assert "No space" not in json.loads(body)["error"]
        assert (server.site.uploads, server.site.receiving, server.site.receiving_bytes) == (0, 0, 0)
        status, _, body = upload_bytes(server.port, picture, "pic.png", kind="image")
        assert status == 200, body
    finally:
        stopped(server)


def test_a_decode_over_its_time_budget_is_killed(served, tmp_path):
    server = started(served["index"], decode_timeout=0.001)
    try:
        status, _, body = upload_bytes(server.port, (served["media"] / "tone.wav").read_bytes(), "tone.wav")
    finally:
        stopped(server)
    assert status == 422 and json.loads(body)["error"] == "tone.wav: took too long to decode (over 0.001 s)"


def test_upload_errors_name_the_clients_file_and_no_server_path(served, tmp_path, monkeypatch):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(uploads))
    server = started(served["index"], max_query_seconds=5)
    forbidden = ["/tmp", str(uploads), "audioclip-query-", "query.", str(served["root"]), os.sep + "db"]
    try:
        rng = np.random.default_rng(5)
        cases = [
            (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "garbage.wav", "audio", 400),  # not a sound
            (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(200), "broken.wav", "audio", 400),  # a damaged header
            (b"\x89PNG\r\n\x1a\n" + bytes(300), "broken.png", "image", 400),
        ]
        sf.write(tmp_path / "eight.wav", (0.1 * rng.standard_normal((SR * 8, 1))).astype(np.float32), SR)
        cases.append(((tmp_path / "eight.wav").read_bytes(), "eight.wav", "audio", 400))  # over 5 s
        for data, name, kind, status in cases:
            got, _, body = upload_bytes(server.port, data, name, kind=kind)
            error = json.loads(body)["error"]
            assert got == status and error.startswith(f"{name}: "), (name, got, error)
            assert not any(f in error for f in forbidden), error
        assert "over the limit of 5 s (--max-query-seconds)" in error
        assert list(uploads.iterdir()) == []  # each upload's folder was deleted
    finally:
        stopped(server)


def test_store_errors_and_unexpected_errors_are_answered_generically(served, server_errors, monkeypatch):
    index, port = served["index"], served["port"]
    db = str(served["root"] / "db")
    monkeypatch.setattr(index, "stats", lambda: (_ for _ in ()).throw(IndexStoreError(f"{db}: damaged table")))
    status, answer = get_json(port, "/api/stats")
    assert status == 503 and db not in json.dumps(answer) and "cannot be read" in answer["error"]
    monkeypatch.setattr(index.store, "count_rows", lambda: (_ for _ in ()).throw(IndexStoreError(f"{db}: gone")))
    status, answer = get_json(port, "/api/search?q=rain")
    assert status == 503 and db not in json.dumps(answer)
    monkeypatch.undo()
    monkeypatch.setattr(index, "stats", lambda: (_ for _ in ()).throw(RuntimeError(f"secret {db}")))
    status, answer = get_json(port, "/api/stats")
    assert status == 500 and "secret" not in json.dumps(answer) and answer["error"].startswith("internal error")
    time.sleep(0.2)
    logged = server_errors()
    assert any(r.exc_info and "secret" in str(r.exc_info[1]) for r in logged)  # logged, for the operator


# -- 5. indexed files: ids and identity -------------------------------------------------------


@pytest.mark.parametrize("ident", [
    "9223372036854775807", "-9223372036854775808",  # the int64 extremes: valid, not indexed
    "9223372036854775808", "-9223372036854775809", "99999999999999999999999999999", "1" * 400,  # overflow
    "00000000000000000001", "+1", "1.0", "1e3", "0x10", "%201", "1%20", "%D9%A3", "-", "--1", "1-", "%00",
])
def test_media_ids_must_be_int64(served, server_errors, ident):
    for what in ("media", "thumb", "wave"):
        status, answer = get_json(served["port"], f"/{what}/{ident}")
        assert status == 404 and answer["error"]
    assert server_errors() == []


@pytest.fixture
def victim(served, tmp_path):
    """A freshly indexed recording in a folder of its own, and a secret file beside the index."""
    folder = tmp_path / "victim"
    folder.mkdir()
    rng = np.random.default_rng(7)
    sf.write(folder / "song.wav", (0.1 * rng.standard_normal((SR * 2, 1))).astype(np.float32), SR)
    served["index"].add(folder)
    record = next(r for r in served["index"].files() if r.path == str(folder / "song.wav"))
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET" * (record.size // 6) + b"S" * (record.size % 6))  # as long as the song
    os.utime(secret, ns=(record.mtime_ns, record.mtime_ns))  # and as old: only the link gives it away
    yield {"folder": folder, "record": record, "secret": secret, "port": served["port"],
           "data": (folder / "song.wav").read_bytes()}
    served["index"].remove(folder)


def fetch(victim, what: str = "media", headers: dict | None = None):
    return request(victim["port"], "GET", f"/{what}/{victim['record'].file_id}", headers=headers)


def test_an_unchanged_file_is_served_with_ranges(victim):
    data = victim["data"]
    status, headers, body = fetch(victim)
    assert status == 200 and body == data and headers["Accept-Ranges"] == "bytes"
    status, headers, body = fetch(victim, headers={"Range": "bytes=10-19"})
    assert status == 206 and body == data[10:20] and headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    status, headers, body = fetch(victim, headers={"Range": "bytes=-4"})
    assert status == 206 and body == data[-4:]
    for bad in (f"bytes={len(data)}-", "bytes=5-2", "bytes=0-1,3-4", "bits=0-1", "bytes=" + "9" * 40 + "-"):
        status, headers, _ = fetch(victim, headers={"Range": bad})
        assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}", bad
    status, headers, body = request(victim["port"], "HEAD", f"/media/{victim['record'].file_id}")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(data)
    assert fetch(victim, "wave")[0] == 200


def test_a_file_replaced_by_a_link_to_another_file_is_not_served(victim):
    song = victim["folder"] / "song.wav"
    song.unlink()
    song.symlink_to(victim["secret"])
    for what in ("media", "wave"):
        status, _, body = fetch(victim, what)
        assert status == 404 and b"SECRET" not in body


def test_a_folder_swapped_for_a_link_is_not_served(victim, tmp_path):
    folder = victim["folder"]
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    folder.symlink_to(moved)  # the very same file, now reached through a link
    status, _, body = fetch(victim)
    assert status == 404 and body != victim["data"]
    folder.unlink()
    moved.rename(folder)
    assert fetch(victim)[0] == 200


def test_a_changed_file_is_not_served(victim):
    song = victim["folder"] / "song.wav"
    record = victim["record"]
    song.write_bytes(victim["data"] + b"more")  # another size
    assert fetch(victim)[0] == 404
    song.write_bytes(victim["data"])  # the same bytes, but written since
    os.utime(song, ns=(record.mtime_ns + 1_000_000_000, record.mtime_ns + 1_000_000_000))
    assert fetch(victim)[0] == 404
    os.utime(song, ns=(record.mtime_ns, record.mtime_ns))
    assert fetch(victim)[0] == 200  # the same file (inode) with the same size and time: unchanged
    copy = victim["folder"] / "copy.tmp"
    copy.write_bytes(victim["data"])
    os.utime(copy, ns=(record.mtime_ns, record.mtime_ns))
    os.replace(copy, song)  # another file, with the old size and time: only its inode tells
    assert record.inode is not None and record.dev is not None  # a fresh index records them
    assert fetch(victim)[0] == 404


def test_special_files_in_place_of_an_indexed_one_are_not_opened(victim):
    song = victim["folder"] / "song.wav"
    song.unlink()
    os.mkfifo(song)  # opening a FIFO for reading would block until a writer came
    start = time.monotonic()
    assert fetch(victim)[0] == 404 and time.monotonic() - start < 5
    song.unlink()
    song.mkdir()
    assert fetch(victim)[0] == 404


# -- 6. Host names ------------------------------------------------------------------------------


def test_host_names_are_checked_on_every_address(served):
    assert allowed_host_names("0.0.0.0") == {"localhost", "127.0.0.1", "[::1]"}
    assert allowed_host_names("::", ["MyPC.lan", "::1", "10.0.0.2"]) == {"localhost", "127.0.0.1", "[::1]",
                                                                         "mypc.lan", "10.0.0.2"}
    assert "192.168.1.5" in allowed_host_names("192.168.1.5")
    server = make_server(served["index"], host="0.0.0.0", port=0, quiet=True).start()
    named = make_server(served["index"], host="0.0.0.0", port=0, quiet=True, allowed_hosts=["mypc.lan"]).start()
    try:
        for port, host, status in [
            (server.port, "evil.example", 403), (server.port, f"evil.example:{server.port}", 403),
            (server.port, "0.0.0.0", 403), (server.port, "mypc.lan", 403), (server.port, "localhost.", 403),
            (server.port, f"localhost:{server.port}", 200), (server.port, "127.0.0.1", 200),
            (server.port, f"[::1]:{server.port}", 200),
            (named.port, "mypc.lan", 200), (named.port, f"MYPC.LAN:{named.port}", 200),
            (named.port, "evil.example", 403),
        ]:
            got, headers, body = request(port, "GET", "/api/stats", headers={"Host": host})
            assert got == status, (host, got)
            if status == 403:
                assert json.loads(body)["error"] == "unexpected Host header"
                assert headers["Content-Security-Policy"]
        data, _ = exchange(server.port, b"GET /api/stats HTTP/1.0\r\n\r\n")  # no Host at all
        assert responses(data) == [403]
    finally:
        stopped(server)
        stopped(named)


# -- 8. odd arguments -------------------------------------------------------------------------


@pytest.mark.parametrize("query", [
    "q=rain&k=0", "q=rain&k=101", "q=rain&k=-1", "q=rain&k=1.5", "q=rain&k=abc", "q=rain&k=", "q=rain&k=%205",
    "q=rain&k=5_0", "q=rain&k=%2B5", "q=rain&k=%D9%A3", "q=rain&k=99999999999999999999999999999999",
    "q=rain&offset=-1", "q=rain&offset=1e3", "q=rain&offset=401", "q=rain&offset=" + "9" * 5000,
    "q=", "q=%20%20%09", "k=3", "", "q=" + "a" * 1001, "q=rain&modality=smell",
    "q=rain&modality=AUDIO", "&".join(f"p{i}=1" for i in range(21)) + "&q=rain",
])
def test_odd_search_arguments_get_400(served, server_errors, query):
    status, answer = get_json(served["port"], f"/api/search?{query}")
    assert status in (400, 414) and answer["error"], (query, status)
    assert server_errors() == []


def test_odd_text_queries_that_are_valid_are_answered(served, server_errors):
    for q in ("%00", "%F0%9F%90%95+%E2%80%AE", "%ff%fe", "a" * 1000, "<script>alert(1)</script>"):
        status, answer = get_json(served["port"], f"/api/search?q={q}&k=1&modality=audio")
        assert status == 200 and len(answer["results"]) == 1, q
    assert server_errors() == []


@pytest.mark.parametrize("params, headers, status", [
    ("kind=smell&name=a.wav", {"X-Audioclip": "1"}, 400),
    ("name=a.wav", {"X-Audioclip": "1"}, 400),
    ("kind=audio&k=0", {"X-Audioclip": "1"}, 400),
    ("kind=audio&offset=x", {"X-Audioclip": "1"}, 400),
    ("kind=audio&modality=smell", {"X-Audioclip": "1"}, 400),
    ("kind=audio", {}, 403),
    ("kind=audio", {"X-Audioclip": "yes"}, 403),
])
def test_odd_upload_arguments_get_4xx(served, server_errors, params, headers, status):
    got, _, body = request(served["port"], "POST", f"/api/search?{params}", body=b"RIFF" + bytes(100),
                           headers=headers)
    assert got == status and json.loads(body)["error"]
    assert server_errors() == []


def test_upload_lengths_are_checked(served, server_errors):
    port = served["port"]
    post = b"POST /api/search?kind=audio&name=a.wav HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Audioclip: 1\r\n"
    data, _ = exchange(port, post + b"Transfer-Encoding: chunked\r\n\r\n4\r\nRIFF\r\n0\r\n\r\n", limit=5)
    assert responses(data)[0] == 411 and "Content-Length" in body_json(data)["error"]
    data, _ = exchange(port, post + b"Content-Length: 0\r\n\r\n", limit=5)
    assert responses(data)[0] == 400 and "empty" in body_json(data)["error"]
    # too large: answered 413 at once, and the body read and dropped so that the client sees the answer
    status, _, body = upload_bytes(port, bytes(3_500_000), "big.wav")
    assert status == 413 and "too large" in json.loads(body)["error"]
    data, took = exchange(port, post + b"Content-Length: 900000000000\r\n\r\nRIFF", limit=5)
    assert responses(data) == [413] and took is not None and "connection: close" in head(data)
    assert server_errors() == []


def test_head_and_security_headers_everywhere(served):
    port = served["port"]
    for method, path, status in (("HEAD", "/", 200), ("HEAD", "/api/stats", 200), ("GET", "/nowhere", 404),
                                 ("PUT", "/api/search", 405), ("DELETE", "/", 405), ("GET", "/api/stats/", 404)):
        got, headers, body = request(port, method, path)
        assert got == status, (method, path)
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["Server"] is None  # uvicorn's name is not given out
        if method == "HEAD":
            assert body == b"" and int(headers["Content-Length"]) > 0
        else:
            assert json.loads(body)["error"]


def test_serve_help_text(capsys):
    from audioclip.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--allowed-host NAME" in out and "--max-query-seconds" in out


# -- 9. review fixes: bounds on decoded uploads, folders, timeouts, hosts, start-up ---------------


def _wav(path, channels: int, rate: int, seconds: float) -> bytes:
    rng = np.random.default_rng(channels)
    sf.write(path, (0.1 * rng.standard_normal((int(rate * seconds), channels))).astype(np.float32), rate,
             subtype="PCM_16")
    return path.read_bytes()


def test_query_uploads_have_a_channel_limit_and_a_decoded_size_bound(served):
    from audioclip.index.uploads import MAX_QUERY_CHANNELS, decoded_bound, query_options

    options = query_options(served["index"].decode_options(), 600.0)
    assert options.limits.max_channels == MAX_QUERY_CHANNELS == 8 and options.limits.max_duration == 600
    assert decoded_bound(options) < 300_000_000  # 600 s of stereo at 44.1 kHz is 212 MB
    mono = query_options(dataclasses.replace(served["index"].decode_options(), mono=True), 600.0)
    assert mono.limits.max_channels == 64 and decoded_bound(mono) < decoded_bound(options)  # averaged into one
    overlapping = dataclasses.replace(options, hop=options.window / 2)
    assert decoded_bound(overlapping) > 1.9 * decoded_bound(options) - 40_000_000  # windows written twice


def test_a_small_upload_cannot_decode_to_gigabytes(served, tmp_path, monkeypatch):
    """128 kB of 64 channels at 100 Hz would be 113 MB of float32 at 44.1 kHz: refused by the channel limit;
    a few channels at 100 Hz for minutes: stopped by the decoded-size bound, and the folder cleaned."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(uploads))
    server = started(served["index"], max_decoded_bytes=5_000_000)
    try:
        many = _wav(tmp_path / "many.wav", 64, 100, 10)  # 64 channels
        assert len(many) < 140_000
        status, _, body = upload_bytes(server.port, many, "many.wav")
        error = json.loads(body)["error"]
        assert status == 400 and error == "many.wav: has 64 audio channels, over the limit of 8 for a query", error
        stretched = _wav(tmp_path / "stretched.wav", 4, 100, 120)  # 96 kB; 85 MB once decoded
        status, _, body = upload_bytes(server.port, stretched, "stretched.wav")
        error = json.loads(body)["error"]
        assert status == 413 and error.startswith("stretched.wav: too large once decoded (over 5 MB"), error
        assert list(uploads.iterdir()) == []
        # an ordinary recording is within both
        status, _, body = upload_bytes(server.port, (served["media"] / "tone.wav").read_bytes(), "tone.wav")
        assert status == 200, body
    finally:
        stopped(server)


def _matroska(path, channels: int, rate: int, seconds: float) -> None:
    """PCM in a Matroska file: FFmpeg decodes it, libsndfile reads no header of it (so no length is stated)."""
    import av

    rng = np.random.default_rng(channels)
    samples = (0.1 * rng.standard_normal((int(rate * seconds), channels)) * 32767).astype(np.int16)
    layout = {1: "mono", 2: "stereo"}[channels]
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def test_the_decode_worker_stops_writing_at_its_bound(served, tmp_path):
    """The running count: the worker writes no more than the bound, and what it wrote is freed (a file whose
    header states no length that libsndfile reads, so that the check of the stated length cannot refuse it)."""
    work = tmp_path / "work"
    work.mkdir()
    path = work / "query.wav"
    _matroska(path, 2, 100, 60)  # 21 MB once decoded
    options = query_options_for(served)
    with pytest.raises(UploadError) as refused:
        decode_upload(str(path), "q.wav", options, budget=120, max_bytes=3_000_000)
    assert refused.value.status == 413 and "too large once decoded" in refused.value.message
    sizes = {p.name: p.stat().st_size for p in work.iterdir() if p.suffix == ".raw"}
    assert sizes and all(size == 0 for size in sizes.values()), sizes


def query_options_for(served):
    from audioclip.index.uploads import query_options

    return query_options(served["index"].decode_options(), 600.0)


def _write_past(limit: int, path: str, queue) -> None:
    from audioclip.index.uploads import _limit_file_size

    _limit_file_size(limit)
    try:
        with open(path, "wb") as out:
            for _ in range(8):
                out.write(bytes(1 << 20))
        queue.put("written")
    except OSError as err:
        queue.put(f"errno {err.errno}")


def test_the_decode_worker_has_a_file_size_limit_as_a_backstop(tmp_path):
    import errno
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    queue = context.Queue()
    process = context.Process(target=_write_past, args=(1 << 20, str(tmp_path / "big.raw"), queue))
    process.start()
    process.join(60)
    assert queue.get(timeout=10) == f"errno {errno.EFBIG}" and process.exitcode == 0
    assert (tmp_path / "big.raw").stat().st_size <= (1 << 20) + (1 << 20)  # the limit and its slack


def test_folders_on_the_way_are_opened_as_paths_not_for_reading():
    from audioclip.index import served_files as serving

    if sys.platform.startswith("linux"):
        assert serving.FOLDER_FLAGS & os.O_PATH and serving.FOLDER_FLAGS & os.O_DIRECTORY


_OPEN_AS_NOBODY = """
import os, sys, types
record = types.SimpleNamespace(**{k: (int(v) if k != "path" else v) for k, v in
                                  (a.split("=", 1) for a in sys.argv[1:])})
from audioclip.index.served_files import open_indexed as _open_indexed
os.setgid(65534)
os.setgroups([])
os.setuid(65534)
try:
    os.listdir(os.path.dirname(record.path))
    print("readable")
except PermissionError:
    print("unreadable")
fd = _open_indexed(record)
print("opened" if fd is not None else "refused")
if fd is not None:
    print(os.read(fd, 4).decode())
"""


def test_an_indexed_file_under_a_traversable_unreadable_folder_is_served(tmp_path):
    """A parent folder of mode 0711 (search, not read, for others): walked with O_PATH, the file is opened."""
    import subprocess
    import types

    from audioclip.index.served_files import open_indexed as _open_indexed

    base = tempfile.mkdtemp(prefix="audioclip-0711-", dir="/tmp")  # /tmp: traversable by every user
    try:
        locked = os.path.join(base, "locked")
        os.mkdir(locked)
        song = os.path.join(locked, "song.wav")
        with open(song, "wb") as out:
            out.write(b"RIFF" + bytes(100))
        os.chmod(song, 0o644)
        info = os.stat(song)
        record = types.SimpleNamespace(path=song, size=info.st_size, mtime_ns=info.st_mtime_ns, dev=info.st_dev,
                                       inode=info.st_ino)
        if os.geteuid() == 0:  # root passes every permission check: open it as nobody
            os.chmod(base, 0o711)
            os.chmod(locked, 0o711)
            args = [f"{k}={v}" for k, v in vars(record).items()]
            run = subprocess.run([sys.executable, "-c", _OPEN_AS_NOBODY, *args], capture_output=True, text=True,
                                 timeout=300)
            assert run.returncode == 0, run.stderr
            assert run.stdout.split() == ["unreadable", "opened", "RIFF"], run.stdout
        else:  # the owner: a folder of mode 0311 can be searched but not read by us
            os.chmod(locked, 0o311)
            with pytest.raises(PermissionError):
                os.listdir(locked)
            fd = _open_indexed(record)
            assert fd is not None and os.read(fd, 4) == b"RIFF"
            os.close(fd)
    finally:
        for folder in (base, os.path.join(base, "locked")):
            if os.path.isdir(folder):
                os.chmod(folder, 0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_every_timeout_handler_catches_asyncio_timeout_error_too():
    """On Python 3.10, asyncio.wait_for raises asyncio.TimeoutError, which is not the built-in TimeoutError."""
    import ast
    import inspect

    from audioclip.index import httpd, server, uploads

    for module in (server, httpd, uploads):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                names = {ast.unparse(n) for n in (node.type.elts if isinstance(node.type, ast.Tuple) else
                                                  [node.type])}
                if names & {"TimeoutError", "asyncio.TimeoutError"}:
                    assert {"TimeoutError", "asyncio.TimeoutError"} <= names, (module.__name__, node.lineno)


def test_a_stalled_body_gets_408_when_wait_for_raises_asyncio_timeout_error(served, server_errors, monkeypatch):
    """As on Python 3.10: asyncio.TimeoutError a class of its own."""
    import asyncio
    import types

    from audioclip.index import received as serving  # where upload bodies are received

    class Py310TimeoutError(Exception):
        pass

    async def wait_for(awaitable, timeout):
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except TimeoutError:
            raise Py310TimeoutError from None

    fake = types.SimpleNamespace(get_running_loop=asyncio.get_running_loop, wait_for=wait_for,
                                 TimeoutError=Py310TimeoutError)
    monkeypatch.setattr(serving, "asyncio", fake)
    with connect(served["port"]) as sock:
        sock.sendall(b"POST /api/search?kind=audio&name=slow.wav HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Audioclip: 1\r\n"
                     b"Content-Length: 100000\r\n\r\nRIFF....")
        data, took = read_until_closed(sock, 10)
    assert responses(data) == [408] and "too slow" in body_json(data)["error"]
    assert server_errors() == []


@pytest.mark.parametrize("given, name", [
    ("mypc.lan:8000", "mypc.lan"), ("MyPC.LAN", "mypc.lan"), ("10.0.0.2:80", "10.0.0.2"), ("::1", "[::1]"),
    ("[FE80::1]:8000", "[fe80::1]"), ("[0:0:0:0:0:0:0:1]", "[::1]"), ("my_host", "my_host"),
])
def test_allowed_host_values_are_normalised(given, name):
    from audioclip.index.hosts import host_name

    assert host_name(given) == name


@pytest.mark.parametrize("given", ["", "  ", "my pc", "mypc/lan", "http://mypc", "mypc:", "mypc:0", "mypc:65536",
                                   "mypc:80x", "[mypc]", "[::1", "fe80::1:8000x", "a..", ".lan", "mypc.lan.", "é.lan"])
def test_garbage_allowed_hosts_are_usage_errors(given, capsys, tmp_path):
    from audioclip.cli import main

    with pytest.raises(ValueError):
        allowed_host_names("127.0.0.1", [given])
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--db", str(tmp_path / "db"), "--allowed-host", given])
    assert exit_.value.code == 2 and "--allowed-host" in capsys.readouterr().err


def test_allowed_hosts_with_ports_and_ipv6_match(served):
    named = make_server(served["index"], host="0.0.0.0", port=0, quiet=True,
                        allowed_hosts=["MyPC.lan:8000", "[fe80::1]:8000"]).start()
    try:
        for host, status in (("mypc.lan", 200), (f"mypc.lan:{named.port}", 200), ("MYPC.LAN:8000", 200),
                             ("[fe80::1]", 200), (f"[fe80:0::1]:{named.port}", 200), ("[fe80::2]", 403),
                             ("mypc.lan.evil", 403), ("mypc.lan:8000:1", 403), ("[fe80::1", 403)):
            got = request(named.port, "GET", "/api/stats", headers={"Host": host})[0]
            assert got == status, (host, got)
    finally:
        stopped(named)


def test_past_the_connection_cap_the_503_closes_the_connection(served):
    """uvicorn answers past limit_concurrency itself: one 503, ``Connection: close``, and nothing after it
    on that connection (a request pipelined behind it is never answered)."""
    server = started(served["index"], limits=ConnectionLimits(head_timeout=5, max_connections=4))
    slow = []
    try:
        for _ in range(4):
            sock = connect(server.port)
            sock.sendall(b"GET / HTTP/1.1\r\n")
            slow.append(sock)
        time.sleep(0.3)
        pipelined = b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 2
        data, took = exchange(server.port, pipelined, limit=4)
        assert responses(data) == [503] and took is not None, data
        assert "connection: close" in head(data)
        data, took = exchange(server.port, b"POST /api/search?kind=audio&name=a.wav HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                           b"X-Audioclip: 1\r\nContent-Length: 10\r\n\r\nRIFF", limit=4)
        assert responses(data) == [503] and took is not None, data  # closed, the body not waited for
    finally:
        for sock in slow:
            sock.close()
        stopped(server)


def test_serve_returns_1_when_uvicorn_dies_starting(served, monkeypatch, capsys):
    import uvicorn

    from audioclip.index.server import serve

    def broken_load(self):
        raise SystemExit(1)  # what uvicorn's Config.load does when the application cannot be loaded

    monkeypatch.setattr(uvicorn.Config, "load", broken_load)
    start = time.monotonic()
    assert serve(served["index"], port=0, quiet=True) == 1
    assert time.monotonic() - start < 60
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("audioclip: error")]
    assert len(lines) == 1 and "did not start" in lines[0]


def test_uploads_use_the_index_public_methods(served):
    import inspect

    from audioclip.index import received, server, uploads

    index = served["index"]
    assert index.model_lock is index.model_lock and hasattr(index.model_lock, "acquire")
    assert index.precision == "fp32" and index.decode_options() == index._options()
    for module in (uploads, server, received):
        source = inspect.getsource(module)
        assert "index._" not in source and "from ..inference import DecodeOptions" not in source


def test_the_server_uses_no_private_part_of_uvicorn():
    """The connection guarantees rest on public APIs only: no module of uvicorn's is imported but the package
    itself, and the index extra does not pin uvicorn to one minor version."""
    import ast
    import inspect
    import re as regex
    from pathlib import Path

    from audioclip.index import httpd, server

    for module in (httpd, server):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            assert not any(name.startswith("uvicorn.") for name in names), (module.__name__, names)
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    low, high = regex.search(r'"uvicorn>=([0-9.]+),<([0-9.]+)"', pyproject).groups()
    low_minor = tuple(int(x) for x in low.split(".")[:2])
    assert (tuple(int(x) for x in high.split(".")) + (0,))[:2] > (low_minor[0], low_minor[1] + 1), (low, high)


def test_the_decoded_bound_makes_room_for_the_frames_of_the_model_and_options():
    from audioclip.index.uploads import decoded_bound
    from audioclip.media.files import DecodeOptions

    central, every = (DecodeOptions(image_size=384, video_frames=v) for v in ("central", "all"))
    frames = 10 * 3 * 384 * 384 * 4  # ten 384 x 384 frames of float32: 17.7 MB
    assert decoded_bound(every) - decoded_bound(central) == frames - frames // 10
    assert decoded_bound(every) > frames + central.limits.max_duration * central.sample_rate * 2 * 4


# -- 10. fair shares: per-client caps, head size, one log line, start-up order, upload bounds -------


def connect_from(source: str, port: int, timeout: float = 10) -> socket.socket:
    """A connection to the server (on 127.0.0.1) from ``source``, another loopback address (all of 127/8 is
    loopback on Linux): how the tests tell one client from another."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def statuses(data: bytes) -> list[int]:
    """Status codes of the HTTP responses in ``data``, pipelined ones too (a JSON body ends without a newline)."""
    import re

    return [int(code) for code in re.findall(rb"HTTP/1\.[01] ([0-9]{3}) ", data)]


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def test_one_client_holding_and_reopening_connections_does_not_lock_others_out(served):
    """The attacker (127.0.0.2) keeps trying to hold every connection and reopens each one closed; another
    client (127.0.0.3) is answered all along, and the attacker ends up holding its share, no more."""
    limits = ConnectionLimits(head_timeout=60, max_connections=8, max_connections_per_client=3)
    server = started(served["index"], limits=limits)
    stop = threading.Event()
    held: list[socket.socket] = []

    def attack() -> None:
        while not stop.is_set():
            for sock in [s for s in held if not still_open(s)]:
                held.remove(sock)
                sock.close()
            while len(held) < 2 * limits.max_connections and not stop.is_set():
                try:
                    sock = connect_from("127.0.0.2", server.port)
                    sock.sendall(b"GET /api/stats HTTP/1.1\r\n")  # a head that never ends
                except OSError:
                    break
                held.append(sock)
            time.sleep(0.05)

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        time.sleep(0.5)
        for _ in range(5):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=("127.0.0.3", 0))
            try:
                conn.request("GET", "/api/stats")
                response = conn.getresponse()
                assert response.status == 200, response.read()
                response.read()
            finally:
                conn.close()
            time.sleep(0.2)
        stop.set()
        attacker.join(10)
        for _ in range(100):  # until the server has taken (and closed) the connections the attacker opened last
            if sum(still_open(s) for s in held) <= limits.max_connections_per_client:
                break
            time.sleep(0.1)
        assert sum(still_open(s) for s in held) == limits.max_connections_per_client  # its share, held
    finally:
        stop.set()
        attacker.join(10)
        for sock in held:
            sock.close()
        stopped(server)


def test_a_client_past_its_request_rate_gets_429_and_others_are_answered(served, server_errors):
    limits = dataclasses.replace(LIMITS, client_rate=0.01, client_burst=5)  # 5 at once, then one per 100 s
    server = started(served["index"], limits=limits)
    try:
        with connect_from("127.0.0.1", server.port) as sock:
            # each naming another client in X-Forwarded-For, which must change nothing (uvicorn's default
            # would believe it from 127.0.0.1)
            sock.sendall(b"".join(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 10.0.0.%d\r\n\r\n"
                                  % i for i in range(7)) +
                         b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data, took = read_until_closed(sock, 30)
        assert statuses(data) == [200] * 5 + [429] * 3 and took is not None, data
        refused = data.split(b"HTTP/1.1 429")[1]
        assert b"retry-after: " in refused.lower() and b"too many requests from your address" in refused
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=("127.0.0.3", 0))
        try:
            conn.request("GET", "/api/stats")
            assert conn.getresponse().status == 200
        finally:
            conn.close()
    finally:
        stopped(server)
    assert server_errors() == []


def test_client_keys_group_an_ipv6_host_by_its_64():
    from audioclip.index.httpd import ClientCounts, ClientRateLimit, client_key

    assert client_key("127.0.0.2") == "127.0.0.2" and client_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1") and client_key(None) == ""
    counts = ClientCounts()
    assert [counts.admit("a", 2) for _ in range(3)] == [True, True, False]
    counts.release("a")
    counts.release("a")
    assert counts.open == {}  # an address leaves the table with its last connection
    limiter = ClientRateLimit(None, rate=1.0, burst=2, max_table=2)
    assert [limiter.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert limiter.take("a", now=1.0) == 0.0  # refilled at the rate
    limiter.take("b", now=1.0)
    limiter.take("c", now=100.0)  # the table is full: addresses whose buckets filled up again are forgotten
    assert set(limiter.buckets) == {"c"}
    busy = ClientRateLimit(None, rate=1.0, burst=10, max_table=8)
    for i in range(1000):  # many busy addresses: the table stays bounded
        busy.take(f"10.0.{i // 256}.{i % 256}", now=i * 0.001)
    assert len(busy.buckets) <= 8 and "10.0.3.231" in busy.buckets  # the last one is kept


def test_request_heads_over_16_kb_are_refused(served, server_errors):
    port = served["port"]
    assert LIMITS.max_head_bytes == ConnectionLimits().max_head_bytes == 16384

    def get(pad: int) -> bytes:
        return b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * pad + b"\r\n\r\n"

    fits, over = get(16384 - len(get(0))), get(16385 - len(get(0)))
    assert len(fits) == 16384 and len(over) == 16385
    data, _ = exchange(port, fits + b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert statuses(data) == [200, 200], data[:200]
    for raw in (over, get(120_000), get(0) + get(60_000)):  # whole, in one read; and pipelined behind another
        data, took = exchange(port, raw)
        assert statuses(data)[-1] == 431 and took is not None, data[:200]
        assert "request head too large" in body_json(b"HTTP/1.1 431" + data.split(b"HTTP/1.1 431")[-1])["error"]
    assert server_errors() == []


def test_a_bad_chunk_size_is_answered_400_and_logged_in_one_line(served):
    records = served["records"]
    records.clear()
    for target in (b"/api/search?kind=audio&name=a.wav", b"/api/stats"):
        method = b"POST" if b"search" in target else b"GET"
        data, took = exchange(served["port"], method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              b"X-Audioclip: 1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n"
                              b"zz\r\nabc\r\n0\r\n\r\n")
        assert responses(data) == [400] and took is not None, data
        assert "malformed request" in body_json(data)["error"]
    time.sleep(0.5)  # the handlers of both requests have run
    assert [r for r in records if r.exc_info] == []
    lines = [r for r in records if r.levelno >= logging.WARNING]
    assert len(lines) <= 2 and all("\n" not in r.getMessage() for r in lines), [r.getMessage() for r in lines]


def test_a_bad_host_or_a_busy_port_fails_before_the_model_loads(served, monkeypatch, capsys):
    from audioclip.cli import main
    from audioclip.index import api

    loaded = []
    monkeypatch.setattr(api.Index, "model", property(lambda self: loaded.append(1)))
    db = str(served["root"] / "db")
    assert main(["serve", "--db", db, "--host", "no-such-host.invalid"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("audioclip serve: error: --host no-such-host.invalid: "), err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        assert main(["serve", "--db", db, "--port", str(busy.getsockname()[1])]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot listen on 127.0.0.1:" in err and "in use" in err, err
    assert loaded == []


@pytest.mark.parametrize("args, words", [
    (["--max-upload-mb", "1e30"], "at most 4096"),
    (["--max-query-seconds", "1e30"], "at most 86400"),
    (["--max-connections-per-client", "0"], "at least 1"),
])
def test_serve_limits_out_of_range_are_usage_errors(args, words, capsys, tmp_path):
    from audioclip.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--db", str(tmp_path / "db"), *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and args[0] in err and words in err, err


def test_a_per_client_cap_over_the_global_one_is_a_usage_error(served, capsys):
    from audioclip.cli import main

    assert main(["serve", "--db", str(served["root"] / "db"), "--max-connections", "8",
                 "--max-connections-per-client", "9"]) == 2
    assert "cannot be more than --max-connections" in capsys.readouterr().err


def test_an_upload_whose_header_states_too_much_is_refused_before_decoding(served, tmp_path):
    """944 kB of 8 channels at 100 Hz for 590 s is 830 MB once decoded at 44.1 kHz: refused from its header,
    before a sample is decoded (nothing is written); a file within the bound is decoded as before."""
    work = tmp_path / "work"
    work.mkdir()
    path = work / "query.wav"
    data = _wav(path, 8, 100, 590)
    assert len(data) < 1_000_000
    with pytest.raises(UploadError) as refused:
        decode_upload(str(path), "q.wav", query_options_for(served), budget=120)
    assert refused.value.status == 413 and "too large once decoded" in refused.value.message
    assert not any(p.suffix == ".raw" for p in work.iterdir())  # refused before the decoding began
    short = tmp_path / "short"
    short.mkdir()
    _wav(short / "query.wav", 8, 100, 30)
    assert decode_upload(str(short / "query.wav"), "q.wav", query_options_for(served), budget=120).windows is not None


def _allocate_past(limit: int, queue) -> None:
    from audioclip.index.uploads import _limit_memory

    _limit_memory(limit)
    try:
        block = np.ones(4 * limit // 8)  # four times the room left
        queue.put(f"allocated {block.nbytes}")
    except MemoryError:
        queue.put("MemoryError")


def test_the_decode_worker_has_a_memory_cap(tmp_path):
    import multiprocessing

    from audioclip.index.uploads import WORKER_MEMORY

    context = multiprocessing.get_context("forkserver")
    queue = context.Queue()
    process = context.Process(target=_allocate_past, args=(256 << 20, queue))
    process.start()
    process.join(60)
    assert queue.get(timeout=10) == "MemoryError" and process.exitcode == 0
    assert 1 << 30 <= WORKER_MEMORY <= 4 << 30
