"""A linearizability checker for recorded histories of a replicated store.

What this module owns
---------------------
The single verdict "is this concurrent history linearizable with respect to a
sequential specification?", plus a report that says why not. Two callers feed it:
the deterministic Raft simulator (a replicated key-value store with put, get and
compare-and-set: ``KVModel`` below) and the Jepsen-style nemesis harness that
records histories from a real cluster. It is pure: no I/O, no clock, no threads and
no randomness, so the same history always gives the same verdict *and* the same
reported linearization, which keeps simulator failures reproducible from a seed.

The algorithm
-------------
Wing and Gong's backtracking search with Lowe's memoization, in the shape the Go
library Porcupine gives it:

1. **Partition.** Linearizability is local (Herlihy and Wing): a history is
   linearizable iff every per-object sub-history is. ``Model.partition`` splits the
   history (one partition per key for ``KVModel``) and each partition is searched on
   its own, so the exponential part is in the size of a partition, not the history.
2. **Events.** Every operation becomes a call event and a return event; the events,
   sorted by time, form a doubly linked list behind a sentinel head.
3. **Search.** Scan the list from the head. At a *call*, try to linearize that
   operation next: if the model accepts it from the current state and the pair
   (set of linearized operations, state) has not been seen before, push
   (entry, previous state) on a stack, unlink ("lift") the operation's two events and
   restart the scan from the head. Reaching a *return* means that operation is still
   unplaced although it must precede every operation called after it, and every
   candidate before it has been tried: the last choice was wrong, so pop it, relink
   ("unlift") its events, restore the state and carry on scanning after it. An empty
   stack at a return means no linearization exists.
4. **Memoization.** Two search paths that linearize the same set of operations and
   reach the same model state have the same future, so the second is cut off. The set
   is a Python ``int`` used as a bitset (bit ``i`` = operation ``i`` of the partition).

Decisions a reader should know
------------------------------
* **Equal times are concurrent.** Operation A precedes B in real time only if
  ``A.ret < B.call`` strictly. At equal times, call events sort before return events,
  so an operation that returns at ``t`` and one called at ``t`` may be linearized in
  either order. Simulator ticks are coarse (a reply and a new request can land in the
  same tick in either order), so this is the choice that never reports a violation
  the system did not commit; it is also Porcupine's.
* **Unknown outcomes are optional.** An operation with ``ret == math.inf`` (timed out,
  client crashed) has its return event after every finite one. The search succeeds as
  soon as its scan reaches such a return, i.e. once every *completed* operation is
  linearized; a pending operation is linearized only where that explains what others
  observed, and otherwise dropped. That is Herlihy and Wing's definition (a pending
  operation may be completed or removed): an unknown write that nobody observed is
  accepted, and so is one that a later read did observe. A model therefore need not
  model "did not take effect" for an unknown outcome; that case is the dropped one.
* **Unknown output, known return.** ``output is None`` with a finite ``ret`` means the
  operation completed by ``ret`` but its result was not recorded; it must be
  linearized, and ``Model.step`` enumerates the states it could have led to. A known
  output with ``ret == math.inf`` is contradictory and rejected.
* **Nondeterminism.** ``Model.step`` returns a list of states. The search runs over
  *sets* of model states (the powerset construction): after a sequence of operations
  the search holds every state the model could be in, which keeps the search itself
  deterministic and lets the memo cache key on ``(bitset, frozenset of states)``.
* **Budget.** ``max_steps`` bounds the search steps *per partition*. A partition that
  exhausts it is "unknown"; a definite failure in any partition still wins, so the
  verdict is ``False`` if any partition fails, else ``None`` if any gave up, else
  ``True``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "Cas",
    "CasOk",
    "CheckResult",
    "Get",
    "GetOk",
    "KVInput",
    "KVModel",
    "KVOutput",
    "KVState",
    "Model",
    "Operation",
    "Put",
    "PutOk",
    "check",
]

S = TypeVar("S")
I = TypeVar("I")  # noqa: E741 - the conventional name for an input type variable
O = TypeVar("O")  # noqa: E741 - the conventional name for an output type variable


@dataclass(frozen=True, slots=True)
class Operation(Generic[I, O]):
    """One client operation as recorded: what was asked, what came back, and when.

    Invariants (checked by ``check``): ``call`` is finite, ``call <= ret``, neither is
    NaN, and ``ret == math.inf`` only when ``output is None``.
    """

    client_id: int
    input: I
    output: O | None
    """``None``: the result was not observed. With ``ret == math.inf`` (timed out,
    crashed) the operation may or may not have taken effect, at any moment after
    ``call``; with a finite ``ret`` it took effect by ``ret``, result unrecorded."""
    call: float
    """Invocation time: virtual ticks or seconds, anything monotonically comparable."""
    ret: float
    """Completion time; ``math.inf`` for an operation whose outcome is unknown."""


class Model(Protocol[S, I, O]):
    """A sequential specification: what the object may do, one operation at a time.

    States must be hashable (the search memoizes on them) and should have a readable
    ``repr`` (``CheckResult.explain`` prints them). Subclass explicitly to inherit the
    default ``partition`` and ``describe``.
    """

    def init(self) -> S:
        """The state before any operation."""
        ...

    def step(self, state: S, input: I, output: O | None) -> list[S]:
        """The states the model may be in after applying ``input`` observing ``output``.

        ``[]`` if that output is impossible from ``state``. When ``output`` is ``None``
        (unknown), every state the operation could have led to; "it never took effect"
        needs no state of its own when the operation is pending (see the module notes).
        """
        ...

    def partition(self, history: Sequence[Operation[I, O]]) -> list[list[Operation[I, O]]]:
        """Independent sub-histories (P-compositionality, e.g. one per key).

        Default: the whole history as one partition.
        """
        return [list(history)]

    def describe(self, op: Operation[I, O]) -> str:
        """A one-line rendering of an operation's input and output for reports."""
        shown = "?" if op.output is None else repr(op.output)
        return f"{op.input!r} -> {shown}"


