"""MkDocs hook for the API reference: the docstrings cross-reference in Sphinx's manner
(:func:`name`, :class:`~pkg.Name`), which Markdown renders as ':func:' before a code span.
Keep the code span (the last dotted part for a ``~`` reference) and drop the role."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|meth|data|mod|attr|exc|obj):<code>(~?)([^<]*)</code>")


def _span(match: re.Match) -> str:
    short, name = match.group(1), match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if short else name}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub(_span, html)
