"""The masters' write-ahead log: durable Raft storage in a journal directory.

``DiskStorage`` implements the core's ``Storage`` read protocol and adds the
writes a driver needs (``save``, ``sync``, ``create_snapshot``, ``compact``,
``apply_snapshot``). disk_storage.py documents the directory layout and the
durability contract; segments.py documents the torn-tail rule. The code is
synchronous (os.write/os.fsync): the asyncio driver runs it inline or in a
worker thread.
"""

from .disk_storage import DEFAULT_SEGMENT_BYTES, DiskStorage
from .errors import CorruptLogError, JournalInUseError, WalError

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "CorruptLogError",
    "DiskStorage",
    "JournalInUseError",
    "WalError",
]
