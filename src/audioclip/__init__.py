"""AudioCLIP: text, images and sound in one embedding space (Guzhov et al., 2021)."""

from .model import AudioCLIP, AudioCLIPOutput, ESResNeXtFbsp
from .tokenizer import tokenize

__all__ = ["AudioCLIP", "AudioCLIPOutput", "ESResNeXtFbsp", "tokenize"]
