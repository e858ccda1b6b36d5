"""The `audioclip` command end to end, in subprocesses, with a tiny checkpoint."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from PIL import Image

from audioclip import AudioCLIP, save_model
from audioclip.cli import main
from audioclip.embeddings_io import read_embeddings

SR = 44100


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return str(save_model(AudioCLIP("AudioCLIP-tiny"), tmp_path_factory.mktemp("ckpt") / "tiny.pt"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    for i in range(6):
        sf.write(root / f"clip{i}.wav", (0.1 * rng.standard_normal((SR * 2, 1))).astype(np.float32), SR)
    Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(root / "pic.jpg")
    (root / "readme.txt").write_text("ignored")
    return root


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def cli(*args, checkpoint=None, check=None, in_process=False):
    """Run the command in a subprocess (end to end), or in this process (cheaper) when asked."""
    args = list(args)
    if checkpoint:
        args += ["--checkpoint", checkpoint, "--device", "cpu"]
    if in_process:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err), _offline():
            try:
                code = main(args)
            except SystemExit as exit_:
                code = exit_.code
        run = Run(code, out.getvalue(), err.getvalue())
    else:
        env = {**os.environ, "AUDIOCLIP_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-m", "audioclip", *args], capture_output=True, text=True,
                              env=env, timeout=300)
        run = Run(proc.returncode, proc.stdout, proc.stderr)
    if check is not None:
        assert run.returncode == check, run.stderr
    return run


@contextmanager
def _offline():
    old = os.environ.get("AUDIOCLIP_OFFLINE")
    os.environ["AUDIOCLIP_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["AUDIOCLIP_OFFLINE"]
        else:
            os.environ["AUDIOCLIP_OFFLINE"] = old


def test_help_for_every_command():
    for command in ("classify", "embed", "similarity", "checkpoints", "download"):
        proc = cli(command, "--help", check=0, in_process=True)
        assert "usage: audioclip " + command in proc.stdout


def test_classify_json(checkpoint, folder):
    proc = cli("classify", str(folder / "clip0.wav"), str(folder / "pic.jpg"), "--labels", "dog, rain,siren",
               "--top-k", "2", "--json", checkpoint=checkpoint, check=0)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["modality"] for line in lines] == ["audio", "image"]
    for line in lines:
        assert len(line["labels"]) == 2
        assert {x["label"] for x in line["labels"]} <= {"dog", "rain", "siren"}
        assert line["labels"][0]["probability"] >= line["labels"][1]["probability"]


def test_classify_with_label_and_template_files(checkpoint, folder, tmp_path):
    (tmp_path / "labels.txt").write_text("dog\nrain\n")
    (tmp_path / "templates.txt").write_text("a sound of {}\n{}\n")
    proc = cli("classify", str(folder / "clip1.wav"), "--labels-file", str(tmp_path / "labels.txt"),
               "--templates-file", str(tmp_path / "templates.txt"), checkpoint=checkpoint, check=0,
               in_process=True)
    assert "clip1.wav (audio)" in proc.stdout and "%" in proc.stdout


def test_classify_usage_and_failures(checkpoint, folder, tmp_path):
    no_labels = cli("classify", str(folder / "clip0.wav"), checkpoint=checkpoint, in_process=True)
    assert no_labels.returncode == 2
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    partial = cli("classify", str(folder / "clip0.wav"), str(bad), "--labels", "a,b", checkpoint=checkpoint)
    assert partial.returncode == 3
    assert "bad.wav" in partial.stderr and "Traceback" not in partial.stderr
    nothing = cli("classify", str(bad), "--labels", "a,b", checkpoint=checkpoint, in_process=True)
    assert nothing.returncode == 1 and "Traceback" not in nothing.stderr


def test_missing_checkpoint_offline_is_one_clear_line(folder):
    proc = cli("classify", str(folder / "clip0.wav"), "--labels", "a,b", "--checkpoint", "full", in_process=True)
    assert proc.returncode == 1
    assert "offline" in proc.stderr and "Traceback" not in proc.stderr


def test_embed_parquet_then_resume(checkpoint, folder, tmp_path):
    out = tmp_path / "emb.parquet"
    first = cli("embed", str(folder), "-o", str(out), checkpoint=checkpoint, check=0)
    assert "7 file(s) embedded" in first.stderr and "1 non-media" in first.stderr
    table = pq.read_table(out)
    assert set(table.column_names) >= {"path", "modality", "kind", "start_s", "end_s", "embedding", "checkpoint"}
    assert len(set(table["path"].to_pylist())) == 7
    # every wav: one 2 s window (shorter than 5 s: centre-padded), which is its clip: one pooled row;
    # the jpg: one image row
    assert table.num_rows == 6 + 1
    assert table.schema.metadata[b"audioclip.window_s"] == b"5.0"
    second = cli("embed", str(folder), "-o", str(out), checkpoint=checkpoint, check=0)
    assert "7 file(s) already" in second.stderr and "(0 now, 7 before)" in second.stderr
    assert pq.read_table(out).equals(table)


def test_embed_keeps_one_row_set_per_file_however_it_is_named(checkpoint, folder, tmp_path):
    clip = folder / "clip0.wav"
    (tmp_path / "link.wav").symlink_to(clip)
    (tmp_path / "dir").symlink_to(folder)
    spellings = [str(clip), os.path.relpath(clip), str(folder / ".." / folder.name / "clip0.wav"),
                 str(tmp_path / "link.wav"), str(tmp_path / "dir")]  # the last: the folder, through a link
    out = tmp_path / "emb.parquet"
    cli("embed", *spellings, "-o", str(out), checkpoint=checkpoint, check=0, in_process=True)
    paths = pq.read_table(out)["path"].to_pylist()
    assert paths.count(os.path.realpath(clip)) == 1  # a 2 s clip: one pooled row, whatever the spelling
    assert set(paths) == {os.path.realpath(p) for p in folder.iterdir() if p.suffix in (".wav", ".jpg")}
    again = cli("embed", str(tmp_path / "link.wav"), "-o", str(out), checkpoint=checkpoint, check=0, in_process=True)
    assert "(0 now, 1 before)" in again.stderr


def test_a_second_embed_job_on_one_output_exits_2_naming_the_holder(checkpoint, folder, tmp_path, monkeypatch):
    from audioclip.embeddings_io import output_lock
    from audioclip.io import exclusive_lock

    out = tmp_path / "emb.parquet"
    loads = []
    monkeypatch.setattr("audioclip.cli.embed.load_model", lambda args: loads.append(args))
    with exclusive_lock(output_lock(out)):  # another job (here: this process) writes the output
        proc = cli("embed", str(folder), "-o", str(out), checkpoint=checkpoint, in_process=True)
    assert proc.returncode == 2 and not loads and not out.exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"being written by another job now (process {os.getpid()} (" in lines[0]


def test_embed_refuses_another_checkpoints_output(checkpoint, folder, tmp_path):
    out = tmp_path / "emb.parquet"
    cli("embed", str(folder / "clip0.wav"), "-o", str(out), checkpoint=checkpoint, check=0, in_process=True)
    torch.manual_seed(1)
    other = str(save_model(AudioCLIP("AudioCLIP-tiny"), tmp_path / "other.pt"))
    proc = cli("embed", str(folder / "clip1.wav"), "-o", str(out), checkpoint=other, in_process=True)
    assert proc.returncode == 1 and "another checkpoint" in proc.stderr


def test_shards_depend_on_the_inputs_as_named_not_on_where_they_are_mounted(checkpoint, folder, tmp_path,
                                                                           monkeypatch):
    """Two machines given the same input ``data`` that is a link to a different mount on each cover every file once."""
    monkeypatch.chdir(tmp_path)  # files are sharded by name: "data/clip0.wav", not one under a random tmp folder
    for mount in ("mnt1", "mnt2"):
        (tmp_path / mount).mkdir()
        for clip in folder.glob("clip*.wav"):
            (tmp_path / mount / clip.name).write_bytes(clip.read_bytes())
        for i in range(4):  # second names of one file: it must still be in one shard only
            (tmp_path / mount / f"link{i}.wav").symlink_to("clip0.wav")
    data = tmp_path / "data"
    names = []
    for k, mount in ((1, "mnt1"), (2, "mnt2")):
        if data.is_symlink():
            data.unlink()
        data.symlink_to(tmp_path / mount)
        out = tmp_path / f"shard{k}.parquet"
        cli("embed", "data", "-o", str(out), "--shard", f"{k}/2", checkpoint=checkpoint, check=0, in_process=True)
        paths = set(pq.read_table(out)["path"].to_pylist())
        assert all(p.startswith(str(tmp_path / mount)) for p in paths)  # named by identity: the real file
        names.append({os.path.basename(p) for p in paths})
    assert names[0] and names[1] and not names[0] & names[1], names
    assert names[0] | names[1] == {p.name for p in folder.glob("clip*.wav")}


def test_shard_files_put_each_file_in_one_shard_however_many_names_it_has(tmp_path):
    from audioclip.inference import shard_files

    for i in range(20):
        (tmp_path / f"f{i:02d}.wav").write_bytes(b"x")
        for j in range(3):
            (tmp_path / f"f{i:02d}-name{j}.wav").symlink_to(f"f{i:02d}.wav")
    names = [str(p) for p in sorted(tmp_path.iterdir())]
    files = {os.path.realpath(p) for p in names}
    for count in (2, 3, 5):
        shards = [shard_files(names, k, count) for k in range(count)]
        assert sum(len(s) for s in shards) == len(files) == 20 and set().union(*shards) == files


def test_overwrite_removes_nothing_while_another_job_writes(checkpoint, folder, tmp_path):
    from audioclip.embeddings_io import EmbeddingWriter, OutputLockedError, output_lock
    from audioclip.io import exclusive_lock

    out = tmp_path / "emb.parquet"
    cli("embed", str(folder / "clip0.wav"), "-o", str(out), checkpoint=checkpoint, check=0, in_process=True)
    before = out.read_bytes()
    with exclusive_lock(output_lock(out)):  # another job holds it (a race past the early look is the same)
        with pytest.raises(OutputLockedError):
            EmbeddingWriter(out, checkpoint="c@1", overwrite=True)
        proc = cli("embed", str(folder / "clip1.wav"), "-o", str(out), "--overwrite", checkpoint=checkpoint,
                   in_process=True)
    assert proc.returncode == 2 and out.read_bytes() == before
    again = cli("embed", str(folder / "clip1.wav"), "-o", str(out), "--overwrite", checkpoint=checkpoint, check=0,
                in_process=True)
    assert "(1 now, 0 before)" in again.stderr
    assert set(pq.read_table(out)["path"].to_pylist()) == {os.path.realpath(folder / "clip1.wav")}


def test_two_shards_equal_one_run(checkpoint, folder, tmp_path):
    whole = tmp_path / "whole.parquet"
    cli("embed", str(folder), "-o", str(whole), checkpoint=checkpoint, check=0, in_process=True)
    parts = []
    for k in (1, 2):
        out = tmp_path / f"shard{k}.parquet"
        cli("embed", str(folder), "-o", str(out), "--shard", f"{k}/2", checkpoint=checkpoint, check=0,
            in_process=True)
        parts.append(pq.read_table(out))
    assert all(p.num_rows for p in parts)
    key = lambda r: (r["path"], r["kind"], r["start_s"])  # noqa: E731
    sharded = sorted((r for p in parts for r in p.to_pylist()), key=key)
    single = sorted(pq.read_table(whole).to_pylist(), key=key)
    assert [key(r) for r in sharded] == [key(r) for r in single]
    for a, b in zip(sharded, single):
        # batches are composed differently, so allow float32 rounding
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=2e-5)


@pytest.mark.parametrize("mode", ["fused", "bf16", "plain"])
def test_embed_with_another_audio_compute_mode(checkpoint, folder, tmp_path, mode):
    default, other = tmp_path / "default.jsonl", tmp_path / f"{mode}.jsonl"
    clip = str(folder / "clip0.wav")
    cli("embed", clip, "-o", str(default), checkpoint=checkpoint, check=0, in_process=True)
    cli("embed", clip, "-o", str(other), "--audio-mode", mode, checkpoint=checkpoint, check=0, in_process=True)
    want = read_embeddings(default).matrix()
    got = read_embeddings(other).matrix()
    assert got.shape == want.shape == (1, 64)  # a single-window clip: one vector
    # unit vectors: float32 paths agree to rounding, bfloat16 to its precision
    np.testing.assert_allclose(got, want, atol=3e-2 if mode == "bf16" else 1e-5)


def test_unknown_audio_mode_is_a_usage_error(checkpoint, folder, tmp_path):
    run = cli("embed", str(folder / "clip0.wav"), "-o", str(tmp_path / "e.jsonl"), "--audio-mode", "int4",
              checkpoint=checkpoint, in_process=True)
    assert run.returncode == 2 and "--audio-mode" in run.stderr


@pytest.mark.parametrize("fmt", ["npy", "jsonl"])
def test_embed_other_formats(checkpoint, folder, tmp_path, fmt):
    out = tmp_path / f"emb.{fmt}"
    cli("embed", str(folder / "clip0.wav"), str(folder / "pic.jpg"), "-o", str(out), checkpoint=checkpoint,
        check=0, in_process=True)
    table, settings = read_embeddings(out)
    assert table.num_rows == 2 and settings["checkpoint"] == table["checkpoint"][0].as_py()
    if fmt == "npy":
        assert np.load(out).shape == (2, 64)
        assert (tmp_path / "emb.npy.rows.jsonl").exists() and not (tmp_path / "emb.jsonl").exists()


def test_embed_killed_midway_loses_no_finished_work(checkpoint, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(60):
        sf.write(folder / f"c{i:02d}.wav", (0.1 * rng.standard_normal((SR, 1))).astype(np.float32), SR)
    out = tmp_path / "emb.parquet"
    cmd = [sys.executable, "-m", "audioclip", "embed", str(folder), "-o", str(out), "--flush-every", "1",
           "--batch-size", "1", "--checkpoint", checkpoint, "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "emb.parquet.parts"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("part-*.parquet"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = {p for f in parts.glob("part-*.parquet") for p in pq.read_table(f)["path"].to_pylist()}
    assert 3 <= len(saved) < 60, "the job should have been killed midway"

    resumed = cli("embed", str(folder), "-o", str(out), checkpoint=checkpoint, check=0)
    assert f"{len(saved)} file(s) already" in resumed.stderr
    table = pq.read_table(out)
    assert sorted(set(table["path"].to_pylist())) == sorted(str(p) for p in folder.iterdir())
    assert table.num_rows == 60  # one vector each (a single window is its clip), no duplicates
    assert not parts.exists()


def test_embed_reports_bad_files_and_exit_code(checkpoint, folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.wav").write_text("not audio")
    (bad / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "emb.parquet"
    proc = cli("embed", str(folder / "clip0.wav"), str(bad), "-o", str(out), checkpoint=checkpoint)
    assert proc.returncode == 3
    assert "x.wav" in proc.stderr and "y.png" in proc.stderr and "Traceback" not in proc.stderr
    assert set(pq.read_table(out)["path"].to_pylist()) == {str(folder / "clip0.wav")}
    only_bad = cli("embed", str(bad), "-o", str(tmp_path / "none.parquet"), checkpoint=checkpoint, in_process=True)
    assert only_bad.returncode == 1


def test_similarity(checkpoint, folder):
    proc = cli("similarity", "--audio", str(folder / "clip0.wav"), "--image", str(folder / "pic.jpg"),
               "--text", "a dog", "--text", "rain", checkpoint=checkpoint, check=0)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 + 6  # header + 4 choose 2 pairs
    assert "cosine" in lines[0]
    text_pair = next(line for line in lines if '"a dog"' in line and '"rain"' in line)
    assert text_pair.split()[-1] == "-"  # same modality: no logit
    assert cli("similarity", checkpoint=checkpoint, in_process=True).returncode == 2


def test_a_warning_is_one_line_too(checkpoint):
    long_text = "a dog barking " * 100  # over the 77-token context: truncated, with a warning
    proc = cli("similarity", "--text", "rain", "--text", long_text, checkpoint=checkpoint, check=0, in_process=True)
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warnings == ["audioclip similarity: warning: 1 text(s) exceed the 77-token context: #1 (302 tokens); "
                        "truncated"], proc.stderr
    assert "Traceback" not in proc.stderr and ".py" not in proc.stderr


def test_a_file_name_that_is_not_utf8_is_classified_and_embedded(checkpoint, tmp_path):
    """b'caf\\xe9.png' on disk: classify prints it and embed stores it (escaped), no UnicodeEncodeError."""
    name = os.fsdecode(b"caf\xe9.png")  # the odd byte is a surrogate in Python
    Image.new("RGB", (32, 32), "red").save(tmp_path / name, format="PNG")
    env = {**os.environ, "AUDIOCLIP_OFFLINE": "1", "PYTHONIOENCODING": "utf-8:strict"}  # a strict stdout

    def run(*args):
        return subprocess.run([sys.executable, "-m", "audioclip", *args, "--checkpoint", checkpoint, "--device", "cpu"],
                              capture_output=True, env=env, timeout=300)

    proc = run("classify", os.fsencode(tmp_path / name), "--labels", "dog,cat")
    assert proc.returncode == 0 and b"UnicodeEncodeError" not in proc.stderr, proc.stderr[-2000:]
    assert b"caf\\udce9.png (image)" in proc.stdout
    out = tmp_path / "emb.parquet"
    for now, before in ((1, 0), (0, 1)):  # the second run finds it done
        proc = run("embed", os.fsencode(tmp_path), "-o", out)
        assert proc.returncode == 0 and f"({now} now, {before} before)".encode() in proc.stderr, proc.stderr[-2000:]
    assert read_embeddings(out)["path"].to_pylist() == [str(tmp_path / "caf\\xe9.png")]
