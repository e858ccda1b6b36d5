"""The HEAR 2021 API (Turian et al., 2022), so that ``hear-eval-kit`` evaluates AudioCLIP as it is.

>>> import audioclip.hear as hear
>>> model = hear.load_model("full")                      # any name create_model takes; "" is "full"
>>> scene = hear.get_scene_embeddings(audio, model)      # audio: (n_sounds, n_samples) at model.sample_rate
>>> emb, ts = hear.get_timestamp_embeddings(audio, model)

Shapes and types, as the API asks:

- ``audio``: ``(n_sounds, n_samples)`` float32 in [-1, 1], mono, at
  ``model.sample_rate`` (44 100 Hz), on any device (moved to the model's);
- ``get_scene_embeddings`` -> ``(n_sounds, model.scene_embedding_size)``
  float32: each sound cut into :data:`SCENE_WINDOW_S` windows (a shorter
  sound centred and padded), the windows' normalised embeddings averaged and
  renormalised: the clip vector of ``audioclip embed``;
- ``get_timestamp_embeddings`` -> ``(n_sounds, n_timestamps,
  model.timestamp_embedding_size)`` float32 and timestamps ``(n_sounds,
  n_timestamps)`` float32 in **milliseconds**: the embedding of a
  :data:`TIMESTAMP_WINDOW_S` window centred on each timestamp, every
  :data:`TIMESTAMP_HOP_S` (the sound is padded with silence at both ends).

The audio head sees one mono channel here (HEAR's audio is mono); a batch of
windows goes to the model :data:`BATCH_WINDOWS` at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .factory import create_model
from .media.audio import SAMPLE_RATE
from .media.windows import split_windows

__all__ = ["BATCH_WINDOWS", "SCENE_WINDOW_S", "TIMESTAMP_HOP_S", "TIMESTAMP_WINDOW_S", "get_scene_embeddings",
           "get_timestamp_embeddings", "load_model"]

#: window of a scene embedding (the package's default window, as the model was trained on 5 s clips)
SCENE_WINDOW_S = 5.0
#: window of a timestamp embedding, and the step between timestamps
TIMESTAMP_WINDOW_S = 1.0
TIMESTAMP_HOP_S = 0.05
BATCH_WINDOWS = 64


def load_model(model_file_path: str = "", *, device: str | None = None, **kwargs) -> torch.nn.Module:
    """The model for the API: ``model_file_path`` is any name or file :func:`audioclip.create_model` takes
    (``""``: the published weights, ``"full"``). It carries ``sample_rate``, ``scene_embedding_size`` and
    ``timestamp_embedding_size``."""
    model = create_model(model_file_path or "full", device=device or "auto", **kwargs)
    model.eval()  # sample_rate: the model's own attribute (44 100 Hz)
    model.scene_embedding_size = int(model.embed_dim)
    model.timestamp_embedding_size = int(model.embed_dim)
    return model


def _check(audio: torch.Tensor, model) -> torch.Tensor:
    if not isinstance(audio, torch.Tensor) or audio.ndim != 2:
        raise ValueError(f"audio must be a tensor (n_sounds, n_samples), got {getattr(audio, 'shape', type(audio))}")
    if audio.shape[1] == 0:
        raise ValueError("audio has no samples")
    return audio.float()


def _embed_windows(model, windows: torch.Tensor) -> torch.Tensor:
    """``(W, samples)`` mono windows -> ``(W, D)`` normalised embeddings, float32, on the audio's device."""
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(windows), BATCH_WINDOWS):
            batch = windows[i:i + BATCH_WINDOWS].to(device)[:, None]  # (B, 1 channel, samples)
            out.append(F.normalize(model.encode_audio(batch).float(), dim=-1))
    return torch.cat(out).to(windows.device)


def get_scene_embeddings(audio: torch.Tensor, model) -> torch.Tensor:
    """``(n_sounds, n_samples)`` -> ``(n_sounds, scene_embedding_size)``: each sound's pooled clip vector."""
    audio = _check(audio, model)
    vectors = []
    for sound in audio:
        windows = torch.stack([w.wave[0] for w in split_windows(sound, SAMPLE_RATE, window=SCENE_WINDOW_S)])
        vectors.append(F.normalize(_embed_windows(model, windows).mean(dim=0), dim=-1))
    return torch.stack(vectors)


def get_timestamp_embeddings(audio: torch.Tensor, model) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n_sounds, n_samples)`` -> embeddings ``(n_sounds, n_timestamps, timestamp_embedding_size)`` and their
    centres ``(n_sounds, n_timestamps)`` in milliseconds (0, 50, 100, ... while inside the sound)."""
    audio = _check(audio, model)
    size = round(TIMESTAMP_WINDOW_S * SAMPLE_RATE)
    hop = round(TIMESTAMP_HOP_S * SAMPLE_RATE)
    count = audio.shape[1] // hop + 1  # centres at 0, hop, ... up to the last sample
    padded = F.pad(audio, (size // 2, size // 2 + hop))  # every window lies inside the padded sound
    frames = padded.unfold(1, size, hop)[:, :count]  # (n_sounds, count, size)
    embeddings = _embed_windows(model, frames.reshape(-1, size)).reshape(audio.shape[0], count, -1)
    timestamps = (torch.arange(count, dtype=torch.float32) * (hop / SAMPLE_RATE * 1000.0)).to(audio.device)
    return embeddings, timestamps.expand(audio.shape[0], count).contiguous()
