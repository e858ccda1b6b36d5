"""``audioclip index`` and ``audioclip search`` (the ``index`` extra: LanceDB and FAISS; ``milvus`` for a
Milvus store), and what ``serve`` shares with them: the ``--db`` option, its checks, opening the index."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys

from audioclip.util import is_uri

from .checks import check_cached, check_checkpoint, check_device, check_inputs, require_extra
from .options import (
    add_batch_options,
    add_logging_options,
    add_model_options,
    non_negative_float,
    positive_int,
    seconds,
    set_command,
)
from .report import EXIT_NOTHING_DONE, EXIT_OK, EXIT_SOME_FAILED, UsageError, error, note, progress_bar, verbose
from .startup import light_open_clip

__all__ = ["INDEX_EXTRAS", "add_db_option", "add_index_model_options", "check_db_exists", "check_index_model_options",
           "open_index", "register_index", "register_search"]

_INDEX_EPILOG = ("exit status: 0 all files indexed (or nothing to do); 1 nothing could be indexed, or the index "
                 "cannot be used; 2 usage error (or another job is writing the index, named); 3 some files failed (each is reported on stderr)")
INDEX_EXTRAS = [("index", None)]  # (extra, modules) checked before the command runs


def add_db_option(parser: argparse.ArgumentParser) -> None:
    """``--db``: the index (a LanceDB folder, a Milvus Lite file or a Milvus server)."""
    parser.add_argument("--db", required=True, metavar="DB",
                        help="the index: a folder (LanceDB), milvus:FILE.db (Milvus Lite) or http://HOST:19530 "
                        "(a Milvus server; token from $AUDIOCLIP_MILVUS_TOKEN)")


def _check_db_spec(args: argparse.Namespace) -> None:
    from audioclip.index.milvus import is_milvus

    if not args.db.strip():  # Path("") would be the current folder
        raise UsageError("--db: an empty name was given (a folder, milvus:FILE.db or http://HOST:19530)")
    if is_milvus(args.db):
        require_extra("milvus")


def add_index_model_options(parser: argparse.ArgumentParser, new: str = "") -> None:
    """The model options, whose ``--checkpoint`` defaults to the index's own (``new``: what a new index takes)."""
    add_model_options(parser, checkpoint_default=None, title="model (default: the one the index was built with)",
                      checkpoint_help="registered weights (see 'audioclip checkpoints'), an architecture (random "
                      "weights, the same in every run: AudioCLIP-tiny to try it out) or a checkpoint file (default: "
                      f"the index's own{new})")


def check_index_model_options(args: argparse.Namespace) -> None:
    """A ``--checkpoint`` given must name an AudioCLIP model (not an audio classifier); the device must exist."""
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


def check_db_exists(args: argparse.Namespace) -> None:
    """``--db`` names an index that exists (a usage error otherwise, saying how to build one)."""
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


def open_index(args: argparse.Namespace, create: bool = False):
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
        check_db_exists(args)
        return _remove(args)
    embeddings = None
    if args.from_embeddings is not None:
        embeddings = _check_from_embeddings(args)
    elif not args.inputs:
        check_db_exists(args)
        return _print_stats(args)
    else:
        check_inputs(args.inputs)
    _check_db_spec(args)
    check_index_model_options(args)
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
    from audioclip.index import Index

    # An index that cannot be used (an IndexStoreError) goes on to report.run: one line, exit status 1
    if embeddings is not None:  # no model to run: the audio mode does not matter
        index = Index.open(args.db, checkpoint=args.checkpoint, create=True, device=args.device,
                           cache_dir=args.cache_dir, offline=args.offline, before_model_load=light_open_clip)
    else:
        index = open_index(args, create=True)
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
    finally:  # an IndexStoreError goes on to report.run: one line, 1 (2 when another job holds the lock)
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

    # an IndexStoreError goes on to report.run: one line, 1 (2 when another job holds the lock)
    removed = Index.open(args.db, create=False).remove(args.remove)
    for path in removed:
        verbose(args, f"audioclip: removed {path}")
    note(args, f"{args.db}: {len(removed)} file(s) removed")
    return EXIT_OK if removed else EXIT_NOTHING_DONE


def _print_stats(args: argparse.Namespace) -> int:
    from audioclip.index import Index

    index = Index.open(args.db, create=False)  # an IndexStoreError goes on to report.run: one line, 1
    stats, meta = index.stats(), index.meta or {}
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
    add_db_option(parser)
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
    add_index_model_options(parser, "; a new index: full, or with --from-embeddings the output's")
    group = parser.add_argument_group("input (fixed when the index is created)")
    add_batch_options(group)
    group.add_argument("--window", type=seconds, default=None,
                       help="audio window in seconds (default: 5)")
    group.add_argument("--hop", type=seconds, default=None,
                       help="seconds between window starts (default: the window)")
    group.add_argument("--mono", action="store_true", help="down-mix audio to one channel first")
    group.add_argument("--video-frames", choices=("central", "all"), default=None,
                       help="video: the central one of ten equally spaced frames (default), or all ten")
    add_logging_options(parser)
    set_command(parser, _run_index, extras=INDEX_EXTRAS)


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
    check_db_exists(args)
    check_index_model_options(args)

    # An index that cannot be used, a query that cannot be made, a query file that cannot be read (each an
    # AudioclipError) go on to report.run: one line, exit status 1
    index = open_index(args)
    if index.store.count_rows() == 0:
        error(args, f"{args.db}: the index is empty; add files with 'audioclip index FOLDER --db {args.db}'")
        return EXIT_NOTHING_DONE
    hits = index.search(args.text, audio=args.audio, image=args.image, k=args.k, modality=args.modality,
                        margin=args.merge_margin, exact=args.exact)
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
    add_db_option(parser)
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
    add_index_model_options(parser)
    add_logging_options(parser)
    set_command(parser, _run_search, extras=INDEX_EXTRAS)
