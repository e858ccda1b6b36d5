"""What an indexing run must do, decided before anything is written: :func:`plan_update` -> :class:`UpdatePlan`.

The plan is a pure function of the files found under the paths (the walk),
what the index stores (file and failure records) and what the disk says of
each file (:class:`Disk`: size, mtime, ``(dev, inode)``, content hash when
needed), so it is tested without a store and without a model.
``indexing.apply_plan`` carries it out.

**Identity.** A file is identified by its resolved absolute path
(``os.path.realpath``: links followed, ``..`` gone), so a file named two ways
or reached through a symbolic link is one record. Beside it each record keeps
what the file was when embedded: size, mtime (ns), content hash, and
``(dev, inode)``. An index written before paths were resolved may hold a file
under another name (``a/../a/x.wav``, a path through a link): such a record is
moved to the resolved name with its vectors copied (``reuse``), not embedded
again, and once none is left the metadata says ``"paths": "resolved"`` so that
later runs skip the check. A record whose path stops being a resolved path (a
folder on the way moved and replaced by a link to its new place) is dropped by
the next run over it, like a gone file: the file is found under its resolved
name, its vectors reused by content hash.

**What changed.** Size and mtime first: both equal and the same
``(dev, inode)`` means unchanged, without reading the file (a record from
before inodes were recorded gets them filled in). Otherwise, when the size
equals an indexed file's, the content hash decides: same content at the same
path only gets its identity updated ("touched": a new mtime, or a replaced
file with the same bytes); content already indexed under another path (a copy,
a rename) has its vectors copied ("reuse"); anything else is embedded. Only
the files whose size and mtime did not settle it are hashed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ..media import sniff_modality
from .records import FailureRecord, FileRecord, stat_identity

__all__ = ["Disk", "FileToIndex", "LocalDisk", "Scope", "Stat", "UpdatePlan", "content_hash", "plan_update"]


def content_hash(path: str, chunk: int = 1 << 20) -> str:
    """BLAKE2b-128 of the file's bytes, hex (32 characters)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Stat(NamedTuple):
    """What identifies a file's version on disk: ``dev`` and ``inode`` as :func:`records.stat_identity` gives."""

    size: int
    mtime_ns: int
    dev: int
    inode: int


class Disk(Protocol):
    """What the plan asks of the file system (:class:`LocalDisk`; a test passes a dictionary's)."""

    def stat(self, path: str) -> Stat: ...  # raises OSError
    def content_hash(self, path: str) -> str: ...  # raises OSError
    def is_file(self, path: str) -> bool: ...
    def realpath(self, path: str) -> str: ...
    def source(self, path: str) -> str | None: ...  # "audio", "image", "video" (media.sniff_modality)


class LocalDisk:
    """The files as they are."""

    def stat(self, path: str) -> Stat:
        st = os.stat(path)
        return Stat(st.st_size, st.st_mtime_ns, *stat_identity(st))

    content_hash = staticmethod(content_hash)
    is_file = staticmethod(os.path.isfile)
    realpath = staticmethod(os.path.realpath)
    source = staticmethod(sniff_modality)


@dataclass(frozen=True)
class Scope:
    """The folders (each with a trailing separator) and files a run was given, each both as given (absolute)
    and resolved: records of an index that stored paths as given are in scope too."""

    roots: tuple[str, ...] = ()
    files: frozenset[str] = frozenset()

    @classmethod
    def of(cls, paths: Sequence[str | os.PathLike]) -> Scope:
        roots, named = set(), set()
        for p in paths:
            given = os.path.abspath(os.fspath(p))
            forms = {given, os.path.realpath(given)}
            if os.path.isdir(given):
                roots |= {os.path.join(form, "") for form in forms}
            else:
                named |= forms
        return cls(tuple(sorted(roots)), frozenset(named))

    def __contains__(self, path: str) -> bool:
        return path in self.files or path.startswith(self.roots)


@dataclass
class FileToIndex:
    """A file found by the walk that the run writes: embedded, or given another record's vectors."""

    path: str  # resolved absolute path
    size: int
    mtime_ns: int
    dev: int
    inode: int
    old: FileRecord | None  # the stored version of a changed file (or of this file under another name)
    hash: str | None = None
    also_replaces: list[FileRecord] = field(default_factory=list)  # more records of this file, other names

    def replaced(self) -> list[FileRecord]:
        """The records this file's new rows replace (deleted in the commit before they are added)."""
        return ([self.old] if self.old is not None else []) + self.also_replaces


@dataclass
class UpdatePlan:
    """What one run writes, and what it found that needs nothing written."""

    embed: list[FileToIndex] = field(default_factory=list)  # new or changed: embedded (updated if ``old``)
    reuse: list[tuple[FileToIndex, FileRecord]] = field(default_factory=list)  # (file, record whose vectors it gets)
    identity: list[FileRecord] = field(default_factory=list)  # metadata only: touched files, inodes filled in
    touched: list[str] = field(default_factory=list)  # paths of the touched files among ``identity``
    remove: list[FileRecord] = field(default_factory=list)  # files gone from disk
    duplicates: list[FileRecord] = field(default_factory=list)  # other names of files whose record stays
    drop_failures: list[int] = field(default_factory=list)  # failure records of gone or renamed files
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not stat-ed or hashed
    skipped_failed: list[tuple[str, str]] = field(default_factory=list)  # failed before, unchanged since
    hashed: int = 0  # files whose content was read
    unresolved: int | None = None  # records left under another name than their resolved path; None: not checked
    stored: int = 0  # files in the index before the run

    @property
    def writes(self) -> bool:
        """Whether carrying the plan out writes anything but identities."""
        return bool(self.embed or self.reuse or self.remove or self.duplicates)


