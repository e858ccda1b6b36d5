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
    architecture, value = run.stdout.split()
    assert architecture == "AudioCLIP-tiny"
    assert float(value) == pytest.approx(expected, rel=1e-5)  # another process: other thread counts
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


# -- ONNX ---------------------------------------------------------------------------------------


onnx_deps = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
    reason="ONNX export needs the [onnx] extra (onnx, onnxruntime, onnxscript)",
)


@pytest.fixture(scope="module")
def reference_onnx(reference_model, tmp_path_factory):
    from audioclip.export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("onnx-ref")
    export_onnx(reference_model, folder)
    return folder


def scale_error(ours, ref) -> float:
    ours = ours.detach().float().cpu().numpy() if isinstance(ours, torch.Tensor) else ours
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@onnx_deps
def test_onnx_models_equal_the_reference_vectors(reference_onnx, reference, reference_meta):
    """ONNX Runtime on the shared reference inputs, against the original's vectors (not only our PyTorch)."""
    import onnxruntime as ort

    from audioclip.model import tokenize

    def session(name):
        return ort.InferenceSession(str(reference_onnx / name), providers=["CPUExecutionProvider"])

    audio, image, text = session("audio.onnx"), session("image.onnx"), session("text.onnx")
    assert [(i.name, i.type) for i in audio.get_inputs()] == [("waveform", "tensor(float)")]
    assert all(isinstance(d, str) for d in audio.get_inputs()[0].shape)  # batch, channels, samples dynamic
    assert [(i.name, i.type) for i in image.get_inputs()] == [("pixel_values", "tensor(float)")]
    assert image.get_inputs()[0].shape[1:] == [3, 224, 224]
    assert [(i.name, i.type) for i in text.get_inputs()] == [("input_ids", "tensor(int64)")]
    assert text.get_inputs()[0].shape[1:] == [77]
    assert {s.get_outputs()[0].name for s in (audio, image, text)} == {"embedding"}
    for case in "abc":  # 2 x 5 s mono, 2 s stereo, 1 s mono
        out = audio.run(["embedding"], {"waveform": reference[f"audio_{case}_wave"]})[0]
        assert out.shape[1] == 1024
        assert scale_error(out, reference[f"audio_{case}_embed"]) <= 1e-4, case
    out = image.run(["embedding"], {"pixel_values": reference["images"]})[0]
    assert scale_error(out, reference["image_embed"]) <= 1e-4
    ids = tokenize(reference_meta["text_embed_texts"]).numpy()
    out = text.run(["embedding"], {"input_ids": ids})[0]
    assert scale_error(out, reference["text_embed"]) <= 1e-4


@onnx_deps
def test_onnx_backend_gives_the_pytorch_backends_answers(reference_onnx, reference_model, tmp_path):
    import soundfile as sf
    from PIL import Image

    from audioclip import embed_files
    from audioclip.export.onnx import OnnxAudioCLIP
    from audioclip.model import freeze_fbsp_kernel

    rng = np.random.default_rng(0)
    sf.write(tmp_path / "a.wav", (0.1 * rng.standard_normal((44100 * 7, 2))).astype(np.float32), 44100)
    Image.fromarray((rng.random((50, 80, 3)) * 255).astype(np.uint8)).save(tmp_path / "b.png")
    paths = [str(tmp_path / "a.wav"), str(tmp_path / "b.png")]
    backend = OnnxAudioCLIP(reference_onnx)
    exact = freeze_fbsp_kernel(reference_model)
    ours = list(embed_files(backend, paths, batch_size=4))
    theirs = list(embed_files(exact, paths, batch_size=4))
    for a, b in zip(ours, theirs):
        assert a.ok and b.ok
        assert [(e.modality, e.kind, e.start, e.end) for e in a.embeddings] == \
               [(e.modality, e.kind, e.start, e.end) for e in b.embeddings]
        for x, y in zip(a.embeddings, b.embeddings):
            assert float(torch.nn.functional.cosine_similarity(x.vector, y.vector, dim=0)) > 1 - 1e-6
    from audioclip import classify

    labels = ["dog", "rain", "a siren"]
    p_onnx = classify(backend, labels, audio=[paths[0]], template="the sound of {}")
    p_torch = classify(exact, labels, audio=[paths[0]], template="the sound of {}")
    assert torch.allclose(p_onnx, p_torch, atol=1e-4)


@onnx_deps
def test_onnx_export_refuses_a_fast_head_and_checks_the_folder(tmp_path):
    from audioclip.export.onnx import OnnxAudioCLIP, OnnxExportError, export_onnx
    from audioclip.model import fuse

    with pytest.raises(TypeError, match="before audio_mode"):
        export_onnx(fuse(create_model("AudioCLIP-tiny")), tmp_path / "x")
    with pytest.raises(OnnxExportError, match="not an ONNX export"):
        OnnxAudioCLIP(tmp_path)


