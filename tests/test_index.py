"""The search index: incremental and crash-safe indexing, search, windows, the commands.

A tiny random model embeds generated media; where a test needs to know which
vector should win, it writes rows with chosen vectors into the store directly.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch
from PIL import Image

from audioclip import AudioCLIP, create_model, save_model
from audioclip.index import Index, IndexStoreError, LanceStore, QueryError, merge_windows
from audioclip.index.search import rank
from audioclip.index.records import file_id_of, row_schema
from audioclip.index.db import open_store

SR = 44100
TINY = dict(config="AudioCLIP-tiny", device="cpu")


def noise(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((round(seconds * sr), 1))).astype(np.float32)


def picture(path, seed: int) -> None:
    Image.fromarray((np.random.default_rng(seed).random((40, 56, 3)) * 255).astype(np.uint8)).save(path)


STORES = ["lance", "milvus"]


@pytest.fixture(params=STORES)
def db(request, tmp_path) -> str:
    """Where a test's index lives: a LanceDB folder, or a Milvus Lite file (the same tests run on both)."""
    if request.param == "milvus":
        pytest.importorskip("pymilvus", reason="the Milvus store needs pymilvus (pip install 'audioclip[milvus]')")
        pytest.importorskip("milvus_lite", reason="Milvus Lite is not installed (pip install 'audioclip[milvus]')")
        return f"milvus:{tmp_path / 'lib.db'}"
    return str(tmp_path / "db")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    return str(save_model(AudioCLIP("AudioCLIP-tiny"), tmp_path_factory.mktemp("ckpt") / "tiny.pt"))


@pytest.fixture(scope="module")
def tiny(checkpoint):
    """The model of ``checkpoint``, loaded once for the module (Index.open(model=...) skips loading)."""
    return create_model(checkpoint, audio_mode="default", **TINY)


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(1)
    return str(save_model(AudioCLIP("AudioCLIP-tiny"), tmp_path_factory.mktemp("ckpt2") / "other.pt"))


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "library"
    (root / "sounds").mkdir(parents=True)
    (root / "pictures").mkdir()
    sf.write(root / "sounds" / "short.wav", noise(2.0, 1), SR)
    sf.write(root / "sounds" / "long.flac", noise(12.0, 2, 22050), 22050)
    picture(root / "pictures" / "a.png", 3)
    picture(root / "pictures" / "b.jpg", 4)
    (root / "notes.txt").write_text("not media")
    return root


def open_index(db, checkpoint, model=None, **kwargs) -> Index:
    return Index.open(db, checkpoint=checkpoint, model=model, **TINY, **kwargs)


def all_rows(db) -> pa.Table:
    """Every row of every indexed file, read through the store's interface (either store)."""
    store = open_store(db)
    return store.rows([r.file_id for r in store.files().values()])


def rows_per_file(db, pending: int = 0) -> Counter:
    """Rows per indexed file; the store holds no other rows but at most ``pending`` of a commit cut short."""
    counts = Counter(all_rows(db)["path"].to_pylist())
    stored = open_store(db).count_rows()
    assert sum(counts.values()) <= stored <= sum(counts.values()) + pending  # nothing uncommitted left behind
    return counts


def assert_no_duplicates(db) -> None:
    data = all_rows(db).select(["file_id", "kind", "start_s"]).to_pylist()
    keys = Counter((r["file_id"], r["kind"], r["start_s"]) for r in data)
    assert max(keys.values(), default=1) == 1, [k for k, n in keys.items() if n > 1]


def run_cli(*args) -> tuple[int, str, str]:
    """The command line, in this process."""
    from audioclip import cli

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


# -- windows -------------------------------------------------------------------------


def test_merge_windows_takes_the_contiguous_run_within_the_margin():
    w = [(0, 5, 0.10), (5, 10, 0.30), (10, 15, 0.29), (15, 20, 0.20), (20, 25, 0.30)]
    assert merge_windows(w, margin=0.02) == (5, 15, 0.30, 2)  # window 20-25 ties but is not adjacent
    assert merge_windows(w, margin=0.0) == (5, 10, 0.30, 1)
    assert merge_windows(w, margin=0.5) == (0, 25, 0.30, 5)
    assert merge_windows(list(reversed(w)), margin=0.02) == (5, 15, 0.30, 2)  # order does not matter
    # overlapping windows (hop < window) touch; a gap between windows breaks the run
    assert merge_windows([(0, 5, 0.5), (2.5, 7.5, 0.49), (5, 10, 0.1)], 0.02) == (0, 7.5, 0.5, 2)
    assert merge_windows([(0, 5, 0.5), (6, 11, 0.5)], 0.02) == (0, 5, 0.5, 1)
    # the end-aligned last window of a long clip overlaps the one before it
    assert merge_windows([(0, 5, 0.1), (5, 10, 0.4), (7, 12, 0.4)], 0.02) == (5, 12, 0.4, 2)
    assert merge_windows([(0, 2.3, 0.7)]) == (0, 2.3, 0.7, 1)
    with pytest.raises(ValueError):
        merge_windows([])


def test_search_reports_the_matching_window_range(db):
    """Rows with chosen vectors: the hit's range is the merged run of windows around the best."""
    dim = 8
    store = open_store(db, create=True)
    store.write_meta({"checkpoint": "test", "dim": dim})
    rng = np.random.default_rng(0)
    query = np.eye(dim, dtype=np.float32)[0]

    def near(score):  # a unit vector with this cosine to the query
        other = rng.standard_normal(dim).astype(np.float32)
        other[0] = 0
        other /= np.linalg.norm(other)
        return score * query + np.sqrt(1 - score**2) * other

    files = {
        "/lib/long.wav": [(0, 5, 0.1), (5, 10, 0.8), (10, 15, 0.79), (15, 20, 0.2), (20, 25, 0.8)],
        "/lib/other.wav": [(0, 5, 0.5)],
        "/lib/pic.png": [(None, None, 0.6)],
    }
    rows = []
    for path, windows in files.items():
        for start, end, score in windows:
            image = start is None
            rows.append(dict(file_id=file_id_of(path), path=path, source="image" if image else "audio",
                             modality="image" if image else "audio", kind="image" if image else "window",
                             start_s=start, end_s=end, duration=None if image else 25.0, size=1, mtime_ns=1,
                             hash=path, vector=near(score).tolist()))
    store.add(pa.Table.from_pylist(rows, schema=row_schema(dim)))

    hits = rank(store, query, k=10, margin=0.02)
    assert [h.path for h in hits] == ["/lib/long.wav", "/lib/pic.png", "/lib/other.wav"]
    long = hits[0]
    assert (long.start, long.end, long.windows, long.modality) == (5, 15, 2, "audio")
    assert long.score == pytest.approx(0.8, abs=1e-5)
    assert hits[1].start is None and hits[1].modality == "image" and hits[1].score == pytest.approx(0.6, abs=1e-5)
    assert [h.path for h in rank(store, query, k=1)] == ["/lib/long.wav"]
    assert [h.path for h in rank(store, query, k=5, sources=["image"])] == ["/lib/pic.png"]
    assert rank(store, query, k=5, sources=["video"]) == []


# -- indexing and searching real files ----------------------------------------------------


