"""Embedding outputs: the queryable schema, the run's settings, the reader, the upgrade of old files, DuckDB.

Real ESC-10 clips from the project's shared data (skipped with a reason when
absent) and a tiny model; everything runs in this process with the plain
engine (tests/test_engine_ray.py runs the same job on Ray).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from PIL import Image

import audioclip
from audioclip.embeddings_io import (
    OutputLockedError,
    check_not_locked,
    COLUMNS,
    SETTINGS,
    EmbeddingWriter,
    OutputError,
    read_embeddings,
    rows_table,
    run_settings,
    write_part,
)
from audioclip.engines import embed_to
from audioclip.inference import DecodeOptions, Embedding, FileResult

from conftest import FIXTURES, SHARED_DATA

ESC = SHARED_DATA / "esc50" / "audio"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "output-format.md"
V1 = FIXTURES / "embeddings-v1"
SR = 44100

needs_clips = pytest.mark.skipif(not ESC.is_dir(), reason=f"the shared ESC-10 clips are not at {ESC}")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    return audioclip.save_model(audioclip.create_model("AudioCLIP-tiny"), tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def model(model_file):
    return audioclip.create_model(str(model_file), audio_mode="default")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Five real clips (5 s: one window each), a 12 s clip (three windows), a photo, a bad file."""
    if not ESC.is_dir():
        pytest.skip(f"the shared ESC-10 clips are not at {ESC}")
    root = tmp_path_factory.mktemp("inputs")
    for clip in sorted(ESC.glob("*.flac"))[:5]:
        shutil.copy(clip, root / clip.name)
    rng = np.random.default_rng(0)
    sf.write(root / "long.wav", (0.1 * rng.standard_normal((SR * 12, 1))).astype(np.float32), SR)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(root / "photo.jpg")
    (root / "broken.wav").write_text("not audio")
    return root


@pytest.fixture(scope="module")
def parquet(model, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "emb.parquet"
    report = embed_to(model, [inputs], out, files_per_part=2)
    assert report.done == 7 and [Path(p).name for p, _ in report.failed] == ["broken.wav"]
    return out


# -- the schema ------------------------------------------------------------------------------------------


def test_columns_types_and_rows(parquet, inputs):
    table = pq.read_table(parquet)
    assert table.column_names == list(COLUMNS)
    types = {f.name: f.type for f in table.schema}
    assert types["embedding"] == pa.list_(pa.float32(), 64) or (
        isinstance(types["embedding"], pa.FixedSizeListType) and types["embedding"].list_size == 64
        and types["embedding"].value_type == pa.float32())
    assert (types["start_s"], types["end_s"], types["windows"]) == (pa.float64(), pa.float64(), pa.int32())
    rows = table.drop_columns(["embedding"]).to_pylist()
    by_file: dict[str, list[dict]] = {}
    for row in rows:
        by_file.setdefault(Path(row["path"]).name, []).append(row)
    for clip in sorted(ESC.glob("*.flac"))[:5]:  # 5 s clips: one window, so one vector
        (row,) = by_file[clip.name]
        assert (row["kind"], row["windows"], row["start_s"], row["end_s"]) == ("pooled", 1, 0.0, 5.0)
    long = by_file["long.wav"]
    assert [(r["kind"], r["start_s"], r["end_s"], r["windows"]) for r in long] == [
        ("window", 0.0, 5.0, 1), ("window", 5.0, 10.0, 1), ("window", 7.0, 12.0, 1), ("pooled", 0.0, 12.0, 3)]
    (photo,) = by_file["photo.jpg"]
    assert (photo["modality"], photo["kind"], photo["start_s"], photo["windows"]) == ("image", "image", None, None)
    assert "broken.wav" not in by_file
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    vectors = read_embeddings(parquet).matrix()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_no_column_is_an_sql_keyword():
    duckdb = pytest.importorskip("duckdb", reason="duckdb is in the test extra")
    reserved = {k for (k,) in duckdb.sql("SELECT keyword_name FROM duckdb_keywords() "
                                         "WHERE keyword_category <> 'unreserved'").fetchall()}
    # plus words that other engines reserve (Spark SQL ANSI mode, SQL:2016)
    reserved |= {"start", "end", "window", "order", "group", "range", "rows", "values", "time", "timestamp"}
    assert not set(COLUMNS) & reserved


def test_settings_in_parquet_metadata(parquet, model_file):
    metadata = pq.read_schema(parquet).metadata
    keys = {k.decode() for k in metadata}
    assert {f"audioclip.{name}" for name in SETTINGS} <= keys  # every setting, sha256 included (a file)
    settings = read_embeddings(parquet).settings
    sha = hashlib.sha256(Path(model_file).read_bytes()).hexdigest()
    assert settings["checkpoint_sha256"] == sha and settings["checkpoint"] == f"tiny.pt@{sha[:16]}"
    assert settings["checkpoint_name"] == "tiny.pt" and settings["architecture"] == "AudioCLIP-tiny"
    assert (settings["window_s"], settings["hop_s"], settings["sample_rate"]) == (5.0, 5.0, 44100)
    assert (settings["audio_mode"], settings["precision"], settings["engine"]) == ("default", "fp32", "plain")
    assert settings["embedding_dim"] == 64 and settings["schema_version"] == 2 and settings["mono"] is False
    assert settings["package_version"] == importlib.metadata.version("audioclip")
    created = datetime.datetime.fromisoformat(settings["created"].replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.timezone.utc) - created).total_seconds()) < 3600
    assert metadata[b"audioclip.mono"] == b"false" and metadata[b"audioclip.window_s"] == b"5.0"


