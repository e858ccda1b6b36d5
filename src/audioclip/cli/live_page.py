"""``audioclip serve --listen SOURCE``: a live source's scores and events on the search page.

The listener is ``listen``'s (same options, windows, scores and post-processing), run on a
thread of its own with the index's model; what it reports goes to a
:class:`~audioclip.index.live_feed.LiveFeed`, which streams it to the page (``GET /api/live``).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from dataclasses import dataclass

from .listen import add_listening_options, check_listening, open_checked_source
from .report import UsageError

__all__ = ["LivePlan", "add_live_options", "check_live", "start_live"]

#: where serve's namespace keeps its listening options: dest -> (the option, its default)
_LISTENING = "_listening_options"


@dataclass
class LivePlan:
    """What ``--listen`` needs, checked before the model loads: the source opened, the labels or head."""

    source: object
    labels: list[str] | None
    templates: list[str] | None
    head: object


def add_live_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("live (see docs/listening.md)")
    group.add_argument("--listen", metavar="SOURCE",
                       help="also listen to SOURCE ('mic', '-' or a file or URL FFmpeg opens, as 'audioclip listen') "
                       "and show its scores and events on the page, as they happen; the options below are "
                       "listen's; without --labels, the listener uses --head")
    # The listening options mean nothing without --listen. Their defaults are read from a parser of their own
    # (public argparse only), and on serve's parser they default to a marker, so that check_live tells one given
    # without --listen (even at its default value) and then fills in the real defaults.
    probe = argparse.ArgumentParser(add_help=False)
    add_listening_options(probe, head=False)
    defaults = vars(probe.parse_args([]))
    add_listening_options(parser, head=False)
    parser.set_defaults(**dict.fromkeys(defaults, _NOT_GIVEN), **{_LISTENING: defaults})


#: the options whose name is not their destination's
_OPTION_NAMES = {"pcm_format": "--format"}
#: the default of a listening option on serve's command line: not given
_NOT_GIVEN = object()


def check_live(args: argparse.Namespace) -> LivePlan | None:
    """The checked ``--listen`` plan (None without ``--listen``); a usage error for listening options without it."""
    listening = getattr(args, _LISTENING, {})
    given = [name for name in listening if getattr(args, name, _NOT_GIVEN) is not _NOT_GIVEN]
    if args.listen is None and given:
        name = given[0]
        raise UsageError(f"{_OPTION_NAMES.get(name, '--' + name.replace('_', '-'))} goes with --listen SOURCE")
    for name, default in listening.items():
        if name not in given:
            setattr(args, name, default)
    if args.listen is None:
        return None
    args.source = args.listen
    labels, templates, head = check_listening(args)
    return LivePlan(open_checked_source(args), labels, templates, head)


def shown_source(name: str) -> str:
    """What the page says is listened to: never a folder of this machine, nor a URL's password or query."""
    from urllib.parse import urlsplit

    from audioclip.util import is_uri

    if name in ("mic", "-"):
        return {"mic": "the microphone", "-": "standard input"}[name]
    if is_uri(name):
        url = urlsplit(name)
        host = url.hostname or ""
        if url.port:
            host = f"{host}:{url.port}"
        return f"{url.scheme}://{host}/{url.path.rstrip('/').rsplit('/', 1)[-1]}" if host else url.scheme
    return os.path.basename(name.rstrip("/\\")) or name


def start_live(args: argparse.Namespace, plan: LivePlan, model):
    """Start listening on a thread with ``model``; returns the feed to hand the server, and a ``stop()``."""
    from audioclip.index.live_feed import LiveFeed

    from .listen import make_listener

    feed: LiveFeed | None = None

    def on_event(event: dict) -> None:
        feed.publish("event", event)

    def on_frame(frames: list[dict]) -> None:
        windows: dict[float, dict] = {}  # one message per window: its scores by label
        for f in frames:
            window = windows.setdefault(f["start_s"], {"start_s": f["start_s"], "end_s": f["end_s"],
                                                       "emitted_s": f["emitted_s"], "dropped": f["dropped"],
                                                       "scores": {}})
            window["scores"][f["label"]] = round(f["score"], 5)
        for window in windows.values():
            feed.publish("frame", window)

    def on_drop(skipped: int, total: int) -> None:
        feed.publish("status", {"state": "behind", "dropped": total})

    listener, labels = make_listener(args, model, plan.source, plan.labels, plan.templates, plan.head,
                                     on_event=on_event, on_frame=on_frame, on_drop=on_drop)
    feed = LiveFeed({"source": shown_source(args.listen), "labels": list(labels), "window": args.window, "hop": args.hop})

    def run() -> None:
        try:
            report = listener.run()
        except Exception as err:  # noqa: BLE001 - the page and stderr say why; the search page goes on
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(f"audioclip: error: --listen {args.listen}: {message}", file=sys.stderr)
            feed.publish("status", {"state": "error", "message": "the source failed; see the server's log"})
            return
        print(f"audioclip: --listen {args.listen}: the source ended after {report.seconds:.1f} s: {report.windows} "
              f"window(s) scored, {report.dropped} dropped, {report.events} event(s)", file=sys.stderr)
        feed.publish("status", {"state": "ended", "seconds": round(report.seconds, 3), "windows": report.windows,
                                "dropped": report.dropped, "events": report.events})

    thread = threading.Thread(target=run, name="audioclip-listen", daemon=True)
    thread.start()
    return feed, listener.stop
