"""The transport's wire protocol without sockets: handshake, key derivation, frames.

The golden test rebuilds the handshake and a frame from the module docstring's
formulas with ``hmac``/``struct`` directly, so a change to the bytes on the
wire cannot pass unnoticed.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest

from quorumfs.runtime.transport.protocol import (
    DIALER_TO_LISTENER,
    LISTENER_TO_DIALER,
    AuthenticationError,
    DialerHandshake,
    FrameError,
    FrameOpener,
    FrameSealer,
    Hello,
    ListenerHandshake,
    ProtocolError,
)

SECRET = b"0123456789abcdef-cluster-secret"
NONCE_D = bytes(range(32))
NONCE_L = bytes(range(100, 132))


def handshake(
    dialer_secret: bytes = SECRET,
    listener_secret: bytes = SECRET,
    members: frozenset[int] = frozenset({1}),
    max_frame_size: int = 1 << 20,
) -> tuple[FrameSealer, FrameOpener]:
    """Node 1 dials node 2; returns the dialer's sealer and the listener's opener."""
    dialer = DialerHandshake(dialer_secret, 1, 2)
    listener = ListenerHandshake(
        listener_secret, 2, members.__contains__, max_frame_size=max_frame_size
    )
    auth = dialer.receive_challenge(listener.receive_hello(dialer.hello()))
    accept, opener = listener.receive_auth(auth)
    assert listener.peer_id == 1
    return dialer.receive_accept(accept), opener


def body(frame: bytes) -> bytes:
    return frame[4:]


def test_golden_handshake_and_frame() -> None:
    dialer = DialerHandshake(SECRET, 1, 2, nonce=NONCE_D)
    listener = ListenerHandshake(SECRET, 2, {1}.__contains__, nonce=NONCE_L)

    hello = dialer.hello()
    assert hello == b"QFSt" + b"\x01" + struct.pack("!QQ", 1, 2) + NONCE_D
    assert listener.receive_hello(hello) == NONCE_L
    transcript = hello + NONCE_L

    def prf(label: bytes) -> bytes:
        return hmac.new(
            SECRET, b"quorumfs transport v1: " + label + b"\x00" + transcript, hashlib.sha256
        ).digest()

    auth = dialer.receive_challenge(NONCE_L)
    assert auth == prf(b"dialer proof")
    accept, _ = listener.receive_auth(auth)
    assert accept == prf(b"listener proof")
    sealer = dialer.receive_accept(accept)

    session_key = prf(b"session key")
    for seq, payload in enumerate([b"first", b"", b"third" * 100]):
        tag = hmac.new(
            session_key, b"\x01" + struct.pack("!Q", seq) + payload, hashlib.sha256
        ).digest()[:16]
        expected = struct.pack("!IQ", 8 + len(payload) + 16, seq) + payload + tag
        assert sealer.seal(payload) == expected


def test_frames_round_trip_in_order() -> None:
    sealer, opener = handshake()
    payloads = [b"", b"x", bytes(range(256)) * 40]
    for payload in payloads:
        frame = sealer.seal(payload)
        assert opener.body_size(frame[:4]) == len(frame) - 4
        assert bytes(opener.open(body(frame))) == payload
    assert opener.next_seq == 3


def test_listener_refuses_wrong_secret() -> None:
    with pytest.raises(AuthenticationError, match="wrong cluster secret"):
        handshake(dialer_secret=b"another secret of enough length")


def test_dialer_refuses_listener_without_the_secret() -> None:
    dialer = DialerHandshake(SECRET, 1, 2)
    dialer.receive_challenge(NONCE_L)
    with pytest.raises(AuthenticationError, match="listener failed to prove"):
        dialer.receive_accept(bytes(32))


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        (Hello(7, 2, NONCE_D).encode(), "claims node 7, which is not a member"),
        (Hello(1, 3, NONCE_D).encode(), "dialed node 3, but this is node 2"),
        (Hello(2, 2, NONCE_D).encode(), "claims to be node 2, which is this node"),
        (b"GET / HTTP/1.1\r\n".ljust(53, b"x"), "not a quorumfs master transport"),
        (b"QFSt\x09" + bytes(48), "speaks transport version 9"),
    ],
)
def test_listener_refuses_bad_hello(hello: bytes, reason: str) -> None:
    listener = ListenerHandshake(SECRET, 2, {1}.__contains__)
    with pytest.raises(ProtocolError, match=reason):
        listener.receive_hello(hello)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        DialerHandshake(b"short", 1, 2)


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bad tag", "frame 0: bad MAC"),
        ("tampered payload", "frame 0: bad MAC"),
        ("tampered seq", "frame 0: bad MAC"),
        ("replay", "replayed frame: sequence number 0, expected 1"),
        ("reorder", "out of order: sequence number 1, expected 0"),
        ("other connection", "frame 0: bad MAC"),
        ("other direction", "frame 0: bad MAC"),
    ],
)
def test_opener_detects(name: str, reason: str) -> None:
    sealer, opener = handshake()
    first, second = sealer.seal(b"payload one"), sealer.seal(b"payload two")
    other_sealer, _ = handshake()
    bodies = {
        "bad tag": [body(flip(first, -1))],
        "tampered payload": [body(flip(first, 4 + 8))],
        "tampered seq": [body(flip(first, 4 + 7))],
        "replay": [body(first), body(first)],
        "reorder": [body(second)],
        "other connection": [body(other_sealer.seal(b"payload one"))],
        "other direction": [body(FrameSealer(b"k" * 32, LISTENER_TO_DIALER).seal(b"payload one"))],
    }[name]
    if name == "other direction":
        opener = FrameOpener(b"k" * 32, DIALER_TO_LISTENER, 1 << 20)
    *good, bad = bodies
    for b in good:
        opener.open(b)
    with pytest.raises(FrameError, match=reason):
        opener.open(bad)


def test_length_bounds() -> None:
    _, opener = handshake(max_frame_size=100)
    assert opener.body_size(struct.pack("!I", 24 + 100)) == 124
    with pytest.raises(FrameError, match="payload of 101 bytes exceeds the 100-byte frame limit"):
        opener.body_size(struct.pack("!I", 24 + 101))
    with pytest.raises(FrameError, match="shorter than"):
        opener.body_size(struct.pack("!I", 23))