# -- the reader --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["npy", "jsonl"])
def test_every_format_reads_the_same(parquet, model, inputs, tmp_path, fmt):
    out = tmp_path / f"emb.{fmt}"
    embed_to(model, [inputs], out)
    want, got = read_embeddings(parquet), read_embeddings(out)
    assert got.table.drop_columns(["embedding"]).equals(want.table.drop_columns(["embedding"]))
    np.testing.assert_allclose(got.matrix(), want.matrix(), atol=1e-6)
    assert got.table.schema.field("embedding").type == want.table.schema.field("embedding").type
    assert {k: v for k, v in got.settings.items() if k != "created"} == \
        {k: v for k, v in want.settings.items() if k != "created"}
    sidecar = json.loads(Path(f"{out}.meta.json").read_text())
    assert sidecar["checkpoint"] == want.settings["checkpoint"] and sidecar["window_s"] == 5.0
    assert sidecar["columns"]["embedding"].startswith("fixed_size_list")
    table, settings = got  # unpacks as (table, settings)
    assert table.num_rows == got.num_rows == len(got.matrix())


def test_reader_helpers(parquet):
    emb = audioclip.read_embeddings(parquet)
    matrix = emb.matrix()
    assert matrix.dtype == np.float32 and matrix.shape == (emb.table.num_rows, 64)
    frame = emb.to_pandas()
    assert list(frame.columns) == list(COLUMNS) and len(frame) == emb.table.num_rows
    assert frame["embedding"].iloc[0].dtype == np.float32
    np.testing.assert_array_equal(np.stack(frame["embedding"]), matrix)
    assert frame.attrs["audioclip"]["checkpoint"] == emb.settings["checkpoint"]


