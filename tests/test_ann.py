"""The FAISS index beside a LanceDB store (index/ann.py): exact scores, writes since the build, crashes.

Small vectors (16-d, a few thousand rows) with known answers: every result is
checked against a brute-force scan of what the store holds at that moment.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("faiss", reason="the ANN index needs faiss-cpu (pip install 'audioclip[index]')")

from audioclip.index.ann import AnnIndex, ann_lists  # noqa: E402
from audioclip.index.lance import LanceStore  # noqa: E402
from audioclip.index.records import file_id_of, row_schema  # noqa: E402

DIM = 16


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def make_rows(paths: list[str], rng: np.random.Generator, windows: int = 2, source: str = "audio",
              vectors: np.ndarray | None = None) -> pa.Table:
    rows = []
    centres = unit(rng.standard_normal((8, DIM)))
    for i, path in enumerate(paths):
        for w in range(windows):
            vector = vectors[i * windows + w] if vectors is not None else \
                unit(centres[rng.integers(8)] + 0.5 * rng.standard_normal(DIM) / 4)
            image = source == "image"
            rows.append(dict(file_id=file_id_of(path), path=path, source=source, modality="image" if image else "audio",
                             kind="image" if image else "window", start_s=None if image else 5.0 * w,
                             end_s=None if image else 5.0 * w + 5, duration=None if image else 5.0 * windows,
                             size=1, mtime_ns=1, hash=path, vector=np.asarray(vector).tolist()))
    return pa.Table.from_pylist(rows, schema=row_schema(DIM))


def brute_force(store: LanceStore, query: np.ndarray, limit: int, sources=None) -> list[tuple[int, str, float]]:
    table = store._table(store.TABLE).search().limit(None).to_arrow()
    if sources:
        table = table.filter(pa.compute.is_in(table["source"], pa.array(sources)))
    matrix = table["vector"].combine_chunks().values.to_numpy().reshape(-1, DIM)
    scores = matrix @ query
    order = np.argsort(-scores, kind="stable")[:limit]
    return [(table["file_id"][int(i)].as_py(), table["start_s"][int(i)].as_py(), float(scores[i])) for i in order]


def keys(found: pa.Table) -> list[tuple[int, float]]:
    return list(zip(found["file_id"].to_pylist(), found["start_s"].to_pylist()))


@pytest.fixture
def store(tmp_path):
    store = LanceStore(tmp_path / "db", create=True)
    store.write_meta({"checkpoint": "test", "dim": DIM})
    store.ANN_MIN_ROWS = 1000
    rng = np.random.default_rng(0)
    store.add(make_rows([f"/lib/a{i:04d}.wav" for i in range(1400)], rng))  # 2,800 rows
    store.add(make_rows([f"/lib/p{i:03d}.png" for i in range(200)], rng, windows=1, source="image"))
    store.optimize()
    return store


def test_lists_grow_with_the_rows():
    assert ann_lists(100) == 1 and ann_lists(10_000) == 32 and ann_lists(100_000) == 512
    assert ann_lists(1_000_000) == 4096


def test_built_past_the_threshold_and_scores_are_exact(store):
    state = store.ann.state()
    assert state["vectors"] == 3000 and state["lists"] == ann_lists(3000) and state["dirty"] == {}
    rng = np.random.default_rng(1)
    for query in unit(rng.standard_normal((5, DIM))):
        want = brute_force(store, query, 20)
        exact = store.search(query, 20, exact=True)
        assert keys(exact) == [(f, s) for f, s, _ in want]
        np.testing.assert_allclose(exact["score"].to_numpy(), [c for *_, c in want], atol=1e-5)
        ann = store.search(query, 20)  # a few lists: a subset of the candidates, each scored exactly
        truth = {(f, s): c for f, s, c in brute_force(store, query, 3000)}
        for key, score in zip(keys(ann), ann["score"].to_pylist()):
            assert score == pytest.approx(truth[key], abs=1e-5)
        images = store.search(query, 10, sources=["image"], exact=True)
        assert keys(images) == [(f, s) for f, s, _ in brute_force(store, query, 10, ["image"])]


def test_deleted_files_are_never_returned_and_new_ones_are_found(store):
    query = unit(np.random.default_rng(2).standard_normal(DIM))
    top = store.search(query, 10, exact=True)["file_id"].to_pylist()
    gone = top[:3]
    store.delete_files(gone)  # no rebuild: the index still holds their vectors
    assert set(store.ann.dirty()) == set(gone)
    for exact in (True, False):
        assert not set(store.search(query, 50, exact=exact)["file_id"].to_pylist()) & set(gone)
    # a new file that matches the query best, and a replaced one: found by the exact scan beside the index
    store.add(make_rows(["/lib/new.wav"], np.random.default_rng(3), vectors=np.stack([query, -query])))
    replaced = top[4]
    path = store.get_file(replaced).path
    store.delete_files([replaced])
    store.add(make_rows([path], np.random.default_rng(4), vectors=np.stack([-query, -query])))
    for exact in (True, False):
        found = store.search(query, 10, exact=exact)
        assert found["file_id"][0].as_py() == file_id_of("/lib/new.wav") and found["score"][0].as_py() == \
            pytest.approx(1.0, abs=1e-5)
        assert replaced not in found["file_id"].to_pylist()
    assert keys(store.search(query, 20, exact=True)) == [(f, s) for f, s, _ in brute_force(store, query, 20)]
    # the next indexing run's optimize: few rows written since, so the index is kept as it is
    generation = store.ann.state()["generation"]
    store.optimize()
    assert store.ann.state()["generation"] == generation
    store.REBUILD_MAX_ROWS = 2  # now too many: rebuilt, and nothing is dirty any more
    store.optimize()
    state = store.ann.state()
    assert state["generation"] == generation + 1 and state["dirty"] == {} and state["vectors"] == store.count_rows()
    assert keys(store.search(query, 20, exact=True)) == [(f, s) for f, s, _ in brute_force(store, query, 20)]
    names = sorted(p.name for p in store.ann.folder.iterdir())  # the old generation's files are gone
    assert names == [f"g{generation + 1}.index", f"g{generation + 1}.rows.npy", "state.json"]


def test_a_crash_before_the_commit_or_during_a_build_leaves_answers_right(store, monkeypatch):
    query = unit(np.random.default_rng(5).standard_normal(DIM))
    before = keys(store.search(query, 20, exact=True))
    # killed after marking the files dirty, before LanceDB's commit: the files are unchanged, scanned exactly
    victim = store.search(query, 1, exact=True)["file_id"][0].as_py()
    store.ann.mark([victim])
    assert keys(store.search(query, 20, exact=True)) == before
    # killed in the middle of a rebuild: the previous generation stays in use; the next build cleans up
    generation = store.ann.state()["generation"]
    real = AnnIndex._write_state

    def crash(self, state):
        if "generation" in state and state["generation"] > generation:
            raise KeyboardInterrupt
        real(self, state)

    monkeypatch.setattr(AnnIndex, "_write_state", crash)
    with pytest.raises(KeyboardInterrupt):
        store.build_ann()
    monkeypatch.setattr(AnnIndex, "_write_state", real)
    fresh = LanceStore(store.path)  # another process
    assert fresh.ann.state()["generation"] == generation
    assert keys(fresh.search(query, 20, exact=True)) == before
    store.build_ann()
    assert store.ann.state()["generation"] == generation + 1
    assert len(list(store.ann.folder.glob("g*"))) == 2 and keys(fresh.search(query, 20, exact=True)) == before


def test_too_many_rows_since_the_build_fall_back_to_the_exact_scan(store):
    query = unit(np.random.default_rng(6).standard_normal(DIM))
    store.add(make_rows([f"/lib/b{i:03d}.wav" for i in range(50)], np.random.default_rng(7)))
    store.REBUILD_MAX_ROWS = 10
    store.REBUILD_FRACTION = 0.0  # the sidecar declines: more than 10 rows written since its build
    assert store.ann.search(query, 5, None, False, 4, lambda: 0, store.rows, 10) is None
    assert keys(store.search(query, 20, exact=True)) == [(f, s) for f, s, _ in brute_force(store, query, 20)]


def test_built_in_shards_merged_on_disk(store, monkeypatch):
    """Past the memory budget, vectors go to disk in shards merged into one memory-mapped file."""
    import audioclip.index.ann as ann

    monkeypatch.setattr(ann, "BUILD_MEMORY_BYTES", 1000 * 4 * DIM)
    monkeypatch.setattr(ann, "SHARD_ROWS", 1000)
    state = store.build_ann()
    assert state["data_file"] and {p.suffix for p in store.ann.folder.glob("g*")} == {".index", ".ivfdata", ".npy"}
    query = unit(np.random.default_rng(8).standard_normal(DIM))
    fresh = LanceStore(store.path)
    assert keys(fresh.search(query, 20, exact=True)) == [(f, s) for f, s, _ in brute_force(store, query, 20)]


def test_dropped_below_the_threshold(store):
    store.delete_files([r.file_id for r in store.files().values()][:1500])
    store.optimize()
    assert store.count_rows() < store.ANN_MIN_ROWS and not store.ann.exists()
    assert list(store.ann.folder.glob("g*")) == []


def test_a_table_with_start_and_end_columns_builds_and_searches_as_one_written_now(tmp_path):
    """A table written before the columns were named ``start_s``/``end_s``: the same answers, in those names."""
    rng = np.random.default_rng(0)
    rows = make_rows([f"/lib/a{i:04d}.wav" for i in range(1100)], rng)
    stores = {}
    for name, table in (("new", rows), ("old", rows.rename_columns([{"start_s": "start", "end_s": "end"}.get(n, n)
                                                                   for n in rows.schema.names]))):
        stores[name] = LanceStore(tmp_path / name, create=True)
        stores[name].write_meta({"checkpoint": "test", "dim": DIM})
        stores[name].ANN_MIN_ROWS = 1000
        stores[name]._db.create_table("media", data=table)
        stores[name].optimize()
        assert stores[name].ann.state()["vectors"] == 2200
    assert "start" in stores["old"]._table("media").schema.names
    for query in unit(rng.standard_normal((3, DIM))):
        for exact in (True, False):
            old, new = (stores[n].search(query, 20, exact=exact) for n in ("old", "new"))
            assert old.equals(new) and old.column_names == ["file_id", "kind", "start_s", "score"]
            assert any(old["start_s"].to_pylist())
    late = make_rows(["/lib/late.wav"], rng, vectors=np.stack([query, query]))  # a write since the build
    stores["old"].add(late)
    found = stores["old"].search(query, 2)
    assert found["file_id"].to_pylist() == [file_id_of("/lib/late.wav")] * 2
    assert sorted(found["start_s"].to_pylist()) == [0.0, 5.0]


# -- special and tampered sidecar files: never a hang, never a raw error; the exact scan instead -------------------


def _fifo(path) -> None:
    path.unlink()
    os.mkfifo(path)


def _state(store, **changes):
    import json

    state = {**json.loads((store.ann.folder / "state.json").read_text()), **changes}
    (store.ann.folder / "state.json").write_text(json.dumps(state))


def _rows_file(store):
    return store.ann.folder / f"g{store.ann.state()['generation']}.rows.npy"


def _index_file(store):
    return store.ann.folder / f"g{store.ann.state()['generation']}.index"


def _huge_shape(store):
    from numpy.lib import format as npy

    path = _rows_file(store)
    header = npy.header_data_from_array_1_0(np.zeros(1, np.load(path).dtype))
    header["shape"] = (10**13,)  # 164 TiB of rows in a file of a few hundred bytes
    with open(path, "wb") as f:
        npy.write_array_header_1_0(f, header)
        f.write(b"\0" * 100)


def _rows(store, array):
    np.save(_rows_file(store), array, allow_pickle=True)


def _bad_codes(store):
    rows = np.load(_rows_file(store))
    rows["kind"][::7] = 9
    np.save(_rows_file(store), rows)


def _ids_past_the_rows(store):
    import faiss

    index = faiss.read_index(str(_index_file(store)))
    index.remove_ids(np.arange(index.ntotal, dtype=np.int64))  # same size, ids beyond the row map
    count = len(np.load(_rows_file(store)))
    vectors = unit(np.random.default_rng(9).standard_normal((count, DIM)))
    index.add_with_ids(vectors, np.arange(count, dtype=np.int64) + 10**9)
    faiss.write_index(index, str(_index_file(store)))


TAMPERED = {
    "FIFO state file": lambda store: _fifo(store.ann.folder / "state.json"),
    "FIFO index file": lambda store: _fifo(_index_file(store)),
    "FIFO row map": lambda store: _fifo(_rows_file(store)),
    "state not an object": lambda store: (store.ann.folder / "state.json").write_text("[1, 2]"),
    "state of wrong types": lambda store: _state(store, vectors="many", dirty=[1]),
    "state with a huge list count": lambda store: _state(store, lists=2**40),
    "state naming another generation": lambda store: _state(store, generation="1/../../x"),
    "pickled row map": lambda store: _rows(store, np.array([{"x": 1}] * 3000, dtype=object)),
    "row map of another dtype": lambda store: _rows(store, np.zeros(3000, np.float64)),
    "row map of a huge shape": _huge_shape,
    "row map with bad codes": _bad_codes,
    "garbage FAISS file": lambda store: _index_file(store).write_bytes(os.urandom(50_000)),
    "FAISS ids past the row map": _ids_past_the_rows,
}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("tamper", list(TAMPERED), ids=list(TAMPERED))
def test_a_special_or_tampered_sidecar_falls_back_to_the_exact_scan_with_one_warning(store, tamper):
    import warnings

    from test_hostile import run_with_deadline

    query = unit(np.random.default_rng(11).standard_normal(DIM))
    want = [(f, s) for f, s, _ in brute_force(store, query, 20)]
    TAMPERED[tamper](store)
    fresh = LanceStore(store.path)  # another process: nothing of the sidecar cached
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = run_with_deadline(lambda: [fresh.search(query, 20) for _ in range(3)], 60)
    assert all(keys(f) == want for f in found)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and type(caught[0].message).__name__ == "AnnIndexWarning", messages
    assert "\n" not in messages[0] and "exact scan" in messages[0] and str(store.ann.folder) in messages[0]
