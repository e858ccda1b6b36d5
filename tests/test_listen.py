"""audioclip listen: live events from standard input (no sound card), the causal tracker, drops, the log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audioclip.detection.postprocess import PostProcessing, events_from_scores
from audioclip.live.listener import EventLog, Listener
from audioclip.live.sources import StdinSource, SourceError
from audioclip.live.tracker import EventTracker

RATE = 44100
ENV = {**os.environ, "AUDIOCLIP_OFFLINE": "1"}


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "audioclip", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=ENV, **kwargs)


def _popen(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "audioclip", "listen", *map(str, args)], env=ENV, **kwargs)


def _recording(path: Path, seconds: float = 6.0, tone=(2.0, 4.0)) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.3 * np.sin(2 * np.pi * 440 * t) * ((t >= tone[0]) & (t < tone[1])) + 0.05 * rng.standard_normal(t.size)
    sf.write(path, x.astype(np.float32), RATE, subtype="PCM_16")
    return path


# -- the causal tracker is detect's post-processing ------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_tracker_frame_by_frame_gives_detects_events(seed):
    rng = np.random.default_rng(seed)
    labels = ["dog", "rain", "siren"]
    for trial in range(40):
        frames = int(rng.integers(1, 50))
        scores = np.clip(0.5 + 0.3 * np.cumsum(rng.normal(0, 0.25, (frames, 3)), axis=0), 0, 1)
        start = np.arange(frames) * 0.5
        high = float(rng.choice([0.5, 0.6]))
        settings = PostProcessing(threshold=high, threshold_low=float(rng.choice([0.3, high])),
                                  median_filter_s=float(rng.choice([0.0, 1.5, 2.5])),
                                  min_duration_s=float(rng.choice([0.0, 1.0, 2.0])),
                                  merge_gap_s=float(rng.choice([0.0, 0.5, 1.5])), top_k=rng.choice([None, 1]))
        want = events_from_scores(scores, start, start + 0.5, labels, settings)
        tracker = EventTracker(labels, settings, 0.5)
        got = []
        for i in range(frames):
            got += tracker.push(scores[i], start[i], start[i] + 0.5)
        got += tracker.finish()
        got = sorted((e.record() for e in got), key=lambda e: (e["start_s"], labels.index(e["label"])))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g["label"] == w["label"]
            assert g["start_s"] == pytest.approx(w["start_s"]) and g["end_s"] == pytest.approx(w["end_s"])
            assert g["score"] == pytest.approx(w["score"]) and g["mean_score"] == pytest.approx(w["mean_score"])


def test_tracker_reports_an_event_once_it_has_ended_and_an_onset_when_asked():
    settings = PostProcessing(threshold=0.5, merge_gap_s=1.0)
    for emit in ("end", "onset"):
        tracker = EventTracker(["x"], settings, 0.5, emit=emit)
        seen = []
        for i, s in enumerate([0, 1, 1, 0, 0, 0, 0, 0]):
            seen.append([(e.kind, e.start_s, e.end_s) for e in tracker.push([s], i * 0.5, i * 0.5 + 0.5)])
        onset = [[("onset", 0.5, 1.0)]] if emit == "onset" else [[]]
        # the event [0.5, 1.5) ends at 1.5; it is reported once the merge gap (1 s) has passed without a new run
        assert seen == [[]] + onset + [[], [], [], [("end", 0.5, 1.5)], [], []]


# -- sources -----------------------------------------------------------------------------------------


def _fd_with(data: bytes) -> int:
    read, write = os.pipe()
    threading.Thread(target=lambda: (os.write(write, data), os.close(write)), daemon=True).start()
    return read


def test_stdin_wav_stream_and_raw_pcm_give_the_samples(tmp_path):
    wav = _recording(tmp_path / "a.wav", 1.0)
    want = sf.read(wav, dtype="float32")[0]
    got = np.concatenate(list(StdinSource(fd=_fd_with(wav.read_bytes()))), axis=1)[0]
    np.testing.assert_array_equal(got, want)
    raw = (want * 32768).astype("<i2").tobytes()
    got = np.concatenate(list(StdinSource("s16le", 44100, 1, fd=_fd_with(raw))), axis=1)[0]
    np.testing.assert_array_equal(got, want)


def test_pcm_of_another_format_is_one_line_naming_the_format():
    raw = (np.sin(np.arange(44100) / 5) * 30000).astype("<i2").tobytes()
    with pytest.raises(SourceError, match="give --format s16le"):
        list(StdinSource("f32le", 44100, 1, fd=_fd_with(raw)))


# -- the loop: causal, wall-clock times, drops, bounded memory --------------------------------------


def _loud_scorer():
    """'loud' scores the window's peak (embed passes it through); no model needed."""
    embed = lambda batch: batch.abs().amax(dim=(1, 2))[:, None]  # noqa: E731
    scorer = lambda x: torch.cat([x.clamp(0, 1), 1 - x.clamp(0, 1)], dim=1)  # noqa: E731
    return embed, scorer


