"""``audioclip convert`` (.pt <-> .safetensors) and ``audioclip export hub|onnx``."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
from pathlib import Path

from .checks import check_checkpoint, check_output_dir, check_output_file, require_extra
from .options import add_logging_options, add_model_options, set_command
from .report import EXIT_OK, STATUS_EPILOG, UsageError, note

__all__ = ["register_convert", "register_export"]

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


# -- audioclip convert ---------------------------------------------------------------------------


def _run_convert(args: argparse.Namespace) -> int:
    if not args.input.strip() or not args.output.strip():
        raise UsageError("an empty file name was given")
    source, target = Path(args.input), Path(args.output)
    if not source.is_file():
        raise UsageError(f"{args.input}: no such file")
    for path in (source, target):
        if path.suffix.lower() not in _CHECKPOINT_SUFFIXES:
            raise UsageError(f"{path}: unknown checkpoint suffix; use .pt or .safetensors")
    if (source.suffix.lower() == ".safetensors") == (target.suffix.lower() == ".safetensors"):
        raise UsageError(f"{source} -> {target}: one side must be .safetensors and the other .pt")
    check_output_file(target, overwrite=args.overwrite)
    from audioclip.checkpoints import convert_checkpoint

    convert_checkpoint(source, target)
    note(args, f"{source} -> {target}: every tensor kept bit for bit under its key and dtype")
    return EXIT_OK


def register_convert(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a checkpoint between .pt and .safetensors",
        description="Convert a checkpoint between PyTorch's .pt and .safetensors (the direction comes from the "
        "suffixes). Every tensor is kept bit for bit under the original's keys and dtypes, so a converted file "
        "converted back still loads in the original code. A state dict wrapped under 'state_dict' or 'model' "
        "is unwrapped (optimizer state and the like are left out) and a DDP 'module.' prefix is removed. A "
        ".safetensors file is read without unpickling.",
        epilog=STATUS_EPILOG)
    parser.add_argument("input", metavar="IN", help="the checkpoint to convert (.pt or .safetensors)")
    parser.add_argument("output", metavar="OUT", help="the file to write (.safetensors or .pt)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT (default: refuse it)")
    add_logging_options(parser)
    set_command(parser, _run_convert)


# -- audioclip export hub|onnx ----------------------------------------------------------------------


def _run_export(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        require_extra("onnx")
    check_checkpoint(args.checkpoint)
    out = check_output_dir(args.output, overwrite=args.overwrite,
                           markers=("config.json", "model.safetensors") if args.format == "hub"
                           else ("*.onnx", "audioclip-onnx.json"))
    head = None
    if args.head is not None:
        if args.format != "onnx":
            raise UsageError("--head goes with export onnx")
        from audioclip.heads import HeadError, load_head

        try:
            head = load_head(args.head)
        except HeadError as err:
            raise UsageError(str(err)) from None
    from audioclip import factory

    model = factory.create_model(args.checkpoint, device="cpu", cache_dir=args.cache_dir, offline=args.offline,
                                 progress=not args.quiet)
    if head is not None:
        from audioclip.heads import HeadMismatchError

        try:
            head.check_checkpoint(factory.checkpoint_id(model))
        except HeadMismatchError as err:
            raise UsageError(str(err)) from None
    if args.format == "hub":
        from audioclip.export.hub import export_hub_folder

        # loaded and written at once: the weights are the ones the checkpoint names
        paths = export_hub_folder(model, out, checkpoint_id=factory.checkpoint_id(model), unchanged=True)
        note(args, f"wrote {', '.join(p.name for p in paths.values())} into {out}; upload with: "
                   f"huggingface-cli upload ORG/NAME {out} .")
        return EXIT_OK
    from audioclip.export.onnx import export_onnx

    with _exporters_hushed(quiet=args.quiet):
        export_onnx(model, out, checkpoint_id=factory.checkpoint_id(model), head=head,
                    progress=None if args.quiet else (lambda message: note(args, message)))
    note(args, f"wrote audio.onnx, image.onnx, text.onnx into {out} (each checked in ONNX Runtime)")
    return EXIT_OK


#: libraries whose loggers speak while a model is exported (the optimizer's notes on ops it leaves alone)
_EXPORT_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


@contextlib.contextmanager
def _exporters_hushed(quiet: bool):
    """Only errors from the exporting libraries' loggers; with ``quiet``, what they print on stdout goes too.

    Their notes (``Skipping constant folding for op Split ...``) say nothing to
    someone exporting a model: the export is checked in ONNX Runtime anyway.
    """
    loggers = [logging.getLogger(name) for name in _EXPORT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def register_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write the model as a Hugging Face Hub folder or as ONNX models",
        description="hub: config.json, model.safetensors and a model card, ready for 'huggingface-cli upload' "
        "(and loadable as --checkpoint FOLDER). onnx: audio.onnx, image.onnx and text.onnx (inputs waveform, "
        "pixel_values, input_ids; output embedding), each run in ONNX Runtime against PyTorch before it counts "
        "as written; needs audioclip[onnx].", epilog=STATUS_EPILOG)
    parser.add_argument("format", choices=("hub", "onnx"), help="what to write")
    add_model_options(parser, precision=False, audio_mode=False)
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="the folder to write into")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in DIR")
    parser.add_argument("--head", metavar="HEAD_DIR",
                        help="onnx: a head from 'audioclip fit'; audio.onnx then also outputs its class probabilities")
    add_logging_options(parser)
    set_command(parser, _run_export)
