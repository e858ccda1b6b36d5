"""The atomic writer, and every output of the package going through it with the umask's permissions."""

import json
import os
import stat

import numpy as np
import pytest
import torch

from audioclip import io as aio
from audioclip.io import atomic_path, atomic_write, commit_file, current_umask, write_bytes_atomic, write_text_atomic

pytestmark = pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    """Run the test under this umask; yields the mode a new file should get."""
    old = os.umask(request.param)
    try:
        yield 0o666 & ~request.param
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def leftovers(folder) -> list[str]:
    """Temporary files (hidden ``*.tmp``) anywhere under ``folder``."""
    return sorted(str(p) for p in folder.rglob(".*.tmp"))


# -- the writer ----------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o027])
def test_current_umask(mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        assert os.umask(mask) == mask  # and left as it was
    finally:
        os.umask(old)


def test_current_umask_without_proc(umask, monkeypatch):
    real_open = open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
    assert 0o666 & ~current_umask() == umask
    assert 0o666 & ~current_umask() == umask  # reading it set it back


def test_atomic_write_bytes_and_text(tmp_path, umask):
    target = tmp_path / "new" / "folder" / "out.bin"  # missing folders are created
    with atomic_write(target) as f:
        f.write(b"\x00\x01binary")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_bytes() == b"\x00\x01binary"
    assert mode(target) == umask
    text = tmp_path / "out.csv"
    with atomic_write(text, "w", encoding="utf-8", newline="") as f:
        f.write("a,b\r\nünï\r\n")
    assert text.read_bytes() == "a,b\r\nünï\r\n".encode()
    assert mode(text) == umask
    assert leftovers(tmp_path) == []


def test_helpers_write_what_path_methods_write(tmp_path, umask):
    assert write_text_atomic(tmp_path / "a.txt", "x\ny\n", encoding="utf-8") == tmp_path / "a.txt"
    (tmp_path / "b.txt").write_text("x\ny\n", encoding="utf-8")
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()
    write_bytes_atomic(tmp_path / "c.bin", b"abc")
    assert (tmp_path / "c.bin").read_bytes() == b"abc"
    assert {mode(p) for p in tmp_path.iterdir()} == {umask}


def test_replacing_keeps_nothing_of_the_old_file(tmp_path, umask):
    target = tmp_path / "out.txt"
    target.write_text("a much longer old content\n")
    os.chmod(target, 0o600)
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert mode(target) == umask  # a new file, with the umask's permissions


class Boom(Exception):
    pass


@pytest.mark.parametrize("existing", [True, False])
def test_failure_keeps_the_old_content_and_no_temp_file(tmp_path, existing):
    target = tmp_path / "out.bin"
    if existing:
        target.write_bytes(b"old")
    with pytest.raises(Boom):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            raise Boom
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise Boom
    with pytest.raises(KeyboardInterrupt):  # not only Exceptions
        with atomic_write(target, "w") as f:
            raise KeyboardInterrupt
    assert (target.read_bytes() == b"old") if existing else not target.exists()
    assert leftovers(tmp_path) == []


def test_atomic_path_for_libraries(tmp_path, umask):
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = tmp_path / "table.parquet"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".table.parquet.") and tmp.name.endswith(".tmp")
        pq.write_table(pa.table({"x": [1, 2, 3]}), tmp)
    assert pq.read_table(target)["x"].to_pylist() == [1, 2, 3]
    assert mode(target) == umask
    assert leftovers(tmp_path) == []


def test_a_failed_rename_removes_the_temp_file(tmp_path):
    target = tmp_path / "a-folder"
    (target / "inside").mkdir(parents=True)  # os.replace cannot put a file over a non-empty folder
    with pytest.raises(OSError):
        write_bytes_atomic(target, b"x")
    assert (target / "inside").is_dir()
    assert leftovers(tmp_path) == []


def test_commit_file(tmp_path, umask):
    part = tmp_path / "w.pt.part"
    part.write_bytes(b"weights")
    os.chmod(part, 0o600)
    commit_file(part, tmp_path / "w.pt")
    assert not part.exists() and (tmp_path / "w.pt").read_bytes() == b"weights"
    assert mode(tmp_path / "w.pt") == umask


def test_bad_modes():
    with pytest.raises(ValueError, match="mode"):
        with atomic_write("x", "a"):
            pass
    with pytest.raises(ValueError, match="text mode"):
        with atomic_write("x", "wb", encoding="utf-8"):
            pass


def test_io_imports_the_standard_library_and_filelock_only():
    """Everything imports io.py: at import it needs the standard library; the locks import filelock when taken."""
    import ast
    import sys

    tree = ast.parse(open(aio.__file__, encoding="utf-8").read())

    def imported(nodes) -> set[str]:
        names = {a.name.split(".")[0] for n in nodes if isinstance(n, ast.Import) for a in n.names}
        return names | {n.module.split(".")[0] for n in nodes if isinstance(n, ast.ImportFrom) and n.level == 0}

    third_party = {n for n in imported(ast.walk(tree)) if n not in sys.stdlib_module_names and n != "__future__"}
    assert third_party <= {"filelock"}, third_party
    assert "filelock" not in imported(tree.body)  # only inside the lock functions
    # of the package itself, only the error base below it
    relative = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert relative <= {"errors"}, relative


