"""The plan of an indexing run (``plan_update``), from the walk, the stored records and a disk, without a store.

The disk is a dictionary: path -> (content, mtime_ns, inode); links are a
dictionary of other names -> resolved paths. Nothing touches the file system.
"""

from __future__ import annotations

import hashlib

import pytest

from audioclip.index.plan import Scope, Stat, plan_update
from audioclip.index.records import FailureRecord, FileRecord, file_id_of

DEV = 7


class FakeDisk:
    def __init__(self, files: dict[str, tuple[bytes, int, int]], links: dict[str, str] | None = None,
                 unreadable: set[str] = frozenset()):
        self.files, self.links, self.unreadable = files, links or {}, unreadable
        self.hashed: list[str] = []

    def stat(self, path: str) -> Stat:
        path = self.realpath(path)
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory")
        content, mtime, inode = self.files[path]
        return Stat(len(content), mtime, DEV, inode)

    def content_hash(self, path: str) -> str:
        if path in self.unreadable:
            raise PermissionError(13, "Permission denied")
        self.hashed.append(path)
        return digest(self.files[self.realpath(path)][0])

    def is_file(self, path: str) -> bool:
        return self.realpath(path) in self.files

    def realpath(self, path: str) -> str:
        return self.links.get(path, path)

    def source(self, path: str) -> str | None:
        return {"wav": "audio", "flac": "audio", "png": "image", "mp4": "video"}.get(path.rsplit(".", 1)[-1])


def digest(content: bytes) -> str:
    return hashlib.blake2b(content, digest_size=16).hexdigest()


def record(path: str, content: bytes, mtime: int, inode: int | None, source: str = "audio") -> FileRecord:
    return FileRecord(file_id_of(path), path, source, len(content), mtime, digest(content), None,
                      None if inode is None else DEV, inode)


def plan(disk: FakeDisk, stored: list[FileRecord], found: list[str] | None = None, failures=(), **kwargs):
    found = sorted(disk.files) if found is None else found
    kwargs.setdefault("scope", Scope(("/lib/",)))
    return plan_update(found, {r.path: r for r in stored}, {f.path: f for f in failures}, disk=disk, **kwargs)


def test_a_new_file_is_embedded_and_an_unchanged_one_is_not_even_hashed():
    disk = FakeDisk({"/lib/a.wav": (b"aaaa", 1, 10), "/lib/new.wav": (b"new", 2, 11)})
    result = plan(disk, [record("/lib/a.wav", b"aaaa", 1, 10)])
    assert [(f.path, f.old) for f in result.embed] == [("/lib/new.wav", None)]
    assert result.unchanged == 1 and result.hashed == 0 and disk.hashed == []
    assert not (result.reuse or result.identity or result.remove or result.duplicates) and result.stored == 1


def test_a_changed_file_is_embedded_again_replacing_its_record():
    old = record("/lib/a.wav", b"aaaa", 1, 10)
    disk = FakeDisk({"/lib/a.wav": (b"longer", 5, 10)})  # another size: no hash needed
    result = plan(disk, [old])
    assert [(f.path, f.old, f.replaced()) for f in result.embed] == [("/lib/a.wav", old, [old])]
    assert result.hashed == 0 and result.writes


def test_same_size_new_content_is_hashed_then_embedded():
    old = record("/lib/a.wav", b"aaaa", 1, 10)
    disk = FakeDisk({"/lib/a.wav": (b"bbbb", 5, 10)})
    result = plan(disk, [old])
    assert [f.path for f in result.embed] == ["/lib/a.wav"] and result.embed[0].hash == digest(b"bbbb")
    assert disk.hashed == ["/lib/a.wav"] and result.hashed == 1


def test_a_touched_file_gets_its_identity_updated_only():
    old = record("/lib/a.wav", b"aaaa", 1, 10)
    disk = FakeDisk({"/lib/a.wav": (b"aaaa", 9, 10)})
    result = plan(disk, [old])
    assert result.touched == ["/lib/a.wav"] and not result.embed and not result.writes
    assert result.identity == [FileRecord(old.file_id, "/lib/a.wav", "audio", 4, 9, old.hash, None, DEV, 10)]


def test_a_gone_file_is_removed_in_scope_and_kept_outside_it_unless_pruned():
    inside, outside = record("/lib/gone.wav", b"x", 1, 10), record("/elsewhere/gone.wav", b"y", 1, 11)
    disk = FakeDisk({})
    assert plan(disk, [inside, outside]).remove == [inside]
    assert plan(disk, [inside, outside], prune=True).remove == [inside, outside]
    assert plan(disk, [inside, outside], scope=Scope(files=frozenset({"/elsewhere/gone.wav"}))).remove == [outside]


def test_a_moved_file_gets_its_vectors_copied_and_its_old_record_dropped():
    old = record("/lib/old.wav", b"same", 1, 10)
    disk = FakeDisk({"/lib/moved.wav": (b"same", 1, 10)})
    result = plan(disk, [old])
    assert [(f.path, twin) for f, twin in result.reuse] == [("/lib/moved.wav", old)] and not result.embed
    assert result.remove == [old]


