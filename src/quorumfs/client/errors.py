"""The client's exceptions: one class per outcome a caller may want to handle.

Every error a client call raises is a ``QuorumfsError`` with ``.code`` (the
master's code, e.g. ``ENOENT``, or the client's own: ``ETIMEDOUT`` for
``Unavailable``, ``EIO`` for ``OutcomeUnknown``, ``EPROTO`` for
``ProtocolError``), ``.message`` (a sentence saying what is wrong and what to
do) and ``.path`` (the namespace path it is about, or ``""``).

``QuorumfsError`` is an ``OSError`` whose ``errno`` matches the code, and the
namespace errors also derive from the builtin ``OSError`` subclass that Python
raises for the same situation (``NotFound`` is a ``FileNotFoundError``, and so
on). fsspec's contract is exactly that (a file system raises builtin
``OSError`` subclasses, ``OSError(errno.EINVAL, ...)`` for bad input), so the
fsspec and FUSE layers can pass these on unchanged, and a user can write
``except FileNotFoundError`` without importing quorumfs.

This module owns the vocabulary and the one table from code to class
(``error_for_code``); deciding *when* to raise which is the call path's job
(``_async``).
"""

# The class names are the client's public vocabulary (NotFound, AlreadyExists, ...), chosen
# to read well in `except` clauses beside the builtin *Error classes they extend.
# ruff: noqa: N818

from __future__ import annotations

import errno
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Final

__all__ = [
    "AlreadyExists",
    "Conflict",
    "DataUnavailable",
    "DirectoryNotEmpty",
    "FileChanged",
    "InvalidArgument",
    "IsADirectory",
    "NameTooLong",
    "NotADirectory",
    "NotFound",
    "OutcomeUnknown",
    "PermissionDenied",
    "ProtocolError",
    "QuorumfsError",
    "Unavailable",
    "WriteFailed",
    "error_for_code",
]


class QuorumfsError(OSError):
    """Base of every error the client raises; an ``OSError`` with a matching ``errno``.

    ``str(error)`` is ``"CODE: message"``; ``error.filename`` is the path (or None).
    """

    default_code: ClassVar[str] = "EIO"
    """The code of errors of this class when none is given (subclasses fix their own)."""

    code: str
    message: str
    path: str
    retried_after_unknown: bool
    """True when an earlier attempt of the same call was sent and its answer lost
    (so it may have been applied), and this error is the answer to a retry. For
    example a retried delete that finds nothing: the first attempt may have
    deleted it."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        path: str = "",
        retried_after_unknown: bool = False,
    ) -> None:
        code = code or self.default_code
        super().__init__(_errno_for(code), message, path or None)
        self.code = code
        self.message = message
        self.path = path
        self.retried_after_unknown = retried_after_unknown

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError pickles its (errno, strerror, filename) args; rebuild ours instead.
        return (
            _rebuild,
            (type(self), self.message, self.code, self.path, self.retried_after_unknown),
        )


def _rebuild(
    cls: type[QuorumfsError], message: str, code: str, path: str, retried: bool
) -> QuorumfsError:
    return cls(message, code=code, path=path, retried_after_unknown=retried)


def _errno_for(code: str) -> int:
    """The errno named ``code`` (``ENOENT`` -> 2); EIO for a code that is not a POSIX name."""
    value = _ERRNO_BY_CODE.get(code)
    if value is not None:
        return value
    found = getattr(errno, code, None) if code.startswith("E") else None
    return found if isinstance(found, int) else errno.EIO


# ------------------------------------------------------------- namespace errors


class NotFound(QuorumfsError, FileNotFoundError):
    """The path, or one of its parents, does not exist (``ENOENT``)."""

    default_code = "ENOENT"


class AlreadyExists(QuorumfsError, FileExistsError):
    """The path exists already (``EEXIST``): e.g. ``mkdir`` without ``parents``, an
    exclusive ``create``."""

    default_code = "EEXIST"


class NotADirectory(QuorumfsError, NotADirectoryError):
    """A path component, or the target of a directory operation, is a file (``ENOTDIR``)."""

    default_code = "ENOTDIR"


class IsADirectory(QuorumfsError, IsADirectoryError):
    """A file operation names a directory (``EISDIR``)."""

    default_code = "EISDIR"


class DirectoryNotEmpty(QuorumfsError):
    """The directory still has entries (``ENOTEMPTY``; ``errno.ENOTEMPTY``, as ``os.rmdir``
    raises it: Python has no dedicated subclass)."""

    default_code = "ENOTEMPTY"


class InvalidArgument(QuorumfsError):
    """The request itself is malformed (``EINVAL``): a relative path, ``..``, a bad mode.
    Retrying it cannot help; the message names the field at fault."""

    default_code = "EINVAL"


class NameTooLong(InvalidArgument):
    """A path component or the whole path is too long (``ENAMETOOLONG``)."""

    default_code = "ENAMETOOLONG"


class Conflict(QuorumfsError):
    """A compare-and-set lost: the file changed since the version the caller read
    (``ECONFLICT``; ``errno.ESTALE``, the nearest POSIX meaning: what you hold is stale)."""

    default_code = "ECONFLICT"


class PermissionDenied(QuorumfsError, PermissionError):
    """An admin operation without a valid admin token (``EACCES``)."""

    default_code = "EACCES"


# ---------------------------------------------------------------- call outcomes


class Unavailable(QuorumfsError):
    """No master served the call before the deadline: nothing answered, or there was no
    leader (an election that did not end, no quorum). ``reason`` is the last failure.

    For a write this is raised only when the client knows nothing was applied (every
    attempt was refused before it reached a leader); otherwise it is ``OutcomeUnknown``.
    """

    default_code = "ETIMEDOUT"

    def __init__(
        self, message: str, *, reason: str = "", path: str = "", attempts: int = 0
    ) -> None:
        super().__init__(message, path=path)
        self.reason = reason
        self.attempts = attempts

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_unavailable, (self.message, self.reason, self.path, self.attempts))


def _rebuild_unavailable(message: str, reason: str, path: str, attempts: int) -> Unavailable:
    return Unavailable(message, reason=reason, path=path, attempts=attempts)


class OutcomeUnknown(QuorumfsError):
    """A write that is not safe to repeat was sent, but whether it was applied cannot be
    known: the connection dropped after sending, no answer came in time, or the leader
    answered 503 (it may have lost its quorum mid-commit). The client did not retry it.
    Look (``stat``, ``ls``) before trying again. ``reason`` says what happened."""

    default_code = "EIO"

    def __init__(self, message: str, *, reason: str = "", path: str = "") -> None:
        super().__init__(message, path=path)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_outcome_unknown, (self.message, self.reason, self.path))


def _rebuild_outcome_unknown(message: str, reason: str, path: str) -> OutcomeUnknown:
    return OutcomeUnknown(message, reason=reason, path=path)


class ProtocolError(QuorumfsError):
    """A master answered something that is not this API (``EPROTO``): the address is not a
    quorumfs master's HTTP port, or the master speaks another version."""

    default_code = "EPROTO"


