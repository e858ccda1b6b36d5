"""Search a media library by text, sound or picture.

- :class:`Index`: build (incrementally) and query an index of audio, image and video files.
- :class:`VectorStore`: the storage interface (``base.py``); :class:`LanceStore` implements it with LanceDB
  (``lance.py``, and a FAISS index beside the table, ``ann.py``), :class:`MilvusStore` with Milvus or Milvus
  Lite (``milvus.py``); :func:`open_store` picks one from a ``--db`` value (``db.py``). What the rows and
  file records hold: ``records.py``.
- Indexing: ``plan.py`` decides what a run does (a pure plan), ``indexing.py`` does it.
- ``audioclip index``, ``audioclip search``, ``audioclip serve``: see :mod:`audioclip.cli.index`.

See ``docs/search.md``. Names are imported on first use, so that the store can be used
(and the commands' ``--help`` shown) without importing torch and the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from audioclip.util import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("Index", "QueryError"), "audioclip.index.api"),
    "IndexReport": "audioclip.index.indexing",
    **dict.fromkeys(("SearchHit", "merge_windows"), "audioclip.index.search"),
    "FileRecord": "audioclip.index.records",
    **dict.fromkeys(("IndexStoreError", "VectorStore"), "audioclip.index.base"),
    "LanceStore": "audioclip.index.lance",
    "MilvusStore": "audioclip.index.milvus",
    "open_store": "audioclip.index.db",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .api import Index, QueryError
    from .indexing import IndexReport
    from .search import SearchHit, merge_windows
    from .milvus import MilvusStore
    from .base import IndexStoreError, VectorStore
    from .db import open_store
    from .lance import LanceStore
    from .records import FileRecord


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
