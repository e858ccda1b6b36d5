"""``audioclip similarity``: the cosine similarity and logit of every pair of sounds, pictures and texts."""

from __future__ import annotations

import argparse
import json

from .checks import check_inputs
from .model import add_file_options, check_model_options, embed_paths, load_model
from .options import set_command
from .report import EXIT_NOTHING_DONE, STATUS_EPILOG, UsageError, error, exit_status, note
from .startup import light_open_clip

__all__ = ["register_similarity"]


def _run_similarity(args: argparse.Namespace) -> int:
    total = len(args.audio) + len(args.image) + len(args.text)
    if total < 2:
        raise UsageError(f"give at least two items to compare (--audio FILE, --image FILE, --text TEXT); got {total}")
    if any(not text.strip() for text in args.text):
        raise UsageError("--text: an empty text was given (nothing to compare)")
    check_inputs([*args.audio, *args.image])
    check_model_options(args)

    light_open_clip()
    import torch

    model = load_model(args)
    items: list[tuple[str, str, torch.Tensor]] = []  # (name, modality, vector)
    failed = 0
    files = [(p, "audio") for p in args.audio] + [(p, "image") for p in args.image]
    results = embed_paths(args, model, [p for p, _ in files])
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
    add_file_options(parser, windows=False)
    set_command(parser, _run_similarity, quick_exit=True)