@dataclass(frozen=True)
class CheckResult(Generic[I, O]):
    """The verdict of ``check`` and, when it is not ``True``, the evidence."""

    ok: bool | None
    """``True`` linearizable, ``False`` not, ``None`` gave up (budget exhausted)."""
    partition_index: int | None = None
    """Index (in ``model.partition(history)``) of the failing partition, or of the one
    that exhausted the budget; ``None`` when ``ok`` is ``True``."""
    longest_prefix: list[Operation[I, O]] = field(default_factory=list)
    """The longest linearization found in that partition, in linearization order. It is
    valid (real-time order and model both respected) but could not be extended to
    every completed operation."""
    failing: list[Operation[I, O]] = field(default_factory=list)
    """Every operation of that partition, sorted by ``call``."""

    def explain(self, model: Model[Any, I, O]) -> str:
        """A human-readable, multi-line report of the failure (or of giving up)."""
        if self.ok is True:
            return "linearizable"
        index_of = {id(op): i for i, op in enumerate(self.failing)}
        placed = {id(op) for op in self.longest_prefix}
        if self.ok is False:
            head = f"NOT linearizable: partition {self.partition_index}"
        else:
            head = f"UNKNOWN (search budget exhausted): partition {self.partition_index}"
        lines = [f"{head} ({len(self.failing)} operations)", "operations, by invocation time:"]
        lines += [f"  {_render(model, i, op)}" for i, op in enumerate(self.failing)]

        lines.append(
            f"longest linearization found ({len(self.longest_prefix)} of "
            f"{len(self.failing)} operations), with the model state after each:"
        )
        states: frozenset[Any] = frozenset([model.init()])
        lines.append(f"  (initial state: {_render_states(states)})")
        for n, op in enumerate(self.longest_prefix, start=1):
            states = _step_all(model, states, op)
            lines.append(
                f"  {n:>3}. {_render(model, index_of.get(id(op), -1), op)}"
                f"  => {_render_states(states)}"
            )

        unplaced = [op for op in self.failing if id(op) not in placed]
        if self.ok is False:
            lines.append("operations it could not place after that (none fits next):")
        else:
            lines.append("operations not yet placed when the search gave up:")
        lines += [f"  {_render(model, index_of[id(op)], op)}" for op in unplaced]
        return "\n".join(lines)


