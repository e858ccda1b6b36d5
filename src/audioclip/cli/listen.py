"""``audioclip listen SOURCE``: sound events live, from a microphone, standard input or a stream.

Everything that can be checked is checked before the model loads: labels, thresholds,
``--window``/``--hop``, the log's format (one that can be appended), the microphone library,
a log another ``listen`` is writing.
"""

from __future__ import annotations

import argparse
import os
import sys

from .detect import _head, add_event_options, check_threshold_low
from .classify import _labels, _templates, add_label_options, add_template_options
from .model import check_model_options, load_model
from .options import add_logging_options, add_model_options, number_in, positive_int, seconds, set_command
from .report import EXIT_OK, STATUS_EPILOG, UsageError, note

__all__ = ["register_listen"]

#: formats of ``-o`` that can be appended line by line (detect's others cannot: Parquet, Raven's numbered table)
LOG_FORMATS = ("jsonl", "csv", "audacity")
PCM_FORMATS = ("s16le", "f32le")
#: the shortest window: the audio head's analysis frame (1654 samples at 44.1 kHz)
MIN_WINDOW = 1654 / 44100


def _log_format(path: str, given: str | None) -> str:
    if given:
        return given
    suffix = os.path.splitext(path)[1].lower()
    found = {".jsonl": "jsonl", ".csv": "csv"}.get(suffix)
    if found is None:
        raise UsageError(f"-o {path}: '{suffix or 'no suffix'}' is not a log format; use .jsonl or .csv, or "
                         "--log-format audacity (Parquet and Raven tables cannot be appended to: convert the log later)")
    return found


def _check(args: argparse.Namespace) -> None:
    if args.head is None and not (args.labels or args.labels_file):
        raise UsageError("no labels: give --labels 'dog,rain,siren', --labels-file FILE or --head DIR")
    if args.window < MIN_WINDOW:
        raise UsageError(f"--window {args.window:g} is shorter than one analysis frame of the audio head "
                         f"({MIN_WINDOW:.3f} s)")
    if args.hop > args.window:
        raise UsageError(f"--hop {args.hop:g} is longer than --window {args.window:g}: audio between windows "
                         "would never be scored")
    if args.source == "mic":
        from audioclip.live.sources import sounddevice_problem

        problem = sounddevice_problem()
        if problem:
            raise UsageError(problem)
    elif args.source != "-":
        from audioclip.util import is_uri

        if not is_uri(args.source) and not os.path.exists(args.source):
            raise UsageError(f"{args.source}: no such file (a source is 'mic', '-' or a file or URL FFmpeg opens)")
        if not is_uri(args.source) and os.path.isdir(args.source):
            raise UsageError(f"{args.source}: is a folder; listen takes one source")
    if args.realtime and args.source in ("mic", "-"):
        raise UsageError("--realtime paces a file; a microphone and standard input run at their own pace")
    if getattr(args, "output", None):
        args.log_format = _log_format(args.output, args.format)
        if os.path.isdir(args.output):
            raise UsageError(f"-o {args.output}: is a folder")
    elif getattr(args, "format", None):
        raise UsageError("--log-format goes with -o FILE")
    if getattr(args, "frames", None) and args.frames != "-" and os.path.isdir(args.frames):
        raise UsageError(f"--frames {args.frames}: is a folder")


def check_listening(args: argparse.Namespace):
    """The labels, templates and head of the listening options, all checked (before the model loads)."""
    # serve --listen: --head is also the page's label filter; --labels, if given, are what is listened for
    use_head = args.head is not None and not (args.labels or args.labels_file)
    labels = _labels(args) if not use_head else None
    templates = _templates(args) if not use_head else None
    _check(args)
    head = _head(args) if use_head else None
    check_threshold_low(args, head)
    return labels, templates, head


def _run_listen(args: argparse.Namespace) -> int:
    labels, templates, head = check_listening(args)
    check_model_options(args)

    from contextlib import ExitStack

    from audioclip.io import exclusive_lock

    with ExitStack() as stack:
        if args.output:  # a second listen on one log waits for nothing: it is refused (exit 2)
            stack.enter_context(exclusive_lock(args.output + ".lock"))
        return _listen(args, labels, templates, head, stack)


