"""``audioclip fit``: the solver is scikit-learn's, folds keep recordings whole, the mixture never loses to
zero-shot on validation, bad data is one line each (exit 2 before embedding, 3 when some clips were left out),
and the head agrees everywhere it is used (classify --head, classify(head=), the pipeline)."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("sklearn")

from sklearn.linear_model import LogisticRegression  # noqa: E402

import audioclip  # noqa: E402
from audioclip.cli import main  # noqa: E402
from audioclip.embeddings_io import read_embeddings  # noqa: E402
from audioclip.fit import fit, read_data  # noqa: E402
from audioclip.fit.data import Example  # noqa: E402
from audioclip.fit.folds import assign_folds, group_of  # noqa: E402
from audioclip.fit.solver import Arrays, choose_threshold, evaluate, select, train_linear  # noqa: E402
from audioclip.heads import load_head  # noqa: E402
from audioclip.inference import DecodeOptions  # noqa: E402

SR = 44100
WINDOW = 0.5  # short windows: the tiny model embeds them quickly
CLASSES = {"low": 220.0, "high": 3000.0, "noise": None}


def _clip(path: Path, freq: float | None, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * WINDOW)) / SR
    wave = 0.05 * rng.standard_normal(len(t)) + (0.0 if freq is None else 0.4 * np.sin(2 * np.pi * freq * t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), SR)
    return path


@pytest.fixture(scope="module")
def model():
    return audioclip.create_model("AudioCLIP-tiny", device="cpu")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fitdata") / "sounds"
    for c, (name, freq) in enumerate(CLASSES.items()):
        for i in range(5):
            _clip(root / name / f"{name}{i}.wav", freq, 10 * c + i)
    return root


@pytest.fixture(scope="module")
def fitted(model, data_dir, tmp_path_factory):
    """A head fitted with the trained classifier alone (alpha=1) and one C, so scikit-learn can be compared."""
    out = tmp_path_factory.mktemp("heads") / "head"
    report = fit(model, data_dir, out, Cs=[10.0], alpha=1.0, options=DecodeOptions(window=WINDOW))
    return out, report


def cli(*args):
    out, err = io.StringIO(), io.StringIO()
    os.environ["AUDIOCLIP_OFFLINE"] = "1"
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


TINY = ("--checkpoint", "AudioCLIP-tiny", "--device", "cpu", "-q")


def _matrix(out: Path, data_dir: Path):
    """The fitted clips' vectors (in the data's order) and their classes, read back from the head's embed output."""
    data = read_data(data_dir)
    table = read_embeddings(out / "embeddings.parquet").to_pandas()
    pooled = table[table.kind == "pooled"].set_index("path")
    X = np.stack([pooled.loc[e.path, "embedding"] for e in data.examples]).astype(np.float64)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, np.array([e.labels[0] for e in data.examples]), data


# -- the solver ----------------------------------------------------------------------------------------


def test_head_predictions_equal_scikit_learn(fitted, data_dir):
    out, report = fitted
    X, y, data = _matrix(out, data_dir)
    head = load_head(out)
    assert head.alpha == 1.0 and head.labels == sorted(CLASSES) and head.background == "noise"
    expected = LogisticRegression(C=10.0, max_iter=1000).fit(X, y)
    assert list(expected.classes_) == head.labels
    ours = head.probabilities(torch.from_numpy(X)).double().numpy()
    np.testing.assert_allclose(ours, expected.predict_proba(X), atol=1e-5)
    assert (ours.argmax(1) == expected.predict_proba(X).argmax(1)).all()


def test_two_classes_and_several_labels_equal_scikit_learn():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = (X[:, 0] + 0.3 * rng.standard_normal(40) > 0).astype(int)
    W, b = train_linear(X, np.eye(2, dtype=int)[y], False, 3.0)
    z = X @ W.T + b
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(probs, LogisticRegression(C=3.0, max_iter=1000).fit(X, y).predict_proba(X), atol=1e-6)
    Y = np.stack([y, (X[:, 1] > 0).astype(int)], 1)
    W, b = train_linear(X, Y, True, 3.0)
    for c in range(2):
        sk = LogisticRegression(C=3.0, max_iter=1000).fit(X, Y[:, c]).predict_proba(X)[:, 1]
        np.testing.assert_allclose(1 / (1 + np.exp(-(X @ W[c] + b[c]))), sk, atol=1e-6)


