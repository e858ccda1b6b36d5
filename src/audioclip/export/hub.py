"""A model as a Hugging Face Hub folder: ``config.json``, ``model.safetensors`` and a model card.

The folder loads with ``audioclip.create_model(FOLDER)`` as it is, and with
``create_model("hf-hub:ORG/NAME")`` once uploaded (``huggingface-cli upload
ORG/NAME FOLDER .``). ``config.json`` names the architecture and carries its
full configuration, so architectures that are not bundled load too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from ..checkpoints import REGISTRY, save_state_dict
from ..io import write_text_atomic
from ..model import AudioCLIP, ESResNeXtFbsp
from ..util import package_version

__all__ = ["export_hub_folder", "model_card"]

# Reported by the paper (Guzhov et al., 2021, abstract and tables) for the published
# AudioCLIP weights; not measured by this export.
PAPER_RESULTS = (
    ("ESC-50, zero-shot", "69.40 %"),
    ("UrbanSound8K, zero-shot", "68.78 %"),
    ("ESC-50, fine-tuned", "97.15 %"),
    ("UrbanSound8K, fine-tuned", "90.07 %"),
)



def _untransformed(model: nn.Module) -> None:
    head = getattr(model, "audio", model)
    if not isinstance(model, (AudioCLIP, ESResNeXtFbsp)) or not isinstance(head, ESResNeXtFbsp):
        raise TypeError("export_hub_folder: expected an AudioCLIP or ESResNeXtFbsp without a fast audio head "
                        "(export the model before audio_mode transforms)")


def export_hub_folder(model: nn.Module, out_dir: str | os.PathLike, *, checkpoint_id: str | None = None,
                      unchanged: bool = False) -> dict[str, Path]:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` (the model card) into ``out_dir``.

    The weights keep the original's keys and dtypes. ``unchanged=True`` says
    the model holds the registered weights it was loaded with, untouched: only
    then does the card name them as the origin (with their licence and the
    paper's figures); a fine-tuned model must not claim them. Returns the three paths.
    """
    _untransformed(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(getattr(model, "pretrained_cfg", {}) or {})
    model_cfg = dict(getattr(model, "config", {}) or {}) if isinstance(model, AudioCLIP) else {
        "kind": "esresnext", "num_classes": model.fc.out_features,
        "audio_cfg": {**model.config.__dict__, "layers": list(model.config.layers)},
    }
    from ..factory import HUB_CONFIG, HUB_WEIGHTS, check_model_config, list_models

    # A bundled architecture's name, or none: a loader never takes the name for a file to open, and the
    # full config below is what loads (checked now, as a loader will check it).
    architecture = info.get("architecture") if info.get("architecture") in list_models() else None
    check_model_config(model_cfg, f"{out / HUB_CONFIG} model_cfg")
    config = {
        "library": "audioclip",
        "architecture": architecture,
        "model_cfg": model_cfg,
        "weights": info.get("weights") if unchanged else None,
        "checkpoint": checkpoint_id,
        "audioclip_version": package_version(),
    }
    paths = {"weights": save_state_dict(model.state_dict(), out / HUB_WEIGHTS)}
    paths["config"] = write_text_atomic(out / HUB_CONFIG, json.dumps(config, indent=2) + "\n")
    paths["card"] = write_text_atomic(out / "README.md", model_card(config))
    return paths


def model_card(config: dict) -> str:
    """The Markdown model card of a Hub folder described by ``config`` (see :func:`export_hub_folder`)."""
    weights = config.get("weights")
    registered = REGISTRY.get(weights) if weights else None
    architecture = config.get("architecture") or "a custom architecture (its configuration is in config.json)"
    is_published = registered is not None and registered.kind == "audioclip"
    lines = [
        "---",
        "library_name: audioclip",
        "license: mit" if registered is not None else "license: other",
        "tags: [audio, zero-shot-audio-classification, zero-shot-image-classification, clip, audioclip]",
        "---",
        "",
        f"# AudioCLIP ({weights or 'weights exported by audioclip'})",
        "",
        "AudioCLIP ([Guzhov et al., 2021](https://arxiv.org/abs/2106.13043)) extends CLIP to audio: a "
        "ResNet-50 CLIP text and image head and an ESResNeXt audio head with a trainable "
        "time-frequency front end (fbsp), mapping text, pictures and sounds into one embedding space.",
        "",
        "## The weights",
        "",
        f"- Architecture: `{architecture}`.",
    ]
    if registered is not None:
        lines += [
            f"- Origin: `{registered.filename}` of the original release ({registered.url}), sha256 "
            f"`{registered.sha256}`, converted to safetensors with every tensor kept bit for bit under the "
            "original's keys. {0}".format(registered.description[0].upper() + registered.description[1:] + "."),
            "- Licence: the original AudioCLIP repository is released under the MIT licence; its CLIP "
            "weights come from OpenAI's CLIP (MIT). Check the original repository for the terms of the weights.",
        ]
    else:
        lines += [
            "- Origin: not a published checkpoint: weights trained or made with the `audioclip` package "
            f"(identity `{config.get('checkpoint') or 'unknown'}`).",
            "- Licence: set by whoever trained these weights; fill this in before publishing.",
        ]
    lines += ["", "## Results reported by the paper", ""]
    if is_published:
        lines += [
            "Reported by the paper for the published AudioCLIP (not re-measured by this export):",
            "",
            "| task | accuracy |",
            "| --- | ---: |",
            *[f"| {task} | {value} |" for task, value in PAPER_RESULTS],
        ]
    else:
        lines += ["The paper's figures (zero-shot ESC-50 69.40 %, UrbanSound8K 68.78 %) belong to the published "
                  "weights, not to these."]
    lines += [
        "",
        "## How to load it",
        "",
        "```python",
        "import audioclip",
        'model = audioclip.create_model("hf-hub:ORG/NAME")      # this repository',
        'probs = audioclip.classify(model, ["dog", "rain"], audio=["clip.wav"], template="the sound of {}")',
        "```",
        "",
        "Or from the command line: `audioclip classify clip.wav --labels dog,rain --checkpoint hf-hub:ORG/NAME`.",
        "Inputs: audio in [-1, 1] at 44.1 kHz (any file is decoded and resampled by the package), "
        "CLIP-normalised 224 x 224 images, CLIP BPE text.",
        "",
        f"Exported by audioclip {config.get('audioclip_version')}.",
        "",
    ]
    return "\n".join(lines)
