"""The ``audioclip`` command line.

Each subcommand is a ``register`` function that adds its parser and sets
``func``; add new ones to :data:`COMMANDS`. Heavy modules (torch, the model)
are imported inside the commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("audioclip")
    except metadata.PackageNotFoundError:
        return "unknown"


def _error(message: object) -> None:
    print(f"audioclip: error: {message}", file=sys.stderr)


# --------------------------------------------------------------------------
# audioclip checkpoints
# --------------------------------------------------------------------------


def _run_checkpoints(args: argparse.Namespace) -> int:
    from audioclip import checkpoints

    folder = checkpoints.cache_dir(args.cache_dir)
    rows = [("NAME", "FILE", "SIZE (MB)", "CACHED", "KIND")]
    for name, weights in checkpoints.REGISTRY.items():
        cached = checkpoints.cached_path(weights, folder) is not None
        size_mb = f"{weights.size / 1e6:.1f}"
        rows.append((name, weights.filename, size_mb, "yes" if cached else "no", weights.kind))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\ncache folder: {folder}")
    return 0


def _register_checkpoints(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("checkpoints", help="list the known pretrained checkpoints")
    parser.add_argument("--cache-dir", help="cache folder (default: $AUDIOCLIP_CACHE or the user cache)")
    parser.set_defaults(func=_run_checkpoints)


# --------------------------------------------------------------------------
# audioclip download
# --------------------------------------------------------------------------


def _run_download(args: argparse.Namespace) -> int:
    from audioclip import checkpoints

    status = 0
    for name in args.names:
        try:
            path, _ = checkpoints.resolve(
                name, cache_dir=args.cache_dir, progress=not args.quiet, verify=True
            )
        except checkpoints.CheckpointError as e:
            # report it and go on with the other names
            _error(e)
            status = 1
        else:
            print(path)
    return status


def _register_download(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download checkpoints into the cache and verify them",
        description="Download named checkpoints into the cache folder (verifying their sha256) "
        "and print their paths. Already cached files are verified again.",
    )
    parser.add_argument(
        "names", nargs="+", metavar="NAME", help="checkpoint name (see 'audioclip checkpoints')"
    )
    parser.add_argument("--cache-dir", help="cache folder (default: $AUDIOCLIP_CACHE or the user cache)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_download)

# --------------------------------------------------------------------------
# Shared options of the commands that run the model
# --------------------------------------------------------------------------

# Exit statuses of the commands that process files.
EXIT_OK, EXIT_NOTHING_DONE, EXIT_USAGE, EXIT_SOME_FAILED = 0, 1, 2, 3

_STATUS_EPILOG = (
    "exit status: 0 all inputs processed; 1 nothing could be processed; "
    "2 usage error; 3 some inputs failed (each is reported on stderr)"
)


def _add_model_options(parser: argparse.ArgumentParser, windows: bool = True) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--checkpoint", default="full", metavar="NAME|PATH",
                       help="registry name (see 'audioclip checkpoints') or file (default: full)")
    group.add_argument("--config", default=None, metavar="NAME|JSON",
                       help="model configuration the checkpoint was built with (default: recognised from the file)")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    group.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                       help="fp32 is exact; bf16/fp16 are faster on a GPU")
    group.add_argument("--audio-mode", default="default", choices=("default", "fused", "bf16", "plain"),
                       help="how the audio head computes (docs/performance.md): default (exact to float32 "
                            "rounding), fused (BatchNorm folded, float32, within the equivalence tolerances), "
                            "bf16 (bfloat16 trunk: fast on GPUs and CPUs with AMX/AVX512-BF16, less exact), "
                            "plain (the original's computation, slow); int8 is in the Python API")
    group.add_argument("--cache-dir", help="checkpoint cache folder (default: $AUDIOCLIP_CACHE or the user cache)")
    group.add_argument("--offline", action="store_true", default=None, help="never download")
    group = parser.add_argument_group("input")
    group.add_argument("--batch-size", type=_positive_int, default=16, help="model batch size (default: 16)")
    group.add_argument("--workers", type=_non_negative_int, default=0,
                       help="decoding processes (default: 0, decode in the main process)")
    if windows:
        group.add_argument("--window", type=_positive_float, default=5.0,
                           help="audio window in seconds (default: 5, the ESC-50 clip length)")
        group.add_argument("--hop", type=_positive_float, default=None,
                           help="seconds between window starts (default: the window)")
        group.add_argument("--mono", action="store_true", help="down-mix audio to one channel first")
        group.add_argument("--video-frames", choices=("central", "all"), default="central",
                           help="video: the central one of ten equally spaced frames, or all ten")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _load_model(args: argparse.Namespace):
    """(model, checkpoint id) as the options say; the model on its device, eval mode."""
    from audioclip.factory import checkpoint_id, create_model

    model = create_model(args.checkpoint, config=args.config, device=args.device or "auto",
                         audio_mode=args.audio_mode, cache_dir=args.cache_dir, offline=args.offline)
    return model, checkpoint_id(model)


def _decode_options(args: argparse.Namespace, model):
    from audioclip.inference import DecodeOptions

    return DecodeOptions(window=args.window, hop=args.hop, mono=args.mono,
                         image_size=model.visual.image_size, video_frames=args.video_frames)


def _embed(args: argparse.Namespace, model, paths):
    from audioclip.inference import embed_files

    return embed_files(model, paths, batch_size=args.batch_size, workers=args.workers,
                       precision=args.precision, options=_decode_options(args, model))


def _progress(total: int, unit: str = "file"):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, dynamic_ncols=True, disable=None, file=sys.stderr)


def _status(done: int, failed: int) -> int:
    if done == 0:
        return EXIT_NOTHING_DONE
    return EXIT_SOME_FAILED if failed else EXIT_OK


# --------------------------------------------------------------------------
# audioclip classify
# --------------------------------------------------------------------------


def _run_classify(args: argparse.Namespace) -> int:
    import json

    from audioclip.inference import expand_paths, read_list_file, text_classifier, zero_shot

    labels = read_list_file(args.labels_file) if args.labels_file else _split_labels(args.labels)
    templates = read_list_file(args.templates_file) if args.templates_file else [args.template]
    paths, _ = expand_paths(args.files)
    if not paths:
        _error("no input files")
        return EXIT_NOTHING_DONE
    model, _ = _load_model(args)
    classes = text_classifier(model, labels, templates)

    done = failed = 0
    for result in _embed(args, model, paths):
        if not result.ok:
            _error(f"{result.path}: {result.error}")
            failed += 1
            continue
        audio, image = result.pooled("audio"), result.pooled("image")
        probs = zero_shot(model, classes,
                          audio=None if audio is None else audio[None],
                          image=None if image is None else image[None])[0]
        top = probs.topk(min(args.top_k, len(labels)))
        ranked = [(labels[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist())]
        used = "+".join(m for m, v in (("audio", audio), ("image", image)) if v is not None)
        if args.json:
            print(json.dumps({"path": result.path, "modality": used,
                              "labels": [{"label": l, "probability": p} for l, p in ranked]}))
        else:
            print(f"{result.path} ({used})")
            for label, p in ranked:
                print(f"  {p:7.2%}  {label}")
        done += 1
    return _status(done, failed)


def _split_labels(text: str | None) -> list[str]:
    labels = [label.strip() for label in (text or "").split(",") if label.strip()]
    if not labels:
        raise _UsageError("give labels with --labels 'dog,rain,siren' or --labels-file FILE")
    return labels


class _UsageError(Exception):
    """A command-line mistake found after parsing."""


def _register_classify(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify", help="zero-shot labels for audio, image and video files",
        description="Zero-shot classification: each file is compared with the text of every label. "
        "Audio is classified by its sound (long files: windows pooled), images by their picture, "
        "videos by both together.", epilog=_STATUS_EPILOG)
    parser.add_argument("files", nargs="+", metavar="FILE", help="files or folders")
    labels = parser.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help="comma-separated labels, e.g. 'dog,rain,siren'")
    labels.add_argument("--labels-file", help="a file with one label per line")
    templates = parser.add_mutually_exclusive_group()
    templates.add_argument("--template", default="{}", help="prompt with {} for the label (default: {})")
    templates.add_argument("--templates-file", help="one prompt template per line; their embeddings are averaged")
    parser.add_argument("--top-k", type=_positive_int, default=5, help="labels shown per file (default: 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    _add_model_options(parser)
    parser.set_defaults(func=_run_classify)


# --------------------------------------------------------------------------
# audioclip embed
# --------------------------------------------------------------------------


def _run_embed(args: argparse.Namespace) -> int:
    from audioclip.embeddings_io import EmbeddingWriter
    from audioclip.inference import expand_paths, shard

    paths, ignored = expand_paths(args.inputs)
    if args.shard:
        index, count = args.shard
        paths = shard(paths, index, count)
    model, ckpt = _load_model(args)
    writer = EmbeddingWriter(args.output, checkpoint=ckpt, fmt=args.format, part_size=args.flush_every)
    done_before = writer.done_paths()
    todo = [p for p in paths if p not in done_before]
    skipped = len(paths) - len(todo)
    if skipped:
        print(f"resuming: {skipped} file(s) already in {args.output}", file=sys.stderr)

    done = failed = 0
    failures = []
    with _progress(len(todo)) as bar:
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
    print(f"{done + skipped} file(s) embedded ({done} now, {skipped} before), {failed} failed, "
          f"{len(ignored)} non-media file(s) ignored; {rows} rows in {args.output}", file=sys.stderr)
    for path, reason in failures:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    return _status(done + skipped, failed)


def _shard_arg(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N like 1/4, got {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"need 1 <= K <= N, got {text!r}")
    return k - 1, n


def _register_embed(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed", help="embed audio, image and video files into a Parquet (or .npy/.jsonl) file",
        description="Embed every file (folders are searched recursively for media files). "
        "Rows: path, source, modality, kind (window|pooled|image|frame), start, end, checkpoint, "
        "embedding (L2-normalised). Finished files are saved as the job goes; a re-run with the "
        "same output skips files already embedded with the same checkpoint.",
        epilog=_STATUS_EPILOG)
    parser.add_argument("inputs", nargs="+", metavar="PATH", help="files or folders")
    parser.add_argument("-o", "--output", required=True, help="output file (.parquet, .npy or .jsonl)")
    parser.add_argument("--format", choices=("parquet", "npy", "jsonl"),
                        help="output format (default: from the suffix, else parquet); "
                        "npy writes the vectors and a .jsonl index beside them")
    parser.add_argument("--shard", type=_shard_arg, metavar="K/N",
                        help="embed only shard K of N (1-based); N runs together cover every file once")
    parser.add_argument("--flush-every", type=_positive_int, default=64, metavar="FILES",
                        help="save progress every this many files (default: 64)")
    _add_model_options(parser)
    parser.set_defaults(func=_run_embed)


# --------------------------------------------------------------------------
# audioclip similarity
# --------------------------------------------------------------------------


def _run_similarity(args: argparse.Namespace) -> int:
    import torch

    from audioclip.inference import embed_files

    if not (args.audio or args.image or args.text):
        raise _UsageError("give at least one --audio, --image or --text")
    model, _ = _load_model(args)
    items: list[tuple[str, str, torch.Tensor]] = []  # (name, modality, vector)
    failed = 0
    files = [(p, "audio") for p in args.audio] + [(p, "image") for p in args.image]
    results = embed_files(model, [p for p, _ in files], batch_size=args.batch_size, workers=args.workers,
                          precision=args.precision)
    for (path, modality), result in zip(files, results):
        vector = result.pooled(modality) if result.ok else None
        if vector is None:
            _error(f"{path}: {result.error or f'no {modality} in this file'}")
            failed += 1
            continue
        items.append((path, modality, vector))
    if args.text:
        with torch.inference_mode():
            text = torch.nn.functional.normalize(model.encode_text(args.text).float(), dim=-1).cpu()
        items += [(f'"{t}"', "text", v) for t, v in zip(args.text, text)]

    scales = {k: v.item() for k, v in model.logit_scales().items()}
    pair_scale = {("audio", "image"): scales["audio_image"], ("audio", "text"): scales["audio_text"],
                  ("image", "text"): scales["image_text"]}
    print(f"{'A':<40} {'B':<40} {'cosine':>8} {'logit':>8}")
    for i, (name_a, mod_a, a) in enumerate(items):
        for name_b, mod_b, b in items[i + 1:]:
            cosine = float(a @ b)
            scale = pair_scale.get((mod_a, mod_b)) or pair_scale.get((mod_b, mod_a))
            logit = f"{scale * cosine:8.3f}" if scale else f"{'-':>8}"
            print(f"{_short(name_a):<40} {_short(name_b):<40} {cosine:8.4f} {logit}")
    return _status(len(items), failed)


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def _register_similarity(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "similarity", help="cosine similarities and logits between sounds, pictures and texts",
        description="Print the cosine similarity of every pair of the given items, and the model's "
        "logit (similarity times the pair's learned temperature) for pairs of different modalities.",
        epilog=_STATUS_EPILOG)
    parser.add_argument("--audio", action="append", default=[], metavar="FILE", help="an audio (or video) file; repeatable")
    parser.add_argument("--image", action="append", default=[], metavar="FILE", help="an image (or video) file; repeatable")
    parser.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text; repeatable")
    _add_model_options(parser, windows=False)
    parser.set_defaults(func=_run_similarity)



def _register_training(subparsers: argparse._SubParsersAction) -> None:
    from audioclip.train.cli import add_parser, add_prepare_parser

    add_parser(subparsers)
    add_prepare_parser(subparsers)


def _register_search(subparsers: argparse._SubParsersAction) -> None:
    from audioclip.index.cli import COMMANDS as INDEX_COMMANDS

    for register in INDEX_COMMANDS:
        register(subparsers)


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    from audioclip.evaluate.cli import register

    register(subparsers)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_checkpoints,
    _register_download,
    _register_classify,
    _register_embed,
    _register_similarity,
    _register_training,
    _register_evaluate,
    _register_search,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioclip", description="AudioCLIP: text, image and audio in one embedding space."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2

    from audioclip.checkpoints import CheckpointError

    try:
        return args.func(args)
    except _UsageError as e:
        parser.error(str(e))  # exits with status 2
    except CheckpointError as e:
        _error(e)
        return 1
    except (ValueError, OSError) as e:  # bad labels or templates file, unwritable output, ...
        _error(e)
        return 1
    except KeyboardInterrupt:
        print("audioclip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
