"""The data path's wire protocol: what clients, masters and volume servers send each other.

This module is the protocol's document of record, shared by all three sides so
that none of them defines a shape the others merely guess at. It holds shapes
and constants only (msgspec structs, header names, limits); the behaviour is
in ``quorumfs.master.data_api`` (the masters' side), ``quorumfs.volume.http_api``
and ``quorumfs.volume.heartbeat`` (the volume servers') and ``quorumfs.client``.
Every body is JSON; request bodies are decoded strictly (unknown fields refused).

How a file is written (``put``)::

    client ──POST /v1/fs/allocate──▶ leader      chunk ids, volume servers, write tokens
    client ──PUT /chunks/{id}──────▶ each volume server of each chunk (in parallel)
    client ──POST /v1/fs/commit────▶ leader      the file's new chunk list, atomically

Nothing is visible to readers before the commit, which replaces the file's
whole chunk list in one Raft entry (a compare-and-set on the file's version
and inode when the client asks for it). A chunk that was uploaded but never
committed is an orphan; the leader deletes orphans after ``orphan grace``.

How a file is read::

    client ──GET /v1/fs/chunks?path=──▶ any master   chunk list with replica addresses
    client ──GET /chunks/{id}─────────▶ one replica (Range allowed), the next on failure

How volume servers and the leader keep in touch (pull model, as SeaweedFS's
heartbeat stream): every ``pulse`` a volume server POSTs a ``Heartbeat`` to
the leader (found through any master, following redirects). The answer
assigns its volume id the first time, and carries the work the leader wants
done: chunks to delete, chunks to copy from another server. A heartbeat
carries the chunks added and removed since the last acknowledged one; after a
failed heartbeat, or when the leader asks (a new leader has no picture yet),
it carries the full list. A leader chooses a volume server for new writes
only after a full report from it in its own term ("temporarily not writable"
until then); chunks stay readable from the addresses the namespace records.

Authorisation: a volume server accepts a chunk write only with a write token
(``quorumfs.tokens``) that the leader signed with a key derived from the
cluster secret, naming that chunk, that volume server and an expiry on the
leader's wall clock. The volume server judges the expiry by the leader's clock,
not its own: every heartbeat answer carries the leader's time
(``HeartbeatResponse.leader_time_unix_ms``), and the server keeps the
difference from its own clock. Heartbeats
carry ``Authorization: Bearer <volume token>``, also derived from the secret.
Reads are not authorised: anyone who can reach a volume server and knows a
chunk id can read it (as with SeaweedFS without JWT reads).
"""

from __future__ import annotations

import enum
from typing import Annotated, Final

import msgspec

from quorumfs.master.commands import Chunk
from quorumfs.master.results import Stat

__all__ = [
    "CHECKSUM_HEADER",
    "DEFAULT_CHUNK_SIZE",
    "MAX_ALLOCATE",
    "MAX_CHUNK_SIZE",
    "TOKEN_HEADER",
    "Accepted",
    "AllocateRequest",
    "AllocateResponse",
    "BadChunkReport",
    "ChunkGrant",
    "ChunkLocation",
    "ChunkWritten",
    "CommitRequest",
    "CommitResponse",
    "FileContent",
    "Heartbeat",
    "HeartbeatResponse",
    "ReplicateTask",
    "VolumeErrorCode",
    "VolumeInfo",
    "VolumeStatus",
    "VolumesResponse",
    "WriteTarget",
]

CHECKSUM_HEADER: Final = "X-Quorumfs-Crc32c"
"""The CRC-32C of a whole chunk, in decimal. On ``PUT /chunks/{id}`` (optional):
the volume server refuses the write (400 ``ECHECKSUM``, nothing stored) when the
body does not match. On a ``GET``/``HEAD`` answer: the stored chunk's checksum."""
TOKEN_HEADER: Final = "X-Quorumfs-Token"
"""The write token on ``PUT /chunks/{id}`` (from ``AllocateResponse``)."""

MAX_CHUNK_SIZE: Final = 64 * 1024 * 1024
"""The largest chunk a volume server stores (64 MiB, as MooseFS)."""
DEFAULT_CHUNK_SIZE: Final = MAX_CHUNK_SIZE
"""How the client splits large files; a file up to this size is one chunk."""
MAX_ALLOCATE: Final = 64
"""Chunks per ``/v1/fs/allocate`` call (4 GiB of 64 MiB chunks)."""

ChunkId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
VolumeId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Bytes = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Crc32c = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
Replication = Annotated[int, msgspec.Meta(ge=1, le=16)]
Address = Annotated[str, msgspec.Meta(min_length=3, max_length=300)]
"""``host:port`` (an IPv6 host in brackets); checked further by the receiver."""


