"""Prompt templates and CLIP's prompt ensembling: labels -> one text vector per label.

A template is a string with exactly one ``{}`` where the label goes, e.g.
``"the sound of {}"``; literal braces are written ``{{`` and ``}}``. A label's
class vector is the mean of its prompts' unit-length text embeddings, one per
template, renormalised to unit length (Radford et al., 2021, section 3.1.4).

Zero-shot classification (:mod:`audioclip.inference`), evaluation
(:mod:`audioclip.evaluate`) and prompt-based training (:mod:`audioclip.train`)
all build their class vectors here. Torch is imported only inside
:func:`text_classifier`, so templates can be checked before anything heavy is
loaded.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["check_template", "text_classifier"]


def check_template(template: str) -> None:
    """Raise ``ValueError`` (one line) unless ``template`` has exactly one bare ``{}``.

    Only an empty ``{}`` is a placeholder: ``{x}`` or ``{0}`` would need other
    arguments, ``{:>10}`` or ``{!r}`` would change the label, and a lone ``{``
    or ``}`` cannot be formatted at all.
    """
    if not isinstance(template, str):
        raise ValueError(f"a template must be a string, got {type(template).__name__}")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as err:  # "Single '}' encountered", "expected '}' before end of string"
        raise ValueError(f"template {template!r} has unbalanced braces ({err}); "
                         "write a literal brace as {{ or }}") from None
    if not fields:
        raise ValueError(f"template {template!r} has no '{{}}' for the label")
    if len(fields) > 1:
        raise ValueError(f"template {template!r} has {len(fields)} placeholders; it needs exactly one '{{}}'")
    name, spec, conv = fields[0]
    if name or spec or conv:
        field = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        raise ValueError(f"template {template!r} has {field!r}; the label's place is a bare '{{}}' "
                         "(no name, index, conversion or format spec)")


def text_classifier(
    model,
    labels: Sequence[str],
    templates: str | Sequence[str] = "{}",
    *,
    batch_size: int | None = 256,
    renormalize: bool = True,
) -> torch.Tensor:
    """Class vectors ``(len(labels), embed_dim)``, float32, on the model's device.

    Each prompt is encoded with ``model.encode_text(list_of_str)`` and scaled
    to unit length; a label's vector is the mean over ``templates``,
    renormalised (``renormalize=False`` returns the plain mean, which with a
    single template is the prompt vector itself). A prompt that occurs more
    than once (a repeated label, or two templates giving the same text) is
    encoded once; repeated labels get equal rows.

    Prompts go to the model a template at a time, ``batch_size`` at most per
    call (``None``: all the labels of a template in one call). That order is
    part of the result: float32 text embeddings change in the last bits with
    the composition of their batch.

    Runs under the caller's grad mode: wrap it in ``torch.inference_mode()``
    unless gradients to the text head are wanted.
    """
    import torch
    import torch.nn.functional as F

    labels = list(labels)
    templates = _templates(templates)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    unique = list(dict.fromkeys(labels))
    if not unique:
        raise ValueError("no labels to make class vectors for")

    # (N, D): the unit vectors of the N distinct prompts, in the order encoded
    index: dict[str, int] = {}
    encoded = []
    for template in templates:
        new = [p for p in (template.format(label) for label in unique) if p not in index]
        step = batch_size or max(1, len(new))
        for i in range(0, len(new), step):
            batch = new[i:i + step]
            encoded.append(F.normalize(model.encode_text(batch).float(), dim=-1))
            index.update({p: len(index) + k for k, p in enumerate(batch)})
    table = torch.cat(encoded)
    # (T, U, D): every template's prompt vector of every unique label
    order = torch.tensor([[index[t.format(label)] for label in unique] for t in templates], device=table.device)
    per_template = table[order]

    # (U, D): CLIP's ensembling, then back to the caller's order of labels
    mean = per_template.mean(dim=0)
    vectors = F.normalize(mean, dim=-1) if renormalize else mean
    if len(unique) == len(labels):
        return vectors
    where = {label: i for i, label in enumerate(unique)}
    return vectors[[where[label] for label in labels]]


def _templates(templates: str | Sequence[str]) -> list[str]:
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates:
        raise ValueError("at least one template is needed ('{}' is the bare label)")
    for template in templates:
        check_template(template)
    return templates
