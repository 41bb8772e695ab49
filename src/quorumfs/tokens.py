"""Credentials derived from the cluster secret: chunk write tokens and the volume token.

Every process of a cluster (masters and volume servers) is given the same
cluster secret. Rather than use it directly, each purpose gets its own key,
``HMAC-SHA256(secret, purpose)``, so a credential for one purpose is useless
for another and the secret itself never travels.

- A **write token** lets one client write one chunk to one volume server
  until an expiry: the leader signs it when it hands out chunk ids
  (``/v1/fs/allocate``), the volume server checks it on ``PUT /chunks/{id}``.
  Format: ``v1.<payload>.<mac>``, both base64url without padding; the payload
  is msgpack ``[chunk_id, volume_id, expires_unix_ms]``, the MAC the first 16
  bytes of HMAC-SHA256 over ``v1.<payload>``. Expiry is on the signing
  leader's wall clock, and the volume server judges it by that clock, not its
  own: each heartbeat answer tells it the leader's time
  (``wire.HeartbeatResponse.leader_time_unix_ms``), it keeps the difference
  from its own clock, and passes its own time plus that difference as
  ``now_unix_ms``. The clocks of masters and volume servers need not agree.
- The **volume token** authorises a volume server's heartbeats to the masters
  (``Authorization: Bearer``): whoever holds it may register a volume server.

Pure: the time is a parameter, nothing is read from the clock here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Final

import msgspec

__all__ = [
    "MIN_SECRET_BYTES",
    "SECRET_ENV",
    "TokenError",
    "WriteGrant",
    "WriteTokenKey",
    "volume_token",
]

SECRET_ENV: Final = "QUORUMFS_CLUSTER_SECRET"
"""Where every process of a cluster (masters, volume servers) reads the shared secret."""
MIN_SECRET_BYTES: Final = 16

_VERSION: Final = "v1"
_MAC_BYTES: Final = 16
_MAX_TOKEN_CHARS: Final = 200


class TokenError(ValueError):
    """A write token that does not authorise the write; the message says why."""


class WriteGrant(msgspec.Struct, frozen=True, array_like=True):
    """What a write token allows: ``chunk_id`` on ``volume_id``, until ``expires_unix_ms``."""

    chunk_id: int
    volume_id: int
    expires_unix_ms: int


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(WriteGrant)


def _derive(secret: bytes, purpose: bytes) -> bytes:
    if not secret:
        raise ValueError("the cluster secret is empty")
    return hmac.new(secret, purpose, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def volume_token(secret: bytes) -> str:
    """The bearer token of volume servers' heartbeats (hex, 40 characters)."""
    return _derive(secret, b"quorumfs volume token v1").hex()[:40]


class WriteTokenKey:
    """Signs and checks chunk write tokens with the key derived from the cluster secret."""

    def __init__(self, secret: bytes) -> None:
        self._key = _derive(secret, b"quorumfs chunk write token v1")

    def sign(self, grant: WriteGrant) -> str:
        body = f"{_VERSION}.{_b64(_encoder.encode(grant))}"
        return f"{body}.{_b64(self._mac(body))}"

    def verify(self, token: str, *, chunk_id: int, volume_id: int, now_unix_ms: int) -> WriteGrant:
        """The grant in ``token`` if it is genuine, unexpired and for exactly this chunk
        on this volume server; ``TokenError`` saying which of those fails otherwise.
        ``now_unix_ms`` is the time on the leader's clock (the volume server's estimate)."""
        if len(token) > _MAX_TOKEN_CHARS:
            raise TokenError("the write token is too long to be one")
        version, _, rest = token.partition(".")
        payload, _, mac = rest.partition(".")
        if version != _VERSION or not payload or not mac:
            raise TokenError("the write token is malformed (expected v1.<payload>.<mac>)")
        try:
            given_mac = _unb64(mac)
            raw = _unb64(payload)
        except (binascii.Error, ValueError):
            raise TokenError("the write token is not valid base64url") from None
        if not hmac.compare_digest(given_mac, self._mac(f"{version}.{payload}")):
            raise TokenError(
                "the write token's signature is not valid (forged, or signed with another "
                "cluster secret)"
            )
        try:
            grant = _decoder.decode(raw)
        except msgspec.MsgspecError:
            raise TokenError("the write token's payload is malformed") from None
        if grant.chunk_id != chunk_id:
            raise TokenError(f"the write token is for chunk {grant.chunk_id}, not {chunk_id}")
        if grant.volume_id != volume_id:
            raise TokenError(
                f"the write token is for volume server {grant.volume_id}, not this one "
                f"({volume_id})"
            )
        if now_unix_ms >= grant.expires_unix_ms:
            late = (now_unix_ms - grant.expires_unix_ms) / 1000
            raise TokenError(
                f"the write token expired {late:.1f} s ago (by the leader's clock, as this "
                "volume server's last heartbeat found it); ask the master for a new one"
            )
        return grant

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest()[:_MAC_BYTES]