class _Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every request body: strict, keyword-only."""


# ------------------------------------------------------------ client <-> master


class AllocateRequest(_Body, frozen=True):
    """``POST /v1/fs/allocate`` (leader; a follower forwards): chunk ids to write ``path``.

    Nothing is written to the namespace: the ids come from a range the leader
    reserved, and unused ids are simply never committed. ``path`` names the file
    the chunks are for (it need not exist yet): its ``replication`` decides how
    many copies, else ``replication`` here, else the default (2).
    """

    path: str
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_ALLOCATE)] = 1
    replication: Replication | None = None


class WriteTarget(msgspec.Struct, frozen=True, kw_only=True):
    volume_id: int
    address: str
    """host:port of the volume server's HTTP API."""
    token: str
    """Send as ``X-Quorumfs-Token`` with the ``PUT``; valid until ``expires_unix_ms``."""


class ChunkGrant(msgspec.Struct, frozen=True, kw_only=True):
    chunk_id: int
    targets: list[WriteTarget]
    """Distinct volume servers; the write is durable once every one answered 201.
    Fewer than the file's replication when fewer servers are writable (at least 1):
    the leader adds the missing copies later."""


class AllocateResponse(msgspec.Struct, frozen=True, kw_only=True):
    chunks: list[ChunkGrant]
    replication: int
    """The copies wanted (the file's, the request's or the default)."""
    expires_unix_ms: int
    """When the tokens expire (ms since the epoch, on the leader's wall clock: volume
    servers judge it by that clock, see ``HeartbeatResponse.leader_time_unix_ms``)."""
    max_chunk_size: int = MAX_CHUNK_SIZE


class CommitRequest(_Body, frozen=True):
    """``POST /v1/fs/commit`` (leader): make ``chunks`` the content of ``path`` atomically.

    Chunks are ordered by offset, do not overlap and lie within ``size``; gaps
    read as zeros. Each chunk's ``volume_ids`` are the servers that answered 201
    to its upload. ``expected_version``/``expected_inode`` make it a
    compare-and-set (409 ``ECONFLICT`` when the file changed). With ``create`` a
    missing file is created first (its parent must exist) with ``mode``,
    ``owner`` and ``replication``; without it a missing file is 404.
    """

    path: str
    chunks: list[Chunk]
    size: Bytes
    expected_version: Bytes | None = None
    expected_inode: Bytes | None = None
    create: bool = False
    mode: Annotated[int, msgspec.Meta(ge=0, le=0o7777)] | None = None
    owner: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    replication: Replication | None = None
    mtime: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    """Nanoseconds since the epoch; the master's clock when omitted."""


class CommitResponse(msgspec.Struct, frozen=True, kw_only=True):
    stat: Stat
    """The file after the commit (its new version)."""
    released_chunks: int
    """How many chunks of the previous content were dropped (deleted in the background)."""


class ChunkLocation(msgspec.Struct, frozen=True, kw_only=True):
    chunk_id: int
    offset: int
    size: int
    checksum: int
    """CRC-32C of the chunk's bytes."""
    volume_ids: list[int]
    addresses: list[str]
    """host:port of each replica's volume server, same order as ``volume_ids``;
    "" for a volume whose address is unknown. Live servers first when the leader answers."""