def check(
    model: Model[S, I, O],
    history: Sequence[Operation[I, O]],
    *,
    max_steps: int | None = None,
) -> CheckResult[I, O]:
    """Decide whether ``history`` is linearizable with respect to ``model``.

    ``max_steps`` bounds the search steps spent on each partition (``None``: no bound).
    Raises ``ValueError`` for a malformed operation (see ``Operation``'s invariants).
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    for op in history:
        _validate(op)

    gave_up: CheckResult[I, O] | None = None
    for index, part in enumerate(model.partition(history)):
        if not part:
            continue
        for op in part:  # a custom partition() could hand back operations of its own
            _validate(op)
        ops = sorted(part, key=lambda op: op.call)
        verdict, longest = _check_partition(model, ops, max_steps)
        if verdict is True:
            continue
        result = CheckResult(ok=verdict, partition_index=index, longest_prefix=longest, failing=ops)
        if verdict is False:
            return result
        if gave_up is None:
            gave_up = result
    return gave_up if gave_up is not None else CheckResult(ok=True)


# --- the search ------------------------------------------------------------------------


class _Entry:
    """One event in the search's doubly linked list.

    A call entry has ``match`` set to its return entry; a return entry has ``match``
    ``None``. ``prev`` is never ``None`` for a linked entry (the head sentinel precedes
    them all); ``next`` is ``None`` only for the last entry.
    """

    __slots__ = ("match", "next", "op", "op_id", "pending", "prev")

    def __init__(self, op_id: int, op: Operation[Any, Any] | None, pending: bool) -> None:
        self.op_id = op_id
        self.op = op
        self.pending = pending  # the operation's outcome is unknown (ret == inf)
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _build_list(ops: Sequence[Operation[Any, Any]]) -> _Entry:
    """Link every operation's call and return events in time order; return the head.

    At equal times calls sort before returns (touching operations are concurrent),
    then by operation index so the order, and hence the search, is deterministic.
    """
    events: list[tuple[float, int, int]] = []  # (time, 0 = call / 1 = return, op id)
    for op_id, op in enumerate(ops):
        events.append((op.call, 0, op_id))
        events.append((op.ret, 1, op_id))
    events.sort()

    head = _Entry(-1, None, pending=False)
    calls: dict[int, _Entry] = {}
    last = head
    for _, kind, op_id in events:
        op = ops[op_id]
        entry = _Entry(op_id, op, pending=op.ret == math.inf)
        if kind == 0:
            calls[op_id] = entry
        else:
            calls[op_id].match = entry
        entry.prev = last
        last.next = entry
        last = entry
    return head


def _lift(call: _Entry) -> None:
    """Unlink a call entry and its return entry (the return always follows the call)."""
    ret = call.match
    assert call.prev is not None and call.next is not None and ret is not None
    assert ret.prev is not None
    call.prev.next = call.next
    call.next.prev = call.prev
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Entry) -> None:
    """Relink what ``_lift`` unlinked; lifts are undone in reverse order, so the
    neighbours recorded in the two entries are exactly the ones they had."""
    ret = call.match
    assert call.prev is not None and call.next is not None and ret is not None
    assert ret.prev is not None
    if ret.next is not None:
        ret.next.prev = ret
    ret.prev.next = ret
    call.next.prev = call
    call.prev.next = call


def _check_partition(
    model: Model[S, I, O], ops: Sequence[Operation[I, O]], max_steps: int | None
) -> tuple[bool | None, list[Operation[I, O]]]:
    """Search one partition; return the verdict and the longest linearization found."""
    head = _build_list(ops)
    states: frozenset[S] = frozenset([model.init()])
    linearized = 0  # bit i set <=> ops[i] is on the stack (placed in the linearization)
    seen: set[tuple[int, frozenset[S]]] = set()  # (linearized, states) pairs already explored
    stack: list[tuple[_Entry, frozenset[S]]] = []  # (lifted call entry, states before it)
    longest: list[Operation[I, O]] = []
    steps = 0

    entry = head.next
    while entry is not None:  # head.next is None <=> every operation is linearized
        steps += 1
        if max_steps is not None and steps > max_steps:
            return None, longest
        if entry.match is not None:  # a call: try to linearize its operation next
            op: Operation[I, O] = ops[entry.op_id]
            after = _step_all(model, states, op)
            if after:
                now = linearized | (1 << entry.op_id)
                if (now, after) not in seen:
                    seen.add((now, after))
                    stack.append((entry, states))
                    states, linearized = after, now
                    _lift(entry)
                    if len(stack) > len(longest):
                        longest = [ops[e.op_id] for e, _ in stack]
                    entry = head.next
                    continue
            entry = entry.next
        else:  # a return whose operation is still unplaced
            if entry.pending:
                # Every return before this one is lifted, so every completed operation
                # is linearized; the pending ones left over are dropped.
                return True, longest
            if not stack:
                return False, longest
            entry, states = stack.pop()
            linearized &= ~(1 << entry.op_id)
            _unlift(entry)
            entry = entry.next
    return True, longest


def _step_all(model: Model[S, I, O], states: Iterable[S], op: Operation[I, O]) -> frozenset[S]:
    """Every state reachable by applying ``op`` from any of ``states``."""
    after: set[S] = set()
    for state in states:
        after.update(model.step(state, op.input, op.output))
    return frozenset(after)


def _validate(op: Operation[Any, Any]) -> None:
    if math.isnan(op.call) or math.isnan(op.ret):
        raise ValueError(f"operation has a NaN time: {op!r}")
    if not math.isfinite(op.call):
        raise ValueError(f"operation's call time must be finite: {op!r}")
    if op.call > op.ret:
        raise ValueError(f"operation returns before it is called: {op!r}")
    if op.ret == math.inf and op.output is not None:
        raise ValueError(f"an operation with a known output must have a finite ret: {op!r}")


def _render(model: Model[Any, I, O], index: int, op: Operation[I, O]) -> str:
    return (
        f"#{index} client {op.client_id} [{_fmt_time(op.call)}, {_fmt_time(op.ret)}] "
        f"{model.describe(op)}"
    )


def _render_states(states: frozenset[Any]) -> str:
    if len(states) == 1:
        return repr(next(iter(states)))
    return "one of {" + ", ".join(sorted(repr(s) for s in states)) + "}"


def _fmt_time(t: float) -> str:
    if t == math.inf:
        return "inf"
    if isinstance(t, float) and t.is_integer():
        return str(int(t))
    return repr(t)


# --- a ready model: the simulator's replicated key-value store -------------------------


@dataclass(frozen=True, slots=True)
class Put:
    """Set ``key`` to ``value``."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Get:
    """Read ``key``."""

    key: str


