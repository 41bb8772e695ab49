"""Tests for the linearizability checker (quorumfs.verify.linearizability).

Hand-written histories with known verdicts, two property tests (linearizable by
construction, and agreement with a brute-force oracle on small histories), the
failure report, the budget, and a size sanity check.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from itertools import combinations, permutations
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumfs.verify import (
    Cas,
    CasOk,
    CheckResult,
    Get,
    GetOk,
    KVInput,
    KVModel,
    KVOutput,
    Model,
    Operation,
    Put,
    PutOk,
    check,
)

KVOp = Operation[KVInput, KVOutput]
INF = math.inf
MODEL = KVModel()


# --- helpers: ret=None means "outcome unknown" (output None, ret inf) -----------------


def put(key: str, value: str, call: float, ret: float | None, client: int = 0) -> KVOp:
    if ret is None:
        return Operation(client, Put(key, value), None, call, INF)
    return Operation(client, Put(key, value), PutOk(), call, ret)


def get(key: str, value: str | None, call: float, ret: float, client: int = 0) -> KVOp:
    return Operation(client, Get(key), GetOk(value), call, ret)


def cas(  # noqa: PLR0917 - positional like the other helpers, so histories read as tables
    key: str,
    expected: str | None,
    new: str,
    swapped: bool | None,
    call: float,
    ret: float | None,
    client: int = 0,
) -> KVOp:
    if ret is None or swapped is None:
        assert ret is None and swapped is None
        return Operation(client, Cas(key, expected, new), None, call, INF)
    return Operation(client, Cas(key, expected, new), CasOk(swapped), call, ret)


def ok(history: Sequence[KVOp]) -> bool | None:
    return check(MODEL, history).ok


def replay(model: Model[Any, Any, Any], ops: Sequence[Operation[Any, Any]]) -> bool:
    """Whether ``ops`` in this order are accepted by ``model`` (over sets of states)."""
    states = {model.init()}
    for op in ops:
        states = {s2 for s in states for s2 in model.step(s, op.input, op.output)}
        if not states:
            return False
    return True


def respects_real_time(order: Sequence[Operation[Any, Any]]) -> bool:
    """No operation is placed after one that was called strictly after it returned."""
    return all(
        not (later.ret < earlier.call)
        for i, earlier in enumerate(order)
        for later in order[i + 1 :]
    )


class WholeStore(Model[tuple[tuple[str, str], ...], KVInput, KVOutput]):
    """The KV store as one object (state: every key's value), with no partitioning: an
    oracle for checking ``KVModel``'s per-key partitioning against."""

    def init(self) -> tuple[tuple[str, str], ...]:
        return ()

    def step(
        self, state: tuple[tuple[str, str], ...], input: KVInput, output: KVOutput | None
    ) -> list[tuple[tuple[str, str], ...]]:
        store = dict(state)
        after = []
        for value in MODEL.step(store.get(input.key), input, output):
            changed = {**store, input.key: value} if value is not None else store
            after.append(tuple(sorted(changed.items())))
        return after


WHOLE_STORE = WholeStore()


def brute_force(model: Model[Any, Any, Any], history: Sequence[Operation[Any, Any]]) -> bool:
    """Herlihy-Wing by enumeration: some completion (pending ops kept or dropped) has a
    legal sequential order that respects real time."""
    done = [op for op in history if op.ret != INF]
    pending = [op for op in history if op.ret == INF]
    for r in range(len(pending) + 1):
        for kept in combinations(pending, r):
            for order in permutations(done + list(kept)):
                if respects_real_time(order) and replay(model, order):
                    return True
    return False


# --- linearizable histories -----------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    assert ok([]) is True


def test_sequential_history() -> None:
    h = [
        get("x", None, 0, 1),
        put("x", "a", 2, 3),
        get("x", "a", 4, 5),
        cas("x", "a", "b", True, 6, 7),
        cas("x", "a", "c", False, 8, 9),
        get("x", "b", 10, 11),
    ]
    assert ok(h) is True


def test_sequential_history_with_a_wrong_read_is_not_linearizable() -> None:
    h = [put("x", "a", 0, 1), put("x", "b", 2, 3), get("x", "a", 4, 5)]
    assert ok(h) is False


@pytest.mark.parametrize("seen", ["a", "b"])
def test_read_after_concurrent_writes_may_see_either(seen: str) -> None:
    h = [
        put("x", "a", 0, 10, client=1),
        put("x", "b", 0, 10, client=2),
        get("x", seen, 11, 12, client=3),
    ]
    assert ok(h) is True


def test_reads_during_concurrent_writes_may_see_old_then_each_new_value() -> None:
    h = [
        put("x", "a", 0, 10, client=1),
        put("x", "b", 0, 10, client=2),
        get("x", None, 1, 2, client=3),
        get("x", "b", 3, 4, client=3),
        get("x", "a", 5, 6, client=3),
    ]
    assert ok(h) is True


def test_a_value_cannot_come_back_once_overwritten() -> None:
    h = [
        put("x", "a", 0, 10, client=1),
        put("x", "b", 0, 10, client=2),
        get("x", "a", 1, 2, client=3),
        get("x", "b", 3, 4, client=3),
        get("x", "a", 5, 6, client=3),
    ]
    assert ok(h) is False


def test_unknown_write_never_observed_is_accepted() -> None:
    h = [
        put("x", "a", 0, 1),
        put("x", "b", 2, None, client=1),
        get("x", "a", 3, 4),
        get("x", "a", 100, 101),
    ]
    assert ok(h) is True


def test_unknown_write_observed_later_is_accepted() -> None:
    h = [
        put("x", "a", 0, 1),
        put("x", "b", 2, None, client=1),
        get("x", "a", 3, 4),
        get("x", "b", 100, 101),
        get("x", "b", 102, 103),
    ]
    assert ok(h) is True


def test_unknown_write_cannot_be_observed_before_it_was_called() -> None:
    h = [get("x", "b", 0, 1), put("x", "b", 2, None)]
    assert ok(h) is False


def test_unknown_write_takes_effect_at_most_once() -> None:
    h = [
        put("x", "a", 0, 1),
        put("x", "b", 2, None, client=1),
        get("x", "b", 3, 4),
        get("x", "a", 5, 6),
    ]
    assert ok(h) is False


def test_many_unknown_ops_and_unknown_cas() -> None:
    h = [
        cas("x", None, "a", None, 0, None, client=1),
        cas("x", None, "b", None, 0, None, client=2),
        put("x", "c", 0, None, client=3),
        get("x", None, 1, 2),
        get("x", "b", 3, 4),
        get("x", "c", 5, 6),
    ]
    assert ok(h) is True
    # "a" can only be installed from absent, which is gone once "b" was read.
    assert ok([*h, get("x", "a", 7, 8)]) is False


def test_unknown_output_with_known_return_must_take_effect_before_it() -> None:
    unrecorded: KVOp = Operation(0, Put("x", "a"), None, 0, 1)  # finished at 1, reply lost
    assert ok([unrecorded, get("x", None, 2, 3)]) is False
    assert ok([unrecorded, get("x", "a", 2, 3)]) is True


def test_cas_race_exactly_one_wins() -> None:
    base = [put("x", "v0", 0, 1)]
    race = [
        cas("x", "v0", "a", True, 2, 10, client=1),
        cas("x", "v0", "b", False, 2, 10, client=2),
    ]
    assert ok([*base, *race, get("x", "a", 11, 12)]) is True
    assert ok([*base, *race, get("x", "b", 11, 12)]) is False


def test_two_successful_cas_with_the_same_expected_value() -> None:
    h = [
        put("x", "v0", 0, 1),
        cas("x", "v0", "a", True, 2, 10, client=1),
        cas("x", "v0", "b", True, 2, 10, client=2),
    ]
    assert ok(h) is False


def test_create_exclusive_race_where_both_fail() -> None:
    h = [
        cas("x", None, "a", False, 0, 10, client=1),
        cas("x", None, "b", False, 0, 10, client=2),
    ]
    assert ok(h) is False


def test_create_exclusive_race_one_winner() -> None:
    h = [
        cas("x", None, "a", False, 0, 10, client=1),
        cas("x", None, "b", True, 0, 10, client=2),
        get("x", "b", 11, 12),
    ]
    assert ok(h) is True


# --- non-linearizable histories -------------------------------------------------------


def test_stale_read_after_completed_write() -> None:
    h = [put("x", "a", 0, 1), get("x", None, 2, 3)]
    assert ok(h) is False


def test_reads_observe_two_writes_in_reverse_order() -> None:
    # Both writes are concurrent with each other and with the reads, but once one
    # reader has seen the new value a later read cannot see the old one again.
    h = [
        put("x", "a", 0, 1),
        put("x", "b", 2, 20, client=1),
        get("x", "b", 3, 4, client=2),
        get("x", "a", 5, 6, client=3),
    ]
    assert ok(h) is False


def test_read_of_a_value_never_written() -> None:
    h = [put("x", "a", 0, 10), get("x", "zzz", 2, 3)]
    assert ok(h) is False


def test_read_of_a_value_written_only_to_another_key() -> None:
    h = [put("y", "a", 0, 10), get("x", "a", 2, 3)]
    assert ok(h) is False


# --- classic register cases, written out by hand --------------------------------------
# A single register, times in the style of the Porcupine/Knossos examples.


def test_classic_register_read_overlapping_write_sees_old_or_new() -> None:
    # put(100) spans [0, 100]; one read in [25, 75] sees the new value and another in
    # [30, 60] sees the old one: linearize read-old, put, read-new.
    h = [
        put("r", "100", 0, 100, client=0),
        get("r", "100", 25, 75, client=1),
        get("r", None, 30, 60, client=2),
    ]
    assert ok(h) is True


def test_classic_register_new_then_old_is_a_violation() -> None:
    # The read that sees the new value *returns* (30) before the read that sees the old
    # value is *called* (40): no point inside the write's interval explains both.
    h = [
        put("r", "200", 0, 100, client=0),
        get("r", "200", 10, 30, client=1),
        get("r", None, 40, 90, client=2),
    ]
    assert ok(h) is False


def test_classic_herlihy_wing_register_history() -> None:
    # Two writers and two readers in a chain of overlaps; every read is explained by
    # some order of the writes inside their intervals.
    h = [
        put("r", "0", 0, 2, client=0),
        put("r", "1", 3, 8, client=1),
        put("r", "2", 4, 10, client=2),
        get("r", "2", 5, 7, client=3),
        get("r", "1", 9, 12, client=0),
    ]
    assert ok(h) is True
    # ...but not if the later read goes back to a value both writes superseded.
    assert ok([*h[:4], get("r", "0", 11, 12, client=0)]) is False


# --- time boundaries ------------------------------------------------------------------


def test_touching_intervals_count_as_concurrent() -> None:
    # put returns at 5 and the get is called at 5: either order is allowed.
    assert ok([put("x", "a", 0, 5), get("x", None, 5, 8)]) is True


def test_strictly_separated_intervals_are_ordered() -> None:
    assert ok([put("x", "a", 0, 5), get("x", None, 6, 8)]) is False


def test_instantaneous_operations() -> None:
    assert ok([put("x", "a", 1, 1), get("x", "a", 1, 1)]) is True
    assert ok([put("x", "a", 1, 1), get("x", None, 2, 2)]) is False


def test_float_seconds_work_like_ticks() -> None:
    h = [put("x", "a", 0.25, 0.5), get("x", None, 0.5000001, 0.75)]
    assert ok(h) is False


# --- malformed input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        Operation(0, Get("x"), GetOk(None), 5, 4),  # returns before its call
        Operation(0, Get("x"), GetOk(None), INF, INF),  # never called
        Operation(0, Get("x"), GetOk(None), math.nan, 1),
        Operation(0, Get("x"), GetOk(None), 0, INF),  # a known output needs a return
    ],
)
def test_malformed_operations_are_rejected(bad: KVOp) -> None:
    with pytest.raises(ValueError):
        check(MODEL, [bad])


