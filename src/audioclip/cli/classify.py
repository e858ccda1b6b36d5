"""``audioclip classify``: zero-shot labels for audio, image and video files.

It checks everything it can first (labels, templates, inputs, checkpoint name,
device), then imports torch and loads the model.
"""

from __future__ import annotations

import argparse
import json
import sys

from .checks import check_inputs, check_templates, read_list_file, read_templates
from .model import add_file_options, check_model_options, embed_paths, expand_inputs, load_model
from .options import positive_int, set_command
from .report import EXIT_NOTHING_DONE, STATUS_EPILOG, UsageError, error, exit_status

__all__ = ["register_classify"]


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
    return read_templates(args.templates_file) if args.templates_file else check_templates([args.template])


def add_label_options(parser: argparse.ArgumentParser, *, required: bool = False, head: str | None = None,
                      example: str = "dog,rain,siren") -> None:
    """``--labels`` / ``--labels-file`` (and ``--head`` with the help ``head``), one of them; what ``_labels`` reads."""
    what = parser.add_mutually_exclusive_group(required=required)
    what.add_argument("--labels", help=f"comma-separated labels, e.g. '{example}'")
    what.add_argument("--labels-file", metavar="FILE", help="a file with one label per line")
    if head is not None:
        what.add_argument("--head", metavar="HEAD_DIR", help=head)


def add_template_options(parser: argparse.ArgumentParser, what: str = "the label") -> None:
    """``--template`` / ``--templates-file``: the prompts the labels' text embeddings are made from."""
    templates = parser.add_mutually_exclusive_group()
    templates.add_argument("--template", default="{}",
                           help=f"prompt with one {{}} for {what}, e.g. 'the sound of {{}}' (default: {{}})")
    templates.add_argument("--templates-file", metavar="FILE",
                           help="one prompt template per line; their embeddings are averaged")


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
    check_model_options(args)

    paths, _ = expand_inputs(args.files)
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
    for result in embed_paths(args, model, paths):
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
    add_label_options(parser, required=True,
                      head="a head written by 'audioclip fit' instead of labels (audio only, cut into the head's "
                      "windows; the decision is 'none' when no class passes the head's threshold)")
    add_template_options(parser)
    parser.add_argument("-k", "--top-k", type=positive_int, default=5, help="labels shown per file (default: 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    add_file_options(parser)
    set_command(parser, _run_classify, quick_exit=True)