def _paced(seconds: float, speed: float, loud=(3.0, 5.0), fed=None, block_s: float = 0.1):
    """Blocks of a silent signal, ``loud`` between the given seconds, at ``speed`` times real time."""
    n = int(block_s * RATE)
    began = time.monotonic()
    for i in range(int(seconds / block_s)):
        t = (i * n + np.arange(n)) / RATE
        block = np.where((t >= loud[0]) & (t < loud[1]), 0.9, 0.0).astype(np.float32)[None]
        wait = began + i * block_s / speed - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if fed is not None:
            fed.append((i + 1) * n / RATE)
        yield block


def test_events_are_emitted_causally_with_wall_clock_times():
    fed, events = [], []
    embed, scorer = _loud_scorer()
    listener = Listener(_paced(8.0, 4.0, fed=fed), embed, scorer, ["loud", "quiet"], window=1.0, hop=0.25,
                        postprocess=PostProcessing(threshold=0.5), drop=False,
                        on_event=lambda e: events.append((e, fed[-1], time.time())))
    report = listener.run()
    loud = [(e, heard, at) for e, heard, at in events if e["label"] == "loud"]
    assert len(loud) == 1
    event, heard, at = loud[0]
    # the windows touching [3, 5) start at 2.25 .. 4.75: centres 2.75 .. 5.25, cells (the hop around them) from
    # 2.625 to 5.375
    assert (event["start_s"], event["end_s"]) == pytest.approx((2.625, 5.375))
    # reported only after the audio showing its end was heard: the first quiet window ends at 5 + 1
    assert heard >= 6.0
    from datetime import datetime

    start = datetime.fromisoformat(event["start"]).timestamp()
    assert start == pytest.approx(listener.wall0 + 2.625, abs=1e-3)
    assert datetime.fromisoformat(event["end"]).timestamp() - start == pytest.approx(2.75, abs=1e-3)
    assert at >= listener.wall0 + 6.0 / 4.0  # not before that audio arrived (played at 4x real time)
    assert report.dropped == 0 and report.windows == 29


def _slow_run(seconds: float) -> tuple:
    embed, scorer = _loud_scorer()

    def slow(x):
        time.sleep(0.05)
        return scorer(x)

    tracemalloc.start()
    listener = Listener(_paced(seconds, 20.0, block_s=0.05), embed, slow, ["loud", "quiet"], window=1.0, hop=0.1,
                        max_delay=0.0)
    report = listener.run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return report, peak, listener._ring.data.nbytes


def test_a_slow_scorer_drops_windows_counts_them_and_memory_stays_bounded():
    short, short_peak, short_ring = _slow_run(20.0)
    long, long_peak, long_ring = _slow_run(80.0)
    for report, seconds in ((short, 20.0), (long, 80.0)):
        grid = int(round((seconds - 1.0) / 0.1)) + 1  # every window on the grid: scored or dropped
        assert report.dropped > report.windows > 0
        assert report.windows + report.dropped == grid
    assert short_ring == long_ring  # the ring is sized by the window, not by how far behind the model is
    assert long_peak < short_peak * 1.5 + 1_000_000


def _spiky_run(max_delay: float, slow_s: float = 0.9, batch_size: int = 8) -> tuple:
    """8 s at real time, --window 1 --hop 0.25; the fifth model call (the window ending at 2 s) takes
    ``slow_s`` (another process took the CPU). Returns the report, the frames and the windows per call. The
    slow times end midway between two windows' completions, so that what is pending then is certain."""
    embed, scorer = _loud_scorer()
    calls, frames = [], []

    def spiky(x):
        calls.append(len(x))
        if len(calls) == 5:
            time.sleep(slow_s)
        return scorer(x)

    listener = Listener(_paced(8.0, 1.0), embed, spiky, ["loud", "quiet"], window=1.0, hop=0.25,
                        max_delay=max_delay, batch_size=batch_size, on_frame=frames.extend)
    return listener.run(), frames, calls


GRID = int((8.0 - 1.0) / 0.25) + 1  # windows of 1 s every 0.25 s in 8 s


