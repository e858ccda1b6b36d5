"""``audioclip serve``: a web page to search an index (the ``index`` extra), on 127.0.0.1 by default."""

from __future__ import annotations

import argparse

from .index import (
    INDEX_EXTRAS,
    add_db_option,
    add_index_model_options,
    check_db_exists,
    check_index_model_options,
    open_index,
)
from .live_page import add_live_options, check_live, start_live
from .options import add_logging_options, port, positive_float, positive_int, set_command
from .report import EXIT_NOTHING_DONE, UsageError, error

__all__ = ["register_serve"]


MAX_UPLOAD_MB = 4096.0  # --max-upload-mb at most: an upload is kept whole on disk and decoded in one worker
MAX_QUERY_SECONDS = 86400.0  # --max-query-seconds at most: the media layer's default duration limit (24 h)


def _run_serve(args: argparse.Namespace) -> int:
    check_db_exists(args)
    check_index_model_options(args)
    if args.max_connections_per_client > args.max_connections:
        raise UsageError(f"--max-connections-per-client ({args.max_connections_per_client}) cannot be more than "
                         f"--max-connections ({args.max_connections})")
    head = _load_head(args) if args.head else None  # a usage error, before the port is taken
    live = check_live(args)  # --listen: the source opened, the labels (or --head) read
    sock = _listen(args)  # before the index is opened and the model loaded: a bad address fails at once
    if sock is None:
        return EXIT_NOTHING_DONE

    from audioclip.index.server import ConnectionLimits, serve

    try:
        index = open_index(args)
        if head is not None:
            _check_head(head, index, args.db)
        if live is not None:
            live, stop_listening = start_live(args, live, index.model)  # the index's model, loaded now
    except BaseException:  # an index that cannot be used (report.run: one line, 1), a checkpoint that cannot load
        sock.close()  # the port is free again
        raise
    limits = ConnectionLimits(max_connections=args.max_connections,
                              max_connections_per_client=args.max_connections_per_client,
                              client_rate=args.max_requests_per_client,
                              client_burst=max(1, round(_BURST_SECONDS * args.max_requests_per_client)))
    try:
        return serve(index, host=args.host, port=args.port, max_upload=int(args.max_upload_mb * 1e6),
                     quiet=args.quiet, allowed_hosts=args.allowed_host or (),
                     max_query_seconds=args.max_query_seconds, limits=limits, sock=sock, head=head,
                     timeline=timeline_scores, live=live)
    finally:
        if live is not None:
            stop_listening()


def _load_head(args: argparse.Namespace):
    """``--head HEAD_DIR``, read before the index opens (a bad folder is a usage error)."""
    from audioclip.heads import HeadError, load_head

    try:
        return load_head(args.head)
    except HeadError as err:
        raise UsageError(str(err)) from None


def _check_head(head, index, db: str) -> None:
    """The head was fitted on the index's checkpoint, for vectors of its size (a usage error otherwise)."""
    from audioclip.heads import HeadMismatchError

    meta = index.meta or {}
    try:
        head.check_checkpoint(meta.get("checkpoint"), what=f"the index {db}'s")
    except HeadMismatchError as err:
        raise UsageError(str(err)) from None
    if meta.get("dim") is not None and int(meta["dim"]) != head.dim:
        raise UsageError(f"head {head.folder} takes {head.dim}-d vectors; the index {db} holds {meta['dim']}-d ones")


def timeline_scores(model, path: str, text: str, threshold: float, audio=None) -> dict:
    """The page's timeline of ``text`` in the recording ``path`` (``/api/timeline``, ``index/timeline.py``), or
    in ``audio``, the recording already decoded (``(channels, samples)``; ``path`` then only names it).

    Scores by the ``columns`` method (:func:`audioclip.detection.query_scores`: ``(1 + cosine) / 2`` per 0.41 s),
    events where they pass ``threshold`` (:func:`~audioclip.detection.postprocess.events_from_scores`).
    ``start``/``end`` are the seconds each score stands for, consecutive.
    """
    from audioclip.detection import query_scores
    from audioclip.detection.postprocess import PostProcessing, events_from_scores

    found = query_scores(model, path, text, method="columns", audio=audio)
    events = events_from_scores(found.scores, found.cell_start, found.cell_end, found.labels,
                                PostProcessing(threshold=threshold))
    rounded = lambda values: [round(float(v), 4) for v in values]  # noqa: E731
    return {"duration": round(found.duration_s, 4), "start": rounded(found.cell_start), "end": rounded(found.cell_end),
            "score": rounded(found.scores[:, 0]),
            "events": [{"start": round(e["start_s"], 4), "end": round(e["end_s"], 4), "score": round(e["score"], 4)}
                       for e in events]}


