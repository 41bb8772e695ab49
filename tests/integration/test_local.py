"""``quorumfs local`` (the README's first command) starts a working cluster and stops on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from procs import free_port_pair, http

from quorumfs.client import MasterClient


def test_local_starts_masters_and_volume_servers_that_serve_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    base = free_port_pair(run=3)
    volume_base = free_port_pair(run=3)
    command = [sys.executable, "-m", "quorumfs", "local", "--dir", str(tmp_path), "--base-port",
               str(base), "--volume-port", str(volume_base)]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "Ctrl-C stops" in line:
                break
        text = "".join(lines)
        assert "cluster is up" in text, text
        http("POST", f"127.0.0.1:{base}", "/v1/fs/mkdir", {"path": "/hello"})
        for port in (base, base + 1, base + 2):  # every master serves the same namespace
            listing = http("GET", f"127.0.0.1:{port}", "/v1/fs/list?path=/")
            assert [e["name"] for e in listing["entries"]] == ["hello"]
        with MasterClient(f"127.0.0.1:{base + 1}") as client:
            client.put("/hello/world.txt", b"hello, world\n")
            assert client.read("/hello/world.txt") == b"hello, world\n"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    assert sorted(p.name for p in tmp_path.glob("*.log")) == [
        "master1.log", "master2.log", "master3.log", "volume1.log", "volume2.log", "volume3.log"
    ]  # fmt: skip
