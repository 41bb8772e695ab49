"""The web console every master serves at ``/``, and the one JSON view it needs.

The console is a static page (``index.html``, ``console.js``, ``console.css``
beside this module, package data: no build step, nothing fetched from elsewhere)
that polls the master it was loaded from:

- ``GET /cluster/overview``: every master's own ``/cluster/status``, gathered by
  this master (so the browser needs to reach one master only, and no CORS is
  involved), with whether it answered and how fast. A member's term, role, commit
  and applied index come from the member itself; match index, last contact and the
  lease are in the leader's report.
- ``GET /v1/volumes``: the volume servers as the leader sees them (a follower
  forwards it).
- ``POST /cluster/step-down`` (the Step Down button, leader only): needs the admin
  token, which the page keeps in the tab's ``sessionStorage``.

The pages and the overview are read-only and need no token.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import time
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import msgspec
from aiohttp import web

from ..contract import ClusterStatus, MasterService

__all__ = ["ClusterOverview", "MasterReport", "add_console_routes", "console_asset"]

ASSETS: Final = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
}
"""The files the console is made of, and their content types."""

PEER_TIMEOUT: Final = 1.0
"""How long the overview waits for another master's status (it polls every second)."""


class MasterReport(msgspec.Struct, frozen=True, kw_only=True):
    """One master, as the master serving the overview reached it."""

    id: int
    http: str
    reachable: bool
    """It answered with its status (the serving master itself always does)."""
    round_trip_ms: int | None
    """How long its status took to come back; None when it did not."""
    status: ClusterStatus | None
    """Its own ``/cluster/status``; None when it did not answer."""
    error: str
    """Why it did not answer (empty when it did)."""


class ClusterOverview(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /cluster/overview``: every member master, each reporting on itself."""

    served_by: int
    """The node id of the master that gathered this overview."""
    masters: list[MasterReport]
    """Sorted by id: the members this master knows, each with its own status."""


def console_asset(name: str) -> bytes:
    """One of the console's files (package data beside this module)."""
    return importlib.resources.files(__package__).joinpath(name).read_bytes()


class _Console:
    def __init__(self, service: MasterService, peer_timeout: float) -> None:
        self.service = service
        self.peer_timeout = peer_timeout
        self.assets = {name: console_asset(name) for name in ASSETS}
        self.session: aiohttp.ClientSession | None = None
        self._decoder = msgspec.json.Decoder(ClusterStatus)

    async def client_session(self, _app: web.Application) -> AsyncIterator[None]:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(self.peer_timeout))
        try:
            yield
        finally:
            await self.session.close()
            self.session = None

    def _asset(self, name: str) -> web.Response:
        return web.Response(
            body=self.assets[name],
            content_type=ASSETS[name],
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def index(self, _request: web.Request) -> web.Response:
        return self._asset("index.html")

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.assets:
            raise web.HTTPNotFound()
        return self._asset(name)

    async def overview(self, _request: web.Request) -> web.Response:
        own = self.service.cluster_status()
        others = sorted((m for m in own.members if m.id != own.id), key=lambda m: m.id)
        reports = await asyncio.gather(
            self._own(own), *(self._ask(member.id, member.http) for member in others)
        )
        reports.sort(key=lambda report: report.id)
        overview = ClusterOverview(served_by=own.id, masters=list(reports))
        return web.Response(body=msgspec.json.encode(overview), content_type="application/json")

    async def _own(self, status: ClusterStatus) -> MasterReport:
        http = next((m.http for m in status.members if m.id == status.id), "")
        return MasterReport(
            id=status.id, http=http, reachable=True, round_trip_ms=0, status=status, error=""
        )

    async def _ask(self, member_id: int, http: str) -> MasterReport:
        assert self.session is not None, "the client session lives as long as the app runs"
        started = time.monotonic()
        error: str
        try:
            async with self.session.get(f"http://{http}/cluster/status") as answer:
                body = await answer.read()
                if answer.status == 200:
                    status = self._decoder.decode(body)
                    elapsed = round((time.monotonic() - started) * 1000)
                    return MasterReport(
                        id=member_id,
                        http=http,
                        reachable=True,
                        round_trip_ms=elapsed,
                        status=status,
                        error="",
                    )
                error = f"answered HTTP {answer.status}"
        except TimeoutError:
            error = f"no answer within {self.peer_timeout:g} s"
        except aiohttp.ClientError as exc:
            error = str(exc) or type(exc).__name__
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            error = f"answered something that is not a cluster status ({exc})"
        return MasterReport(
            id=member_id, http=http, reachable=False, round_trip_ms=None, status=None, error=error
        )


def add_console_routes(
    app: web.Application, service: MasterService, *, peer_timeout: float = PEER_TIMEOUT
) -> None:
    """Serve the console at ``/`` and ``/console/{name}``, and ``GET /cluster/overview``."""
    console = _Console(service, peer_timeout)
    app.cleanup_ctx.append(console.client_session)
    app.router.add_get("/", console.index)
    app.router.add_get("/console/{name}", console.asset)
    app.router.add_get("/cluster/overview", console.overview)
