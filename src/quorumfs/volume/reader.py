"""Reading one chunk: a verified byte range, streamed as pieces.

Owns the read side of the checksum rules; the store (``store.py``) finds the
record and pins its file (``volume_file.Handle``), and learns of damage
through the ``on_damage`` callback. Reads use pread only, so any number of
readers run beside the one appender.

- A chunk of up to ``SMALL_CHUNK`` (1 MiB) is read with one pread of its whole
  record (header, block table, data), and every block and the whole-data CRC
  are checked whatever range was asked for: small files cost one disk read.
- A larger chunk is read in 1 MiB pieces of whole 64 KiB blocks, each block
  checked against the table before any of its bytes is yielded; a range read
  reads only the blocks it touches, and a read of the whole chunk also checks
  the whole-data CRC at the end (after the last piece: by then every byte has
  passed its block's CRC, so nothing unverified has been handed out).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Final, Self

from crc32c import crc32c

from .needles import (
    BLOCK_SIZE,
    Damage,
    Kind,
    NeedleHeader,
    block_count,
    parse_needle_header,
    record_size,
)
from .volume_file import (
    DataDamageError,
    Handle,
    iter_verified,
    pread_exact,
    read_header_at,
)

__all__ = ["SMALL_CHUNK", "ChunkReader"]

SMALL_CHUNK: Final = 1 << 20
"""Chunks up to this size are read whole, in one pread, and verified whole on every read."""


class ChunkReader:
    """A verified range of one chunk, as an iterator of ``bytes`` pieces (up to 1 MiB each).

    Holds the volume file open until exhausted or closed (use ``with``). No
    piece is yielded before every block it comes from has passed its CRC.
    """

    def __init__(
        self,
        chunk_id: int,
        *,
        handle: Handle,
        salt: bytes,
        record_offset: int,
        chunk_size: int,
        crc: int,
        start: int,
        stop: int,
        on_damage: Callable[[DataDamageError], Exception],
    ) -> None:
        """Internal: use ``ChunkStore.open_chunk``. Takes over the reference to ``handle``.

        The record of the chunk is at ``record_offset`` of the file; it holds
        ``chunk_size`` bytes with CRC32C ``crc`` (from the store's index, and
        checked against the header again). ``on_damage`` turns damage into the
        exception to raise (the store records the chunk as corrupt).
        """
        self.chunk_id = chunk_id
        self.offset = start
        self.length = stop - start
        """Bytes this reader yields in all."""
        self.chunk_size = chunk_size
        self.crc = crc
        self._record_offset = record_offset
        self._on_damage = on_damage
        self._handle: Handle | None = handle
        """Invariant: None once nothing more will be read from the file (then released)."""
        self._pieces: Iterator[bytes] = iter(())
        try:
            if chunk_size <= SMALL_CHUNK:
                self._pieces = iter(self._read_small(handle.fd, salt, start, stop))
                self._release()
            else:
                header = read_header_at(handle.fd, record_offset, salt, chunk_size)
                self._check(header)
                self._pieces = self._stream(handle.fd, header, start, stop)
        except DataDamageError as exc:
            self._release()
            raise on_damage(exc) from exc
        except BaseException:
            self._release()
            raise

    def _check(self, header: NeedleHeader) -> None:
        if header.kind != Kind.NEEDLE or header.chunk_id != self.chunk_id or header.crc != self.crc:
            raise DataDamageError(self._record_offset, "record header changed on disk")

    def _read_small(self, fd: int, salt: bytes, start: int, stop: int) -> list[bytes]:
        """The whole record in one pread, every block verified: the range, as one piece."""
        at = self._record_offset
        buf = pread_exact(fd, record_size(self.chunk_size), at)
        header = parse_needle_header(buf, 0, salt=salt, offset=at)
        if not isinstance(header, NeedleHeader):
            reason = header.reason if isinstance(header, Damage) else "record header changed"
            raise DataDamageError(at, reason)
        self._check(header)
        view = memoryview(buf)[header.data_offset - at :][: self.chunk_size]
        for b, expected in enumerate(header.block_crcs):
            if crc32c(view[b * BLOCK_SIZE : (b + 1) * BLOCK_SIZE]) != expected:
                raise DataDamageError(
                    header.data_offset + b * BLOCK_SIZE, f"data block {b} fails its CRC32C"
                )
        if crc32c(view) != header.crc:
            raise DataDamageError(header.data_offset, "whole-data CRC32C mismatch")
        return [bytes(view[start:stop])] if stop > start else []

    def _stream(self, fd: int, header: NeedleHeader, start: int, stop: int) -> Iterator[bytes]:
        if stop <= start:
            return
        first, end = start // BLOCK_SIZE, block_count(stop)
        whole = start == 0 and stop == header.length
        pos = first * BLOCK_SIZE
        for piece in iter_verified(fd, header, first, end, check_whole=whole):
            lo, hi = max(start - pos, 0), min(stop - pos, len(piece))
            yield piece if (lo, hi) == (0, len(piece)) else piece[lo:hi]
            pos += len(piece)

    def _release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.release()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._pieces)
        except StopIteration:
            self.close()
            raise
        except DataDamageError as exc:
            self.close()
            raise self._on_damage(exc) from exc
        except BaseException:
            self.close()
            raise

    def read_all(self) -> bytes:
        with self:
            return b"".join(self)

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A reader dropped without close() must not pin a replaced volume file forever.
        with contextlib.suppress(Exception):
            self._release()
