"""``quorumfs fs put|get|cat|ls|stat|mkdir|rm|mv`` through typer's CliRunner, against the
data-path fakes (``data_fakes``: a leader over the real namespace and in-memory volume
servers) served from a thread.

Covers the round trip of a local file and of stdin, a directory as destination, listings
and attributes (text and JSON), renames and deletes, and failures as one ``error:`` line
with the exit code (1: refused by the cluster; 2: a local or availability problem), with
no half file left by a failed ``get``.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from data_fakes import DataCluster, serving_in_thread
from typer.testing import CliRunner

from quorumfs.cli.main import app


@pytest.fixture
def cluster() -> Iterator[DataCluster]:
    with serving_in_thread(DataCluster()) as served:
        yield served


class Run:
    def __init__(self, exit_code: int, stdout: bytes, stderr: str) -> None:
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


def fs(cluster: DataCluster | str, *args: str, stdin: bytes | None = None) -> Run:
    master = cluster if isinstance(cluster, str) else cluster.master
    result = CliRunner().invoke(
        app,
        ["fs", *args, "--master", master, "--timeout", "2"],
        input=stdin,
        env={"QUORUMFS_MASTER": None, "QUORUMFS_TIMEOUT": None, "COLUMNS": "200"},
    )
    assert "Traceback" not in result.output
    return Run(result.exit_code, result.stdout_bytes, result.stderr)


def ok(run: Run) -> Run:
    assert run.exit_code == 0, run.stderr
    return run


def one_line_error(run: Run, exit_code: int, *words: str) -> None:
    assert run.exit_code == exit_code, (run.exit_code, run.stderr)
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for word in words:
        assert word in lines[0]


def test_put_ls_stat_cat_get_round_trip(cluster: DataCluster, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    local = tmp_path / "data.bin"
    local.write_bytes(data)
    ok(fs(cluster, "mkdir", "/d/e", "-p"))
    ok(fs(cluster, "put", str(local), "/d/"))  # ends in /: inside, with the local name
    ok(fs(cluster, "put", str(local), "/d/e", "--replication", "1"))  # a directory: inside
    assert fs(cluster, "ls", "/d").stdout.decode().splitlines() == ["data.bin", "e/"]
    assert ok(fs(cluster, "cat", "/d/data.bin")).stdout == data
    assert cluster.leader.namespace.stat("/d/e/data.bin").unwrap().replication == 1

    listing = ok(fs(cluster, "ls", "-l", "/d")).stdout.decode().splitlines()
    assert listing[0].startswith("-rw-r--r--  root") and listing[0].endswith(" data.bin")
    assert f" {len(data)}  " in listing[0]
    assert listing[1].startswith("drwxr-xr-x") and listing[1].endswith(" e/")
    assert ok(fs(cluster, "ls", "/d/data.bin")).stdout == b"data.bin\n"  # a file lists itself

    text = ok(fs(cluster, "stat", "/d/data.bin")).stdout.decode()
    assert "kind:        file" in text and f"size:        {len(data)}" in text
    assert "version:     1" in text
    stat = json.loads(ok(fs(cluster, "stat", "/d/data.bin", "--json")).stdout)
    assert (stat["path"], stat["size"], stat["kind"]) == ("/d/data.bin", len(data), "file")
    entries = json.loads(ok(fs(cluster, "ls", "/d", "--json")).stdout)
    assert [e["name"] for e in entries] == ["data.bin", "e"]

    out = tmp_path / "out.bin"
    ok(fs(cluster, "get", "/d/data.bin", str(out)))
    assert out.read_bytes() == data
    into = tmp_path / "into"
    into.mkdir()
    ok(fs(cluster, "get", "/d/e/data.bin", str(into)))  # a directory: inside, remote name
    assert (into / "data.bin").read_bytes() == data
    assert ok(fs(cluster, "get", "/d/data.bin", "-")).stdout == data


def test_put_from_stdin_then_rename_and_delete(cluster: DataCluster) -> None:
    ok(fs(cluster, "put", "-", "/piped", stdin=b"from a pipe\n"))
    assert ok(fs(cluster, "cat", "/piped")).stdout == b"from a pipe\n"
    ok(fs(cluster, "mkdir", "/dir"))
    ok(fs(cluster, "mv", "/piped", "/dir/moved"))
    assert ok(fs(cluster, "ls", "/dir")).stdout == b"moved\n"
    one_line_error(fs(cluster, "rm", "/dir"), 1, "ENOTEMPTY")
    ok(fs(cluster, "rm", "/dir", "-r"))
    assert ok(fs(cluster, "ls")).stdout == b""
    one_line_error(fs(cluster, "put", "-", "/dir/", stdin=b"x"), 2, "name the file")


def test_errors_are_one_line_with_exit_codes(cluster: DataCluster, tmp_path: Path) -> None:
    one_line_error(fs(cluster, "cat", "/missing"), 1, "/missing", "ENOENT")
    one_line_error(fs(cluster, "stat", "/missing"), 1, "ENOENT")
    one_line_error(fs(cluster, "ls", "/missing"), 1, "ENOENT")
    one_line_error(fs(cluster, "mkdir", "/a/b"), 1, "ENOENT")
    out = tmp_path / "out.bin"
    one_line_error(fs(cluster, "get", "/missing", str(out)), 1, "ENOENT")
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one
    one_line_error(fs(cluster, "put", str(tmp_path / "nope"), "/x"), 2, "does not exist")
    one_line_error(fs("not-an-address", "ls", "/"), 2, "--master", "host:port")


def test_a_get_that_fails_midway_leaves_the_local_file_alone(
    cluster: DataCluster, tmp_path: Path
) -> None:
    ok(fs(cluster, "put", "-", "/f", stdin=b"remote bytes"))
    out = tmp_path / "out.bin"
    out.write_bytes(b"local bytes")
    cluster[1].dead = cluster[2].dead = True
    one_line_error(fs(cluster, "get", "/f", str(out)), 2, "could not be read", "EIO")
    assert out.read_bytes() == b"local bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    one_line_error(fs(cluster, "put", "-", "/g", stdin=b"data"), 2, "could not be stored")


def test_no_master_is_exit_code_2() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
        run = CliRunner().invoke(
            app,
            ["fs", "cat", "/f", "--master", address, "--timeout", "0.3"],
            env={"QUORUMFS_MASTER": None, "QUORUMFS_TIMEOUT": None},
        )
    assert run.exit_code == 2
    assert run.stderr.startswith("error: ") and "connection refused" in run.stderr
