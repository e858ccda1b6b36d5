"""Search a media library by text, sound or picture.

- :class:`Index`: build (incrementally) and query an index of audio, image and video files.
- :class:`VectorStore`: the storage interface; :class:`LanceStore` implements it with LanceDB (and a FAISS
  index beside the table, ``ann.py``), :class:`MilvusStore` with Milvus or Milvus Lite; :func:`open_store`
  picks one from a ``--db`` value.
- ``audioclip index``, ``audioclip search``, ``audioclip serve``: see :mod:`audioclip.cli.index`.

See ``docs/search.md``. Names are imported on first use, so that the store can be used
(and the commands' ``--help`` shown) without importing torch and the model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "Index": "audioclip.index.api",
    "QueryError": "audioclip.index.api",
    "IndexReport": "audioclip.index.indexing",
    "SearchHit": "audioclip.index.search",
    "merge_windows": "audioclip.index.search",
    "FileRecord": "audioclip.index.store",
    "IndexStoreError": "audioclip.index.store",
    "LanceStore": "audioclip.index.store",
    "MilvusStore": "audioclip.index.milvus",
    "VectorStore": "audioclip.index.store",
    "open_store": "audioclip.index.stores",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .api import Index, QueryError
    from .indexing import IndexReport
    from .search import SearchHit, merge_windows
    from .milvus import MilvusStore
    from .store import FileRecord, IndexStoreError, LanceStore, VectorStore
    from .stores import open_store


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'audioclip.index' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
