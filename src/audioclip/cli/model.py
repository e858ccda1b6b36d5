"""What ``classify``, ``embed`` and ``similarity`` share: their model, backend and input options, and the model.

- :func:`add_file_options`: the model options, ``--backend``/``--onnx-dir``,
  the per-file limits, the input options and the message options.
- :func:`check_model_options`: the checkpoint, device and backend checked
  before torch is imported.
- :func:`load_model`: the model the options name (PyTorch, or the ONNX export
  run by ONNX Runtime); :func:`embed_paths` runs it on files.
"""

from __future__ import annotations

import argparse
import time

from .checks import check_cached, check_checkpoint, check_device, prefetch_checkpoint, require_extra
from .options import (
    add_batch_options,
    add_logging_options,
    add_model_options,
    positive_float,
    positive_int,
    seconds,
)
from .report import UsageError, note, verbose
from .startup import light_open_clip

__all__ = ["add_file_options", "check_model_options", "decode_options", "embed_paths", "expand_inputs", "load_model"]


def add_file_options(parser: argparse.ArgumentParser, *, windows: bool = True) -> None:
    """The options of a command that runs the model on files: model, backend, limits, input (``windows``: the
    audio window options too), messages."""
    add_model_options(parser)
    _add_backend_options(parser)
    _add_input_options(parser, windows=windows)
    add_logging_options(parser)


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
    add_batch_options(group)
    if windows:
        group.add_argument("--window", type=seconds, default=5.0,
                           help="audio window in seconds (default: 5, the ESC-50 clip length)")
        group.add_argument("--hop", type=seconds, default=None,
                           help="seconds between window starts (default: the window)")
        group.add_argument("--mono", action="store_true", help="down-mix audio to one channel first")
        group.add_argument("--video-frames", choices=("central", "all"), default="central",
                           help="video: the central one of ten equally spaced frames, or all ten")


def check_model_options(args: argparse.Namespace) -> None:
    """The checkpoint, device and backend options, checked before torch is imported (a usage error if wrong)."""
    given = None if isinstance(args.checkpoint, _DefaultCheckpoint) else args.checkpoint
    args.checkpoint = str(args.checkpoint)
    if getattr(args, "backend", "pytorch") == "onnxruntime":
        require_extra("onnx")
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


def decode_options(args: argparse.Namespace, model):
    """``audioclip.inference.DecodeOptions`` of the command's window, hop, mono, video frames and limits."""
    from audioclip.inference import DecodeOptions

    return DecodeOptions(window=getattr(args, "window", 5.0), hop=getattr(args, "hop", None),
                         mono=getattr(args, "mono", False), image_size=model.visual.image_size,
                         video_frames=getattr(args, "video_frames", "central"), limits=_limits(args))


def embed_paths(args: argparse.Namespace, model, paths):
    """``audioclip.inference.embed_files`` with the command's batch size, workers, precision and decoding."""
    from audioclip.inference import embed_files

    return embed_files(model, paths, batch_size=args.batch_size, workers=args.workers,
                       precision=args.precision, options=decode_options(args, model))


def expand_inputs(inputs) -> tuple[list[str], list[str]]:
    """Files to process (the named ones and the media files under the named folders), and the files ignored."""
    light_open_clip()
    from audioclip.inference import expand_paths

    return expand_paths(inputs)