def test_a_moment_of_slowness_delays_windows_instead_of_dropping_them():
    report, frames, calls = _spiky_run(max_delay=1.0)
    assert report.dropped == 0 and report.windows == GRID  # the windows that waited were scored afterwards
    assert calls[5] == 3  # together, in one batch: those completed at 2.25, 2.5 and 2.75 s
    latency = {f["start_s"]: f["emitted_s"] - f["end_s"] for f in frames}
    assert 0.5 < max(latency.values()) < 1.0 + 0.3  # late by the slow call, never more than max_delay behind
    assert sorted(latency.values())[len(latency) // 2] < 0.2  # and on time again once it caught up
    assert {f["dropped"] for f in frames} == {0}
    # fewer windows per call than are waiting: the rest in the next call, still none dropped
    report, _, calls = _spiky_run(max_delay=1.0, batch_size=2)
    assert report.dropped == 0 and report.windows == GRID and calls[5:7] == [2, 1]
    # only the newest window: those that waited are lost
    report, frames, calls = _spiky_run(max_delay=0.0)
    assert report.dropped == 2 and report.windows + report.dropped == GRID and calls[5] == 1
    assert {f["dropped"] for f in frames if f["end_s"] <= 2.0} == {0}
    assert {f["dropped"] for f in frames if f["end_s"] > 2.75} == {2}


def test_windows_that_would_wait_longer_than_max_delay_are_dropped():
    # 1.9 s: the windows completed at 2.25 ... 3.75 s are waiting (7); at most 1 + 0.5 / 0.25 = 3 may wait
    report, frames, calls = _spiky_run(max_delay=0.5, slow_s=1.9)
    assert calls[5] == 3 and report.dropped == 4 and report.windows + report.dropped == GRID
    after = [f["emitted_s"] - f["end_s"] for f in frames if 3.0 < f["end_s"] <= 3.75]
    assert after and 0.1 < max(after) < 0.75 + 0.25  # those kept waited at most max_delay and a hop


# -- the log ---------------------------------------------------------------------------------------


def test_event_log_appends_whole_lines_in_each_format(tmp_path):
    event = {"label": "dog", "start": "2026-01-01T00:00:00.000+00:00", "end": "2026-01-01T00:00:01.000+00:00",
             "start_s": 0.0, "end_s": 1.0, "score": 0.9, "mean_score": 0.8}
    for fmt, name in (("jsonl", "a.jsonl"), ("csv", "a.csv"), ("audacity", "a.txt")):
        for _ in range(2):  # a restart appends (the CSV header once)
            log = EventLog(tmp_path / name, fmt, "mic")
            log.write(event)
            log.write({**event, "event": "onset"})  # tables hold complete events only
            log.close()
    assert [json.loads(line)["label"] for line in open(tmp_path / "a.jsonl")] == ["dog"] * 4
    import csv

    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    assert len(rows) == 2 and rows[0]["path"] == "mic" and float(rows[0]["end_s"]) == 1.0
    assert open(tmp_path / "a.txt").read() == "0.000000\t1.000000\tdog 0.9000\n" * 2


# -- the command line --------------------------------------------------------------------------------


def test_listen_on_stdin_scores_equal_detects_window_scores(tmp_path):
    wav = _recording(tmp_path / "rec.wav", 6.5)
    common = ["--labels", "dog,siren,rain", "--checkpoint", "AudioCLIP-tiny", "--window", "2", "--hop", "0.5"]
    detect = subprocess.Popen([sys.executable, "-m", "audioclip", "detect", wav, *common, "--method", "windows",
                               "-o", tmp_path / "ev.csv", "--frames", tmp_path / "det.jsonl"], env=ENV,
                              stderr=subprocess.PIPE, text=True)
    with open(wav, "rb") as stdin:
        listen = _cli("listen", "-", *common, "--frames", tmp_path / "live.jsonl", stdin=stdin)
    assert detect.wait(600) == 0, detect.stderr.read()
    assert listen.returncode == 0, listen.stderr
    want = {(r["start_s"], r["label"]): r["score"] for r in map(json.loads, open(tmp_path / "det.jsonl"))}
    got = [json.loads(line) for line in open(tmp_path / "live.jsonl")]
    assert len(got) == 3 * 10  # windows at 0, 0.5 .. 4.5 s (detect adds one aligned to the end)
    for row in got:
        assert row["score"] == pytest.approx(want[row["start_s"], row["label"]], abs=1e-4)
        assert row["dropped"] == 0 and row["emitted_s"] >= 0


def _wait_for(path: Path, lines: int, proc, timeout: float = 300) -> list[str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            got = path.read_text().splitlines()
            if len(got) >= lines:
                return got
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        time.sleep(0.2)
    raise AssertionError(f"{path}: fewer than {lines} lines after {timeout} s")


def _feed(proc, seconds: float):
    x = (0.2 * np.sin(np.arange(int(seconds * RATE)) / 7) * 32767).astype("<i2").tobytes()
    proc.stdin.write(x)
    proc.stdin.flush()


def test_the_log_survives_sigkill_and_a_restart_appends(tmp_path):
    log = tmp_path / "events.jsonl"
    args = ["-", "--labels", "dog,siren", "--checkpoint", "AudioCLIP-tiny", "--threshold", "0", "--emit", "onset",
            "-o", log, "-q"]
    proc = _popen(*args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _feed(proc, 3.0)
    before = _wait_for(log, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    after_kill = log.read_text().splitlines()
    assert after_kill[:len(before)] == before and all(json.loads(line)["event"] == "onset" for line in after_kill)
    again = _popen(*args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _feed(again, 3.0)
    again.stdin.close()  # the stream ends: the open events end, exit 0
    assert again.wait(600) == 0
    lines = log.read_text().splitlines()
    assert lines[:len(after_kill)] == after_kill and len(lines) >= len(after_kill) + 4
    assert {json.loads(line)["event"] for line in lines[len(after_kill):]} == {"onset", "end"}


def test_ctrl_c_exits_130_with_the_open_events_in_the_log(tmp_path):
    log, frames = tmp_path / "events.csv", tmp_path / "frames.jsonl"
    proc = _popen("-", "--labels", "dog,siren", "--checkpoint", "AudioCLIP-tiny", "--threshold", "0", "-o", log,
                  "--frames", frames, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _feed(proc, 3.0)
    _wait_for(frames, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err.decode()
    rows = log.read_text().splitlines()
    assert rows[0].startswith("path,label,start_s,end_s") and len(rows) == 3  # both labels, ended at the interrupt
    assert len(out.decode().splitlines()) == 2  # and on standard output


def test_a_broken_pipe_on_stdout_ends_quietly(tmp_path):
    wav = _recording(tmp_path / "rec.wav", 6.0)
    with open(wav, "rb") as stdin:
        proc = _popen("-", "--labels", "dog,siren", "--checkpoint", "AudioCLIP-tiny", "--frames", "-", "-q",
                      stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(600) == 0, err
    assert json.loads(first)["label"] == "dog"
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception" not in err


@pytest.mark.parametrize("args, message", [
    (["-", "--window", "2", "--hop", "3"], "--hop 3 is longer than --window 2"),
    (["-", "--window", "0.02"], "shorter than one analysis frame"),
    (["-", "-o", "{tmp}/log.parquet"], "cannot be appended"),
    (["{tmp}/missing.wav"], "no such file"),
    (["-", "--threshold", "0.3", "--threshold-low", "0.6"], "is above --threshold"),
    (["-", "--threshold-low", "0.7"], "above the threshold in use (0.5)"),
    (["-", "--max-delay", "-1"], "--max-delay: must be 0 to 60 seconds, got -1"),
    (["-", "--max-delay", "61"], "--max-delay: must be 0 to 60 seconds, got 61"),
])
def test_bad_input_is_one_line_exit_2_before_the_model_loads(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = _cli("listen", *args, "--labels", "dog", "--checkpoint", tmp_path / "no-such-weights.pt",
                  stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_the_microphone_without_sounddevice_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['sounddevice'] = None; from audioclip.cli import main; "
            f"sys.exit(main(['listen', 'mic', '--labels', 'dog', '--checkpoint', {str(tmp_path / 'x.pt')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert 'pip install "audioclip[live]"' in result.stderr


def test_a_file_source_that_is_no_sound_is_refused_before_the_model_loads(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not a sound\n")
    result = _cli("listen", bad, "--labels", "dog", "--checkpoint", "AudioCLIP-tiny")
    assert result.returncode == 2 and "cannot be opened" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # no "random weights" warning: no model was made


def test_audio_waiting_when_listening_begins_counts_from_when_it_was_sent():
    """A pipe that filled while the model loaded: 2 s of audio are there at once, then it comes at real time."""
    def source():
        began = time.monotonic()
        for i in range(40):
            wait = began + (i - 20) * 0.1 - time.monotonic()  # the first 20 pieces are waiting already
            if wait > 0:
                time.sleep(wait)
            yield np.zeros((1, 4410), np.float32)

    frames = []
    embed, scorer = _loud_scorer()
    Listener(source(), embed, scorer, ["loud", "quiet"], window=1.0, hop=0.5, on_frame=frames.extend).run()
    latency = [f["emitted_s"] - f["end_s"] for f in frames]
    assert latency and min(latency) >= 0  # no score before its audio was sent


# -- a network stream that stalls is reopened --------------------------------------------------------


class _Stream:
    """An HTTP server on 127.0.0.1 playing a WAV: connections listed in ``plan`` ("stall": the header and 1 s,
    then nothing; "whole": the header and 2 s, then the end), the last entry repeated."""

    def __init__(self, plan: list[str]):
        import http.server
        import io

        self.plan, self.served, self.release = plan, [], threading.Event()
        rng = np.random.default_rng(3)
        buffer = io.BytesIO()
        sf.write(buffer, (0.1 * rng.standard_normal(10 * RATE)).astype(np.float32), RATE, format="WAV",
                 subtype="PCM_16")
        wav = buffer.getvalue()
        header, data = wav[:44], wav[44:]
        stream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                kind = stream.plan[min(len(stream.served), len(stream.plan) - 1)]
                stream.served.append(kind)
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                seconds = 1 if kind == "stall" else 2
                body = header + data[: seconds * RATE * 2]
                if kind == "whole":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if kind == "stall":
                    stream.release.wait(30)  # holds the connection open, sending nothing

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/live.wav"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_network_stream_that_stalls_is_reopened_with_back_off(capsys):
    from audioclip.live.sources import AVSource

    stream = _Stream(["stall", "stall", "whole"])
    waits = []
    try:
        source = AVSource(stream.url, retry=3, timeout_s=2.0, sleep=waits.append)
        samples = sum(block.shape[-1] for block in source)
    finally:
        stream.close()
    assert stream.served == ["stall", "stall", "whole"]
    assert waits == [1.0, 2.0]  # the wait doubles at each try
    # what each connection sent was played: 1 s, 1 s, then 2 s to the end (no more: the stream ended)
    assert 3.9 * RATE <= samples <= 4.0 * RATE
    lines = [line for line in capsys.readouterr().err.splitlines() if "stream lost" in line]
    assert lines == [f"audioclip listen: {stream.url}: stream lost; retry 1/3 in 1 s",
                     f"audioclip listen: {stream.url}: stream lost; retry 2/3 in 2 s"]


def test_a_network_stream_that_keeps_stalling_ends_in_one_line_after_its_retries():
    from audioclip.live.sources import AVSource

    stream = _Stream(["stall"])
    try:
        source = AVSource(stream.url, retry=2, timeout_s=2.0, sleep=lambda s: None)
        with pytest.raises(SourceError) as caught:
            for _ in source:
                pass
    finally:
        stream.close()
    assert len(stream.served) == 3  # the first try and two more
    message = str(caught.value)
    assert message.startswith(stream.url) and "\n" not in message


# -- the microphone, through a stand-in for sounddevice ----------------------------------------------


class _FakeInputStream:
    """sounddevice.InputStream's public shape: calls ``callback`` from its own thread with ``blocks`` blocks of
    ``blocksize`` frames, then stops (``active`` False: the device was unplugged)."""

    blocks = 5
    opened: list = []

    def __init__(self, *, samplerate, channels, dtype, device, blocksize, callback):
        if device == "nonesuch":
            raise ValueError("No input device matching 'nonesuch'")
        assert dtype == "float32" and samplerate == RATE
        self.channels, self.blocksize, self.callback, self.active = channels, blocksize, callback, False
        _FakeInputStream.opened.append(self)

    def __enter__(self):
        self.active = True

        def feed():
            for i in range(self.blocks):
                self.callback(np.full((self.blocksize, self.channels), 0.01 * (i + 1), np.float32), self.blocksize,
                              None, None)
                time.sleep(0.01)
            self.active = False

        threading.Thread(target=feed, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.active = False


def test_the_microphone_delivers_its_blocks_and_a_device_that_disappears_is_one_line(monkeypatch):
    import types

    from audioclip.live.sources import MicSource

    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(InputStream=_FakeInputStream))
    got = []
    with pytest.raises(SourceError) as caught:
        for block in MicSource(None, channels=2, mono=True):
            got.append(block)
    assert len(got) == 5 and all(b.shape == (1, int(0.1 * RATE)) for b in got)  # down-mixed, in order
    assert [float(b[0, 0]) for b in got] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])
    assert str(caught.value) == "microphone: the input device stopped (unplugged?)"
    with pytest.raises(SourceError) as caught:
        next(iter(MicSource("nonesuch")))
    assert str(caught.value) == "microphone nonesuch: No input device matching 'nonesuch'"
