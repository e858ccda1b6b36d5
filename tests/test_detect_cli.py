"""audioclip detect on the command line: bad input before the model loads, outputs in their readers, resume,
locking; evaluate --task detection's metrics on a hand-made case."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audioclip.detection import writers

EVENTS = [
    {"path": "/data/a.wav", "label": "dog", "start_s": 1.0, "end_s": 2.5, "score": 0.9, "mean_score": 0.7},
    {"path": "/data/a.wav", "label": "rain", "start_s": 3.0, "end_s": 4.0, "score": 0.8, "mean_score": 0.6},
    {"path": "/data/b.wav", "label": "dog", "start_s": 0.5, "end_s": 1.0, "score": 0.6, "mean_score": 0.55},
]
DURATIONS = {"/data/a.wav": 10.0, "/data/b.wav": 5.0}
SETTINGS = {"method": "columns", "threshold": 0.5, "labels": ["dog", "rain"]}


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "audioclip", "detect", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "AUDIOCLIP_OFFLINE": "1"})


# -- the writers, read back by each format's reader ------------------------------------------------


def test_csv_and_jsonl_events_with_their_settings_beside(tmp_path):
    writers.write_events(tmp_path / "ev.csv", EVENTS, settings=SETTINGS)
    rows = list(csv.DictReader(open(tmp_path / "ev.csv")))
    assert list(rows[0]) == ["path", "label", "start_s", "end_s", "score", "mean_score"]
    assert [(r["label"], float(r["start_s"]), float(r["end_s"])) for r in rows] == \
        [(e["label"], e["start_s"], e["end_s"]) for e in EVENTS]
    assert writers.read_settings(tmp_path / "ev.csv") == SETTINGS
    writers.write_events(tmp_path / "ev.jsonl", EVENTS, settings=SETTINGS)
    back = [json.loads(line) for line in open(tmp_path / "ev.jsonl")]
    assert [b["label"] for b in back] == ["dog", "rain", "dog"] and back[0]["score"] == pytest.approx(0.9)


def test_parquet_events_carry_the_settings_in_their_metadata(tmp_path):
    import pyarrow.parquet as pq

    writers.write_events(tmp_path / "ev.parquet", EVENTS, settings=SETTINGS)
    table = pq.read_table(tmp_path / "ev.parquet")
    assert table.column_names == ["path", "label", "start_s", "end_s", "score", "mean_score"]
    assert table.num_rows == 3
    assert writers.read_settings(tmp_path / "ev.parquet") == SETTINGS
    assert not (tmp_path / "ev.parquet.meta.json").exists()


def test_raven_tables_combined_with_file_offsets_and_per_file(tmp_path):
    writers.write_events(tmp_path / "sel.txt", EVENTS, fmt="raven", durations=DURATIONS, settings=SETTINGS)
    rows = list(csv.DictReader(open(tmp_path / "sel.txt"), delimiter="\t"))
    assert list(rows[0])[:9] == list(writers.RAVEN_COLUMNS)
    assert [r["Selection"] for r in rows] == ["1", "2", "3"]
    # b.wav follows a.wav (10 s): its event at 0.5 s is at 10.5 s of the sequence, 0.5 s into its file
    assert float(rows[2]["Begin Time (s)"]) == pytest.approx(10.5) and float(rows[2]["End Time (s)"]) == 11.0
    assert rows[2]["Begin Path"] == "/data/b.wav" and float(rows[2]["File Offset (s)"]) == 0.5
    assert rows[0]["View"] == "Spectrogram 1" and rows[0]["Channel"] == "1" and rows[0]["Label"] == "dog"
    written = writers.write_events(tmp_path / "tables", EVENTS, fmt="raven", durations=DURATIONS, per_file=True)
    assert sorted(p.name for p in written) == ["a.selections.txt", "b.selections.txt"]
    b_rows = list(csv.DictReader(open(tmp_path / "tables" / "b.selections.txt"), delimiter="\t"))
    assert float(b_rows[0]["Begin Time (s)"]) == 0.5 and "File Offset (s)" not in b_rows[0]


def test_audacity_label_track(tmp_path):
    one = [e for e in EVENTS if e["path"] == "/data/a.wav"]
    writers.write_events(tmp_path / "labels.txt", one, fmt="audacity")
    lines = open(tmp_path / "labels.txt").read().splitlines()
    assert [line.split("\t") for line in lines] == [["1.000000", "2.500000", "dog 0.9000"],
                                                    ["3.000000", "4.000000", "rain 0.8000"]]


def test_unknown_suffixes_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="--format raven"):
        writers.format_for("events.txt")
    with pytest.raises(ValueError, match=".csv"):
        writers.format_for("events.xlsx")


# -- bad input: one line, exit 2, before the model loads ---------------------------------------------


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rec")
    rng = np.random.default_rng(0)
    path = folder / "rec.wav"
    sf.write(path, (rng.standard_normal(44100 * 9) * 0.05).astype(np.float32), 44100)
    return path


@pytest.mark.parametrize("args, message", [
    (["--labels", "dog,rain,dog"], "more than once"),
    (["--labels", "dog", "--method", "windows", "--window", "2", "--hop", "3"], "longer than --window"),
    (["--labels", "dog", "--threshold", "1.5"], "[0, 1]"),
    (["--labels", "dog", "--threshold", "0.4", "--threshold-low", "0.6"], "above --threshold"),
    (["--labels", "dog", "--threshold-low", "0.7"], "above the threshold in use (0.5)"),
    (["--labels", "dog", "--format", "raven", "--per-file", "-o", "{tmp}/tables"], "holds an earlier output"),
    (["--labels", "dog", "-o", "{tmp}/ev.txt"], "--format raven"),
    (["--labels", "dog", "-o", "{tmp}/ev.xlsx"], "not an output format"),
    (["--labels", "dog", "--frames", "{tmp}/fr.txt"], "--frames"),
])
def test_bad_input_is_one_line_and_exit_2_before_the_model_loads(wav, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "ev.csv")]
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "rec.selections.txt").write_text("edited by hand in Raven\n")
    # a checkpoint that does not exist: the usage error comes first, so nothing tried to load it
    result = _cli(wav, *args, "--checkpoint", str(tmp_path / "no-such-weights.pt"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list(tmp_path.glob("ev*"))
    assert (tmp_path / "tables" / "rec.selections.txt").read_text() == "edited by hand in Raven\n"


def test_an_output_another_job_writes_is_refused(wav, tmp_path):
    from audioclip.detection.job import lock_path
    from audioclip.io import exclusive_lock

    out = tmp_path / "ev.csv"
    with exclusive_lock(lock_path(out)):
        result = _cli(wav, "--labels", "dog", "-o", out, "--checkpoint", tmp_path / "no-such-weights.pt")
    assert result.returncode == 2 and "another job" in result.stderr, result.stderr


# -- whole runs ---------------------------------------------------------------------------------------


def test_detect_writes_events_frames_and_a_plot_and_names_a_bad_file(wav, tmp_path):
    pytest.importorskip("matplotlib")
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    out, frames = tmp_path / "ev.parquet", tmp_path / "frames.csv"
    result = _cli(wav, bad, "--labels", "dog,rain", "--checkpoint", "AudioCLIP-tiny", "-o", out,
                  "--frames", frames, "--threshold", "0", "--plot", tmp_path / "plots")
    assert result.returncode == 3, result.stderr
    assert "bad.wav" in result.stderr
    events = pq.read_table(out).to_pylist()
    assert {e["label"] for e in events} == {"dog", "rain"} and all(e["path"] == str(wav) for e in events)
    assert writers.read_settings(out)["threshold"] == 0.0
    rows = list(csv.DictReader(open(frames)))
    assert list(rows[0]) == ["path", "start_s", "end_s", "label", "score"]
    assert float(rows[-1]["end_s"]) <= 9.0 + 1e-9
    assert (tmp_path / "plots" / "rec.png").stat().st_size > 0
    assert not Path(str(out) + ".parts").exists()


def test_resume_skips_files_whose_part_is_kept(wav, tmp_path):
    """A parts folder left by a killed run: its files are not run again, and the output holds them."""
    from audioclip.detection import job as job_module

    out = tmp_path / "ev.csv"
    parts = job_module.parts_path(out)
    first = _cli(wav, "--labels", "dog,rain", "--checkpoint", "AudioCLIP-tiny", "-o", tmp_path / "x.csv",
                 "--threshold", "0", "--frames", tmp_path / "x.parquet")
    assert first.returncode == 0, first.stderr
    settings = writers.read_settings(tmp_path / "x.csv")
    # what a killed run leaves: the settings and one finished file (with a made-up event to recognise it)
    parts.mkdir()
    (parts / "settings.json").write_text(json.dumps(settings))
    fake = {"path": str(wav), "duration_s": 9.0, "method": "columns", "labels": ["dog", "rain"],
            "events": [{"label": "dog", "start_s": 1.0, "end_s": 2.0, "score": 0.5, "mean_score": 0.5}],
            "scores": [[0.5, 0.5]], "start_s": [0.0], "end_s": [0.4], "cell_start": [0.0], "cell_end": [9.0]}
    (parts / f"{job_module._key(str(wav))}.json").write_text(json.dumps(fake))
    result = _cli(wav, "--labels", "dog,rain", "--checkpoint", "AudioCLIP-tiny", "-o", out, "--threshold", "0")
    assert result.returncode == 0, result.stderr
    assert "resumed: 1 file" in result.stderr
    rows = list(csv.DictReader(open(out)))
    assert [(r["label"], r["start_s"]) for r in rows] == [("dog", "1.0")]
    # other settings: the parts are not mixed with them
    parts.mkdir()
    (parts / "settings.json").write_text(json.dumps({**settings, "threshold": 0.9}))
    out.unlink()
    other = _cli(wav, "--labels", "dog,rain", "--checkpoint", "AudioCLIP-tiny", "-o", out, "--threshold", "0")
    assert other.returncode == 1 and "other settings (threshold)" in other.stderr, other.stderr


# -- evaluate --task detection ---------------------------------------------------------------------------


def test_detection_metrics_on_a_hand_made_case():
    pytest.importorskip("sed_eval")
    from audioclip.evaluate.detection import score_events

    reference = {"a.wav": [{"onset": 1.0, "offset": 3.0, "label": "dog"},
                           {"onset": 5.0, "offset": 6.0, "label": "rain"}]}
    estimated = {"a.wav": [{"start_s": 1.1, "end_s": 3.1, "label": "dog"},   # onset within the 200 ms collar
                           {"start_s": 5.5, "end_s": 6.0, "label": "rain"}]}  # 500 ms late: a miss and a false alarm
    m = score_events(reference, estimated, ["dog", "rain"])
    # events: 1 hit, 1 deletion, 1 insertion of 2 reference events
    assert m["event"]["f1"] == pytest.approx(0.5) and m["event"]["error_rate"] == pytest.approx(1.0)
    assert m["class_f1"] == {"dog": pytest.approx(1.0), "rain": pytest.approx(0.0)}
    # 1 s segments: dog in 1, 2 (estimated also in 3: one false positive), rain in 5: TP 3, FP 1, FN 0
    assert m["segment"]["precision"] == pytest.approx(0.75) and m["segment"]["recall"] == pytest.approx(1.0)
    assert m["segment"]["f1"] == pytest.approx(6 / 7)


def test_annotations_in_the_urban_sed_layout_and_as_csv(tmp_path):
    from audioclip.evaluate.detection import find_annotated, read_annotations

    (tmp_path / "audio" / "test").mkdir(parents=True)
    (tmp_path / "annotations" / "test").mkdir(parents=True)
    sf.write(tmp_path / "audio" / "test" / "x.wav", np.zeros(4410, np.float32), 44100)
    (tmp_path / "annotations" / "test" / "x.txt").write_text("0.5\t1.5\tdog bark\n2\t3\tsiren\n")
    sf.write(tmp_path / "y.wav", np.zeros(4410, np.float32), 44100)
    (tmp_path / "y.csv").write_text("filename,onset,offset,event_label\ny.wav,0.1,0.2,rain\n")
    found = dict(find_annotated(tmp_path))
    assert found[str(tmp_path / "audio" / "test" / "x.wav")][0] == {"onset": 0.5, "offset": 1.5, "label": "dog bark"}
    assert found[str(tmp_path / "y.wav")] == [{"onset": 0.1, "offset": 0.2, "label": "rain"}]
    (tmp_path / "bad.txt").write_text("1 x dog\n")
    with pytest.raises(ValueError, match="line 1"):
        read_annotations(tmp_path / "bad.txt")


def test_a_finished_output_is_kept_unless_overwrite(wav, tmp_path):
    out = tmp_path / "ev.csv"
    out.write_text("path,label,start_s,end_s,score,mean_score\n")
    result = _cli(wav, "--labels", "dog", "-o", out, "--checkpoint", tmp_path / "no-such-weights.pt")
    assert result.returncode == 2 and "--overwrite" in result.stderr, result.stderr
