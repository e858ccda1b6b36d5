"""``audioclip embed``: audio, image and video files into a Parquet, .npy or .jsonl file, resumable.

It checks everything it can first (inputs, output, engine, checkpoint name,
device), then imports torch and loads the model.
"""

from __future__ import annotations

import argparse
import sys

from audioclip.util import is_uri

from .checks import check_inputs, check_output_file, require_extra
from .model import add_file_options, check_model_options, decode_options, embed_paths, expand_inputs, load_model
from .options import add_output_options, non_negative_float, positive_int, set_command, shard
from .report import STATUS_EPILOG, UsageError, exit_status, note, progress_bar, verbose

__all__ = ["EMBED_SUFFIXES", "register_embed"]

EMBED_SUFFIXES = (".parquet", ".npy", ".jsonl")


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
                          options=decode_options(args, model), batch_size=args.batch_size, precision=args.precision,
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
    check_model_options(args)

    # Listed as the inputs name them and cut into shards by those names (the same on every machine
    # whatever its mounts and links); each file is then named by its resolved path, its identity.
    if args.engine == "ray":
        from audioclip.engines import list_inputs

        paths, ignored = list_inputs(args.inputs, resolve=False)
    else:
        paths, ignored = expand_inputs(args.inputs)
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
    settings = run_settings(model, decode_options(args, model), precision=args.precision,
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
        for result in embed_paths(args, model, todo):
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
    add_file_options(parser)
    set_command(parser, _run_embed, quick_exit=True)
