"""The registry of published weights: their names, files, URLs, sizes and sha256."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PretrainedWeights", "REGISTRY", "lookup", "lookup_filename"]


@dataclass(frozen=True)
class PretrainedWeights:
    """A named checkpoint file that can be downloaded and verified."""

    name: str
    filename: str
    url: str
    sha256: str
    size: int  # bytes
    kind: str  # "audioclip", "clip" or "esresnext"
    description: str
    architecture: str = "AudioCLIP-RN50"  # the bundled model config these weights belong to


_RELEASE_URL = "https://github.com/AndreyGuzhov/AudioCLIP/releases/download/v0.1/"


def _release(name: str, filename: str, size: int, sha256: str, kind: str, description: str):
    architecture = "ESResNeXt-fbsp" if kind == "esresnext" else "AudioCLIP-RN50"
    return PretrainedWeights(name, filename, _RELEASE_URL + filename, sha256, size, kind, description, architecture)


REGISTRY: dict[str, PretrainedWeights] = {
    w.name: w
    for w in (
        _release(
            "full",
            "AudioCLIP-Full-Training.pt",
            537302068,
            "2441d35b353352c8b1bbfb8f7c687f46314c3d2909e940eaf763b8c17f632c44",
            "audioclip",
            "AudioCLIP with text, image and audio heads trained together on AudioSet",
        ),
        _release(
            "partial",
            "AudioCLIP-Partial-Training.pt",
            537302068,
            "1921885b6c3b5de0619f2ef4a9700ecbade758a398b34eb064230c30baef0c75",
            "audioclip",
            "AudioCLIP with the audio head trained under a frozen CLIP; "
            "audio embeddings are compatible with vanilla CLIP RN50",
        ),
        # The release URLs of the two entries below are assumed: the original
        # README only names the two AudioCLIP checkpoints above.
        _release(
            "clip",
            "CLIP.pt",
            408415159,
            "124e6d59d54c0837c456c953b3147adf438a21570d5c5b01ad83f6ad3e78d15e",
            "clip",
            "OpenAI CLIP RN50 text and image state dict (no audio weights)",
        ),
        _release(
            "esrnxfbsp",
            "ESRNXFBSP.pt",
            124795647,
            "acfcc6b0a0f07025cc660ed6dcf9b5a05fbd7c8ebf65edaa0a81d88a92ff6834",
            "esresnext",
            "standalone ESResNeXt-fbsp audio classifier trained on AudioSet (527 classes)",
        ),
    )
}



def lookup(name: str, registry: Mapping[str, PretrainedWeights] | None = None) -> PretrainedWeights | None:
    """The registered weights called ``name`` (case-insensitive), or ``None``."""
    registry = REGISTRY if registry is None else registry
    key = name.lower()
    return next((w for n, w in registry.items() if n.lower() == key), None)


def lookup_filename(name: str, registry: Mapping[str, PretrainedWeights] | None = None) -> PretrainedWeights | None:
    """The registered weights whose file is called ``name`` (a bare file name, not a path), or ``None``."""
    registry = REGISTRY if registry is None else registry
    key = Path(name).name.lower()
    if key != name.lower():  # only a bare filename is an alias, not a path
        return None
    return next((w for w in registry.values() if w.filename.lower() == key), None)