def plan_update(found: Sequence[str], stored: Mapping[str, FileRecord], failures: Mapping[str, FailureRecord], *,
                scope: Scope, prune: bool = False, retry_failed: bool = False, paths_resolved: bool = False,
                records_inodes: bool = True, disk: Disk | None = None) -> UpdatePlan:
    """The plan that brings the index (``stored``, ``failures``: by path) up to date with ``found``.

    ``found``: the resolved paths of the media files the walk of ``scope``
    found. Records in ``scope`` (anywhere with ``prune``) whose file is gone
    are removed; failed files unchanged since are skipped unless
    ``retry_failed``. ``paths_resolved``: the index is known to store
    resolved paths only, so records under other names are not looked for.
    ``records_inodes``: False for a store that cannot record them (an older
    Milvus collection), so they are not filled in.
    """
    disk = disk or LocalDisk()
    plan = UpdatePlan(stored=len(stored))
    by_hash = {r.hash: r for r in stored.values()}
    sizes = {r.size for r in stored.values()}
    found_set = set(found)

    # Records of an older index under a name that is not their resolved path: keyed by that path.
    aliases: dict[str, list[FileRecord]] = {}
    stale_failures: list[int] = []
    if not paths_resolved:
        plan.unresolved = 0
        for p, r in stored.items():
            if p not in found_set and (real := disk.realpath(p)) != p:
                aliases.setdefault(real, []).append(r)
        stale_failures = [f.file_id for p, f in failures.items()
                          if p not in found_set and disk.realpath(p) in found_set]

    statted: set[str] = set()  # found and stat-ed this run: not gone
    matched: set[int] = set()  # file ids of the records of files found this run (under any name)
    for path in found:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            plan.failed.append((path, "file name is not valid UTF-8; rename it"))
            continue
        try:
            st = disk.stat(path)
        except OSError as err:
            plan.failed.append((path, err.strerror or str(err)))
            continue
        statted.add(path)
        old, other_names = stored.get(path), aliases.pop(path, [])
        if old is None and other_names:  # the same file, stored under another name by an older index
            old, other_names = other_names[0], other_names[1:]
        matched.update(r.file_id for r in ([old] if old is not None else []) + other_names)
        # other_names: more records of this very file (names an older index used). They go in the
        # commit that writes this file's record, or with the removals if its record stays as it is.
        same_name = old is not None and old.path == path
        if old is not None and old.size == st.size and old.mtime_ns == st.mtime_ns:
            if same_name and old.inode is None and records_inodes:  # recorded before inodes were: fill them in
                plan.identity.append(dataclasses.replace(old, dev=st.dev, inode=st.inode))
            if same_name and old.inode in (None, st.inode) and old.dev in (None, st.dev):
                plan.unchanged += 1
                plan.duplicates.extend(other_names)
                continue
            if not same_name and old.inode in (None, st.inode):  # moved to its resolved name: copy the vectors
                plan.reuse.append((FileToIndex(path, *st, old, old.hash, other_names), old))
                continue
            # Same size and mtime but another inode: a replaced file (a copy that kept the mtime, a
            # restore from a backup). Never trusted blindly: the content hash below decides.
        failure = failures.get(path)
        if failure and failure.size == st.size and failure.mtime_ns == st.mtime_ns and not retry_failed:
            plan.skipped_failed.append((path, failure.error))
            continue
        item = FileToIndex(path, *st, old, also_replaces=other_names)
        if st.size in sizes:  # could be a touch, a copy or a rename: worth a hash
            try:
                item.hash = disk.content_hash(path)
                plan.hashed += 1
            except OSError as err:
                plan.failed.append((path, err.strerror or str(err)))
                continue
            if same_name and old.hash == item.hash:  # same bytes: only the identity changes
                plan.identity.append(FileRecord(old.file_id, path, old.source, st.size, st.mtime_ns, item.hash,
                                                old.duration, st.dev, st.inode))
                plan.touched.append(path)
                plan.duplicates.extend(other_names)
                continue
            twin = old if old is not None and old.hash == item.hash else by_hash.get(item.hash)
            if twin is not None and twin.source == disk.source(path):
                plan.reuse.append((item, twin))
                continue
        plan.embed.append(item)

    def gone(p: str) -> bool:
        """Whether the record of ``p`` (in scope, not found this run) is to be dropped: its file is gone, or
        this run found that file under its resolved name, another than ``p`` (a folder on the way became
        a link): ``p`` would be a second record of it. A file this run did not reach (a run over a parent
        whose walk does not enter linked folders, or over another folder with ``--prune``) keeps its
        record, whatever its name."""
        if p in statted:
            return False
        if not disk.is_file(p):
            return True
        resolved = disk.realpath(p)
        return resolved != p and resolved in statted

    plan.remove = [r for p, r in stored.items() if r.file_id not in matched and (prune or p in scope) and gone(p)]
    removed_ids = {r.file_id for r in plan.remove}
    plan.drop_failures = [f.file_id for p, f in failures.items() if (prune or p in scope) and gone(p)]
    plan.drop_failures += stale_failures
    if plan.unresolved is not None:  # other names left: not found again this run, not gone
        plan.unresolved = sum(1 for records in aliases.values() for r in records if r.file_id not in removed_ids)
    return plan