def open_checked_source(args: argparse.Namespace):
    """The source of the listening options, opened; a local file that is no sound is a usage error."""
    from audioclip.live.sources import open_source

    source = open_source(args.source, fmt=args.pcm_format, rate=args.rate, channels=args.channels, mono=args.mono,
                         realtime=args.realtime, retry=args.retry, device_name=args.device_name)
    if hasattr(source, "probe") and not source.network:  # a local file that is no sound: before the model loads
        from audioclip.live.sources import SourceError

        try:
            source.probe()
        except SourceError as err:
            raise UsageError(str(err)) from None
    return source


def make_listener(args: argparse.Namespace, model, source, labels, templates, head, **callbacks):
    """A :class:`~audioclip.live.listener.Listener` of ``source`` with the listening options' windows, scores and
    post-processing; ``callbacks``: its ``on_event``, ``on_frame``, ``on_drop``. Returns it and its labels."""
    from audioclip.detection import PostProcessing, _check_head_checkpoint, head_scorer, zero_shot_scorer
    from audioclip.live.listener import Listener

    if head is not None:
        try:
            _check_head_checkpoint(model, head)
        except ValueError as err:
            raise UsageError(f"--head {args.head}: {err}") from None
        labels, scorer, calibrated = head_scorer(head)
    else:
        scorer, calibrated = zero_shot_scorer(model, labels, templates), None
    threshold = args.threshold if args.threshold is not None else (calibrated if calibrated is not None else 0.5)
    post = PostProcessing(threshold=threshold if isinstance(threshold, float) else tuple(threshold),
                          threshold_low=args.threshold_low, median_filter_s=args.median_filter,
                          min_duration_s=args.min_duration, merge_gap_s=args.merge_gap, top_k=args.top_k)
    # a recording read from a regular file (not paced) waits for the model instead of being dropped
    drop = not (args.no_drop or (getattr(source, "regular_file", False) and not args.realtime))
    listener = Listener.from_model(model, source, scorer, labels, window=args.window, hop=args.hop, postprocess=post,
                                   emit=args.emit, drop=drop, max_delay=args.max_delay, batch_size=args.batch_size,
                                   **callbacks)
    return listener, labels


def _listen(args, labels, templates, head, stack) -> int:
    from audioclip.live.listener import EventLog, json_line, stderr_line

    source = open_checked_source(args)
    model = load_model(args)
    listener = None

    log = None
    if args.output:
        log = EventLog(args.output, args.log_format, args.source)
        stack.callback(log.close)
    frames_out = None
    if args.frames == "-":
        frames_out = sys.stdout
    elif args.frames:
        frames_out = stack.enter_context(open(args.frames, "a", encoding="utf-8"))
    events_to_stdout = args.frames != "-"
    state = {"pipe": False}

    def on_event(event: dict) -> None:
        if log is not None:
            log.write(event)
        if events_to_stdout and not state["pipe"]:
            try:
                json_line(sys.stdout, event)
            except BrokenPipeError:
                _quiet_stdout()
                state["pipe"] = True
                listener.stop()

    def on_frame(frames: list[dict]) -> None:
        if frames_out is None or (frames_out is sys.stdout and state["pipe"]):
            return
        try:
            frames_out.write("".join(_dumps(f) + "\n" for f in frames))
            frames_out.flush()
        except BrokenPipeError:
            _quiet_stdout()
            state["pipe"] = True
            listener.stop()

    def on_drop(skipped: int, total: int) -> None:
        stderr_line(f"inference fell behind: {skipped} window(s) dropped ({total} so far)")

    listener, labels = make_listener(args, model, source, labels, templates, head, on_event=on_event,
                                     on_frame=on_frame, on_drop=on_drop)
    args.on_interrupt = "the events so far are in the log" if log is not None else None
    try:
        report = listener.run()
    except KeyboardInterrupt:
        listener.stop()
        listener.close_events()  # the events still open end at the last window heard
        raise
    if state["pipe"]:
        report.stopped_by = "broken pipe"
    note(args, f"listened {report.seconds:.1f} s: {report.windows} window(s) scored, {report.dropped} dropped, "
         f"{report.events} event(s)")
    return EXIT_OK


def _dumps(obj) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False)


