"""``AsyncMasterClient``: the masters' namespace API as coroutines, through one call path.

Owns talking to a group of masters as if it were one server: finding the leader,
following its redirects, riding through a failover, bounding every wait, and
turning every answer into a value or a typed exception (``errors``). Every
master call goes through ``_request``; nothing else sends a request to a master
except the leader probe it uses (``_discover``). The data path's methods
(``put``, ``get``, ``read``, ``iter_read``, ``append``, ``write_at``,
``truncate``) delegate to ``_files``, which talks to the volume servers itself
and to the masters only through this client's master calls. Where the masters
are comes from a ``MasterSource`` (``_sources``); the wire shapes are the
master's own (``quorumfs.master.results``, ``quorumfs.master.http_api``,
``quorumfs.wire``), decoded with msgspec.

Theory of operation (``_request``):

1. Choose a master: the leader when one is known (learned from a 307's
   ``Location``, from ``X-Quorumfs-Served-By``, from a write that succeeded, or
   from ``/cluster/status``), else the source's masters in turn. A master that
   failed is not asked again before its penalty ends: its ``Retry-After`` after
   a 503, else an exponential backoff with jitter that grows with its
   consecutive failures. When every master is penalized, the call sleeps until
   the first penalty ends.
2. Send with ``X-Quorumfs-Redirect: 1``: a follower then answers 307 naming
   the leader instead of forwarding, so the client talks to the leader directly
   afterwards, and a 307 proves that nothing was done. At most
   ``max_redirects`` are followed.
3. Classify what came back:

   - an answer other than 503: return it, or raise its typed error;
   - *nothing was done*: no connection (refused, or not made within
     ``connect_timeout``), a redirect loop, a 503 ``ELOOP`` or ``EAGAIN`` (the
     write was never proposed), or any failure of a read. Penalize the master
     and try another;
   - *maybe done*: a write was sent and no answer came (the connection dropped,
     ``request_timeout`` passed), or a write was answered 503 ``ETIMEDOUT`` (it
     was proposed and the leader lost its quorum or leadership before the
     commit was known). A write that is not safe to repeat raises
     ``OutcomeUnknown`` at once; a call that is safe to repeat is retried.
   - a 500 (a bug in the master, ``EIO``) is not retried: ``OutcomeUnknown`` for
     a write (it may have failed after the commit), ``QuorumfsError`` for a read.

4. At the deadline (``RetryPolicy.deadline``, default 15 s: several election
   timeouts) raise ``Unavailable`` with the last reason.

Which calls are safe to repeat ("idempotent" below; decided per call, never
guessed from the HTTP method):

============================== =========== ==========================================
call                           repeated?   why
============================== =========== ==========================================
stat, ls, totals, cluster_*    yes         reads
mkdir(parents=True)            yes         like ``mkdir -p``: an existing directory is
                                           not an error
mkdir(parents=False)           no          a repeat of an applied mkdir says EEXIST
create(exclusive=False)        yes         an existing file is left as it is
create(exclusive=True)         no          O_EXCL: a repeat says EEXIST
setattr                        yes         sets absolute values
rm                             yes, see    the goal (the path is gone) is idempotent,
                               below       its answer is not
mv                             no          a repeat of an applied rename says ENOENT,
                                           or moves something else
============================== =========== ==========================================

``rm``: when an earlier attempt may have been applied and the retry answers
ENOENT, ``rm`` returns ``None`` ("gone, but this call cannot say what it
removed") instead of raising: the first attempt most likely removed it. The
residual risk is the one of every retried delete without request ids: if
another client re-creates the path between the lost attempt and the retry, the
retry removes the new one. Request ids (de-duplicated by the state machine) or
an expected inode on delete would close it; the master API has neither yet.

A write that is not safe to repeat is sent only to a master believed to lead.
When no leader is known (the first call, or after the leader failed) the
client first asks every master's ``/cluster/status`` (answered from local
state, it never proposes anything) and takes the leader claimed in the newest
term, unless some master is already in a newer term (an election is under way,
or the claimant is an isolated old leader). So the usual "no leader yet" 503 of
an election meets the harmless probe and not the write. A leader that turns
out to be a follower answers 307 before proposing anything, which is safe to
follow. If no leader is found in time the write raises ``Unavailable``: it was
never sent.

A client belongs to the event loop of its first call (aiohttp sessions do); use
one per loop, or ``MasterClient`` from threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, NamedTuple, TypeVar
from urllib.parse import urlsplit

import aiohttp
import msgspec
from yarl import URL

from quorumfs import __version__
from quorumfs.master.contract import ClusterStatus
from quorumfs.master.http_api import (
    REDIRECT_HEADER,
    RETRY_AFTER_MS_HEADER,
    SERVED_BY_HEADER,
    ApiErrorCode,
    DeleteResponse,
    ErrorResponse,
    ListResponse,
    RenameResponse,
)
from quorumfs.master.results import DirEntry, Stat, Totals
from quorumfs.wire import (
    DEFAULT_CHUNK_SIZE,
    AllocateRequest,
    AllocateResponse,
    BadChunkReport,
    CommitRequest,
    CommitResponse,
    FileContent,
    Heartbeat,
    HeartbeatResponse,
    VolumesResponse,
)

from ._dns import DnsMasters, master_source
from ._files import (
    DataPath,
    Progress,
    Sink,
    Source,
    TransferPolicy,
    describe_failure,
)
from ._sources import MasterSource
from .errors import (
    NotFound,
    OutcomeUnknown,
    ProtocolError,
    QuorumfsError,
    Unavailable,
    error_for_code,
)

__all__ = ["AsyncMasterClient", "MasterInfo", "RetryPolicy"]

logger = logging.getLogger("quorumfs.client")

T = TypeVar("T")

_NOTHING_DONE_CODES: Final = frozenset({ApiErrorCode.ELOOP.value, ApiErrorCode.EAGAIN.value})
"""503 codes that guarantee a write was not carried out: no leader or quorum (EAGAIN: the
write was never proposed), or a forwarded request refused by a master that is not the
leader (ELOOP). ETIMEDOUT means the outcome is unknown."""
_REDIRECTS: Final = frozenset({307, 308})
_MIN_ATTEMPT: Final = 0.05
"""Seconds: an attempt (or a redirect hop) is not started with less time left before the
deadline. It could hardly succeed, and a write cut short after it was sent would turn a
plain ``Unavailable`` into an ``OutcomeUnknown``."""


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How long a call may take and how it waits between attempts (seconds)."""

    deadline: float = 15.0
    """Overall bound of one call, sleeps included: long enough to ride through an
    election (the masters' election timeout is 0.5-1 s; a lost leader is noticed after
    one). When it passes, the call raises ``Unavailable`` (or ``OutcomeUnknown``)."""
    connect_timeout: float = 1.0
    """To open a TCP connection: a dead or unreachable master is skipped this fast."""
    request_timeout: float = 7.0
    """For one request once connected; above the masters' own 5 s request timeout, so
    that their 503 arrives before the client gives up."""
    probe_timeout: float = 2.0
    """For one ``/cluster/status`` probe while looking for the leader (answered from
    the master's local state, so it is fast or the master is in trouble)."""
    max_redirects: int = 3
    backoff_initial: float = 0.05
    """The first penalty of a master that failed; doubled per consecutive failure."""
    backoff_max: float = 1.0
    """The longest penalty after a failure without ``Retry-After``."""
    max_retry_after: float = 5.0
    """A ``Retry-After`` above this counts as this."""

    def __post_init__(self) -> None:
        for name in (
            "deadline",
            "connect_timeout",
            "request_timeout",
            "probe_timeout",
            "backoff_initial",
            "backoff_max",
            "max_retry_after",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"RetryPolicy.{name} must be a positive number, not {value!r}")
        if self.max_redirects < 0:
            raise ValueError(f"RetryPolicy.max_redirects must be >= 0, not {self.max_redirects}")


