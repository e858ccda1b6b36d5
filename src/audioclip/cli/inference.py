"""``audioclip classify``, ``embed``, ``similarity``, ``checkpoints`` and ``download``.

Each ``run_*`` checks everything it can first (labels, templates, inputs,
output, checkpoint name, device), then imports torch and loads the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..util import is_uri
from .options import (
    MAX_WORKERS,
    EXIT_NOTHING_DONE,
    EXIT_OK,
    STATUS_EPILOG,
    UsageError,
    add_logging_options,
    add_model_options,
    add_output_options,
    check_cached,
    check_checkpoint,
    check_device,
    check_inputs,
    check_output_file,
    check_templates,
    error,
    exit_status,
    light_open_clip,
    non_negative_float,
    note,
    positive_float,
    seconds,
    positive_int,
    prefetch_checkpoint,
    progress_bar,
    read_list_file,
    require_extra,
    set_command,
    shard,
    verbose,
    worker_count,
)

__all__ = ["load_model", "register_checkpoints", "register_classify", "register_download", "register_embed",
           "register_similarity"]

EMBED_SUFFIXES = (".parquet", ".npy", ".jsonl")


# --------------------------------------------------------------------------
# shared by the commands that run the model on files
# --------------------------------------------------------------------------


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backend")
    group.add_argument("--backend", choices=("pytorch", "onnxruntime"), default="pytorch",
                       help="pytorch (default), or onnxruntime: the exported ONNX models on the CPU (same answers; "
                       "needs audioclip[onnx]); --audio-mode does not apply")
    group.add_argument("--onnx-dir", metavar="DIR",
                       help="with --backend onnxruntime: a folder from 'audioclip export onnx' (default: export the "
                       "checkpoint once into the cache folder); a --checkpoint given too must be the one exported")
    # The default checkpoint, told apart from one given on the command line (beside --onnx-dir it must match)
    parser.set_defaults(checkpoint=_DefaultCheckpoint(parser.get_default("checkpoint")))


class _DefaultCheckpoint(str):
    """``--checkpoint``'s default (``full``) when the option was not given."""


def _add_limit_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits (per file, read from its header; a file over one is skipped and reported)")
    group.add_argument("--max-duration", type=positive_float, metavar="SECONDS",
                       help="audio or video longer than this (default: 86400, a day)")
    group.add_argument("--max-channels", type=positive_int, metavar="N", help="audio channels (default: 64)")
    group.add_argument("--max-sample-rate", type=positive_int, metavar="HZ", help="sample rate (default: 768000)")
    group.add_argument("--max-pixels", type=positive_int, metavar="N",
                       help="pixels of a picture or a video frame (default: 128000000)")
    group.add_argument("--max-video-frames", type=positive_int, metavar="N", help="frames of a video (default: 5000000)")


def _limits(args: argparse.Namespace):
    from audioclip.media.limits import MediaLimits

    given = {name: getattr(args, name, None) for name in
             ("max_duration", "max_channels", "max_sample_rate", "max_pixels", "max_video_frames")}
    return MediaLimits(**{k: v for k, v in given.items() if v is not None})


def _add_input_options(parser: argparse.ArgumentParser, windows: bool = True) -> None:
    _add_limit_options(parser)
    group = parser.add_argument_group("input")
    group.add_argument("--batch-size", type=positive_int, default=16, help="model batch size (default: 16)")
    group.add_argument("--workers", type=worker_count, default=0,
                       help=f"decoding processes, 0 to {MAX_WORKERS} (default: 0, decode in the main process; at most "
                       "one per CPU and per file start)")
    if windows:
        group.add_argument("--window", type=seconds, default=5.0,
                           help="audio window in seconds (default: 5, the ESC-50 clip length)")
        group.add_argument("--hop", type=seconds, default=None,
                           help="seconds between window starts (default: the window)")
        group.add_argument("--mono", action="store_true", help="down-mix audio to one channel first")
        group.add_argument("--video-frames", choices=("central", "all"), default="central",
                           help="video: the central one of ten equally spaced frames, or all ten")


