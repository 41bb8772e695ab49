"""The nemesis harness's own checks, without processes: each must catch what it claims."""

from __future__ import annotations

import math

import pytest
from harness import Record, TornReadError, _lost_writes, classify, decode, encode
from model import DirModel

from quorumfs.client import (
    AlreadyExists,
    Conflict,
    NotFound,
    OutcomeUnknown,
    QuorumfsError,
    Unavailable,
    WriteFailed,
)
from quorumfs.verify.linearizability import check


def test_values_round_trip_and_an_empty_file_is_the_created_value() -> None:
    assert decode(encode("c1-7")) == "c1-7"
    assert decode(b"") == ""


def test_a_torn_or_mixed_file_is_detected() -> None:
    a, b = encode("c1-1"), encode("c2-2")
    with pytest.raises(TornReadError):
        decode(a[: len(a) - 1])  # cut short
    with pytest.raises(TornReadError):
        decode(a[:1024] + b[1024:])  # one version's first chunk, another's rest
    with pytest.raises(TornReadError):
        decode(b"\0" * len(a))  # zeros where a chunk should be


def test_outcomes_are_classified_conservatively() -> None:
    assert classify("read", NotFound("x"))[0] == "missing"
    assert classify("read", Unavailable("x"))[0] == "failed"  # a read tells nothing
    assert classify("put", OutcomeUnknown("x"))[0] == "unknown"
    assert classify("put", Unavailable("x"))[0] == "unknown"  # its commit is retried
    assert classify("put", TimeoutError())[0] == "unknown"
    assert classify("put", QuorumfsError("x"))[0] == "unknown"
    assert classify("put", WriteFailed("x"))[0] == "failed"
    assert classify("create", Unavailable("x"))[0] == "failed"  # never sent
    assert classify("create", OutcomeUnknown("x"))[0] == "unknown"
    assert classify("create", AlreadyExists("x"))[0] == "exists"
    assert classify("put", Conflict("x"))[0] == "failed"


def _put(value: str, call: float, ret: float, outcome: str = "ok") -> Record:
    record = Record(0, "put", "/k", value, call, ret)
    record.outcome = "ok" if outcome == "ok" else "unknown"
    if outcome != "ok":
        record.ret = math.inf
    return record


def _read(value: str | None, call: float, ret: float) -> Record:
    return Record(1, "read", "/k", value, call, ret, "ok")


def test_a_lost_acknowledged_write_is_reported() -> None:
    records = [_put("a", 0, 1), _put("b", 2, 3)]
    assert _lost_writes(records, "/k", "b") is None
    assert _lost_writes(records, "/k", "a") is not None  # b was acknowledged after a
    assert _lost_writes(records, "/k", None) is not None
    # An unknown write may land at any time after its call: a later final value is fine.
    records.append(_put("c", 0.5, math.inf, "unknown"))
    assert _lost_writes(records, "/k", "c") is None


def _verdict(records: list[Record]) -> bool | None:
    history = [op for r in records if (op := r.operation()) is not None]
    return check(DirModel(), history).ok


def test_the_history_check_fails_a_stale_read_and_accepts_an_unknown_write() -> None:
    assert _verdict([_put("a", 0, 1), _put("b", 2, 3), _read("b", 4, 5)]) is True
    assert _verdict([_put("a", 0, 1), _put("b", 2, 3), _read("a", 4, 5)]) is False
    # A read of a value whose write failed (definitely not applied) is a violation...
    failed = _put("x", 0, 1)
    failed.outcome = "failed"
    assert _verdict([failed, _read("x", 2, 3)]) is False
    # ...but of an unknown one, seen long after its call, is not.
    assert _verdict([_put("x", 0, math.inf, "unknown"), _read("x", 20, 21)]) is True
    # The value read twice, with another write acknowledged in between, is not either.
    assert (
        _verdict(
            [_put("a", 0, 1), _read("a", 2, 3), _put("b", 4, 5), _read("b", 6, 7), _read("a", 8, 9)]
        )
        is False
    )


def test_create_exclusive_is_a_compare_and_set_on_absence() -> None:
    created = Record(2, "create", "/k", None, 2, 3, "ok", swapped=True)
    assert _verdict([created, _read("", 4, 5)]) is True
    assert _verdict([_put("a", 0, 1), created]) is False  # the file existed already
    refused = Record(2, "create", "/k", None, 2, 3, "ok", swapped=False)
    assert _verdict([refused, _read(None, 4, 5)]) is False  # "exists", then missing


def _mv(src: str, dst: str, call: float, ret: float, moved: bool = True) -> Record:
    if ret == math.inf:
        return Record(3, "rename", src, dst, call, ret, "unknown")
    return Record(3, "rename", src, dst, call, ret, "ok", swapped=moved)


def _read_at(key: str, value: str | None, call: float, ret: float) -> Record:
    return Record(1, "read", key, value, call, ret, "ok")


def test_a_rename_moves_the_value_and_leaves_the_source_absent() -> None:
    put = Record(0, "put", "/e0-k0", "a", 0, 1, "ok")
    moved = _mv("/e0-k0", "/e0-k1", 2, 3)
    assert _verdict([put, moved, _read_at("/e0-k1", "a", 4, 5), _read_at("/e0-k0", None, 4, 5)])
    # The value still at the source after an acknowledged rename is a violation...
    assert _verdict([put, moved, _read_at("/e0-k0", "a", 4, 5)]) is False
    # ...as is a rename that says it moved a file that never existed...
    assert _verdict([_mv("/e0-k0", "/e0-k1", 2, 3)]) is False
    # ...or one that found nothing where a file was.
    assert _verdict([put, _mv("/e0-k0", "/e0-k1", 2, 3, moved=False)]) is False
    # A rename whose outcome is unknown may have happened, or not.
    unknown = _mv("/e0-k0", "/e0-k1", 2, math.inf)
    assert _verdict([put, unknown, _read_at("/e0-k1", "a", 4, 5)]) is True
    assert _verdict([put, unknown, _read_at("/e0-k0", "a", 4, 5)]) is True
