"""The namespace state machine: each command's outcomes, the POSIX rename rules,
snapshots, the command codec, and randomized determinism and model checks.

Every refused command is also checked to leave the snapshot bytes unchanged:
a refusal is a replicated outcome and must be all-or-nothing.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import quorumfs.master
from quorumfs.master.commands import (
    AllocateChunkIds,
    Chunk,
    Command,
    CommitContent,
    Create,
    Delete,
    Mkdir,
    RegisterVolume,
    Rename,
    ReplaceChunkReplicas,
    SetAttr,
    decode_command,
    encode_command,
)
from quorumfs.master.namespace import (
    MAX_CHUNK_IDS_PER_ALLOCATION,
    MAX_REPLICATION,
    ROOT_INODE_ID,
    Namespace,
    SnapshotError,
)
from quorumfs.master.paths import MAX_NAME_BYTES, MAX_PATH_BYTES, split_path
from quorumfs.master.results import (
    HTTP_STATUS_BY_CODE,
    ErrorCode,
    Kind,
    NamespaceError,
    RefusedError,
    Result,
    Stat,
    Totals,
)

T0 = 1_700_000_000_000_000_000
"""An mtime in nanoseconds (November 2023)."""


def mkdir(
    path: str, *, parents: bool = False, mode: int = 0o755, mtime: int = T0, owner: str = "alice"
) -> Mkdir:
    return Mkdir(path=path, parents=parents, mode=mode, mtime=mtime, owner=owner)


def create(
    path: str,
    *,
    exclusive: bool = False,
    mode: int = 0o644,
    mtime: int = T0,
    owner: str = "alice",
    replication: int = 2,
) -> Create:
    return Create(
        path=path,
        exclusive=exclusive,
        mode=mode,
        mtime=mtime,
        owner=owner,
        replication=replication,
    )


def commit(
    path: str,
    chunks: tuple[Chunk, ...] = (),
    size: int | None = None,
    *,
    mtime: int = T0,
    expected_version: int | None = None,
    expected_inode: int | None = None,
) -> CommitContent:
    if size is None:
        size = chunks[-1].offset + chunks[-1].size if chunks else 0
    return CommitContent(
        path=path,
        chunks=chunks,
        size=size,
        mtime=mtime,
        expected_version=expected_version,
        expected_inode=expected_inode,
    )


def chunk(chunk_id: int, offset: int, size: int, volume_ids: tuple[int, ...] = (1, 2)) -> Chunk:
    return Chunk(
        chunk_id=chunk_id,
        offset=offset,
        size=size,
        checksum=0xC0FFEE + chunk_id,
        volume_ids=volume_ids,
    )


def refuse(namespace: Namespace, command: Command) -> NamespaceError:
    """Apply a command that must fail; check that it changed nothing; return the error."""
    before = namespace.snapshot()
    result = namespace.apply(command)
    assert result.error is not None, f"{command} should fail, returned {result.value}"
    assert result.value is None
    assert namespace.snapshot() == before, f"refused {command} changed the namespace"
    return result.error


def write(namespace: Namespace, path: str, sizes: list[int]) -> tuple[Chunk, ...]:
    """Allocate chunk ids and commit back-to-back chunks of ``sizes`` as the content of ``path``."""
    chunk_ids = namespace.apply(AllocateChunkIds(count=len(sizes))).unwrap().chunk_ids
    chunks, offset = [], 0
    for chunk_id, size in zip(chunk_ids, sizes, strict=True):
        chunks.append(chunk(chunk_id, offset, size))
        offset += size
    namespace.apply(commit(path, tuple(chunks))).unwrap()
    return tuple(chunks)


def names(namespace: Namespace, path: str) -> list[str]:
    return [entry.name for entry in namespace.list(path).unwrap()]


def populated() -> Namespace:
    """/docs/readme (chunks 1, 2)  /empty/  /notes  /tree/a/b/leaf (chunk 3);
    volumes 1 and 2; chunk ids 4 to 7 allocated but unused."""
    namespace = Namespace()
    for _ in range(2):
        namespace.apply(RegisterVolume(address="10.0.0.1:8080")).unwrap()
    for directory in ("/docs", "/empty", "/tree/a/b"):
        namespace.apply(mkdir(directory, parents=True)).unwrap()
    for file in ("/docs/readme", "/notes", "/tree/a/b/leaf"):
        namespace.apply(create(file)).unwrap()
    write(namespace, "/docs/readme", [100, 50])
    write(namespace, "/tree/a/b/leaf", [7])
    assert namespace.apply(AllocateChunkIds(count=4)).unwrap().chunk_ids == (4, 5, 6, 7)
    return namespace


@pytest.fixture
def ns() -> Namespace:
    return populated()


# ------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("path", "components"),
    [
        ("/", ()),
        ("/a", ("a",)),
        ("/a/b c/d-e.f", ("a", "b c", "d-e.f")),
        ("/é/...", ("é", "...")),
        ("/" + "é" * 127 + "x", ("é" * 127 + "x",)),  # exactly 255 bytes
    ],
)
def test_split_path_accepts(path: str, components: tuple[str, ...]) -> None:
    assert split_path(path) == components


def test_split_path_accepts_a_path_of_exactly_the_maximum_length() -> None:
    path = "/" + "/".join(["x" * 99] * 40) + "/" + "y" * 95
    assert len(path.encode()) == MAX_PATH_BYTES
    assert len(split_path(path)) == 41


@pytest.mark.parametrize(
    ("path", "code", "problem"),
    [
        ("", ErrorCode.EINVAL, "absolute"),
        ("a/b", ErrorCode.EINVAL, "absolute"),
        ("/a/", ErrorCode.EINVAL, "trailing slash"),
        ("/a//b", ErrorCode.EINVAL, "empty component"),
        ("//", ErrorCode.EINVAL, "trailing slash"),
        ("/a/./b", ErrorCode.EINVAL, "'.' component"),
        ("/a/..", ErrorCode.EINVAL, "'..' component"),
        ("/a\0b", ErrorCode.EINVAL, "NUL"),
        ("/a\udcffb", ErrorCode.EINVAL, "UTF-8"),
        ("/" + "x" * (MAX_NAME_BYTES + 1), ErrorCode.ENAMETOOLONG, "component of 256 bytes"),
        ("/ok/" + "é" * 128, ErrorCode.ENAMETOOLONG, "component of 256 bytes"),
        ("/" + "/".join(["x" * 100] * 41), ErrorCode.ENAMETOOLONG, "4141 bytes long"),
    ],
)
def test_split_path_refuses(path: str, code: ErrorCode, problem: str) -> None:
    with pytest.raises(RefusedError) as refused:
        split_path(path)
    error = refused.value.error
    assert error.code == code
    assert problem in error.message
    msgspec.json.encode(error)  # even the error for a path with a lone surrogate encodes


# -------------------------------------------------------------------- root


def test_a_new_namespace_holds_only_the_root_directory() -> None:
    namespace = Namespace()
    root = namespace.stat("/").unwrap()
    assert (root.inode, root.kind, root.mode, root.owner) == (
        ROOT_INODE_ID,
        Kind.DIRECTORY,
        0o755,
        "root",
    )
    assert namespace.list("/").unwrap() == ()
    assert namespace.totals() == Totals(files=0, directories=1, bytes=0)


# --------------------------------------------------------------- refusals

ENOENT, EEXIST, ENOTDIR, EISDIR = (
    ErrorCode.ENOENT,
    ErrorCode.EEXIST,
    ErrorCode.ENOTDIR,
    ErrorCode.EISDIR,
)
ENOTEMPTY, EINVAL, ECONFLICT = ErrorCode.ENOTEMPTY, ErrorCode.EINVAL, ErrorCode.ECONFLICT
ENAMETOOLONG, ESTALE = ErrorCode.ENAMETOOLONG, ErrorCode.ESTALE


def case(
    case_id: str, command: Command, code: ErrorCode, path: str | None = None, *, says: str = ""
) -> Any:
    """One row of REFUSALS: the error's code, its path (by default the command's own)
    and a phrase its message must contain (to tell apart refusals with one code)."""
    if path is None:
        path = getattr(command, "path", "")
    return pytest.param(command, code, path, says, id=case_id)


def bad_chunk(offset: int = 0, size: int = 1, **changes: Any) -> tuple[Chunk, ...]:
    """A one-chunk list using spare chunk id 4, with ``changes`` applied."""
    return (msgspec.structs.replace(chunk(4, offset, size), **changes),)


# Each refused command, applied to ``populated()``: the code and the path it names.
REFUSALS = [
    case("mkdir-existing-dir", mkdir("/docs"), EEXIST),
    case("mkdir-over-file", mkdir("/notes"), EEXIST),
    case("mkdir-p-over-file", mkdir("/notes", parents=True), EEXIST),
    case("mkdir-root", mkdir("/"), EEXIST),
    case("mkdir-missing-parent", mkdir("/nope/x"), ENOENT),
    case("mkdir-missing-parents", mkdir("/nope/x/y"), ENOENT),
    case("mkdir-under-file", mkdir("/notes/x"), ENOTDIR),
    case("mkdir-p-through-file", mkdir("/notes/x/y", parents=True), ENOTDIR),
    case("mkdir-mode-too-big", mkdir("/x", mode=0o10000), EINVAL, says="mode 0o10000"),
    case("mkdir-negative-mode", mkdir("/x", mode=-1), EINVAL, says="mode -0o1"),
    case("mkdir-empty-owner", mkdir("/x", owner=""), EINVAL, says="owner must be"),
    case("mkdir-owner-with-nul", mkdir("/x", owner="a\0b"), EINVAL, says="without NUL"),
    case("mkdir-owner-too-long", mkdir("/x", owner="o" * 256), EINVAL, says="owner must be"),
    case("mkdir-owner-not-utf8", mkdir("/x", owner="\udcff"), EINVAL, says="not valid UTF-8"),
    case("mkdir-mtime-overflow", mkdir("/x", mtime=2**63), EINVAL, says="64 signed bits"),
    case("mkdir-mtime-underflow", mkdir("/x", mtime=-(2**63) - 1), EINVAL, says="64 signed bits"),
    case("mkdir-relative-path", mkdir("x"), EINVAL, says="not absolute"),
    case("mkdir-long-name", mkdir("/" + "n" * 256), ENAMETOOLONG),
    case("create-excl-file", create("/notes", exclusive=True), EEXIST),
    case("create-excl-dir", create("/docs", exclusive=True), EEXIST),
    case("create-over-dir", create("/docs"), EISDIR),
    case("create-root", create("/"), EISDIR),
    case("create-root-excl", create("/", exclusive=True), EEXIST),
    case("create-missing-parent", create("/nope/f"), ENOENT),
    case("create-under-file", create("/notes/f"), ENOTDIR),
    case("create-replication-0", create("/f", replication=0), EINVAL, says="replication 0"),
    case(
        "create-replication-big",
        create("/f", replication=MAX_REPLICATION + 1),
        EINVAL,
        says="replication 17",
    ),
    case("create-bad-mode", create("/f", mode=0o20000), EINVAL, says="mode 0o20000"),
    case("create-dot-component", create("/a/./f"), EINVAL, says="'.' component"),
    case("delete-root", Delete(path="/"), EINVAL, says="root directory"),
    case("delete-root-recursive", Delete(path="/", recursive=True), EINVAL, says="root directory"),
    case("delete-missing", Delete(path="/nope"), ENOENT),
    case("delete-missing-parent", Delete(path="/nope/x"), ENOENT),
    case("delete-under-file", Delete(path="/notes/x"), ENOTDIR),
    case("delete-non-empty", Delete(path="/docs"), ENOTEMPTY),
    case("delete-trailing-slash", Delete(path="/docs/"), EINVAL, says="trailing slash"),
    case("rename-root", Rename(src="/", dst="/x"), EINVAL, "/", says="root directory"),
    case("rename-onto-root", Rename(src="/docs", dst="/"), EINVAL, "/", says="root directory"),
    case("rename-missing", Rename(src="/nope", dst="/x"), ENOENT, "/nope"),
    case("rename-src-under-file", Rename(src="/notes/x", dst="/x"), ENOTDIR, "/notes/x"),
    case(
        "rename-into-own-subtree",
        Rename(src="/tree", dst="/tree/a/x"),
        EINVAL,
        "/tree/a/x",
        says="own subtree",
    ),
    case(
        "rename-into-own-subtree-2",
        Rename(src="/tree/a", dst="/tree/a/q/r"),
        EINVAL,
        "/tree/a/q/r",
        says="own subtree",
    ),
    case("rename-onto-non-empty-dir", Rename(src="/empty", dst="/docs"), ENOTEMPTY, "/docs"),
    case("rename-onto-ancestor", Rename(src="/tree/a/b", dst="/tree/a"), ENOTEMPTY, "/tree/a"),
    case("rename-file-onto-dir", Rename(src="/notes", dst="/empty"), EISDIR, "/empty"),
    case("rename-dir-onto-file", Rename(src="/empty", dst="/notes"), ENOTDIR, "/notes"),
    case("rename-dst-no-parent", Rename(src="/notes", dst="/nope/x"), ENOENT, "/nope/x"),
    case("rename-dst-under-file", Rename(src="/docs/readme", dst="/notes/x"), ENOTDIR, "/notes/x"),
    case("rename-file-under-itself", Rename(src="/notes", dst="/notes/x"), ENOTDIR, "/notes/x"),
    case(
        "rename-bad-dst",
        Rename(src="/notes", dst="/a/../b"),
        EINVAL,
        "/a/../b",
        says="'..' component",
    ),
    case("rename-bad-src", Rename(src="notes", dst="/x"), EINVAL, "notes", says="not absolute"),
    case("setattr-missing", SetAttr(path="/nope", mode=0o600), ENOENT),
    case("setattr-bad-mode", SetAttr(path="/notes", mode=0o17777), EINVAL, says="mode 0o17777"),
    case("setattr-empty-owner", SetAttr(path="/notes", owner=""), EINVAL, says="owner must be"),
    case("setattr-bad-mtime", SetAttr(path="/notes", mtime=2**64), EINVAL, says="64 signed bits"),
    case("commit-missing", commit("/nope"), ENOENT),
    case("commit-to-dir", commit("/docs"), EISDIR),
    case("commit-to-root", commit("/"), EISDIR),
    case(
        "commit-stale-version",
        commit("/docs/readme", expected_version=0),
        ECONFLICT,
        says="version 1, not the expected 0",
    ),
    case(
        "commit-wrong-inode",
        commit("/docs/readme", expected_inode=99),
        ECONFLICT,
        says="not the expected 99",
    ),
    case(
        "commit-unallocated-chunk",
        commit("/notes", bad_chunk(chunk_id=8)),
        EINVAL,
        says="chunk 8 was never allocated",
    ),
    case(
        "commit-chunk-id-0",
        commit("/notes", bad_chunk(chunk_id=0)),
        EINVAL,
        says="chunk 0 was never allocated",
    ),
    case(
        "commit-chunk-of-another-file",
        commit("/notes", bad_chunk(chunk_id=1)),
        ESTALE,
        says="chunk 1 belongs to inode",
    ),
    case(
        "commit-unknown-volume",
        commit("/notes", bad_chunk(volume_ids=(3,))),
        EINVAL,
        says="volume 3, which was never allocated",
    ),
    case(
        "commit-no-volume",
        commit("/notes", bad_chunk(volume_ids=())),
        EINVAL,
        says="at least one volume",
    ),
    case(
        "commit-repeated-volume",
        commit("/notes", bad_chunk(volume_ids=(1, 1))),
        EINVAL,
        says="each once",
    ),
    case("commit-empty-chunk", commit("/notes", bad_chunk(size=0), 1), EINVAL, says="has size 0"),
    case(
        "commit-negative-offset",
        commit("/notes", bad_chunk(offset=-1), 4),
        EINVAL,
        says="negative offset",
    ),
    case(
        "commit-past-size",
        commit("/notes", bad_chunk(size=5), 4),
        EINVAL,
        says="past the file size 4",
    ),
    case(
        "commit-bad-checksum",
        commit("/notes", bad_chunk(checksum=2**32)),
        EINVAL,
        says="not a CRC-32C",
    ),
    case(
        "commit-chunk-twice",
        commit("/notes", (chunk(4, 0, 5), chunk(4, 5, 5))),
        EINVAL,
        says="listed twice",
    ),
    case(
        "commit-overlap",
        commit("/notes", (chunk(4, 0, 5), chunk(5, 4, 5))),
        EINVAL,
        says="chunk 5 at offset 4 overlaps",
    ),
    case(
        "commit-out-of-order",
        commit("/notes", (chunk(4, 5, 5), chunk(5, 0, 5)), 10),
        EINVAL,
        says="chunk 5 at offset 0 overlaps",
    ),
    case("commit-negative-size", commit("/notes", (), -1), EINVAL, says="size -1"),
    case(
        "commit-size-overflow", commit("/notes", (), 2**63), EINVAL, says="size 9223372036854775808"
    ),
    case("allocate-0-chunk-ids", AllocateChunkIds(count=0), EINVAL, says="1 to 4096"),
    case(
        "allocate-too-many",
        AllocateChunkIds(count=MAX_CHUNK_IDS_PER_ALLOCATION + 1),
        EINVAL,
        says="1 to 4096",
    ),
]


@pytest.mark.parametrize(("command", "code", "path", "says"), REFUSALS)
def test_refused_commands_change_nothing(
    ns: Namespace, command: Command, code: ErrorCode, path: str, says: str
) -> None:
    totals = ns.totals()
    error = refuse(ns, command)
    assert (error.code, error.path) == (code, path)
    assert says in error.message
    assert error.message
    assert error.http_status == HTTP_STATUS_BY_CODE[code]
    assert ns.totals() == totals


def test_every_error_code_has_an_http_status() -> None:
    assert set(HTTP_STATUS_BY_CODE) == set(ErrorCode)
    assert HTTP_STATUS_BY_CODE[ErrorCode.ENOENT] == 404
    assert HTTP_STATUS_BY_CODE[ErrorCode.ECONFLICT] == 409
    assert HTTP_STATUS_BY_CODE[ErrorCode.EEXIST] == 409
    assert HTTP_STATUS_BY_CODE[ErrorCode.EINVAL] == 400
    assert HTTP_STATUS_BY_CODE[ErrorCode.ENAMETOOLONG] == 400


def test_error_messages_say_what_is_wrong_and_what_to_do(ns: Namespace) -> None:
    assert "/nope does not exist" in refuse(ns, mkdir("/nope/x/y")).message
    assert "set parents" in refuse(ns, mkdir("/nope/x/y")).message
    assert "/notes is a file" in refuse(ns, mkdir("/notes/x/y", parents=True)).message
    assert "set recursive" in refuse(ns, Delete(path="/docs")).message
    stale = refuse(ns, commit("/docs/readme", expected_version=0)).message
    assert "version 1" in stale
    assert "expected 0" in stale


def test_unwrap_raises_the_error_and_ok_says_which() -> None:
    namespace = Namespace()
    failed = namespace.apply(Delete(path="/missing"))
    assert not failed.ok
    with pytest.raises(RefusedError) as refused:
        failed.unwrap()
    assert refused.value.error == failed.error
    assert namespace.apply(mkdir("/d")).ok


# ------------------------------------------------------------------- mkdir


def test_mkdir_creates_a_directory_with_the_given_attributes() -> None:
    namespace = Namespace()
    made = namespace.apply(mkdir("/data", mode=0o700, mtime=T0 + 5, owner="bob")).unwrap()
    assert made == Stat(
        inode=2,
        kind=Kind.DIRECTORY,
        mode=0o700,
        mtime=T0 + 5,
        owner="bob",
        size=0,
        version=0,
        replication=0,
    )
    assert namespace.stat("/data").unwrap() == made
    assert names(namespace, "/") == ["data"]
    assert namespace.totals().directories == 2


def test_mkdir_parents_creates_each_missing_directory_in_order() -> None:
    namespace = Namespace()
    namespace.apply(mkdir("/a")).unwrap()
    deepest = namespace.apply(mkdir("/a/b/c/d", parents=True, owner="carol")).unwrap()
    inodes = [namespace.stat(path).unwrap().inode for path in ("/a", "/a/b", "/a/b/c", "/a/b/c/d")]
    assert inodes == [2, 3, 4, 5]
    assert deepest.inode == 5
    assert namespace.stat("/a/b/c").unwrap().owner == "carol"
    assert namespace.totals().directories == 5


def test_mkdir_parents_of_an_existing_directory_is_a_no_op(ns: Namespace) -> None:
    before = ns.snapshot()
    existing = ns.stat("/tree/a").unwrap()
    assert ns.apply(mkdir("/tree/a", parents=True, mode=0o700)).unwrap() == existing
    assert ns.snapshot() == before


# ------------------------------------------------------------------ create


def test_create_makes_an_empty_file(ns: Namespace) -> None:
    made = ns.apply(create("/docs/new", mode=0o600, owner="bob", replication=3)).unwrap()
    assert made.kind == Kind.FILE
    assert (made.size, made.version, made.replication) == (0, 0, 3)
    assert (made.mode, made.owner, made.mtime) == (0o600, "bob", T0)
    assert ns.stat("/docs/new").unwrap() == made
    assert names(ns, "/docs") == ["new", "readme"]
    assert ns.lookup_chunks("/docs/new").unwrap().chunks == ()
    assert ns.totals().files == 4


def test_create_of_an_existing_file_leaves_it_as_it_is(ns: Namespace) -> None:
    before = ns.snapshot()
    existing = ns.stat("/docs/readme").unwrap()
    again = ns.apply(create("/docs/readme", mode=0o600, owner="mallory", replication=5)).unwrap()
    assert again == existing
    assert again.size == 150
    assert ns.snapshot() == before


# ------------------------------------------------------------------ delete


def test_delete_a_file_releases_its_chunks(ns: Namespace) -> None:
    readme_chunks = ns.lookup_chunks("/docs/readme").unwrap().chunks
    deleted = ns.apply(Delete(path="/docs/readme")).unwrap()
    assert (deleted.files, deleted.directories) == (1, 0)
    assert deleted.released_chunks == readme_chunks
    assert ns.stat("/docs/readme").error is not None
    assert names(ns, "/docs") == []
    assert ns.inode_of_chunk(1) is None
    assert ns.totals() == Totals(files=2, directories=6, bytes=7)


def test_delete_an_empty_directory(ns: Namespace) -> None:
    deleted = ns.apply(Delete(path="/empty")).unwrap()
    assert (deleted.files, deleted.directories, deleted.released_chunks) == (0, 1, ())
    assert names(ns, "/") == ["docs", "notes", "tree"]


def test_recursive_delete_removes_the_whole_subtree(ns: Namespace) -> None:
    ns.apply(create("/tree/a/other")).unwrap()
    write(ns, "/tree/a/other", [3, 3])  # chunks 8 and 9
    deleted = ns.apply(Delete(path="/tree", recursive=True)).unwrap()
    assert (deleted.files, deleted.directories) == (2, 3)
    assert [released.chunk_id for released in deleted.released_chunks] == [3, 8, 9]
    for path in ("/tree", "/tree/a", "/tree/a/b", "/tree/a/b/leaf", "/tree/a/other"):
        error = ns.stat(path).error
        assert error is not None
        assert error.code == ErrorCode.ENOENT
    assert [ns.inode_of_chunk(chunk_id) for chunk_id in (3, 8, 9)] == [None, None, None]
    assert ns.totals() == Totals(files=2, directories=3, bytes=150)


def test_recursive_delete_of_a_file_or_empty_directory_is_a_plain_delete(ns: Namespace) -> None:
    assert ns.apply(Delete(path="/notes", recursive=True)).unwrap().files == 1
    assert ns.apply(Delete(path="/empty", recursive=True)).unwrap().directories == 1
    assert names(ns, "/") == ["docs", "tree"]


# ------------------------------------------------------------------ rename


def test_rename_a_file_across_directories(ns: Namespace) -> None:
    readme = ns.stat("/docs/readme").unwrap()
    renamed = ns.apply(Rename(src="/docs/readme", dst="/tree/a/README")).unwrap()
    assert (renamed.replaced, renamed.released_chunks) == (False, ())
    assert ns.stat("/tree/a/README").unwrap() == readme
    assert names(ns, "/docs") == []
    assert names(ns, "/tree/a") == ["README", "b"]
    assert ns.inode_of_chunk(1) == readme.inode


def test_rename_a_directory_moves_its_subtree(ns: Namespace) -> None:
    leaf = ns.stat("/tree/a/b/leaf").unwrap()
    ns.apply(Rename(src="/tree/a", dst="/docs/moved")).unwrap()
    assert ns.stat("/docs/moved/b/leaf").unwrap() == leaf
    assert ns.stat("/tree/a/b/leaf").error is not None
    assert names(ns, "/tree") == []
    assert names(ns, "/docs") == ["moved", "readme"]
    assert ns.totals() == Totals(files=3, directories=6, bytes=157)


@pytest.mark.parametrize("path", ["/notes", "/docs", "/tree/a/b/leaf"])
def test_rename_to_itself_is_a_no_op(ns: Namespace, path: str) -> None:
    before = ns.snapshot()
    renamed = ns.apply(Rename(src=path, dst=path)).unwrap()
    assert (renamed.replaced, renamed.released_chunks) == (False, ())
    assert ns.snapshot() == before


def test_rename_onto_an_empty_directory_replaces_it(ns: Namespace) -> None:
    tree = ns.stat("/tree").unwrap()
    renamed = ns.apply(Rename(src="/tree", dst="/empty")).unwrap()
    assert renamed.replaced
    assert ns.stat("/empty").unwrap() == tree
    assert ns.stat("/empty/a/b/leaf").ok
    assert names(ns, "/") == ["docs", "empty", "notes"]
    assert ns.totals().directories == 5


def test_rename_onto_a_file_replaces_it_and_releases_its_chunks(ns: Namespace) -> None:
    readme = ns.stat("/docs/readme").unwrap()
    replaced_chunks = ns.lookup_chunks("/tree/a/b/leaf").unwrap().chunks
    renamed = ns.apply(Rename(src="/docs/readme", dst="/tree/a/b/leaf")).unwrap()
    assert renamed.replaced
    assert renamed.released_chunks == replaced_chunks
    assert ns.stat("/tree/a/b/leaf").unwrap() == readme
    assert ns.inode_of_chunk(3) is None
    assert ns.totals() == Totals(files=2, directories=6, bytes=150)


def test_rename_within_a_directory(ns: Namespace) -> None:
    ns.apply(Rename(src="/docs/readme", dst="/docs/README.md")).unwrap()
    assert names(ns, "/docs") == ["README.md"]


# ----------------------------------------------------------------- setattr


def test_setattr_changes_only_the_given_attributes(ns: Namespace) -> None:
    before = ns.stat("/docs/readme").unwrap()
    after = ns.apply(SetAttr(path="/docs/readme", mode=0o400)).unwrap()
    assert after == msgspec.structs.replace(before, mode=0o400)
    after = ns.apply(SetAttr(path="/docs/readme", owner="bob", mtime=T0 + 9)).unwrap()
    assert after == msgspec.structs.replace(before, mode=0o400, owner="bob", mtime=T0 + 9)
    assert after.version == before.version  # attributes are not content
    root = ns.apply(SetAttr(path="/", mode=0o700)).unwrap()
    assert root.mode == 0o700


def test_setattr_without_attributes_changes_nothing(ns: Namespace) -> None:
    before = ns.snapshot()
    assert ns.apply(SetAttr(path="/docs")).unwrap() == ns.stat("/docs").unwrap()
    assert ns.snapshot() == before


# ---------------------------------------------------------- commit content


def test_commit_content_replaces_the_chunk_list_and_bumps_the_version(ns: Namespace) -> None:
    chunks = (chunk(4, 0, 10), chunk(5, 20, 10))  # a hole at 10..20 reads as zeros
    committed = ns.apply(commit("/notes", chunks, 40, mtime=T0 + 1, expected_version=0)).unwrap()
    assert (committed.stat.version, committed.stat.size, committed.stat.mtime) == (1, 40, T0 + 1)
    assert committed.released_chunks == ()
    content = ns.lookup_chunks("/notes").unwrap()
    assert (content.version, content.size, content.chunks) == (1, 40, chunks)
    assert content.inode == ns.stat("/notes").unwrap().inode
    assert ns.inode_of_chunk(4) == content.inode
    assert ns.totals().bytes == 150 + 7 + 40

    replaced = ns.apply(commit("/notes", (chunk(6, 0, 3),), expected_version=1)).unwrap()
    assert replaced.stat.version == 2
    assert replaced.released_chunks == chunks
    assert (ns.inode_of_chunk(4), ns.inode_of_chunk(6)) == (None, content.inode)
    assert ns.totals().bytes == 150 + 7 + 3


def test_commit_content_can_keep_chunks_to_append(ns: Namespace) -> None:
    old = ns.lookup_chunks("/docs/readme").unwrap()
    appended = (*old.chunks, chunk(4, 150, 25))
    committed = ns.apply(commit("/docs/readme", appended, expected_version=old.version)).unwrap()
    assert committed.released_chunks == ()
    assert committed.stat.size == 175
    assert ns.lookup_chunks("/docs/readme").unwrap().chunks == appended
    dropped = ns.apply(commit("/docs/readme", appended[1:], 175)).unwrap()
    assert dropped.released_chunks == (old.chunks[0],)


def test_commit_content_with_an_expected_inode_detects_a_replaced_file(ns: Namespace) -> None:
    notes = ns.lookup_chunks("/notes").unwrap()
    # Another file with the same version is renamed over /notes: the version alone would match.
    ns.apply(create("/other")).unwrap()
    ns.apply(Rename(src="/other", dst="/notes")).unwrap()
    assert ns.lookup_chunks("/notes").unwrap().version == notes.version
    error = refuse(ns, commit("/notes", expected_version=notes.version, expected_inode=notes.inode))
    assert error.code == ErrorCode.ECONFLICT
    new_inode = ns.stat("/notes").unwrap().inode
    assert ns.apply(commit("/notes", expected_inode=new_inode)).ok


def test_a_chunk_belongs_to_one_file_until_released(ns: Namespace) -> None:
    leaf = ns.stat("/tree/a/b/leaf").unwrap().inode
    assert ns.inode_of_chunk(3) == leaf
    assert "belongs to inode" in refuse(ns, commit("/notes", (chunk(3, 0, 7),))).message
    released = ns.apply(commit("/tree/a/b/leaf", ())).unwrap().released_chunks
    assert [c.chunk_id for c in released] == [3]
    assert ns.inode_of_chunk(3) is None


# -------------------------------------------------------------- allocation


def test_allocated_ids_are_consecutive_and_never_reused() -> None:
    namespace = Namespace()
    assert namespace.apply(AllocateChunkIds(count=3)).unwrap().chunk_ids == (1, 2, 3)
    assert namespace.apply(AllocateChunkIds(count=1)).unwrap().chunk_ids == (4,)
    register = RegisterVolume(address="10.0.0.1:8080")
    volumes = [namespace.apply(register).unwrap().volume_id for _ in range(3)]
    assert volumes == [1, 2, 3]
    restored = Namespace.restore(namespace.snapshot())
    assert restored.apply(AllocateChunkIds(count=2)).unwrap().chunk_ids == (5, 6)
    assert restored.apply(RegisterVolume(address="10.0.0.1:8080")).unwrap().volume_id == 4
    assert restored.apply(mkdir("/d")).unwrap().inode == 2


# ----------------------------------------------------------------- queries


def test_list_is_sorted_by_name_with_attributes() -> None:
    namespace = Namespace()
    for name in ("zeta", "Alpha", "émile", "beta", "10"):
        namespace.apply(create(f"/{name}", mode=0o600)).unwrap()
    namespace.apply(mkdir("/dir")).unwrap()
    entries = namespace.list("/").unwrap()
    assert [entry.name for entry in entries] == ["10", "Alpha", "beta", "dir", "zeta", "émile"]
    assert [entry.stat.kind for entry in entries].count(Kind.DIRECTORY) == 1
    assert entries[0].stat == namespace.stat("/10").unwrap()


def test_queries_refuse_with_typed_errors(ns: Namespace) -> None:
    cases: list[tuple[Result[Any], ErrorCode]] = [
        (ns.list("/notes"), ErrorCode.ENOTDIR),
        (ns.list("/nope"), ErrorCode.ENOENT),
        (ns.lookup_chunks("/docs"), ErrorCode.EISDIR),
        (ns.lookup_chunks("/notes/x"), ErrorCode.ENOTDIR),
        (ns.stat("docs"), ErrorCode.EINVAL),
        (ns.stat("/" + "x" * 300), ErrorCode.ENAMETOOLONG),
    ]
    for result, code in cases:
        assert result.error is not None
        assert result.error.code == code


def test_totals_count_files_directories_and_bytes(ns: Namespace) -> None:
    assert ns.totals() == Totals(files=3, directories=6, bytes=157)


# ------------------------------------------------------------------- codec

EVERY_COMMAND: list[Command] = [
    mkdir("/a/b", parents=True, mode=0o700, owner="bob"),
    create("/a/f", exclusive=True, replication=3, mtime=-5),
    Delete(path="/a", recursive=True),
    Rename(src="/a", dst="/é"),
    SetAttr(path="/a", mode=0o600, owner="carol", mtime=T0),
    SetAttr(path="/a"),
    commit("/a/f", (chunk(1, 0, 64 << 20, (1, 2, 3)),), expected_version=4, expected_inode=9),
    AllocateChunkIds(count=7),
    RegisterVolume(address="10.0.0.1:8080"),
    RegisterVolume(address="[::1]:8080", volume_id=3),
    ReplaceChunkReplicas(chunk_id=4, expected=(1, 2), volume_ids=(2, 3)),
    CommitContent(
        path="/n", chunks=(), size=0, mtime=1, create=True, mode=0o600, owner="o", replication=3
    ),
]


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=lambda command: type(command).__name__)
def test_every_command_survives_encoding(command: Command) -> None:
    data = encode_command(command)
    decoded = decode_command(data)
    assert decoded == command
    assert type(decoded) is type(command)
    assert encode_command(decoded) == data


def test_decoding_refuses_what_is_not_a_command() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_command(b"\xc1")
    with pytest.raises(msgspec.ValidationError):
        decode_command(msgspec.msgpack.encode({"type": "format_disk"}))
    with pytest.raises(msgspec.ValidationError):  # a field from a newer master: stop, do not guess
        decode_command(msgspec.msgpack.encode({"type": "delete", "path": "/a", "trash": True}))
    with pytest.raises(msgspec.ValidationError):
        decode_command(msgspec.msgpack.encode({"type": "allocate_chunk_ids", "count": "3"}))


# --------------------------------------------------------------- snapshots


def test_equal_states_give_equal_snapshots_whatever_the_history() -> None:
    # Same inodes, same names, same counters; the directory dicts were filled in
    # different orders.
    first, second = Namespace(), Namespace()
    first.apply(create("/x")).unwrap()  # inode 2
    first.apply(create("/y")).unwrap()  # inode 3
    first.apply(Rename(src="/x", dst="/z")).unwrap()
    second.apply(create("/z")).unwrap()  # inode 2
    second.apply(create("/y")).unwrap()  # inode 3
    assert first.snapshot() == second.snapshot()


def test_restore_gives_back_the_same_namespace(ns: Namespace) -> None:
    data = ns.snapshot()
    restored = Namespace.restore(data)
    assert restored.snapshot() == data
    assert restored.totals() == ns.totals()
    for path in ("/", "/docs", "/docs/readme", "/empty", "/notes", "/tree/a/b", "/tree/a/b/leaf"):
        assert restored.stat(path) == ns.stat(path)
        assert restored.list(path) == ns.list(path)
        assert restored.lookup_chunks(path) == ns.lookup_chunks(path)
    for chunk_id in range(9):
        assert restored.inode_of_chunk(chunk_id) == ns.inode_of_chunk(chunk_id)
    # Both continue alike.
    for command in (create("/docs/more"), Delete(path="/tree", recursive=True)):
        assert restored.apply(command) == ns.apply(command)
    assert restored.snapshot() == ns.snapshot()


def _tampered(data: bytes, change: Any) -> bytes:
    image = msgspec.msgpack.decode(data)
    change(image)
    return msgspec.msgpack.encode(image)


# Image layout: [format, next_inode, next_chunk, next_volume, volumes, inode_ids, inodes];
# a directory is [0, mode, mtime, owner, children], a file [1, mode, ..., chunks].
TAMPERINGS = [
    pytest.param(lambda image: image.__setitem__(0, 99), "format 99", id="unknown-format"),
    pytest.param(lambda image: image[5].pop(), "number of inode ids", id="ids-and-inodes-differ"),
    pytest.param(lambda image: image[5].__setitem__(1, 1), "twice", id="duplicate-inode-id"),
    pytest.param(
        lambda image: image.__setitem__(1, 2), "next inode id", id="inode-id-not-allocated"
    ),
    pytest.param(
        lambda image: image[6][0][4].__setitem__("ghost", 77), "not a tree", id="missing-child"
    ),
    pytest.param(
        lambda image: image[6][0][4].__setitem__("again", image[6][0][4]["docs"]),
        "not a tree",
        id="two-parents",
    ),
    pytest.param(lambda image: image[6][0][4].pop("empty"), "outside the tree", id="orphan"),
    pytest.param(lambda image: image[6][0].__setitem__(0, 1), "snapshot", id="root-is-a-file"),
    pytest.param(
        lambda image: image.__setitem__(2, 3), "unallocated chunk", id="chunk-not-allocated"
    ),
    pytest.param(
        lambda image: (image.__setitem__(3, 2), image[4].pop()),
        "unknown volume",
        id="volume-not-allocated",
    ),
    pytest.param(lambda image: image[4].pop(), "volumes are not exactly", id="volume-missing"),
]


@pytest.mark.parametrize(("change", "complaint"), TAMPERINGS)
def test_restore_refuses_an_inconsistent_snapshot(
    ns: Namespace, change: Any, complaint: str
) -> None:
    with pytest.raises(SnapshotError, match=complaint):
        Namespace.restore(_tampered(ns.snapshot(), change))


def test_restore_refuses_a_chunk_in_two_files(ns: Namespace) -> None:
    def share_chunk(image: Any) -> None:
        files = [inode for inode in image[6] if inode[0] == 1]
        files[1][7] = files[0][7]  # two files, same chunk list

    with pytest.raises(SnapshotError, match="two files"):
        Namespace.restore(_tampered(ns.snapshot(), share_chunk))


def test_restore_refuses_bytes_that_are_not_a_snapshot() -> None:
    with pytest.raises(SnapshotError, match="not a namespace snapshot"):
        Namespace.restore(b"not msgpack at all \xc1")
    with pytest.raises(SnapshotError):
        Namespace.restore(encode_command(RegisterVolume(address="10.0.0.1:8080")))


# -------------------------------------------------------------- randomized

EVERY_VALID_PATH = [
    "/" + "/".join(parts) for depth in (1, 2, 3) for parts in itertools.product("aé", repeat=depth)
] + ["/"]
"""A small universe of paths, so that random commands often meet what earlier ones made."""
VALID_PATHS = st.sampled_from(EVERY_VALID_PATH)
ANY_PATHS = st.sampled_from([*EVERY_VALID_PATH, "", "a", "/a/", "/a//é", "/a/..", "/\0"])
MTIMES = st.integers(-3, 3)


@st.composite
def commit_commands(draw: st.DrawFn) -> CommitContent:
    """Mostly well-formed chunk lists, some not; chunk and volume ids that may or may
    not have been allocated (or may belong to another file) by then."""
    chunks, offset = [], draw(st.sampled_from([0, 0, 0, 2, -1]))
    for chunk_id in draw(st.lists(st.integers(0, 6), max_size=3)):
        size = draw(st.sampled_from([4, 1, 4, 0]))
        volume_ids = draw(st.sampled_from([(1, 2), (1,), (2, 1), (3,), (1, 1), ()]))
        checksum = draw(st.sampled_from([7, 7, 7, 2**32]))
        chunks.append(Chunk(chunk_id, offset, size, checksum, volume_ids))
        offset += size
    return CommitContent(
        path=draw(st.sampled_from(["/a/é", "/é/a"]) | ANY_PATHS),  # the seeded files, or any
        chunks=tuple(chunks),
        size=max(offset, 0) + draw(st.sampled_from([0, 0, 3, -1])),
        mtime=draw(MTIMES),
        expected_version=draw(st.none() | st.integers(0, 2)),
        expected_inode=draw(st.sampled_from([None, None, None, 1, 5, 6])),
    )


ANY_COMMANDS: st.SearchStrategy[Command] = st.one_of(
    st.builds(
        Mkdir,
        path=ANY_PATHS,
        parents=st.booleans(),
        mode=st.sampled_from([0o755, 0o700, 0o755, 0o10000]),
        mtime=MTIMES,
        owner=st.sampled_from(["alice", "bob", "alice", ""]),
    ),
    st.builds(
        Create,
        path=ANY_PATHS,
        exclusive=st.booleans(),
        mode=st.sampled_from([0o644, 0o600]),
        mtime=MTIMES,
        owner=st.sampled_from(["alice", "bob"]),
        replication=st.sampled_from([2, 1, 3, 0]),
    ),
    st.builds(Delete, path=ANY_PATHS, recursive=st.booleans()),
    st.builds(Rename, src=ANY_PATHS, dst=ANY_PATHS),
    st.builds(Rename, src=ANY_PATHS, dst=ANY_PATHS),
    st.builds(
        SetAttr,
        path=ANY_PATHS,
        mode=st.none() | st.sampled_from([0o600, -1]),
        owner=st.none() | st.just("carol"),
        mtime=st.none() | MTIMES,
    ),
    commit_commands(),
    commit_commands(),
    st.builds(AllocateChunkIds, count=st.integers(0, 3)),
    st.just(RegisterVolume(address="10.0.0.1:8080")),
)


def assert_same_answers(one: Namespace, other: Namespace) -> None:
    assert one.totals() == other.totals()
    for path in EVERY_VALID_PATH:
        assert one.stat(path) == other.stat(path)
        assert one.list(path) == other.list(path)
        assert one.lookup_chunks(path) == other.lookup_chunks(path)
    for chunk_id in range(12):
        assert one.inode_of_chunk(chunk_id) == other.inode_of_chunk(chunk_id)


SEED_COMMANDS: list[Command] = [
    RegisterVolume(address="10.0.0.1:8080"),
    RegisterVolume(address="10.0.0.1:8080"),
    AllocateChunkIds(count=3),
    mkdir("/a/a", parents=True),
    mkdir("/é"),
    create("/a/é"),
    create("/é/a"),
    commit("/é/a", (chunk(1, 0, 4),)),
]
"""Applied before the random commands, so that these often find something to act on."""


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ANY_COMMANDS, min_size=10, max_size=50))
def test_replicas_applying_the_same_commands_agree_byte_for_byte(commands: list[Command]) -> None:
    leader, follower = Namespace(), Namespace()
    for command in [*SEED_COMMANDS, *commands]:
        before = leader.snapshot()
        result = leader.apply(command)
        assert follower.apply(decode_command(encode_command(command))) == result
        if not result.ok:
            assert leader.snapshot() == before, f"refused {command} changed the namespace"
    data = leader.snapshot()
    assert follower.snapshot() == data
    restored = Namespace.restore(data)
    assert restored.snapshot() == data
    assert_same_answers(restored, leader)


@dataclass
class ModelFile:
    version: int = 0
    chunks: tuple[Chunk, ...] = ()


@dataclass
class Model:
    """The reference: a flat dict of paths, with string-prefix rules instead of a tree."""

    kinds: dict[str, Kind] = field(default_factory=lambda: {"/": Kind.DIRECTORY})
    files: dict[str, ModelFile] = field(default_factory=dict)

    @staticmethod
    def prefixes(path: str) -> list[str]:
        """The proper ancestors of ``path`` below the root, outermost first."""
        parts = path.split("/")[1:]
        return ["/" + "/".join(parts[:depth]) for depth in range(1, len(parts))]

    @staticmethod
    def inside(path: str, top: str) -> bool:
        return path == top or path.startswith(top + "/")

    def parent_error(self, path: str) -> ErrorCode | None:
        if path == "/":
            return None
        for prefix in self.prefixes(path):
            kind = self.kinds.get(prefix)
            if kind is None:
                return ErrorCode.ENOENT
            if kind is Kind.FILE:
                return ErrorCode.ENOTDIR
        return None

    def lookup_error(self, path: str) -> ErrorCode | None:
        return self.parent_error(path) or (None if path in self.kinds else ErrorCode.ENOENT)

    def children(self, directory: str) -> list[str]:
        prefix = "/" if directory == "/" else directory + "/"
        return sorted(
            path[len(prefix) :]
            for path in self.kinds
            if path != "/" and path.startswith(prefix) and "/" not in path[len(prefix) :]
        )

    def has_children(self, path: str) -> bool:
        return any(self.inside(other, path) and other != path for other in self.kinds)

    def remove(self, top: str) -> list[Chunk]:
        released: list[Chunk] = []
        for path in [path for path in self.kinds if self.inside(path, top)]:
            del self.kinds[path]
            if path in self.files:
                released.extend(self.files.pop(path).chunks)
        return sorted(released, key=lambda c: c.chunk_id)

    def mkdir(self, path: str, parents: bool) -> ErrorCode | None:
        chain = [*self.prefixes(path), path] if path != "/" else ["/"]
        for depth, prefix in enumerate(chain):
            kind = self.kinds.get(prefix)
            last = depth == len(chain) - 1
            if kind is None:
                if not last and not parents:
                    return ErrorCode.ENOENT
                for missing in chain[depth:]:
                    self.kinds[missing] = Kind.DIRECTORY
                return None
            if kind is Kind.FILE:
                return ErrorCode.EEXIST if last else ErrorCode.ENOTDIR
        return None if parents else ErrorCode.EEXIST

    def create(self, path: str, exclusive: bool) -> ErrorCode | None:
        if path == "/":
            return ErrorCode.EEXIST if exclusive else ErrorCode.EISDIR
        if error := self.parent_error(path):
            return error
        kind = self.kinds.get(path)
        if kind is not None:
            if exclusive:
                return ErrorCode.EEXIST
            return ErrorCode.EISDIR if kind is Kind.DIRECTORY else None
        self.kinds[path] = Kind.FILE
        self.files[path] = ModelFile()
        return None

    def delete(self, path: str, recursive: bool) -> ErrorCode | list[Chunk]:
        if path == "/":
            return ErrorCode.EINVAL
        if error := self.lookup_error(path):
            return error
        if self.has_children(path) and not recursive:
            return ErrorCode.ENOTEMPTY
        return self.remove(path)

    def rename(self, src: str, dst: str) -> ErrorCode | list[Chunk]:
        if src == "/":
            return ErrorCode.EINVAL
        if error := self.lookup_error(src):
            return error
        if src == dst:
            return []
        if dst == "/":
            return ErrorCode.EINVAL
        moving = self.kinds[src]
        if moving is Kind.DIRECTORY and self.inside(dst, src):
            return ErrorCode.EINVAL
        if error := self.parent_error(dst):
            return error
        replaced = self.kinds.get(dst)
        if replaced is Kind.DIRECTORY:
            if moving is Kind.FILE:
                return ErrorCode.EISDIR
            if self.has_children(dst):
                return ErrorCode.ENOTEMPTY
        elif replaced is Kind.FILE and moving is Kind.DIRECTORY:
            return ErrorCode.ENOTDIR
        released = self.remove(dst) if replaced is not None else []
        for path in [path for path in self.kinds if self.inside(path, src)]:
            moved = dst + path[len(src) :]
            self.kinds[moved] = self.kinds.pop(path)
            if path in self.files:
                self.files[moved] = self.files.pop(path)
        return released

    def commit(
        self, path: str, chunks: tuple[Chunk, ...], expected_version: int | None
    ) -> ErrorCode | list[Chunk]:
        if error := self.lookup_error(path):
            return error
        file = self.files.get(path)
        if file is None:
            return ErrorCode.EISDIR
        if expected_version is not None and expected_version != file.version:
            return ErrorCode.ECONFLICT
        kept = {c.chunk_id for c in chunks}
        released = sorted(
            (c for c in file.chunks if c.chunk_id not in kept), key=lambda c: c.chunk_id
        )
        self.files[path] = ModelFile(file.version + 1, chunks)
        return released


class NamespaceAgainstModel(RuleBasedStateMachine):
    """Random valid commands applied to a leader, to a follower (through the codec) and
    to the reference model; after each one: same outcome, same state, same snapshot,
    and a snapshot that restores to the same answers."""

    def __init__(self) -> None:
        super().__init__()
        self.leader = Namespace()
        self.follower = Namespace()
        self.model = Model()

    def run(self, command: Command) -> Result[Any]:
        before = self.leader.snapshot()
        result = self.leader.apply(command)
        assert self.follower.apply(decode_command(encode_command(command))) == result
        if result.error is not None:
            assert self.leader.snapshot() == before, f"refused {command} changed the namespace"
        return result

    def check(self, result: Result[Any], expected: ErrorCode | list[Chunk] | None) -> None:
        if isinstance(expected, ErrorCode):
            assert result.error is not None, f"expected {expected}, got {result.value}"
            assert result.error.code == expected
            return
        assert result.error is None, f"expected success, got {result.error}"
        if isinstance(expected, list):
            assert result.value is not None
            assert list(result.value.released_chunks) == expected

    @initialize()
    def add_volumes(self) -> None:
        for _ in range(2):
            self.run(RegisterVolume(address="10.0.0.1:8080")).unwrap()

    # Paths are drawn mostly from what exists (or could be made next), so that commands
    # succeed often enough to build deep trees; any valid path stays possible.

    def existing_or_any(self, data: st.DataObject, *, files_only: bool = False) -> str:
        existing = sorted(self.model.files if files_only else set(self.model.kinds) - {"/"})
        return data.draw(st.sampled_from(existing) | VALID_PATHS if existing else VALID_PATHS)

    def new_or_any(self, data: st.DataObject) -> str:
        """Usually a path in an existing directory, within the universe of VALID_PATHS."""
        candidates = sorted(
            {*EVERY_VALID_PATH}
            & {
                f"{directory.rstrip('/')}/{name}"
                for directory, kind in self.model.kinds.items()
                if kind is Kind.DIRECTORY
                for name in ("a", "é")
            }
        )
        return data.draw(st.sampled_from(candidates) | VALID_PATHS if candidates else VALID_PATHS)

    @rule(data=st.data(), parents=st.booleans())
    def mkdir(self, data: st.DataObject, parents: bool) -> None:
        path = self.new_or_any(data)
        self.check(self.run(mkdir(path, parents=parents)), self.model.mkdir(path, parents))

    @rule(data=st.data(), exclusive=st.booleans())
    def create(self, data: st.DataObject, exclusive: bool) -> None:
        path = self.new_or_any(data)
        self.check(self.run(create(path, exclusive=exclusive)), self.model.create(path, exclusive))

    @rule(data=st.data(), recursive=st.booleans())
    def delete(self, data: st.DataObject, recursive: bool) -> None:
        path = self.existing_or_any(data)
        command = Delete(path=path, recursive=recursive)
        self.check(self.run(command), self.model.delete(path, recursive))

    @rule(data=st.data())
    def rename(self, data: st.DataObject) -> None:
        src = self.existing_or_any(data)
        dst = data.draw(st.sampled_from(["existing", "new"]))
        dst = self.existing_or_any(data) if dst == "existing" else self.new_or_any(data)
        self.check(self.run(Rename(src=src, dst=dst)), self.model.rename(src, dst))

    @rule(data=st.data(), mode=st.sampled_from([0o600, 0o755]))
    def setattr(self, data: st.DataObject, mode: int) -> None:
        path = self.existing_or_any(data)
        result = self.run(SetAttr(path=path, mode=mode))
        self.check(result, self.model.lookup_error(path))
        if result.ok:
            assert self.leader.stat(path).unwrap().mode == mode

    @rule(
        data=st.data(),
        new_chunks=st.integers(0, 2),
        keep_old=st.booleans(),
        expectation=st.sampled_from(["current", "none", "stale"]),
    )
    def commit(
        self, data: st.DataObject, new_chunks: int, keep_old: bool, expectation: str
    ) -> None:
        path = self.existing_or_any(data, files_only=True)
        file = self.model.files.get(path, ModelFile())
        chunks = file.chunks if keep_old else ()
        if new_chunks:
            chunk_ids = self.run(AllocateChunkIds(count=new_chunks)).unwrap().chunk_ids
            end = chunks[-1].offset + chunks[-1].size if chunks else 0
            chunks += tuple(chunk(chunk_id, end + 4 * n, 4) for n, chunk_id in enumerate(chunk_ids))
        expected_version = {"none": None, "current": file.version, "stale": file.version + 1}
        command = commit(path, chunks, expected_version=expected_version[expectation])
        self.check(self.run(command), self.model.commit(path, chunks, command.expected_version))

    @invariant()
    def same_tree_as_the_model(self) -> None:
        for path in EVERY_VALID_PATH:
            kind = self.model.kinds.get(path)
            stat = self.leader.stat(path)
            assert (stat.value.kind if stat.value else None) == kind, path
            if kind is Kind.DIRECTORY:
                assert names(self.leader, path) == self.model.children(path), path
            if kind is Kind.FILE:
                content = self.leader.lookup_chunks(path).unwrap()
                assert (content.version, content.chunks) == (
                    self.model.files[path].version,
                    self.model.files[path].chunks,
                )
        totals = self.leader.totals()
        assert totals.files == len(self.model.files)
        assert totals.directories == len(self.model.kinds) - len(self.model.files)

    @invariant()
    def replicas_and_restored_snapshots_agree(self) -> None:
        data = self.leader.snapshot()
        assert self.follower.snapshot() == data
        restored = Namespace.restore(data)
        assert restored.snapshot() == data
        assert_same_answers(restored, self.leader)


TestNamespaceAgainstModel = NamespaceAgainstModel.TestCase
TestNamespaceAgainstModel.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ------------------------------------------------------------------ purity

STATE_MACHINE_MODULES = ["commands", "namespace", "paths", "results"]
ALLOWED_IMPORTS = {"__future__", "collections", "enum", "msgspec", "types", "typing"}


@pytest.mark.parametrize("module", STATE_MACHINE_MODULES)
def test_the_state_machine_imports_no_io_clock_randomness_or_raft(module: str) -> None:
    source = Path(quorumfs.master.__file__).with_name(f"{module}.py").read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            assert node.module in STATE_MACHINE_MODULES, f"{module} imports .{node.module}"
    assert imported <= ALLOWED_IMPORTS, f"{module} imports {imported - ALLOWED_IMPORTS}"


# ------------------------------------------- volumes, replicas, commit-and-create


def test_register_volume_assigns_ids_and_updates_addresses() -> None:
    namespace = Namespace()
    first = namespace.apply(RegisterVolume(address="10.0.0.1:8080")).unwrap()
    second = namespace.apply(RegisterVolume(address="10.0.0.2:8080")).unwrap()
    assert (first.volume_id, second.volume_id) == (1, 2)
    moved = namespace.apply(RegisterVolume(address="10.0.0.9:8081", volume_id=1)).unwrap()
    assert moved.volume_id == 1
    assert namespace.volumes() == {1: "10.0.0.9:8081", 2: "10.0.0.2:8080"}
    restored = Namespace.restore(namespace.snapshot())
    assert restored.volumes() == namespace.volumes()
    assert restored.apply(RegisterVolume(address="10.0.0.3:8080")).unwrap().volume_id == 3


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (RegisterVolume(address="10.0.0.1:8080", volume_id=7), ErrorCode.ENOENT),
        (RegisterVolume(address=""), ErrorCode.EINVAL),
        (RegisterVolume(address="a b:1"), ErrorCode.EINVAL),
        (RegisterVolume(address="x" * 301), ErrorCode.EINVAL),
    ],
)
def test_register_volume_refusals(ns: Namespace, command: RegisterVolume, code: ErrorCode) -> None:
    assert refuse(ns, command).code is code


def test_replace_chunk_replicas_is_a_compare_and_set(ns: Namespace) -> None:
    ns.apply(RegisterVolume(address="10.0.0.3:8080")).unwrap()
    replaced = ns.apply(ReplaceChunkReplicas(chunk_id=1, expected=(1, 2), volume_ids=(2, 3)))
    assert replaced.unwrap().chunk.volume_ids == (2, 3)
    assert replaced.unwrap().dropped == (1,)
    assert ns.lookup_chunks("/docs/readme").unwrap().chunks[0].volume_ids == (2, 3)
    assert ns.chunk(1) == (replaced.unwrap().chunk, 2)
    # The content version does not change: replicas are not content.
    assert ns.stat("/docs/readme").unwrap().version == 1
    stale = ReplaceChunkReplicas(chunk_id=1, expected=(1, 2), volume_ids=(1, 3))
    assert refuse(ns, stale).code is ErrorCode.ECONFLICT
    assert Namespace.restore(ns.snapshot()).chunk(1) == ns.chunk(1)


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (ReplaceChunkReplicas(chunk_id=4, expected=(1, 2), volume_ids=(1,)), ErrorCode.ENOENT),
        (ReplaceChunkReplicas(chunk_id=1, expected=(1, 2), volume_ids=()), ErrorCode.EINVAL),
        (ReplaceChunkReplicas(chunk_id=1, expected=(1, 2), volume_ids=(1, 1)), ErrorCode.EINVAL),
        (ReplaceChunkReplicas(chunk_id=1, expected=(1, 2), volume_ids=(1, 9)), ErrorCode.EINVAL),
    ],
)
def test_replace_chunk_replicas_refusals(
    ns: Namespace, command: ReplaceChunkReplicas, code: ErrorCode
) -> None:
    assert refuse(ns, command).code is code


def test_commit_with_create_makes_the_file_in_the_same_step(ns: Namespace) -> None:
    before = ns.totals()
    command = CommitContent(
        path="/docs/new",
        chunks=(chunk(4, 0, 10),),
        size=10,
        mtime=5,
        expected_version=0,
        create=True,
        mode=0o600,
        owner="alice",
        replication=3,
    )
    committed = ns.apply(command).unwrap()
    assert committed.stat.version == 1
    assert (committed.stat.mode, committed.stat.owner, committed.stat.replication) == (
        0o600,
        "alice",
        3,
    )
    assert ns.totals().files == before.files + 1
    assert ns.totals().bytes == before.bytes + 10
    assert ns.inode_of_chunk(4) == committed.stat.inode
    # On an existing file `create` changes nothing but the content.
    again = ns.apply(
        CommitContent(path="/docs/new", chunks=(), size=0, mtime=6, create=True, mode=0o644)
    ).unwrap()
    assert (again.stat.inode, again.stat.mode, again.stat.version) == (
        committed.stat.inode,
        0o600,
        2,
    )
    assert again.released_chunks == (chunk(4, 0, 10),)


@pytest.mark.parametrize(
    ("path", "extra", "code"),
    [
        ("/missing/new", {}, ErrorCode.ENOENT),
        ("/notes/new", {}, ErrorCode.ENOTDIR),
        ("/docs/new", {"expected_inode": 99}, ErrorCode.ECONFLICT),
        ("/docs/new", {"expected_version": 1}, ErrorCode.ECONFLICT),
        ("/docs/new", {"replication": 0}, ErrorCode.EINVAL),
        ("/docs/new", {"owner": ""}, ErrorCode.EINVAL),
        ("/", {}, ErrorCode.EISDIR),
        ("/docs", {}, ErrorCode.EISDIR),
    ],
)
def test_commit_with_create_refusals(
    ns: Namespace, path: str, extra: dict[str, Any], code: ErrorCode
) -> None:
    command = CommitContent(path=path, chunks=(), size=0, mtime=1, create=True, **extra)
    assert refuse(ns, command).code is code


def test_commit_with_create_refuses_another_files_chunk(ns: Namespace) -> None:
    command = CommitContent(
        path="/docs/new", chunks=(chunk(3, 0, 7),), size=7, mtime=1, create=True
    )
    assert refuse(ns, command).code is ErrorCode.ESTALE


def test_a_kept_chunk_keeps_its_current_replicas(ns: Namespace) -> None:
    """A writer's stale replica list for a chunk it keeps must not undo a repair."""
    ns.apply(RegisterVolume(address="10.0.0.3:8080")).unwrap()
    ns.apply(ReplaceChunkReplicas(chunk_id=1, expected=(1, 2), volume_ids=(2, 3))).unwrap()
    stale = ns.lookup_chunks("/docs/readme").unwrap().chunks
    as_read = (Chunk(1, 0, 100, stale[0].checksum, (1, 2)), stale[1])
    ns.apply(commit("/docs/readme", (*as_read, chunk(4, 150, 10)))).unwrap()
    assert ns.lookup_chunks("/docs/readme").unwrap().chunks[0].volume_ids == (2, 3)
    changed = Chunk(1, 0, 99, stale[0].checksum, (2, 3))
    assert refuse(ns, commit("/docs/readme", (changed,))).code is ErrorCode.EINVAL
