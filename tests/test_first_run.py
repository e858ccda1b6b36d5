"""Trying the package out offline: architecture names (seeded random weights) everywhere a checkpoint goes,
and indexing an embed output without embedding it again.

Every command here runs with ``--checkpoint AudioCLIP-tiny``: nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import audioclip
from audioclip.factory import RandomWeightsWarning
from audioclip.index import Index

pytestmark = pytest.mark.filterwarnings("ignore::audioclip.factory.RandomWeightsWarning")  # expected here

SR = 44100
TINY = ["--checkpoint", "AudioCLIP-tiny", "--device", "cpu"]
ENV = {**os.environ, "AUDIOCLIP_OFFLINE": "1"}


def cli(*args, check: int | None = None) -> subprocess.CompletedProcess:
    """The command line in this process (as the other tests run it), offline; stdout and stderr captured."""
    from audioclip import cli as command_line

    out, err = io.StringIO(), io.StringIO()
    saved = os.environ.get("AUDIOCLIP_OFFLINE")
    os.environ["AUDIOCLIP_OFFLINE"] = "1"
    try:
        with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("always")  # each run says its weights are random, as a process would
            try:
                code = command_line.main([str(a) for a in args])
            except SystemExit as exit_:
                code = exit_.code
    finally:
        if saved is None:
            del os.environ["AUDIOCLIP_OFFLINE"]
        else:
            os.environ["AUDIOCLIP_OFFLINE"] = saved
    proc = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    if check is not None:
        assert proc.returncode == check, proc.stderr
    return proc


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((round(seconds * SR), 1))).astype(np.float32)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Sounds of one and of several windows, pictures, a video when FFmpeg can write one, and a text file."""
    root = tmp_path_factory.mktemp("library")
    (root / "sounds").mkdir()
    (root / "pictures").mkdir()
    sf.write(root / "sounds" / "short.wav", noise(2.0, 1), SR)
    sf.write(root / "sounds" / "long.flac", noise(12.0, 2), SR)
    for i, name in enumerate(("a.png", "b.jpg")):
        pixels = (np.random.default_rng(3 + i).random((40, 56, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "pictures" / name)
    (root / "notes.txt").write_text("not media")
    try:
        from media_make import grey_levels, write_video

        write_video(root / "clip.mp4", grey_levels(20), fps=10)
    except pytest.skip.Exception:  # FFmpeg without the encoders: the rest still covers windows and pictures
        pass
    return root


# -- seeded random weights -------------------------------------------------------------------------------

_PROBE = """
import json, sys, warnings
import torch, audioclip
warnings.simplefilter("ignore")
model = audioclip.create_model("AudioCLIP-tiny")
with torch.inference_mode():
    text = model.encode_text(["a dog barking"])[0]
    audio = model.encode_audio(torch.linspace(-0.5, 0.5, 44100)[None])[0]
print(json.dumps({"id": audioclip.checkpoint_id(model), "text": text.tolist(), "audio": audio.tolist()}))
"""


def test_an_architecture_has_the_same_random_weights_in_every_process():
    runs = [json.loads(subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                                      env=ENV).stdout) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0]["id"].startswith("AudioCLIP-tiny@random-")


def test_seeded_weights_leave_the_callers_random_state_alone_and_say_they_are_random():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with pytest.warns(RandomWeightsWarning, match="AudioCLIP-tiny has random weights"):
        a = audioclip.create_model("AudioCLIP-tiny")
    assert torch.equal(torch.rand(3), expected)  # the caller's generator is where it was
    b = audioclip.create_model("AudioCLIP-tiny")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert audioclip.checkpoint_id(a) == audioclip.checkpoint_id(b)


def test_embed_run_twice_with_an_architecture_resumes(library, tmp_path):
    out = tmp_path / "emb.parquet"
    first = cli("embed", library, "-o", out, *TINY, check=0)
    assert "warning: AudioCLIP-tiny has random weights" in first.stderr
    again = cli("embed", library, "-o", out, *TINY, check=0)
    assert "already in" in again.stderr and "0 now" in again.stderr


# -- index, search and serve ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_index_search_and_serve_take_an_architecture(library, tmp_path):
    db = tmp_path / "lib.lance"
    cli("index", library, "--db", db, *TINY, check=0)
    described = cli("index", "--db", db, check=0).stdout
    assert "from AudioCLIP-tiny (architecture AudioCLIP-tiny)" in described
    # later commands need only --db (the index's checkpoint is the architecture); naming it is fine too
    hits = cli("search", "rain", "--db", db, "-k", "3", check=0).stdout.splitlines()
    assert len(hits) == 3
    assert cli("search", "rain", "--db", db, "-k", "3", *TINY, check=0).stdout.splitlines() == hits
    assert cli("search", "rain", "--db", db, "-k", "3", *TINY, "--audio-mode", "fused", check=0).stdout

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "audioclip", "serve", "--db", str(db), "--port", str(port),
                             *TINY], stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
            if line.startswith("serving"):
                break
        assert proc.poll() is None, proc.stderr.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/search?q=rain&k=2", timeout=60) as answer:
            assert len(json.load(answer)["results"]) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0


