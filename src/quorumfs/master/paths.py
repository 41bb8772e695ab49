"""Namespace paths: the one definition of a valid path, shared by the state machine and its callers.

Paths are validated, never repaired: ``/a//b`` or ``/a/./b`` is refused rather
than normalised, so that every accepted path has exactly one spelling and a
path string can serve as a key (in caches, in leases, in error messages) on
every master alike. The HTTP layer can call ``split_path`` to refuse a bad
path before proposing it to the log; the state machine checks again because
the log is the source of truth.

Rules, in the order they are checked:

1. UTF-8 encodable (a Python ``str`` with lone surrogates is not), at most
   ``MAX_PATH_BYTES`` bytes, else ENAMETOOLONG;
2. absolute: starts with ``/``; ``/`` alone is the root;
3. no trailing ``/``, no empty component (``//``), no ``.`` or ``..``, no NUL;
4. each component at most ``MAX_NAME_BYTES`` bytes of UTF-8, else ENAMETOOLONG.

Everything but the length rules is EINVAL.
"""

from __future__ import annotations

from typing import NoReturn

from .results import ErrorCode, NamespaceError, RefusedError

__all__ = ["MAX_NAME_BYTES", "MAX_PATH_BYTES", "ROOT_PATH", "join_path", "split_path"]

MAX_NAME_BYTES = 255
"""Longest component, in bytes of UTF-8 (as NAME_MAX on Linux)."""
MAX_PATH_BYTES = 4096
"""Longest whole path, in bytes of UTF-8 (as PATH_MAX on Linux)."""
ROOT_PATH = "/"


def split_path(path: str) -> tuple[str, ...]:
    """The components of a valid path (``()`` for the root), or ``RefusedError``."""
    try:
        path_bytes = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        _invalid(path, ErrorCode.EINVAL, "is not valid UTF-8 (it contains a lone surrogate)")
    if path_bytes > MAX_PATH_BYTES:
        _invalid(
            path, ErrorCode.ENAMETOOLONG, f"is {path_bytes} bytes long; at most {MAX_PATH_BYTES}"
        )
    if not path.startswith("/"):
        _invalid(path, ErrorCode.EINVAL, "is not absolute: it must start with '/'")
    if path == ROOT_PATH:
        return ()
    if path.endswith("/"):
        _invalid(path, ErrorCode.EINVAL, "ends with '/': remove the trailing slash")
    if "\0" in path:
        _invalid(path, ErrorCode.EINVAL, "contains a NUL character")
    components = tuple(path[1:].split("/"))
    for name in components:
        if not name:
            _invalid(path, ErrorCode.EINVAL, "has an empty component ('//')")
        if name in (".", ".."):
            _invalid(path, ErrorCode.EINVAL, f"has a {name!r} component: give the normalised path")
        name_bytes = len(name.encode("utf-8"))
        if name_bytes > MAX_NAME_BYTES:
            _invalid(
                path,
                ErrorCode.ENAMETOOLONG,
                f"has a component of {name_bytes} bytes; at most {MAX_NAME_BYTES}",
            )
    return components


def join_path(components: tuple[str, ...]) -> str:
    """The inverse of ``split_path``."""
    return "/" + "/".join(components)


def _invalid(path: str, code: ErrorCode, problem: str) -> NoReturn:
    # The error must itself be encodable (to msgpack, to JSON), so a path with
    # lone surrogates is reported with them escaped.
    printable = path.encode("utf-8", "backslashreplace").decode("utf-8")
    shown = printable if len(printable) <= 200 else printable[:200] + "..."
    raise RefusedError(NamespaceError(code, f"path {shown!r} {problem}", printable))
