"""``embed --engine ray``: the same job on Ray Data (one local Ray instance for the module) equals plain ``embed``.

Real ESC-10 clips from the project's shared data and a tiny model. Skipped
with a reason when the ``ray`` extra is not installed (``.[test]`` installs it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from PIL import Image

import audioclip
from audioclip.embeddings_io import read_embeddings
from audioclip.engines import embed_to

from conftest import SHARED_DATA

ESC = SHARED_DATA / "esc50" / "audio"
SR = 44100
RAY_MISSING = 'the ray extra is not installed: pip install "audioclip[ray]"'


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the whole module (start-up takes seconds); the engine reuses it."""
    ray = pytest.importorskip("ray", reason=RAY_MISSING)
    started = not ray.is_initialized()
    if started:
        import logging

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return str(audioclip.save_model(audioclip.create_model("AudioCLIP-tiny"),
                                    tmp_path_factory.mktemp("ckpt") / "tiny.pt"))


@pytest.fixture(scope="module")
def model(checkpoint):
    return audioclip.create_model(checkpoint, audio_mode="default")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Six real clips, a 12 s clip (three windows), a photo, and two bad files."""
    if not ESC.is_dir():
        pytest.skip(f"the shared ESC-10 clips are not at {ESC}")
    root = tmp_path_factory.mktemp("inputs")
    for clip in sorted(ESC.glob("*.flac"))[:6]:
        shutil.copy(clip, root / clip.name)
    rng = np.random.default_rng(0)
    sf.write(root / "long.wav", (0.1 * rng.standard_normal((SR * 12, 1))).astype(np.float32), SR)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(root / "photo.jpg")
    (root / "broken.wav").write_text("not audio")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


@pytest.fixture(scope="module")
def plain(model, inputs, tmp_path_factory, local_ray):
    out = tmp_path_factory.mktemp("plain") / "emb.parquet"
    return embed_to(model, [inputs], out), read_embeddings(out)


def _same(got, want) -> None:
    assert got.table.drop_columns(["embedding"]).equals(want.table.drop_columns(["embedding"]))  # rows, keys
    np.testing.assert_allclose(got.matrix(), want.matrix(), atol=1e-5)


def test_ray_equals_plain_on_real_clips(model, inputs, plain, tmp_path):
    plain_report, want = plain
    out = tmp_path / "emb.parquet"
    seen = []
    report = embed_to(model, [inputs], out, engine="ray", files_per_part=3,
                      on_result=lambda path, error: seen.append((path, error)))
    got = read_embeddings(out)
    _same(got, want)
    assert (report.done, report.skipped, report.rows) == (plain_report.done, 0, plain_report.rows) == (8, 0, 11)
    assert report.failed == plain_report.failed  # the same files, the same reasons
    assert sorted(Path(p).name for p, _ in report.failed) == ["broken.png", "broken.wav"]
    assert sorted(p for p, _ in seen) == sorted(str(p) for p in inputs.iterdir())
    assert {k: v for k, v in got.settings.items() if k not in ("engine", "created")} == \
        {k: v for k, v in want.settings.items() if k not in ("engine", "created")}
    assert got.settings["engine"] == "ray" and not Path(f"{out}.parts").exists()


def test_ray_crash_and_rerun_loses_nothing_and_duplicates_nothing(model, inputs, plain, tmp_path):
    out = tmp_path / "emb.parquet"
    parts = Path(f"{out}.parts")
    finished = []

    class Crash(Exception):
        pass

    def crash(path, error):
        finished.append(path)
        if len(finished) == 4:  # the driver dies with work in flight
            raise Crash

    with pytest.raises(Crash):
        embed_to(model, [inputs], out, engine="ray", files_per_part=2, on_result=crash)
    assert not out.exists()
    kept = {p for f in parts.glob("part-*.parquet") for p in pq.read_table(f)["path"].to_pylist()}
    assert kept, "the parts written before the crash stay"
    (parts / ".part-killed.parquet.x1y2.tmp").write_bytes(b"PAR1 torn")  # a writer killed mid-part

    report = embed_to(model, [inputs], out, engine="ray", files_per_part=2)
    assert report.skipped >= len(kept) and report.done + report.skipped == 8
    _same(read_embeddings(out), plain[1])  # every file once, vectors as the plain engine's
    again = embed_to(model, [inputs], out, engine="ray")
    assert (again.done, again.skipped, again.rows) == (0, 8, 11)  # nothing left: Ray is not even asked


def test_a_plain_output_is_resumed_by_ray(model, inputs, plain, tmp_path):
    out = tmp_path / "emb.npy"
    clips = sorted(str(p) for p in inputs.iterdir())
    embed_to(model, clips[:4], out)
    report = embed_to(model, clips, out, engine="ray")
    assert report.skipped == 4 - sum(1 for p in clips[:4] if "broken" in p)
    _same(read_embeddings(out), plain[1])


# -- the command line ------------------------------------------------------------------------------------


def _cli(*args):
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from audioclip.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue()


def test_cli_engine_ray_equals_plain(checkpoint, inputs, plain, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOCLIP_OFFLINE", "1")
    out = tmp_path / "emb.parquet"
    code, err = _cli("embed", inputs, "-o", out, "--engine", "ray", "--concurrency", "1", "--num-gpus", "0",
                     "--flush-every", "4", "--checkpoint", checkpoint, "--device", "cpu")
    assert code == 3, err  # two bad files: reported, the rest written
    assert "8 file(s) embedded (8 now, 0 before), 2 failed" in err and "11 rows" in err
    assert err.count("audioclip: skipped ") == 2 and "broken.png" in err and "Traceback" not in err
    _same(read_embeddings(out), plain[1])
    assert read_embeddings(out).settings["engine"] == "ray"


def test_cli_ray_options_are_checked_before_the_model(checkpoint, inputs, tmp_path, monkeypatch):
    from audioclip.cli import checks as options

    monkeypatch.setattr(options, "_importable", lambda module: module != "ray")
    monkeypatch.setattr("audioclip.cli.embed.load_model", lambda args: pytest.fail("model loaded"))
    code, err = _cli("embed", inputs, "-o", tmp_path / "e.parquet", "--engine", "ray", "--checkpoint", checkpoint)
    assert code == 2 and 'pip install "audioclip[ray]"' in err and len(err.strip().splitlines()) == 1
    code, err = _cli("embed", inputs, "-o", tmp_path / "e.parquet", "--concurrency", "2", "--checkpoint", checkpoint)
    assert code == 2 and "--concurrency goes with --engine ray" in err
    code, err = _cli("embed", inputs, "-o", tmp_path / "e.parquet", "--engine", "spark", "--checkpoint", checkpoint)
    assert code == 2 and "--engine" in err
