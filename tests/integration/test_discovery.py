"""Discovery through DNS: the masters are one name with three A records, served by a
real DNS server (dnsmasq) on loopback, and everything is given only that name.

Three masters listen on 127.0.0.2, 127.0.0.3 and 127.0.0.4, all on the same port;
dnsmasq publishes the three addresses for ``masters.quorumfs.test``. Two volume
servers get ``--mserver masters.quorumfs.test:PORT --dns-server 127.0.0.1:N``.
The leader is killed; then the volume servers stay writable (the new leader's
``GET /v1/volumes``), and clients given only the name and the nameserver (the
Python client, and the CLI's file and admin commands) write and read a file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnsmasq import Dnsmasq, dnsmasq_binary
from procs import DataCluster, Master, Volume, wait_for

from quorumfs.client import MasterClient, RetryPolicy

NAME = "masters.quorumfs.test"
IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[Dnsmasq]:
    if dnsmasq_binary() is None:
        pytest.fail("dnsmasq is missing: `make test` installs it (.ci/system-deps)")
    server = Dnsmasq(tmp_path, {NAME: IPS})
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_clients_and_volume_servers_find_the_masters_by_name_with_one_down(
    tmp_path: Path, dns_server: Dnsmasq
) -> None:
    def by_name(masters: list[Master]) -> list[str]:
        return [f"{NAME}:{masters[0].port}"]

    cluster = DataCluster(
        tmp_path,
        volumes=2,
        ips=IPS,
        mserver=by_name,
        volume_args=("--dns-server", dns_server.address),
    )
    try:
        cluster.start()  # returns once both volume servers are writable: they found the leader
        target = by_name(cluster.masters)[0]
        resolved = sorted(m.address for m in cluster.masters)
        assert [m.ip for m in cluster.masters] == list(IPS)
        for volume in cluster.volumes:
            status = volume.status()
            assert status is not None
            assert sorted(status["masters"]) == resolved

        old = cluster.leader()
        old.kill(signal.SIGKILL)
        new = cluster.leader()
        assert new is not old

        # The volume servers move to the new leader and stay writable there.
        cluster.wait_writable(2)
        wait_for(
            lambda: all(_leader_of(v) == new.address for v in cluster.volumes),
            f"the volume servers to heartbeat to {new.address}",
        )

        # A client that only knows the name (and the nameserver) works with one master down.
        policy = RetryPolicy(deadline=20.0)
        data = os.urandom(300_000)
        with MasterClient(target, policy=policy, nameserver=dns_server.address) as client:
            client.mkdir("/discovery", parents=True)
            client.put("/discovery/a.bin", data)
            assert client.read("/discovery/a.bin") == data
            assert client.leader == new.address
            assert client.master_info().leader == new.address

        # The CLI: file commands with --dns-server, an admin command with the variable.
        env = {**os.environ, "QUORUMFS_DNS_SERVER": dns_server.address}
        cat = _cli("fs", "cat", "/discovery/a.bin", "--master", target, env=env)
        assert cat.stdout == data
        _cli("fs", "put", "-", "/discovery/b.txt", "--master", target,
             "--dns-server", dns_server.address, stdin=b"from the cli\n")  # fmt: skip
        with MasterClient(target, policy=policy, nameserver=dns_server.address) as client:
            assert client.read("/discovery/b.txt") == b"from the cli\n"
        volumes = json.loads(
            _cli("cluster", "volumes", "--json", "--master", target, env=env).stdout
        )
        assert sum(1 for v in volumes["volumes"] if v["writable"]) == 2
        info = json.loads(_cli("fs", "masterInfo", "--json", "--master", target, env=env).stdout)
        assert info["leader"] == new.address
        assert sorted(info["masters"]) == resolved

        queries = dns_server.log_text().count(f"query[A] {NAME}")
        assert queries >= 4, "the clients, the volume servers and the CLI asked dnsmasq"
    finally:
        cluster.stop()


def _leader_of(volume: Volume) -> str | None:
    status = volume.status()
    return None if status is None else status["leader"]


def _cli(
    *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(
        [sys.executable, "-m", "quorumfs", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"quorumfs {' '.join(args)}: {done.stderr.decode()}"
    return done
