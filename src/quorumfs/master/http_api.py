"""The master's HTTP JSON API: routes, request decoding, write routing and error mapping.

Owns the translation between HTTP and the ``MasterService`` contract: it decodes
and validates requests, builds namespace ``Command``s (stamping times with this
master's clock), sends writes to the leader, and turns every outcome into JSON.
It leaves Raft, the namespace rules and membership mechanics to the service
behind ``contract.MasterService``; the document of record for clients is
``openapi.json`` next to this module (served at ``GET /openapi.json``).

Theory of operation:

- Reads (``/v1/fs/stat``, ``list``, ``totals``) are served by any master after
  ``service.read_barrier()``, so they are linearizable without a hop.
- Writes and admin operations run on the leader. A follower, by default,
  forwards the request (body bytes unchanged) to the leader over one shared
  ``aiohttp.ClientSession`` and relays the answer, adding ``X-Quorumfs-Served-By``.
  A client that sends ``X-Quorumfs-Redirect: 1`` (or ``?redirect=1``) gets a
  ``307`` naming the leader instead. A forwarded request carries
  ``X-Quorumfs-Forwarded`` and is never forwarded again: two masters that each
  believe the other leads answer ``503`` (``ELOOP``) rather than bounce it.
- Every request is bounded by ``request_timeout``; nothing waits on a quorum
  that is gone. ``/cluster/status``, ``/cluster/members``, ``/healthz`` and
  ``/openapi.json`` answer from local state and never touch Raft.
- ``/debug/faults`` (admin token) reads and sets this master's injected faults
  (a journal fsync delay, an offset of its wall clock) for fault tests. It acts
  on the master it reaches and is never forwarded; it answers 404 unless the
  master was started with ``--fault-injection`` (``build_app(faults=...)``).
- Every wall-clock time this API stamps (the mtime of a mkdir or a create) is
  read from the master's ``WallClock`` (``build_app(clock=...)``), the one the
  wall clock offset shifts.
- Every answer is JSON. Errors are ``{"error": {"code", "message", "path"}}``:
  the namespace's POSIX-named codes (``results.ErrorCode``) with their statuses
  from ``results.HTTP_STATUS_BY_CODE``, plus the API's own (``ApiErrorCode``).
  Unexpected exceptions are logged and answered with a generic 500.

Forwarding after ``NotLeaderError`` assumes that ``execute`` (and the membership
calls) raise it only for a request they did not propose; a proposal whose fate is
unknown must raise ``ServiceUnavailableError`` instead, or a forward could apply
a write twice.
"""

from __future__ import annotations

import asyncio
import enum
import importlib.resources
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Annotated, Any, Final, Protocol, TypeVar

import aiohttp
import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from yarl import URL

from quorumfs.runtime.clock import WallClock

from .commands import (
    DEFAULT_DIRECTORY_MODE,
    DEFAULT_FILE_MODE,
    DEFAULT_REPLICATION,
    Command,
    Create,
    Delete,
    Mkdir,
    Rename,
    SetAttr,
)
from .console import add_console_routes
from .contract import (
    MasterService,
    MemberInfo,
    MemberRole,
    NotLeaderError,
    OutcomeUnknownError,
    RejectedError,
    ServiceUnavailableError,
)
from .namespace import MAX_MODE, MAX_REPLICATION
from .paths import split_path
from .results import (
    Deleted,
    DirEntry,
    ErrorCode,
    NamespaceError,
    RefusedError,
    Renamed,
    Result,
    Stat,
)

__all__ = [
    "FORWARDED_HEADER",
    "REDIRECT_HEADER",
    "RETRY_AFTER_MS_HEADER",
    "SERVED_BY_HEADER",
    "AddMemberRequest",
    "ApiErrorCode",
    "CreateRequest",
    "DeleteRequest",
    "DeleteResponse",
    "ErrorBody",
    "ErrorResponse",
    "FaultTarget",
    "FaultsRequest",
    "FaultsResponse",
    "HealthResponse",
    "ListResponse",
    "MembersResponse",
    "MkdirRequest",
    "RedirectResponse",
    "RemoveMemberResponse",
    "RenameRequest",
    "RenameResponse",
    "SetAttrRequest",
    "TransferLeaderRequest",
    "TransferLeaderResponse",
    "build_app",
    "load_openapi_document",
    "metrics_handler",
]