_BURST_SECONDS = 5  # a client may make this many seconds' worth of --max-requests-per-client at once


def _listen(args: argparse.Namespace):
    """The listening socket of ``--host`` and ``--port``, or None after saying why there is none.

    A name that does not resolve, or an address that is not this machine's, is a
    usage error (2): the command line is wrong. A port in use or not allowed
    (below 1024) gives None (status 1): the command is right, the machine is
    not ready for it, as for an index that cannot be used.
    """
    import errno
    import socket

    from audioclip.index.hosts import listen

    try:
        return listen(args.host, args.port)
    except socket.gaierror as err:
        if err.errno == socket.EAI_AGAIN:  # no answer from the name servers now: the name may be right
            error(args, f"cannot listen on {args.host}:{args.port}: {err.strerror or err}")
            return None
        raise UsageError(f"--host {args.host}: not a host name or address ({err.strerror or err})") from None
    except OSError as err:
        if err.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"--host {args.host}: not an address of this machine ({err.strerror})") from None
        error(args, f"cannot listen on {args.host}:{args.port}: {err.strerror or err}")  # the port is taken, say
        return None


def _bounded(kind, most: float):
    """An argparse type: ``kind(text)``, and at most ``most``."""
    def parse(text: str):
        value = kind(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:g}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _allowed_host(text: str) -> str:
    """An ``--allowed-host`` value, as the Host check compares it (a usage error if it is no host name)."""
    from audioclip.index.hosts import host_name

    try:
        return host_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def register_serve(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="a web page to search an index (text, uploaded sound or picture)",
        description="Serve a search page for the index: a search box, sound and picture uploads, results with "
        "players starting at the matching time and thumbnails. Only indexed files are served, and only while "
        "they are the files indexed (a file changed or replaced by a link since is not). Requests must name "
        "this machine as localhost, 127.0.0.1, [::1], the --host address or an --allowed-host. Uploads are "
        "kept in a private temporary folder for the duration of the query, decoded by a separate process "
        "within a time budget, two at a time.",
        epilog="exit status: 0 stopped (Ctrl-C); 1 the index cannot be used, the port is taken (or below 1024), or "
        "the server did not start; 2 usage error (a --host that is no name or address of this machine included). "
        "The address is taken before the model loads, so these are found at once.")
    add_db_option(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                        "machine only; the page serves your indexed files to anyone who can reach it)")
    parser.add_argument("--port", type=port, default=8000, help="TCP port, 1-65535 (default: 8000)")
    parser.add_argument("--allowed-host", action="append", metavar="NAME", type=_allowed_host,
                        help="a host name (or address) that requests may name in their Host header, besides "
                        "localhost, 127.0.0.1, [::1] and the --host address; repeat for more. Needed with "
                        "--host 0.0.0.0 to be reached by a name (e.g. --allowed-host mypc.lan; a port, as in "
                        "mypc.lan:8000, is ignored: any port of that name is accepted; IPv6 as [fe80::1])")
    parser.add_argument("--max-upload-mb", type=_bounded(positive_float, MAX_UPLOAD_MB), default=20.0, metavar="MB",
                        help=f"largest query upload, at most {MAX_UPLOAD_MB:g} (default: 20 MB)")
    parser.add_argument("--max-query-seconds", type=_bounded(positive_float, MAX_QUERY_SECONDS), default=600.0,
                        metavar="SECONDS", help="longest uploaded recording or video searched with, and "
                        "longest indexed recording the page draws a timeline of, at most "
                        f"{MAX_QUERY_SECONDS:g} (default: 600)")
    parser.add_argument("--max-connections", type=_bounded(positive_int, 65536), default=64, metavar="N",
                        help="open connections in all; past it, requests are answered 503 at once (default: 64)")
    parser.add_argument("--max-connections-per-client", type=_bounded(positive_int, 65536), default=16,
                        metavar="N", help="open connections of one client address (an IPv6 /64), at most "
                        "--max-connections; more are closed at once, so that one client cannot take them all. "
                        "Behind a reverse proxy every client has the proxy's address: raise it to "
                        "--max-connections there (default: 16)")
    parser.add_argument("--max-requests-per-client", type=_bounded(positive_float, 1e6), default=20.0,
                        metavar="RATE", help=f"requests a second one client address may make on average, after "
                        f"a burst of {_BURST_SECONDS} seconds' worth; past it, 429 (default: 20)")
    parser.add_argument("--head", metavar="HEAD_DIR",
                        help="a head written by 'audioclip fit' on the index's checkpoint: the page then filters "
                        "sound results by the head's label for them (a head of another checkpoint is a usage error)")
    add_index_model_options(parser)
    add_live_options(parser)
    add_logging_options(parser)
    set_command(parser, _run_serve, extras=INDEX_EXTRAS)