class MasterInfo(NamedTuple):
    """Who leads and which masters exist (as ``quorumfs fs masterInfo`` prints them)."""

    leader: str | None
    """The leader's HTTP address; None when no master knows one (an election, no quorum)."""
    masters: list[str]
    """The HTTP addresses of all members, by member id."""


# ------------------------------------------------------------------ internals


class _Answer(NamedTuple):
    """An HTTP answer from a master, after redirects."""

    status: int
    body: bytes
    address: str
    """The master that answered."""
    location: str | None
    served_by: str | None
    retry_after: str | None


class _AttemptError(Exception):
    """An attempt that got no usable answer; ``maybe_done`` when it may have been applied."""

    def __init__(
        self,
        reason: str,
        blame: Iterable[str],
        *,
        maybe_done: bool,
        retry_after: float | None = None,
        cut_short: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.blame = tuple(dict.fromkeys(blame))
        """The masters to penalize (the one that failed, and the one that redirected there)."""
        self.maybe_done = maybe_done
        self.retry_after = retry_after
        """From the master's ``Retry-After``, seconds (503 only)."""
        self.cut_short = cut_short
        """The call's deadline, not the master, ended the attempt: it says nothing about
        why the masters did not serve the call, so it does not replace an earlier reason."""


class _Health:
    """What the client remembers about one master's recent failures."""

    __slots__ = ("failures", "not_before", "reason")

    def __init__(self) -> None:
        self.failures = 0
        """Consecutive failures; 0 after any answer."""
        self.not_before = 0.0
        """Loop time before which it is not asked again."""
        self.reason = ""
        """Why it failed last."""


@dataclass(frozen=True)
class _Call:
    """One client call as ``_request`` sees it."""

    method: str
    path: str
    params: Mapping[str, str] | None
    body: bytes | None
    idempotent: bool
    subject: str
    """The namespace path the call is about (for error messages), or ""."""
    deadline: float | None = None
    """Seconds for this call instead of ``RetryPolicy.deadline``."""

    @property
    def write(self) -> bool:
        return self.method != "GET"

    def describe(self) -> str:
        name = self.path.rsplit("/", 1)[-1]
        return f"{name} {self.subject}" if self.subject else f"{self.method} {self.path}"


# --------------------------------------------------------------------- client


class AsyncMasterClient:
    """The masters' namespace API as coroutines: finds the leader, follows redirects,
    retries across a leader change, raises ``errors.QuorumfsError`` subclasses.

    ``masters``: ``"h1:p1,h2:p2"``, a list of ``host:port`` strings, one ``NAME:PORT``
    whose A/AAAA records are the masters (``DnsMasters``, asking ``nameserver`` when
    given, ``"ip"`` or ``"ip:port"``), or a ``MasterSource``. Use ``async with
    AsyncMasterClient(...) as client:`` (or call ``close()``) so that its connections
    are closed.
    """

    def __init__(
        self,
        masters: str | Sequence[str] | MasterSource,
        *,
        policy: RetryPolicy | None = None,
        token: str | None = None,
        transfer: TransferPolicy | None = None,
        nameserver: str | None = None,
    ) -> None:
        self._owned_source: DnsMasters | None = None
        """A source this client made from text, closed with it."""
        if isinstance(masters, str | Sequence):
            masters = master_source(masters, nameserver=nameserver)
            if isinstance(masters, DnsMasters):
                self._owned_source = masters
        elif nameserver is not None:
            raise ValueError("nameserver applies to masters given as text, not to a MasterSource")
        if not isinstance(masters, MasterSource):
            raise TypeError(
                "masters must be 'host:port,...', a list of host:port, or a MasterSource, "
                f"not {type(masters).__name__}"
            )
        self._source = masters
        self._source_failure: str | None = None
        """Why the source gave no address the last time it was asked."""
        self._policy = policy or RetryPolicy()
        self._token = token
        """Sent as ``Authorization: Bearer`` with every request (admin or volume token)."""
        self._leader: str | None = None
        """The master believed to lead; None when unknown."""
        self._health: dict[str, _Health] = {}
        self._cursor = 0
        """Where the turn over the source's masters starts (the last one that worked)."""
        self._random = random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._data = DataPath(self, transfer or TransferPolicy())
        """File bytes to and from the volume servers (``_files``)."""

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    @property
    def transfer(self) -> TransferPolicy:
        return self._data.policy

    @property
    def leader(self) -> str | None:
        """The master this client believes leads (None until it has learned one)."""
        return self._leader

    def __repr__(self) -> str:
        return f"AsyncMasterClient({self._source!r}, leader={self._leader!r})"

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AsyncMasterClient:
        self._open_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections; the client cannot be used afterwards. Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        await self._data.close()
        if self._owned_source is not None:
            await self._owned_source.aclose()

    def _open_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("this quorumfs client is closed")
        loop = asyncio.get_running_loop()
        if self._session is None:
            headers = {
                "Accept": "application/json",
                "User-Agent": f"quorumfs-client/{__version__}",
                REDIRECT_HEADER: "1",
            }
            if self._token is not None:
                headers["Authorization"] = f"Bearer {self._token}"
            self._session = aiohttp.ClientSession(
                headers=headers,
                connector=aiohttp.TCPConnector(limit=100),
            )
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError(
                "an AsyncMasterClient belongs to the event loop of its first call; make one "
                "per event loop (or use quorumfs.client.MasterClient from threads)"
            )
        return self._session

    # ---------------------------------------------------------------- reads

    async def stat(self, path: str) -> Stat:
        """The attributes of ``path``."""
        answer = await self._request(
            _Call("GET", "/v1/fs/stat", {"path": path}, None, idempotent=True, subject=path)
        )
        return _decode(answer, Stat)

    async def ls(self, path: str) -> list[DirEntry]:
        """The entries of the directory ``path``, sorted by name."""
        answer = await self._request(
            _Call("GET", "/v1/fs/list", {"path": path}, None, idempotent=True, subject=path)
        )
        return _decode(answer, ListResponse).entries

    async def totals(self) -> Totals:
        """Counts of files, directories and bytes in the whole namespace."""
        answer = await self._request(
            _Call("GET", "/v1/fs/totals", None, None, idempotent=True, subject="")
        )
        return _decode(answer, Totals)

    # --------------------------------------------------------------- writes

    async def mkdir(
        self,
        path: str,
        *,
        parents: bool = False,
        mode: int | None = None,
        owner: str | None = None,
    ) -> Stat:
        """Create the directory ``path``; with ``parents``, missing parents too and an
        existing directory is no error (``mkdir -p``, and then safe to retry)."""
        body = _body(path=path, parents=parents, mode=mode, owner=owner)
        answer = await self._request(
            _Call("POST", "/v1/fs/mkdir", None, body, idempotent=parents, subject=path)
        )
        return _decode(answer, Stat)

    async def create(
        self,
        path: str,
        *,
        exclusive: bool = False,
        mode: int | None = None,
        owner: str | None = None,
        replication: int | None = None,
    ) -> Stat:
        """Create the empty file ``path``. Without ``exclusive`` an existing file is left as
        it is (and the call is safe to retry); with it, ``AlreadyExists`` (O_EXCL)."""
        body = _body(
            path=path, exclusive=exclusive, mode=mode, owner=owner, replication=replication
        )
        answer = await self._request(
            _Call("POST", "/v1/fs/create", None, body, idempotent=not exclusive, subject=path)
        )
        return _decode(answer, Stat)

    async def rm(self, path: str, *, recursive: bool = False) -> DeleteResponse | None:
        """Delete the file or directory ``path`` (a non-empty directory with ``recursive``).

        Returns what was removed, or None when an earlier attempt's answer was lost and
        the retry found the path gone (see the module docstring).
        """
        body = _body(path=path, recursive=recursive)
        call = _Call("POST", "/v1/fs/delete", None, body, idempotent=True, subject=path)
        try:
            answer = await self._request(call)
        except NotFound as missing:
            if missing.retried_after_unknown:
                logger.debug("rm %s: gone after a retry; an earlier attempt removed it", path)
                return None
            raise
        return _decode(answer, DeleteResponse)

    async def mv(self, src: str, dst: str) -> RenameResponse:
        """Rename ``src`` to ``dst`` atomically (POSIX rename rules). Never retried once
        sent: when its outcome is unknown it raises ``OutcomeUnknown``."""
        body = _body(src=src, dst=dst)
        answer = await self._request(
            _Call("POST", "/v1/fs/rename", None, body, idempotent=False, subject=src)
        )
        return _decode(answer, RenameResponse)

    async def setattr(
        self,
        path: str,
        *,
        mode: int | None = None,
        owner: str | None = None,
        mtime: int | None = None,
    ) -> Stat:
        """Change the given attributes of ``path`` (``mtime`` in ns since the epoch)."""
        if mode is None and owner is None and mtime is None:
            raise ValueError("setattr: give at least one of mode, owner, mtime")
        body = _body(path=path, mode=mode, owner=owner, mtime=mtime)
        answer = await self._request(
            _Call("POST", "/v1/fs/setattr", None, body, idempotent=True, subject=path)
        )
        return _decode(answer, Stat)

    # ------------------------------------------------------ data path (masters)

    async def allocate(
        self, path: str, count: int = 1, *, replication: int | None = None
    ) -> AllocateResponse:
        """Chunk ids, volume servers and write tokens for ``count`` new chunks of ``path``
        (nothing is written to the namespace: safe to retry)."""
        body = msgspec.json.encode(AllocateRequest(path=path, count=count, replication=replication))
        answer = await self._request(
            _Call("POST", "/v1/fs/allocate", None, body, idempotent=True, subject=path)
        )
        return _decode(answer, AllocateResponse)

    async def commit(self, request: CommitRequest) -> CommitResponse:
        """Make ``request.chunks`` the content of ``request.path`` atomically.

        Retried after a lost answer only when repeating it is harmless (no
        ``expected_version``/``expected_inode``); a compare-and-set raises
        ``OutcomeUnknown`` instead, which the caller settles by reading the file.
        """
        repeatable = request.expected_version is None and request.expected_inode is None
        answer = await self._request(
            _Call(
                "POST",
                "/v1/fs/commit",
                None,
                msgspec.json.encode(request),
                idempotent=repeatable,
                subject=request.path,
            )
        )
        return _decode(answer, CommitResponse)

    async def file_content(self, path: str) -> FileContent:
        """The committed content of the file ``path``: its chunks and their replicas."""
        answer = await self._request(
            _Call("GET", "/v1/fs/chunks", {"path": path}, None, idempotent=True, subject=path)
        )
        return _decode(answer, FileContent)

    async def report_bad_chunk(self, chunk_id: int, volume_id: int, reason: str) -> None:
        """Tell the leader a replica could not be read correctly (it re-replicates)."""
        body = msgspec.json.encode(
            BadChunkReport(chunk_id=chunk_id, volume_id=volume_id, reason=reason[:1000])
        )
        await self._request(
            _Call("POST", "/v1/fs/bad-chunk", None, body, idempotent=True, subject="")
        )

    async def volumes(self) -> VolumesResponse:
        """The volume servers as the leader sees them."""
        answer = await self._request(
            _Call("GET", "/v1/volumes", None, None, idempotent=True, subject="")
        )
        return _decode(answer, VolumesResponse)

    async def heartbeat(self, beat: Heartbeat, *, deadline: float) -> HeartbeatResponse:
        """A volume server's heartbeat to the leader (needs the volume token), given up
        after ``deadline`` seconds. Safe to repeat: after a failure the server sends its
        full chunk list."""
        answer = await self._request(
            _Call(
                "POST",
                "/v1/volumes/heartbeat",
                None,
                msgspec.json.encode(beat),
                idempotent=True,
                subject="",
                deadline=deadline,
            )
        )
        return _decode(answer, HeartbeatResponse)

    # ----------------------------------------------- data path (volume servers)

    async def put(
        self,
        path: str,
        source: Source,
        *,
        replication: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: Progress | None = None,
    ) -> Stat:
        """Make ``source`` (bytes, a ``pathlib.Path``, a binary file object, an async
        iterable of bytes) the content of ``path``, created or replaced atomically."""
        return await self._data.put(
            path, source, replication=replication, chunk_size=chunk_size, progress=progress
        )

    async def get(
        self,
        path: str,
        sink: Sink,
        *,
        offset: int = 0,
        length: int | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Write the bytes of ``path`` to ``sink`` (a ``pathlib.Path``, replaced only when
        complete, or a binary file object); how many were written."""
        return await self._data.get(path, sink, offset=offset, length=length, progress=progress)

    async def read(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """The bytes of ``path`` from ``offset`` (``length`` of them, or to the end)."""
        return await self._data.read(path, offset, length)

    def iter_read(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The bytes of ``path`` as an async iterator of pieces (a chunk at most each)."""
        return self._data.iter_read(path, offset, length)

    async def append(
        self,
        path: str,
        source: Source,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: Progress | None = None,
    ) -> Stat:
        """Add ``source`` at the end of ``path`` (created if missing)."""
        return await self._data.append(path, source, chunk_size=chunk_size, progress=progress)

    async def write_at(
        self,
        path: str,
        offset: int,
        data: bytes | bytearray | memoryview,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Stat:
        """Overwrite bytes of ``path`` at ``offset`` (past the end extends it; a gap reads
        as zeros; a missing file is created)."""
        return await self._data.write_at(path, offset, data, chunk_size=chunk_size)

    async def truncate(self, path: str, size: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Stat:
        """Cut ``path`` to ``size`` bytes, or extend it with zeros."""
        return await self._data.truncate(path, size, chunk_size=chunk_size)

    # -------------------------------------------------------------- cluster

    async def cluster_status(self) -> ClusterStatus:
        """The Raft group as one master sees it (the leader when known)."""
        answer = await self._request(
            _Call("GET", "/cluster/status", None, None, idempotent=True, subject="")
        )
        status = _decode(answer, ClusterStatus)
        self._learn_status(status)
        return status

    async def master_info(self) -> MasterInfo:
        """The current leader and all masters. When the master asked knows no leader, every
        master is asked, and the leader claimed in the newest term wins."""
        status = await self.cluster_status()
        if status.leader_http is None:
            addresses = await self._addresses()
            deadline = self._loop_time() + self._policy.probe_timeout
            status = (await self._probe_leader(addresses, deadline))[0] or status
        members = [m.http for m in sorted(status.members, key=lambda m: m.id)]
        return MasterInfo(status.leader_http, members)

    # ---------------------------------------------------------- call path

    async def _request(self, call: _Call) -> _Answer:
        """The one way a call reaches the masters; see the module docstring."""
        self._open_session()
        start = self._loop_time()
        deadline = start + (call.deadline or self._policy.deadline)
        reason = "no master was asked"
        attempts = 0
        waits = 0
        maybe_done = False
        """Whether an earlier attempt of this call may have been applied."""
        while True:
            now = self._loop_time()
            if deadline - now < _MIN_ATTEMPT:
                raise self._unavailable(call, reason, attempts, now - start)
            addresses = await self._addresses(deadline)
            if not addresses:
                address = None
                reason = (
                    self._source_failure or f"the master source {self._source!r} gave no address"
                )
            elif call.idempotent:
                address = self._pick(addresses, now)
            elif self._leader is not None and not self._penalized(self._leader, now):
                address = self._leader  # a write that is not safe to repeat: the leader only
            else:
                address, why = await self._discover(addresses, deadline)
                if address is None:
                    reason = why
            if address is None:
                delay = self._wait_time(addresses, now, waits, pick=call.idempotent)
                if deadline - (now + delay) < _MIN_ATTEMPT:  # no time to try after the wait
                    raise self._unavailable(call, reason, attempts, now - start)
                waits += 1
                await asyncio.sleep(delay)
                continue
            attempts += 1
            try:
                answer = await self._send(address, call, deadline)
                if answer.status == 503:
                    raise _unavailable_answer(answer, call)
            except _AttemptError as failure:
                if not (failure.cut_short and attempts > 1):
                    reason = failure.reason
                if failure.maybe_done and call.write:
                    if not call.idempotent:
                        raise OutcomeUnknown(
                            f"{call.describe()}: the request was sent but its outcome is "
                            f"unknown ({failure.reason}); it may or may not have been "
                            "applied: check before repeating it",
                            reason=failure.reason,
                            path=call.subject,
                        ) from None
                    maybe_done = True
                self._penalize(failure, addresses)
                logger.debug(
                    "%s: attempt %d failed (%s); retrying, %.2f s left",
                    call.describe(),
                    attempts,
                    failure.reason,
                    deadline - self._loop_time(),
                )
                continue
            self._absolve(answer)
            if 200 <= answer.status < 300:
                if call.write and not answer.served_by:
                    self._set_leader(answer.address, "a write it served")
                return answer
            raise _error(answer, call, maybe_done)

    async def _send(self, address: str, call: _Call, deadline: float) -> _Answer:
        """One attempt: ``call`` to ``address``, following redirects to the leader."""
        origin = current = address
        for _ in range(self._policy.max_redirects + 1):
            remaining = deadline - self._loop_time()
            if remaining < _MIN_ATTEMPT:
                raise _AttemptError(
                    f"the deadline came while following redirects from {origin}",
                    (),
                    maybe_done=False,
                    cut_short=True,
                )
            timeout = min(self._policy.request_timeout, remaining)
            try:
                answer = await self._exchange(current, call, timeout)
            except _AttemptError as failure:
                raise _AttemptError(
                    failure.reason,
                    (origin, *failure.blame),
                    maybe_done=failure.maybe_done,
                    cut_short=failure.cut_short,
                ) from None
            if answer.status not in _REDIRECTS:
                return answer
            target = _redirect_address(answer)
            self._absolve(answer)
            if self._penalized(target):
                raise _AttemptError(
                    f"{current} redirects to the leader {target}, which failed moments ago "
                    f"({self._health_of(target).reason})",
                    (origin,),
                    maybe_done=False,
                )
            self._set_leader(target, f"a redirect from {current}")
            current = target
        raise _AttemptError(
            f"more than {self._policy.max_redirects} redirects starting at {origin} (the "
            "masters disagree about who leads)",
            (origin,),
            maybe_done=False,
        )

    async def _exchange(self, address: str, call: _Call, timeout: float) -> _Answer:
        """One HTTP request; ``_AttemptError`` when no answer came."""
        session = self._open_session()
        url = URL.build(scheme="http", authority=address, path=call.path, query=call.params)
        headers = {"Content-Type": "application/json"} if call.body is not None else None
        limits = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(self._policy.connect_timeout, timeout)
        )
        try:
            async with session.request(
                call.method,
                url,
                data=call.body,
                headers=headers,
                allow_redirects=False,
                timeout=limits,
            ) as response:
                body = await response.read()
                return _Answer(
                    response.status,
                    body,
                    address,
                    response.headers.get("Location"),
                    response.headers.get(SERVED_BY_HEADER),
                    _retry_after_text(response.headers),
                )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Nothing was sent: no connection could be made (or none became free in time).
            why = describe_failure(exc, self._policy.connect_timeout)
            raise _AttemptError(
                f"cannot connect to {address}: {why}",
                (address,),
                maybe_done=False,
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            cut_short = isinstance(exc, TimeoutError) and timeout < self._policy.request_timeout
            raise _AttemptError(
                f"no answer from {address}: {describe_failure(exc, timeout)}"
                + (" (the call's deadline came)" if cut_short else ""),
                (address,),
                maybe_done=True,
                cut_short=cut_short,
            ) from None

    async def _discover(self, addresses: Sequence[str], deadline: float) -> tuple[str | None, str]:
        """The leader according to the masters' ``/cluster/status``, remembered; or None
        and why not (no master answered, none knows a leader, it failed moments ago)."""
        best, failures = await self._probe_leader(addresses, deadline)
        if best is None or best.leader_http is None:
            if len(failures) == len(addresses):
                return None, "no master answered /cluster/status: " + "; ".join(failures)
            return None, "no master knows a leader (an election, or no quorum)"
        if self._penalized(best.leader_http):
            return None, f"the masters name {best.leader_http} as the leader, but it just failed"
        self._set_leader(best.leader_http, f"/cluster/status of master {best.id}")
        return best.leader_http, ""

    async def _probe_leader(
        self, addresses: Sequence[str], deadline: float
    ) -> tuple[ClusterStatus | None, list[str]]:
        """Ask every master's ``/cluster/status`` at once: the status naming the leader
        (None when no master that answered knows one), and the masters that did not answer.

        The claim made in the newest term wins, and only if no master is in a newer term
        (then an election is under way, and the claim is stale: e.g. an isolated old leader
        that still believes it leads). The search ends early once a majority of the masters
        answered and the best claim is a master's own word.
        """
        failures: list[str] = []
        timeout = min(self._policy.probe_timeout, deadline - self._loop_time())
        if timeout <= 0:
            return None, ["the deadline passed"]
        probe = _Call("GET", "/cluster/status", None, None, idempotent=True, subject="")

        async def status_of(address: str) -> ClusterStatus | None:
            try:
                answer = await self._exchange(address, probe, timeout)
            except _AttemptError as failure:
                failures.append(failure.reason)
                return None
            try:
                return msgspec.json.decode(answer.body, type=ClusterStatus)
            except msgspec.MsgspecError:
                failures.append(f"{address} answered HTTP {answer.status} without a status")
                return None

        tasks = [asyncio.ensure_future(status_of(a)) for a in addresses]
        best: ClusterStatus | None = None
        newest_term = answered = 0
        try:
            for next_done in asyncio.as_completed(tasks):
                status = await next_done
                if status is None:
                    continue
                answered += 1
                newest_term = max(newest_term, status.term)
                if status.leader_http is not None and (best is None or status.term > best.term):
                    best = status
                if (
                    best is not None
                    and best.leader_id == best.id
                    and best.term == newest_term
                    and 2 * answered > len(addresses)
                ):
                    break
        finally:
            for task in tasks:
                task.cancel()
        if best is not None and best.term < newest_term:
            return None, failures
        return best, failures

    # ------------------------------------------------------- master choice

    async def _addresses(self, deadline: float | None = None) -> Sequence[str]:
        """The source's masters; none when it fails, or has not answered by ``deadline``
        (a first DNS look-up: it goes on, shielded, for the next call), and the caller
        waits and asks again."""
        try:
            if deadline is None:
                addresses = await self._source.addresses()
            else:
                async with asyncio.timeout_at(deadline):  # no extra task, unlike wait_for
                    addresses = await self._source.addresses()
        except TimeoutError:
            self._source_failure = f"the master source {self._source!r} did not answer in time"
            return ()
        except OSError as exc:
            logger.debug("the master source %r failed: %s", self._source, exc)
            self._source_failure = str(exc) or f"the master source {self._source!r} failed"
            return ()
        self._source_failure = None
        return addresses

    def _pick(self, addresses: Sequence[str], now: float) -> str | None:
        """The leader if known and not penalized, else the next master in turn that is not."""
        if self._leader is not None and not self._penalized(self._leader, now):
            return self._leader
        count = len(addresses)
        for offset in range(count):
            address = addresses[(self._cursor + offset) % count]
            if not self._penalized(address, now):
                return address
        return None

    def _wait_time(self, addresses: Sequence[str], now: float, waits: int, *, pick: bool) -> float:
        """How long to sleep when no master may be asked now."""
        if pick and addresses:
            first_free = min(self._health_of(a).not_before for a in addresses)
            return max(first_free - now, 0.0) + self._policy.backoff_initial * self._random.random()
        return self._backoff(waits)

    def _backoff(self, failures: int) -> float:
        """Exponential, capped, with jitter in [half, full] (never a tight loop)."""
        base = min(
            self._policy.backoff_max, self._policy.backoff_initial * 2.0 ** min(failures, 30)
        )
        return base * (0.5 + 0.5 * self._random.random())

    def _penalize(self, failure: _AttemptError, addresses: Sequence[str]) -> None:
        """The masters ``failure`` blames are not asked again for a while; the next turn over
        ``addresses`` starts after them, and a blamed leader is forgotten."""
        now = self._loop_time()
        for index, address in enumerate(failure.blame):
            health = self._health_of(address)
            if index == len(failure.blame) - 1 and failure.retry_after is not None:
                delay = min(failure.retry_after, self._policy.max_retry_after)
            else:
                delay = self._backoff(health.failures)
            health.failures += 1
            health.reason = failure.reason
            health.not_before = max(health.not_before, now + delay)
            if address == self._leader:
                logger.debug("forgetting the leader %s: %s", address, failure.reason)
                self._leader = None
            if address in addresses:
                self._cursor = (list(addresses).index(address) + 1) % len(addresses)

    def _absolve(self, answer: _Answer) -> None:
        """``answer.address`` answered: it is healthy again, and maybe it leads."""
        self._health.pop(answer.address, None)
        if answer.served_by:
            self._set_leader(answer.served_by, f"{SERVED_BY_HEADER} from {answer.address}")

    def _penalized(self, address: str, now: float | None = None) -> bool:
        health = self._health.get(address)
        return health is not None and health.not_before > (
            self._loop_time() if now is None else now
        )

    def _health_of(self, address: str) -> _Health:
        return self._health.setdefault(address, _Health())

    def _set_leader(self, address: str, source: str) -> None:
        if address != self._leader:
            logger.debug("the leader is %s (from %s)", address, source)
            self._leader = address

    def _learn_status(self, status: ClusterStatus) -> None:
        if status.leader_http is not None and not self._penalized(status.leader_http):
            self._set_leader(status.leader_http, f"/cluster/status of master {status.id}")

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def _unavailable(self, call: _Call, reason: str, attempts: int, elapsed: float) -> Unavailable:
        return Unavailable(
            f"{call.describe()}: no master could serve the request ({attempts} attempts in "
            f"{elapsed:.1f} s, deadline {call.deadline or self._policy.deadline:g} s; last: "
            f"{reason}); check "
            "that a majority of the masters is running and reachable",
            reason=reason,
            path=call.subject,
            attempts=attempts,
        )


# ---------------------------------------------------------------- helpers


def _body(**fields: object) -> bytes:
    """A JSON request body with the fields that are not None (the master has the defaults)."""
    return msgspec.json.encode({k: v for k, v in fields.items() if v is not None})


def _decode(answer: _Answer, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(answer.body, type=kind)
    except msgspec.MsgspecError as exc:
        raise ProtocolError(
            f"{answer.address} answered HTTP {answer.status} with an unexpected body ({exc}); "
            "is it a quorumfs master of the same version?"
        ) from None


def _error_body(answer: _Answer) -> ErrorResponse | None:
    try:
        return msgspec.json.decode(answer.body, type=ErrorResponse)
    except msgspec.MsgspecError:
        return None


def _error(answer: _Answer, call: _Call, maybe_done: bool) -> QuorumfsError:
    """The exception for a final error answer: the one place where codes become classes."""
    parsed = _error_body(answer)
    if parsed is None:
        return ProtocolError(
            f"{answer.address} answered HTTP {answer.status} without a quorumfs error body; "
            "is it a quorumfs master's HTTP port?",
            path=call.subject,
        )
    error = parsed.error
    if answer.status >= 500 and call.write:
        # An unexpected failure in the master (EIO): it may have been after the commit.
        return OutcomeUnknown(
            f"{call.describe()}: {answer.address} failed while serving the request "
            f"({error.code}: {error.message}); it may or may not have been applied",
            reason=error.message,
            path=call.subject,
        )
    return error_for_code(
        error.code, error.message, path=error.path or call.subject, retried_after_unknown=maybe_done
    )


def _unavailable_answer(answer: _Answer, call: _Call) -> _AttemptError:
    """A 503 as a failure: a write may have been applied unless its code says it was not."""
    parsed = _error_body(answer)
    code = parsed.error.code if parsed is not None else ""
    message = parsed.error.message if parsed is not None else "HTTP 503"
    return _AttemptError(
        f"{answer.address} is unavailable ({code or 'no code'}: {message})",
        (answer.address,),
        maybe_done=call.write and code not in _NOTHING_DONE_CODES,
        retry_after=_retry_after(answer.retry_after),
    )


def _retry_after_text(headers: Mapping[str, str]) -> str | None:
    """The master's sub-second hint (in seconds) when it gave one, else ``Retry-After``."""
    milliseconds = headers.get(RETRY_AFTER_MS_HEADER, "").strip()
    if milliseconds.isdigit():
        return str(int(milliseconds) / 1000)
    return headers.get("Retry-After")


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    with contextlib.suppress(ValueError):
        seconds = float(value)  # delta-seconds (or milliseconds, converted above)
        return seconds if seconds >= 0 and math.isfinite(seconds) else None
    with contextlib.suppress(TypeError, ValueError, IndexError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def _redirect_address(answer: _Answer) -> str:
    """The ``host:port`` a 307 points at (only the address is used: the client resends
    its own method, path and body)."""
    location = answer.location or ""
    parts = urlsplit(location)
    if parts.scheme != "http" or not parts.netloc:
        raise ProtocolError(
            f"{answer.address} redirected to {location!r}, which is not an http:// URL of a master"
        )
    return parts.netloc