def test_reply_of_the_wrong_kind_is_a_recording_bug() -> None:
    mixed_up: KVOp = Operation(0, Put("x", "a"), GetOk("a"), 0, 1)
    with pytest.raises(TypeError):
        check(MODEL, [mixed_up])


def test_max_steps_must_be_positive() -> None:
    with pytest.raises(ValueError):
        check(MODEL, [], max_steps=0)


# --- partitions, the report and the budget --------------------------------------------


def failing_history() -> list[KVOp]:
    return [
        put("good", "g1", 0, 1, client=1),
        get("good", "g1", 2, 3, client=1),
        put("bad", "b1", 0, 2, client=2),
        put("bad", "b2", 3, 4, client=2),
        get("bad", "b1", 5, 6, client=3),  # stale
        get("good", "g1", 7, 8, client=1),
    ]


def test_failure_names_the_failing_partition_and_its_operations() -> None:
    history = failing_history()
    result = check(MODEL, history)
    assert result.ok is False
    assert result.partition_index == 1  # "good" is partition 0, "bad" partition 1
    assert [op.input.key for op in result.failing] == ["bad"] * 3
    assert [op.call for op in result.failing] == sorted(op.call for op in result.failing)
    assert {id(op) for op in result.failing} == {id(op) for op in history if op.input.key == "bad"}