def _check_model_options(args: argparse.Namespace) -> None:
    given = None if isinstance(args.checkpoint, _DefaultCheckpoint) else args.checkpoint
    args.checkpoint = str(args.checkpoint)
    if getattr(args, "backend", "pytorch") == "onnxruntime":
        require_extra("onnx", ("onnx", "onnxruntime", "onnxscript"))
        if args.device not in ("auto", "cpu"):
            raise UsageError(f"--device {args.device}: --backend onnxruntime runs on the CPU here")
        if getattr(args, "engine", "plain") != "plain":
            raise UsageError("--backend onnxruntime goes with the plain engine")
        if args.onnx_dir is not None:
            from pathlib import Path

            if not (Path(args.onnx_dir) / "audioclip-onnx.json").is_file():
                raise UsageError(f"--onnx-dir {args.onnx_dir}: not a folder written by 'audioclip export onnx'")
            if given is not None:
                _check_same_checkpoint(given, args)
            return  # the folder is the model
    elif getattr(args, "onnx_dir", None) is not None:
        raise UsageError("--onnx-dir goes with --backend onnxruntime")
    check_checkpoint(args.checkpoint)
    prefetch_checkpoint(args.checkpoint, args.cache_dir)  # read while torch is imported
    check_device(args.device)
    check_cached(args.checkpoint, cache_dir=args.cache_dir, offline=args.offline)


def _check_same_checkpoint(name: str, args: argparse.Namespace) -> None:
    """``--checkpoint`` beside ``--onnx-dir`` must name the weights the export was made from (a usage error if not).

    Compared by checkpoint id (registered weights: their published hash; a file: its content's), before
    torch is imported; the graphs themselves are checked against the export's hashes when it loads.
    """
    import json
    from pathlib import Path

    from audioclip import checkpoints
    from audioclip.io import FileReadError, read_text_bounded

    check_checkpoint(name)
    try:
        recorded = json.loads(read_text_bounded(Path(args.onnx_dir) / "audioclip-onnx.json", 1 << 20,
                                                what="ONNX export metadata")).get("checkpoint")
    except (FileReadError, ValueError, AttributeError) as err:
        raise UsageError(f"--onnx-dir {args.onnx_dir}: not a folder written by 'audioclip export onnx' ({err})") \
            from None
    weights = checkpoints.lookup(name) or checkpoints.lookup_filename(name)
    path = Path(name).expanduser()
    if path.is_dir():  # a Hub-style model folder: its weights file
        path = path / "model.safetensors"
    if weights is not None and not Path(name).expanduser().exists():
        ident = checkpoints.file_checkpoint_id("", weights)
    elif path.is_file():
        try:
            ident = checkpoints.file_checkpoint_id(path)
        except (checkpoints.CheckpointError, OSError) as err:
            raise UsageError(f"--checkpoint {name}: {err}") from None
    else:
        raise UsageError(f"--checkpoint {name}: only registered weights or a checkpoint file can be compared with "
                         f"the export in --onnx-dir; leave --checkpoint out (the folder is the model)")
    if ident != recorded:
        raise UsageError(f"--checkpoint {name} ({ident}) is not the checkpoint the export in --onnx-dir "
                         f"{args.onnx_dir} was made from ({recorded or 'not recorded'}); leave --checkpoint out or "
                         "export that checkpoint")


def load_model(args: argparse.Namespace):
    """The model the options name, on its device, in eval mode (``audioclip.factory.create_model``).

    With ``--backend onnxruntime``: the ONNX export (``--onnx-dir``, or one made
    once from the checkpoint into the cache folder) run by ONNX Runtime.
    """
    light_open_clip()
    from audioclip import factory

    if getattr(args, "backend", "pytorch") == "onnxruntime":
        return _onnx_model(args)

    start = time.perf_counter()
    model = factory.create_model(args.checkpoint, device=args.device, audio_mode=args.audio_mode,
                                 cache_dir=args.cache_dir, offline=args.offline, progress=not args.quiet)
    info = getattr(model, "pretrained_cfg", {}) or {}
    verbose(args, f"loaded {args.checkpoint} ({info.get('architecture')}, audio mode {args.audio_mode}) on "
            f"{next(model.parameters()).device} in {time.perf_counter() - start:.1f} s")
    return model


