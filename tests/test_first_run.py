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


def cli(*args, check: int | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command line in this process (as the other tests run it), offline unless ``env`` says otherwise
    (``{"AUDIOCLIP_OFFLINE": None}`` unsets it); stdout and stderr captured."""
    from audioclip import cli as command_line

    out, err = io.StringIO(), io.StringIO()
    env = {"AUDIOCLIP_OFFLINE": "1", **(env or {})}
    saved = {name: os.environ.get(name) for name in env}
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("always")  # each run says its weights are random, as a process would
            try:
                code = command_line.main([str(a) for a in args])
            except SystemExit as exit_:
                code = exit_.code
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
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
    """Every row of the index, by (path, kind, start_s): the identity columns and the vector."""
    from audioclip.index.db import open_store

    store = open_store(str(db))
    table = store.rows([r.file_id for r in store.files().values()]).to_pylist()
    return {(r["path"], r["kind"], r["start_s"]): r for r in table}


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
            # every column equal: identity, times; the vector to float32 rounding (a window batched beside
            # other files' windows by `index` and by `embed` may differ in the last bit of a sum)
            assert {**taken[key], "vector": None} == {**row, "vector": None}, (out, key)
            np.testing.assert_allclose(taken[key]["vector"], row["vector"], rtol=0, atol=1e-6, err_msg=str(key))
        found = [(h.path, h.start, h.score) for h in Index.open(db).search("a dog barking", k=10)]
        assert [f[:2] for f in found] == [e[:2] for e in expected], out
        np.testing.assert_allclose([f[2] for f in found], [e[2] for e in expected], rtol=0, atol=1e-6)
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


# -- messages ---------------------------------------------------------------------------------------------


def test_verbose_runs_name_the_files_they_ignore(library, tmp_path):
    notes = str(library / "notes.txt")
    embedded = cli("embed", library, "-o", tmp_path / "e.parquet", "-v", *TINY, check=0)
    assert f"ignored (not a media file): {notes}" in embedded.stderr
    indexed = cli("index", library, "--db", tmp_path / "db", "-v", *TINY, check=0)
    assert f"ignored (not a media file): {notes}" in indexed.stderr
    quiet = cli("embed", library, "-o", tmp_path / "e2.parquet", *TINY, check=0)
    assert "1 non-media file(s) ignored" in quiet.stderr and notes not in quiet.stderr


def test_similarity_shows_whole_names_and_says_why_a_logit_is_missing(library, tmp_path):
    long_name = tmp_path / ("a-recording-with-a-name-longer-than-forty-characters-" + "x" * 20 + ".wav")
    long_name.write_bytes((library / "sounds" / "short.wav").read_bytes())
    proc = cli("similarity", "--audio", long_name, "--audio", library / "sounds" / "short.wav", "--text", "rain",
               *TINY, check=0)
    assert str(long_name) in proc.stdout
    [same] = [line for line in proc.stdout.splitlines() if "rain" not in line and "short.wav" in line]
    assert same.split()[-1] == "-"
    assert "'-' for two items of one modality" in proc.stderr


def test_a_failed_download_names_the_offline_try_out(library, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on: the download is refused at once
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proc = cli("download", "full", "--cache-dir", tmp_path, env={"AUDIOCLIP_OFFLINE": None,
                                                                 "AUDIOCLIP_BASE_URL": dead}, check=1)
    [line] = proc.stderr.splitlines()
    assert "cannot download" in line and "--checkpoint AudioCLIP-tiny" in line


def test_the_offline_message_names_what_made_it_offline(library, tmp_path):
    wav = library / "sounds" / "short.wav"
    by_flag = cli("classify", wav, "--labels", "dog", "--cache-dir", tmp_path, "--offline",
                  env={"AUDIOCLIP_OFFLINE": None}, check=1)
    assert "no --offline" in by_flag.stderr and "AUDIOCLIP_OFFLINE" not in by_flag.stderr
    assert "--checkpoint AudioCLIP-tiny" in by_flag.stderr
    by_env = cli("classify", wav, "--labels", "dog", "--cache-dir", tmp_path, check=1)
    assert "unset AUDIOCLIP_OFFLINE" in by_env.stderr


# -- input sizes -------------------------------------------------------------------------------------------


def test_models_expose_their_input_sizes_and_load_image_follows_the_model(library):
    tiny = audioclip.create_model("AudioCLIP-tiny")
    assert (tiny.image_size, tiny.embed_dim, tiny.sample_rate) == (64, 64, 44100)
    full = audioclip.AudioCLIP()
    assert (full.image_size, full.embed_dim, full.sample_rate) == (224, 1024, 44100)
    picture = library / "pictures" / "a.png"
    assert audioclip.load_image(picture).shape == (3, 224, 224)  # no model: the paper's size
    image = audioclip.load_image(picture, model=tiny)
    assert image.shape == (3, tiny.image_size, tiny.image_size)
    wave = audioclip.load_audio(library / "sounds" / "short.wav")
    with torch.no_grad():  # the README's example, on the tiny model
        assert tiny.encode_image(image[None]).shape == (1, 64)
        assert tiny.encode_audio(wave[None]).shape == (1, 64)
    with pytest.raises(ValueError, match=r"load_image\(path, model=model\)"):
        tiny.encode_image(audioclip.load_image(picture)[None])  # a 224 px picture for a 64 px model
    with pytest.raises(ValueError, match="takes 64-pixel pictures"):
        audioclip.load_image(picture, image_size=224, model=tiny)
    from audioclip.media import load_video_frames

    if (library / "clip.mp4").exists():
        assert load_video_frames(library / "clip.mp4", model=tiny).shape == (1, 3, 64, 64)


# -- after review ----------------------------------------------------------------------------------------


def test_a_rerun_with_nothing_new_does_not_build_the_architecture(library, tmp_path, monkeypatch):
    """An architecture's id is the one its index recorded: nothing to embed, nothing built; a query builds it."""
    db = tmp_path / "lib.lance"
    cli("index", library / "pictures", "--db", db, *TINY, check=0)
    import audioclip.factory as factory

    built = []
    real = factory.create_model
    monkeypatch.setattr(factory, "create_model", lambda *a, **k: built.append(a) or real(*a, **k))
    for named in ([], TINY):
        proc = cli("index", library / "pictures", "--db", db, *named, check=0)
        assert "0 added, 0 updated, 2 unchanged" in proc.stderr, proc.stderr
    assert built == []
    assert len(cli("search", "rain", "--db", db, "-k", "2", check=0).stdout.splitlines()) == 2
    assert built  # the query needed the model: built then, and its id checked against the index's


def test_index_from_embeddings_refuses_options_it_would_ignore_and_outputs_that_are_not_files(library, tmp_path):
    out = tmp_path / "emb.parquet"
    cli("embed", library / "pictures", "-o", out, *TINY, check=0)
    db = tmp_path / "lib.lance"
    for option in (["--prune"], ["--retry-failed"], ["--workers", "2"], ["--audio-mode", "fused"]):
        proc = cli("index", "--from-embeddings", out, "--db", db, *option, check=2)
        assert f"{option[0]} does not go with --from-embeddings" in proc.stderr
    fifo = tmp_path / "fifo.parquet"
    os.mkfifo(fifo)
    proc = cli("index", "--from-embeddings", fifo, "--db", db, check=1)  # refused at once, never blocks
    assert "not a regular file (a FIFO)" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"path": "a.wav"}\n')
    proc = cli("index", "--from-embeddings", rows, "--db", db, check=1)
    assert "a row without an embedding" in proc.stderr and "KeyError" not in proc.stderr, proc.stderr