def test_longest_prefix_is_a_valid_partial_linearization() -> None:
    result = check(MODEL, failing_history())
    prefix = result.longest_prefix
    assert [op.input for op in prefix] == [Put("bad", "b1"), Put("bad", "b2")]
    assert replay(MODEL, prefix)
    assert respects_real_time(prefix)


def test_explain_reports_the_failing_keys_operations() -> None:
    result = check(MODEL, failing_history())
    text = result.explain(MODEL)
    assert "NOT linearizable" in text
    assert "partition 1" in text
    for line in ("put('bad', 'b1') -> ok", "put('bad', 'b2') -> ok", "get('bad') -> 'b1'"):
        assert line in text
    assert "'good'" not in text
    # The stale read is the one that could not be placed.
    tail = text.split("could not place", 1)[1]
    assert "get('bad') -> 'b1'" in tail
    assert "put('bad'" not in tail
    # The state after each placed operation is shown.
    assert "=> 'b2'" in text


def test_explain_of_a_linearizable_history() -> None:
    assert check(MODEL, [put("x", "a", 0, 1)]).explain(MODEL) == "linearizable"


def test_explain_shows_unknown_outcomes_and_infinite_returns() -> None:
    h = [put("x", "a", 0, None), get("x", "b", 1, 2)]
    text = check(MODEL, h).explain(MODEL)
    assert "[0, inf] put('x', 'a') -> ? (unknown)" in text


