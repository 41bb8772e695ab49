"""``--master NAME:PORT`` in the CLI: the file commands (``quorumfs.client``) and the
admin commands (``cli.http``, resolved once at start) reach the masters the name
resolves to, asking ``--dns-server`` or ``QUORUMFS_DNS_SERVER``; a name that does not
resolve, or a nameserver that is not an address, is one ``error:`` line, exit 2."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from data_fakes import DataCluster, serving_in_thread
from dns_fakes import FakeDns, serving
from typer.testing import CliRunner

from quorumfs.cli.http import CliError, resolve_masters
from quorumfs.cli.main import app

NAME = "masters.quorumfs.test"


@pytest.fixture
def dns() -> Iterator[FakeDns]:
    with serving(FakeDns({NAME: ["127.0.0.1"]})) as served:
        yield served


@pytest.fixture
def cluster() -> Iterator[DataCluster]:
    with serving_in_thread(DataCluster()) as served:
        yield served


def quorumfs(
    *args: str, stdin: bytes | None = None, dns_env: str | None = None
) -> tuple[int, bytes, str]:
    result = CliRunner().invoke(
        app,
        list(args),
        input=stdin,
        env={"QUORUMFS_MASTER": None, "QUORUMFS_TIMEOUT": None, "QUORUMFS_DNS_SERVER": dns_env},
    )
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout_bytes, result.stderr


def test_file_and_admin_commands_take_one_name(cluster: DataCluster, dns: FakeDns) -> None:
    target = f"{NAME}:{cluster.master.rpartition(':')[2]}"
    flags = ["--master", target, "--dns-server", dns.address]
    code, _, err = quorumfs("fs", "put", "-", "/by-name", *flags, stdin=b"resolved\n")
    assert code == 0, err
    code, out, err = quorumfs("fs", "cat", "/by-name", "--master", target, dns_env=dns.address)
    assert (code, out) == (0, b"resolved\n"), err
    code, out, err = quorumfs("fs", "masterInfo", "--json", *flags)
    assert code == 0, err
    assert json.loads(out)["leader"] == cluster.master
    code, out, err = quorumfs(
        "cluster", "members", "--json", "--master", target, dns_env=dns.address
    )
    assert code == 0, err
    assert json.loads(out)["leader_http"] == cluster.master
    assert {q[0] for q in dns.queries} == {NAME}


def test_resolve_masters_resolves_one_name_and_leaves_lists_alone(dns: FakeDns) -> None:
    assert resolve_masters(f"{NAME}:9333", dns.address) == ["127.0.0.1:9333"]
    assert resolve_masters("127.0.0.1:1,127.0.0.2:1", dns.address) == [
        "127.0.0.1:1",
        "127.0.0.2:1",
    ]
    with pytest.raises(CliError, match=r"--master: cannot resolve .*NXDOMAIN.*--dns-server"):
        resolve_masters("nowhere.quorumfs.test:9333", dns.address)
    for masters in (f"{NAME}:9333", "127.0.0.1:1"):  # a typo is reported even if not needed
        with pytest.raises(CliError, match=r"--dns-server: nameserver 'ns\.example'"):
            resolve_masters(masters, "ns.example")


def test_unresolvable_names_and_bad_nameservers_are_one_line_exit_2(dns: FakeDns) -> None:
    for args in (
        ["fs", "ls", "/", "--master", "nowhere.quorumfs.test:1", "--timeout", "0.5"],
        ["fs", "masterInfo", "--master", "nowhere.quorumfs.test:1"],
    ):
        code, _, err = quorumfs(*args, "--dns-server", dns.address)
        assert code == 2
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert "NXDOMAIN" in err
    code, _, err = quorumfs("fs", "ls", "/", "--master", f"{NAME}:1", "--dns-server", "ns.example")
    assert code == 2
    assert err.startswith("error: --dns-server: nameserver 'ns.example' is not an IP"), err