def test_a_standalone_classifier_is_refused_for_an_index_before_anything_is_written(library, tmp_path):
    db = tmp_path / "lib.lance"
    proc = cli("index", library, "--db", db, "--checkpoint", "ESResNeXt-fbsp-tiny", check=2)
    assert "standalone audio classifier" in proc.stderr and not db.exists()


def test_a_first_index_run_that_fails_leaves_no_empty_folder(library, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    db = tmp_path / "lib.lance"
    proc = cli("index", library, "--db", db, "--checkpoint", broken, "--device", "cpu", check=1)
    assert "Traceback" not in proc.stderr and not db.exists()


# -- index --from-embeddings ------------------------------------------------------------------------------


def _rows(db) -> dict:
    """Every row of the index, by (path, kind, start): the identity columns and the vector."""
    from audioclip.index.stores import open_store

    store = open_store(str(db))
    table = store.rows([r.file_id for r in store.files().values()]).to_pylist()
    return {(r["path"], r["kind"], r["start"]): r for r in table}


@pytest.fixture(scope="module")
def indexed(library, tmp_path_factory):
    """The library indexed from the files: the index folder."""
    db = tmp_path_factory.mktemp("direct") / "lib.lance"
    cli("index", library, "--db", db, *TINY, check=0)
    return db


def test_index_from_embeddings_gives_the_index_of_the_files(library, indexed, tmp_path):
    """Each format of an embed output, and a folder of Parquet files, gives the rows indexing the files gives."""
    import pyarrow.parquet as pq

    outputs = []
    for name in ("emb.parquet", "vectors.npy", "rows.jsonl"):  # (an .npy output has a .jsonl beside it)
        outputs.append(tmp_path / name)
        cli("embed", library, "-o", outputs[-1], *TINY, check=0)
    parts = tmp_path / "parts"  # a folder of parts: the Parquet output cut in two
    parts.mkdir()
    table = pq.read_table(outputs[0])
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), parts / "part-1.parquet")
    pq.write_table(table.slice(half), parts / "part-2.parquet")
    outputs.append(parts)

    files = len(table["path"].unique())
    direct = _rows(indexed)
    expected = [(h.path, h.start, h.score) for h in Index.open(indexed).search("a dog barking", k=10)]
    for out in outputs:
        db = tmp_path / f"from-{out.name}.lance"
        made = cli("index", "--from-embeddings", out, "--db", db, check=0)  # the output's checkpoint: tiny
        assert f"{files} added" in made.stderr, out
        taken = _rows(db)
        assert sorted(taken) == sorted(direct), out
        for key, row in direct.items():
            assert taken[key] == row, (out, key)  # every column: identity, times, and the vector itself
        assert [(h.path, h.start, h.score) for h in Index.open(db).search("a dog barking", k=10)] == expected
    again = cli("index", "--from-embeddings", outputs[0], "--db", tmp_path / "from-emb.parquet.lance", check=0)
    assert "0 added" in again.stderr and f"{files} unchanged" in again.stderr


def test_index_from_embeddings_extends_an_index_and_refuses_another_checkpoints(library, tmp_path):
    out = tmp_path / "emb.parquet"
    cli("embed", library / "sounds", "-o", out, *TINY, check=0)
    db = tmp_path / "lib.lance"
    cli("index", library / "pictures", "--db", db, *TINY, check=0)
    extended = cli("index", "--from-embeddings", out, "--db", db, check=0)
    assert "2 added" in extended.stderr and "the index has 4 file(s)" in extended.stderr

    torch.manual_seed(7)
    other = audioclip.save_model(audioclip.AudioCLIP("AudioCLIP-tiny"), tmp_path / "other.pt")
    theirs = tmp_path / "theirs.parquet"
    cli("embed", library / "sounds", "-o", theirs, "--checkpoint", other, "--device", "cpu", check=0)
    refused = cli("index", "--from-embeddings", theirs, "--db", db, check=1)
    [line] = [ln for ln in refused.stderr.splitlines() if "error" in ln]
    assert "the embeddings hold vectors of checkpoint other.pt@" in line and "AudioCLIP-tiny@random-" in line
    # a new index given another checkpoint refuses them too, and is not left behind
    fresh = tmp_path / "new.lance"
    refused = cli("index", "--from-embeddings", theirs, "--db", fresh, *TINY, check=1)
    assert "the checkpoint given is AudioCLIP-tiny@random-" in refused.stderr and not fresh.exists()
    # a checkpoint file is not known from its name: the command asks for it
    asked = cli("index", "--from-embeddings", theirs, "--db", fresh, check=1)
    assert "--checkpoint PATH" in asked.stderr
    cli("index", "--from-embeddings", theirs, "--db", fresh, "--checkpoint", other, "--device", "cpu", check=0)


def test_searching_an_embed_output_points_to_index_from_embeddings(library, tmp_path):
    out = tmp_path / "emb.parquet"
    cli("embed", library / "pictures", "-o", out, *TINY, check=0)
    proc = cli("search", "rain", "--db", out, check=2)
    assert f"audioclip index --from-embeddings {out} --db INDEX" in proc.stderr