def test_index_then_search_by_text_sound_and_picture(checkpoint, library, db, tiny):
    index = open_index(db, checkpoint, tiny)
    report = index.add(library)
    assert sorted(os.path.basename(p) for p in report.added) == ["a.png", "b.jpg", "long.flac", "short.wav"]
    assert [os.path.basename(p) for p in report.ignored] == ["notes.txt"]
    assert report.failed == [] and report.files == 4
    assert report.rows == 1 + 3 + 1 + 1  # short: 1 window, long (12 s): 3 windows, 2 images
    assert index.meta["checkpoint"].startswith("tiny.pt@") and index.meta["window"] == 5.0

    hits = index.search("a dog barking", k=10)
    assert len(hits) == 4 and hits == sorted(hits, key=lambda h: -h.score)
    long = next(h for h in hits if h.path.endswith("long.flac"))
    assert long.source == "audio" and long.duration == pytest.approx(12.0)
    assert 0 <= long.start < long.end <= 12.0 and long.windows >= 1
    assert all(h.start is None for h in hits if h.source == "image")
    assert [h.source for h in index.search("rain", k=10, modality="image")] == ["image", "image"]
    assert len(index.search("rain", k=1)) == 1

    by_sound = index.search(audio=library / "sounds" / "short.wav", k=1, modality="audio")
    assert by_sound[0].path.endswith("short.wav") and by_sound[0].score == pytest.approx(1.0, abs=1e-4)
    by_picture = index.search(image=library / "pictures" / "b.jpg", k=1, modality="image")
    assert by_picture[0].path.endswith("b.jpg") and by_picture[0].score == pytest.approx(1.0, abs=1e-4)

    # a second handle (another process would do the same) needs no checkpoint: the index knows it
    again = Index.open(db, device="cpu")
    assert [h.path for h in again.search("a dog barking", k=10)] == [h.path for h in hits]
    assert again.get(hits[0].id).path == hits[0].path and again.get(12345) is None


def test_incremental_reindex_new_changed_deleted_touched_copied(checkpoint, library, db, tmp_path, tiny):
    index = open_index(db, checkpoint, tiny)
    index.add(library)
    long = str(library / "sounds" / "long.flac")
    before = {h.path: h for h in index.search(audio=library / "sounds" / "short.wav", k=10)}

    again = index.add(library)
    assert (again.indexed_now, again.unchanged, again.removed) == (0, 4, [])

    sf.write(library / "sounds" / "new.wav", noise(1.0, 7), SR)  # new
    sf.write(long, noise(6.0, 8, 22050), 22050)  # changed: 12 s -> 6 s
    (library / "pictures" / "a.png").unlink()  # deleted
    os.utime(library / "pictures" / "b.jpg", ns=(1, 1))  # touched: new mtime, same content
    shutil.copy(library / "sounds" / "short.wav", library / "copy.wav")  # a copy: vectors reused
    report = index.add(library)
    name = lambda paths: sorted(os.path.basename(p) for p in paths)  # noqa: E731
    assert name(report.added) == ["new.wav"]
    assert name(report.updated) == ["long.flac"]
    assert name(report.removed) == ["a.png"]
    assert name(report.touched) == ["b.jpg"]
    assert name(report.reused) == ["copy.wav"]
    assert report.unchanged == 1 and report.failed == []

    counts = rows_per_file(db)
    assert counts[long] == 2  # the changed file's old three windows are gone
    assert str(library / "pictures" / "a.png") not in counts
    assert len(counts) == 5 and sum(counts.values()) == report.rows
    assert_no_duplicates(db)
    after = {h.path: h for h in index.search(audio=library / "sounds" / "short.wav", k=10)}
    assert after[long].duration == pytest.approx(6.0) and after[long].end <= 6.0
    assert after[str(library / "copy.wav")].score == pytest.approx(1.0, abs=1e-4)
    assert before[long].duration == pytest.approx(12.0)

    # a file outside the folders indexed now is kept even if gone; --prune drops it
    other = tmp_path / "elsewhere"
    other.mkdir()
    sf.write(other / "x.wav", noise(1.0, 9), SR)
    index.add(other)
    shutil.rmtree(other)
    assert index.add(library).removed == []
    assert index.add(library, prune=True).removed == [str(other / "x.wav")]
    removed = index.remove(library / "sounds")  # on request, whether or not the files exist
    assert sorted(os.path.basename(p) for p in removed) == ["long.flac", "new.wav", "short.wav"]
    assert not any("/sounds/" in p for p in rows_per_file(db))


def test_unreadable_files_are_reported_skipped_and_retried_when_fixed(checkpoint, tmp_path, tiny):
    folder = tmp_path / "mixed"
    folder.mkdir()
    sf.write(folder / "good.wav", noise(1.0, 1), SR)
    (folder / "text.wav").write_text("this is not audio " * 20)
    (folder / "empty.flac").write_bytes(b"")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 10)
    index = open_index(tmp_path / "db", checkpoint, tiny)
    report = index.add([folder, tmp_path / "missing.wav"])
    failed = dict((os.path.basename(p), reason) for p, reason in report.failed)
    assert set(failed) == {"text.wav", "empty.flac", "broken.jpg", "missing.wav"}
    assert all(reason for reason in failed.values()) and "No such file" in failed["missing.wav"]
    assert [os.path.basename(p) for p in report.added] == ["good.wav"]

    again = index.add(folder)  # unchanged failures are not decoded again
    assert sorted(os.path.basename(p) for p, _ in again.skipped_failed) == ["broken.jpg", "empty.flac", "text.wav"]
    assert again.failed == []
    assert len(index.add(folder, retry_failed=True).failed) == 3
    sf.write(folder / "text.wav", noise(1.0, 2), SR)  # fixed
    fixed = index.add(folder)
    assert [os.path.basename(p) for p in fixed.added] == ["text.wav"] and len(fixed.skipped_failed) == 2
    assert index.stats()["failed"] == 2

    code, _, err = run_cli("index", folder, "--db", tmp_path / "db2", "--checkpoint", index.meta["checkpoint_source"],
                           "--device", "cpu")
    assert code == 3 and "skipped" in err and "broken.jpg" in err and "Traceback" not in err


def test_refuses_another_checkpoint_and_other_options(checkpoint, other_checkpoint, library, tmp_path, tiny):
    db = tmp_path / "db"
    open_index(db, checkpoint, tiny).add(library / "pictures")
    with pytest.raises(IndexStoreError, match="another checkpoint|holds vectors of checkpoint"):
        open_index(db, other_checkpoint)
    code, _, err = run_cli("search", "dog", "--db", db, "--checkpoint", other_checkpoint,
                           "--device", "cpu")
    assert code == 1 and "holds vectors of checkpoint tiny.pt@" in err and "Traceback" not in err
    code, _, err = run_cli("index", library, "--db", db, "--checkpoint", other_checkpoint,
                           "--device", "cpu")
    assert code == 1 and "other.pt@" in err
    with pytest.raises(IndexStoreError, match="window=5.0"):
        open_index(db, checkpoint, tiny).add(library, window=2.0)
    assert len(Index.open(db)) == 2  # nothing was added by the refused runs


def test_empty_index_missing_index_and_bad_queries(checkpoint, library, tmp_path, tiny):
    db = tmp_path / "db"
    (tmp_path / "nothing").mkdir()
    index = open_index(db, checkpoint, tiny)
    index.add(tmp_path / "nothing")
    assert index.search("dog") == [] and len(index) == 0
    code, _, err = run_cli("search", "dog", "--db", db, "--device", "cpu")
    assert code == 1 and "the index is empty" in err
    code, _, err = run_cli("search", "dog", "--db", tmp_path / "nope", "--device", "cpu")
    assert code == 2 and "no index here" in err
    code, _, err = run_cli("search", "--db", db)
    assert code == 2 and "exactly one query" in err

    index.add(library)
    (tmp_path / "q.txt").write_text("hello")
    with pytest.raises(QueryError, match="not a recognised audio, image or video file"):
        index.search(audio=tmp_path / "q.txt")
    with pytest.raises(QueryError, match="has no picture"):
        index.search(image=library / "sounds" / "short.wav")
    with pytest.raises(QueryError, match="no such file"):
        index.search(image=tmp_path / "absent.png")
    with pytest.raises(QueryError, match="modality"):
        index.search("dog", modality="smell")
    code, _, err = run_cli("search", "--db", db, "--audio", tmp_path / "q.txt", "--device", "cpu")
    assert code == 1 and "q.txt" in err and "not a recognised" in err and "Traceback" not in err


