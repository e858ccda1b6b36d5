"""AudioCLIP: text, images and sound in one embedding space (Guzhov et al., 2021)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from audioclip.util import lazy_exports

# Public name -> defining module. Imported on first use, so that `audioclip --help`
# and other light entry points don't pay for importing torch and open_clip.
_EXPORTS = {
    **dict.fromkeys(("create_model", "list_models", "list_pretrained", "checkpoint_id"), "audioclip.factory"),
    **dict.fromkeys(("AudioCLIP", "AudioCLIPOutput", "ESResNeXtFbsp", "tokenize", "TextTooLongWarning"),
                    "audioclip.model"),
    "AudioclipError": "audioclip.errors",
    **dict.fromkeys(("CheckpointError", "save_model"), "audioclip.checkpoints"),
    **dict.fromkeys(("MediaError", "load_audio", "load_image", "load_video_frames"), "audioclip.media"),
    **dict.fromkeys(("embed_files", "classify"), "audioclip.inference"),
    "detect": "audioclip.detection",
    "read_embeddings": "audioclip.embeddings_io",
    "embed_to": "audioclip.engines",
    "pipeline": "audioclip.pipelines",
    "Index": "audioclip.index",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .checkpoints import CheckpointError, save_model
    from .errors import AudioclipError
    from .factory import checkpoint_id, create_model, list_models, list_pretrained
    from .embeddings_io import read_embeddings
    from .engines import embed_to
    from .index import Index
    from .detection import detect
    from .inference import classify, embed_files
    from .pipelines import pipeline
    from .media import MediaError, load_audio, load_image, load_video_frames
    from .model import AudioCLIP, AudioCLIPOutput, ESResNeXtFbsp, TextTooLongWarning, tokenize


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
