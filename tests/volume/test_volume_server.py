"""The volume server process (``run_volume``) and its command (``quorumfs volume``).

Covers a whole life against emulated masters (start, register, serve a write
and a read, stop on SIGTERM, restart with the stored id and a full report), a
write in flight when the server is told to stop (it completes), and the
startup errors: no or a short secret, a bad master list, a taken port, a
chunk store in use; the CLI turns them into one line and exit code 2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import NamedTuple

import aiohttp
import pytest
import typer
from crc32c import crc32c
from test_volume_heartbeat import emulated_masters
from test_volume_http_api import SECRET, VOLUME_ID, blob, run, token
from typer.testing import CliRunner

from quorumfs.cli.volume import parse_size, volume
from quorumfs.volume.errors import StoreInUseError
from quorumfs.volume.server import VolumeOptions, VolumeStartupError, run_volume
from quorumfs.volume.store import ChunkStore
from quorumfs.wire import CHECKSUM_HEADER, TOKEN_HEADER

MiB = 1 << 20
IN_USE = os.strerror(errno.EADDRINUSE)


def can_connect(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def options_for(directory: Path, masters: list[str], **changes: object) -> VolumeOptions:
    fields: dict[str, object] = {
        "dir": directory,
        "port": free_port(),
        "masters": tuple(masters),
        "secret": SECRET.decode(),
        "pulse_ms": 100,
        "fsync": False,
    }
    return VolumeOptions(**{**fields, **changes})  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Running(NamedTuple):
    task: asyncio.Task[None]
    stop: asyncio.Event


@asynccontextmanager
async def running(options: VolumeOptions) -> AsyncIterator[Running]:
    """``run_volume`` in a task, serving when this yields; stopped after."""
    stop = asyncio.Event()
    messages: list[str] = []
    task = asyncio.create_task(run_volume(options, started=messages.append, stop=stop))
    try:
        await until(lambda: bool(messages) or task.done(), "the server to start")
        if task.done():
            task.result()  # raises the startup error
        assert f"serving http://{options.address}" in messages[0]
        yield Running(task, stop)
    finally:
        stop.set()
        await task


async def registered(session: aiohttp.ClientSession, address: str) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        async with session.get(f"http://{address}/status") as response:
            if (await response.json())["volume_id"] == VOLUME_ID:
                return
        assert asyncio.get_running_loop().time() < deadline, "never registered"
        await asyncio.sleep(0.01)


def test_a_volume_server_registers_serves_stops_on_sigterm_and_restarts_with_its_id(
    tmp_path: Path,
) -> None:
    data = blob(1, 2 * MiB + 3)

    async def test() -> None:
        async with emulated_masters() as cluster, aiohttp.ClientSession() as session:
            options = options_for(tmp_path, cluster.addresses)
            url = f"http://{options.address}/chunks/1"
            async with running(options) as server:
                await registered(session, options.address)
                assert cluster.beats[0][0].volume_id == 0
                headers = {TOKEN_HEADER: token(1)}
                async with session.put(url, data=data, headers=headers) as response:
                    assert response.status == 201
                async with session.get(url) as response:
                    assert await response.read() == data
                    assert response.headers[CHECKSUM_HEADER] == str(crc32c(data))
                os.kill(os.getpid(), signal.SIGTERM)  # handled by the server: it stops
                await asyncio.wait_for(asyncio.shield(server.task), 10)
            identity = json.loads((tmp_path / "identity.json").read_text())
            assert identity == {"volume_id": VOLUME_ID}
            with ChunkStore.open(tmp_path / "chunks") as store:  # closed: the lock is free
                assert store.read_chunk(1) == data

            beats_before = len(cluster.beats[0])
            async with running(options_for(tmp_path, cluster.addresses)):
                await until(lambda: len(cluster.beats[0]) > beats_before, "a heartbeat")
            first = cluster.beats[0][beats_before]
            assert (first.volume_id, first.full_report, first.added) == (VOLUME_ID, True, [1])

    run(test)


def test_a_write_in_flight_when_told_to_stop_completes(tmp_path: Path) -> None:
    data = blob(2, 3 * MiB)
    go_on = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield data[: 3 * MiB // 2]
        await go_on.wait()
        yield data[3 * MiB // 2 :]

    async def test() -> None:
        async with emulated_masters() as cluster, aiohttp.ClientSession() as session:
            options = options_for(tmp_path, cluster.addresses)
            async with running(options) as server:
                await registered(session, options.address)
                headers = {TOKEN_HEADER: token(1), "Content-Length": str(len(data))}
                put = asyncio.create_task(
                    session.put(f"http://{options.address}/chunks/1", data=body(), headers=headers)
                )
                volume_file = tmp_path / "chunks" / "vol-000001.dat"
                await until(
                    lambda: volume_file.exists() and volume_file.stat().st_size > MiB,
                    "the first MiB to reach the volume file",
                )
                server.stop.set()  # the server stops listening, and waits for this upload
                await until(
                    lambda: not can_connect(options.address), "the server to stop listening"
                )
                go_on.set()
                async with await put as response:
                    assert response.status == 201
            with ChunkStore.open(tmp_path / "chunks") as store:
                assert store.read_chunk(1) == data

    run(test)


# ------------------------------------------------------------------ startup errors


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"secret": None}, "QUORUMFS_CLUSTER_SECRET", id="no-secret"),
        pytest.param({"secret": "short"}, "at least 16 bytes", id="short-secret"),
        pytest.param({"masters": ("nowhere",)}, "not host:port", id="bad-master"),
        pytest.param({"masters": ()}, "no master address", id="no-master"),
    ],
)
def test_bad_options_are_startup_errors(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    options = dataclasses.replace(
        options_for(tmp_path, ["127.0.0.1:9333"]),
        **changes,  # type: ignore[arg-type]
    )
    with pytest.raises(VolumeStartupError, match=message):
        asyncio.run(run_volume(options))
    assert not (tmp_path / "chunks").exists()  # refused before anything was touched


@contextmanager
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_taken_port_is_a_one_line_startup_error_and_the_store_is_released(
    tmp_path: Path,
) -> None:
    with taken_port() as port:
        options = options_for(tmp_path, ["127.0.0.1:9333"], port=port)
        with pytest.raises(VolumeStartupError) as caught:
            asyncio.run(run_volume(options))
    assert str(caught.value) == f"cannot listen on 127.0.0.1:{port}: {IN_USE}"
    ChunkStore.open(tmp_path / "chunks").close()  # not left locked


def test_a_store_in_use_is_a_startup_error(tmp_path: Path) -> None:
    with ChunkStore.open(tmp_path / "chunks"):
        with pytest.raises(VolumeStartupError, match="in use by another process"):
            asyncio.run(run_volume(options_for(tmp_path, ["127.0.0.1:9333"])))
        with pytest.raises(StoreInUseError):
            ChunkStore.open(tmp_path / "chunks")


# ------------------------------------------------------------------------- the CLI


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(volume)
    return app


def test_the_cli_reports_startup_errors_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--dir", str(tmp_path), "--mserver", "127.0.0.1:9333"]
    result = runner.invoke(cli(), common, env={"QUORUMFS_CLUSTER_SECRET": None})
    assert result.exit_code == 2
    assert "error:" in result.output
    assert "QUORUMFS_CLUSTER_SECRET" in result.output
    assert "Traceback" not in result.output

    with taken_port() as port:
        result = runner.invoke(
            cli(),
            [*common, "--port", str(port), "--no-fsync"],
            env={"QUORUMFS_CLUSTER_SECRET": SECRET.decode()},
        )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: {IN_USE}"
    ]

    result = runner.invoke(cli(), [*common, "--max", "lots"], env={"QUORUMFS_CLUSTER_SECRET": "x"})
    assert result.exit_code == 2
    assert "--max" in result.output


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("10GiB", 10 << 30),
        ("10G", 10 << 30),
        ("10gb", 10 * 1000**3),
        ("1.5T", int(1.5 * (1 << 40))),
        ("512 MiB", 512 << 20),
        ("7B", 7),
    ],
)
def test_sizes_are_parsed(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "10X", "-5G", "iB", "5 iB", "1e9"])
def test_nonsense_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)