def test_budget_exhausted_gives_up() -> None:
    h = [put("x", str(i), 0, 100, client=i) for i in range(8)]
    h.append(get("x", "nope", 101, 102))
    result = check(MODEL, h, max_steps=10)
    assert result.ok is None
    assert result.partition_index == 0
    assert len(result.failing) == 9
    assert "gave up" in result.explain(MODEL)
    assert check(MODEL, h).ok is False


def test_a_definite_failure_beats_an_exhausted_budget() -> None:
    hard = [put("x", str(i), 0, 100, client=i) for i in range(8)]
    hard.append(get("x", "nope", 101, 102))
    broken = [put("y", "a", 0, 1), get("y", None, 2, 3)]
    result = check(MODEL, [*hard, *broken], max_steps=10)
    assert result.ok is False
    assert result.partition_index == 1


def test_memoization_collapses_equivalent_orders() -> None:
    # Ten concurrent writes of the same value: 10! orders but only 2**10 sets of
    # placed writes, all with the same state. Step counts are deterministic, so a
    # budget far below 10! is a precise test that equivalent orders are cut off.
    h = [put("x", "a", 0, 100, client=i) for i in range(10)]
    h.append(get("x", "b", 101, 102))
    assert check(MODEL, h, max_steps=10_000).ok is False


def test_a_generous_budget_changes_nothing() -> None:
    assert check(MODEL, failing_history(), max_steps=10_000).ok is False
    assert check(MODEL, failing_history()[:2], max_steps=10_000).ok is True


# --- a nondeterministic model (the search runs over sets of states) -------------------


class LossyRegister(Model[int, tuple[str, int], int]):
    """A register whose acknowledged writes may be lost: ("w", v) leads to v or keeps
    the old value; ("r", 0) must observe the current value."""

    def init(self) -> int:
        return 0

    def step(self, state: int, input: tuple[str, int], output: int | None) -> list[int]:
        kind, value = input
        if kind == "w":
            return [value, state]
        return [state] if output is None or output == state else []


