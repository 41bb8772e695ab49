"""The commands the Raft log carries to the namespace, and their wire encoding.

The leader encodes a command with ``encode_command`` and proposes the bytes;
every master decodes the committed entry with ``decode_command`` and applies
it. Everything a command needs that is not already in the namespace (the
time, the owner, chunk placement) travels inside it, so applying it is a pure
function of (state, command).

Encoding choices, each made for the log's sake:

- msgpack maps keyed by field name with a ``type`` tag: an entry stays
  readable, and a field added later with a default still decodes old entries.
- Every field is written, defaults included: an entry's meaning never depends
  on the defaults of the code that reads it.
- Unknown fields are refused rather than ignored: a master too old to
  understand a command must stop, not apply something different from its
  peers.

This module owns shapes only; ``namespace`` owns what makes a command valid.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "AllocateChunkIds",
    "Chunk",
    "Command",
    "CommitContent",
    "Create",
    "Delete",
    "Mkdir",
    "RegisterVolume",
    "Rename",
    "ReplaceChunkReplicas",
    "SetAttr",
    "decode_command",
    "encode_command",
]

DEFAULT_DIRECTORY_MODE = 0o755
DEFAULT_FILE_MODE = 0o644
DEFAULT_REPLICATION = 2


class Chunk(msgspec.Struct, frozen=True, gc=False, array_like=True, forbid_unknown_fields=True):
    """One immutable piece of a file's content, stored whole on each of ``volume_ids``.

    Array-encoded and untracked by the garbage collector: a namespace holds
    about one of these per file, so each one must stay small.
    """

    chunk_id: int
    """From ``AllocateChunkIds``; a chunk id belongs to at most one file at a time."""
    offset: int
    """Where the chunk starts in the file, in bytes."""
    size: int
    """Bytes, at least 1."""
    checksum: int
    """CRC-32C of the chunk's bytes (0 to 2**32 - 1)."""
    volume_ids: tuple[int, ...]
    """The volume servers holding a copy (ids from ``AllocateVolumeId``); at least one,
    no repeats. May be fewer than the file's ``replication``: repair adds copies later."""


class _Command(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every command; each subclass names its tag (the ``type`` field)."""


class Mkdir(_Command, frozen=True, tag="mkdir"):
    path: str
    mtime: int
    """Nanoseconds since the Unix epoch; also the mtime of every parent ``parents`` creates."""
    owner: str
    mode: int = DEFAULT_DIRECTORY_MODE
    parents: bool = False
    """As ``mkdir -p``: create missing parents, and succeed if the directory exists."""


class Create(_Command, frozen=True, tag="create"):
    """Create an empty file; its content arrives later through ``CommitContent``."""

    path: str
    mtime: int
    owner: str
    mode: int = DEFAULT_FILE_MODE
    replication: int = DEFAULT_REPLICATION
    exclusive: bool = False
    """As ``O_EXCL``: fail with EEXIST if the path exists. When false, an existing file
    is left exactly as it is (as ``O_CREAT`` without ``O_TRUNC``), so a retried create
    is harmless."""


class Delete(_Command, frozen=True, tag="delete"):
    path: str
    recursive: bool = False
    """Delete a non-empty directory with everything under it."""


class Rename(_Command, frozen=True, tag="rename"):
    """Move ``src`` to ``dst`` atomically, with the rules of POSIX ``rename(2)``."""

    src: str
    dst: str


class SetAttr(_Command, frozen=True, tag="setattr"):
    """Change the given attributes; ``None`` leaves one as it is. Never a content change."""

    path: str
    mode: int | None = None
    owner: str | None = None
    mtime: int | None = None


class CommitContent(_Command, frozen=True, tag="commit_content"):
    """Replace a file's content (its whole chunk list) atomically and bump its version.

    Readers see either the old content or the new one, never a mix: chunks are
    written to volume servers first and become part of the file only here.
    """

    path: str
    chunks: tuple[Chunk, ...]
    """Ordered by offset, not overlapping, all within ``size``. A chunk of the
    current content may be kept (an append lists the old chunks plus new ones);
    it keeps its current ``volume_ids`` whatever the command says (a repair may
    have moved it since the writer read it), and its size and checksum must not
    change."""
    size: int
    mtime: int
    expected_version: int | None = None
    """When set, commit only if the file's version is this one (else ECONFLICT)."""
    expected_inode: int | None = None
    """When set, commit only if the path still names this inode (else ECONFLICT).
    Versions are per file, so without this a file renamed over the path could
    happen to have the expected version."""
    create: bool = False
    """When the file does not exist, create it (with ``mode``, ``owner`` and
    ``replication``) in the same step; a missing file then counts as version 0.
    Without it a missing file is ENOENT. One entry instead of Create + CommitContent."""
    mode: int = DEFAULT_FILE_MODE
    owner: str = "root"
    replication: int = DEFAULT_REPLICATION


class AllocateChunkIds(_Command, frozen=True, tag="allocate_chunk_ids"):
    count: int


class RegisterVolume(_Command, frozen=True, tag="register_volume"):
    """Record where a volume server is: a new one (``volume_id`` 0) gets its permanent id,
    a known one (its id) gets its address updated."""

    address: str
    """host:port of its HTTP API, 1 to 300 bytes."""
    volume_id: int = 0


class ReplaceChunkReplicas(_Command, frozen=True, tag="replace_chunk_replicas"):
    """Change which volume servers hold a committed chunk (repair, rebalancing).

    A compare-and-set: applied only if the chunk is still committed and its
    ``volume_ids`` are exactly ``expected`` (else ECONFLICT), so a repair planned
    on a stale picture changes nothing.
    """

    chunk_id: int
    expected: tuple[int, ...]
    volume_ids: tuple[int, ...]
    """At least one, no repeats, each a registered volume."""


Command = (
    Mkdir
    | Create
    | Delete
    | Rename
    | SetAttr
    | CommitContent
    | AllocateChunkIds
    | RegisterVolume
    | ReplaceChunkReplicas
)

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Command] = msgspec.msgpack.Decoder(Command)


def encode_command(command: Command) -> bytes:
    return _encoder.encode(command)


def decode_command(data: bytes) -> Command:
    """The command in ``data``; ``msgspec.DecodeError`` (or its subclass
    ``msgspec.ValidationError``) if the bytes are not one."""
    return _decoder.decode(data)
