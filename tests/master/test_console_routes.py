"""The web console's routes against fake services: the page and its files are served
with their content types and without a token, they load nothing from elsewhere, and
``GET /cluster/overview`` gathers every master's own status (or why it has none).
The browser test over real masters is ``tests/integration/test_console.py``."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from test_http_api import Client, FakeService, assert_error, call, closed_port, run

from quorumfs.master.console import (
    ASSETS,
    ClusterOverview,
    MasterReport,
    add_console_routes,
    console_asset,
)
from quorumfs.master.contract import ClusterStatus, MemberInfo, MemberRole
from quorumfs.master.http_api import build_app, load_openapi_document


@asynccontextmanager
async def serve(service: FakeService) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(service, request_timeout=3.0))) as client:
        yield client


async def fetch(client: Client, path: str, headers: dict[str, str] | None = None) -> Any:
    async with client.get(path, headers=headers) as response:
        return response.status, response.content_type, response.charset, await response.text()


@pytest.mark.parametrize(
    ("path", "content_type", "mentions"),
    [
        ("/", "text/html", 'id="step-down"'),
        ("/console/index.html", "text/html", "<title>quorumfs console</title>"),
        ("/console/console.js", "text/javascript", "sessionStorage"),
        ("/console/console.css", "text/css", "td.role-LEADER"),
    ],
)
def test_the_console_is_served_without_a_token(path: str, content_type: str, mentions: str) -> None:
    async def test() -> None:
        service = FakeService(2, leader=False)
        service.hang = True  # the page never waits on Raft
        async with serve(service) as client:
            status, kind, charset, text = await fetch(client, path)
            assert (status, kind, charset) == (200, content_type, "utf-8")
            assert mentions in text
            # A wrong token does not matter either: the page is public.
            status, _, _, _ = await fetch(client, path, {"Authorization": "Bearer wrong"})
            assert status == 200

    run(test)


def test_an_unknown_console_file_is_a_json_404() -> None:
    async def test() -> None:
        async with serve(FakeService()) as client:
            for path in ("/console/nope.js", "/console/..%2Fopenapi.json", "/console/"):
                answer = await call(client, "GET", path)
                assert_error(answer, 404, "ENOSYS")

    run(test)


def test_the_console_loads_nothing_from_elsewhere_and_keeps_the_token_out_of_cookies() -> None:
    page = console_asset("index.html").decode()
    script = console_asset("console.js").decode()
    style = console_asset("console.css").decode()
    assert set(ASSETS) == {"index.html", "console.js", "console.css"}
    for name in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert name.startswith("/console/"), name
        assert name.removeprefix("/console/") in ASSETS
    for text in (page, script, style):
        assert "https://" not in text
        assert "@import" not in text
    for fetched in re.findall(r'getJson\("([^"]+)"\)|fetch\("([^"]+)"', script):
        assert next(p for p in fetched if p).startswith("/"), fetched  # this master only
    assert "document.cookie" not in script
    assert "localStorage" not in script
    assert 'Authorization: "Bearer " + token' in script
    assert "window.confirm(" in script
    # Roles are shown exactly as the API names them (MemberRole's values), not mapped.
    assert '"role role-" + role' in script


async def _start_masters(stack: AsyncExitStack, count: int) -> list[tuple[FakeService, Client]]:
    masters = []
    for node_id in range(1, count + 1):
        service = FakeService(node_id, leader=node_id == 1)
        client = await stack.enter_async_context(serve(service))
        masters.append((service, client))
    members = [
        MemberInfo(
            id=service.node_id,
            http=f"{client.server.host}:{client.server.port}",
            raft=f"127.0.0.1:{19330 + service.node_id}",  # never dialled here
            role=MemberRole.LEADER if service.leader else MemberRole.FOLLOWER,
            voter=True,
        )
        for service, client in masters
    ]
    for service, _ in masters:
        service.members = list(members)
        service.leader_address = members[0].http
    return masters


def test_the_overview_gathers_every_masters_own_status() -> None:
    async def test() -> None:
        async with AsyncExitStack() as stack:
            masters = await _start_masters(stack, 3)
            follower_service, follower = masters[1]
            follower_service.hang = True  # the overview never waits on Raft
            answer = await call(follower, "GET", "/cluster/overview")
            assert answer.status == 200
            overview = msgspec.convert(answer.body, ClusterOverview)
            assert overview.served_by == 2
            assert [r.id for r in overview.masters] == [1, 2, 3]
            for report, (service, _) in zip(overview.masters, masters, strict=True):
                assert report.reachable, report
                assert report.error == ""
                assert report.round_trip_ms is not None and report.round_trip_ms >= 0
                assert report.status == service.cluster_status()
                assert report.http == service.members[report.id - 1].http
            roles = [r.status.role for r in overview.masters if r.status is not None]
            assert roles == [MemberRole.LEADER, MemberRole.FOLLOWER, MemberRole.FOLLOWER]

    run(test)


def test_the_overview_says_why_a_master_did_not_answer() -> None:
    async def test() -> None:
        async with AsyncExitStack() as stack:
            masters = await _start_masters(stack, 2)
            service, client = masters[0]
            gone = MemberInfo(
                id=3,
                http=f"127.0.0.1:{closed_port()}",
                raft="127.0.0.1:1",
                role=MemberRole.FOLLOWER,
                voter=True,
            )
            service.members.append(gone)
            answer = await call(client, "GET", "/cluster/overview")
            assert answer.status == 200
            overview = msgspec.convert(answer.body, ClusterOverview)
            assert [(r.id, r.reachable) for r in overview.masters] == [
                (1, True),
                (2, True),
                (3, False),
            ]
            down = overview.masters[2]
            assert (down.http, down.status, down.round_trip_ms) == (gone.http, None, None)
            assert down.error

    run(test)


def test_the_overview_waits_for_a_silent_master_only_so_long() -> None:
    async def test() -> None:
        async def never(_request: web.Request) -> web.Response:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        silent = web.Application()
        silent.router.add_get("/cluster/status", never)
        async with TestServer(silent) as hanging:
            service = FakeService()
            service.members.append(
                MemberInfo(
                    id=4,
                    http=f"{hanging.host}:{hanging.port}",
                    raft="127.0.0.1:1",
                    role=MemberRole.FOLLOWER,
                    voter=True,
                )
            )
            service.members = [m for m in service.members if m.id in (1, 4)]
            app = web.Application()
            add_console_routes(app, service, peer_timeout=0.2)
            async with (
                TestClient(TestServer(app)) as client,
                client.get("/cluster/overview") as response,
            ):
                assert response.status == 200
                overview = msgspec.json.decode(await response.read(), type=ClusterOverview)
            by_id = {r.id: r for r in overview.masters}
            assert by_id[1].reachable
            assert not by_id[4].reachable
            assert "no answer within 0.2 s" in by_id[4].error

    run(test)


def test_the_overview_is_documented_as_its_structs_are() -> None:
    """Like ``test_openapi_schemas_match_the_wire_structs``, for the console's shapes."""
    schemas = json.loads(load_openapi_document())["components"]["schemas"]
    structs: list[type[msgspec.Struct]] = [ClusterOverview, MasterReport, ClusterStatus]
    _, generated = msgspec.json.schema_components(
        structs, ref_template="#/components/schemas/{name}"
    )
    for struct in structs:
        schema = schemas[struct.__name__]
        fields = msgspec.structs.fields(struct)
        assert list(schema["properties"]) == [f.encode_name for f in fields], struct
        for name, prop in schema["properties"].items():
            shown = {k: v for k, v in prop.items() if k not in ("description", "examples")}
            assert shown == generated[struct.__name__]["properties"][name], (struct, name)
        assert schema["required"] == [f.encode_name for f in fields], struct
    assert "lease_remaining_ms" in schemas["ClusterStatus"]["properties"]
