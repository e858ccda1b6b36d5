"""The network only: fbsp front end, ESResNeXt audio head, the tri-modal AudioCLIP, its tokenizer.

This package imports torch, torchvision, open_clip and itself, nothing else:
weights, downloads and files are :mod:`audioclip.checkpoints` and
:mod:`audioclip.factory`; inference transforms are :mod:`.transforms`.
"""

from .audioclip import AudioCLIP, AudioCLIPOutput, contrastive_loss
from .config import list_model_configs, load_model_config
from .esresnext import AudioHeadConfig, ESResNeXtFbsp
from .fbsp import FbspFilterbank
from .tokenizer import TextTooLongWarning, tokenize
from .transforms import (
    AUDIO_MODES,
    apply_audio_mode,
    float64_spectrum,
    freeze_fbsp_kernel,
    fuse,
    original_order,
    quantize_int8,
)

__all__ = [
    "AUDIO_MODES",
    "AudioCLIP",
    "AudioCLIPOutput",
    "AudioHeadConfig",
    "ESResNeXtFbsp",
    "FbspFilterbank",
    "TextTooLongWarning",
    "apply_audio_mode",
    "contrastive_loss",
    "float64_spectrum",
    "freeze_fbsp_kernel",
    "fuse",
    "list_model_configs",
    "load_model_config",
    "original_order",
    "quantize_int8",
    "tokenize",
]