def test_search_command_text_and_json(checkpoint, library, tmp_path):
    import json

    db = tmp_path / "db"
    code, _, err = run_cli("index", library, "--db", db, "--checkpoint", checkpoint,
                           "--device", "cpu")
    assert code == 0 and "4 added" in err and "1 non-media" in err
    code, out, _ = run_cli("search", "a dog", "--db", db, "-k", "3", "--device", "cpu")
    assert code == 0 and len(out.splitlines()) == 3 and out.splitlines()[0].lstrip().startswith("1 ")
    code, out, _ = run_cli("search", "--db", db, "--audio", library / "sounds" / "long.flac", "--json",
                           "--modality", "audio", "--device", "cpu")
    results = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["rank"] for r in results] == [1, 2]
    assert {"path", "score", "start", "end", "windows", "source", "id", "duration"} <= set(results[0])
    code, out, _ = run_cli("index", "--db", db)
    assert code == 0 and "4 file(s) (2 audio, 2 image)" in out


def test_video_is_indexed_by_frame_and_sound(checkpoint, tmp_path, tiny):
    from media_make import grey_levels, write_video

    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "clip.mp4", grey_levels(20), fps=10)  # skips when FFmpeg lacks the encoders
    index = open_index(tmp_path / "db", checkpoint, tiny)
    assert index.add(folder).failed == []
    kinds = Counter(LanceStore(tmp_path / "db")._table("media").search().select(["kind"]).limit(None)
                    .to_arrow()["kind"].to_pylist())
    assert kinds == {"frame": 1, "window": 1}
    (hit,) = index.search("a grey picture", modality="video")
    assert hit.source == "video" and hit.path.endswith("clip.mp4")
    (by_frame,) = index.search(image=folder / "clip.mp4", modality="video")
    assert by_frame.modality == "image" and by_frame.score == pytest.approx(1.0, abs=1e-4)


# -- crashes and concurrency ----------------------------------------------------------------


def test_crash_between_delete_and_add_leaves_the_file_absent_not_doubled(checkpoint, library, db, tiny):
    index = open_index(db, checkpoint, tiny)
    index.add(library)
    long = str(library / "sounds" / "long.flac")
    sf.write(long, noise(7.0, 5, 22050), 22050)

    class Crash(Exception):
        pass

    real_add = index.store.add

    def add_then_crash(rows):
        raise Crash  # the old rows were just deleted; the new ones never arrive

    index.store.add = add_then_crash
    with pytest.raises(Crash):
        index.add(library)
    index.store.add = real_add
    assert long not in rows_per_file(db) and len(rows_per_file(db)) == 3
    report = open_index(db, checkpoint, tiny).add(library)
    assert report.added == [long]  # simply embedded again
    assert rows_per_file(db)[long] == 2
    assert_no_duplicates(db)


def test_one_writer_at_a_time(checkpoint, library, db, tiny):
    first = open_index(db, checkpoint, tiny)
    first.add(library / "pictures")
    with first._writer():
        with pytest.raises(IndexStoreError, match="another indexing job") as caught:
            Index.open(db, device="cpu").add(library)
        assert caught.value.holder.startswith(f"process {os.getpid()} (")
        # the command line: a usage error (2) in one line naming the holder, before any model is loaded
        code, _, err = run_cli("index", library, "--db", db, "--checkpoint", checkpoint, "--device", "cpu")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"another indexing job is writing to this index now (process {os.getpid()} (" in err
    assert len(Index.open(db)) == 2


def test_search_while_indexing_then_sigkill_and_resume(checkpoint, db, tmp_path, tiny):
    """A subprocess indexes (one commit per file), then it is killed; the next run embeds exactly the rest.

    On LanceDB this process searches meanwhile; Milvus Lite admits one process at a time, so there the
    subprocess is killed once its log shows that files were committed.
    """
    folder = tmp_path / "many"
    folder.mkdir()
    count = 40
    for i in range(count):
        sf.write(folder / f"c{i:02d}.wav", noise(0.5, 100 + i), SR)
    lance = not db.startswith("milvus:")
    cmd = [sys.executable, "-m", "audioclip", "index", str(folder), "--db", db, "--flush-every", "1",
           "--batch-size", "1", "--checkpoint", checkpoint, "--device", "cpu", "--verbose"]
    log_path = tmp_path / "index.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "AUDIOCLIP_OFFLINE": "1"})
    searches, seen, errors = 0, [], []
    deadline = time.time() + 150
    index = None
    try:
        while time.time() < deadline and proc.poll() is None:
            if not lance:  # with --flush-every 1, a file is committed before the next one is embedded
                if log_path.read_bytes().count(b"audioclip: embedded") >= 7:
                    break
                time.sleep(0.02)
                continue
            if index is None and not LanceStore.exists(db):
                time.sleep(0.05)
                continue
            try:
                index = index or Index.open(db, create=False, device="cpu")
                if index.store.count_rows():
                    hits = index.search(vector=np.ones(64, np.float32) / 8, k=100)
                    searches += 1
                    seen.append(len(hits))
                    for h in hits:  # every hit is a whole file: one 0.5 s window
                        assert (h.start, h.end, h.windows) == (0.0, 0.5, 1), h
                        assert h.path.startswith(str(folder))
                    if len(hits) >= 5:
                        break
            except AssertionError:
                raise
            except Exception as err:  # noqa: BLE001 (any error while searching is the failure)
                errors.append(repr(err))
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    assert not errors, errors
    if lance:
        assert searches and seen == sorted(seen), seen  # files only ever appear
    # Milvus writes a file's rows, then its marker (the commit): a kill between the two leaves that file's one
    # row unmarked, never searched, and removed when the file is added again (checked below, after the resume).
    saved = rows_per_file(db, pending=0 if lance else 1)
    assert 5 <= len(saved) < count, log_path.read_text()
    assert set(saved.values()) == {1}  # no half-written or doubled file
    assert_no_duplicates(db)

    resumed = open_index(db, checkpoint, tiny).add(folder)
    assert resumed.unchanged == len(saved) and len(resumed.added) == count - len(saved)
    final = rows_per_file(db)
    assert len(final) == count and set(final.values()) == {1}
    assert_no_duplicates(db)


def test_search_in_threads_while_adding(checkpoint, library, tmp_path, tiny):
    """Threads of one process share an Index: searches during a write see whole files only."""
    db = tmp_path / "db"
    index = open_index(db, checkpoint, tiny)
    index.add(library / "pictures")
    for i in range(8):
        sf.write(library / "sounds" / f"extra{i}.wav", noise(6.0, 50 + i), SR)
    errors, sizes = [], []
    done = threading.Event()

    def searcher():
        reader = Index.open(db, device="cpu")
        while not done.is_set():
            try:
                hits = reader.search(vector=np.ones(64, np.float32) / 8, k=50, modality="audio")
                for h in hits:  # a file's windows are all there or none: 6 s -> 2 windows
                    rows = reader.store.rows([h.id]).num_rows
                    assert rows in (1, 2, 3) and h.end <= h.duration + 1e-6 and h.windows >= 1, (h, rows)
                sizes.append(len(hits))
            except Exception as err:  # noqa: BLE001
                errors.append(repr(err))
                return

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        index.add(library, flush_every=1)
    finally:
        done.set()
        thread.join(30)
    assert not errors, errors
    assert sizes == sorted(sizes) and sizes and sizes[-1] <= 10
    assert_no_duplicates(db)