def test_part_folders_read_as_one_output(parquet, model, inputs, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    report = embed_to(model, [inputs], folder, files_per_part=2)  # a folder: the parts are the output
    assert report.rows == read_embeddings(parquet).table.num_rows
    assert len(list(folder.glob("part-*.parquet"))) == 4 and not (folder / ".lock").exists()
    got, want = read_embeddings(folder), read_embeddings(parquet)
    assert got.table.drop_columns(["embedding"]).equals(want.table.drop_columns(["embedding"]))
    np.testing.assert_allclose(got.matrix(), want.matrix(), atol=1e-6)
    assert got.settings["checkpoint"] == want.settings["checkpoint"]
    again = embed_to(model, [inputs], folder, files_per_part=2)  # resumed: nothing left to do
    assert (again.done, again.skipped) == (0, 7) and len(list(folder.glob("part-*.parquet"))) == 4


# -- files of earlier releases --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v1.parquet", "v1.npy", "v1-inline.jsonl"])
def test_version_1_files_upgrade_on_read(name):
    raw = pq.read_table(V1 / "v1.parquet")
    assert "start" in raw.column_names and raw.num_rows == 7  # as main wrote it: the short clip twice
    emb = read_embeddings(V1 / name)
    rows = emb.table.drop_columns(["embedding"]).to_pylist()
    assert emb.table.column_names == list(COLUMNS)
    assert [(r["path"], r["kind"], r["start_s"], r["end_s"], r["windows"]) for r in rows] == [
        ("media/long.wav", "window", 0.0, 5.0, 1), ("media/long.wav", "window", 5.0, 10.0, 1),
        ("media/long.wav", "window", 7.0, 12.0, 1), ("media/long.wav", "pooled", 0.0, 12.0, 3),
        ("media/pic.jpg", "image", None, None, None), ("media/short.wav", "pooled", 0.0, 2.0, 1)]
    assert emb.settings["schema_version"] == 1 and emb.settings["checkpoint"] == raw["checkpoint"][0].as_py()
    old = raw.to_pylist()
    keep = [i for i, r in enumerate(old) if not (r["path"] == "media/short.wav" and r["kind"] == "window")]
    np.testing.assert_allclose(emb.matrix(), np.asarray([old[i]["embedding"] for i in keep], np.float32),
                               atol=1e-6)


def test_a_version_1_output_is_resumed_and_rewritten(tmp_path):
    out = tmp_path / "old.parquet"
    shutil.copy(V1 / "v1.parquet", out)
    checkpoint = pq.read_table(out)["checkpoint"][0].as_py()
    writer = EmbeddingWriter(out, checkpoint=checkpoint, settings={"checkpoint": checkpoint, "window_s": 5.0})
    # relative paths of old outputs are taken from the current folder, as they were written
    assert writer.done_paths() == {os.path.realpath(p) for p in ("media/long.wav", "media/pic.jpg", "media/short.wav")}
    vector = torch.nn.functional.normalize(torch.ones(64), dim=0)
    writer.add(FileResult("media/new.wav", "audio", [Embedding("audio", "window", 0.0, 1.0, vector),
                                                     Embedding("audio", "pooled", 0.0, 1.0, vector)]))
    assert writer.finalize() == 7
    table = pq.read_table(out)
    assert "start_s" in table.column_names and "start" not in table.column_names
    assert table.schema.metadata[b"audioclip.schema_version"] == b"2"


# -- writers that must not collide -------------------------------------------------------------------------


def _result(path: str, seed: int = 0) -> FileResult:
    vector = torch.nn.functional.normalize(torch.randn(8, generator=torch.Generator().manual_seed(seed)), dim=0)
    return FileResult(path, "audio", [Embedding("audio", "window", 0.0, 5.0, vector),
                                      Embedding("audio", "pooled", 0.0, 5.0, vector)])


def test_a_second_job_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "emb.parquet"
    first = EmbeddingWriter(out, checkpoint="c@1")
    with pytest.raises(OutputLockedError, match=f"another job now \\(process {os.getpid()} ") as caught:
        EmbeddingWriter(out, checkpoint="c@1")
    assert caught.value.holder.startswith(f"process {os.getpid()} (") and isinstance(caught.value, OutputError)
    with pytest.raises(OutputLockedError, match="another job"):  # the look before a model load says the same
        check_not_locked(out)
    first.add(_result(str(tmp_path / "a.wav")))
    assert first.finalize() == 1
    check_not_locked(out)
    with EmbeddingWriter(out, checkpoint="c@1") as again:  # the lock went with the first job
        assert again.done_paths() == {str(tmp_path / "a.wav")}
    assert not list(tmp_path.glob(".*lock"))


def test_outputs_with_paths_spelled_otherwise_resume_by_resolved_path(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    out = tmp_path / "emb.parquet"
    with EmbeddingWriter(out, checkpoint="c@1") as writer:  # as an earlier version wrote them: unresolved
        writer.add(_result(str(tmp_path / "link" / "a.wav")))
        writer.add(_result(str(tmp_path / "real" / ".." / "real" / "b.wav")))
        writer.finalize()
    with EmbeddingWriter(out, checkpoint="c@1") as again:
        assert again.done_paths() == {str(tmp_path / "real" / "a.wav"), str(tmp_path / "real" / "b.wav")}


def test_part_names_never_collide_and_overlapping_parts_keep_one_copy(tmp_path):
    parts = tmp_path / "emb.parquet.parts"
    table = rows_table([_result("x.wav")], "c@1")
    names = {Path(write_part(parts, table)).name for _ in range(50)}
    assert len(names) == 50 and all(re.fullmatch(r"part-\d{8}T\d{6}-\d+-[0-9a-f]{12}\.parquet", n) for n in names)
    (parts / ".part-torn.parquet.1234.tmp").write_bytes(b"PAR1 half a file")  # a writer killed mid-write
    writer = EmbeddingWriter(tmp_path / "emb.parquet", checkpoint="c@1")
    assert writer.done_paths() == {os.path.realpath("x.wav")}
    assert writer.finalize() == 1  # fifty copies of one file: kept once
    assert len(pq.read_table(tmp_path / "emb.parquet")) == 1


def test_resume_refuses_other_windows(tmp_path, model):
    out = tmp_path / "emb.parquet"
    five = run_settings(model, DecodeOptions(image_size=64))
    with EmbeddingWriter(out, settings=five) as writer:
        writer.add(_result("a.wav"))
        writer.flush()
    two = run_settings(model, DecodeOptions(window=2.0, image_size=64))
    with EmbeddingWriter(out, settings=two) as writer, pytest.raises(OutputError, match="window_s"):
        writer.done_paths()


def test_an_option_of_another_engine_is_refused_before_the_output_is_touched(model, tmp_path):
    with pytest.raises(TypeError, match="address"):  # a ray engine option given to the plain engine
        embed_to(model, [tmp_path], tmp_path / "emb.parquet", address="auto")
    assert list(tmp_path.iterdir()) == []  # no output, no parts, no lock


# -- the documented DuckDB queries, for real ------------------------------------------------------------------


def _sql_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```sql\n(.*?)```", text, flags=re.S)]


@needs_clips
def test_the_duckdb_queries_of_the_docs_run(model, tmp_path, monkeypatch):
    duckdb = pytest.importorskip("duckdb", reason="duckdb is in the test extra")
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    for clip in sorted(ESC.glob("*.flac"))[:6]:
        shutil.copy(clip, sounds / clip.name)
    photo = SHARED_DATA / "images" / "cameratrap_domestic_dog.jpg"
    if photo.is_file():
        shutil.copy(photo, sounds / photo.name)
    monkeypatch.chdir(tmp_path)
    embed_to(model, ["sounds"], "embeddings.parquet")  # the docs' file name and folder
    blocks = _sql_blocks(DOCS.read_text())
    assert len(blocks) >= 3
    results = [duckdb.connect().sql(block).fetchall() for block in blocks]
    neighbours, counts, settings = results[:3]
    assert neighbours[0][0] == str(sounds.resolve() / "4-125929-A-40.flac") and neighbours[0][-1] == pytest.approx(1.0, abs=1e-4)
    assert [row[-1] for row in neighbours] == sorted((row[-1] for row in neighbours), reverse=True)
    assert len(neighbours) == 5
    per_modality = {row[0]: row[1:] for row in counts}
    assert per_modality["audio"][-1] == 6 and (per_modality.get("image", (0, 0, 1))[-1] == 1) == photo.is_file()
    assert dict(settings)["audioclip.window_s"] == "5.0"


# -- object stores (pyarrow file systems), with the local one standing in for s3:// ---------------------------


def test_outputs_on_a_pyarrow_file_system(parquet, model, inputs, tmp_path, monkeypatch):
    from audioclip.embeddings_io import files
    from audioclip.engines.ray_engine import _decode_remote

    monkeypatch.setattr(files, "is_remote", lambda path: "://" in path)  # file:// takes the object-store path
    want = read_embeddings(parquet)
    uri = f"file://{tmp_path}/store/emb.parquet"
    report = embed_to(model, [inputs], uri, files_per_part=3)
    assert report.rows == want.table.num_rows and not list((tmp_path / "store").glob(".*lock"))
    for got in (read_embeddings(uri), read_embeddings(tmp_path / "store" / "emb.parquet")):
        assert got.table.drop_columns(["embedding"]).equals(want.table.drop_columns(["embedding"]))
        assert got.settings["checkpoint"] == want.settings["checkpoint"]
    assert not (tmp_path / "store" / "emb.parquet.parts").exists()
    folder = f"file://{tmp_path}/store/parts/"
    embed_to(model, [inputs], folder, files_per_part=3)
    assert read_embeddings(folder).table.num_rows == want.table.num_rows
    assert embed_to(model, [inputs], folder).skipped == 7
    with pytest.raises(OutputError, match="overwrite removes local outputs only"):  # never a silent resume
        embed_to(model, [inputs], uri, overwrite=True)
    clip = sorted(inputs.glob("*.flac"))[0]
    item = _decode_remote(f"file://{clip}", DecodeOptions(image_size=64))  # a decode task fetching its file
    assert item["error"] is None and item["path"] == f"file://{clip}" and len(item["windows"]) == 1
    missing = _decode_remote(f"file://{tmp_path}/nothing.wav", DecodeOptions())
    assert missing["error"].startswith("cannot fetch")


# -- every output's side files are its own ------------------------------------------------------------------


def _write(out, paths, **kwargs) -> int:
    writer = EmbeddingWriter(out, checkpoint="c@1", **kwargs)
    for i, path in enumerate(paths):
        writer.add(_result(path, seed=i))
    return writer.finalize()


def test_an_npy_output_never_touches_a_jsonl_output_of_the_same_stem(tmp_path):
    """lib.npy's rows are lib.npy.rows.jsonl: an unrelated lib.jsonl is neither replaced nor removed."""
    jsonl, npy = tmp_path / "lib.jsonl", tmp_path / "lib.npy"
    assert _write(jsonl, ["a.wav", "b.wav"]) == 2
    before = jsonl.read_bytes()
    assert _write(npy, ["c.wav"]) == 1
    assert (tmp_path / "lib.npy.rows.jsonl").is_file() and (tmp_path / "lib.npy.meta.json").is_file()
    assert jsonl.read_bytes() == before
    assert read_embeddings(jsonl)["path"].to_pylist() == ["a.wav", "b.wav"] and read_embeddings(npy).num_rows == 1
    _write(npy, ["d.wav"], overwrite=True)  # starts lib.npy over: its own files only
    assert jsonl.read_bytes() == before and read_embeddings(npy)["path"].to_pylist() == ["d.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lib.jsonl", "lib.jsonl.meta.json", "lib.npy", "lib.npy.meta.json", "lib.npy.rows.jsonl"]


def test_an_npy_output_of_an_earlier_release_reads_and_resumes_under_the_new_name(tmp_path):
    """An .npy whose rows were written as OUT-with-.jsonl still reads; resumed, its rows move to OUT.rows.jsonl."""
    shutil.copy(V1 / "v1.npy", tmp_path / "old.npy")
    shutil.copy(V1 / "v1.jsonl", tmp_path / "old.jsonl")
    emb = read_embeddings(tmp_path / "old.npy")
    checkpoint = emb.settings["checkpoint"]
    writer = EmbeddingWriter(tmp_path / "old.npy", checkpoint=checkpoint)
    vector = torch.nn.functional.normalize(torch.ones(64), dim=0)
    writer.add(FileResult("media/new.wav", "audio", [Embedding("audio", "pooled", 0.0, 1.0, vector)]))
    assert writer.finalize() == emb.num_rows + 1
    assert (tmp_path / "old.npy.rows.jsonl").is_file() and not (tmp_path / "old.jsonl").exists()
    assert read_embeddings(tmp_path / "old.npy").num_rows == emb.num_rows + 1


def test_a_jsonl_output_is_never_taken_for_an_npy_outputs_rows(tmp_path):
    """An .npy without its rows beside a .jsonl output of the same stem: a one-line error, not a KeyError."""
    _write(tmp_path / "lib.npy", ["a.wav"])
    (tmp_path / "lib.npy.rows.jsonl").unlink()
    _write(tmp_path / "lib.jsonl", ["b.wav"])
    with pytest.raises(OutputError, match=r"lib.npy: its rows \(.*lib.npy.rows.jsonl\) are missing"):
        read_embeddings(tmp_path / "lib.npy")


@pytest.mark.parametrize("name", ["lib.npy.rows.jsonl", "lib.npy.meta.json", "lib.parquet.parts", ".lib.npy.lock"])
def test_outputs_named_like_side_files_are_refused(tmp_path, name):
    with pytest.raises(OutputError, match="kept for the side files of outputs"):
        EmbeddingWriter(tmp_path / name, checkpoint="c@1", fmt="jsonl")
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_output_says_when_its_oldest_vector_was_made(tmp_path):
    """'created' of a resumed output is the first run's: a file changed between runs is seen as changed."""
    for out in (str(tmp_path / "lib.parquet"), str(tmp_path / "parts") + "/"):
        for i, created in enumerate(("2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z")):
            writer = EmbeddingWriter(out, checkpoint="c@1", settings={"checkpoint": "c@1", "created": created})
            writer.add(_result(str(tmp_path / f"{i}.wav"), seed=i))
            assert writer.finalize() == i + 1  # one vector per single-window clip
        assert read_embeddings(out).settings["created"] == "2026-01-01T00:00:00Z"
