"""CLIP's byte-pair tokenizer, as the text head expects it.

The vocabulary and the encoder come from ``open_clip``, whose token ids equal
those of the original CLIP/AudioCLIP tokenizer. This module only adds what
users need around it: a clear policy for texts longer than the context.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache

import torch

CONTEXT_LENGTH = 77


class TextTooLongWarning(UserWarning):
    """A text was cut to fit the text head's context."""


@lru_cache(maxsize=1)
def _bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize(
    texts: str | Sequence[str],
    context_length: int = CONTEXT_LENGTH,
    truncate: bool = True,
) -> torch.Tensor:
    """Token ids ``(len(texts), context_length)``, int64, zero-padded.

    Each row is ``<start> tokens <end>``. A text that does not fit is cut, with
    its last kept token replaced by ``<end>``, and a ``TextTooLongWarning`` is
    issued (as CLIP users expect); with ``truncate=False`` a ``ValueError`` is
    raised instead.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"tokenize: texts[{i}] is {type(text).__name__}, expected str")
    if context_length < 2:
        raise ValueError(f"tokenize: context_length must be at least 2, got {context_length}")

    bpe = _bpe()
    ids = torch.zeros(len(texts), context_length, dtype=torch.long)
    too_long = []
    for i, text in enumerate(texts):
        tokens = [bpe.sot_token_id, *bpe.encode(text), bpe.eot_token_id]
        if len(tokens) > context_length:
            too_long.append((i, len(tokens)))
            tokens = tokens[:context_length]
            tokens[-1] = bpe.eot_token_id
        ids[i, : len(tokens)] = torch.tensor(tokens)

    if too_long:
        detail = ", ".join(f"#{i} ({n} tokens)" for i, n in too_long[:5])
        more = f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
        message = f"{len(too_long)} text(s) exceed the {context_length}-token context: {detail}{more}"
        if not truncate:
            raise ValueError(message)
        warnings.warn(message + "; truncated", TextTooLongWarning, stacklevel=2)
    return ids