def _onnx_model(args: argparse.Namespace):
    """``--backend onnxruntime``: the folder given, or the checkpoint's export in the cache (made on first use)."""
    import re

    from audioclip import checkpoints, factory
    from audioclip.export.onnx import OnnxAudioCLIP, export_onnx
    from audioclip.io import LockedError, exclusive_lock

    if args.onnx_dir is not None:
        return OnnxAudioCLIP(args.onnx_dir)
    model = factory.create_model(args.checkpoint, device="cpu", cache_dir=args.cache_dir, offline=args.offline,
                                 progress=not args.quiet)
    ident = factory.checkpoint_id(model)
    folder = checkpoints.cache_dir(args.cache_dir) / "onnx" / re.sub(r"[^A-Za-z0-9._@-]+", "_", ident)
    while not _current_export(folder):
        try:
            with exclusive_lock(folder.with_name(folder.name + ".lock")):  # one export at a time
                if not _current_export(folder):
                    note(args, f"exporting {args.checkpoint} to ONNX once, into {folder} (a few minutes)")
                    export_onnx(model, folder, checkpoint_id=ident)
        except LockedError:  # another job is exporting the same weights: wait for it
            time.sleep(2)
    return OnnxAudioCLIP(folder)


def _current_export(folder) -> bool:
    """Whether the cache folder holds a whole export this version can check (its graphs' hashes recorded)."""
    from audioclip.export.onnx import OnnxExportError, read_export_meta

    try:
        read_export_meta(folder)
    except OnnxExportError:
        return False
    return True


def _decode_options(args: argparse.Namespace, model):
    from audioclip.inference import DecodeOptions

    return DecodeOptions(window=getattr(args, "window", 5.0), hop=getattr(args, "hop", None),
                         mono=getattr(args, "mono", False), image_size=model.visual.image_size,
                         video_frames=getattr(args, "video_frames", "central"), limits=_limits(args))


def _embed(args: argparse.Namespace, model, paths):
    from audioclip.inference import embed_files

    return embed_files(model, paths, batch_size=args.batch_size, workers=args.workers,
                       precision=args.precision, options=_decode_options(args, model))


def _expand(args: argparse.Namespace, inputs, resolve: bool = False) -> tuple[list[str], list[str]]:
    """Files to process: the named ones and the media files under the named folders.

    ``resolve``: as resolved absolute paths (the identity of a file in an output), one per file.
    """
    light_open_clip()
    from audioclip.inference import expand_paths

    return expand_paths(inputs, resolve=resolve)


# --------------------------------------------------------------------------
# audioclip checkpoints
# --------------------------------------------------------------------------


def _run_checkpoints(args: argparse.Namespace) -> int:
    from audioclip import checkpoints

    folder = checkpoints.cache_dir(args.cache_dir)
    rows = [("NAME", "FILE", "SIZE (MB)", "CACHED", "KIND")]
    for name, weights in checkpoints.REGISTRY.items():
        cached = checkpoints.cached_path(weights, folder) is not None
        rows.append((name, weights.filename, f"{weights.size / 1e6:.1f}", "yes" if cached else "no", weights.kind))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\ncache folder: {folder}")
    return EXIT_OK


def register_checkpoints(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("checkpoints", help="list the known pretrained checkpoints",
                                   description="List the registered weights and whether they are in the cache.")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="cache folder (default: $AUDIOCLIP_CACHE or the user cache)")
    add_logging_options(parser)
    set_command(parser, _run_checkpoints, quick_exit=True)


# --------------------------------------------------------------------------
# audioclip download
# --------------------------------------------------------------------------


def _run_download(args: argparse.Namespace) -> int:
    from audioclip import checkpoints

    if any(not name.strip() for name in args.names):
        raise UsageError("an empty checkpoint name was given (see 'audioclip checkpoints' for the names)")
    status = EXIT_OK
    for name in args.names:
        try:
            path, _ = checkpoints.resolve(name, cache_dir=args.cache_dir, progress=not args.quiet, verify=True,
                                          offline=args.offline)
        except checkpoints.CheckpointError as err:
            error(args, err)  # report it and go on with the other names
            status = EXIT_NOTHING_DONE
        else:
            print(path)
    return status