def _fake_export(folder: Path, checkpoint: str = "tiny.pt@0123456789abcdef") -> Path:
    """An export folder whose graphs are placeholder bytes (sessions open on first use: never here)."""
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for modality in ("audio", "image", "text"):
        data = f"graph of {modality} for {checkpoint}".encode()
        (folder / f"{modality}.onnx").write_bytes(data)
        digests[modality] = hashlib.sha256(data).hexdigest()
    meta = {"format": 2, "architecture": "AudioCLIP-tiny", "checkpoint": checkpoint, "embed_dim": 64,
            "image_size": 64, "context_length": 77, "sample_rate": 44100,
            "logit_scales": {"audio_image": 10.0, "audio_text": 10.0, "image_text": 100.0},
            "files": {m: f"{m}.onnx" for m in digests}, "sha256": digests}
    (folder / "audioclip-onnx.json").write_text(json.dumps(meta))
    return folder


@onnx_deps
def test_onnx_graphs_are_checked_against_the_hashes_the_export_recorded(tmp_path):
    from audioclip.export.onnx import OnnxAudioCLIP, OnnxExportError

    mine, other = _fake_export(tmp_path / "mine"), _fake_export(tmp_path / "other", "other.pt@fedcba9876543210")
    assert OnnxAudioCLIP(mine).pretrained_cfg["checkpoint_id"] == "tiny.pt@0123456789abcdef"
    (mine / "audio.onnx").write_bytes((other / "audio.onnx").read_bytes())  # copied in from another export
    with pytest.raises(OnnxExportError, match=r"mine/audio.onnx: not the graph this export wrote") as info:
        OnnxAudioCLIP(mine)
    assert "\n" not in str(info.value)
    # an export that records no hashes cannot be checked: refused, never trusted
    meta = json.loads((other / "audioclip-onnx.json").read_text())
    del meta["sha256"]
    (other / "audioclip-onnx.json").write_text(json.dumps(meta))
    with pytest.raises(OnnxExportError, match="records no sha256 of its graphs"):
        OnnxAudioCLIP(other)


@onnx_deps
@pytest.mark.parametrize("change, problem", [
    ({"embed_dim": 10**9}, "'embed_dim' is 1000000000"),
    ({"image_size": "64"}, "'image_size' is '64'"),
    ({"logit_scales": [1]}, "'logit_scales' is not an object of numbers"),
    ({"sha256": {"audio": "x"}}, "'sha256' does not give the three graphs' hashes"),
    ({"checkpoint": ["a"]}, "'checkpoint' is not a string"),
])
def test_onnx_export_metadata_is_validated(tmp_path, change, problem):
    from audioclip.export.onnx import OnnxAudioCLIP, OnnxExportError

    folder = _fake_export(tmp_path / "x")
    meta = {**json.loads((folder / "audioclip-onnx.json").read_text()), **change}
    (folder / "audioclip-onnx.json").write_text(json.dumps(meta))
    with pytest.raises(OnnxExportError, match=f"not an ONNX export of audioclip \\(.*{problem}"):
        OnnxAudioCLIP(folder)


@onnx_deps
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_onnx_export_files_that_are_fifos_are_refused(tmp_path):
    from audioclip.export.onnx import OnnxAudioCLIP, OnnxExportError
    from test_hostile import run_with_deadline

    for name in ("audioclip-onnx.json", "text.onnx"):
        folder = _fake_export(tmp_path / name)
        (folder / name).unlink()
        os.mkfifo(folder / name)
        with pytest.raises(OnnxExportError, match=r"not a regular file \(a FIFO\)"):
            run_with_deadline(lambda: OnnxAudioCLIP(folder), 60)


@onnx_deps
def test_checkpoint_beside_onnx_dir_must_be_the_exported_one(tmp_path, tiny_file):
    from audioclip.checkpoints import file_checkpoint_id
    from audioclip.cli import main as cli_main

    import soundfile as sf

    sf.write(tmp_path / "a.wav", np.zeros((4410, 1), np.float32), 44100)
    folder = _fake_export(tmp_path / "export", file_checkpoint_id(tiny_file))
    other = save_model(create_model("AudioCLIP-tiny"), tmp_path / "other.pt")
    for given in (str(other), "full", "AudioCLIP-tiny"):
        run = subprocess.run([sys.executable, "-m", "audioclip", "classify", str(tmp_path / "a.wav"), "--labels",
                              "a,b", "--backend", "onnxruntime", "--onnx-dir", str(folder), "--checkpoint", given],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, (given, run.stderr)
        assert f"--checkpoint {given}" in run.stderr and "--onnx-dir" in run.stderr, run.stderr
    # the same checkpoint passes the check (and goes on to load the placeholder graphs, which fail to run: 1)
    code = cli_main(["classify", str(tmp_path / "a.wav"), "--labels", "a,b", "--backend", "onnxruntime",
                     "--onnx-dir", str(folder), "--checkpoint", str(tiny_file), "-q"])
    assert code == 1