# ------------------------------------------------------------------ data path


class DataUnavailable(QuorumfsError):
    """A chunk of a file could not be read from any of its replicas (``EIO``): each volume
    server holding it was unreachable, answered an error, or served bytes that failed the
    checksum. ``chunk_id`` names the chunk, ``failures`` says what each replica did."""

    default_code = "EIO"

    def __init__(
        self, message: str, *, path: str = "", chunk_id: int = 0, failures: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, path=path)
        self.chunk_id = chunk_id
        self.failures = failures

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_data_unavailable, (self.message, self.path, self.chunk_id, self.failures))


class WriteFailed(QuorumfsError):
    """File bytes could not be stored on the volume servers (``code``: ``EIO``, or the volume
    server's code when it refused the write, e.g. ``E2BIG``). Nothing was committed: the file
    is as it was. ``failures`` says what each attempt met."""

    default_code = "EIO"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        path: str = "",
        failures: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, code=code, path=path)
        self.failures = failures

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_write_failed, (self.message, self.code, self.path, self.failures))


class FileChanged(QuorumfsError):
    """The file was replaced while it was being read (``ESTALE``): the chunks of the version
    being read are gone. Nothing of the newer version was mixed in; read it again.

    Also a master's answer to a commit naming chunks released since they were committed,
    or held by another file (a put's repeated commit whose first attempt was applied,
    then replaced or renamed). A put settles that as done; it raises ``FileChanged``
    only when no file is left at its path to describe (applied, then renamed or
    removed)."""

    default_code = "ESTALE"


def _rebuild_data_unavailable(
    message: str, path: str, chunk_id: int, failures: tuple[str, ...]
) -> DataUnavailable:
    return DataUnavailable(message, path=path, chunk_id=chunk_id, failures=failures)


def _rebuild_write_failed(
    message: str, code: str, path: str, failures: tuple[str, ...]
) -> WriteFailed:
    return WriteFailed(message, code=code, path=path, failures=failures)


# ----------------------------------------------------------------------- table

_ERRNO_BY_CODE: Final[Mapping[str, int]] = MappingProxyType(
    {"ECONFLICT": errno.ESTALE, "EPROTO": errno.EPROTO}
)
"""Codes that are not POSIX errno names, or whose errno is chosen here."""

_CLASS_BY_CODE: Final[Mapping[str, type[QuorumfsError]]] = MappingProxyType(
    {
        cls.default_code: cls
        for cls in (
            NotFound,
            AlreadyExists,
            NotADirectory,
            IsADirectory,
            DirectoryNotEmpty,
            InvalidArgument,
            NameTooLong,
            Conflict,
            FileChanged,
            PermissionDenied,
        )
    }
)


def error_for_code(
    code: str, message: str, *, path: str = "", retried_after_unknown: bool = False
) -> QuorumfsError:
    """The exception for an error answer with this ``code``; an unknown code (``ENOSYS``,
    ``E2BIG``, ``EIO``, a code from a newer master) gives a plain ``QuorumfsError``."""
    cls = _CLASS_BY_CODE.get(code, QuorumfsError)
    return cls(message, code=code, path=path, retried_after_unknown=retried_after_unknown)
