"""What the namespace answers: a value, or a typed error that is itself a replicated outcome.

A command that fails is still a committed log entry: every master applies it,
reaches the same ``NamespaceError`` and changes nothing. So errors are values
(``Result.error``) rather than exceptions the apply loop would have to catch
and ship around; ``Result.unwrap`` turns one into a ``RefusedError`` for
callers that prefer exceptions.

The error codes borrow POSIX names so that the FUSE layer can hand them on as
errno values. ``HTTP_STATUS_BY_CODE`` is the one place where they become HTTP
statuses:

========================  ======  ==================================================
code                      status  why
========================  ======  ==================================================
``ENOENT``                404     the path (or one of its parents) does not exist
``EEXIST``                409     the request is valid but conflicts with what exists
``ENOTDIR``               409     a path component (or the target) is a file
``EISDIR``                409     a file operation names a directory
``ENOTEMPTY``             409     the directory still has entries
``ECONFLICT``             409     the file changed since the version the caller read;
                                  the expected version travels in the request body,
                                  not in an ``If-Match`` header, hence not 412
``ESTALE``                409     a commit names a chunk released since it was committed:
                                  a repeated commit whose first attempt was applied and
                                  replaced (the client's retry), or deleted content
``EINVAL``                400     the request itself is malformed
``ENAMETOOLONG``          400     not 414: the path may travel in a JSON body, and the
                                  body's ``code`` already tells the two 400s apart
========================  ======  ==================================================

This module owns the vocabulary only; the rules that produce each error live
in ``namespace``, and the path rules in ``paths``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Generic, TypeVar

import msgspec

from .commands import Chunk

__all__ = [
    "HTTP_STATUS_BY_CODE",
    "AllocatedChunkIds",
    "ContentCommitted",
    "Deleted",
    "DirEntry",
    "ErrorCode",
    "FileChunks",
    "Kind",
    "NamespaceError",
    "RefusedError",
    "RegisteredVolume",
    "Renamed",
    "ReplicasReplaced",
    "Result",
    "Stat",
    "Totals",
]


class ErrorCode(enum.StrEnum):
    ENOENT = "ENOENT"
    EEXIST = "EEXIST"
    ENOTDIR = "ENOTDIR"
    EISDIR = "EISDIR"
    ENOTEMPTY = "ENOTEMPTY"
    EINVAL = "EINVAL"
    ENAMETOOLONG = "ENAMETOOLONG"
    ECONFLICT = "ECONFLICT"
    """A compare-and-set lost: the file's version (or inode) is not the expected one."""
    ESTALE = "ESTALE"
    """A commit names a chunk that was committed before and released since: the commit
    was applied once already (its answer lost) and replaced, or names deleted content."""


HTTP_STATUS_BY_CODE: Mapping[ErrorCode, int] = MappingProxyType(
    {
        ErrorCode.ENOENT: 404,
        ErrorCode.EEXIST: 409,
        ErrorCode.ENOTDIR: 409,
        ErrorCode.EISDIR: 409,
        ErrorCode.ENOTEMPTY: 409,
        ErrorCode.ECONFLICT: 409,
        ErrorCode.ESTALE: 409,
        ErrorCode.EINVAL: 400,
        ErrorCode.ENAMETOOLONG: 400,
    }
)
"""The HTTP status for each error code; the reasons are in the module docstring."""


class NamespaceError(msgspec.Struct, frozen=True):
    """Why a command or query was refused. Deterministic: every master builds the same one."""

    code: ErrorCode
    message: str
    """A sentence naming what is wrong and, where there is one, what to do instead."""
    path: str
    """The path of the request the error is about (for a rename: the source or the
    destination; empty for a command without a path). When a parent is at fault,
    the message names it."""

    @property
    def http_status(self) -> int:
        return HTTP_STATUS_BY_CODE[self.code]


class RefusedError(Exception):
    """A ``NamespaceError`` raised as an exception (see ``Result.unwrap``)."""

    def __init__(self, error: NamespaceError) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


T = TypeVar("T")


class Result(msgspec.Struct, Generic[T], frozen=True):
    """Either ``value`` or ``error``.

    Invariant: exactly one of the two is set.
    """

    value: T | None = None
    error: NamespaceError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> T:
        """The value, or ``RefusedError`` carrying the error."""
        if self.error is not None:
            raise RefusedError(self.error)
        assert self.value is not None, "a Result holds a value or an error"
        return self.value


class Kind(enum.StrEnum):
    FILE = "file"
    DIRECTORY = "directory"


class Stat(msgspec.Struct, frozen=True, kw_only=True):
    """The attributes of one inode, as ``stat`` and ``list`` report them."""

    inode: int
    kind: Kind
    mode: int
    """Permission bits only (0 to 0o7777); the file type is ``kind``."""
    mtime: int
    """Nanoseconds since the Unix epoch, as given by the last command that set it."""
    owner: str
    size: int
    """Bytes of content for a file; 0 for a directory."""
    version: int
    """A file's content version (0 when created, +1 per commit); 0 for a directory."""
    replication: int
    """A file's target number of copies of each chunk; 0 for a directory."""


class DirEntry(msgspec.Struct, frozen=True):
    name: str
    stat: Stat


class FileChunks(msgspec.Struct, frozen=True, kw_only=True):
    """A file's committed content: what a reader needs to fetch it from volume servers."""

    inode: int
    version: int
    """Pass as ``expected_version`` to make the next commit a compare-and-set."""
    size: int
    chunks: tuple[Chunk, ...]
    """Ordered by offset; gaps between chunks (and after the last one) read as zeros."""


class Totals(msgspec.Struct, frozen=True):
    files: int
    directories: int
    """Includes the root directory."""
    bytes: int
    """Sum of file sizes (logical bytes, before replication)."""


class Deleted(msgspec.Struct, frozen=True, kw_only=True):
    files: int
    directories: int
    released_chunks: tuple[Chunk, ...]
    """Chunks no file references any more, ordered by chunk id: garbage for the
    volume servers. Their ids must never be committed again."""


class Renamed(msgspec.Struct, frozen=True, kw_only=True):
    replaced: bool
    """True when the destination existed (an empty directory or a file) and is gone."""
    released_chunks: tuple[Chunk, ...]
    """The replaced file's chunks, ordered by chunk id."""


class ContentCommitted(msgspec.Struct, frozen=True, kw_only=True):
    stat: Stat
    """The file after the commit (its new ``version`` included)."""
    released_chunks: tuple[Chunk, ...]
    """Chunks of the previous content that the new content does not keep, by chunk id."""


class AllocatedChunkIds(msgspec.Struct, frozen=True):
    chunk_ids: tuple[int, ...]
    """Consecutive, never handed out before, on every master alike."""


class RegisteredVolume(msgspec.Struct, frozen=True):
    volume_id: int
    address: str


class ReplicasReplaced(msgspec.Struct, frozen=True):
    chunk: Chunk
    """The chunk with its new ``volume_ids``."""
    dropped: tuple[int, ...]
    """Volumes that held it before and no longer do (their copy is now surplus), ascending."""