def test_a_copy_gets_the_vectors_of_the_original_which_stays():
    original = record("/lib/a.wav", b"same", 1, 10)
    disk = FakeDisk({"/lib/a.wav": (b"same", 1, 10), "/lib/copy.wav": (b"same", 3, 12)})
    result = plan(disk, [original])
    assert [(f.path, twin) for f, twin in result.reuse] == [("/lib/copy.wav", original)]
    assert result.unchanged == 1 and not result.remove


def test_same_content_of_another_kind_of_file_is_embedded_not_copied():
    picture = record("/lib/a.png", b"same", 1, 10, source="image")
    disk = FakeDisk({"/lib/a.png": (b"same", 1, 10), "/lib/a.wav": (b"same", 1, 11)})
    result = plan(disk, [picture])
    assert [f.path for f in result.embed] == ["/lib/a.wav"] and not result.reuse


@pytest.mark.parametrize("content, touched", [(b"aaaa", True), (b"bbbb", False)])
def test_a_replaced_file_with_the_same_size_and_mtime_is_hashed_not_trusted(content, touched):
    """Another inode, same size and mtime (a copy that kept the mtime): the hash decides."""
    old = record("/lib/a.wav", b"aaaa", 1, 10)
    disk = FakeDisk({"/lib/a.wav": (content, 1, 99)})
    result = plan(disk, [old])
    assert disk.hashed == ["/lib/a.wav"] and result.unchanged == 0
    if touched:
        assert result.touched == ["/lib/a.wav"] and result.identity[0].inode == 99 and not result.embed
    else:
        assert [f.path for f in result.embed] == ["/lib/a.wav"] and not result.identity


def test_a_file_that_cannot_be_hashed_or_stat_ed_is_reported_failed():
    old = record("/lib/a.wav", b"aaaa", 1, 10)
    disk = FakeDisk({"/lib/a.wav": (b"bbbb", 5, 10)}, unreadable={"/lib/a.wav"})
    result = plan(disk, [old], found=["/lib/a.wav", "/lib/vanished.wav"])
    assert result.failed == [("/lib/a.wav", "Permission denied"), ("/lib/vanished.wav", "No such file or directory")]
    assert not result.embed and not result.remove  # a file not hashed is not gone


def test_a_record_without_an_inode_gets_it_filled_in_unless_the_store_cannot_hold_it():
    old = record("/lib/a.wav", b"aaaa", 1, None)
    disk = FakeDisk({"/lib/a.wav": (b"aaaa", 1, 10)})
    result = plan(disk, [old])
    assert result.unchanged == 1 and [(r.dev, r.inode) for r in result.identity] == [(DEV, 10)]
    assert not result.touched and disk.hashed == []
    assert plan(disk, [old], records_inodes=False).identity == []


def test_a_file_that_failed_before_is_skipped_until_it_changes_or_retried():
    failure = FailureRecord(file_id_of("/lib/bad.wav"), "/lib/bad.wav", 3, 1, "cannot decode")
    disk = FakeDisk({"/lib/bad.wav": (b"bad", 1, 10)})
    assert plan(disk, [], failures=[failure]).skipped_failed == [("/lib/bad.wav", "cannot decode")]
    assert [f.path for f in plan(disk, [], failures=[failure], retry_failed=True).embed] == ["/lib/bad.wav"]
    disk.files["/lib/bad.wav"] = (b"fixed", 2, 10)
    assert [f.path for f in plan(disk, [], failures=[failure]).embed] == ["/lib/bad.wav"]
    del disk.files["/lib/bad.wav"]
    assert plan(disk, [], failures=[failure], found=[]).drop_failures == [failure.file_id]


def test_a_record_under_an_unresolved_name_moves_to_the_resolved_one_without_embedding():
    """An older index stored the path through a link: the file is found under its resolved name."""
    alias = record("/lib/link/a.wav", b"aaaa", 1, 10)
    disk = FakeDisk({"/lib/real/a.wav": (b"aaaa", 1, 10)}, links={"/lib/link/a.wav": "/lib/real/a.wav"})
    result = plan(disk, [alias])
    assert [(f.path, twin, f.old) for f, twin in result.reuse] == [("/lib/real/a.wav", alias, alias)]
    assert disk.hashed == [] and not result.remove and result.unresolved == 0
    # known to store resolved paths only: not looked for, so the content hash finds it, and the other name goes
    result = plan(disk, [alias], paths_resolved=True)
    assert [(f.path, twin) for f, twin in result.reuse] == [("/lib/real/a.wav", alias)]
    assert result.remove == [alias] and result.unresolved is None


def test_two_records_of_one_file_leave_one():
    real, alias = record("/lib/real/a.wav", b"aaaa", 1, 10), record("/lib/link/a.wav", b"aaaa", 1, 10)
    disk = FakeDisk({"/lib/real/a.wav": (b"aaaa", 1, 10)}, links={"/lib/link/a.wav": "/lib/real/a.wav"})
    result = plan(disk, [real, alias])
    assert result.unchanged == 1 and result.duplicates == [alias] and not result.remove and result.writes