# -- identity: the resolved path, (dev, inode) -------------------------------------------------


@pytest.fixture
def model_loads(monkeypatch):
    """Counts every model load by an Index (the factory's create_model), calling the real one."""
    from audioclip import factory

    calls = []
    real = factory.create_model

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(factory, "create_model", spy)
    return calls


def test_a_file_named_two_ways_or_through_links_is_one_record(checkpoint, library, db, tmp_path, tiny,
                                                                monkeypatch):
    real = library.resolve()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)  # the whole library, through a link
    (real / "alias.wav").symlink_to(real / "sounds" / "short.wav")  # one file under a second name
    monkeypatch.chdir(tmp_path)
    index = open_index(db, checkpoint, tiny)
    report = index.add(["library", str(real / "sounds" / ".." / "sounds" / "short.wav"), "link/sounds"])
    assert sorted(report.added) == sorted(str(p) for p in (real / "sounds" / "short.wav", real / "sounds" / "long.flac",
                                                           real / "pictures" / "a.png", real / "pictures" / "b.jpg"))
    assert all(p == os.path.realpath(p) for p in rows_per_file(db))
    assert len(rows_per_file(db)) == 4

    again = index.add([tmp_path / "link", "library/../library/sounds"])  # the same files, named otherwise
    assert (again.indexed_now, again.unchanged, again.removed) == (0, 4, [])
    assert sorted(index.remove("link/sounds")) == [str(real / "sounds" / n) for n in ("long.flac", "short.wav")]
    assert sorted(rows_per_file(db)) == [str(real / "pictures" / "a.png"), str(real / "pictures" / "b.jpg")]


def test_a_folder_moved_and_linked_back_leaves_no_stale_record(checkpoint, db, tmp_path, tiny):
    """Index /data/music, move it to /mnt/music and leave a link /data/music -> /mnt/music: the next run
    reuses the vectors under the resolved names and drops the old ones (which the link still reaches)."""
    data, mnt = tmp_path.resolve() / "data", tmp_path.resolve() / "mnt"
    music = data / "music"
    music.mkdir(parents=True)
    mnt.mkdir()
    sf.write(music / "a.wav", noise(1.0, 71), SR)
    picture(music / "b.png", 72)
    (music / "bad.wav").write_bytes(b"not a sound at all")
    index = open_index(db, checkpoint, tiny)
    assert len(index.add(music).added) == 2 and index.meta["paths"] == "resolved"
    assert list(open_store(db).failures()) == [str(music / "bad.wav")]

    os.rename(music, mnt / "music")
    music.symlink_to(mnt / "music", target_is_directory=True)
    assert os.path.isfile(music / "a.wav")  # the old names still reach the files
    elsewhere = tmp_path.resolve() / "elsewhere"
    elsewhere.mkdir()
    for run in (lambda: index.add(data), lambda: index.add(elsewhere, prune=True)):
        # the parent's walk does not enter the linked folder, and --prune over another folder does not reach
        # it: the files are not found under their new names, so their records stay as they are
        assert run().removed == []
        assert sorted(rows_per_file(db)) == [str(music / n) for n in ("a.wav", "b.png")]
    report = index.add(music)
    moved = [str(mnt / "music" / n) for n in ("a.wav", "b.png")]
    assert sorted(report.reused) == moved and report.added == report.updated == []
    assert sorted(report.removed) == [str(music / n) for n in ("a.wav", "b.png")]
    assert sorted(rows_per_file(db)) == moved
    assert sorted(h.path for h in index.search(vector=np.ones(64, np.float32) / 8, k=10)) == moved
    assert list(open_store(db).failures()) == [str(mnt / "music" / "bad.wav")]  # the failure too
    assert_no_duplicates(db)
    again = index.add(music)
    assert (again.unchanged, again.indexed_now, again.removed) == (2, 0, [])


def test_a_file_reached_through_a_link_in_the_folder_stays_until_removed_by_its_path(checkpoint, db, tmp_path,
                                                                                     tiny):
    """music/link.wav -> ext/x.wav is recorded as ext/x.wav, outside the folder indexed. Nothing tells it
    from a file named directly on an earlier run, so removing the link does not drop it, not even with
    --prune (its file exists); Index.remove by its recorded path does."""
    music, ext = tmp_path.resolve() / "music", tmp_path.resolve() / "ext"
    music.mkdir()
    ext.mkdir()
    sf.write(music / "a.wav", noise(1.0, 81), SR)
    sf.write(ext / "x.wav", noise(1.5, 82), SR)
    (music / "link.wav").symlink_to(ext / "x.wav")
    index = open_index(db, checkpoint, tiny)
    assert sorted(index.add(music).added) == sorted([str(music / "a.wav"), str(ext / "x.wav")])

    (music / "link.wav").unlink()
    for prune in (False, True):
        report = index.add(music, prune=prune)
        assert (report.unchanged, report.removed) == (1, [])  # x.wav: not looked at, kept
    assert sorted(rows_per_file(db)) == sorted([str(music / "a.wav"), str(ext / "x.wav")])
    assert index.remove(music / "link.wav") == []  # the link's name: not what the index recorded
    assert index.remove(ext / "x.wav") == [str(ext / "x.wav")]
    assert sorted(rows_per_file(db)) == [str(music / "a.wav")]

    (music / "link.wav").symlink_to(ext / "x.wav")  # while the link exists, its name resolves to the file
    index.add(music)
    assert index.remove(music / "link.wav") == [str(ext / "x.wav")]
    assert index.add(music).added == [str(ext / "x.wav")]
    (music / "link.wav").unlink()
    os.remove(ext / "x.wav")  # once its file is gone too: --prune drops it (a run without looks only in music)
    assert index.add(music).removed == []
    assert index.add(music, prune=True).removed == [str(ext / "x.wav")]


def test_a_replaced_file_with_the_same_size_and_mtime_is_hashed_not_trusted(checkpoint, library, db, tiny):
    index = open_index(db, checkpoint, tiny)
    index.add(library)
    short = library / "sounds" / "short.wav"
    before = open_store(db).files()[str(short)]
    assert (before.dev, before.inode) == (os.stat(short).st_dev, os.stat(short).st_ino)
    st = os.stat(short)

    # Same bytes under a new inode, the mtime kept (a restore, a copy with -p): touched, not embedded.
    shutil.copy(short, library / "tmp")
    os.replace(library / "tmp", short)
    os.utime(short, ns=(st.st_atime_ns, st.st_mtime_ns))
    report = index.add(library)
    assert report.touched == [str(short)] and report.hashed == 1 and report.unchanged == 3
    assert open_store(db).files()[str(short)].inode == os.stat(short).st_ino != before.inode

    # Other bytes of the same size, same mtime, new inode: embedded again.
    data, sr = sf.read(short, dtype="float32")
    sf.write(library / "tmp.wav", -data, sr, subtype=sf.info(short).subtype)
    assert os.path.getsize(library / "tmp.wav") == st.st_size
    os.replace(library / "tmp.wav", short)
    os.utime(short, ns=(st.st_atime_ns, st.st_mtime_ns))
    report = index.add(library)
    assert report.updated == [str(short)] and report.unchanged == 3
    assert open_store(db).files()[str(short)].hash != before.hash
    assert_no_duplicates(db)


