"""Which store a ``--db`` value names: a LanceDB folder, Milvus Lite (``milvus:FILE.db``) or a Milvus server."""

from __future__ import annotations

import os
from pathlib import Path

from .base import VectorStore
from .lance import LanceStore
from .milvus import MilvusStore, is_milvus

__all__ = ["open_store", "store_exists"]


def open_store(db: str | os.PathLike, create: bool = False) -> VectorStore:
    """The store a ``--db`` value names: ``milvus:FILE.db`` (Milvus Lite), ``http(s)://HOST:PORT`` (a Milvus
    server; ``#NAME`` picks the collections' prefix), otherwise a LanceDB folder."""
    db = os.fspath(db)
    if is_milvus(db):
        return MilvusStore(db, create=create)
    return LanceStore(db, create=create)


def store_exists(db: str | os.PathLike) -> bool:
    """Whether ``db`` names an existing index (a Milvus server is asked only when opened: True)."""
    db = os.fspath(db)
    if is_milvus(db):
        return MilvusStore.exists(db)
    return Path(db).exists()