logger = logging.getLogger(__name__)

FORWARDED_HEADER: Final = "X-Quorumfs-Forwarded"
"""Set (to the forwarding master's node id) on a request a follower sent to the leader."""
REDIRECT_HEADER: Final = "X-Quorumfs-Redirect"
"""``1`` asks a follower for a ``307`` to the leader instead of forwarding."""
SERVED_BY_HEADER: Final = "X-Quorumfs-Served-By"
RETRY_AFTER_MS_HEADER: Final = "X-Quorumfs-Retry-After-Ms"
"""On a 503: when to retry, in milliseconds (``Retry-After`` has whole seconds only, and an
election is over well within one)."""
"""On a forwarded answer: the HTTP address of the leader that served it."""

OPENAPI_RESOURCE: Final = "openapi.json"
ADMIN_TOKEN_HELP: Final = (
    "send it as `Authorization: Bearer <token>` (with the CLI: --token or "
    "QUORUMFS_ADMIN_TOKEN); it is in the file admin.token in any master's directory (--mdir)"
)
"""How to get the admin token; keep in step with ``server`` (which writes admin.token)."""

_MIN_INT64: Final = -(2**63)
_MAX_INT64: Final = 2**63 - 1
_MAX_PORT: Final = 65535
MAX_FSYNC_DELAY_MS: Final = 60_000
"""The longest journal fsync delay ``PUT /debug/faults`` accepts: a minute."""
MAX_WALL_CLOCK_OFFSET_MS: Final = 86_400_000
"""The largest wall clock offset ``PUT /debug/faults`` accepts, either way: a day."""
FAULT_INJECTION_OFF: Final = "fault injection is off: start the master with --fault-injection"


class ApiErrorCode(enum.StrEnum):
    """Error codes of the HTTP layer itself; they sit beside ``results.ErrorCode``.

    ========== ====== ===========================================================
    code       status why
    ========== ====== ===========================================================
    EACCES     401    an admin operation without a valid bearer token
    ENOSYS     404    no such endpoint (405 when the path exists, not the method);
                      also ``/debug/faults`` on a master without --fault-injection
    E2BIG      413    the request body is larger than the server accepts
    EAGAIN     503    no leader or no quorum right now, and nothing was done: retry
                      after Retry-After (a write too: it was not applied)
    ETIMEDOUT  503    a write's outcome is unknown (leadership was lost, or the
                      request timed out): it may or may not be applied
    ELOOP      503    a forwarded request reached a master that is not the leader
    EIO        500    a bug: the exception is in the master's log
    ========== ====== ===========================================================

    Bad input is ``EINVAL`` (400), as for the namespace.
    """

    EACCES = "EACCES"
    ENOSYS = "ENOSYS"
    E2BIG = "E2BIG"
    EAGAIN = "EAGAIN"
    ETIMEDOUT = "ETIMEDOUT"
    ELOOP = "ELOOP"
    EIO = "EIO"


# ------------------------------------------------------------------ wire shapes
#
# Request bodies are decoded strictly: wrong types, missing fields and unknown
# fields are refused, with msgspec naming the field (``- at `$.mode```).

Mode = Annotated[int, msgspec.Meta(ge=0, le=MAX_MODE)]
Int64 = Annotated[int, msgspec.Meta(ge=_MIN_INT64, le=_MAX_INT64)]
Owner = Annotated[str, msgspec.Meta(min_length=1)]
Replication = Annotated[int, msgspec.Meta(ge=1, le=MAX_REPLICATION)]
MemberId = Annotated[int, msgspec.Meta(ge=1)]
FsyncDelayMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_FSYNC_DELAY_MS)]
WallClockOffsetMs = Annotated[
    int, msgspec.Meta(ge=-MAX_WALL_CLOCK_OFFSET_MS, le=MAX_WALL_CLOCK_OFFSET_MS)
]


