"""The namespace: the replicated state machine that the Raft log drives.

Owns the directory tree, each file's attributes and chunk list, and the
counters that hand out inode, chunk and volume ids. Leaves to others:
proposing and committing commands (the runtime), choosing volume servers for
chunks (placement), moving bytes (volume servers), and speaking HTTP (the API,
which maps errors with ``results.HTTP_STATUS_BY_CODE``).

House rules: what makes every master reach byte-identical state.

- Pure. No clock, no randomness, no I/O, nothing from ``quorumfs.raft``. Times
  and owners arrive inside commands; ids come from counters in this state,
  taken when a command is applied, so every master takes the same ones.
- All or nothing. Each ``_apply_*`` method first checks everything that can
  fail, raising ``RefusedError``, and only then mutates, in steps that
  cannot fail. A refused command leaves the state untouched, and the refusal
  is itself a deterministic, replicated outcome.
- Nothing observable depends on dict insertion order, which differs between a
  master that restored a snapshot and one that replayed the log: listings are
  sorted by name, snapshots are written in a canonical order, released chunks
  are sorted by chunk id.
- Everything stored can be encoded. Integers are range-checked to fit
  msgpack's 64 bits and strings to be valid UTF-8 before they are stored, so a
  snapshot can never fail to encode. (Field *types* are the decoder's job:
  ``decode_command`` refuses a wrongly typed entry before it gets here.)

Semantics worth knowing:

- A directory's mtime is set by Mkdir and SetAttr only; adding or removing
  entries does not touch it (Delete and Rename carry no time).
- ``owner`` and ``mode`` are stored, not enforced: permission checks belong to
  the API layer, which knows who is asking.
- Chunks that a Delete, a Rename over a file or a CommitContent drops come back
  as ``released_chunks``, for the volume servers to reclaim. Their ids must not
  be committed again. The namespace remembers the newest ``RELEASED_MEMORY`` of
  them and refuses a commit naming one (ESTALE): that is how a put's commit,
  repeated by a client whose first answer was lost, cannot bring back chunks
  that another write replaced and the volume servers deleted since. A commit
  naming a chunk another file holds is refused with ESTALE too: that file is
  the same commit's first attempt, renamed since.

Memory (target: at most 1 KiB of master RSS per file at 10**6 files): one
compact struct per inode, untracked by the garbage collector (no cycle is
possible: a directory holds its children's ids, not the children); one inode
table ``id -> inode``; directories as ``name -> id`` dicts; no parent pointers
(paths are the only way in, and "is ``dst`` inside ``src``" is a prefix test on
two validated paths); owner strings interned.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, NoReturn, assert_never, overload

import msgspec

from .commands import (
    AllocateChunkIds,
    Chunk,
    Command,
    CommitContent,
    Create,
    Delete,
    Mkdir,
    RegisterVolume,
    Rename,
    ReplaceChunkReplicas,
    SetAttr,
)
from .paths import join_path, split_path
from .results import (
    AllocatedChunkIds,
    ContentCommitted,
    Deleted,
    DirEntry,
    ErrorCode,
    FileChunks,
    Kind,
    NamespaceError,
    RefusedError,
    RegisteredVolume,
    Renamed,
    ReplicasReplaced,
    Result,
    Stat,
    Totals,
)

__all__ = [
    "MAX_ADDRESS_BYTES",
    "MAX_CHUNK_IDS_PER_ALLOCATION",
    "MAX_MODE",
    "MAX_OWNER_BYTES",
    "MAX_REPLICATION",
    "ROOT_INODE_ID",
    "SNAPSHOT_FORMAT",
    "Namespace",
    "ResultValue",
    "SnapshotError",
]

InodeId = int
ChunkId = int

ROOT_INODE_ID: Final = 1
"""The root directory ``/``: it exists in every state and can be neither deleted nor renamed."""
_ROOT_MODE: Final = 0o755
_ROOT_OWNER: Final = "root"
_ROOT_MTIME: Final = 0

MAX_REPLICATION: Final = 16
"""A sanity bound on a file's ``replication``, not a placement rule."""
MAX_CHUNK_IDS_PER_ALLOCATION: Final = 4096
"""At 64 MiB per chunk, 256 GiB of content per ``AllocateChunkIds`` entry."""
MAX_OWNER_BYTES: Final = 255
MAX_ADDRESS_BYTES: Final = 300
RELEASED_MEMORY: Final = 100_000
"""Released chunk ids remembered (the newest): far more than are released during a
client's retry deadline (15 s) at the masters' commit rate."""
MAX_MODE: Final = 0o7777
"""Modes are permission bits only (setuid, setgid, sticky, rwx); the kind is the inode's."""
_MIN_INT64: Final = -(2**63)
_MAX_INT64: Final = 2**63 - 1
_MAX_CRC32: Final = 2**32 - 1

SNAPSHOT_FORMAT: Final = 3
"""Written first in every snapshot; bump it when the image's shape changes."""

ResultValue = (
    Stat
    | Deleted
    | Renamed
    | ContentCommitted
    | AllocatedChunkIds
    | RegisteredVolume
    | ReplicasReplaced
)
"""What a successful command returns."""