# -- every output of the package -----------------------------------------------------------


def test_checkpoint_files(tmp_path, umask, server):
    from audioclip.checkpoints import download, load_state_dict, save_state_dict
    from audioclip.train.checkpoint import load_checkpoint, save_checkpoint

    weights = {"w": torch.arange(6.0).view(2, 3)}
    save_state_dict(weights, tmp_path / "weights" / "model.pt")
    assert torch.equal(load_state_dict(tmp_path / "weights" / "model.pt")["w"], weights["w"])
    save_checkpoint({"epoch": 3, "model": weights}, tmp_path / "run" / "last.pt")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 3
    (server.root / "served.pt").write_bytes(b"0123456789")
    download(f"{server.url}/served.pt", tmp_path / "cache" / "served.pt", size=10, progress=False)
    for path in ("weights/model.pt", "run/last.pt", "cache/served.pt"):
        assert mode(tmp_path / path) == umask, path
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", ["parquet", "npy", "jsonl"])
def test_embedding_outputs(tmp_path, umask, fmt):
    from audioclip.embeddings_io import EmbeddingWriter, read_embeddings
    from audioclip.inference import Embedding, FileResult

    out = tmp_path / f"emb.{fmt}"
    writer = EmbeddingWriter(out, "ckpt@0", part_size=1)
    for name in ("b.wav", "a.wav"):
        vector = torch.nn.functional.normalize(torch.randn(8), dim=0)
        writer.add(FileResult(name, "audio", [Embedding("audio", "pooled", 0.0, 1.0, vector)]))
    parts = sorted(writer.parts.iterdir())
    assert len(parts) == 2 and {mode(p) for p in parts} == {umask}
    assert writer.finalize() == 2
    assert read_embeddings(out)["path"].to_pylist() == ["a.wav", "b.wav"]
    written = [out] + ([out.with_name(out.name + ".rows.jsonl")] if fmt == "npy" else [])
    assert all(p.is_file() for p in written)
    assert {mode(p) for p in written} == {umask}
    assert leftovers(tmp_path) == []


def test_evaluation_embedding_store(tmp_path, umask):
    from audioclip.evaluate.embed import EmbeddingStore

    store = EmbeddingStore(tmp_path / "store")
    path = store.path("ckpt@0", "esc50-x", "audio", "conv")
    store.save(path, {"a": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}, {"checkpoint": "ckpt@0"})
    assert set(store.load(path)) == {"a", "b"}
    assert json.loads(path.with_suffix(".json").read_text())["count"] == 2
    assert mode(path) == umask and mode(path.with_suffix(".json")) == umask
    assert leftovers(tmp_path) == []


def test_decoded_audio_cache(tmp_path, umask):
    import soundfile

    from audioclip.data import AudioCache
    from audioclip.media import MediaError

    soundfile.write(tmp_path / "tone.wav", np.sin(np.arange(4410) / 10.0).astype(np.float32), 44100)
    (tmp_path / "broken.wav").write_bytes(b"RIFF but not really audio")
    cache = AudioCache(tmp_path / "cache")
    wave = cache.load(tmp_path / "tone.wav")
    with pytest.raises(MediaError):
        cache.load(tmp_path / "broken.wav")
    entries = sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert sorted(p.suffix for p in entries) == [".bad", ".npy"]
    assert {mode(p) for p in entries} == {umask}
    assert torch.equal(AudioCache(tmp_path / "cache").load(tmp_path / "tone.wav"), wave)  # read back, not decoded
    assert leftovers(tmp_path) == []