class _Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every request body."""


class MkdirRequest(_Body, frozen=True):
    path: str
    parents: bool = False
    mode: Mode = DEFAULT_DIRECTORY_MODE
    owner: Owner = "root"


class CreateRequest(_Body, frozen=True):
    path: str
    exclusive: bool = False
    mode: Mode = DEFAULT_FILE_MODE
    owner: Owner = "root"
    replication: Replication = DEFAULT_REPLICATION


class DeleteRequest(_Body, frozen=True):
    path: str
    recursive: bool = False


class RenameRequest(_Body, frozen=True):
    src: str
    dst: str


class SetAttrRequest(_Body, frozen=True):
    path: str
    mode: Mode | None = None
    owner: Owner | None = None
    mtime: Int64 | None = None


class AddMemberRequest(_Body, frozen=True):
    http: str
    raft: str
    voter: bool = True


class TransferLeaderRequest(_Body, frozen=True):
    to: MemberId


class FaultsRequest(_Body, frozen=True):
    """The faults to change; a field left out is left as it is (``null`` is refused)."""

    fsync_delay_ms: FsyncDelayMs | msgspec.UnsetType = msgspec.UNSET
    wall_clock_offset_ms: WallClockOffsetMs | msgspec.UnsetType = msgspec.UNSET


class ErrorBody(msgspec.Struct, frozen=True):
    code: str
    """A ``results.ErrorCode`` or an ``ApiErrorCode``."""
    message: str
    path: str = ""
    """The namespace path the error is about; empty when there is none."""


class ErrorResponse(msgspec.Struct, frozen=True):
    error: ErrorBody


class ListResponse(msgspec.Struct, frozen=True):
    entries: list[DirEntry]
    """Sorted by name (code point order)."""


class DeleteResponse(msgspec.Struct, frozen=True, kw_only=True):
    files: int
    directories: int


class RenameResponse(msgspec.Struct, frozen=True, kw_only=True):
    replaced: bool


class MembersResponse(msgspec.Struct, frozen=True):
    members: list[MemberInfo]


class RemoveMemberResponse(msgspec.Struct, frozen=True):
    removed: int


class TransferLeaderResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a transfer or a step-down: who leads now (it is in place)."""

    leader_id: int
    leader_http: str


class RedirectResponse(msgspec.Struct, frozen=True, kw_only=True):
    leader_http: str
    location: str


class HealthResponse(msgspec.Struct, frozen=True):
    ok: bool


class FaultsResponse(msgspec.Struct, frozen=True, kw_only=True):
    fsync_delay_ms: int
    """Milliseconds slept before each fsync of this master's journal; 0: none."""
    wall_clock_offset_ms: int
    """Milliseconds added to this master's wall clock (``WallClock.offset``); 0: none."""


class FaultTarget(Protocol):
    """What ``/debug/faults`` changes besides the wall clock (``Handlers.clock``): the
    master's journal (``DiskStorage``)."""

    sync_delay: float
    """Seconds slept just before each journal fsync; finite and >= 0."""


_encoder: Final = msgspec.json.Encoder()
B = TypeVar("B", bound=msgspec.Struct)


