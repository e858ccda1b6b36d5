from __future__ import annotations

import http.server
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reference_weights import reference_state_dict

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The reference outputs were produced with 2 threads; results are bit-stable
# for a fixed thread count, so pin it.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "public-v1.npz") as npz:
        return {name: npz[name] for name in npz.files}


@pytest.fixture(scope="session")
def reference_meta() -> dict:
    return json.loads((FIXTURES / "public-v1.json").read_text())


@pytest.fixture(scope="session")
def manifest() -> dict:
    return json.loads((FIXTURES / "manifest.json").read_text())


@pytest.fixture(scope="session")
def reference_model():
    """The full-size AudioCLIP with the reference's deterministic weights, eval mode."""
    from audioclip import AudioCLIP

    model = AudioCLIP().eval()
    model.load_state_dict(reference_state_dict(model, "public-v1"))
    return model


@pytest.fixture(scope="session")
def tiny_model():
    from audioclip import AudioCLIP

    torch.manual_seed(0)
    return AudioCLIP("AudioCLIP-tiny").eval()


# -- a local HTTP server for download tests -----------------------------------


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from ``server.root`` with ``Range: bytes=N-`` support.

    ``server.fail_after = N`` sends only N bytes of the next response body and
    then closes the connection; ``server.ignore_range`` answers 200 to Range
    requests; ``server.stall`` sends 100 bytes and then goes silent. Every
    request is recorded in ``server.requests``.
    """

    def do_GET(self):  # noqa: N802 (http.server naming)
        server = self.server
        range_header = self.headers.get("Range")
        server.requests.append((self.path, range_header))
        path = server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start, status = 0, 200
        if range_header and not server.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if server.fail_after is not None:
            body, server.fail_after = body[: server.fail_after], None
        if server.stall:
            self.wfile.write(body[:100])
            self.wfile.flush()
            time.sleep(2)  # longer than the client's timeout
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("AUDIOCLIP_CACHE", "AUDIOCLIP_OFFLINE", "AUDIOCLIP_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    # a proxy from the environment must not intercept 127.0.0.1
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.root = root
    httpd.requests = []
    httpd.fail_after = None
    httpd.ignore_range = False
    httpd.stall = False
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    # short poll interval: shutdown() waits for it at every teardown
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)
