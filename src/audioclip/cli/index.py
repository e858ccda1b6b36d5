"""``audioclip index``, ``audioclip search`` and ``audioclip serve`` (the ``index`` extra: LanceDB and FAISS;
``milvus`` for a Milvus store)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys

from ..util import is_uri
from .options import (
    MAX_WORKERS,
    EXIT_NOTHING_DONE,
    EXIT_OK,
    EXIT_SOME_FAILED,
    UsageError,
    add_logging_options,
    add_model_options,
    check_cached,
    check_checkpoint,
    check_device,
    check_inputs,
    error,
    light_open_clip,
    non_negative_float,
    note,
    port,
    positive_float,
    seconds,
    positive_int,
    progress_bar,
    set_command,
    verbose,
    worker_count,
)

__all__ = ["register_index", "register_search", "register_serve"]

_INDEX_EPILOG = ("exit status: 0 all files indexed (or nothing to do); 1 nothing could be indexed, or the index "
                 "cannot be used; 2 usage error (or another job is writing the index, named); 3 some files failed (each is reported on stderr)")
_EXTRAS = [("index", ("lancedb", "faiss"))]


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, metavar="DB",
                        help="the index: a folder (LanceDB), milvus:FILE.db (Milvus Lite) or http://HOST:19530 "
                        "(a Milvus server; token from $AUDIOCLIP_MILVUS_TOKEN)")


def _check_db_spec(args: argparse.Namespace) -> None:
    from audioclip.index.milvus import is_milvus

    if not args.db.strip():  # Path("") would be the current folder
        raise UsageError("--db: an empty name was given (a folder, milvus:FILE.db or http://HOST:19530)")
    if is_milvus(args.db):
        from .options import require_extra

        require_extra("milvus", ("pymilvus",))


def _add_model_options(parser: argparse.ArgumentParser, new: str = "") -> None:
    add_model_options(parser, checkpoint_default=None, title="model (default: the one the index was built with)",
                      checkpoint_help="registered weights (see 'audioclip checkpoints'), an architecture (random "
                      "weights, the same in every run: AudioCLIP-tiny to try it out) or a checkpoint file (default: "
                      f"the index's own{new})")


def _check_model_options(args: argparse.Namespace) -> None:
    if args.checkpoint is not None:
        check_checkpoint(args.checkpoint)
        _check_tri_modal(args.checkpoint)
    check_device(args.device)
    if args.checkpoint is not None:
        check_cached(args.checkpoint, cache_dir=args.cache_dir, offline=args.offline)


def _check_tri_modal(name: str) -> None:
    """An index needs text, picture and sound: a standalone audio classifier (named, or an architecture) cannot."""
    import json
    from importlib import resources

    from audioclip.factory import describe_source

    source = describe_source(name)
    if source.kind == "registry":
        classifier = source.weights.kind == "esresnext"
    elif source.kind == "architecture":
        config = resources.files("audioclip.model_configs").joinpath(f"{source.architecture}.json").read_text()
        classifier = json.loads(config).get("kind", "audioclip") == "esresnext"
    else:
        return  # a file or a Hub model: known once loaded
    if classifier:
        raise UsageError(f"--checkpoint {name}: is a standalone audio classifier (no text or picture head); "
                         "an index needs an AudioCLIP model (e.g. full, or AudioCLIP-tiny to try it out)")


def _check_db_exists(args: argparse.Namespace) -> None:
    from audioclip.index.db import store_exists

    _check_db_spec(args)
    if not store_exists(args.db):
        raise UsageError(f"--db {args.db}: no index here; build one with 'audioclip index FOLDER --db {args.db}'")
    if _is_embed_output(args.db):
        raise UsageError(f"--db {args.db}: is an output of 'audioclip embed', not an index; index its vectors with "
                         f"'audioclip index --from-embeddings {args.db} --db INDEX' (no embedding again), then "
                         "search INDEX")


def _is_embed_output(db: str) -> bool:
    """An embed output (a file of its formats, or a folder of Parquet parts) rather than an index."""
    from pathlib import Path

    from audioclip.index import LanceStore

    path = Path(db)
    if path.is_file():
        return path.suffix.lower() in (".parquet", ".npy", ".jsonl")
    return path.is_dir() and not LanceStore.exists(path) and any(path.glob("*.parquet"))


def _open(args: argparse.Namespace, create: bool = False):
    """The index, its model loaded on first use in the exact default audio mode, or now in another one.

    The model's imports (open_clip, torchvision: seconds) wait until it is
    loaded: an ``index`` run with nothing to embed never pays for them.
    """
    from audioclip.index import Index

    options = dict(device=args.device, precision=args.precision, cache_dir=args.cache_dir, offline=args.offline,
                   before_model_load=light_open_clip)
    from audioclip import factory

    kind = factory.describe_source(args.checkpoint).kind if args.checkpoint else None
    # An architecture's (or Hub model's) id needs the model built: in another audio mode, build only the one below
    first = None if kind in ("architecture", "hub", "folder") and args.audio_mode != "default" else args.checkpoint
    index = Index.open(args.db, checkpoint=first, create=create, **options)
    if args.audio_mode == "default":
        return index
    light_open_clip()

    spec = args.checkpoint or (index.meta or {}).get("checkpoint_source") or "full"
    model = factory.create_model(spec, device=args.device, audio_mode=args.audio_mode, cache_dir=args.cache_dir,
                                 offline=args.offline)
    return Index.open(args.db, checkpoint=spec, model=model, create=create, **options)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:04.1f}" if hours else f"{minutes}:{secs:04.1f}"


# --------------------------------------------------------------------------
# audioclip index
# --------------------------------------------------------------------------


def _run_index(args: argparse.Namespace) -> int:
    if args.remove:
        if args.inputs or args.from_embeddings:
            raise UsageError("--remove goes without PATHs or --from-embeddings: remove first, then index (two runs)")
        _check_db_exists(args)
        return _remove(args)
    embeddings = None
    if args.from_embeddings is not None:
        embeddings = _check_from_embeddings(args)
    elif not args.inputs:
        _check_db_exists(args)
        return _print_stats(args)
    else:
        check_inputs(args.inputs)
    _check_db_spec(args)
    _check_model_options(args)
    if embeddings is not None:
        embeddings = _read_embeddings(args)
        if embeddings is None:
            return EXIT_NOTHING_DONE

    from audioclip.index.milvus import is_milvus

    new_folder = None if is_milvus(args.db) or os.path.exists(args.db) else args.db
    try:
        return _index(args, embeddings)
    finally:
        if new_folder is not None:  # a first run that stopped before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                os.rmdir(new_folder)


def _check_from_embeddings(args: argparse.Namespace) -> bool:
    """``--from-embeddings OUT``: no PATHs, none of the decoding options (the output's are used), OUT exists."""
    if args.inputs:
        raise UsageError("give PATHs or --from-embeddings OUT, not both")
    given = [flag for flag, value in (("--window", args.window), ("--hop", args.hop), ("--mono", args.mono),
                                      ("--video-frames", args.video_frames),
                                      ("--audio-mode", getattr(args, "audio_mode", "default") != "default"))
             if value]
    if given:
        raise UsageError(f"{given[0]} does not go with --from-embeddings: the embeddings were made with their own")
    # Options of embedding files that would do nothing here: refused rather than ignored.
    unused = [flag for flag, value in (("--prune", args.prune), ("--retry-failed", args.retry_failed),
                                       ("--workers", args.workers)) if value]
    if unused:
        raise UsageError(f"{unused[0]} does not go with --from-embeddings: no file is embedded or walked")
    out = args.from_embeddings
    if not out.strip():
        raise UsageError("--from-embeddings: an empty path was given")
    if not is_uri(out) and not os.path.exists(out):
        raise UsageError(f"--from-embeddings {out}: not found (an output of 'audioclip embed')")
    return True


def _read_embeddings(args: argparse.Namespace):
    """The output named by ``--from-embeddings`` (any format, parts folders included), or None after an error."""
    from audioclip.embeddings_io import read_embeddings

    try:
        embeddings = read_embeddings(args.from_embeddings)
    except (OSError, ValueError) as err:  # OutputError, a malformed file
        error(args, f"{args.from_embeddings}: cannot be read as embeddings ({err})")
        return None
    verbose(args, f"{args.from_embeddings}: {embeddings.num_rows} vector(s) of checkpoint "
            f"{embeddings.settings.get('checkpoint')}")
    return embeddings


def _index(args: argparse.Namespace, embeddings=None) -> int:
    from audioclip.index import Index, IndexStoreError

    try:
        if embeddings is not None:  # no model to run: the audio mode does not matter
            index = Index.open(args.db, checkpoint=args.checkpoint, create=True, device=args.device,
                               cache_dir=args.cache_dir, offline=args.offline, before_model_load=light_open_clip)
        else:
            index = _open(args, create=True)
    except IndexStoreError as err:
        error(args, err)
        return EXIT_NOTHING_DONE
    bar = progress_bar(args, 0)

    def progress(event: str, path: str, detail: str | None) -> None:
        if args.verbose and event in ("embedded", "reused", "touched", "removed"):
            bar.write(f"audioclip: {event} {path}", file=sys.stderr)
        if event == "failed":
            bar.write(f"audioclip: skipped {path}: {detail}", file=sys.stderr)
        elif event == "changed":
            bar.write(f"audioclip: {path}: {detail}", file=sys.stderr)
        if event in ("embedded", "failed", "changed"):
            bar.update()

    def planned(count: int) -> None:
        bar.total = count
        bar.refresh()

    def terminate(signum, frame):  # SIGTERM: stop like Ctrl-C, keeping the finished files
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        if embeddings is not None:
            report = index.add_embedded(embeddings, flush_every=args.flush_every, progress=progress, on_plan=planned,
                                        log=lambda message: note(args, f"{args.db}: {message}"))
        else:
            report = index.add(args.inputs, batch_size=args.batch_size, workers=args.workers,
                               flush_every=args.flush_every, retry_failed=args.retry_failed, prune=args.prune,
                               window=args.window, hop=args.hop, mono=True if args.mono else None,
                               video_frames=args.video_frames, progress=progress, on_plan=planned,
                               log=lambda message: note(args, f"{args.db}: {message}"))
    finally:  # an IndexStoreError goes on to options.run: one line, 1 (2 when another job holds the lock)
        bar.close()
        signal.signal(signal.SIGTERM, previous)
    parts = [f"{len(report.added)} added", f"{len(report.updated)} updated", f"{report.unchanged} unchanged",
             f"{len(report.removed)} removed", f"{len(report.failed)} failed"]
    if report.touched:
        parts.insert(2, f"{len(report.touched)} touched (same content)")
    if report.reused:
        parts.insert(2, f"{len(report.reused)} reused (copies of indexed files)")
    if report.skipped_failed:
        parts.append(f"{len(report.skipped_failed)} skipped (failed before, unchanged; --retry-failed)")
    if report.changed_during:
        parts.append(f"{len(report.changed_during)} changed while indexing (run again)")
    if report.ignored:
        parts.append(f"{len(report.ignored)} non-media file(s) ignored")
        for path in report.ignored:
            verbose(args, f"ignored (not a media file): {path}")
    note(args, f"{args.db}: {', '.join(parts)}; the index has {report.files} file(s), {report.rows} vector(s)")
    for path, reason in report.failed:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    # A step after the last commit that failed (a full disk) is warned about by Index.add, one line; the files
    # are indexed, so it changes no exit status (0 when every file was).
    if report.failed and report.indexed_now == 0 and not report.unchanged:
        return EXIT_NOTHING_DONE
    return EXIT_SOME_FAILED if report.failed else EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    """``index --remove PATH``: drop indexed files (and everything under folders) by path; no model is loaded."""
    from audioclip.index import Index

    # an IndexStoreError goes on to options.run: one line, 1 (2 when another job holds the lock)
    removed = Index.open(args.db, create=False).remove(args.remove)
    for path in removed:
        verbose(args, f"audioclip: removed {path}")
    note(args, f"{args.db}: {len(removed)} file(s) removed")
    return EXIT_OK if removed else EXIT_NOTHING_DONE


def _print_stats(args: argparse.Namespace) -> int:
    from audioclip.index import Index, IndexStoreError

    try:
        index = Index.open(args.db, create=False)
        stats, meta = index.stats(), index.meta or {}
    except IndexStoreError as err:
        error(args, err)
        return EXIT_NOTHING_DONE
    sources = ", ".join(f"{n} {s}" for s, n in sorted(stats["by_source"].items())) or "empty"
    print(f"{args.db}: {stats['files']} file(s) ({sources}), {stats['vectors']} vector(s), "
          f"{stats['failed']} failed file(s) remembered")
    architecture = meta.get("architecture") or meta.get("config") or "recognised from the file"
    print(f"checkpoint {meta.get('checkpoint')} from {meta.get('checkpoint_source')} "
          f"(architecture {architecture}); window {meta.get('window')} s, hop {meta.get('hop') or meta.get('window')} s")
    ann = getattr(getattr(index.store, "ann", None), "describe", lambda: None)()
    if ann:
        print(f"ANN index: FAISS IVF, {ann['lists']} list(s) over {ann['vectors']} vector(s), built {ann['built']} "
              f"in {ann['build_seconds']} s; {ann['dirty_files']} file(s) written since (scanned exactly)")
    return EXIT_OK


def register_index(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index", help="index folders of sounds, pictures and videos for search (incremental)",
        description="Embed every audio, image and video file under the given folders into a search index. "
        "Run it again to bring the index up to date: only new or changed files are embedded and files that "
        "are gone are dropped. A killed run keeps the files it finished. --from-embeddings OUT indexes the files of "
        "an 'audioclip embed' output with its vectors instead. Without PATHs, describe the index.",
        epilog=_INDEX_EPILOG)
    parser.add_argument("inputs", nargs="*", metavar="PATH", help="files or folders")
    _add_db(parser)
    parser.add_argument("--from-embeddings", metavar="OUT",
                        help="index the files of an 'audioclip embed' output (Parquet, .npy, .jsonl, a parts "
                        "folder, a Ray job's) with its vectors, embedding nothing again; it must hold the "
                        "index's checkpoint (a new index takes the output's), and the files must be where it says")
    parser.add_argument("--prune", action="store_true", help="also drop indexed files that are gone from anywhere")
    parser.add_argument("--remove", action="append", metavar="PATH",
                        help="drop this file, or every file under this folder, from the index (whether or not it "
                        "still exists; by the path the index shows, or a link to it); repeatable; no PATHs then")
    parser.add_argument("--retry-failed", action="store_true",
                        help="try again files that failed before even if they have not changed")
    parser.add_argument("--flush-every", type=positive_int, default=32, metavar="FILES",
                        help="commit finished files every this many (default: 32; also every 10 s)")
    _add_model_options(parser, "; a new index: full, or with --from-embeddings the output's")
    group = parser.add_argument_group("input (fixed when the index is created)")
    group.add_argument("--batch-size", type=positive_int, default=16, help="model batch size (default: 16)")
    group.add_argument("--workers", type=worker_count, default=0,
                       help=f"decoding processes, 0 to {MAX_WORKERS} (default: 0, decode in the main process; at most "
                       "one per CPU and per file start)")
    group.add_argument("--window", type=seconds, default=None,
                       help="audio window in seconds (default: 5)")
    group.add_argument("--hop", type=seconds, default=None,
                       help="seconds between window starts (default: the window)")
    group.add_argument("--mono", action="store_true", help="down-mix audio to one channel first")
    group.add_argument("--video-frames", choices=("central", "all"), default=None,
                       help="video: the central one of ten equally spaced frames (default), or all ten")
    add_logging_options(parser)
    set_command(parser, _run_index, extras=_EXTRAS)


# --------------------------------------------------------------------------
# audioclip search
# --------------------------------------------------------------------------


def _run_search(args: argparse.Namespace) -> int:
    given = [x for x in (args.text, args.audio, args.image) if x]
    if len(given) != 1:
        raise UsageError("give exactly one query: TEXT, --audio FILE or --image FILE")
    if args.text is not None and not args.text.strip():
        raise UsageError("the text query is empty")
    check_inputs([p for p in (args.audio, args.image) if p], "query file")
    _check_db_exists(args)
    _check_model_options(args)

    from audioclip.index import IndexStoreError, QueryError
    from audioclip.media import MediaError

    try:
        index = _open(args)
        if index.store.count_rows() == 0:
            error(args, f"{args.db}: the index is empty; add files with 'audioclip index FOLDER --db {args.db}'")
            return EXIT_NOTHING_DONE
        hits = index.search(args.text, audio=args.audio, image=args.image, k=args.k, modality=args.modality,
                            margin=args.merge_margin, exact=args.exact)
    except (IndexStoreError, QueryError, MediaError) as err:
        error(args, err)
        return EXIT_NOTHING_DONE
    if not hits:
        note(args, f"no {args.modality or 'indexed'} files to search")
        return EXIT_NOTHING_DONE
    for rank, hit in enumerate(hits, 1):
        if args.json:
            print(json.dumps({"rank": rank, **hit.to_dict()}))
            continue
        span = f"{_clock(hit.start)}-{_clock(hit.end)}" if hit.start is not None else "picture"
        print(f"{rank:3d}  {hit.score:7.4f}  {hit.source:<5}  {span:<17}  {hit.path}")
    return EXIT_OK


def register_search(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search", help="search an index by text, by a sound or by a picture",
        description="Rank the indexed files by cosine similarity to a text, a sound file or a picture. "
        "A recording is ranked by its best-matching window, reported with its time range, merged with the "
        "adjacent windows that match nearly as well (--merge-margin).",
        epilog="exit status: 0 results printed; 1 no results, the index is empty or unusable, or the query "
        "file cannot be read; 2 usage error")
    parser.add_argument("text", nargs="?", help="a text query, e.g. 'a dog barking in the rain'")
    _add_db(parser)
    parser.add_argument("--audio", metavar="FILE", help="query by this sound (or a video's sound)")
    parser.add_argument("--image", metavar="FILE", help="query by this picture (or a video's frame)")
    parser.add_argument("--modality", choices=("audio", "image", "video"),
                        help="only files of this kind (default: all)")
    parser.add_argument("-k", "--top-k", dest="k", type=positive_int, default=10, help="results (default: 10)")
    parser.add_argument("--json", action="store_true", help="one JSON object per result")
    parser.add_argument("--merge-margin", type=non_negative_float, default=0.02, metavar="COSINE",
                        help="adjacent windows scoring within this of the best are merged into its range "
                        "(default: 0.02)")
    parser.add_argument("--exact", action="store_true", help="exhaustive search even when an ANN index exists")
    _add_model_options(parser)
    add_logging_options(parser)
    set_command(parser, _run_search, extras=_EXTRAS)


# --------------------------------------------------------------------------
# audioclip serve
# --------------------------------------------------------------------------


MAX_UPLOAD_MB = 4096.0  # --max-upload-mb at most: an upload is kept whole on disk and decoded in one worker
MAX_QUERY_SECONDS = 86400.0  # --max-query-seconds at most: the media layer's default duration limit (24 h)


def _run_serve(args: argparse.Namespace) -> int:
    _check_db_exists(args)
    _check_model_options(args)
    if args.max_connections_per_client > args.max_connections:
        raise UsageError(f"--max-connections-per-client ({args.max_connections_per_client}) cannot be more than "
                         f"--max-connections ({args.max_connections})")
    sock = _listen(args)  # before the index is opened and the model loaded: a bad address fails at once
    if sock is None:
        return EXIT_NOTHING_DONE

    from audioclip.index import IndexStoreError
    from audioclip.index.server import ConnectionLimits, serve

    try:
        index = _open(args)
    except IndexStoreError as err:
        sock.close()
        error(args, err)
        return EXIT_NOTHING_DONE
    except BaseException:
        sock.close()  # any other failure (a checkpoint that cannot load): the port is free again
        raise
    limits = ConnectionLimits(max_connections=args.max_connections,
                              max_connections_per_client=args.max_connections_per_client,
                              client_rate=args.max_requests_per_client,
                              client_burst=max(1, round(_BURST_SECONDS * args.max_requests_per_client)))
    return serve(index, host=args.host, port=args.port, max_upload=int(args.max_upload_mb * 1e6),
                 quiet=args.quiet, allowed_hosts=args.allowed_host or (),
                 max_query_seconds=args.max_query_seconds, limits=limits, sock=sock)


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
    _add_db(parser)
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
                        metavar="SECONDS", help="longest uploaded recording or video searched with, at most "
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
    _add_model_options(parser)
    add_logging_options(parser)
    set_command(parser, _run_serve, extras=_EXTRAS)