class FileContent(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/fs/chunks?path=`` (any master, linearizable): what a reader needs."""

    inode: int
    version: int
    """Pass as ``expected_version`` to commit a change made from this content."""
    size: int
    mtime: int
    chunks: list[ChunkLocation]
    """Ordered by offset; gaps (and the tail after the last chunk) read as zeros."""


class Accepted(msgspec.Struct, frozen=True):
    """The 202 answer of ``/v1/fs/bad-chunk``: noted, acted on in the background."""

    accepted: bool = True


class BadChunkReport(_Body, frozen=True):
    """``POST /v1/fs/bad-chunk`` (leader): a client read a replica that failed its checksum
    or could not be served; the leader re-replicates from a good copy. Answered 202."""

    chunk_id: ChunkId
    volume_id: VolumeId
    reason: Annotated[str, msgspec.Meta(max_length=1000)] = ""


# ------------------------------------------------------- volume server <-> master


class Heartbeat(_Body, frozen=True):
    """``POST /v1/volumes/heartbeat`` (leader; followers answer 307 or forward).

    Needs ``Authorization: Bearer <volume token>`` (``tokens.volume_token``).
    """

    address: Address
    """host:port where clients reach this server's HTTP API."""
    volume_id: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0
    """0 on the very first heartbeat: the leader registers the server and answers its id,
    which the server keeps (in its directory) forever."""
    capacity: Bytes | None = None
    """The most bytes this server will store (``--max``); None: the disk's free space."""
    used: Bytes = 0
    free: Bytes = 0
    """Bytes it can still take (the lesser of capacity - used and the disk's free space)."""
    chunk_count: Bytes = 0
    full_report: bool = False
    """``added`` lists every chunk this server holds (``removed`` is empty)."""
    added: list[ChunkId] = []
    """Chunks stored since the last acknowledged heartbeat (or all, with ``full_report``)."""
    removed: list[ChunkId] = []
    """Chunks deleted since the last acknowledged heartbeat."""
    corrupt: list[ChunkId] = []
    """Chunks this server holds that failed a checksum (all of them with ``full_report``,
    else those found since the last acknowledged heartbeat)."""
    failed: list[ChunkId] = []
    """Replication tasks (by chunk id) that failed since the last heartbeat."""


class ReplicateTask(msgspec.Struct, frozen=True, kw_only=True):
    """Copy ``chunk_id`` from one of ``sources`` (volume server addresses, tried in order)."""

    chunk_id: int
    size: int
    checksum: int
    """CRC-32C the copy must have; a source that serves other bytes is skipped."""
    sources: list[str]


class HeartbeatResponse(msgspec.Struct, frozen=True, kw_only=True):
    volume_id: int
    """The server's permanent id (assigned on the first heartbeat)."""
    leader_term: int
    """Identifies the leader that answered; a change means a new leader."""
    pulse_ms: int
    """How often the leader wants heartbeats."""
    need_full_report: bool = False
    """Send every chunk in the next heartbeat (this one's delta was not applied)."""
    delete: list[int] = []
    """Chunks to delete: garbage nobody references, or surplus copies."""
    replicate: list[ReplicateTask] = []
    masters: list[str] = []
    """Every master's HTTP address, for the server's list of masters."""
    leader_time_unix_ms: int | None = None
    """The leader's wall clock when it answered (ms since the epoch), the clock its write
    tokens' expiries are on. The volume server keeps ``leader_clock_offset_ms =
    leader_time_unix_ms - its own wall clock when the answer arrived`` (from its latest
    acknowledged heartbeat; 0 before the first, and after an answer without this field,
    from a leader older than it) and judges a token expired once its own clock plus that
    offset reaches the expiry: clocks need not agree. The offset lags the leader by the
    answer's transit time (under a pulse), so a token may live that much longer."""


class VolumeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One volume server as the leader sees it."""

    volume_id: int
    address: str
    alive: bool
    """Heard from within the dead-after delay."""
    writable: bool
    """Chosen for new chunks: alive, reported fully to this leader, and not full."""
    last_heartbeat_ms: int | None
    """Milliseconds since its last heartbeat; None if none reached this leader."""
    capacity: int | None
    used: int
    free: int
    chunks: int
    """Chunks it reported holding."""
    corrupt: int


class VolumesResponse(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/volumes`` (leader): the volume servers, and the repair backlog."""

    volumes: list[VolumeInfo]
    under_replicated: int
    """Chunks with fewer live copies than wanted, at the last repair scan."""
    repairs_in_flight: int


# ---------------------------------------------------- client <-> volume server


class VolumeErrorCode(enum.StrEnum):
    """Error codes of a volume server (the body is ``{"error": {code, message, path}}``).

    ========== ====== ==========================================================
    code       status why
    ========== ====== ==========================================================
    EINVAL     400    a malformed request (chunk id, header, range)
    ECHECKSUM  400    the body does not match ``X-Quorumfs-Crc32c``: nothing stored
    EACCES     401    a write without a valid token (missing, forged, expired,
                      for another chunk or another volume server)
    ENOENT     404    no such chunk here
    ELENGTH    411    a write without Content-Length
    E2BIG      413    a chunk larger than ``MAX_CHUNK_SIZE``
    ERANGE     416    a range outside the chunk
    ENOSYS     404    no such endpoint (405 when the path exists, not the method)
    EAGAIN     503    not registered with the masters yet (just started): retry
    ECORRUPT   500    the stored copy failed its checksum: read another replica
    ENOSPC     507    the server is full
    EROFS      503    the server stopped taking writes (a failed fsync): restart it
    EIO        500    a bug: the details are in the server's log
    ========== ====== ==========================================================
    """

    EINVAL = "EINVAL"
    ECHECKSUM = "ECHECKSUM"
    EACCES = "EACCES"
    ENOENT = "ENOENT"
    ELENGTH = "ELENGTH"
    E2BIG = "E2BIG"
    ERANGE = "ERANGE"
    ECORRUPT = "ECORRUPT"
    ENOSPC = "ENOSPC"
    EROFS = "EROFS"
    ENOSYS = "ENOSYS"
    EAGAIN = "EAGAIN"
    EIO = "EIO"


class ChunkWritten(msgspec.Struct, frozen=True, kw_only=True):
    """The 201 answer to ``PUT /chunks/{id}``: the chunk is durable (fsynced)."""

    chunk_id: int
    size: int
    checksum: int
    """CRC-32C of what was stored; the client compares it with its own."""


class VolumeStatus(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /status`` of a volume server."""

    volume_id: int
    """0 until the leader assigned one."""
    address: str
    directory: str
    capacity: int | None
    used: int
    free: int
    chunks: int
    corrupt: int
    masters: list[str]
    leader: str | None
    """The master its last heartbeat reached."""
    last_heartbeat_ms: int | None
    """Milliseconds since its last acknowledged heartbeat."""
    writable: bool
    """False after a failed fsync (restart needed)."""
    leader_clock_offset_ms: int = 0
    """The leader's wall clock minus this server's, as its last acknowledged heartbeat
    found it (``HeartbeatResponse.leader_time_unix_ms``); write tokens are judged by it."""
