"""The masters' transport: Raft messages over authenticated TCP connections.

``RaftTransport`` (tcp.py) carries ``quorumfs.raft.Message`` values between
masters: one outbound connection per peer fed by a bounded queue that never
blocks the caller, reconnection with jittered backoff, and inbound
connections that are authenticated before a single message is delivered.
protocol.py holds the wire protocol without any I/O (handshake, key
derivation, frames) and documents it together with the threats it handles
and the ones it does not: notably, frames are authenticated, NOT encrypted.
"""

from .protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    MIN_SECRET_SIZE,
    AuthenticationError,
    FrameError,
    ProtocolError,
)
from .tcp import MAX_PENDING_HANDSHAKES, Address, ListenError, PeerConnectionState, RaftTransport

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_PENDING_HANDSHAKES",
    "MIN_SECRET_SIZE",
    "Address",
    "AuthenticationError",
    "FrameError",
    "ListenError",
    "PeerConnectionState",
    "ProtocolError",
    "RaftTransport",
]