def _older_index(db, old_db, rename=lambda p: p, meta_drop=("image_size", "paths")) -> None:
    """A copy of the index ``db`` as an older version wrote it: no dev/inode columns, ``start``/``end`` for
    ``start_s``/``end_s``, metadata without the keys added since, and paths as ``rename`` makes them
    (unresolved ones)."""
    import json

    store = open_store(db)
    rows = store.rows([r.file_id for r in store.files().values()]).drop_columns(["dev", "inode"])
    rows = rows.rename_columns([{"start_s": "start", "end_s": "end"}.get(n, n) for n in rows.schema.names])
    paths = [rename(p) for p in rows["path"].to_pylist()]
    rows = rows.set_column(rows.schema.get_field_index("path"), "path", pa.array(paths, pa.string()))
    rows = rows.set_column(rows.schema.get_field_index("file_id"), "file_id",
                           pa.array([file_id_of(p) for p in paths], pa.int64()))
    old = LanceStore(old_db, create=True)
    meta = {k: v for k, v in store.read_meta().items() if k not in meta_drop}
    (old.path / LanceStore.META).parent.mkdir(parents=True, exist_ok=True)
    (old.path / LanceStore.META).write_text(json.dumps(meta))
    old._db.create_table("media", data=rows)
    assert "inode" not in old._table("media").schema.names


def test_an_index_without_dev_and_inode_columns_opens_searches_and_updates(checkpoint, library, tmp_path, tiny,
                                                                            model_loads):
    open_index(tmp_path / "new", checkpoint, tiny).add(library)
    old_db = tmp_path / "old"
    _older_index(tmp_path / "new", old_db, meta_drop=("image_size", "paths", "config"))

    index = Index.open(old_db, device="cpu")  # searched as it is: nothing written
    assert all(r.inode is None and r.dev is None for r in index.files()) and len(index) == 4
    hits = index.search(vector=np.ones(64, np.float32) / 8, k=10)
    assert len(hits) == 4
    assert "inode" not in LanceStore(old_db)._table("media").schema.names

    report = index.add(library)  # updated: the columns are added, each file's (dev, inode) filled in
    assert (report.unchanged, report.indexed_now, report.hashed) == (4, 0, 0)
    files = {r.path: r for r in index.files()}
    assert all((r.dev, r.inode) == (os.stat(p).st_dev, os.stat(p).st_ino) for p, r in files.items())
    assert index.meta["image_size"] == 64 and index.meta["paths"] == "resolved"
    assert len(model_loads) == 1  # once, for the picture size: neither the metadata nor a config name says it

    sf.write(library / "sounds" / "new.wav", noise(1.0, 11), SR)  # and new files get added to it
    assert [os.path.basename(p) for p in index.add(library).added] == ["new.wav"]
    assert len(model_loads) == 1 and len(rows_per_file(old_db)) == 5
    assert_no_duplicates(old_db)


def windows_of(db) -> list[tuple]:
    rows = all_rows(db)
    return sorted(zip(*(rows[n].to_pylist() for n in ("path", "kind", "start_s", "end_s"))),
                  key=lambda r: (r[0], r[1], r[2] or 0.0))


def test_an_index_with_start_and_end_columns_reads_and_writes_them(checkpoint, library, tmp_path, tiny):
    """An index written before its columns were named ``start_s``/``end_s`` keeps ``start``/``end`` on disk,
    and reads, searches and grows as one written now."""
    new = open_index(tmp_path / "new", checkpoint, tiny)
    new.add(library)
    old_db = tmp_path / "old"
    _older_index(tmp_path / "new", old_db)
    assert {"start", "end"} <= set(LanceStore(old_db)._table("media").schema.names)

    index = open_index(old_db, checkpoint, tiny)
    assert windows_of(old_db) == windows_of(tmp_path / "new")
    assert any(start for _, kind, start, _ in windows_of(old_db) if kind == "window")  # a long file's later windows
    for query in ("a dog", "rain"):
        assert [h.to_dict() for h in index.search(query, k=10)] == [h.to_dict() for h in new.search(query, k=10)]

    sf.write(library / "sounds" / "new.wav", noise(7.0, 11), SR)
    assert [os.path.basename(p) for p in index.add(library).added] == ["new.wav"]
    new.add(library)
    names = LanceStore(old_db)._table("media").schema.names
    assert {"start", "end"} <= set(names) and not {"start_s", "end_s"} & set(names)
    assert windows_of(old_db) == windows_of(tmp_path / "new")
    assert_no_duplicates(old_db)


def test_an_older_milvus_collection_with_start_and_end_fields_keeps_working(checkpoint, library, tmp_path, tiny,
                                                                           monkeypatch):
    pytest.importorskip("milvus_lite", reason="Milvus Lite is not installed (pip install 'audioclip[milvus]')")
    from audioclip.index import milvus

    db = f"milvus:{tmp_path / 'old.db'}"
    with monkeypatch.context() as patch:  # the rows collection as it was made before start_s/end_s
        patch.setattr(milvus, "_ROW_NUMBERS", ("start", "end", "duration"))
        index = open_index(db, checkpoint, tiny)
        (library / "sounds" / "long.flac").unlink()
        index.add(library)
        index.store.close()
    index = open_index(db, checkpoint, tiny)
    fields = {f["name"] for f in index.store.client.describe_collection(index.store._names["rows"])["fields"]}
    assert {"start", "end"} <= fields and "start_s" not in fields
    sf.write(library / "sounds" / "long.flac", noise(12.0, 2, 22050), 22050)
    assert [os.path.basename(p) for p in index.add(library).added] == ["long.flac"]
    long = [(start, end) for path, _, start, end in windows_of(db) if path.endswith("long.flac")]
    assert len(long) > 1 and long[0][0] == 0.0 and all(0 <= s < e <= 12.0 for s, e in long), long
    hits = index.search(vector=np.ones(64, np.float32) / 8, k=10)
    assert len(hits) == 4 and all(h.start is not None for h in hits if h.modality == "audio")
    assert_no_duplicates(db)
    index.store.close()


def test_an_index_of_unresolved_paths_moves_them_without_embedding(checkpoint, library, tmp_path, tiny,
                                                                   model_loads):
    """An older index stored paths as given: through a link, or with '..' in them. The next run records each
    file under its resolved path with its vectors copied (no model), and drops the old names."""
    real = str(library.resolve())
    link = tmp_path / "through"
    link.symlink_to(real, target_is_directory=True)
    open_index(tmp_path / "new", checkpoint, tiny).add(library)
    names = {}

    def unresolved(p):
        names[p] = (str(link / os.path.relpath(p, real)) if "sounds" in p
                    else os.path.join(real, "pictures", "..", "pictures", os.path.basename(p)))
        return names[p]

    _older_index(tmp_path / "new", tmp_path / "old", rename=unresolved, meta_drop=("paths",))
    before = {r["path"]: r["vector"] for r in all_rows(tmp_path / "old").to_pylist()}

    index = Index.open(tmp_path / "old", device="cpu")
    report = index.add([link, os.path.join(real, "pictures", "..", "pictures")])
    assert sorted(report.reused) == sorted(names) and report.added == report.updated == []
    assert model_loads == []  # nothing embedded
    after = {r["path"]: r["vector"] for r in all_rows(tmp_path / "old").to_pylist()}
    assert sorted(after) == sorted(names)  # the resolved paths, once each
    assert all(after[p] == before[names[p]] for p in names)  # the very vectors
    assert index.meta["paths"] == "resolved"
    assert_no_duplicates(tmp_path / "old")
    again = index.add(library)
    assert (again.unchanged, again.indexed_now, again.unresolved) == (4, 0, None)


# -- cost: what a re-run reads, writes and loads -------------------------------------------------


