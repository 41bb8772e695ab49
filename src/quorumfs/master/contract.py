"""What the master's HTTP layer may ask of the master service, and what it gets back.

The HTTP handlers (``http_api``) depend only on this module, never on how the
service drives Raft; tests give them a fake. The service (``service``) is the
one real implementation.

Port scheme: a master serves HTTP on its port P (default 9333) and talks Raft
to the other masters on P + 10000 (default 19333).
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

import msgspec

from .commands import Command
from .namespace import Namespace
from .results import Result

__all__ = [
    "RAFT_PORT_OFFSET",
    "ClusterStatus",
    "MasterService",
    "MemberInfo",
    "MemberRole",
    "NotLeaderError",
    "OutcomeUnknownError",
    "RejectedError",
    "ServiceUnavailableError",
]

RAFT_PORT_OFFSET = 10000
"""The Raft port of a master is its HTTP port plus this."""


class MemberRole(enum.Enum):
    """How a member is shown everywhere (CLI, API, console): the same five words."""

    LEADER = "LEADER"
    FOLLOWER = "FOLLOWER"
    CANDIDATE = "CANDIDATE"
    LEARNER = "LEARNER"
    WITNESS = "WITNESS"


class MemberInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    http: str
    """host:port of the member's HTTP API."""
    raft: str
    """host:port of the member's Raft transport."""
    role: MemberRole
    voter: bool
    promote: bool = False
    """A learner added to become a voter: whichever master leads promotes it once it
    has caught up. False for every other member."""
    match_index: int | None = None
    """Known on the leader only: the last index the member holds."""
    last_contact_ms: int | None = None
    """Known on the leader only: milliseconds since the leader last heard from it."""


class ClusterStatus(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    """This master's node id."""
    role: MemberRole
    term: int
    leader_id: int | None
    leader_http: str | None
    commit_index: int
    applied_index: int
    members: list[MemberInfo]
    lease_remaining_ms: int | None = None
    """Known on the leader only: how long its leader lease still holds (0: lapsed or
    revoked, reads go through ReadIndex); None on any other master."""
    warnings: list[str] = []
    """Things an operator should act on, e.g. an even number of voters."""


class NotLeaderError(Exception):
    """This master is not the leader; ``leader_http`` names the one that is (or None).

    Raised only before anything was proposed, so forwarding the request is safe.
    """

    def __init__(self, leader_http: str | None) -> None:
        super().__init__(f"not the leader; the leader is {leader_http or 'unknown'}")
        self.leader_http = leader_http


class ServiceUnavailableError(Exception):
    """No leader or no quorum right now, and nothing was done: retry after ``retry_after`` s."""

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class OutcomeUnknownError(ServiceUnavailableError):
    """A write was proposed but its outcome could not be learned in time (leadership
    lost, or no commit before the deadline): it may or may not be applied."""


class RejectedError(Exception):
    """The request is wrong and retrying it will not help (``status``: 400, 404 or 409)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class MasterService(Protocol):
    """The master as its HTTP handlers see it. Every awaitable is bounded in time."""

    node_id: int

    @property
    def namespace(self) -> Namespace:
        """The local replica: read it only after ``read_barrier``."""
        ...

    def is_leader(self) -> bool: ...

    def leader_http(self) -> str | None: ...

    async def execute(self, command: Command) -> Result[Any]:
        """Replicate and apply ``command``; only on the leader (else ``NotLeaderError``).

        Raises ``ServiceUnavailableError`` when it cannot be committed in time.
        """
        ...

    async def read_barrier(self) -> None:
        """Wait until the local replica reflects every write acknowledged before the call.

        Works on any master (ReadIndex through the leader); raises
        ``ServiceUnavailableError`` when there is no leader or quorum in time.
        """
        ...

    def cluster_status(self) -> ClusterStatus: ...

    async def add_member(self, *, http: str, raft: str, voter: bool) -> MemberInfo:
        """Leader only. Adds a learner that is promoted to voter once it caught up
        (``voter=True``: recorded in the replicated state, so whichever master leads
        then promotes it), or stays a learner. ``RejectedError`` (409) when an address
        is already a member's."""
        ...

    async def remove_member(self, member_id: int) -> None:
        """Leader only. ``RejectedError`` (404) for an unknown id."""
        ...

    async def transfer_leadership(self, member_id: int) -> int:
        """Leader only. Returns once ``member_id`` leads (its id), or raises
        ``ServiceUnavailableError`` saying why not; ``RejectedError`` (404) for an
        unknown id, (400) for a member that cannot lead (a learner or witness)."""
        ...

    async def step_down(self) -> int:
        """Leader only. Hands leadership to the most caught-up voting member and returns
        once it leads (its id); ``RejectedError`` (400) when no other member can lead,
        ``ServiceUnavailableError`` saying why when the transfer fails or times out."""
        ...

    def admin_token_ok(self, token: str | None) -> bool:
        """Whether ``token`` authorises membership changes and transfers."""
        ...
