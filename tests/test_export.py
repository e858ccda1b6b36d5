"""The model everywhere: safetensors, Hub folders (a local folder and a stand-in Hub on 127.0.0.1), ONNX."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from audioclip import CheckpointError, checkpoint_id, create_model, save_model
from audioclip.checkpoints import convert_checkpoint, load_state_dict
from audioclip.export.hub import export_hub_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(create_model("AudioCLIP-tiny"), tmp_path_factory.mktemp("w") / "tiny.pt")


def probe(model) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(5)
    wave = torch.rand(2, 1, 4000, generator=g) - 0.5
    image = torch.randn(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        out = model(audio=wave, image=image, text=["dog", "rain"])
    return out.audio_features, out.image_features, out.text_features


# -- safetensors ---------------------------------------------------------------------------


def test_pt_to_safetensors_and_back_is_bit_exact(tiny_file, tmp_path):
    st = convert_checkpoint(tiny_file, tmp_path / "tiny.safetensors")
    back = convert_checkpoint(st, tmp_path / "back.pt")
    original = torch.load(tiny_file, weights_only=True)
    again = torch.load(back, weights_only=True)
    assert list(again) == list(original)  # the original's keys, in its order
    for key, value in original.items():
        assert again[key].dtype == value.dtype and torch.equal(again[key], value), key
    assert back.read_bytes() == Path(tiny_file).read_bytes()


def test_safetensors_loads_everywhere_a_pt_does(tiny_file, tmp_path):
    st = convert_checkpoint(tiny_file, tmp_path / "tiny.safetensors")
    a, b = create_model(tiny_file), create_model(st)
    assert b.pretrained_cfg["architecture"] == "AudioCLIP-tiny"
    for x, y in zip(probe(a), probe(b)):
        assert torch.equal(x, y)
    assert checkpoint_id(b).startswith("tiny.safetensors@")


def test_safetensors_never_unpickles(tmp_path, monkeypatch):
    st = tmp_path / "x.safetensors"
    save_model(create_model("AudioCLIP-tiny"), st)
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used to read a safetensors file")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert load_state_dict(st)


def test_corrupt_safetensors_and_bad_conversions(tmp_path, tiny_file):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="bad.safetensors.*not a readable safetensors file"):
        load_state_dict(bad)
    with pytest.raises(CheckpointError, match="nothing to convert"):
        convert_checkpoint(tiny_file, tmp_path / "same.pt")
    with pytest.raises(CheckpointError, match="unknown checkpoint suffix"):
        convert_checkpoint(tiny_file, tmp_path / "x.onnx")


# -- Hub folders -----------------------------------------------------------------------------


def test_hub_folder_round_trip(tiny_file, tmp_path):
    model = create_model(tiny_file)
    paths = export_hub_folder(model, tmp_path / "repo", checkpoint_id=checkpoint_id(model))
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads(paths["config"].read_text())
    assert config["architecture"] == "AudioCLIP-tiny" and config["model_cfg"]["embed_dim"] == 64
    card = paths["card"].read_text()
    assert "AudioCLIP-tiny" in card and "create_model(\"hf-hub:" in card and "69.40" in card
    reloaded = create_model(tmp_path / "repo")
    for x, y in zip(probe(model), probe(reloaded)):
        assert torch.equal(x, y)


def test_model_card_of_published_weights_names_origin_licence_and_paper_numbers():
    from audioclip.export.hub import model_card

    card = model_card({"architecture": "AudioCLIP-RN50", "weights": "full", "audioclip_version": "x"})
    assert "AudioCLIP-Full-Training.pt" in card and "MIT" in card
    for figure in ("69.40 %", "68.78 %", "97.15 %", "90.07 %"):
        assert figure in card


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers ``/{org}/{name}/resolve/{revision}/{file}`` as the Hub does (HEAD and GET)."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def _file(self) -> Path | None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) != 5 or parts[2] != "resolve":
            return None
        path = self.server.root / parts[0] / parts[1] / parts[4]
        return path if path.is_file() else None

    def _headers(self, path: Path) -> None:
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", self.COMMIT)
        self.end_headers()

    def do_HEAD(self):  # noqa: N802
        self.server.requests.append(("HEAD", self.path))
        path = self._file()
        if path is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._headers(path)

    def do_GET(self):  # noqa: N802
        self.server.requests.append(("GET", self.path))
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        self._headers(path)
        self.wfile.write(path.read_bytes())

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.root = tmp_path / "hub"
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


LOAD = """
import sys, torch
from audioclip import create_model
model = create_model(sys.argv[1])
g = torch.Generator().manual_seed(5)
with torch.no_grad():
    v = model.encode_audio(torch.rand(1, 1, 4000, generator=g) - 0.5)
print(model.pretrained_cfg["architecture"], repr(float(v.sum())))
"""


def test_hub_name_downloads_through_huggingface_hub(tiny_file, tmp_path, fake_hub):
    model = create_model(tiny_file)
    export_hub_folder(model, fake_hub.root / "someone" / "tiny-audioclip")
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{fake_hub.server_address[1]}",
               HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1", no_proxy="*", NO_PROXY="*")
    env.pop("HF_HUB_OFFLINE", None)
    run = subprocess.run([sys.executable, "-c", LOAD, "hf-hub:someone/tiny-audioclip"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        expected = float(model.encode_audio(torch.rand(1, 1, 4000, generator=g) - 0.5).sum())
    assert run.stdout.split() == ["AudioCLIP-tiny", repr(expected)]
    assert any(path.endswith("/model.safetensors") for method, path in fake_hub.requests if method == "GET")
    # offline: from huggingface_hub's cache, no request
    fake_hub.requests.clear()
    run = subprocess.run([sys.executable, "-c", LOAD, "hf-hub:someone/tiny-audioclip"],
                         env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert fake_hub.requests == []
    # a repository that is not there: one clear error
    run = subprocess.run([sys.executable, "-c", LOAD, "hf-hub:someone/absent"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "CheckpointError: hf-hub:someone/absent" in run.stderr


def test_bad_hub_names():
    with pytest.raises(CheckpointError, match="hf-hub:ORG/NAME"):
        create_model("hf-hub:only-a-name")