def _quiet_stdout() -> None:
    """The reader of standard output went away: later writes (and the one at exit) go nowhere, quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _sample_rate(text: str) -> int:
    value = positive_int(text)
    if value > 768_000:
        raise argparse.ArgumentTypeError(f"must be at most 768000 Hz, got {text}")
    return value


def _channels(text: str) -> int:
    value = positive_int(text)
    if value > 64:
        raise argparse.ArgumentTypeError(f"must be at most 64, got {text}")
    return value


_retries = number_in(int, 0, 1000, "0 to 1000")


def add_listening_options(parser: argparse.ArgumentParser, head: bool = True) -> None:
    """What ``listen`` and ``serve --listen`` share: labels or a head, the source's format, windows, events.

    ``head=False``: the command has its own ``--head`` (``serve``'s), which the listener then uses too."""
    add_label_options(parser, head="a head fitted with 'audioclip fit' (its labels and threshold)" if head else None, example="dog barking,siren")
    add_template_options(parser)
    src = parser.add_argument_group("source")
    src.add_argument("--device-name", metavar="NAME|INDEX", help="mic: the input device (default: the system's)")
    src.add_argument("--format", dest="pcm_format", choices=PCM_FORMATS, default="s16le",
                     help="-: the sample format of raw PCM (default: s16le; a WAV stream says its own)")
    src.add_argument("--rate", type=_sample_rate, default=44100, help="-: raw PCM's sample rate (default: 44100)")
    src.add_argument("--channels", type=_channels, default=1, help="-, mic: channels (default: 1)")
    src.add_argument("--realtime", action="store_true", help="a file: play it at real time (default: as fast as "
                     "the model goes, every window scored)")
    src.add_argument("--retry", type=_retries, default=0,
                     help="a network stream that stalls or breaks: reopen it this many times, with back-off")
    src.add_argument("--mono", action="store_true", help="down-mix to one channel first")
    time = parser.add_argument_group("windows")
    time.add_argument("--window", type=seconds, default=2.0, help="window length (default: 2 s)")
    time.add_argument("--hop", type=seconds, default=0.5, help="seconds between windows (default: 0.5)")
    time.add_argument("--batch-size", type=positive_int, default=8,
                      help="windows per model call when several are waiting without being dropped (default: 8)")
    time.add_argument("--max-delay", type=number_in(float, 0, 60, "0 to 60 seconds"), default=1.0,
                      metavar="SECONDS",
                      help="windows may wait this long behind the newest for the model before the oldest are "
                      "dropped (default: 1; 0: only the newest window is scored, the lowest latency on a machine "
                      "that cannot keep up; without effect where nothing is dropped: --no-drop, a file)")
    time.add_argument("--no-drop", action="store_true",
                      help="wait for the model instead of dropping windows (a recording piped faster than it "
                      "plays; a live source then falls behind)")
    events = parser.add_argument_group("from scores to events (as detect)")
    add_event_options(events, live=True)
    events.add_argument("--emit", choices=("end", "onset"), default="end",
                        help="end (default): an event is reported when it ends; onset: also when it starts")


def register_listen(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "listen", help="sound events live, from a microphone, standard input or a stream",
        description="Listen to a source and report events as they happen: one JSON line per event on standard "
        "output (label, start and end as wall-clock ISO 8601 and seconds since listening began, peak score). "
        "Windows, scores and post-processing are those of 'detect --method windows'. When the model is slower "
        "than the audio for longer than --max-delay, the oldest pending windows are dropped and counted, never "
        "queued without bound. See "
        "docs/listening.md.", epilog=STATUS_EPILOG + " 130: interrupted (Ctrl-C), the log flushed.")
    parser.add_argument("source", metavar="SOURCE",
                        help="'mic' (the default input device), '-' (raw PCM or WAV on standard input) or a file or "
                        "URL that FFmpeg opens (RTSP, HTTP, Icecast)")
    add_listening_options(parser)
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", metavar="LOG",
                     help="also append each event to this log, flushed to disk line by line: .jsonl, .csv or "
                     "--log-format audacity (a restart appends)")
    out.add_argument("--log-format", dest="format", choices=LOG_FORMATS, help="the log's format (default: suffix)")
    out.add_argument("--frames", metavar="FILE|-",
                     help="stream every window's scores as JSON lines (start_s, end_s, label, score, emitted_s, "
                     "compute_s, dropped); '-': on standard output instead of the events")
    add_model_options(parser, precision=False)  # float32: the scores are detect's
    add_logging_options(parser)
    set_command(parser, _run_listen, quick_exit=True)