def reg(kind: str, value: int, output: int | None, call: float, ret: float) -> Operation[Any, Any]:
    return Operation(0, (kind, value), output, call, ret)


def test_nondeterministic_step_keeps_every_possible_state() -> None:
    lossy = LossyRegister()
    w = reg("w", 1, 0, 0, 1)
    assert check(lossy, [w, reg("r", 0, 1, 2, 3), reg("r", 0, 1, 4, 5)]).ok is True
    assert check(lossy, [w, reg("r", 0, 0, 2, 3), reg("r", 0, 0, 4, 5)]).ok is True
    # Once a read saw the write, the "lost" branch is gone.
    result = check(lossy, [w, reg("r", 0, 1, 2, 3), reg("r", 0, 0, 4, 5)])
    assert result.ok is False
    assert "('r', 0) -> 0" in result.explain(lossy)  # the default describe()


class WriteOnce(Model[str | None, str, bool]):
    """A cell that can be written once: a write to a full cell cannot happen at all."""

    def init(self) -> str | None:
        return None

    def step(self, state: str | None, input: str, output: bool | None) -> list[str | None]:
        return [input] if state is None else []


def test_pending_operations_may_be_dropped() -> None:
    # The unknown write of "a" cannot be linearized anywhere (before "b" it blocks the
    # write of "b"; after it, the cell is full), so the only explanation is that it
    # never happened, which is allowed for an operation that never returned.
    once = WriteOnce()
    h: list[Operation[str, bool]] = [
        Operation(1, "a", None, 0, INF),
        Operation(2, "b", True, 1, 2),
    ]
    assert check(once, h).ok is True
    # Had it returned, it would have to be placed, and that is impossible.
    assert check(once, [Operation(1, "a", None, 0, 3), h[1]]).ok is False


# --- property: linearizable by construction -------------------------------------------

VALUES = ["a", "b", "c"]
NEVER_WRITTEN = "never-written"


def sequential_history(
    rng: random.Random, n_ops: int, keys: Sequence[str], spread: int, pending_rate: float
) -> list[KVOp]:
    """Run ``n_ops`` random operations one at a time against a dict; op ``i`` takes
    effect at time ``10 * i``, and its interval is then widened around that point by up
    to ``spread`` on each side. Each interval contains its linearization point, so the
    history is linearizable by construction. Some writes get an unknown outcome (ret
    inf); half of those are applied to the dict and half are not."""
    store: dict[str, str] = {}
    history: list[KVOp] = []
    for i in range(n_ops):
        point = 10 * i
        call = point - rng.randint(0, spread)
        ret = point + rng.randint(0, spread)
        client = i % 7
        key = rng.choice(keys)
        kind = rng.choice(["put", "get", "cas"])
        pending = kind != "get" and rng.random() < pending_rate
        if kind == "get":
            history.append(get(key, store.get(key), call, ret, client))
            continue
        applied = not pending or rng.random() < 0.5
        if kind == "put":
            value = rng.choice(VALUES)
            if applied:
                store[key] = value
            history.append(put(key, value, call, None if pending else ret, client))
        else:
            expected = rng.choice([None, *VALUES])
            new = rng.choice(VALUES)
            swapped = store.get(key) == expected
            if applied and swapped:
                store[key] = new
            if pending:
                history.append(cas(key, expected, new, None, call, None, client))
            else:
                history.append(cas(key, expected, new, swapped, call, ret, client))
    rng.shuffle(history)  # the checker must not rely on the input order
    return history


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_ops=st.integers(1, 40),
    n_keys=st.integers(1, 3),
    spread=st.integers(0, 30),
    pick=st.integers(0, 10**6),
)
def test_sequential_executions_are_linearizable_and_corruption_is_caught(
    seed: int, n_ops: int, n_keys: int, spread: int, pick: int
) -> None:
    rng = random.Random(seed)
    keys = [f"k{j}" for j in range(n_keys)]
    history = sequential_history(rng, n_ops, keys, spread, pending_rate=0.15)
    assert check(MODEL, history).ok is True

    reads = [i for i, op in enumerate(history) if isinstance(op.input, Get)]
    if not reads:
        return
    victim = reads[pick % len(reads)]
    op = history[victim]
    corrupted = [*history]
    corrupted[victim] = Operation(op.client_id, op.input, GetOk(NEVER_WRITTEN), op.call, op.ret)
    result = check(MODEL, corrupted)
    assert result.ok is False
    assert any(o is corrupted[victim] for o in result.failing)
    assert [o.call for o in result.failing] == sorted(o.call for o in result.failing)
    assert corrupted[victim] not in result.longest_prefix


