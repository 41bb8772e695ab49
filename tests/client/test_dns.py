"""``DnsMasters`` and ``master_source`` against a DNS server in the test (``dns_fakes``):
the answer and its order, a cache that is not asked per call, re-resolution in the
background when stale, the last good answer kept (and logged) when a refresh fails,
``OSError`` when there was never an answer, the hosts file first, the nameserver
option; and the client reaching masters through a name. Waits are polls with
deadlines; only ``refresh`` and ``timeout`` are made short."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from dns_fakes import FakeDns, serving
from test_client import FAST, FakeCluster, cluster_in_thread, running

from quorumfs.client import (
    AsyncMasterClient,
    DnsMasters,
    MasterClient,
    Nameserver,
    RetryPolicy,
    StaticMasters,
    Unavailable,
    dns_name_of,
    master_source,
    parse_nameserver,
)

NAME = "masters.quorumfs.test"


@pytest.fixture
def fake() -> Iterator[FakeDns]:
    with serving(FakeDns({NAME: ["127.0.0.3", "127.0.0.2", "::1"]})) as served:
        yield served


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=20))


def source(fake: FakeDns, name: str = NAME, **options: float) -> DnsMasters:
    return DnsMasters(f"{name}:9333", nameserver=fake.address, hosts_file=None, **options)


async def until(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- resolving


def test_a_name_gives_every_a_and_aaaa_record_sorted_and_is_not_asked_per_call(
    fake: FakeDns,
) -> None:
    async def test() -> None:
        masters = source(fake)
        expected = ("127.0.0.2:9333", "127.0.0.3:9333", "[::1]:9333")
        assert await masters.addresses() == expected
        asked = fake.query_count()
        assert sorted(fake.queries) == [(NAME, "A"), (NAME, "AAAA")]
        for _ in range(20):
            assert await masters.addresses() == expected
        assert fake.query_count() == asked  # the cached answer: no look-up per call
        await masters.aclose()

    run(test)


def test_concurrent_first_calls_share_one_look_up(fake: FakeDns) -> None:
    async def test() -> None:
        masters = source(fake)
        answers = await asyncio.gather(*(masters.addresses() for _ in range(10)))
        assert len(set(answers)) == 1
        assert fake.query_count() == 2  # one A, one AAAA

    run(test)


def test_a_stale_answer_is_re_resolved_in_the_background(fake: FakeDns) -> None:
    async def test() -> None:
        masters = source(fake, refresh=0.05)
        first = await masters.addresses()
        fake.set_records(NAME, ["127.0.0.4"])

        async def moved() -> bool:
            return await masters.addresses() == ("127.0.0.4:9333",)

        await until(moved, "the new answer")
        assert first != masters.answer
        await masters.aclose()

    run(test)


def test_a_failed_refresh_keeps_the_last_answer_and_says_so(
    fake: FakeDns, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quorumfs.client")

    async def test() -> None:
        masters = source(fake, refresh=0.05, timeout=0.3)
        good = await masters.addresses()
        fake.mode = "drop"  # the nameserver stops answering
        asked = fake.query_count()

        async def refresh_failed() -> bool:
            started = time.monotonic()
            answer = await masters.addresses()
            assert time.monotonic() - started < 0.2, "a call never waits for a refresh"
            assert answer == good
            return masters.last_error is not None

        await until(refresh_failed, "a refresh to fail")
        assert fake.query_count() > asked
        assert "no answer within 0.3 s" in (masters.last_error or "")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "keeping the last answer: 127.0.0.2:9333" in warnings[0].getMessage()

        fake.mode = "refuse"  # a second failure in a row is not warned about again

        async def refused() -> bool:
            await masters.addresses()
            return "REFUSED" in (masters.last_error or "")

        await until(refused, "a refused refresh")
        assert await masters.addresses() == good
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

        fake.mode = "answer"
        fake.set_records(NAME, ["127.0.0.5"])

        async def recovered() -> bool:
            return await masters.addresses() == ("127.0.0.5:9333",)

        await until(recovered, "the nameserver to answer again")
        assert masters.last_error is None
        assert any("resolves again" in r.getMessage() for r in caplog.records)
        await masters.aclose()

    run(test)


def test_a_refresh_that_finds_no_record_keeps_the_last_answer(fake: FakeDns) -> None:
    async def test() -> None:
        masters = source(fake, refresh=0.05)
        good = await masters.addresses()
        fake.set_records(NAME, [])

        async def failed() -> bool:
            assert await masters.addresses() == good
            return masters.last_error is not None

        await until(failed, "an empty refresh")
        assert masters.last_error == f"{NAME} has no A or AAAA record"
        await masters.aclose()

    run(test)


@pytest.mark.parametrize(
    ("name", "mode", "words"),
    [
        ("nowhere.quorumfs.test", "answer", "no such name (NXDOMAIN)"),
        (NAME, "refuse", "REFUSED"),
        (NAME, "drop", "no answer within 0.2 s"),
    ],
)
def test_without_any_answer_a_call_raises_oserror_saying_why(
    fake: FakeDns, name: str, mode: str, words: str
) -> None:
    fake.mode = mode  # type: ignore[assignment]

    async def test() -> None:
        masters = source(fake, name, timeout=0.2)
        with pytest.raises(OSError, match=r"cannot resolve the masters' name") as raised:
            await masters.addresses()
        message = str(raised.value)
        assert name in message and f"nameserver {fake.address}" in message and words in message
        asked = fake.query_count()
        with pytest.raises(OSError, match=re.escape(words)):
            await masters.addresses()  # at once: a failed look-up is not repeated per call
        assert fake.query_count() == asked

    run(test)


def test_the_first_answer_comes_when_the_nameserver_does(fake: FakeDns) -> None:
    fake.mode = "refuse"

    async def test() -> None:
        masters = source(fake, refresh=0.05)
        with pytest.raises(OSError):
            await masters.addresses()
        fake.mode = "answer"

        async def answered() -> bool:
            try:
                return bool(await masters.addresses())
            except OSError:
                return False

        await until(answered, "a first answer")

    run(test)


def test_the_hosts_file_comes_before_dns(fake: FakeDns, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "# comment\n127.0.0.9   box.example box  # alias\nfe80::1%eth0 other\n::1 BOX.example.\n"
    )

    async def test() -> None:
        masters = DnsMasters("box.example:8", nameserver=fake.address, hosts_file=hosts)
        assert await masters.addresses() == ("127.0.0.9:8", "[::1]:8")
        not_listed = DnsMasters(f"{NAME}:8", nameserver=fake.address, hosts_file=hosts)
        assert await not_listed.addresses() == ("127.0.0.2:8", "127.0.0.3:8", "[::1]:8")
        assert [q[0] for q in fake.queries] == [NAME, NAME]  # box.example never asked

    run(test)


def test_resolve_once_is_the_same_look_up_without_an_event_loop(
    fake: FakeDns, tmp_path: Path
) -> None:
    masters = source(fake)
    assert masters.resolve_once() == ("127.0.0.2:9333", "127.0.0.3:9333", "[::1]:9333")
    assert masters.answer == masters.resolve_once()
    fake.mode = "refuse"
    assert masters.resolve_once() == masters.answer  # the last good answer is kept
    with pytest.raises(OSError, match="REFUSED"):
        source(fake).resolve_once()
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.7 box\n")
    assert DnsMasters("box:1", nameserver=fake.address, hosts_file=hosts).resolve_once() == (
        "127.0.0.7:1",
    )


# ------------------------------------------------------------------ options


def test_nameservers_are_ip_addresses_with_an_optional_port() -> None:
    assert parse_nameserver("127.0.0.1") == Nameserver("127.0.0.1", 53)
    assert parse_nameserver(" 127.0.0.1:5353 ") == Nameserver("127.0.0.1", 5353)
    assert parse_nameserver("::1") == Nameserver("::1", 53)
    assert parse_nameserver("[::1]:5353") == Nameserver("::1", 5353)
    assert parse_nameserver("[::1]") == Nameserver("::1", 53)
    assert str(Nameserver("::1", 5353)) == "[::1]:5353"
    for bad in ("", "ns.example", "ns.example:53", "127.0.0.1:0", "127.0.0.1:x", "[::1]x", "1.2"):
        with pytest.raises(ValueError, match="nameserver"):
            parse_nameserver(bad)


def test_one_name_is_dns_and_anything_else_a_static_list() -> None:
    assert dns_name_of("masters.example:9333") == "masters.example:9333"
    assert dns_name_of(["localhost:9333"]) == "localhost:9333"
    assert dns_name_of(" m.example:1 ,") == "m.example:1"
    for static in ("127.0.0.1:9333", "[::1]:9333", "a:1,b:2", ["a:1", "127.0.0.1:2"]):
        assert dns_name_of(static) is None
    assert isinstance(master_source("a:1,b:2"), StaticMasters)
    assert isinstance(master_source("127.0.0.1:1", nameserver="127.0.0.1"), StaticMasters)
    named = master_source("masters.example:9333", nameserver="10.0.0.53:5353")
    assert isinstance(named, DnsMasters)
    assert named.nameserver == Nameserver("10.0.0.53", 5353) and named.port == 9333
    assert repr(named) == "DnsMasters('masters.example:9333' via 10.0.0.53:5353)"
    with pytest.raises(ValueError, match="nameserver"):
        master_source("127.0.0.1:1", nameserver="ns.example")  # a typo is reported anyway
    with pytest.raises(ValueError, match="host:port"):
        master_source("masters.example")
    with pytest.raises(ValueError, match="not a name"):
        DnsMasters("127.0.0.1:9333")
    with pytest.raises(ValueError, match="refresh"):
        DnsMasters("m.example:1", refresh=0)
    with pytest.raises(ValueError, match="MasterSource"):
        AsyncMasterClient(StaticMasters("a:1"), nameserver="127.0.0.1")


# ------------------------------------------------------------------- client


def test_a_client_given_a_name_tries_each_address_it_resolves_to(fake: FakeDns) -> None:
    async def test() -> None:
        async with running(FakeCluster(1)) as cluster:
            port = cluster[1].address.rpartition(":")[2]
            # 127.0.0.2 has nothing on that port: refused, skipped, the other one serves.
            fake.set_records(NAME, ["127.0.0.2", "127.0.0.1"])
            async with AsyncMasterClient(
                f"{NAME}:{port}", policy=FAST, nameserver=fake.address
            ) as client:
                await client.mkdir("/by-name")
                assert (await client.stat("/by-name")).kind.value == "directory"
                assert (await client.master_info()).leader == cluster[1].address
            assert [s.path for s in cluster[1].seen][-1] == "/cluster/status"

    run(test)


def test_a_client_whose_name_never_resolves_is_unavailable_naming_why(fake: FakeDns) -> None:
    async def test() -> None:
        policy = RetryPolicy(deadline=0.5, backoff_initial=0.01, backoff_max=0.05)
        async with AsyncMasterClient(
            "nowhere.quorumfs.test:9333", policy=policy, nameserver=fake.address
        ) as client:
            with pytest.raises(Unavailable, match=r"cannot resolve .* no such name \(NXDOMAIN\)"):
                await client.stat("/")

    run(test)


def test_a_slow_first_look_up_does_not_outlast_the_calls_deadline(fake: FakeDns) -> None:
    fake.mode = "drop"  # the look-up would take its whole 2 s timeout

    async def test() -> None:
        policy = RetryPolicy(deadline=0.3, backoff_initial=0.01, backoff_max=0.05)
        masters = source(fake, timeout=2.0)
        async with AsyncMasterClient(masters, policy=policy) as client:
            started = time.monotonic()
            with pytest.raises(Unavailable, match="did not answer in time"):
                await client.stat("/")
            assert time.monotonic() - started < 1.0
        await masters.aclose()

    run(test)


def test_the_sync_client_takes_a_name_too(fake: FakeDns) -> None:
    fake.set_records(NAME, ["127.0.0.1"])
    with cluster_in_thread(1) as cluster:
        port = cluster[1].address.rpartition(":")[2]
        with MasterClient(f"{NAME}:{port}", policy=FAST, nameserver=fake.address) as client:
            client.mkdir("/sync", parents=True)
            assert [entry.name for entry in client.ls("/")] == ["sync"]
