"""Write tokens and the volume token: what they allow, and every way one is refused."""

from __future__ import annotations

import pytest

from quorumfs.tokens import TokenError, WriteGrant, WriteTokenKey, volume_token

SECRET = b"0123456789abcdef-cluster-secret"
NOW = 1_800_000_000_000


@pytest.fixture
def key() -> WriteTokenKey:
    return WriteTokenKey(SECRET)


def test_a_signed_token_allows_exactly_its_chunk_and_volume(key: WriteTokenKey) -> None:
    token = key.sign(WriteGrant(chunk_id=7, volume_id=2, expires_unix_ms=NOW + 1000))
    grant = key.verify(token, chunk_id=7, volume_id=2, now_unix_ms=NOW)
    assert grant == WriteGrant(7, 2, NOW + 1000)
    assert token.startswith("v1.")
    assert len(token) < 100


@pytest.mark.parametrize(
    ("chunk_id", "volume_id", "now", "complaint"),
    [
        (8, 2, NOW, "for chunk 7, not 8"),
        (7, 3, NOW, "for volume server 2"),
        (7, 2, NOW + 1000, "expired 0.0 s ago"),
        (7, 2, NOW + 61_000, "expired 60.0 s ago"),
    ],
)
def test_a_token_is_refused_for_another_write_or_after_expiry(
    key: WriteTokenKey, chunk_id: int, volume_id: int, now: int, complaint: str
) -> None:
    token = key.sign(WriteGrant(chunk_id=7, volume_id=2, expires_unix_ms=NOW + 1000))
    with pytest.raises(TokenError, match=complaint):
        key.verify(token, chunk_id=chunk_id, volume_id=volume_id, now_unix_ms=now)


def test_forged_and_malformed_tokens_are_refused(key: WriteTokenKey) -> None:
    genuine = key.sign(WriteGrant(chunk_id=7, volume_id=2, expires_unix_ms=NOW + 1000))
    other_cluster = WriteTokenKey(b"another-secret-of-enough-bytes").sign(
        WriteGrant(chunk_id=7, volume_id=2, expires_unix_ms=NOW + 1000)
    )
    later = WriteTokenKey(SECRET).sign(WriteGrant(7, 2, NOW + 10**9))
    version, payload, mac = genuine.split(".")
    spliced = f"{version}.{later.split('.')[1]}.{mac}"  # a longer expiry under the old MAC
    cases = {
        other_cluster: "signature is not valid",
        spliced: "signature is not valid",
        "": "malformed",
        "v2." + genuine[3:]: "malformed",
        f"{version}.{payload}": "malformed",
        f"{version}.{payload}.!!!": "base64url",
        "x" * 500: "too long",
    }
    for token, complaint in cases.items():
        with pytest.raises(TokenError, match=complaint):
            key.verify(token, chunk_id=7, volume_id=2, now_unix_ms=NOW)


def test_keys_are_derived_per_purpose() -> None:
    assert volume_token(SECRET) == volume_token(SECRET)
    assert volume_token(SECRET) != volume_token(b"another-secret-of-enough-bytes")
    assert len(volume_token(SECRET)) == 40
    assert SECRET.hex()[:20] not in volume_token(SECRET)
    with pytest.raises(ValueError, match="empty"):
        WriteTokenKey(b"")
