"""The errors the chunk store raises.

Two families, as h11 splits them: the caller's mistakes (``ValueError``
subclasses: a bad range, a source that is shorter or longer than announced, a
checksum that does not match what the client declared) and the disk's
(``ChunkCorruptError``, ``StoreFailedError``). A volume server maps the first
family to a 4xx and changes nothing; ``ChunkCorruptError`` is reported to the
master and the read is served from another replica.
"""

from __future__ import annotations

__all__ = [
    "ChecksumMismatchError",
    "ChunkCorruptError",
    "ChunkNotFoundError",
    "ChunkRangeError",
    "SourceSizeError",
    "StoreClosedError",
    "StoreError",
    "StoreFailedError",
    "StoreFullError",
    "StoreInUseError",
]


class StoreError(Exception):
    """Base class of every error the chunk store raises on purpose."""


class ChunkNotFoundError(StoreError, LookupError):
    """No live chunk has this id (never written, deleted, or lost with a torn tail)."""

    def __init__(self, chunk_id: int) -> None:
        super().__init__(f"chunk {chunk_id} is not stored here")
        self.chunk_id = chunk_id


class ChunkCorruptError(StoreError):
    """The chunk's bytes on disk fail their checksum (or cannot be read at all).

    No byte of a damaged block is ever returned. ``volume_id`` and ``offset``
    locate the damage (``None`` when unknown, e.g. a header too damaged to be
    attributed to a place the store still knows).
    """

    def __init__(
        self, chunk_id: int, reason: str, volume_id: int | None = None, offset: int | None = None
    ) -> None:
        where = "" if volume_id is None else f" (volume {volume_id}, byte offset {offset})"
        super().__init__(
            f"chunk {chunk_id} is corrupt on this volume server{where}: {reason}; "
            "read it from another replica and re-replicate it"
        )
        self.chunk_id = chunk_id
        self.reason = reason
        self.volume_id = volume_id
        self.offset = offset


class ChunkRangeError(StoreError, ValueError):
    """A read asked for bytes outside the chunk (or a negative offset or length)."""


class SourceSizeError(StoreError, ValueError):
    """The data source gave fewer or more bytes than the announced size: nothing was stored."""


class ChecksumMismatchError(StoreError, ValueError):
    """The data's CRC32C differs from the one the writer declared: nothing was stored."""

    def __init__(self, chunk_id: int, expected: int, actual: int) -> None:
        super().__init__(
            f"chunk {chunk_id}: the data's CRC32C is {actual:#010x}, not the declared "
            f"{expected:#010x}; the chunk was not stored (the data was damaged in transit, "
            "or the checksum is wrong): send it again"
        )
        self.chunk_id = chunk_id
        self.expected = expected
        self.actual = actual


class StoreFullError(StoreError):
    """Storing the chunk would take the store past its capacity limit: nothing was stored."""

    def __init__(self, needed: int, used: int, max_bytes: int) -> None:
        super().__init__(
            f"the chunk store is full: {needed} more bytes needed, {used} of {max_bytes} bytes "
            "used; compact volumes with garbage, delete chunks, or raise the capacity limit"
        )
        self.needed = needed
        self.used = used
        self.max_bytes = max_bytes


class StoreInUseError(StoreError):
    """Another process (or another ``ChunkStore`` in this one) has the directory open."""


class StoreFailedError(StoreError):
    """An earlier write or fsync failed, so what is durable is unknown: writes are refused.

    Reads keep working. Restarting the volume server rescans the volume files
    and recovers exactly what reached the disk.
    """


class StoreClosedError(StoreError):
    """The store was closed."""
