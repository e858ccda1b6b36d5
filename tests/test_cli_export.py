"""audioclip convert and audioclip export."""

from __future__ import annotations


def test_convert_and_export_commands(tmp_path):
    """audioclip convert (.pt <-> .safetensors, bit for bit) and export hub (a folder that loads as --checkpoint)."""
    from audioclip import create_model as _create, save_model as _save
    from audioclip.cli import main as cli_main

    pt = _save(_create("AudioCLIP-tiny"), tmp_path / "tiny.pt")
    assert cli_main(["convert", str(pt), str(tmp_path / "tiny.safetensors"), "-q"]) == 0
    assert cli_main(["convert", str(tmp_path / "tiny.safetensors"), str(tmp_path / "back.pt"), "-q"]) == 0
    assert (tmp_path / "back.pt").read_bytes() == pt.read_bytes()
    assert cli_main(["convert", str(pt), str(tmp_path / "x.onnx")]) == 2
    assert cli_main(["convert", str(pt), str(tmp_path / "tiny.safetensors")]) == 2  # exists
    assert cli_main(["export", "hub", "--checkpoint", str(tmp_path / "tiny.safetensors"), "-o",
                     str(tmp_path / "hub"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model = _create(tmp_path / "hub")
    assert model.pretrained_cfg["architecture"] == "AudioCLIP-tiny"
    assert cli_main(["export", "hub", "--checkpoint", str(pt), "-o", str(tmp_path / "hub")]) == 2  # earlier export


def test_onnxruntime_backend_on_the_command_line(tmp_path):
    """classify/embed/similarity with --backend onnxruntime give the PyTorch backend's answers."""
    import json
    import subprocess
    import sys

    import numpy as np
    import pytest
    import soundfile as sf

    pytest.importorskip("onnxruntime", reason="the ONNX backend needs audioclip[onnx]")
    from audioclip import create_model as _create, save_model as _save
    from audioclip.cli import main as cli_main

    pt = _save(_create("AudioCLIP-tiny"), tmp_path / "tiny.pt")
    rng = np.random.default_rng(0)
    for i in range(2):
        sf.write(tmp_path / f"c{i}.wav", (0.1 * rng.standard_normal((44100 * (i + 1), 1))).astype(np.float32), 44100)
    cache = tmp_path / "cache"

    def classify(*extra):
        run = subprocess.run([sys.executable, "-m", "audioclip", "classify", str(tmp_path / "c1.wav"), "--labels",
                              "dog,rain,siren", "--json", "--checkpoint", str(pt), "--cache-dir", str(cache), "-q",
                              *extra], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        return {x["label"]: x["probability"] for x in json.loads(run.stdout)["labels"]}

    torch_probs = classify()
    onnx_probs = classify("--backend", "onnxruntime")  # exports once into the cache folder
    assert list((cache / "onnx").iterdir())
    for label, p in torch_probs.items():
        assert abs(onnx_probs[label] - p) < 1e-4
    folder = next(p for p in (cache / "onnx").iterdir() if p.is_dir())
    assert classify("--backend", "onnxruntime", "--onnx-dir", str(folder)).keys() == torch_probs.keys()
    assert cli_main(["classify", str(tmp_path / "c1.wav"), "--labels", "a,b", "--onnx-dir", str(folder)]) == 2
    assert cli_main(["classify", str(tmp_path / "c1.wav"), "--labels", "a,b", "--backend", "onnxruntime",
                     "--onnx-dir", str(tmp_path)]) == 2
    # the export records each graph's sha256; a graph swapped in is refused in one line
    import hashlib
    import shutil

    meta = json.loads((folder / "audioclip-onnx.json").read_text())
    assert meta["sha256"] == {m: hashlib.sha256((folder / f"{m}.onnx").read_bytes()).hexdigest()
                              for m in ("audio", "image", "text")}
    swapped = tmp_path / "swapped"
    shutil.copytree(folder, swapped)
    shutil.copyfile(folder / "image.onnx", swapped / "audio.onnx")
    run = subprocess.run([sys.executable, "-m", "audioclip", "classify", str(tmp_path / "c1.wav"), "--labels",
                          "dog,rain", "--backend", "onnxruntime", "--onnx-dir", str(swapped)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert "swapped/audio.onnx: not the graph this export wrote" in run.stderr


def test_export_onnx_quiet_prints_nothing_of_the_exporters(tmp_path, monkeypatch, capsys):
    """-q: neither the optimizer's logged notes nor what an exporter prints reach the terminal."""
    import logging

    import pytest

    pytest.importorskip("onnxscript", reason="export onnx needs audioclip[onnx]")
    import audioclip.export.onnx as onnx_export
    from audioclip.cli import main as cli_main

    def chatty_export(model, out, **kwargs):  # what torch.onnx.export and onnxscript's optimizer say while exporting
        logging.getLogger("onnxscript.optimizer._constant_folding").warning(
            "Skipping constant folding for op %s with multiple outputs.", "Split")
        print("Applied 3 of general pattern rewrite rules.")
        out.mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(onnx_export, "export_onnx", chatty_export)
    assert cli_main(["export", "onnx", "--checkpoint", "AudioCLIP-tiny", "-o", str(tmp_path / "onnx"), "-q"]) == 0
    out, err = capsys.readouterr()
    # only the command's own warning that an architecture's weights are random; nothing of the exporters
    assert out == "" and all("has random weights" in line for line in err.splitlines()), err
    assert logging.getLogger("onnxscript").level == logging.NOTSET  # left as it was