# --- property: agreement with a brute-force oracle on small histories ------------------


@st.composite
def small_histories(draw: st.DrawFn) -> list[KVOp]:
    n = draw(st.integers(1, 6))
    history: list[KVOp] = []
    for client in range(n):
        key = draw(st.sampled_from(["x", "y"]))
        call = draw(st.integers(0, 8))
        ret: int | None = call + draw(st.integers(0, 6))
        value = draw(st.sampled_from(["a", "b"]))
        kind = draw(st.sampled_from(["put", "get", "get", "cas"]))
        if kind != "get" and draw(st.integers(0, 4)) == 0:
            ret = None
        if kind == "put":
            history.append(put(key, value, call, ret, client))
        elif kind == "get":
            seen = draw(st.sampled_from([None, "a", "b"]))
            history.append(get(key, seen, call, call if ret is None else ret, client))
        else:
            expected = draw(st.sampled_from([None, "a", "b"]))
            swapped = None if ret is None else draw(st.booleans())
            history.append(cas(key, expected, value, swapped, call, ret, client))
    return history


@settings(max_examples=300, deadline=None)
@given(history=small_histories())
def test_agrees_with_brute_force(history: list[KVOp]) -> None:
    result = check(MODEL, history)
    assert result.ok is brute_force(WHOLE_STORE, history)
    assert check(WHOLE_STORE, history).ok is result.ok
    if result.ok is False:
        assert_longest_prefix_is_maximal(MODEL, result)


def assert_longest_prefix_is_maximal(
    model: Model[Any, Any, Any], result: CheckResult[Any, Any]
) -> None:
    """The reported linearization is valid and no unplaced operation can extend it (the
    search visits every reachable configuration before it says no, so the deepest one
    is a dead end)."""
    prefix = result.longest_prefix
    assert replay(model, prefix)
    assert respects_real_time(prefix)
    placed = {id(op) for op in prefix}
    unplaced = [op for op in result.failing if id(op) not in placed]
    deadline = min(op.ret for op in unplaced)  # a completed one is always among them
    assert deadline != INF
    for op in unplaced:
        if op.call <= deadline:  # it could come next in real-time order
            assert not replay(model, [*prefix, op]), op


@settings(max_examples=100, deadline=None)
@given(
    writes=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 4)), min_size=1, max_size=3),
    reads=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 4), st.integers(0, 2)), max_size=3),
)
def test_nondeterministic_model_agrees_with_brute_force(
    writes: list[tuple[int, int]], reads: list[tuple[int, int, int]]
) -> None:
    lossy = LossyRegister()
    history = [reg("w", i + 1, 0, call, call + d) for i, (call, d) in enumerate(writes)]
    history += [reg("r", 0, seen, call, call + d) for call, d, seen in reads]
    result = check(lossy, history)
    assert result.ok is brute_force(lossy, history)
    if result.ok is False:
        assert_longest_prefix_is_maximal(lossy, result)


# --- size sanity: a simulator-sized history is not pathological -----------------------


def test_two_thousand_ops_over_twenty_keys() -> None:
    rng = random.Random(20240611)
    keys = [f"key-{j}" for j in range(20)]
    history = sequential_history(rng, 2000, keys, spread=60, pending_rate=0.02)
    result: CheckResult[KVInput, KVOutput] = check(MODEL, history)
    assert result.ok is True
    # One stale read in one key is still found at this size: after every completed
    # operation, a put completes and then a read finds the key absent (nothing deletes).
    end = max(op.ret for op in history if op.ret != INF)
    stale = [put("key-7", "z", end + 1, end + 2), get("key-7", None, end + 3, end + 4)]
    assert check(MODEL, [*history, *stale]).ok is False