def test_no_op_and_touched_runs_load_no_model_and_write_in_one_commit(checkpoint, library, db, tmp_path, tiny,
                                                                      model_loads):
    for i in range(6):
        sf.write(library / "sounds" / f"extra{i}.wav", noise(0.5, 20 + i), SR)
    open_index(db, checkpoint, tiny).add(library)  # built with a loaded model

    index = Index.open(db, device="cpu")  # as a later `audioclip index` run opens it
    calls = Counter()
    for name in ("add", "delete_files", "update_files", "set_failures"):
        real = getattr(index.store, name)

        def spy(*args, _name=name, _real=real, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        setattr(index.store, name, spy)
    report = index.add(library)
    assert (report.unchanged, report.indexed_now, report.hashed) == (10, 0, 0) and not calls

    for path in sorted((library).rglob("*.*")):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    report = index.add(library)
    assert len(report.touched) == 10 and report.hashed == 10 and report.unchanged == 0
    assert calls == {"update_files": 1}  # one commit for all of them; no vector written
    assert model_loads == []
    assert all(r.mtime_ns == 1_000_000_000 for r in index.files())
    assert index.add(library).unchanged == 10 and model_loads == []


def test_the_checkpoint_hash_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    import hashlib

    from audioclip import checkpoints
    from audioclip.checkpoints import cache

    monkeypatch.setenv("AUDIOCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_RACY_SECONDS", 0.0)
    hashed = []
    real = cache._sha256
    monkeypatch.setattr(cache, "_sha256", lambda p: hashed.append(p) or real(p))
    path = tmp_path / "weights.pt"
    path.write_bytes(b"a" * 1000)
    first = checkpoints.file_checkpoint_id(path)
    assert first == f"weights.pt@{hashlib.sha256(b'a' * 1000).hexdigest()[:16]}" and len(hashed) == 1
    assert checkpoints.file_checkpoint_id(path) == first and len(hashed) == 1  # from the cache
    st = os.stat(path)
    path.write_bytes(b"b" * 1000)  # same size, mtime set back: the ctime still moves
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert checkpoints.file_checkpoint_id(path) == f"weights.pt@{hashlib.sha256(b'b' * 1000).hexdigest()[:16]}"
    assert len(hashed) == 2
    monkeypatch.setattr(cache, "_RACY_SECONDS", 3600.0)  # a file changed just now is not remembered
    path.write_bytes(b"c" * 1000)
    checkpoints.file_checkpoint_id(path), checkpoints.file_checkpoint_id(path)
    assert len(hashed) == 4


def test_a_no_op_index_command_loads_no_model_and_hashes_no_checkpoint(checkpoint, library, tmp_path, monkeypatch):
    from audioclip import factory
    from audioclip.checkpoints import cache

    monkeypatch.setenv("AUDIOCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_RACY_SECONDS", 0.0)
    db = tmp_path / "db"
    code, _, err = run_cli("index", library, "--db", db, "--checkpoint", checkpoint, "--device", "cpu")
    assert code == 0 and "4 added" in err

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(factory, "create_model", no_model)
    hashed = []
    monkeypatch.setattr(cache, "_sha256", lambda p: hashed.append(p) or "0" * 64)
    code, _, err = run_cli("index", library, "--db", db, "--device", "cpu")
    assert code == 0 and "4 unchanged" in err, err
    os.utime(library / "sounds" / "short.wav", ns=(5, 5))
    code, _, err = run_cli("index", library, "--db", db, "--checkpoint", checkpoint, "--device", "cpu")
    assert code == 0 and "1 touched" in err, err
    assert hashed == []


# -- an interrupted first run ----------------------------------------------------------------------

_KILL_AT = r'''
import os, signal, sys
from audioclip import cli, factory, io
from audioclip.index.lance import LanceStore

point = sys.argv[1]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)


def after(owner, name):
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        die()
        return result

    setattr(owner, name, wrapper)


if point == "model":  # while the model loads: the folder holds only the writer's lock file
    factory.create_model = die
elif point == "meta-part":  # the metadata's temporary file written, not yet renamed into place
    io._publish = die
elif point == "meta":  # right after the metadata
    after(LanceStore, "write_meta")
elif point == "create":  # the table's first write begun, nothing committed
    LanceStore._create_or_add = die
elif point == "flush":  # the first batch committed, its failures not yet
    after(LanceStore, "add")
sys.exit(cli.main(sys.argv[2:]))
'''


@pytest.mark.parametrize("point", ["model", "meta-part", "meta", "create", "flush"])
def test_a_killed_first_run_is_resumed_by_the_next(checkpoint, tmp_path, point):
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(6):
        sf.write(folder / f"c{i}.wav", noise(0.5, 60 + i), SR)
    db = tmp_path / "db"
    args = ["index", str(folder), "--db", str(db), "--checkpoint", checkpoint, "--device", "cpu",
            "--flush-every", "2"]
    proc = subprocess.run([sys.executable, "-c", _KILL_AT, point, *args], capture_output=True, text=True,
                          env={**os.environ, "AUDIOCLIP_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = sorted(p.name for p in db.iterdir())
    assert ".writer.lock" in left and (("audioclip-index.json" in left) == (point in ("meta", "create", "flush")))
    if point == "meta-part":
        assert any(name.startswith(".audioclip-index.json.") for name in left)
    if point == "flush":
        assert 0 < len(rows_per_file(db)) < 6

    code, _, err = run_cli("search", "a dog", "--db", db, "--device", "cpu")  # meanwhile: results, or one line
    if point == "flush":
        assert code == 0, err
    else:
        assert code in (1, 2) and "Traceback" not in err and len(err.strip().splitlines()) == 1, err

    code, _, err = run_cli(*args)
    assert code == 0 and "Traceback" not in err, err
    assert sorted(rows_per_file(db)) == sorted(str(p) for p in folder.iterdir())
    assert set(rows_per_file(db).values()) == {1}
    assert_no_duplicates(db)
    assert not any(p.name.startswith(".audioclip-index.json.") for p in db.iterdir())


def test_leftovers_of_an_interrupted_table_write_do_not_block_the_next_run(checkpoint, library, tmp_path):
    """What SIGKILL leaves inside LanceDB's create_table when it strikes before the commit: data files of
    the table and no version (reproduced with a real kill while writing; here, its shape on disk)."""
    for with_meta in (False, True):
        db = tmp_path / f"db{with_meta}"
        (db / "media.lance" / "data").mkdir(parents=True)
        (db / "media.lance" / "data" / ".tmpCI6Io7").write_bytes(b"\0" * 4096)
        (db / ".writer.lock").touch()
        if with_meta:
            code, _, _ = run_cli("index", library / "pictures", "--db", db, "--checkpoint", checkpoint,
                                 "--device", "cpu")
            shutil.rmtree(db / "media.lance")
            (db / "media.lance" / "data").mkdir(parents=True)
            (db / "media.lance" / "data" / "0a1b.lance").write_bytes(b"\0" * 4096)
        code, _, err = run_cli("index", library, "--db", db, "--checkpoint", checkpoint, "--device", "cpu")
        assert code == 0 and "4 added" in err, err
        assert len(rows_per_file(db)) == 4


def test_tables_with_rows_and_no_metadata_are_refused_never_cleared(checkpoint, library, tmp_path):
    """An index whose audioclip-index.json was lost: every command refuses it in one line naming the folder
    and what to do; nothing in it is removed."""
    db = tmp_path / "db"
    code, _, err = run_cli("index", library, "--db", db, "--checkpoint", checkpoint, "--device", "cpu")
    assert code == 0, err
    (db / "audioclip-index.json").unlink()
    (db / ".writer.lock").write_text("process 999999 (a killed job)\n")  # what a killed writer leaves
    (db / ".audioclip-index.json.x1y2.tmp").write_text("{")
    before = {p: p.stat().st_size for p in db.rglob("*")}
    for args in [("index", library, "--db", db, "--checkpoint", checkpoint, "--device", "cpu"),
                 ("index", library, "--db", db, "--checkpoint", checkpoint, "--device", "cpu", "--prune"),
                 ("search", "dog", "--db", db, "--device", "cpu"), ("index", "--db", db)]:
        code, _, err = run_cli(*args)
        assert code == 1 and len(err.strip().splitlines()) == 1, (args, err)
        assert (f"{db}: holds an index's tables (6 committed row(s)) but no audioclip-index.json; restore that file"
                in err and "choose a new --db" in err), err
    with pytest.raises(IndexStoreError, match="6 committed row"):
        Index.open(db)
    store = LanceStore(db.parent / "elsewhere", create=True)  # and under the writer lock, at the last moment
    store.path = db
    with pytest.raises(IndexStoreError, match="restore that file"):
        store.write_meta({"checkpoint": "x", "dim": 64})
    assert {p: p.stat().st_size for p in db.rglob("*")} == before  # nothing removed, nothing written


def test_leftovers_without_rows_are_cleared_and_an_empty_folder_is_no_index(checkpoint, library, tmp_path):
    import lancedb

    from audioclip.io import exclusive_lock

    empty = tmp_path / "empty"
    empty.mkdir()
    for create in (False, True):
        if not create:
            with pytest.raises(IndexStoreError, match=r"no index here \(build one with"):
                LanceStore(empty)
        else:
            LanceStore(empty, create=True)  # an empty folder is a fine place for a new index
    code, _, err = run_cli("search", "dog", "--db", empty, "--device", "cpu")
    assert code == 1 and "no index here (build one" in err and "interrupted" not in err, err

    # Committed tables without a row (created empty, or every row deleted), a killed writer's lock file,
    # a half-written metadata file: an interrupted first run's leftovers, which the next run clears.
    db = tmp_path / "db"
    connection = lancedb.connect(str(db))
    connection.create_table("media", schema=row_schema(64))
    failures = connection.create_table("failures", data=[{"file_id": 1, "path": "/x", "size": 1, "mtime_ns": 1,
                                                          "error": "e"}])
    failures.delete("file_id = 1")
    (db / ".audioclip-index.json.x1y2.tmp").write_text("{")
    with exclusive_lock(db / ".writer.lock"):  # a first run under way (loading its model, say)
        code, _, err = run_cli("search", "dog", "--db", db, "--device", "cpu")
        assert code == 1 and f"its first 'audioclip index' run, process {os.getpid()} (" in err, err
    (db / ".writer.lock").write_text("process 999999 (a killed job)\n")  # released with its process
    code, _, err = run_cli("search", "dog", "--db", db, "--device", "cpu")
    assert code == 1 and "was interrupted before it wrote anything; run it again" in err, err
    code, _, err = run_cli("index", library, "--db", db, "--checkpoint", checkpoint, "--device", "cpu")
    assert code == 0 and "4 added" in err, err
    assert len(rows_per_file(db)) == 4 and open_store(db).failures() == {}
    assert not (db / ".writer.lock").exists()  # the lock file goes when the lock is released
    assert not any(p.name.endswith(".tmp") for p in db.iterdir())


# -- bad input: one line, never a traceback -------------------------------------------------------


def test_bad_indexes_and_queries_are_one_line_errors(checkpoint, library, tmp_path):
    import json

    db = tmp_path / "db"
    code, _, err = run_cli("index", library / "pictures", "--db", db, "--checkpoint", checkpoint, "--device", "cpu")
    assert code == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    broken = {}
    for name, text in [("truncated", '{"checkpoint": "x'), ("list", "[1, 2]"), ("empty", ""),
                       ("no-checkpoint", json.dumps({"dim": 64}))]:
        broken[name] = tmp_path / name
        shutil.copytree(db, broken[name])
        (broken[name] / "audioclip-index.json").write_text(text)

    cases = [
        (("index", "--db", other), 1, "no index here"),
        (("index", library, "--db", other, "--checkpoint", checkpoint), 1, "not an audioclip index"),
        (("search", "dog", "--db", other), 1, "no index here"),
        (("search", "dog", "--db", tmp_path / "absent"), 2, "no index here"),
        (("search", "", "--db", db), 2, "exactly one query"),
        (("search", "   ", "--db", db), 2, "the text query is empty"),
        (("search", "dog", "--db", db, "-k", "0"), 2, "at least 1"),
        (("search", "dog", "--db", db, "-k", "-3"), 2, "at least 1"),
    ]
    for name, path in broken.items():
        cases += [(("index", "--db", path), 1, "unreadable index metadata"),
                  (("index", library, "--db", path, "--device", "cpu"), 1, "unreadable index metadata"),
                  (("search", "dog", "--db", path, "--device", "cpu"), 1, "unreadable index metadata")]
    for args, status, message in cases:
        code, _, err = run_cli(*args)
        lines = [line for line in err.splitlines() if "usage:" not in line and not line.startswith(" ")]
        assert code == status and message in err and "Traceback" not in err, (args, code, err)
        assert len([line for line in lines if "error" in line]) == 1, (args, err)


def test_a_no_op_index_process_imports_neither_torch_nor_the_model(checkpoint, library, tmp_path):
    """The start-up a no-op run pays: LanceDB and the file walk, not torch, open_clip or torchvision (seconds)."""
    db = tmp_path / "db"
    code, _, _ = run_cli("index", library, "--db", db, "--checkpoint", checkpoint, "--device", "cpu")
    assert code == 0
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "audioclip", "index", str(library), "--db",
                           str(db), "--checkpoint", checkpoint, "--device", "cpu"], capture_output=True, text=True,
                          env={**os.environ, "AUDIOCLIP_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0 and "4 unchanged" in done.stderr, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "lancedb" in imported
    assert not {"torch", "open_clip", "torchvision", "audioclip.model", "audioclip.inference"} & imported


def test_an_older_milvus_collection_without_dev_and_inode_keeps_working(checkpoint, library, tmp_path, tiny,
                                                                         monkeypatch):
    """Milvus Lite cannot add a field to a collection: an older ``files`` collection reads dev/inode as None
    and is not rewritten on every run trying to fill them in."""
    pytest.importorskip("milvus_lite", reason="Milvus Lite is not installed (pip install 'audioclip[milvus]')")
    from audioclip.index import milvus

    db = f"milvus:{tmp_path / 'old.db'}"
    with monkeypatch.context() as patch:  # collections made as before dev/inode were recorded
        patch.setattr(milvus, "_MARKER_LATER", [])
        index = open_index(db, checkpoint, tiny)
        index.add(library)
        index.store.close()
    index = Index.open(db, device="cpu")
    assert not index.store.records_inodes
    assert all(r.inode is None for r in index.files()) and len(index.search(vector=np.ones(64) / 8, k=10)) == 4
    updates = []
    real = index.store.update_files
    index.store.update_files = lambda records: updates.append(list(records)) or real(records)
    assert index.add(library).unchanged == 4 and updates == []
    os.utime(library / "pictures" / "a.png", ns=(7, 7))
    assert [os.path.basename(p) for p in index.add(library).touched] == ["a.png"]
    assert {r.path: r.mtime_ns for r in index.files()}[str(library / "pictures" / "a.png")] == 7


def test_get_file_takes_every_int64_id(checkpoint, library, db, tiny):
    index = open_index(db, checkpoint, tiny)
    index.add(library / "pictures")
    record = index.files()[0]
    assert index.get(record.file_id) == record
    for extreme in (-2**63, 2**63 - 1, 0, -1):  # the SQL parser reads -9223372036854775808 as a float
        assert index.get(extreme) is None


def test_index_remove_on_the_command_line(checkpoint, library, db, tiny, tmp_path):
    index = open_index(db, checkpoint, tiny)
    index.add(library)
    before = {r.path for r in index.files()}
    (tmp_path / "pics-link").symlink_to(library / "pictures")
    code, _, err = run_cli("index", "--db", db, "--remove", tmp_path / "pics-link")  # a link to the folder
    assert code == 0 and "2 file(s) removed" in err, err
    assert {r.path for r in Index.open(db).files()} == {p for p in before if "/pictures/" not in p}
    code, _, err = run_cli("index", "--db", db, "--remove", library / "pictures")  # nothing left there
    assert code == 1 and "0 file(s) removed" in err
    code, _, err = run_cli("index", library, "--db", db, "--remove", library / "sounds")
    assert code == 2 and "--remove goes without PATHs" in err
    code, _, err = run_cli("index", "--db", tmp_path / "nodb", "--remove", library)
    assert code == 2 and "no index here" in err


# -- hostile index folders -------------------------------------------------------------------------------------


def _cli_subprocess(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audioclip", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "AUDIOCLIP_OFFLINE": "1"})


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_in_the_ann_folder_never_hangs_search(checkpoint, library, tmp_path):
    """A FIFO at the ANN state or index file: ``search`` answers by the exact scan, with one warning line."""
    db = tmp_path / "db"
    code, _, err = run_cli("index", library, "--db", db, "--checkpoint", checkpoint, "--device", "cpu")
    assert code == 0, err
    LanceStore(db).build_ann()  # a sidecar, whatever the size
    want = _cli_subprocess("search", "a dog", "--db", db, "--device", "cpu", "--json", "--exact")
    assert want.returncode == 0, want.stderr
    generation = LanceStore(db).ann.state()["generation"]
    for name in ("state.json", f"g{generation}.index", f"g{generation}.rows.npy"):
        tampered = tmp_path / f"tampered-{name}"
        shutil.copytree(db, tampered)
        (tampered / "ann" / name).unlink()
        os.mkfifo(tampered / "ann" / name)
        try:
            run = _cli_subprocess("search", "a dog", "--db", tampered, "--device", "cpu", "--json", timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"search hangs on a FIFO at ann/{name}")
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 0 and len(lines) == 1 and "warning" in lines[0] and "FIFO" in lines[0], run.stderr
        assert [json.loads(x)["path"] for x in run.stdout.splitlines()] == \
            [json.loads(x)["path"] for x in want.stdout.splitlines()]


@pytest.mark.parametrize("change, problem", [
    ({"window": 1e-4}, "'window' is 0.0001, not 0.01 to 86400 seconds"),
    ({"hop": 10**9}, "'hop' is 1000000000"),
    ({"window": "5"}, "'window' is '5'"),
    ({"dim": 10**9}, "'dim' is 1000000000"),
    ({"image_size": 10**6}, "'image_size' is 1000000"),
    ({"mono": "yes"}, "'mono' is 'yes'"),
    ({"video_frames": ["all"]}, "'video_frames' is ['all']"),
    ({"config": {"embed_dim": 1}}, "'config' is a dict"),
    ({"checkpoint_source": 7}, "'checkpoint_source' is a int"),
])
def test_index_metadata_is_validated_on_open(checkpoint, library, tmp_path, change, problem):
    db = tmp_path / "db"
    code, _, err = run_cli("index", library / "pictures", "--db", db, "--checkpoint", checkpoint, "--device", "cpu")
    assert code == 0, err
    meta_file = db / LanceStore.META
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), **change}))
    for args in (("search", "dog", "--db", db, "--device", "cpu"), ("index", "--db", db),
                 ("search", "--audio", library / "sounds" / "short.wav", "--db", db, "--device", "cpu")):
        code, _, err = run_cli(*args)
        assert code == 1 and err.count("\n") == 1 and problem in err and str(meta_file) in err, (args, err)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_index_metadata_that_is_a_fifo_is_a_one_line_error(checkpoint, library, tmp_path):
    from test_hostile import run_with_deadline

    db = tmp_path / "db"
    code, _, err = run_cli("index", library / "pictures", "--db", db, "--checkpoint", checkpoint, "--device", "cpu")
    assert code == 0, err
    (db / LanceStore.META).unlink()
    os.mkfifo(db / LanceStore.META)
    with pytest.raises(IndexStoreError, match=r"audioclip-index.json: unreadable index metadata \(.*FIFO"):
        run_with_deadline(lambda: LanceStore(db).read_meta(), 60)