class ApiError(Exception):
    """An answer other than success, raised anywhere below a handler."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        path: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorResponse(ErrorBody(code, message, path))
        self.headers = dict(headers or {})

    @classmethod
    def invalid(cls, message: str, path: str = "") -> ApiError:
        return cls(400, ErrorCode.EINVAL, message, path=path)

    @classmethod
    def unavailable(cls, code: ApiErrorCode, message: str, retry_after: float = 1.0) -> ApiError:
        headers = {
            "Retry-After": _retry_after(retry_after),
            RETRY_AFTER_MS_HEADER: str(max(1, round(retry_after * 1000))),
        }
        return cls(503, code, message, headers=headers)

    def response(self) -> web.Response:
        return json_response(self.body, status=self.status, headers=self.headers)


def _retry_after(seconds: float) -> str:
    """Retry-After in whole seconds, at least 1 (0 would invite a busy loop)."""
    return str(max(1, math.ceil(seconds)))


def json_response(
    value: object, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=_encoder.encode(value),
        content_type="application/json",
        headers=headers,
    )


def load_openapi_document() -> bytes:
    """The OpenAPI 3.1 document describing this API (package data beside this module)."""
    return importlib.resources.files(__package__).joinpath(OPENAPI_RESOURCE).read_bytes()


# ---------------------------------------------------------------- validation


def decode_body(body: bytes, body_type: type[B]) -> B:
    try:
        return msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError as exc:
        raise ApiError.invalid(f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError.invalid(
            f"the request body is not valid JSON ({exc}); send a JSON object"
        ) from None


def check_path(path: str, field: str) -> None:
    """Refuse an invalid path before it reaches the log (the namespace checks again)."""
    try:
        split_path(path)
    except RefusedError as refused:
        error = refused.error
        raise ApiError(
            error.http_status, error.code, f"{error.message} - at `$.{field}`", path=error.path
        ) from None


def check_address(address: str, field: str) -> None:
    """``host:port`` with a port in 1..65535; an IPv6 host goes in brackets."""
    host, sep, port = address.rpartition(":")
    problem = None
    if not sep or not host:
        problem = "is not host:port"
    elif not port.isascii() or not port.isdigit() or not 1 <= int(port) <= _MAX_PORT:
        problem = "has no port in 1..65535"
    elif any(c.isspace() for c in address) or "/" in address:
        problem = "contains a space or a '/'"
    elif ":" in host and not (host.startswith("[") and host.endswith("]")):
        problem = "has an IPv6 host without brackets (write [::1]:9333)"
    if problem is not None:
        raise ApiError.invalid(f"address {address!r} {problem} - at `$.{field}`")


def query_path(request: web.Request) -> str:
    """The one ``path`` query parameter of a read, validated; other parameters are refused
    (except ``redirect``, which any request may carry)."""
    for name in request.query:
        if name not in ("path", "redirect"):
            raise ApiError.invalid(f"unknown query parameter `{name}`; expected `path`")
    values = request.query.getall("path", [])
    if not values:
        raise ApiError.invalid("missing query parameter `path` (e.g. ?path=/)")
    if len(values) > 1:
        raise ApiError.invalid("query parameter `path` is given more than once")
    path = values[0]
    check_path(path, "path")
    return path


def _wants_redirect(request: web.Request) -> bool:
    truthy = ("1", "true", "yes")
    header = request.headers.get(REDIRECT_HEADER, "").strip().lower()
    return header in truthy or request.query.get("redirect", "").lower() in truthy


# -------------------------------------------------------------------- the API


class Handlers:
    """The handlers of one application, sharing the service and the forwarding session."""

    def __init__(
        self,
        service: MasterService,
        request_timeout: float,
        faults: FaultTarget | None = None,
        clock: WallClock | None = None,
    ) -> None:
        self.service = service
        self.request_timeout = request_timeout
        self.faults = faults
        """None unless the master runs with --fault-injection: ``/debug/faults`` is off."""
        self.clock = clock or WallClock()
        """The master's wall clock: the mtimes stamped here; ``/debug/faults`` shifts it."""
        self.session: aiohttp.ClientSession | None = None
        """Created on startup, closed on cleanup (``client_session``)."""
        self.openapi = load_openapi_document()

    async def client_session(self, _app: web.Application) -> AsyncIterator[None]:
        self.session = aiohttp.ClientSession()
        try:
            yield
        finally:
            await self.session.close()
            self.session = None

    # ------------------------------------------------------------ middleware

    @web.middleware  # new-style: (request, handler)
    async def errors_and_deadline(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Bound every request in time and turn every failure into a JSON answer."""
        try:
            async with asyncio.timeout(self.request_timeout):
                return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            return _http_exception(request, exc)
        except RejectedError as exc:
            return _rejected(exc).response()
        except RefusedError as exc:
            return _namespace_error(exc.error)
        except OutcomeUnknownError as exc:
            return ApiError.unavailable(
                ApiErrorCode.ETIMEDOUT,
                f"{exc.reason}; the operation may or may not have been applied: check, then retry",
                exc.retry_after,
            ).response()
        except ServiceUnavailableError as exc:
            return ApiError.unavailable(
                ApiErrorCode.EAGAIN, f"{exc.reason}; retry shortly", exc.retry_after
            ).response()
        except NotLeaderError as exc:  # a read the service would not serve here
            return ApiError.unavailable(
                ApiErrorCode.EAGAIN,
                f"this master cannot serve the request now: {exc}; retry shortly",
            ).response()
        except TimeoutError:
            message = f"no answer within {self.request_timeout:g} s (is a quorum of masters up?)"
            if request.method not in ("GET", "HEAD"):
                message += "; the operation may or may not have been applied: check, then retry"
            return ApiError.unavailable(ApiErrorCode.ETIMEDOUT, message).response()
        except Exception:
            logger.exception("unexpected error serving %s %s", request.method, request.path)
            return ApiError(
                500,
                ApiErrorCode.EIO,
                "internal error in the master; the details are in its log",
            ).response()

    # ---------------------------------------------------------------- routing

    async def on_leader(
        self, request: web.Request, body: bytes, run: Callable[[], Awaitable[web.Response]]
    ) -> web.Response:
        """``run()`` here when this master leads, else send the request to the leader."""
        if not self.service.is_leader():
            return await self.to_leader(request, body, self.service.leader_http())
        try:
            return await run()
        except NotLeaderError as exc:
            return await self.to_leader(request, body, exc.leader_http)

    async def to_leader(
        self, request: web.Request, body: bytes, leader: str | None
    ) -> web.Response:
        if FORWARDED_HEADER in request.headers:
            raise ApiError.unavailable(
                ApiErrorCode.ELOOP,
                f"master {self.service.node_id} was forwarded this request as the leader, "
                f"but it is not the leader (it believes {leader or 'no master'} leads); "
                "leadership is changing: retry shortly",
            )
        if leader is None:
            raise ApiError.unavailable(
                ApiErrorCode.EAGAIN,
                "no leader is known right now (an election is under way, or there is no "
                "quorum); retry shortly",
            )
        location = f"http://{leader}{request.raw_path}"
        if _wants_redirect(request):
            return json_response(
                RedirectResponse(leader_http=leader, location=location),
                status=307,
                headers={"Location": location},
            )
        return await self.forward(request, body, leader, location)

    async def forward(
        self, request: web.Request, body: bytes, leader: str, location: str
    ) -> web.Response:
        assert self.session is not None, "the client session lives as long as the app runs"
        headers = {FORWARDED_HEADER: str(self.service.node_id)}
        for name in ("Content-Type", "Authorization"):
            if name in request.headers:
                headers[name] = request.headers[name]
        logger.debug("forwarding %s %s to the leader %s", request.method, request.path, leader)
        try:
            async with self.session.request(
                request.method,
                URL(location, encoded=True),
                data=body or None,
                headers=headers,
                allow_redirects=False,
            ) as answer:
                answer_body = await answer.read()
                relayed = {SERVED_BY_HEADER: leader}
                for name in (
                    "Content-Type",
                    "Retry-After",
                    RETRY_AFTER_MS_HEADER,
                    "Allow",
                    "WWW-Authenticate",
                ):
                    if name in answer.headers:
                        relayed[name] = answer.headers[name]
                return web.Response(status=answer.status, body=answer_body, headers=relayed)
        except aiohttp.ClientConnectorError as exc:
            # Only writes and admin operations get here. No connection: nothing was sent.
            raise ApiError.unavailable(
                ApiErrorCode.EAGAIN,
                f"could not reach the leader {leader} ({str(exc) or type(exc).__name__}); "
                "nothing was done: retry shortly",
            ) from None
        except aiohttp.ClientError as exc:
            # Sent, but the answer was lost: the leader may have applied it.
            raise ApiError.unavailable(
                ApiErrorCode.ETIMEDOUT,
                f"lost the leader {leader}'s answer ({str(exc) or type(exc).__name__}); "
                "the operation may or may not have been applied: check, then retry",
            ) from None

    async def write(
        self,
        request: web.Request,
        body: bytes,
        command: Command,
        to_json: Callable[[Any], object],
    ) -> web.Response:
        async def run() -> web.Response:
            return _result(await self.service.execute(command), to_json)

        return await self.on_leader(request, body, run)

    # ----------------------------------------------------------- namespace

    async def stat(self, request: web.Request) -> web.Response:
        path = query_path(request)
        await self.service.read_barrier()
        return _result(self.service.namespace.stat(path), _same)

    async def list_directory(self, request: web.Request) -> web.Response:
        path = query_path(request)
        await self.service.read_barrier()
        return _result(self.service.namespace.list(path), _listing)

    async def totals(self, request: web.Request) -> web.Response:
        for name in request.query:
            if name != "redirect":
                raise ApiError.invalid(f"unknown query parameter `{name}`; expected none")
        await self.service.read_barrier()
        return json_response(self.service.namespace.totals())

    async def mkdir(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = decode_body(raw, MkdirRequest)
        check_path(body.path, "path")
        command = Mkdir(
            path=body.path,
            mtime=self.clock.time_ns(),
            owner=body.owner,
            mode=body.mode,
            parents=body.parents,
        )
        return await self.write(request, raw, command, _same)

    async def create(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = decode_body(raw, CreateRequest)
        check_path(body.path, "path")
        command = Create(
            path=body.path,
            mtime=self.clock.time_ns(),
            owner=body.owner,
            mode=body.mode,
            replication=body.replication,
            exclusive=body.exclusive,
        )
        return await self.write(request, raw, command, _same)

    async def delete(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = decode_body(raw, DeleteRequest)
        check_path(body.path, "path")
        command = Delete(path=body.path, recursive=body.recursive)
        return await self.write(request, raw, command, _deleted)

    async def rename(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = decode_body(raw, RenameRequest)
        check_path(body.src, "src")
        check_path(body.dst, "dst")
        return await self.write(request, raw, Rename(src=body.src, dst=body.dst), _renamed)

    async def set_attributes(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = decode_body(raw, SetAttrRequest)
        check_path(body.path, "path")
        if body.mode is None and body.owner is None and body.mtime is None:
            raise ApiError.invalid(
                "nothing to change: give at least one of `mode`, `owner`, `mtime`",
                path=body.path,
            )
        command = SetAttr(path=body.path, mode=body.mode, owner=body.owner, mtime=body.mtime)
        return await self.write(request, raw, command, _same)

    # ------------------------------------------------------------- cluster

    async def cluster_status(self, _request: web.Request) -> web.Response:
        return json_response(self.service.cluster_status())

    async def members(self, _request: web.Request) -> web.Response:
        return json_response(MembersResponse(self.service.cluster_status().members))

    async def add_member(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        raw = await request.read()
        body = decode_body(raw, AddMemberRequest)
        check_address(body.http, "http")
        check_address(body.raft, "raft")

        async def run() -> web.Response:
            added = await self.service.add_member(http=body.http, raft=body.raft, voter=body.voter)
            return json_response(added, status=201)

        return await self.on_leader(request, raw, run)

    async def remove_member(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        member_id = _member_id(request.match_info["id"])

        async def run() -> web.Response:
            await self.service.remove_member(member_id)
            return json_response(RemoveMemberResponse(member_id))

        return await self.on_leader(request, b"", run)

    async def transfer_leader(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        raw = await request.read()
        body = decode_body(raw, TransferLeaderRequest)

        async def run() -> web.Response:
            target = self.member(body.to)
            if target.role in (MemberRole.LEARNER, MemberRole.WITNESS) or not target.voter:
                raise ApiError.invalid(
                    f"member {body.to} is a {target.role.value.lower()} and cannot lead; "
                    "transfer to a voting member"
                )
            if body.to == self.service.node_id:
                return self.leads_now(body.to)  # already leads
            return self.leads_now(await self.service.transfer_leadership(body.to))

        return await self.on_leader(request, raw, run)

    async def step_down(self, request: web.Request) -> web.Response:
        self.require_admin(request)

        async def run() -> web.Response:
            return self.leads_now(await self.service.step_down())

        return await self.on_leader(request, b"", run)

    def leads_now(self, leader_id: int) -> web.Response:
        leader = self.member(leader_id)
        return json_response(TransferLeaderResponse(leader_id=leader.id, leader_http=leader.http))

    def require_admin(self, request: web.Request) -> None:
        header = request.headers.get("Authorization")
        token: str | None = None
        if header is not None:
            scheme, _, value = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise _unauthorized(
                    f"the Authorization header is not `Bearer <token>`; {ADMIN_TOKEN_HELP}"
                )
            token = value.strip()
        if not self.service.admin_token_ok(token):
            if token is None:
                raise _unauthorized(
                    f"this operation needs the cluster admin token: {ADMIN_TOKEN_HELP}"
                )
            raise _unauthorized(f"the admin token is not valid: {ADMIN_TOKEN_HELP}")

    def member(self, member_id: int) -> MemberInfo:
        """The member with this id, from the leader's (authoritative) configuration.

        Transfers are checked here because the contract leaves an unknown or
        non-voting target to a 503 (retrying would not help); adding and removing
        are checked by the service (``RejectedError``)."""
        for member in self.service.cluster_status().members:
            if member.id == member_id:
                return member
        raise ApiError(
            404,
            ErrorCode.ENOENT,
            f"no member has id {member_id} (list them: `quorumfs cluster members`)",
        )

    # -------------------------------------------------------- fault injection

    def fault_target(self, request: web.Request) -> FaultTarget:
        """The journal to act on, for an admin, when fault injection is on."""
        if self.faults is None:
            raise ApiError(404, ApiErrorCode.ENOSYS, FAULT_INJECTION_OFF)
        self.require_admin(request)
        return self.faults

    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response(self.faults_state(self.fault_target(request)))

    async def put_faults(self, request: web.Request) -> web.Response:
        target = self.fault_target(request)
        body = decode_body(await request.read(), FaultsRequest)
        delay, offset = body.fsync_delay_ms, body.wall_clock_offset_ms
        if isinstance(delay, msgspec.UnsetType) and isinstance(offset, msgspec.UnsetType):
            raise ApiError.invalid(
                "nothing to change: give `fsync_delay_ms`, `wall_clock_offset_ms` or both"
            )
        before = self.faults_state(target)
        if not isinstance(delay, msgspec.UnsetType):
            target.sync_delay = delay / 1000
            if delay != before.fsync_delay_ms:
                logger.warning(
                    "fault injection: journal fsync delay set to %d ms (was %d ms)",
                    delay,
                    before.fsync_delay_ms,
                )
        if not isinstance(offset, msgspec.UnsetType):
            self.clock.offset = offset / 1000
            if offset != before.wall_clock_offset_ms:
                logger.warning(
                    "fault injection: wall clock offset set to %+d ms (was %+d ms); leases "
                    "and timeouts do not read the wall clock",
                    offset,
                    before.wall_clock_offset_ms,
                )
        return json_response(self.faults_state(target))

    def faults_state(self, target: FaultTarget) -> FaultsResponse:
        return FaultsResponse(
            fsync_delay_ms=round(target.sync_delay * 1000),
            wall_clock_offset_ms=round(self.clock.offset * 1000),
        )

    # --------------------------------------------------------------- plain

    async def healthz(self, _request: web.Request) -> web.Response:
        return json_response(HealthResponse(ok=True))

    async def openapi_document(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type="application/json")


def build_app(
    service: MasterService,
    *,
    request_timeout: float = 5.0,
    more_routes: Callable[[web.Application, Handlers], None] | None = None,
    metrics: CollectorRegistry | None = None,
    faults: FaultTarget | None = None,
    clock: WallClock | None = None,
) -> web.Application:
    """The aiohttp application serving ``service``; every request ends within
    ``request_timeout`` seconds. ``more_routes`` adds routes that share the
    handlers' leader routing and error mapping (the data path's, ``data_api``).
    ``GET /metrics`` serves ``metrics`` (``master.metrics``; empty when None).
    ``GET|PUT /debug/faults`` act on ``faults`` and on ``clock``'s offset (fault tests
    only; 404 when ``faults`` is None). ``clock`` is the master's wall clock (a fresh
    one when None): the mtimes this API stamps."""
    if not request_timeout > 0:
        raise ValueError(f"request_timeout must be positive, not {request_timeout}")
    api = Handlers(service, request_timeout, faults, clock)
    app = web.Application(middlewares=[api.errors_and_deadline])
    if more_routes is not None:
        more_routes(app, api)
    app.cleanup_ctx.append(api.client_session)
    app.router.add_get("/v1/fs/stat", api.stat)
    app.router.add_get("/v1/fs/list", api.list_directory)
    app.router.add_get("/v1/fs/totals", api.totals)
    app.router.add_post("/v1/fs/mkdir", api.mkdir)
    app.router.add_post("/v1/fs/create", api.create)
    app.router.add_post("/v1/fs/delete", api.delete)
    app.router.add_post("/v1/fs/rename", api.rename)
    app.router.add_post("/v1/fs/setattr", api.set_attributes)
    app.router.add_get("/cluster/status", api.cluster_status)
    app.router.add_get("/cluster/members", api.members)
    app.router.add_post("/cluster/members", api.add_member)
    app.router.add_delete("/cluster/members/{id}", api.remove_member)
    app.router.add_post("/cluster/transfer-leader", api.transfer_leader)
    app.router.add_post("/cluster/step-down", api.step_down)
    app.router.add_get("/debug/faults", api.get_faults)
    app.router.add_put("/debug/faults", api.put_faults)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/openapi.json", api.openapi_document)
    add_console_routes(app, service)  # the web console: GET /, /console/*, /cluster/overview
    app.router.add_get("/metrics", metrics_handler(metrics or CollectorRegistry()))
    return app


def metrics_handler(
    registry: CollectorRegistry,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /metrics``: ``registry`` in Prometheus' text format (no auth, like the status)."""

    async def handler(_request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler


# ------------------------------------------------------------------- helpers


def _result(result: Result[Any], to_json: Callable[[Any], object]) -> web.Response:
    if result.error is not None:
        return _namespace_error(result.error)
    return json_response(to_json(result.value))


def _namespace_error(error: NamespaceError) -> web.Response:
    return json_response(
        ErrorResponse(ErrorBody(error.code, error.message, error.path)),
        status=error.http_status,
    )


def _same(value: Stat) -> object:
    return value


def _listing(value: tuple[DirEntry, ...]) -> object:
    return ListResponse(list(value))


def _deleted(value: Deleted) -> object:
    return DeleteResponse(files=value.files, directories=value.directories)


def _renamed(value: Renamed) -> object:
    return RenameResponse(replaced=value.replaced)


def _member_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ApiError.invalid(f"member id {text!r} is not a positive integer")
    return int(text)


def _unauthorized(message: str) -> ApiError:
    return ApiError(
        401, ApiErrorCode.EACCES, message, headers={"WWW-Authenticate": 'Bearer realm="quorumfs"'}
    )


_REJECTED_CODES: Final[Mapping[int, str]] = {
    400: ErrorCode.EINVAL,
    404: ErrorCode.ENOENT,
    409: ErrorCode.EEXIST,
}


def _rejected(exc: RejectedError) -> ApiError:
    """The service refused the request for good (``contract.RejectedError``)."""
    status = exc.status if exc.status in _REJECTED_CODES else 400
    return ApiError(status, _REJECTED_CODES[status], exc.message)


def _http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    """The router's own refusals (404, 405, 413, ...) as JSON."""
    headers: dict[str, str] = {}
    code: str
    if exc.status == 404:
        code, message = (
            ApiErrorCode.ENOSYS,
            f"no endpoint {request.method} {request.path}; the API is described at "
            "GET /openapi.json",
        )
    elif exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        headers["Allow"] = allowed
        code, message = (
            ApiErrorCode.ENOSYS,
            f"{request.path} does not accept {request.method}; it accepts {allowed}",
        )
    elif exc.status == 413:
        code, message = ApiErrorCode.E2BIG, f"the request body is too large ({exc.reason})"
    elif 400 <= exc.status < 500:
        code, message = ErrorCode.EINVAL, f"bad request: {exc.reason}"
    else:
        code, message = ApiErrorCode.EIO, f"the master could not serve the request: {exc.reason}"
    return ApiError(exc.status, code, message, headers=headers).response()
