"""A volume server given its masters as one DNS name (``--mserver NAME:PORT``,
``--dns-server``): ``DiscoveredMasters`` (the resolved masters, then the ones the
leader named), a whole start against emulated masters through a DNS server in the
test, and a bad nameserver refused at startup."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from dns_fakes import FakeDns, serving
from test_volume_heartbeat import emulated_masters
from test_volume_http_api import run
from test_volume_server import cli, options_for, registered, running
from typer.testing import CliRunner

from quorumfs.client import DnsMasters
from quorumfs.volume.server import DiscoveredMasters, VolumeStartupError, run_volume

NAME = "masters.quorumfs.test"


def test_discovered_masters_are_the_answer_then_the_masters_the_leader_named(
    tmp_path: Path,
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.2 {NAME}\n127.0.0.3 {NAME}\n")

    async def test() -> None:
        masters = DiscoveredMasters(DnsMasters(f"{NAME}:9333", hosts_file=hosts))
        assert list(masters.current) == [f"{NAME}:9333"]  # nothing resolved yet: the name
        assert await masters.addresses() == ("127.0.0.2:9333", "127.0.0.3:9333")
        masters.learn(["127.0.0.3:9333", "127.0.0.9:9333", ""])
        expected = ("127.0.0.2:9333", "127.0.0.3:9333", "127.0.0.9:9333")
        assert await masters.addresses() == expected
        assert masters.current == expected
        assert repr(masters) == f"DiscoveredMasters(DnsMasters('{NAME}:9333'))"

    asyncio.run(test())


def test_a_name_that_stops_resolving_leaves_the_masters_the_leader_named() -> None:
    async def test() -> None:
        with serving(FakeDns({})) as fake:
            dns = DnsMasters(f"{NAME}:9333", nameserver=fake.address, hosts_file=None)
            masters = DiscoveredMasters(dns)
            with pytest.raises(OSError, match="NXDOMAIN"):
                await masters.addresses()
            masters.learn(["127.0.0.9:9333"])
            assert await masters.addresses() == ("127.0.0.9:9333",)

    asyncio.run(test())


def test_a_volume_server_finds_its_masters_through_the_nameserver(tmp_path: Path) -> None:
    async def test() -> None:
        with serving(FakeDns({NAME: ["127.0.0.1"]})) as fake:
            async with emulated_masters() as cluster, aiohttp.ClientSession() as session:
                leader = cluster.addresses[0]
                port = leader.rpartition(":")[2]
                options = options_for(tmp_path, [f"{NAME}:{port}"], dns_server=fake.address)
                async with running(options):
                    await registered(session, options.address)
                    async with session.get(f"http://{options.address}/status") as response:
                        status = await response.json()
                    assert status["masters"] == [leader]
                    assert status["leader"] == leader
                assert (NAME, "A") in fake.queries
                assert cluster.beats[0]

    run(test)


def test_a_bad_nameserver_is_a_startup_error(tmp_path: Path) -> None:
    options = options_for(tmp_path, [f"{NAME}:9333"], dns_server="ns.example")
    with pytest.raises(VolumeStartupError, match=r"nameserver 'ns\.example' is not an IP"):
        asyncio.run(run_volume(options))

    result = CliRunner().invoke(
        cli(),
        ["--dir", str(tmp_path), "--mserver", f"{NAME}:9333", "--dns-server", "ns.example"],
        env={"QUORUMFS_CLUSTER_SECRET": "s" * 32},
    )
    assert result.exit_code == 2
    assert "nameserver 'ns.example' is not an IP" in result.output