def register_download(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download", help="download checkpoints into the cache and verify them",
        description="Download named checkpoints into the cache folder (verifying their sha256) "
        "and print their paths. Already cached files are verified again.",
        epilog="exit status: 0 every name downloaded and verified; 1 a name is unknown or could not be downloaded "
        "(each is reported; the others are still downloaded); 2 usage error")
    parser.add_argument("names", nargs="+", metavar="NAME", help="checkpoint name (see 'audioclip checkpoints')")
    parser.add_argument("--cache-dir", metavar="DIR", help="cache folder (default: $AUDIOCLIP_CACHE or the user cache)")
    parser.add_argument("--offline", action="store_true", default=None, help="only verify what is cached")
    add_logging_options(parser)
    set_command(parser, _run_download, quick_exit=True)


# --------------------------------------------------------------------------
# audioclip classify
# --------------------------------------------------------------------------


def _labels(args: argparse.Namespace) -> list[str]:
    if args.labels_file:
        labels = read_list_file(args.labels_file, "labels")
    else:
        labels = [label.strip() for label in (args.labels or "").split(",") if label.strip()]
        if not labels:
            raise UsageError("no labels: give --labels 'dog,rain,siren' or --labels-file FILE")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UsageError(f"label {repeated[0]!r} is given more than once")
    return labels


def _templates(args: argparse.Namespace) -> list[str]:
    if args.templates_file:
        return check_templates(read_list_file(args.templates_file, "templates"), source=args.templates_file)
    return check_templates([args.template])


def _load_head(args: argparse.Namespace):
    """``--head HEAD_DIR``, read before the model loads (a bad folder is a usage error)."""
    from audioclip.heads import HeadError, load_head

    try:
        return load_head(args.head)
    except HeadError as err:
        raise UsageError(str(err)) from None