def test_evaluation_reports_and_plots(tmp_path, umask):
    from audioclip.evaluate.collect import collect
    from audioclip.evaluate.datasets import EvalSet
    from audioclip.evaluate.report import write_outputs
    from audioclip.evaluate.protocols import Report

    data = EvalSet("esc50", "ESC-50", str(tmp_path), [], ["dog", "rain"])
    report = Report("zeroshot", data, "ckpt.pt", "ckpt@0", None, ["{}"])
    report.add("audio", "accuracy", 0.5, n=2)
    report.per_class["audio"] = {"metric": "accuracy", "values": [1.0, 0.0], "counts": [1, 1]}
    report.confusion["audio"] = np.array([[1, 0], [1, 0]])
    written = write_outputs(report, tmp_path / "run", plots=True)
    assert {p.suffix for p in written} == {".txt", ".csv", ".png", ".json"}
    collect([tmp_path / "run"], output=tmp_path / "summary")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == len(written) + 2
    assert {mode(p) for p in files} == {umask}
    assert (tmp_path / "run" / "confusion_audio.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert leftovers(tmp_path) == []


def test_index_metadata(tmp_path, umask):
    from audioclip.index.lance import LanceStore

    store = LanceStore(tmp_path / "lib.lance", create=True)
    store.write_meta({"checkpoint": "ckpt@0", "dim": 8})
    assert store.read_meta() == {"checkpoint": "ckpt@0", "dim": 8}
    assert mode(tmp_path / "lib.lance" / LanceStore.META) == umask
    assert leftovers(tmp_path) == []


def test_training_shards(tmp_path, umask):
    import soundfile

    from audioclip.data import AudioCache, write_shards
    from audioclip.data.cliplist import Clip

    clips = []
    for i in range(5):
        path = tmp_path / "src" / f"{i}.wav"
        path.parent.mkdir(exist_ok=True)
        soundfile.write(path, np.sin(np.arange(441 * (i + 1)) / (5.0 + i)).astype(np.float32), 44100)
        clips.append(Clip(str(path), ("x",), (0,)))
    cache = AudioCache(tmp_path / "cache")
    entry = write_shards(clips, tmp_path / "shards", "train", cache, max_count=2)
    assert entry["shards"] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"] and entry["count"] == 5
    assert {mode(tmp_path / "shards" / s) for s in entry["shards"]} == {umask}

    class Failing(AudioCache):
        def load(self, path):
            if path.endswith("3.wav"):
                raise Boom
            return super().load(path)

    with pytest.raises(Boom):  # fails while the second shard is being written
        write_shards(clips, tmp_path / "again", "train", Failing(tmp_path / "cache"), max_count=2)
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["train-000000.tar"]  # no torn shard
    assert leftovers(tmp_path) == []


# -- bounded reads of files handed to the package ---------------------------------------------


def test_read_bounded_refuses_special_large_and_missing_files(tmp_path):
    from audioclip.io import FileReadError, read_bytes_bounded, read_text_bounded

    text = tmp_path / "labels.txt"
    text.write_text("\ufeffdog\ncat\n", encoding="utf-8")
    assert read_text_bounded(text, 100, what="labels file") == "dog\ncat\n"
    assert read_bytes_bounded(text, 100) == text.read_bytes()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = {
        "/dev/zero": "not a regular file (a character device)",
        str(tmp_path): "not a regular file (a folder)",
        str(fifo): "not a regular file (a FIFO)",  # refused at once, never blocks
        str(tmp_path / "missing"): "cannot open the labels file",
    }
    for path, problem in cases.items():
        with pytest.raises(FileReadError) as info:
            read_text_bounded(path, 100, what="labels file")
        message = str(info.value)
        assert message.startswith(f"{path}: ") and problem in message and "\n" not in message
    with pytest.raises(FileReadError, match="more than the 3 bytes allowed"):
        read_text_bounded(text, 3, what="labels file")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe dog")
    with pytest.raises(FileReadError, match="not utf-8 text"):
        read_text_bounded(tmp_path / "bad.txt", 100)


# -- lock files: never through a link, regular files only ---------------------------------------------


@pytest.mark.parametrize("planted", ["link to a file", "dangling link", "fifo", "folder"])
def test_a_lock_file_is_never_reached_through_a_link_or_a_special_file(tmp_path, planted):
    from audioclip.io import LockFileError, exclusive_lock, held_by, lock_holder

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious content\n")
    lock = tmp_path / ".out.parquet.lock"
    if planted == "link to a file":
        lock.symlink_to(victim)
    elif planted == "dangling link":
        lock.symlink_to(tmp_path / "created-by-the-lock")
    elif planted == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    kind = {"fifo": "a FIFO", "folder": "a folder"}.get(planted, "a symbolic link")
    for attempt in (lambda: exclusive_lock(lock).__enter__(), lambda: held_by(lock)):
        with pytest.raises(LockFileError) as info:
            attempt()
        message = str(info.value)
        assert message.startswith(f"{lock}: the lock file is {kind}, not a regular file") and "\n" not in message
    assert lock_holder(lock) is None
    assert victim.read_bytes() == b"precious content\n"  # the link's target is untouched
    assert not (tmp_path / "created-by-the-lock").exists()  # a dangling link creates nothing
    assert os.path.lexists(lock)  # what was planted stays as it was


def test_a_stale_lock_file_is_taken_over_and_its_holder_line_replaced(tmp_path):
    """A lock file left by a killed job (a regular file nobody holds) is reused; the holder line is ours alone."""
    from audioclip.io import LockedError, exclusive_lock, held_by

    lock = tmp_path / ".out.parquet.lock"
    lock.write_text("process 1 (a much longer command line of a job that was killed with -9 long ago), since then\n")
    assert held_by(lock) is None
    with exclusive_lock(lock):
        text = lock.read_text()
        assert text.startswith(f"process {os.getpid()} (") and text.count("\n") == 1
        assert held_by(lock) == text.strip()
        with pytest.raises(LockedError, match=f"locked by process {os.getpid()}"):
            with exclusive_lock(lock):
                pass
    assert not lock.exists()