def _problem(n_per_class=6, classes=4, dim=16, zeroshot_quality=1.0, seed=0):
    """Clusters around class centres; the zero-shot layer points at the centres (a good zero-shot)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    X = centres[y] + 1.2 * rng.standard_normal((len(y), dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    zs = centres + (1 - zeroshot_quality) * rng.standard_normal(centres.shape)
    zs = 20 * zs / np.linalg.norm(zs, axis=1, keepdims=True)
    return Arrays(X, np.eye(classes, dtype=int)[y], zs - zs.mean(0)), y


def test_grouped_folds_never_split_a_recording():
    examples = []
    for rec in range(12):
        for take in "ABC":
            examples.append(Example(f"/d/{rec % 5 + 1}-{1000 + rec}-{take}-{rec % 3}.wav", (f"c{rec % 3}",)))
    for rec in range(9):  # UrbanSound8K slices, and a group column
        examples += [Example(f"/u/{500 + rec}-{rec % 3}-0-{s}.wav", (f"c{rec % 3}",)) for s in range(2)]
        examples += [Example(f"/g/take{rec}-{s}.wav", (f"c{rec % 3}",), group=f"session{rec}") for s in range(2)]
    strata = np.array([int(e.labels[0][1]) for e in examples])
    folds = assign_folds(examples, strata, n_folds=5, seed=3)
    assert len(set(folds.tolist())) == 5
    by_group: dict[str, set] = {}
    for e, f in zip(examples, folds):
        by_group.setdefault(group_of(e), set()).add(int(f))
    assert len(by_group) == 12 + 9 + 9
    assert all(len(found) == 1 for found in by_group.values()), by_group


def test_mixture_never_worse_than_zero_shot_on_validation_at_one_shot():
    arr, y = _problem()
    folds = np.tile(np.arange(1, 5), len(y) // 4 + 1)[:len(y)]
    worse_alone = 0
    for seed in range(5):
        sel = select(arr, np.arange(len(y)), folds, shots=1, rng=np.random.default_rng(seed), Cs=[10.0])
        assert sel.best_score >= sel.zeroshot_score
        worse_alone += sel.scores[(10.0, 1.0)] < sel.zeroshot_score
    assert worse_alone  # one shot alone does lose to a good zero-shot: the choice is doing something
    result = evaluate(arr, folds, shots=[1], seeds=2, Cs=[10.0])
    entry = result["shots"][0]
    assert entry["validation"]["combined"]["mean"] >= entry["validation"]["zeroshot"]["mean"]
    assert len(entry["chosen"]) == 2 * 4


def test_threshold_keeps_background_false_positives_under_the_target():
    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(4), size=200)
    Y = np.eye(4, dtype=int)[rng.integers(0, 4, 200)]
    t = choose_threshold(P, Y, background=3, max_false_positives=0.05)
    bg = Y[:, 3] == 1
    passed = (P[bg].argmax(1) != 3) & (P[bg].max(1) >= t)
    assert passed.mean() <= 0.05
    assert choose_threshold(P, Y, background=None, max_false_positives=0.05) == 0.0


# -- the folder, re-fits ---------------------------------------------------------------------------------


def test_fit_writes_the_head_folder_and_a_refit_does_not_embed_again(fitted, model, data_dir):
    out, first = fitted
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "embeddings.parquet", "head.json",
                                                     "head.safetensors", "report.json"]
    assert first.embedded == 15 and not first.problems
    meta = json.loads((out / "head.json").read_text())
    assert meta["checkpoint"] == audioclip.checkpoint_id(model) and meta["window_s"] == WINDOW
    report = json.loads((out / "report.json").read_text())
    entry = report["evaluation"]["shots"][0]
    assert {"zeroshot", "head", "combined"} <= set(entry) and "false_positive_rate" in entry["combined"]
    assert report["evaluation"]["detail"]["combined"]["per_class"]["low"].keys() >= {"precision", "recall"}

    again = fit(model, data_dir, out, Cs=[1.0, 10.0], options=DecodeOptions(window=WINDOW))
    assert again.embedded == 0 and again.reused == 15
    assert (out / "embeddings.parquet").exists()


# -- the command line: bad input ---------------------------------------------------------------------------


def test_labels_that_differ_only_in_case_stop_before_embedding(tmp_path):
    for name in ("Dog", "dog", "rain"):
        for i in range(2):
            _clip(tmp_path / "d" / name / f"{i}.wav", 440.0, i)
    code, _, err = cli("fit", tmp_path / "d", "-o", tmp_path / "h", *TINY)
    assert code == 2 and "'Dog' and 'dog' differ only in case" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "h").exists()


def test_too_few_classes_and_too_many_shots_are_usage_errors(tmp_path):
    for i in range(3):
        _clip(tmp_path / "one" / "dog" / f"{i}.wav", 440.0, i)
    code, _, err = cli("fit", tmp_path / "one", "-o", tmp_path / "h", *TINY)
    assert code == 2 and "at least two classes" in err
    for i in range(2):
        _clip(tmp_path / "one" / "rain" / f"{i}.wav", None, i)
    code, _, err = cli("fit", tmp_path / "one", "-o", tmp_path / "h", "--shots", "1,3", *TINY)
    assert code == 2 and "--shots 3" in err and "'rain'" in err
    assert not (tmp_path / "h").exists()


def test_a_class_of_one_clip_and_a_missing_file_are_left_out_with_exit_3(fitted, data_dir, tmp_path):
    out, _ = fitted
    rows = ["path,label"] + [f"{p},{p.parent.name}" for p in sorted(data_dir.rglob("*.wav"))]
    rows += [f"{data_dir / 'low' / 'low0.wav'}x,low", f"{data_dir / 'high' / 'high0.wav'},lonely"]
    rows = [r for r in rows if not r.startswith(f"{data_dir / 'high' / 'high0.wav'},high")]
    table = tmp_path / "labels.csv"
    table.write_text("\n".join(rows) + "\n")
    code, stdout, err = cli("fit", table, "-o", tmp_path / "h", "--embeddings", out / "embeddings.parquet",
                            "--C", "10", *TINY)
    assert code == 3, err
    lines = err.strip().splitlines()
    assert any("low0.wavx" in line and "no such file" in line for line in lines)
    assert any("class 'lonely'" in line and "only 1 clip" in line for line in lines)
    assert load_head(tmp_path / "h").labels == ["high", "low", "noise"]
    assert "zero-shot" in stdout


def test_an_unreadable_clip_is_named_and_the_fit_goes_on(tmp_path):
    for name, freq in (("low", 220.0), ("high", 3000.0)):
        for i in range(3):
            _clip(tmp_path / "d" / name / f"{i}.wav", freq, i)
    (tmp_path / "d" / "low" / "broken.wav").write_bytes(b"RIFF....WAVEfmt not really")
    code, _, err = cli("fit", tmp_path / "d", "-o", tmp_path / "h", "--window", WINDOW, "--C", "10", *TINY)
    assert code == 3, err
    assert any("broken.wav" in line for line in err.strip().splitlines())
    assert load_head(tmp_path / "h").labels == ["high", "low"]


# -- one head, everywhere ----------------------------------------------------------------------------------


def test_classify_head_the_api_and_the_pipeline_agree(fitted, model, data_dir):
    out, _ = fitted
    files = [data_dir / "low" / "low1.wav", data_dir / "noise" / "noise2.wav"]
    code, stdout, err = cli("classify", *files, "--head", out, "--json", "-k", "3", *TINY)
    assert code == 0, err
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert all("decision" in line for line in lines)
    # all three cut the files into the head's windows (0.5 s here), not the default 5 s
    api = audioclip.classify(model, audio=[str(f) for f in files], head=out)
    head = load_head(out)
    clf = audioclip.pipeline("audio-classification", model=model, head=out)
    for i, line in enumerate(lines):
        by_label = {x["label"]: x["probability"] for x in line["labels"]}
        for j, label in enumerate(head.labels):
            assert abs(by_label[label] - float(api[i, j])) < 1e-4
        piped = {x["label"]: x["score"] for x in clf(str(files[i]))}
        assert all(abs(piped[label] - by_label[label]) < 1e-4 for label in head.labels)


def test_classify_head_refuses_another_checkpoint(fitted, data_dir):
    out, _ = fitted
    code, _, err = cli("classify", data_dir / "low" / "low1.wav", "--head", out, "--checkpoint", "AudioCLIP-RN50",
                       "--device", "cpu", "-q")
    assert code == 2
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "AudioCLIP-tiny@" in errors[0] and "AudioCLIP-RN50@" in errors[0]


def test_onnx_export_with_a_head_outputs_the_same_probabilities(fitted, model, data_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    from audioclip.export.onnx import export_onnx

    out, _ = fitted
    paths = export_onnx(model, tmp_path / "onnx", checkpoint_id=audioclip.checkpoint_id(model), head=out)
    meta = json.loads(paths["meta"].read_text())
    assert meta["head"]["labels"] == load_head(out).labels
    session = ort.InferenceSession(str(paths["audio"]), providers=["CPUExecutionProvider"])
    file = data_dir / "high" / "high3.wav"
    wave = audioclip.load_audio(str(file))[None]  # one 0.5 s window: what classify --head embeds
    probs = session.run(["probabilities"], {"waveform": wave.numpy()})[0]
    expected = audioclip.classify(model, audio=[str(file)], head=out).numpy()
    assert probs.shape == expected.shape and np.abs(probs - expected).max() < 1e-4
    with pytest.raises(audioclip.AudioclipError, match="fitted on embeddings of checkpoint"):
        export_onnx(audioclip.create_model("AudioCLIP-tiny", device="cpu"), tmp_path / "o2",
                    checkpoint_id="other@0123", head=out)


def test_a_multi_label_parquet_table_gives_a_sigmoid_head(fitted, model, data_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, _ = fitted
    files = sorted(data_dir.rglob("*.wav"))
    # "low" clips also count as "tone", "high" ones too; noise clips are background (no label)
    labels = [{"low": "low;tone", "high": "high;tone", "noise": "noise"}[f.parent.name] for f in files]
    pq.write_table(pa.table({"path": [str(f) for f in files], "label": labels}), tmp_path / "labels.parquet")
    data = read_data(tmp_path / "labels.parquet")
    assert data.multilabel and data.background == "noise"
    result = fit(model, data, tmp_path / "h", embeddings=out / "embeddings.parquet", Cs=[10.0])
    head = load_head(tmp_path / "h")
    assert head.activation == "sigmoid" and head.labels == ["high", "low", "tone"]  # background: no label
    assert "mAP" in result.report["evaluation"]["shots"][0]["combined"]
    probs = audioclip.classify(model, audio=[str(files[0])], head=head)
    assert probs.shape == (1, 3) and ((probs >= 0) & (probs <= 1)).all()


# -- the head folder: replaced whole, so nothing of the user's may be in it --------------------------------


def test_head_folder_entries_are_what_fit_writes(tmp_path):
    from audioclip.embeddings_io.files import parts_folder
    from audioclip.embeddings_io.write import output_lock
    from audioclip.fit.folder import HEAD_FOLDER_FILES, stray_entry
    from audioclip.heads.head import HEAD_JSON, HEAD_WEIGHTS

    assert {HEAD_JSON, HEAD_WEIGHTS} <= set(HEAD_FOLDER_FILES)
    h = tmp_path / "h"
    assert stray_entry(h) is None  # a new folder
    h.mkdir()
    for name in HEAD_FOLDER_FILES:
        (h / name).write_bytes(b"x")
    Path(parts_folder(h / "embeddings.parquet")).mkdir()
    output_lock(h / "embeddings.parquet").write_bytes(b"")
    (h / ".embeddings.parquet.k2j4.tmp").write_bytes(b"")  # an atomic write cut short
    assert stray_entry(h) is None
    (h / "notes.txt").write_text("mine")
    assert stray_entry(h) == "notes.txt"


def test_a_folder_with_a_file_of_the_user_is_refused_and_left_as_it_is(fitted, model, data_dir, tmp_path):
    import shutil

    from audioclip.heads import HeadError

    h = tmp_path / "h"
    shutil.copytree(fitted[0], h)
    (h / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in h.iterdir()}
    code, _, err = cli("fit", data_dir, "-o", h, "--embeddings", h / "embeddings.parquet", *TINY)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(h) in err and "'notes.txt'" in err
    with pytest.raises(HeadError, match="notes.txt"):  # the Python API refuses it as well, before embedding
        fit(model, data_dir, h, embeddings=h / "embeddings.parquet", Cs=[10.0])
    assert {p.name: p.read_bytes() for p in h.iterdir()} == before


def test_a_refit_from_the_head_folders_own_embeddings_keeps_them(fitted, data_dir, tmp_path):
    import shutil

    h = tmp_path / "h"
    shutil.copytree(fitted[0], h)
    vectors = (h / "embeddings.parquet").read_bytes()
    code, _, err = cli("fit", data_dir, "-o", h, "--embeddings", h / "embeddings.parquet", "--C", "10", *TINY)
    assert code == 0, err
    assert (h / "embeddings.parquet").read_bytes() == vectors
    assert load_head(h).labels == sorted(CLASSES)


def test_embeddings_of_another_checkpoint_are_one_line_of_the_package(fitted, model, data_dir, tmp_path, monkeypatch):
    from audioclip.fit import DataError

    monkeypatch.setattr("audioclip.factory.checkpoint_id", lambda model: "other@0123")
    code, _, err = cli("fit", data_dir, "-o", tmp_path / "h", "--embeddings", fitted[0] / "embeddings.parquet",
                       *TINY)
    errors = [line for line in err.splitlines() if ": error: " in line]  # (the tiny model's warning aside)
    assert code == 1 and len(errors) == 1, err
    assert "ValueError" not in err and "--debug" not in err
    assert errors[0].startswith("audioclip fit: error: ") and "embeddings of checkpoint" in errors[0]
    assert "other@0123" in errors[0]
    with pytest.raises(DataError):
        fit(model, data_dir, tmp_path / "h", embeddings=fitted[0] / "embeddings.parquet")
    assert not (tmp_path / "h").exists()
