"""The network only: fbsp front end, ESResNeXt audio head, the tri-modal AudioCLIP wrapper."""

from .audioclip import AudioCLIP, AudioCLIPOutput, contrastive_loss
from .config import list_model_configs, load_model_config
from .esresnext import AudioHeadConfig, ESResNeXtFbsp
from .fbsp import FbspFilterbank

__all__ = [
    "AudioCLIP",
    "AudioCLIPOutput",
    "AudioHeadConfig",
    "ESResNeXtFbsp",
    "FbspFilterbank",
    "contrastive_loss",
    "list_model_configs",
    "load_model_config",
]
