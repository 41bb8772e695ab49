"""The few file-system operations the journal needs, and the one place fsync happens.

Every fsync of the journal goes through ``Durability``: one switch turns real
flushes off (tests, benchmarks), one hook runs before each of them, and an
injected delay (``DiskStorage.sync_delay``, set at run time by fault tests)
makes each of them slow. ``atomic_write`` is the temp-file, fsync, rename, fsync-dir
recipe used for the hard state and snapshots: after a crash the file holds
either the old or the new content, never a mix.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["TMP_SUFFIX", "Durability", "atomic_write", "write_all"]

TMP_SUFFIX: Final = ".tmp"
"""Files being written by ``atomic_write``; leftovers from a crash are deleted on open."""


class Durability:
    """Performs (or skips) every fsync, calling ``hook`` first.

    The hook and the delay apply even when ``enabled`` is false, so a test can
    inject fsync latency without paying for real flushes.
    """

    def __init__(self, enabled: bool = True, hook: Callable[[], None] | None = None) -> None:
        self.enabled = enabled
        self.hook = hook
        self.delay = 0.0
        """Seconds slept just before each fsync (after the hook): a slow disk, injected
        (``DiskStorage.sync_delay`` sets it and keeps it finite and >= 0). Read once per
        fsync, so it may be changed from another thread at any time: the change applies
        from the next fsync (one already sleeping sleeps its old delay out)."""

    def fsync(self, fd: int) -> None:
        if self.hook is not None:
            self.hook()
        delay = self.delay
        if delay > 0:
            time.sleep(delay)  # synchronous on purpose: the journal runs in a worker thread
        if self.enabled:
            os.fsync(fd)

    def fsync_dir(self, path: Path) -> None:
        """Make creations, renames and deletions of entries in ``path`` durable."""
        if not self.enabled:
            self.fsync(-1)  # only runs the hook
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.fsync(fd)
        finally:
            os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (short writes are legal, if rare)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: Path, data: bytes, durability: Durability, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` durably: readers after a crash see old or new."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # a temp file left by a crash keeps its old mode otherwise
        write_all(fd, data)
        durability.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    durability.fsync_dir(path.parent)