@dataclass(frozen=True, slots=True)
class Cas:
    """Set ``key`` to ``new`` iff it currently holds ``expected`` (``None``: absent).

    ``expected=None`` is create-exclusive, which is how the harness maps it onto files.
    """

    key: str
    expected: str | None
    new: str


@dataclass(frozen=True, slots=True)
class PutOk:
    """The reply to a ``Put``."""


@dataclass(frozen=True, slots=True)
class GetOk:
    """The reply to a ``Get``: the value read, ``None`` when the key is absent."""

    value: str | None


@dataclass(frozen=True, slots=True)
class CasOk:
    """The reply to a ``Cas``: whether the swap happened."""

    succeeded: bool


KVInput = Put | Get | Cas
KVOutput = PutOk | GetOk | CasOk
KVState = str | None
"""The value of the one key a partition is about; ``None`` = absent."""


class KVModel(Model[KVState, KVInput, KVOutput]):
    """A key-value store with put, get and compare-and-set, checked key by key.

    Each partition is one key, so the state is that key's value: every key is an
    independent register (a single-register history is a KV history with one key).
    The store is deterministic: a ``Cas`` succeeds iff the key holds ``expected``, so
    even an unknown output leads to exactly one state.
    """

    def init(self) -> KVState:
        return None

    def step(self, state: KVState, input: KVInput, output: KVOutput | None) -> list[KVState]:
        match input:
            case Put(value=value):
                _expect_output(input, output, PutOk)
                return [value]
            case Get():
                _expect_output(input, output, GetOk)
                if output is None:
                    return [state]
                assert isinstance(output, GetOk)
                return [state] if output.value == state else []
            case Cas(expected=expected, new=new):
                _expect_output(input, output, CasOk)
                swapped = state == expected
                if output is not None:
                    assert isinstance(output, CasOk)
                    if output.succeeded != swapped:
                        return []
                return [new] if swapped else [state]
        raise TypeError(f"not a KV input: {input!r}")

    def partition(
        self, history: Sequence[Operation[KVInput, KVOutput]]
    ) -> list[list[Operation[KVInput, KVOutput]]]:
        by_key: dict[str, list[Operation[KVInput, KVOutput]]] = {}
        for op in history:
            by_key.setdefault(op.input.key, []).append(op)
        return list(by_key.values())

    def describe(self, op: Operation[KVInput, KVOutput]) -> str:
        match op.input:
            case Put(key=key, value=value):
                call = f"put({key!r}, {value!r})"
            case Get(key=key):
                call = f"get({key!r})"
            case Cas(key=key, expected=expected, new=new):
                call = f"cas({key!r}, {expected!r} -> {new!r})"
        match op.output:
            case None:
                shown = "? (unknown)"
            case PutOk():
                shown = "ok"
            case GetOk(value=read):
                shown = repr(read)
            case CasOk(succeeded=succeeded):
                shown = "swapped" if succeeded else "not swapped"
        return f"{call} -> {shown}"


def _expect_output(input: KVInput, output: KVOutput | None, kind: type[KVOutput]) -> None:
    """A reply of the wrong kind is a recording bug, not a consistency violation."""
    if output is not None and not isinstance(output, kind):
        raise TypeError(f"{type(input).__name__} answered with {output!r}")