def test_an_empty_db_name_is_a_usage_error(library):
    for args in (("index", library, "--db", ""), ("index", "--db", " "), ("index", "--remove", library, "--db", ""),
                 ("search", "dog", "--db", "")):
        code, _, err = run_cli(*args)
        assert code == 2 and "--db: an empty name was given" in err and err.count("\n") == 1, (args, err)


def test_lance_errors_are_one_line_without_rust_source_paths(checkpoint, library, tmp_path):
    db = tmp_path / "db"
    code, _, err = run_cli("index", library / "pictures", "--db", db, "--checkpoint", checkpoint, "--device", "cpu")
    assert code == 0, err
    for data in (db / "media.lance" / "data").iterdir():
        data.write_bytes(b"not lance data")
    for args in (("index", "--db", db), ("search", "dog", "--db", db, "--device", "cpu", "--exact")):
        code, _, err = run_cli(*args)
        assert code == 1 and err.count("\n") == 1 and "the index's tables cannot be used" in err, (args, err)
        assert ".rs:" not in err and "/rustc/" not in err, err


def test_a_full_disk_after_the_last_commit_keeps_the_files_and_says_what_failed(checkpoint, library, tmp_path,
                                                                                 monkeypatch):
    """Every file committed, then the ANN build (or compaction) finds the disk full: exit 0 with one warning line
    (the files are indexed and searchable), never 1 as if nothing had been done."""
    import errno

    from audioclip.index.ann import AnnIndex

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LanceStore, "ANN_MIN_ROWS", 1)  # the ANN index is built after this run's commits
    monkeypatch.setattr(AnnIndex, "build", full)
    db = tmp_path / "db"
    code, _, err = run_cli("index", library, "--db", db, "--checkpoint", checkpoint, "--device", "cpu")
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert code == 0 and len(warnings) == 1, err
    assert "the files are indexed, but tidying the index afterwards failed (" in warnings[0]
    assert "No space left on device" in warnings[0] and "error" not in err, err
    assert sorted(os.path.basename(p) for p in rows_per_file(str(db))) == ["a.png", "b.jpg", "long.flac", "short.wav"]
    monkeypatch.undo()
    code, out, err = run_cli("search", "dog", "--db", db, "--device", "cpu", "--json")
    assert code == 0 and len(out.splitlines()) == 4, err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_index_metadata_naming_a_fifo_as_its_checkpoint_never_hangs(checkpoint, library, tmp_path):
    from test_hostile import run_with_deadline

    db = tmp_path / "db"
    code, _, err = run_cli("index", library / "pictures", "--db", db, "--checkpoint", checkpoint, "--device", "cpu")
    assert code == 0, err
    os.mkfifo(tmp_path / "weights.pt")
    meta_file = db / LanceStore.META
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "checkpoint_source": str(tmp_path / "weights.pt")}))
    with pytest.raises(IndexStoreError, match=r"weights.pt.* not a regular file \(a FIFO\)"):
        run_with_deadline(lambda: Index.open(db, create=False).model_id, 60)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_config_named_by_index_metadata_is_read_bounded(tmp_path):
    """The picture size is read from the index's config name without the model: a FIFO there never hangs."""
    from audioclip.index.weights import architecture_image_size
    from test_hostile import run_with_deadline

    os.mkfifo(tmp_path / "config.json")
    assert run_with_deadline(lambda: architecture_image_size(str(tmp_path / "config.json")), 60) is None
    (tmp_path / "ok.json").write_text(json.dumps({"vision_cfg": {"image_size": 96}}))
    assert architecture_image_size(str(tmp_path / "ok.json")) == 96
    assert architecture_image_size("AudioCLIP-tiny") == 64