def _run_classify(args: argparse.Namespace) -> int:
    head = _load_head(args) if args.head else None
    if head is not None:  # files are cut as the head's embeddings were
        args.window, args.hop = float(head.info.get("window_s", 5.0)), head.info.get("hop_s")
        args.mono = bool(head.info.get("mono", False))
    labels, templates = (head.labels, ["{}"]) if head else (_labels(args), _templates(args))
    check_inputs(args.files)
    _check_model_options(args)

    paths, _ = _expand(args, args.files)
    if not paths:
        error(args, "no audio, image or video files in the inputs")
        return EXIT_NOTHING_DONE
    from audioclip.inference import text_classifier, zero_shot

    model = load_model(args)
    if head is not None:
        from audioclip.heads import HeadMismatchError
        from audioclip.inference import load_head_for

        try:
            head = load_head_for(model, head)
        except HeadMismatchError as err:  # fitted on another checkpoint: one line naming both
            raise UsageError(str(err)) from None
    else:
        classes = text_classifier(model, labels, templates)

    done = failed = 0
    for result in _embed(args, model, paths):
        if not result.ok:
            error(args, f"{result.path}: {result.error}")
            failed += 1
            continue
        audio, image = result.pooled("audio"), result.pooled("image")
        decision = None
        if head is not None:
            if audio is None:
                error(args, f"{result.path}: has no sound for the head to classify")
                failed += 1
                continue
            image = None
            probs = head.probabilities(audio[None])
            decision = head.decide(probs)[0]
            probs = probs[0]
        else:
            probs = zero_shot(model, classes,
                              audio=None if audio is None else audio[None],
                              image=None if image is None else image[None])[0]
        top = probs.topk(min(args.top_k, len(labels)))
        ranked = [(labels[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist())]
        used = "+".join(m for m, v in (("audio", audio), ("image", image)) if v is not None)
        if args.json:
            line = {"path": result.path, "modality": used,
                    "labels": [{"label": label, "probability": p} for label, p in ranked]}
            print(json.dumps(line if decision is None else {**line, "decision": decision}), flush=True)
        else:
            print(f"{result.path} ({used})" + ("" if decision is None else f": {decision}"))
            for label, p in ranked:
                print(f"  {p:7.2%}  {label}")
            sys.stdout.flush()
        done += 1
    return exit_status(done, failed)


def register_classify(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify", help="zero-shot labels for audio, image and video files",
        description="Zero-shot classification: each file is compared with the text of every label. "
        "Audio is classified by its sound (long files: windows pooled), images by their picture, "
        "videos by both together.", epilog=STATUS_EPILOG)
    parser.add_argument("files", nargs="+", metavar="FILE", help="files or folders")
    labels = parser.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help="comma-separated labels, e.g. 'dog,rain,siren'")
    labels.add_argument("--labels-file", metavar="FILE", help="a file with one label per line")
    labels.add_argument("--head", metavar="HEAD_DIR",
                        help="a head written by 'audioclip fit' instead of labels (audio only, cut into the head's "
                        "windows; the decision is 'none' when no class passes the head's threshold)")
    templates = parser.add_mutually_exclusive_group()
    templates.add_argument("--template", default="{}",
                           help="prompt with one {} for the label, e.g. 'the sound of {}' (default: {})")
    templates.add_argument("--templates-file", metavar="FILE",
                           help="one prompt template per line; their embeddings are averaged")
    parser.add_argument("-k", "--top-k", type=positive_int, default=5, help="labels shown per file (default: 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    add_model_options(parser)
    _add_backend_options(parser)
    _add_input_options(parser)
    add_logging_options(parser)
    set_command(parser, _run_classify, quick_exit=True)


# --------------------------------------------------------------------------
# audioclip embed
# --------------------------------------------------------------------------


def _check_engine(args: argparse.Namespace) -> None:
    if args.engine == "ray":
        require_extra("ray")
        return
    given = [flag for flag, value in (("--ray-address", args.ray_address), ("--num-gpus", args.num_gpus),
                                      ("--concurrency", args.concurrency)) if value is not None]
    if given:
        raise UsageError(f"{given[0]} goes with --engine ray")


def _embed_with_ray(args: argparse.Namespace, model, paths, ignored) -> int:
    """``embed --engine ray``: the same job on Ray Data (audioclip.engines.ray_engine), the same messages."""
    from audioclip.engines import embed_to

    with progress_bar(args, len(paths)) as bar:
        def on_result(path, error):
            if error:
                bar.write(f"audioclip: skipped {path}: {error}", file=sys.stderr)
            bar.update()

        report = embed_to(model, paths, args.output, engine="ray", fmt=args.format,
                          options=_decode_options(args, model), batch_size=args.batch_size, precision=args.precision,
                          audio_mode=args.audio_mode, files_per_part=args.flush_every, overwrite=args.overwrite,
                          on_result=on_result, address=args.ray_address,
                          num_gpus=args.num_gpus, concurrency=args.concurrency, device=args.device)
    note(args, f"{report.done + report.skipped} file(s) embedded ({report.done} now, {report.skipped} before), "
         f"{len(report.failed)} failed, {len(ignored)} non-media file(s) ignored; {report.rows} rows in {args.output}")
    for path, reason in report.failed:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    return exit_status(report.done + report.skipped, len(report.failed))


def _run_embed(args: argparse.Namespace) -> int:
    # the ray engine also reads object-store URIs (s3://...), listed and fetched through pyarrow
    check_inputs([p for p in args.inputs if not is_uri(p)] if args.engine == "ray" else args.inputs)
    check_output_file(args.output, overwrite=args.overwrite, resumable=True,
                      suffixes=None if args.format else EMBED_SUFFIXES)
    from audioclip.embeddings_io import OutputError, check_not_locked, check_output_name  # no torch

    try:
        check_output_name(args.output)
    except OutputError as err:
        raise UsageError(f"-o {err}") from None
    check_not_locked(args.output)  # another job writing it: exit 2 now, before torch is even imported
    _check_engine(args)
    _check_model_options(args)

    # Listed as the inputs name them and cut into shards by those names (the same on every machine
    # whatever its mounts and links); each file is then named by its resolved path, its identity.
    if args.engine == "ray":
        from audioclip.engines import list_inputs

        paths, ignored = list_inputs(args.inputs, resolve=False)
    else:
        paths, ignored = _expand(args, args.inputs)
    if args.shard:
        from audioclip.inference import shard_files

        paths = shard_files(paths, *args.shard)
    else:
        from audioclip.media.files import resolve_paths

        paths = resolve_paths(paths)
    for path in ignored:
        verbose(args, f"ignored (not a media file): {path}")
    # Ray's actors take the model to their own devices: the driver's copy stays on the CPU
    model = load_model(args if args.engine == "plain" else argparse.Namespace(**{**vars(args), "device": "cpu"}))

    from audioclip.embeddings_io import EmbeddingWriter, run_settings

    if args.engine == "ray":
        return _embed_with_ray(args, model, paths, ignored)
    settings = run_settings(model, _decode_options(args, model), precision=args.precision,
                            audio_mode="onnxruntime" if args.backend == "onnxruntime" else args.audio_mode)
    writer = EmbeddingWriter(args.output, fmt=args.format, part_size=args.flush_every, settings=settings,
                             overwrite=args.overwrite)  # an earlier output goes only once the lock is held
    todo = writer.todo(paths)
    skipped = len(paths) - len(todo)
    if skipped:
        note(args, f"resuming: {skipped} file(s) already in {args.output}")

    done = failed = 0
    failures = []
    with progress_bar(args, len(todo)) as bar:
        for result in _embed(args, model, todo):
            if result.ok:
                writer.add(result)
                done += 1
            else:
                failures.append((result.path, result.error))
                bar.write(f"audioclip: skipped {result.path}: {result.error}", file=sys.stderr)
                failed += 1
            bar.update()
    rows = writer.finalize()
    note(args, f"{done + skipped} file(s) embedded ({done} now, {skipped} before), {failed} failed, "
         f"{len(ignored)} non-media file(s) ignored; {rows} rows in {args.output}")
    for path, reason in failures:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    return exit_status(done + skipped, failed)


def register_embed(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed", help="embed audio, image and video files into a Parquet (or .npy/.jsonl) file",
        description="Embed every file (folders are searched recursively for media files). "
        "Rows: path, source, modality, kind (window|pooled|image|frame), start_s, end_s, windows, checkpoint, "
        "embedding (L2-normalised; docs/output-format.md), and the run's settings in the file's metadata. "
        "Finished files are saved as the job goes; a re-run with the same output skips files already "
        "embedded with the same checkpoint (--overwrite starts over).",
        epilog=STATUS_EPILOG)
    parser.add_argument("inputs", nargs="+", metavar="PATH", help="files or folders")
    group = add_output_options(
        parser, required=True, help="output file: .parquet, .npy (vectors, with their rows in OUT.rows.jsonl beside them) "
        "or .jsonl; an existing one from an earlier run is continued",
        overwrite_help="start an existing output over instead of continuing it")
    group.add_argument("--format", choices=("parquet", "npy", "jsonl"),
                       help="output format whatever the file name (default: from its suffix)")
    parser.add_argument("--shard", type=shard, metavar="K/N",
                        help="embed only shard K of N (1-based); N runs together cover every file once")
    parser.add_argument("--flush-every", type=positive_int, default=64, metavar="FILES",
                        help="save progress every this many files (default: 64)")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--engine", choices=("plain", "ray"), default="plain",
                        help="plain (default): this process; ray: a Ray Data pipeline (decode tasks, an actor "
                        'pool holding the model), local or on a cluster; needs pip install "audioclip[ray]"')
    engine.add_argument("--ray-address", metavar="ADDRESS",
                        help="join this Ray cluster (auto, ray://HEAD:10001; default: start a local instance)")
    engine.add_argument("--num-gpus", type=non_negative_float, metavar="N",
                        help="GPUs per model actor (default: 1 when the cluster has GPUs, else 0)")
    engine.add_argument("--concurrency", type=positive_int, metavar="N",
                        help="model actors (default: one per GPU, or 1 without GPUs)")
    add_model_options(parser)
    _add_backend_options(parser)
    _add_input_options(parser)
    add_logging_options(parser)
    set_command(parser, _run_embed, quick_exit=True)


