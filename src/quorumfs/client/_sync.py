"""``MasterClient``: the same client for synchronous code, a thin facade over the async one.

Owns only running ``AsyncMasterClient`` for callers without an event loop: every
method submits the coroutine of the same name to a private event loop that runs
in a background daemon thread, and waits for its result. The call path,
retries and errors are the async client's, unchanged.

Why a background loop rather than ``asyncio.run`` per call:

- the aiohttp session (its kept-alive connections) and what the client has
  learned (the leader, which masters failed recently) live across calls; with a
  fresh loop per call each call would reconnect and rediscover the leader;
- it works where a loop is already running in the caller's thread (Jupyter,
  an async framework calling sync library code), where ``asyncio.run`` refuses;
- several threads may share one ``MasterClient``: their calls run concurrently
  on the one loop.

The cost is one thread per client, stopped by ``close()`` (or the ``with``
block, or at garbage collection / interpreter exit through a finalizer).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from quorumfs.master.contract import ClusterStatus
from quorumfs.master.http_api import DeleteResponse, RenameResponse
from quorumfs.master.results import DirEntry, Stat, Totals
from quorumfs.wire import DEFAULT_CHUNK_SIZE

from ._async import AsyncMasterClient, MasterInfo, RetryPolicy
from ._files import Progress, Sink, Source, TransferPolicy
from ._sources import MasterSource

__all__ = ["MasterClient"]

P = ParamSpec("P")
T = TypeVar("T")

_SHUTDOWN_TIMEOUT = 5.0
"""Seconds to wait for the connections to close and the thread to end."""


class MasterClient:
    """The masters' namespace API for synchronous code; see ``AsyncMasterClient``.

    Thread-safe. Use ``with MasterClient(...) as client:`` or call ``close()``.
    """

    def __init__(
        self,
        masters: str | Sequence[str] | MasterSource,
        *,
        policy: RetryPolicy | None = None,
        transfer: TransferPolicy | None = None,
        nameserver: str | None = None,
    ) -> None:
        self._client = AsyncMasterClient(
            masters, policy=policy, transfer=transfer, nameserver=nameserver
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="quorumfs-client", daemon=True
        )
        self._thread.start()
        self._finalizer = weakref.finalize(self, _shut_down, self._client, self._loop, self._thread)

    @property
    def policy(self) -> RetryPolicy:
        return self._client.policy

    @property
    def leader(self) -> str | None:
        """The master this client believes leads (None until it has learned one)."""
        return self._client.leader

    def __repr__(self) -> str:
        return f"MasterClient({self._client!r})"

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> MasterClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the background thread. Idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def _run(
        self,
        method: Callable[P, Coroutine[Any, Any, T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``method(*args, **kwargs)`` on the client's loop; its result or its exception."""
        if self.closed:
            raise RuntimeError("this quorumfs client is closed")
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "MasterClient was called from its own event loop (a callback of the client "
                "itself?); use AsyncMasterClient in async code"
            )
        future = asyncio.run_coroutine_threadsafe(method(*args, **kwargs), self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt in the caller: do not leave it running
            raise

    # ---------------------------------------------------------------- reads

    def stat(self, path: str) -> Stat:
        """The attributes of ``path``."""
        return self._run(self._client.stat, path)

    def ls(self, path: str) -> list[DirEntry]:
        """The entries of the directory ``path``, sorted by name."""
        return self._run(self._client.ls, path)

    def totals(self) -> Totals:
        """Counts of files, directories and bytes in the whole namespace."""
        return self._run(self._client.totals)

    # --------------------------------------------------------------- writes

    def mkdir(
        self,
        path: str,
        *,
        parents: bool = False,
        mode: int | None = None,
        owner: str | None = None,
    ) -> Stat:
        """Create the directory ``path`` (``mkdir -p`` with ``parents``)."""
        return self._run(self._client.mkdir, path, parents=parents, mode=mode, owner=owner)

    def create(
        self,
        path: str,
        *,
        exclusive: bool = False,
        mode: int | None = None,
        owner: str | None = None,
        replication: int | None = None,
    ) -> Stat:
        """Create the empty file ``path`` (O_EXCL with ``exclusive``)."""
        return self._run(
            self._client.create,
            path,
            exclusive=exclusive,
            mode=mode,
            owner=owner,
            replication=replication,
        )

    def rm(self, path: str, *, recursive: bool = False) -> DeleteResponse | None:
        """Delete ``path``; None when a retry found it already gone (see the async client)."""
        return self._run(self._client.rm, path, recursive=recursive)

    def mv(self, src: str, dst: str) -> RenameResponse:
        """Rename ``src`` to ``dst`` atomically; never retried once sent."""
        return self._run(self._client.mv, src, dst)

    def setattr(
        self,
        path: str,
        *,
        mode: int | None = None,
        owner: str | None = None,
        mtime: int | None = None,
    ) -> Stat:
        """Change the given attributes of ``path``."""
        return self._run(self._client.setattr, path, mode=mode, owner=owner, mtime=mtime)

    # ----------------------------------------------- data path (volume servers)

    def put(
        self,
        path: str,
        source: Source,
        *,
        replication: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: Progress | None = None,
    ) -> Stat:
        """Make ``source`` the content of ``path``, created or replaced atomically.
        ``progress`` is called from the client's thread."""
        return self._run(
            self._client.put,
            path,
            source,
            replication=replication,
            chunk_size=chunk_size,
            progress=progress,
        )

    def get(
        self,
        path: str,
        sink: Sink,
        *,
        offset: int = 0,
        length: int | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Write the bytes of ``path`` to ``sink``; how many were written."""
        return self._run(
            self._client.get, path, sink, offset=offset, length=length, progress=progress
        )

    def read(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """The bytes of ``path`` from ``offset`` (``length`` of them, or to the end)."""
        return self._run(self._client.read, path, offset, length)

    def iter_read(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> Generator[bytes, None, None]:
        """The bytes of ``path`` in pieces (a chunk at most each), fetched as they are asked
        for; close the iterator (or finish it) to release what is fetched ahead."""
        pieces = self._client.iter_read(path, offset, length)
        try:
            while True:
                try:
                    yield self._run(_next_piece, pieces)
                except StopAsyncIteration:
                    return
        finally:
            if not self.closed:
                self._run(_close_pieces, pieces)

    def append(
        self,
        path: str,
        source: Source,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: Progress | None = None,
    ) -> Stat:
        """Add ``source`` at the end of ``path`` (created if missing)."""
        return self._run(
            self._client.append, path, source, chunk_size=chunk_size, progress=progress
        )

    def write_at(
        self,
        path: str,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Stat:
        """Overwrite bytes of ``path`` at ``offset`` (past the end extends it)."""
        return self._run(self._client.write_at, path, offset, data, chunk_size=chunk_size)

    def truncate(self, path: str, size: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Stat:
        """Cut ``path`` to ``size`` bytes, or extend it with zeros."""
        return self._run(self._client.truncate, path, size, chunk_size=chunk_size)

    # -------------------------------------------------------------- cluster

    def cluster_status(self) -> ClusterStatus:
        """The Raft group as one master sees it (the leader when known)."""
        return self._run(self._client.cluster_status)

    def master_info(self) -> MasterInfo:
        """The current leader and all masters."""
        return self._run(self._client.master_info)


async def _next_piece(pieces: AsyncGenerator[bytes, None]) -> bytes:
    return await anext(pieces)


async def _close_pieces(pieces: AsyncGenerator[bytes, None]) -> None:
    await pieces.aclose()


def _shut_down(
    client: AsyncMasterClient, loop: asyncio.AbstractEventLoop, thread: threading.Thread
) -> None:
    """Close the client on its loop, stop the loop and its thread. Runs once (finalizer)."""
    if threading.current_thread() is thread:  # collected on its own loop: cannot wait here
        loop.call_soon(loop.stop)
        return
    if thread.is_alive() and not loop.is_closed():
        closing = asyncio.run_coroutine_threadsafe(client.close(), loop)
        # Best effort: the thread is a daemon, and an unclosed session only warns.
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            closing.result(_SHUTDOWN_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_SHUTDOWN_TIMEOUT)
    if not thread.is_alive() and not loop.is_closed():
        loop.close()
