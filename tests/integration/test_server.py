"""``quorumfs server`` (a master and a volume server per process): three of them with
``--master.peers`` form an HA cluster, as in SeaweedFS's cheat sheet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from procs import SECRET, free_port_pair, http, wait_for

from quorumfs.client import MasterClient


def test_three_all_in_one_servers_form_a_cluster_that_survives_one_dying(tmp_path: Path) -> None:
    master_ports = [free_port_pair() for _ in range(3)]
    volume_ports = [free_port_pair() for _ in range(3)]
    peers = ",".join(f"127.0.0.1:{p}" for p in master_ports)
    env = {**os.environ, "QUORUMFS_CLUSTER_SECRET": SECRET}
    processes = []
    for i, (mport, vport) in enumerate(zip(master_ports, volume_ports, strict=True), 1):
        command = [sys.executable, "-m", "quorumfs", "server", "--dir", str(tmp_path / str(i)),
                   "--master.port", str(mport), "--volume.port", str(vport),
                   "--master.peers", peers]  # fmt: skip
        log = (tmp_path / f"server{i}.log").open("ab")
        processes.append(subprocess.Popen(command, stdout=log, stderr=log, env=env))
    try:

        def writable() -> int:
            for i, process in enumerate(processes, 1):
                if process.poll() is not None:
                    log = (tmp_path / f"server{i}.log").read_text()
                    raise AssertionError(f"server {i} exited {process.returncode}:\n{log}")
            try:
                answer = http("GET", f"127.0.0.1:{master_ports[0]}", "/v1/volumes", timeout=2)
            except Exception:
                return 0
            return sum(1 for v in answer["volumes"] if v["writable"])

        wait_for(lambda: writable() == 3, "three writable volume servers", 30)
        assert (tmp_path / "1" / "master" / "journal").is_dir()
        assert (tmp_path / "1" / "volume" / "chunks").is_dir()
        with MasterClient(peers) as client:
            data = os.urandom(300_000)
            client.put("/shared", data)
            leader_http = client.cluster_status().leader_http
            assert leader_http is not None
            leader = master_ports.index(int(leader_http.rpartition(":")[2]))
            processes[leader].send_signal(signal.SIGKILL)  # a master and a volume server die
            processes[leader].wait(timeout=10)
            assert client.read("/shared") == data  # the other copy, through a new leader
            client.put("/after", b"written after the failover")
            assert client.read("/after") == b"written after the failover"
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                assert process.wait(timeout=30) in (0, -signal.SIGKILL)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
