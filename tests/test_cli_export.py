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