# Inodes are array-encoded, tagged 0/1 (one byte each in a snapshot), and untracked by
# the garbage collector (gc=False saves 16 bytes each and is safe: they hold ids,
# strings, ints and chunks, never a reference that could lead back to themselves).


class _Directory(msgspec.Struct, tag=0, array_like=True, gc=False):
    mode: int
    mtime: int
    owner: str
    children: dict[str, InodeId]
    """Name -> inode id. Invariant: every id is in the inode table, and every inode but
    the root is the child of exactly one directory (the namespace is a tree)."""


class _File(msgspec.Struct, tag=1, array_like=True, gc=False):
    mode: int
    mtime: int
    owner: str
    replication: int
    """Invariant: 1 <= replication <= MAX_REPLICATION."""
    size: int = 0
    """Invariant: at least the end of the last chunk."""
    version: int = 0
    """Invariant: 0 when created, +1 per committed content change, never anything else."""
    chunks: tuple[Chunk, ...] = ()
    """Invariant: ordered by offset, not overlapping, chunk ids distinct; the chunk index
    maps each of these chunk ids to this file's inode id and to no other."""


_Inode = _Directory | _File


class _Image(msgspec.Struct, array_like=True):
    """A snapshot. Canonical: inodes in id order, each directory's children in name
    order (the encoder sorts string-keyed maps), so equal states give equal bytes."""

    format: int
    next_inode_id: int
    next_chunk_id: int
    next_volume_id: int
    volumes: list[tuple[int, str]]
    """(volume id, address) of every registered volume server, by id."""
    inode_ids: list[InodeId]
    """Ascending."""
    inodes: list[_Inode]
    """``inodes[i]`` is inode ``inode_ids[i]``."""
    released: list[ChunkId]
    """The remembered released chunk ids, oldest first."""


_image_encoder = msgspec.msgpack.Encoder(order="deterministic")
_image_decoder = msgspec.msgpack.Decoder(_Image)


class SnapshotError(ValueError):
    """The bytes given to ``Namespace.restore`` are not a consistent namespace snapshot."""


class Namespace:
    """The namespace of one master: apply committed commands, answer queries, snapshot.

    Every method is deterministic. ``apply`` returns a ``Result`` holding the
    command's value or the ``NamespaceError`` that refused it (and changed
    nothing); queries return a ``Result`` the same way.
    """

    __slots__ = (
        "_bytes",
        "_chunk_inode",
        "_directories",
        "_files",
        "_inodes",
        "_next_chunk_id",
        "_next_inode_id",
        "_next_volume_id",
        "_owners",
        "_released",
        "_volumes",
    )

    def __init__(self) -> None:
        # The replicated state: exactly what a snapshot holds.
        self._inodes: dict[InodeId, _Inode] = {
            ROOT_INODE_ID: _Directory(_ROOT_MODE, _ROOT_MTIME, _ROOT_OWNER, {})
        }
        self._next_inode_id = ROOT_INODE_ID + 1
        """Invariant: greater than every inode id ever handed out (ids are never reused)."""
        self._next_chunk_id = 1
        """Invariant: greater than every chunk id ever handed out."""
        self._next_volume_id = 1
        """Invariant: greater than every volume id ever handed out."""
        self._released: dict[ChunkId, None] = {}
        """The newest ``RELEASED_MEMORY`` released chunk ids, oldest first (a dict as an
        ordered set). Invariant: none is in the chunk index."""
        self._volumes: dict[int, str] = {}
        """Volume id -> host:port of the volume server. Invariant: exactly the ids
        1 .. next_volume_id - 1 (a volume server, once registered, stays known)."""

        # Derived from the replicated state, rebuilt by ``restore``.
        self._chunk_inode: dict[ChunkId, InodeId] = {}
        """Chunk id -> the file whose content holds it, for every chunk of every file."""
        self._files = 0
        self._directories = 1
        self._bytes = 0
        """Invariant: the sum of every file's size."""
        self._owners: dict[str, str] = {_ROOT_OWNER: _ROOT_OWNER}
        """Interning pool: all inodes with the same owner share one string."""

    # ------------------------------------------------------------------ apply

    @overload
    def apply(self, command: Mkdir | Create | SetAttr) -> Result[Stat]: ...
    @overload
    def apply(self, command: Delete) -> Result[Deleted]: ...
    @overload
    def apply(self, command: Rename) -> Result[Renamed]: ...
    @overload
    def apply(self, command: CommitContent) -> Result[ContentCommitted]: ...
    @overload
    def apply(self, command: AllocateChunkIds) -> Result[AllocatedChunkIds]: ...
    @overload
    def apply(self, command: RegisterVolume) -> Result[RegisteredVolume]: ...
    @overload
    def apply(self, command: ReplaceChunkReplicas) -> Result[ReplicasReplaced]: ...
    @overload
    def apply(self, command: Command) -> Result[ResultValue]: ...

    def apply(self, command: Command) -> Result[Any]:
        """Apply one committed command: its value, or the error that left the state as it was."""
        value: ResultValue
        try:
            # A match rather than a table: mypy checks that every command is handled.
            match command:
                case Mkdir():
                    value = self._apply_mkdir(command)
                case Create():
                    value = self._apply_create(command)
                case Delete():
                    value = self._apply_delete(command)
                case Rename():
                    value = self._apply_rename(command)
                case SetAttr():
                    value = self._apply_setattr(command)
                case CommitContent():
                    value = self._apply_commit_content(command)
                case AllocateChunkIds():
                    value = self._apply_allocate_chunk_ids(command)
                case RegisterVolume():
                    value = self._apply_register_volume(command)
                case ReplaceChunkReplicas():
                    value = self._apply_replace_chunk_replicas(command)
                case _:
                    assert_never(command)
        except RefusedError as refused:
            return Result(error=refused.error)
        return Result(value=value)

    def _apply_mkdir(self, command: Mkdir) -> Stat:
        path = command.path
        components = split_path(path)
        doing = f"cannot create directory {path}"
        _check_attributes(path, doing, mode=command.mode, mtime=command.mtime, owner=command.owner)

        # Walk down while the path exists; stop at the first missing component.
        parent_id = ROOT_INODE_ID
        parent = self._inodes[ROOT_INODE_ID]
        depth = 0
        while depth < len(components):
            if not isinstance(parent, _Directory):
                not_a_directory = join_path(components[:depth])
                _refuse(ErrorCode.ENOTDIR, path, doing, f"{not_a_directory} is a file")
            child_id = parent.children.get(components[depth])
            if child_id is None:
                break
            parent_id, parent = child_id, self._inodes[child_id]
            depth += 1
        if depth == len(components):
            if command.parents and isinstance(parent, _Directory):
                return _stat(parent_id, parent)  # mkdir -p of an existing directory
            what = "directory" if isinstance(parent, _Directory) else "file"
            _refuse(ErrorCode.EEXIST, path, doing, f"a {what} exists there")
        if depth < len(components) - 1 and not command.parents:
            missing = join_path(components[: depth + 1])
            _refuse(
                ErrorCode.ENOENT,
                path,
                doing,
                f"{missing} does not exist (create it first, or set parents)",
            )
        assert isinstance(parent, _Directory)  # the walk refused a file above

        owner = self._intern_owner(command.owner)
        for name in components[depth:]:
            directory = _Directory(command.mode, command.mtime, owner, {})
            parent_id = self._take_inode_id()
            self._inodes[parent_id] = directory
            parent.children[name] = parent_id
            parent = directory
            self._directories += 1
        return _stat(parent_id, parent)

    def _apply_create(self, command: Create) -> Stat:
        path = command.path
        components = split_path(path)
        doing = f"cannot create {path}"
        _check_attributes(path, doing, mode=command.mode, mtime=command.mtime, owner=command.owner)
        _check_replication(command.replication, path, doing)
        if not components:
            code = ErrorCode.EEXIST if command.exclusive else ErrorCode.EISDIR
            _refuse(code, path, doing, "it is the root directory")
        parent = self._parent_directory(components, path, doing)
        name = components[-1]
        existing_id = parent.children.get(name)
        if existing_id is not None:
            existing = self._inodes[existing_id]
            if command.exclusive:
                _refuse(ErrorCode.EEXIST, path, doing, "it already exists")
            if isinstance(existing, _Directory):
                _refuse(ErrorCode.EISDIR, path, doing, "it is a directory")
            return _stat(existing_id, existing)  # O_CREAT without O_EXCL: left as it is

        owner = self._intern_owner(command.owner)
        file = _File(command.mode, command.mtime, owner, command.replication)
        inode_id = self._take_inode_id()
        self._inodes[inode_id] = file
        parent.children[name] = inode_id
        self._files += 1
        return _stat(inode_id, file)

    def _apply_delete(self, command: Delete) -> Deleted:
        path = command.path
        components = split_path(path)
        doing = f"cannot delete {path}"
        if not components:
            _refuse(ErrorCode.EINVAL, path, doing, "the root directory always exists")
        parent = self._parent_directory(components, path, doing)
        name = components[-1]
        inode_id = parent.children.get(name)
        if inode_id is None:
            _refuse(ErrorCode.ENOENT, path, doing, "it does not exist")
        node = self._inodes[inode_id]
        if isinstance(node, _Directory) and node.children and not command.recursive:
            _refuse(
                ErrorCode.ENOTEMPTY,
                path,
                doing,
                f"the directory holds {_entries(len(node.children))} "
                "(delete its entries first, or set recursive)",
            )

        del parent.children[name]
        files, directories, released = self._drop_subtree(inode_id)
        self._remember_released(released)
        return Deleted(files=files, directories=directories, released_chunks=released)

    def _apply_rename(self, command: Rename) -> Renamed:
        src, dst = command.src, command.dst
        src_components = split_path(src)
        dst_components = split_path(dst)
        doing = f"cannot rename {src} to {dst}"
        if not src_components:
            _refuse(ErrorCode.EINVAL, src, doing, "the root directory stays where it is")
        src_parent = self._parent_directory(src_components, src, doing)
        src_name = src_components[-1]
        src_id = src_parent.children.get(src_name)
        if src_id is None:
            _refuse(ErrorCode.ENOENT, src, doing, f"{src} does not exist")
        if src_components == dst_components:
            return Renamed(replaced=False, released_chunks=())  # rename(2) to itself: no-op
        if not dst_components:
            _refuse(ErrorCode.EINVAL, dst, doing, "/ is the root directory")
        moving = self._inodes[src_id]
        if (
            isinstance(moving, _Directory)
            and dst_components[: len(src_components)] == src_components
        ):
            _refuse(ErrorCode.EINVAL, dst, doing, "a directory cannot move into its own subtree")
        dst_parent = self._parent_directory(dst_components, dst, doing)
        dst_name = dst_components[-1]
        replaced_id = dst_parent.children.get(dst_name)
        if replaced_id is not None:
            replaced = self._inodes[replaced_id]
            if isinstance(replaced, _Directory):
                if isinstance(moving, _File):
                    _refuse(ErrorCode.EISDIR, dst, doing, f"{src} is a file, {dst} a directory")
                if replaced.children:  # also the case when dst is an ancestor of src
                    _refuse(
                        ErrorCode.ENOTEMPTY,
                        dst,
                        doing,
                        f"{dst} is a directory holding {_entries(len(replaced.children))}",
                    )
            elif isinstance(moving, _Directory):
                _refuse(ErrorCode.ENOTDIR, dst, doing, f"{src} is a directory, {dst} a file")

        del src_parent.children[src_name]
        released: tuple[Chunk, ...] = ()
        if replaced_id is not None:
            _, _, released = self._drop_subtree(replaced_id)
        dst_parent.children[dst_name] = src_id
        self._remember_released(released)
        return Renamed(replaced=replaced_id is not None, released_chunks=released)

    def _apply_setattr(self, command: SetAttr) -> Stat:
        path = command.path
        components = split_path(path)
        doing = f"cannot set attributes of {path}"
        _check_attributes(path, doing, mode=command.mode, mtime=command.mtime, owner=command.owner)
        inode_id = self._lookup(components, path, doing)

        node = self._inodes[inode_id]
        if command.mode is not None:
            node.mode = command.mode
        if command.mtime is not None:
            node.mtime = command.mtime
        if command.owner is not None:
            node.owner = self._intern_owner(command.owner)
        return _stat(inode_id, node)

    def _apply_commit_content(self, command: CommitContent) -> ContentCommitted:
        path = command.path
        components = split_path(path)
        doing = f"cannot commit content to {path}"
        _check_attributes(path, doing, mtime=command.mtime)
        if not 0 <= command.size <= _MAX_INT64:
            _refuse(ErrorCode.EINVAL, path, doing, f"size {command.size} is not 0 to 2**63-1")
        chunks = tuple(command.chunks)
        _check_chunk_layout(chunks, command.size, path, doing)
        new_file: tuple[_Directory, str] | None = None
        """(parent, name) when the file is created by this commit."""
        if command.create and components:
            parent = self._parent_directory(components, path, doing)
            existing_id = parent.children.get(components[-1])
            if existing_id is None:
                _check_attributes(path, doing, mode=command.mode, owner=command.owner)
                _check_replication(command.replication, path, doing)
                new_file = (parent, components[-1])
        if new_file is None:
            inode_id = self._lookup(components, path, doing)
            file = self._inodes[inode_id]
        else:
            inode_id = self._next_inode_id  # taken below, once nothing can fail
            file = _File(command.mode, command.mtime, command.owner, command.replication)
        if isinstance(file, _Directory):
            _refuse(ErrorCode.EISDIR, path, doing, "it is a directory")
        if command.expected_inode is not None and command.expected_inode != inode_id:
            _refuse(
                ErrorCode.ECONFLICT,
                path,
                doing,
                f"it is inode {inode_id}, not the expected {command.expected_inode}: "
                "the file was replaced (read it again)",
            )
        if command.expected_version is not None and command.expected_version != file.version:
            _refuse(
                ErrorCode.ECONFLICT,
                path,
                doing,
                f"it is at version {file.version}, not the expected "
                f"{command.expected_version} (read it again and retry)",
            )
        for chunk in chunks:
            self._check_chunk_references(chunk, inode_id, path, doing)
        chunks = _keep_current_replicas(chunks, file.chunks, path, doing)

        if new_file is not None:
            parent, name = new_file
            file.owner = self._intern_owner(command.owner)
            self._inodes[self._take_inode_id()] = file
            parent.children[name] = inode_id
            self._files += 1
        kept_ids = {chunk.chunk_id for chunk in chunks}
        released = tuple(
            sorted(
                (old for old in file.chunks if old.chunk_id not in kept_ids),
                key=_chunk_id_of,
            )
        )
        for old in released:
            del self._chunk_inode[old.chunk_id]
        for chunk in chunks:
            self._chunk_inode[chunk.chunk_id] = inode_id
        file.chunks = chunks
        self._bytes += command.size - file.size
        file.size = command.size
        file.mtime = command.mtime
        file.version += 1
        self._remember_released(released)
        return ContentCommitted(stat=_stat(inode_id, file), released_chunks=released)

    def _apply_allocate_chunk_ids(self, command: AllocateChunkIds) -> AllocatedChunkIds:
        if not 1 <= command.count <= MAX_CHUNK_IDS_PER_ALLOCATION:
            _refuse(
                ErrorCode.EINVAL,
                "",
                f"cannot allocate {command.count} chunk ids",
                f"ask for 1 to {MAX_CHUNK_IDS_PER_ALLOCATION} at a time",
            )
        first = self._next_chunk_id
        self._next_chunk_id += command.count
        return AllocatedChunkIds(tuple(range(first, self._next_chunk_id)))

    def _apply_register_volume(self, command: RegisterVolume) -> RegisteredVolume:
        address, volume_id = command.address, command.volume_id
        doing = f"cannot register volume server {address!r}"
        try:
            size = len(address.encode("utf-8"))
        except UnicodeEncodeError:
            size = 0
        if not 1 <= size <= MAX_ADDRESS_BYTES or any(c.isspace() for c in address):
            _refuse(
                ErrorCode.EINVAL,
                "",
                doing,
                f"its address must be 1 to {MAX_ADDRESS_BYTES} bytes of UTF-8 without spaces",
            )
        if volume_id == 0:
            volume_id = self._next_volume_id
            self._next_volume_id += 1
        elif volume_id not in self._volumes:
            _refuse(
                ErrorCode.ENOENT,
                "",
                doing,
                f"volume id {volume_id} was never registered in this cluster (is the "
                "server's directory from another cluster?)",
            )
        self._volumes[volume_id] = address
        return RegisteredVolume(volume_id, address)

    def _apply_replace_chunk_replicas(self, command: ReplaceChunkReplicas) -> ReplicasReplaced:
        chunk_id = command.chunk_id
        doing = f"cannot move the replicas of chunk {chunk_id}"
        inode_id = self._chunk_inode.get(chunk_id)
        if inode_id is None:
            _refuse(ErrorCode.ENOENT, "", doing, "no file holds it (deleted or never committed)")
        file = self._inodes[inode_id]
        assert isinstance(file, _File), "the chunk index names files only"
        position, current = next(
            (i, chunk) for i, chunk in enumerate(file.chunks) if chunk.chunk_id == chunk_id
        )
        if current.volume_ids != tuple(command.expected):
            _refuse(
                ErrorCode.ECONFLICT,
                "",
                doing,
                f"it is on volumes {list(current.volume_ids)}, not the expected "
                f"{list(command.expected)}",
            )
        volume_ids = tuple(command.volume_ids)
        if not volume_ids or len(set(volume_ids)) != len(volume_ids):
            _refuse(ErrorCode.EINVAL, "", doing, "list at least one volume, each once")
        for volume_id in volume_ids:
            if volume_id not in self._volumes:
                _refuse(ErrorCode.EINVAL, "", doing, f"volume {volume_id} is not registered")
        moved = Chunk(current.chunk_id, current.offset, current.size, current.checksum, volume_ids)
        file.chunks = (*file.chunks[:position], moved, *file.chunks[position + 1 :])
        dropped = tuple(sorted(set(current.volume_ids) - set(volume_ids)))
        return ReplicasReplaced(moved, dropped)

    # ---------------------------------------------------------------- queries

    def stat(self, path: str) -> Result[Stat]:
        try:
            inode_id = self._lookup(split_path(path), path, f"cannot stat {path}")
        except RefusedError as refused:
            return Result(error=refused.error)
        return Result(value=_stat(inode_id, self._inodes[inode_id]))

    def list(self, path: str) -> Result[tuple[DirEntry, ...]]:
        """The entries of a directory, sorted by name (code point order)."""
        try:
            doing = f"cannot list {path}"
            inode_id = self._lookup(split_path(path), path, doing)
            directory = self._inodes[inode_id]
            if not isinstance(directory, _Directory):
                _refuse(ErrorCode.ENOTDIR, path, doing, "it is a file")
        except RefusedError as refused:
            return Result(error=refused.error)
        entries = tuple(
            DirEntry(name, _stat(child_id, self._inodes[child_id]))
            for name, child_id in sorted(directory.children.items())
        )
        return Result(value=entries)

    def lookup_chunks(self, path: str) -> Result[FileChunks]:
        """A file's committed content, with the version to pass to a compare-and-set."""
        try:
            doing = f"cannot read {path}"
            inode_id = self._lookup(split_path(path), path, doing)
            file = self._inodes[inode_id]
            if isinstance(file, _Directory):
                _refuse(ErrorCode.EISDIR, path, doing, "it is a directory")
        except RefusedError as refused:
            return Result(error=refused.error)
        return Result(
            value=FileChunks(
                inode=inode_id, version=file.version, size=file.size, chunks=file.chunks
            )
        )

    def totals(self) -> Totals:
        return Totals(files=self._files, directories=self._directories, bytes=self._bytes)

    def inode_of_chunk(self, chunk_id: ChunkId) -> InodeId | None:
        """The file whose committed content holds ``chunk_id``, if any (for volume reports)."""
        return self._chunk_inode.get(chunk_id)

    def chunk(self, chunk_id: ChunkId) -> tuple[Chunk, int] | None:
        """A committed chunk and its file's replication, if any file holds it."""
        return self.chunks_by_id((chunk_id,)).get(chunk_id)

    def chunks_by_id(self, chunk_ids: Iterable[ChunkId]) -> dict[ChunkId, tuple[Chunk, int]]:
        """The committed chunks among ``chunk_ids``, each with its file's replication.

        Each file is scanned once however many of its chunks are asked for, so a
        volume server's full report costs time in proportion to its chunks, even
        when one file has thousands of them."""
        wanted_by_file: dict[InodeId, set[ChunkId]] = {}
        for chunk_id in chunk_ids:
            inode_id = self._chunk_inode.get(chunk_id)
            if inode_id is not None:
                wanted_by_file.setdefault(inode_id, set()).add(chunk_id)
        found: dict[ChunkId, tuple[Chunk, int]] = {}
        for inode_id, wanted in wanted_by_file.items():
            file = self._inodes[inode_id]
            assert isinstance(file, _File), "the chunk index names files only"
            for chunk in file.chunks:
                if chunk.chunk_id in wanted:
                    found[chunk.chunk_id] = (chunk, file.replication)
        return found

    def chunk_ids(self) -> tuple[ChunkId, ...]:
        """Every committed chunk id, in no particular order (a copy: safe to hold)."""
        return tuple(self._chunk_inode)

    def volumes(self) -> dict[int, str]:
        """Every registered volume server: id -> host:port (a copy)."""
        return dict(self._volumes)

    def volume_address(self, volume_id: int) -> str | None:
        return self._volumes.get(volume_id)

    @property
    def next_chunk_id(self) -> ChunkId:
        """Every chunk id below this one has been allocated."""
        return self._next_chunk_id

    # ------------------------------------------------------- snapshot/restore

    def snapshot(self) -> bytes:
        """The whole replicated state; equal states give equal bytes."""
        inode_ids = sorted(self._inodes)
        return _image_encoder.encode(
            _Image(
                format=SNAPSHOT_FORMAT,
                next_inode_id=self._next_inode_id,
                next_chunk_id=self._next_chunk_id,
                next_volume_id=self._next_volume_id,
                volumes=sorted(self._volumes.items()),
                inode_ids=inode_ids,
                inodes=[self._inodes[inode_id] for inode_id in inode_ids],
                released=list(self._released),
            )
        )

    @classmethod
    def restore(cls, data: bytes) -> Namespace:
        """The namespace ``snapshot`` returned ``data`` for, or ``SnapshotError``."""
        try:
            image = _image_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise SnapshotError(f"not a namespace snapshot: {exc}") from exc
        if image.format != SNAPSHOT_FORMAT:
            raise SnapshotError(
                f"snapshot format {image.format} is not the supported {SNAPSHOT_FORMAT}"
            )
        if len(image.inode_ids) != len(image.inodes):
            raise SnapshotError("snapshot has a different number of inode ids and inodes")
        inodes_by_id = dict(zip(image.inode_ids, image.inodes, strict=True))
        if len(inodes_by_id) != len(image.inode_ids):
            raise SnapshotError("snapshot lists an inode id twice")
        if max(inodes_by_id, default=0) >= image.next_inode_id:
            raise SnapshotError("snapshot has an inode id at or past its next inode id")
        namespace = cls()
        namespace._next_inode_id = image.next_inode_id
        namespace._next_chunk_id = image.next_chunk_id
        namespace._next_volume_id = image.next_volume_id
        namespace._volumes = dict(image.volumes)
        namespace._released = dict.fromkeys(image.released)
        if sorted(namespace._volumes) != list(range(1, image.next_volume_id)):
            raise SnapshotError("snapshot's volumes are not exactly those below its next id")
        namespace._adopt_tree(inodes_by_id)
        if any(chunk_id in namespace._chunk_inode for chunk_id in namespace._released):
            raise SnapshotError("snapshot has a released chunk that a file still holds")
        return namespace

    def _adopt_tree(self, inodes_by_id: dict[InodeId, _Inode]) -> None:
        """Take the decoded inodes as this namespace's state, checking that they form one
        tree from the root, and rebuild what derives from them: counts, the chunk index,
        the owner pool.

        The inode table is rebuilt by walking the tree, keyed by the id objects of the
        directories' ``children``: each id is then stored once, not once per place it
        was decoded (28 bytes per inode)."""
        root = inodes_by_id.get(ROOT_INODE_ID)
        if not isinstance(root, _Directory):
            raise SnapshotError("snapshot has no root directory")
        self._inodes = {ROOT_INODE_ID: root}
        self._chunk_inode = {}
        self._files = self._directories = self._bytes = 0
        pending = [ROOT_INODE_ID]
        while pending:
            inode_id = pending.pop()
            node = self._inodes[inode_id]
            node.owner = self._intern_owner(node.owner)
            if isinstance(node, _Directory):
                self._directories += 1
                for child_id in node.children.values():
                    child = inodes_by_id.get(child_id)
                    if child is None or child_id in self._inodes:
                        raise SnapshotError(
                            f"snapshot is not a tree: inode {child_id} is missing "
                            "or has two parents"
                        )
                    self._inodes[child_id] = child
                    pending.append(child_id)
                continue
            self._files += 1
            self._bytes += node.size
            for chunk in node.chunks:
                if not 1 <= chunk.chunk_id < self._next_chunk_id:
                    raise SnapshotError(f"snapshot has unallocated chunk {chunk.chunk_id}")
                if self._chunk_inode.setdefault(chunk.chunk_id, inode_id) != inode_id:
                    raise SnapshotError(f"snapshot has chunk {chunk.chunk_id} in two files")
                for volume_id in chunk.volume_ids:
                    if not 1 <= volume_id < self._next_volume_id:
                        raise SnapshotError(
                            f"snapshot has chunk {chunk.chunk_id} on unknown volume {volume_id}"
                        )
        if len(self._inodes) != len(inodes_by_id):
            raise SnapshotError(
                f"snapshot has {len(inodes_by_id) - len(self._inodes)} inodes outside the tree"
            )

    # ---------------------------------------------------------------- helpers

    def _lookup(self, components: tuple[str, ...], path: str, doing: str) -> InodeId:
        """The inode at ``components``, or ENOENT/ENOTDIR naming the component at fault."""
        inode_id = ROOT_INODE_ID
        for depth, name in enumerate(components):
            node = self._inodes[inode_id]
            if not isinstance(node, _Directory):
                _refuse(
                    ErrorCode.ENOTDIR, path, doing, f"{join_path(components[:depth])} is a file"
                )
            child_id = node.children.get(name)
            if child_id is None:
                missing = join_path(components[: depth + 1])
                _refuse(ErrorCode.ENOENT, path, doing, f"{missing} does not exist")
            inode_id = child_id
        return inode_id

    def _parent_directory(self, components: tuple[str, ...], path: str, doing: str) -> _Directory:
        """The directory that holds (or would hold) the non-root path ``components``."""
        parent_components = components[:-1]
        parent = self._inodes[self._lookup(parent_components, path, doing)]
        if not isinstance(parent, _Directory):
            _refuse(ErrorCode.ENOTDIR, path, doing, f"{join_path(parent_components)} is a file")
        return parent

    def _drop_subtree(self, top_id: InodeId) -> tuple[int, int, tuple[Chunk, ...]]:
        """Forget ``top_id`` and everything under it (already unlinked from its parent):
        (files, directories, released chunks by chunk id)."""
        files = directories = 0
        released: list[Chunk] = []
        pending = [top_id]
        while pending:
            node = self._inodes.pop(pending.pop())
            if isinstance(node, _Directory):
                directories += 1
                pending.extend(node.children.values())
            else:
                files += 1
                self._bytes -= node.size
                for chunk in node.chunks:
                    del self._chunk_inode[chunk.chunk_id]
                released.extend(node.chunks)
        self._files -= files
        self._directories -= directories
        return files, directories, tuple(sorted(released, key=_chunk_id_of))

    def _check_chunk_references(
        self, chunk: Chunk, inode_id: InodeId, path: str, doing: str
    ) -> None:
        """A committed chunk must have been allocated, must not belong to another file,
        and must sit on volumes that exist."""
        chunk_id = chunk.chunk_id
        if not 1 <= chunk_id < self._next_chunk_id:
            _refuse(
                ErrorCode.EINVAL,
                path,
                doing,
                f"chunk {chunk_id} was never allocated (use AllocateChunkIds)",
            )
        if chunk_id in self._released:
            _refuse(
                ErrorCode.ESTALE,
                path,
                doing,
                f"chunk {chunk_id} was committed before and has been released since (this "
                "commit was applied once and then replaced, or it names deleted content)",
            )
        holder = self._chunk_inode.get(chunk_id, inode_id)
        if holder != inode_id:
            # Chunk ids go to one writer, so another file holding this one means this
            # commit was applied once and the file has moved (a rename) since.
            _refuse(
                ErrorCode.ESTALE,
                path,
                doing,
                f"chunk {chunk_id} belongs to inode {holder}; a chunk is part of one file "
                "only (this commit was applied once, and that file was renamed or replaced "
                "since)",
            )
        for volume_id in chunk.volume_ids:
            if not 1 <= volume_id < self._next_volume_id:
                _refuse(
                    ErrorCode.EINVAL,
                    path,
                    doing,
                    f"chunk {chunk_id} is on volume {volume_id}, which was never allocated",
                )

    def _remember_released(self, chunks: tuple[Chunk, ...]) -> None:
        for chunk in chunks:
            self._released[chunk.chunk_id] = None
        while len(self._released) > RELEASED_MEMORY:
            del self._released[next(iter(self._released))]

    def _take_inode_id(self) -> InodeId:
        inode_id = self._next_inode_id
        self._next_inode_id += 1
        return inode_id

    def _intern_owner(self, owner: str) -> str:
        return self._owners.setdefault(owner, owner)


def _stat(inode_id: InodeId, node: _Inode) -> Stat:
    if isinstance(node, _Directory):
        return Stat(
            inode=inode_id,
            kind=Kind.DIRECTORY,
            mode=node.mode,
            mtime=node.mtime,
            owner=node.owner,
            size=0,
            version=0,
            replication=0,
        )
    return Stat(
        inode=inode_id,
        kind=Kind.FILE,
        mode=node.mode,
        mtime=node.mtime,
        owner=node.owner,
        size=node.size,
        version=node.version,
        replication=node.replication,
    )


def _chunk_id_of(chunk: Chunk) -> ChunkId:
    return chunk.chunk_id


def _entries(count: int) -> str:
    return "1 entry" if count == 1 else f"{count} entries"


def _refuse(code: ErrorCode, path: str, doing: str, problem: str) -> NoReturn:
    """Refuse the command: ``doing`` says what could not be done, ``problem`` why."""
    raise RefusedError(NamespaceError(code, f"{doing}: {problem}", path))


def _check_attributes(
    path: str,
    doing: str,
    *,
    mode: int | None = None,
    mtime: int | None = None,
    owner: str | None = None,
) -> None:
    """Attributes that will be stored must be in range (and encodable); ``None`` is unset."""
    if mode is not None and not 0 <= mode <= MAX_MODE:
        _refuse(ErrorCode.EINVAL, path, doing, f"mode {mode:#o} is not 0 to 0o7777")
    if mtime is not None and not _MIN_INT64 <= mtime <= _MAX_INT64:
        _refuse(ErrorCode.EINVAL, path, doing, f"mtime {mtime} does not fit in 64 signed bits")
    if owner is not None:
        try:
            owner_bytes = len(owner.encode("utf-8"))
        except UnicodeEncodeError:
            _refuse(ErrorCode.EINVAL, path, doing, "the owner is not valid UTF-8")
        if not 1 <= owner_bytes <= MAX_OWNER_BYTES or "\0" in owner:
            _refuse(
                ErrorCode.EINVAL,
                path,
                doing,
                f"the owner must be 1 to {MAX_OWNER_BYTES} bytes of UTF-8 without NUL",
            )


def _keep_current_replicas(
    chunks: tuple[Chunk, ...], current: tuple[Chunk, ...], path: str, doing: str
) -> tuple[Chunk, ...]:
    """``chunks`` with each chunk the file already holds carrying its current replica list.

    The list a writer sends for a kept chunk is what it read, and a repair may have
    changed it since (``ReplaceChunkReplicas`` does not bump the file's version): taking
    the writer's would undo the repair. A kept chunk's bytes cannot change either: its
    size and checksum must be the ones committed."""
    if not current:
        return chunks
    held = {chunk.chunk_id: chunk for chunk in current}
    result = []
    for chunk in chunks:
        old = held.get(chunk.chunk_id)
        if old is None:
            result.append(chunk)
            continue
        if (chunk.size, chunk.checksum) != (old.size, old.checksum):
            _refuse(
                ErrorCode.EINVAL,
                path,
                doing,
                f"chunk {chunk.chunk_id} is already part of the file with size {old.size} and "
                f"checksum {old.checksum}; a chunk's content never changes (write a new chunk)",
            )
        if chunk.volume_ids == old.volume_ids:
            result.append(chunk)
        else:
            result.append(
                Chunk(chunk.chunk_id, chunk.offset, chunk.size, chunk.checksum, old.volume_ids)
            )
    return tuple(result)


def _check_replication(replication: int, path: str, doing: str) -> None:
    if not 1 <= replication <= MAX_REPLICATION:
        _refuse(
            ErrorCode.EINVAL,
            path,
            doing,
            f"replication {replication} is not between 1 and {MAX_REPLICATION}",
        )


def _check_chunk_layout(chunks: tuple[Chunk, ...], size: int, path: str, doing: str) -> None:
    """The chunk list on its own: ordered, not overlapping, within ``size``, well formed."""
    end_of_previous = 0
    seen_ids: set[ChunkId] = set()
    for chunk in chunks:
        chunk_id = chunk.chunk_id
        if chunk_id in seen_ids:
            _refuse(ErrorCode.EINVAL, path, doing, f"chunk {chunk_id} is listed twice")
        seen_ids.add(chunk_id)
        if chunk.size < 1:
            _refuse(ErrorCode.EINVAL, path, doing, f"chunk {chunk_id} has size {chunk.size}")
        if chunk.offset < 0:
            _refuse(ErrorCode.EINVAL, path, doing, f"chunk {chunk_id} has a negative offset")
        if chunk.offset < end_of_previous:
            _refuse(
                ErrorCode.EINVAL,
                path,
                doing,
                f"chunk {chunk_id} at offset {chunk.offset} overlaps the chunk before it "
                "(list chunks by increasing offset)",
            )
        end_of_previous = chunk.offset + chunk.size
        if end_of_previous > size:
            _refuse(
                ErrorCode.EINVAL,
                path,
                doing,
                f"chunk {chunk_id} ends at {end_of_previous}, past the file size {size}",
            )
        if not 0 <= chunk.checksum <= _MAX_CRC32:
            _refuse(
                ErrorCode.EINVAL,
                path,
                doing,
                f"chunk {chunk_id} has checksum {chunk.checksum}, not a CRC-32C value",
            )
        if not chunk.volume_ids or len(set(chunk.volume_ids)) != len(chunk.volume_ids):
            _refuse(
                ErrorCode.EINVAL,
                path,
                doing,
                f"chunk {chunk_id} must list at least one volume, each once",
            )