# --------------------------------------------------------------------------
# audioclip similarity
# --------------------------------------------------------------------------


def _run_similarity(args: argparse.Namespace) -> int:
    total = len(args.audio) + len(args.image) + len(args.text)
    if total < 2:
        raise UsageError(f"give at least two items to compare (--audio FILE, --image FILE, --text TEXT); got {total}")
    if any(not text.strip() for text in args.text):
        raise UsageError("--text: an empty text was given (nothing to compare)")
    check_inputs([*args.audio, *args.image])
    _check_model_options(args)

    light_open_clip()
    import torch

    from audioclip.inference import embed_files

    model = load_model(args)
    items: list[tuple[str, str, torch.Tensor]] = []  # (name, modality, vector)
    failed = 0
    files = [(p, "audio") for p in args.audio] + [(p, "image") for p in args.image]
    results = embed_files(model, [p for p, _ in files], batch_size=args.batch_size, workers=args.workers,
                          precision=args.precision, options=_decode_options(args, model))
    for (path, modality), result in zip(files, results):
        vector = result.pooled(modality) if result.ok else None
        if vector is None:
            error(args, f"{path}: {result.error or f'no {modality} in this file'}")
            failed += 1
            continue
        items.append((path, modality, vector))
    if args.text:
        with torch.inference_mode():
            text = torch.nn.functional.normalize(model.encode_text(args.text).float(), dim=-1).cpu()
        items += [(t, "text", v) for t, v in zip(args.text, text)]
    if len(items) < 2:
        error(args, "fewer than two items could be embedded: nothing to compare")
        return EXIT_NOTHING_DONE

    scales = {k: v.item() for k, v in model.logit_scales().items()}
    pair_scale = {("audio", "image"): scales["audio_image"], ("audio", "text"): scales["audio_text"],
                  ("image", "text"): scales["image_text"]}
    labels = [_label(name, modality) for name, modality, _ in items]  # whole names: the columns fit the longest
    width_a = max(len("A"), *(len(label) for label in labels[:-1]))
    width_b = max(len("B"), *(len(label) for label in labels[1:]))
    if not args.json:
        print(f"{'A':<{width_a}}  {'B':<{width_b}}  {'cosine':>8}  {'logit':>8}")
    same_modality = False
    for i, (name_a, mod_a, a) in enumerate(items):
        for j in range(i + 1, len(items)):
            name_b, mod_b, b = items[j]
            cosine = float(a @ b)
            scale = pair_scale.get((mod_a, mod_b)) or pair_scale.get((mod_b, mod_a))
            logit = scale * cosine if scale else None
            same_modality = same_modality or logit is None
            if args.json:
                print(json.dumps({"a": name_a, "b": name_b, "modality_a": mod_a, "modality_b": mod_b,
                                  "cosine": cosine, "logit": logit}))
            else:
                shown = f"{logit:8.3f}" if logit is not None else f"{'-':>8}"
                print(f"{labels[i]:<{width_a}}  {labels[j]:<{width_b}}  {cosine:8.4f}  {shown}")
    if same_modality and not args.json:
        note(args, "logit: the cosine times the temperature the model learned for a pair of modalities "
             "(audio-text, audio-image, image-text); '-' for two items of one modality, which have none")
    return exit_status(len(items), failed)


def _label(name: str, modality: str) -> str:
    return f'"{name}"' if modality == "text" else name


def register_similarity(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "similarity", help="cosine similarities and logits between sounds, pictures and texts",
        description="Print the cosine similarity of every pair of the given items (at least two), and the "
        "model's logit (similarity times the pair's learned temperature) for pairs of different modalities.",
        epilog=STATUS_EPILOG)
    parser.add_argument("--audio", action="append", default=[], metavar="FILE",
                        help="an audio (or video) file; repeatable")
    parser.add_argument("--image", action="append", default=[], metavar="FILE",
                        help="an image (or video) file; repeatable")
    parser.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text; repeatable")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per pair: a, b, modality_a, modality_b, cosine, logit "
                        "(null for two items of one modality)")
    add_model_options(parser)
    _add_backend_options(parser)
    _add_input_options(parser, windows=False)
    add_logging_options(parser)
    set_command(parser, _run_similarity, quick_exit=True)
