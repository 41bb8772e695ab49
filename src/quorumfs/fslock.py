"""One process per data directory: an exclusive, non-blocking ``flock`` on a lock file.

Shared by the master's journal (``runtime.wal``) and the volume servers' chunk
store (``volume``), which each say in their own words who holds the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

__all__ = ["try_lock"]


def try_lock(lock_path: Path) -> int | None:
    """Open ``lock_path`` and lock it; the fd to keep open, or None if another process holds it.

    The lock lasts until the fd is closed (or the process dies, whatever the way).
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd
