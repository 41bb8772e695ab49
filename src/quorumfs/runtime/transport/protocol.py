"""The masters' wire protocol, without I/O: handshake, key derivation and frames.

This module owns the bytes: what each side sends, how the keys are derived,
how a frame is sealed and checked. It does no I/O and reads no clock, so every
rule here is testable without a socket; tcp.py pumps the bytes and owns the
timeouts. Errors split as in h11: a ``ProtocolError`` means the *peer* broke
the protocol (close the connection, log the reason); ``ValueError`` and
``RuntimeError`` mean *we* misused this module.

Connections
===========

A connection carries Raft messages one way only, from the side that dialed
(the *dialer*, node D) to the side that accepted (the *listener*, node L).
Every node dials each of its peers, so a pair of masters uses two
connections, one per direction. After the handshake the listener sends
nothing more; the dialer treats any byte from the listener as a protocol
error and end-of-file as the connection going away.

Handshake
=========

All integers are unsigned big-endian; ``||`` is concatenation; every message
has a fixed size, so there is no length prefix during the handshake::

    1. HELLO      D -> L   "QFSt" | version:u8 (=1) | D:u64 | L:u64 | nonce_D:32    (53 bytes)
    2. CHALLENGE  L -> D   nonce_L:32                                               (32 bytes)
    3. AUTH       D -> L   proof_D = HMAC(secret, LABEL_DIALER   || T)              (32 bytes)
    4. ACCEPT     L -> D   proof_L = HMAC(secret, LABEL_LISTENER || T)              (32 bytes)

    T           = HELLO (all 53 bytes) || nonce_L      the transcript
    session_key = HMAC(secret, LABEL_SESSION || T)
    HMAC        = HMAC-SHA256; nonces come from ``secrets.token_bytes``

The labels are distinct fixed strings (``LABEL_*`` below): the same keyed PRF
is used for three purposes and the labels keep them apart (domain separation,
the "expand" step of HKDF). On HELLO the listener checks the magic and version,
that ``L`` is its own id (else the dialer has a stale address) and that ``D``
is a current member other than itself; it refuses (closes without a word)
otherwise. On AUTH it checks ``proof_D`` in constant time. The dialer checks
``proof_L`` the same way, so both sides have proved knowledge of the secret,
and the listener reveals nothing keyed before the dialer has done so.

Frames
======

After ACCEPT the dialer sends frames::

    length:u32 | seq:u64 | payload | tag:16          length = 8 + len(payload) + 16
    tag = HMAC(session_key, direction || seq:u64 || payload)[:16]

``direction`` is one byte: ``0x01`` for dialer-to-listener (the only
direction used today; ``0x02`` is reserved for the other). ``seq`` is 0 for
the first frame of a connection and grows by exactly one per frame. ``payload``
is one ``quorumfs.raft.Message`` encoded with msgspec's msgpack encoder, at
most ``max_frame_size`` bytes (64 MiB unless configured): a longer ``length``
is refused before the body is read. The listener checks, in this order: the
length bounds, the tag (constant time), then ``seq`` against the next
expected number, then that the payload decodes and that the message's ``frm``
is the authenticated dialer and its ``to`` is the listener. Any failure closes
the connection; nothing from a failed frame is delivered.

Threats handled
===============

- Impersonation: joining, or dialing as a member, requires the cluster
  secret; a dialer learns nothing keyed from a listener before proving it.
- Forgery and tampering inside a connection: every frame's tag covers its
  direction, sequence number and payload, under a key only the two ends hold.
- Replay, reordering and deletion inside a connection: ``seq`` must be exactly
  the next one (a deleted frame shows up as a gap, a repeated one as a replay).
- Replay across connections: both nonces are fresh, so a recorded handshake
  or frame fails every tag check on any other connection.
- Reflection: the dialer's and listener's proofs use different labels and
  frames carry a direction byte, so nothing one side sends is valid when
  echoed back, and both node ids are bound into every key.

Not handled
===========

- Confidentiality: frames are NOT encrypted. Anyone on the path can read the
  metadata log (file names, sizes, placement). Run the masters on a trusted
  network or under TLS/WireGuard/IPsec if that matters.
- Denial of service: an attacker on the path can cut or stall connections
  (the core tolerates message loss), and anyone can occupy the listener's
  bounded handshake slots until the handshake timeout.
- Truncation: a connection cut between frames looks like a peer going away.
- Compromise of one member: the secret is shared, so a member that leaks it
  lets the holder impersonate any member. There is no per-node identity and
  no key rotation other than restarting every master with a new secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ACCEPT_SIZE",
    "AUTH_SIZE",
    "CHALLENGE_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "DIALER_TO_LISTENER",
    "FRAME_OVERHEAD",
    "HELLO_SIZE",
    "LENGTH_SIZE",
    "MIN_SECRET_SIZE",
    "AuthenticationError",
    "DialerHandshake",
    "FrameError",
    "FrameOpener",
    "FrameSealer",
    "Hello",
    "ListenerHandshake",
    "ProtocolError",
    "SessionKeys",
    "check_secret",
    "derive_keys",
]

MAGIC: Final = b"QFSt"
VERSION: Final = 1
NONCE_SIZE: Final = 32
PROOF_SIZE: Final = 32
TAG_SIZE: Final = 16
MIN_SECRET_SIZE: Final = 16
DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024 * 1024

LABEL_DIALER: Final = b"quorumfs transport v1: dialer proof\x00"
LABEL_LISTENER: Final = b"quorumfs transport v1: listener proof\x00"
LABEL_SESSION: Final = b"quorumfs transport v1: session key\x00"

DIALER_TO_LISTENER: Final = b"\x01"
LISTENER_TO_DIALER: Final = b"\x02"
"""Reserved: no frame travels from listener to dialer today."""

_HELLO: Final = struct.Struct("!4sBQQ32s")
_LENGTH: Final = struct.Struct("!I")
_SEQ: Final = struct.Struct("!Q")
_U64_MAX: Final = 2**64 - 1

HELLO_SIZE: Final = _HELLO.size
CHALLENGE_SIZE: Final = NONCE_SIZE
AUTH_SIZE: Final = PROOF_SIZE
ACCEPT_SIZE: Final = PROOF_SIZE
LENGTH_SIZE: Final = _LENGTH.size
FRAME_OVERHEAD: Final = _SEQ.size + TAG_SIZE
"""Bytes of a frame's body that are not payload: the sequence number and the tag."""


class ProtocolError(Exception):
    """The peer broke the protocol; ``str(error)`` says how, for the operator's log."""


class AuthenticationError(ProtocolError):
    """A handshake proof did not verify: the other side does not hold our cluster secret."""


class FrameError(ProtocolError):
    """A frame inside an authenticated connection is malformed, forged, replayed or misrouted."""


def check_secret(secret: bytes) -> None:
    """Refuse (locally) a cluster secret too short to resist guessing."""
    if not isinstance(secret, bytes | bytearray):
        raise ValueError("the cluster secret must be bytes")
    if len(secret) < MIN_SECRET_SIZE:
        raise ValueError(
            f"the cluster secret must be at least {MIN_SECRET_SIZE} bytes, got {len(secret)}"
        )


def _check_node_id(name: str, node_id: int) -> None:
    if not 0 < node_id <= _U64_MAX:
        raise ValueError(f"{name} must be a positive 64-bit node id, got {node_id}")


def _nonce(given: bytes | None) -> bytes:
    """``given`` (tests pin nonces) or a fresh random nonce."""
    if given is None:
        return secrets.token_bytes(NONCE_SIZE)
    if len(given) != NONCE_SIZE:
        raise ValueError(f"a nonce is {NONCE_SIZE} bytes, got {len(given)}")
    return bytes(given)


@dataclass(frozen=True)
class Hello:
    """The dialer's opening message: who it is, whom it meant to reach, and its nonce."""

    dialer_id: int
    listener_id: int
    nonce: bytes
    """Invariant: NONCE_SIZE bytes, fresh for every connection."""

    def encode(self) -> bytes:
        return _HELLO.pack(MAGIC, VERSION, self.dialer_id, self.listener_id, self.nonce)

    @staticmethod
    def decode(data: bytes) -> Hello:
        if len(data) != HELLO_SIZE:
            raise ProtocolError(f"HELLO of {len(data)} bytes, expected {HELLO_SIZE}")
        magic, version, dialer_id, listener_id, nonce = _HELLO.unpack(data)
        if magic != MAGIC:
            raise ProtocolError(f"not a quorumfs master transport (first bytes {magic!r})")
        if version != VERSION:
            raise ProtocolError(f"speaks transport version {version}, this master speaks {VERSION}")
        return Hello(dialer_id, listener_id, nonce)


@dataclass(frozen=True)
class SessionKeys:
    """Everything derived from the secret and one connection's transcript."""

    dialer_proof: bytes
    listener_proof: bytes
    session_key: bytes


def derive_keys(secret: bytes, hello: bytes, listener_nonce: bytes) -> SessionKeys:
    """The proofs and the session key for the transcript ``hello || listener_nonce``."""
    transcript = hello + listener_nonce
    return SessionKeys(
        dialer_proof=hmac.digest(secret, LABEL_DIALER + transcript, "sha256"),
        listener_proof=hmac.digest(secret, LABEL_LISTENER + transcript, "sha256"),
        session_key=hmac.digest(secret, LABEL_SESSION + transcript, "sha256"),
    )


class DialerHandshake:
    """The dialer's side: ``hello()``, then ``receive_challenge``, then ``receive_accept``."""

    def __init__(
        self, secret: bytes, node_id: int, peer_id: int, *, nonce: bytes | None = None
    ) -> None:
        check_secret(secret)
        _check_node_id("node_id", node_id)
        _check_node_id("peer_id", peer_id)
        self._secret = bytes(secret)
        self._hello = Hello(node_id, peer_id, _nonce(nonce)).encode()
        self._keys: SessionKeys | None = None
        # Invariant: _keys is set once the challenge has been answered, never before.

    def hello(self) -> bytes:
        return self._hello

    def receive_challenge(self, challenge: bytes) -> bytes:
        """Take the listener's nonce; return AUTH (our proof)."""
        if self._keys is not None:
            raise RuntimeError("receive_challenge called twice")
        if len(challenge) != CHALLENGE_SIZE:
            raise ProtocolError(f"CHALLENGE of {len(challenge)} bytes, expected {CHALLENGE_SIZE}")
        self._keys = derive_keys(self._secret, self._hello, challenge)
        return self._keys.dialer_proof

    def receive_accept(self, accept: bytes) -> FrameSealer:
        """Check the listener's proof; return the sealer for this connection's frames."""
        if self._keys is None:
            raise RuntimeError("receive_accept called before receive_challenge")
        if not hmac.compare_digest(accept, self._keys.listener_proof):
            raise AuthenticationError(
                "the listener failed to prove it holds the cluster secret (wrong cluster secret?)"
            )
        return FrameSealer(self._keys.session_key, DIALER_TO_LISTENER)


class ListenerHandshake:
    """The listener's side: ``receive_hello`` (returns CHALLENGE), then ``receive_auth``.

    ``is_member(node_id)`` says whether a node may connect; it is asked once,
    when HELLO arrives.
    """

    def __init__(
        self,
        secret: bytes,
        node_id: int,
        is_member: Callable[[int], bool],
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        nonce: bytes | None = None,
    ) -> None:
        check_secret(secret)
        _check_node_id("node_id", node_id)
        self._secret = bytes(secret)
        self._node_id = node_id
        self._is_member = is_member
        self._max_frame_size = max_frame_size
        self._nonce = _nonce(nonce)
        self._keys: SessionKeys | None = None
        self.peer_id: int | None = None
        """The id the dialer claimed in HELLO; authenticated only once ``receive_auth`` returns."""

    def receive_hello(self, data: bytes) -> bytes:
        """Check who is calling and whom it wants; return CHALLENGE (our nonce)."""
        if self._keys is not None:
            raise RuntimeError("receive_hello called twice")
        hello = Hello.decode(data)
        if hello.listener_id != self._node_id:
            raise ProtocolError(
                f"dialed node {hello.listener_id}, but this is node {self._node_id} "
                "(does the dialer have a stale address for its peer?)"
            )
        if hello.dialer_id == self._node_id:
            raise ProtocolError(f"claims to be node {hello.dialer_id}, which is this node")
        if not self._is_member(hello.dialer_id):
            raise ProtocolError(f"claims node {hello.dialer_id}, which is not a member")
        self.peer_id = hello.dialer_id
        self._keys = derive_keys(self._secret, data, self._nonce)
        return self._nonce

    def receive_auth(self, proof: bytes) -> tuple[bytes, FrameOpener]:
        """Check the dialer's proof; return ACCEPT (our proof) and the frame opener."""
        if self._keys is None:
            raise RuntimeError("receive_auth called before receive_hello")
        if not hmac.compare_digest(proof, self._keys.dialer_proof):
            raise AuthenticationError(
                f"claims node {self.peer_id} but failed authentication (wrong cluster secret?)"
            )
        opener = FrameOpener(self._keys.session_key, DIALER_TO_LISTENER, self._max_frame_size)
        return self._keys.listener_proof, opener


class FrameSealer:
    """Builds the frames of one direction of one connection, numbering them."""

    def __init__(self, session_key: bytes, direction: bytes) -> None:
        self._mac = hmac.new(session_key, direction, hashlib.sha256)
        self._seq = 0
        # Invariant: _seq is the number the next sealed frame carries; it only grows.

    def seal(self, payload: bytes) -> bytes:
        """The whole frame (length prefix included) carrying ``payload``."""
        head = _SEQ.pack(self._seq)
        mac = self._mac.copy()
        mac.update(head)
        mac.update(payload)
        self._seq += 1
        length = _LENGTH.pack(len(head) + len(payload) + TAG_SIZE)
        return b"".join((length, head, payload, mac.digest()[:TAG_SIZE]))


class FrameOpener:
    """Checks the frames of one direction of one connection, in order.

    Use: ``n = body_size(first 4 bytes)``, read ``n`` bytes, ``open(body)``.
    """

    def __init__(self, session_key: bytes, direction: bytes, max_frame_size: int) -> None:
        if max_frame_size < 1:
            raise ValueError(f"max_frame_size must be positive, got {max_frame_size}")
        self._mac = hmac.new(session_key, direction, hashlib.sha256)
        self._max_frame_size = max_frame_size
        self.next_seq = 0
        """Invariant: the number of frames accepted so far, hence the only acceptable next seq."""

    def body_size(self, length_prefix: bytes) -> int:
        """The size of the body announced by ``length_prefix``, if acceptable."""
        length: int = _LENGTH.unpack(length_prefix)[0]
        if length < FRAME_OVERHEAD:
            raise FrameError(
                f"frame {self.next_seq}: length {length} is shorter than the "
                f"{FRAME_OVERHEAD}-byte sequence number and tag"
            )
        if length - FRAME_OVERHEAD > self._max_frame_size:
            raise FrameError(
                f"frame {self.next_seq}: payload of {length - FRAME_OVERHEAD} bytes exceeds "
                f"the {self._max_frame_size}-byte frame limit"
            )
        return length

    def open(self, body: bytes) -> memoryview:
        """The payload of ``body`` (everything after the length prefix), once verified."""
        if len(body) < FRAME_OVERHEAD:
            raise FrameError(f"frame {self.next_seq}: truncated body of {len(body)} bytes")
        view = memoryview(body)
        mac = self._mac.copy()
        mac.update(view[:-TAG_SIZE])
        if not hmac.compare_digest(mac.digest()[:TAG_SIZE], view[-TAG_SIZE:]):
            raise FrameError(f"frame {self.next_seq}: bad MAC (forged or tampered frame)")
        seq: int = _SEQ.unpack_from(body)[0]
        if seq < self.next_seq:
            raise FrameError(f"replayed frame: sequence number {seq}, expected {self.next_seq}")
        if seq > self.next_seq:
            raise FrameError(
                f"frame out of order: sequence number {seq}, expected {self.next_seq} "
                "(frames were removed or reordered)"
            )
        self.next_seq += 1
        return view[_SEQ.size : -TAG_SIZE]
