"""Listening live: sound events from a microphone, standard input or a stream, as they happen.

- :mod:`.sources`: where the audio comes from (standard input as raw PCM or WAV, anything
  FFmpeg opens, a microphone through sounddevice), conditioned to 44.1 kHz as files are;
- :mod:`.listener`: a capture thread into a bounded ring buffer and the inference loop on the
  newest complete window (dropping, and counting, the windows it cannot keep up with); the
  crash-safe event log;
- :mod:`.tracker`: ``detect``'s post-processing (:mod:`audioclip.detection.postprocess`)
  applied causally, frame by frame.

The windows and their scores are those of ``audioclip detect --method windows``; see
docs/listening.md.
"""

from __future__ import annotations

from ..util import lazy_exports

_EXPORTS = {
    "Listener": "listener",
    "ListenReport": "listener",
    "RingBuffer": "listener",
    "EventLog": "listener",
    "EventTracker": "tracker",
    "LiveEvent": "tracker",
    "open_source": "sources",
    "SourceError": "sources",
    "StdinSource": "sources",
    "AVSource": "sources",
    "MicSource": "sources",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
