"""Real master and volume server processes on loopback, for integration tests.

Each master is ``python -m quorumfs master`` with its own directory under the
test's tmp_path and its stderr in ``<mdir>.log``; ports are picked free for
both HTTP and Raft (HTTP + 10000). Each volume server is ``python -m quorumfs
volume`` with its directory and log beside the masters'. Waiting is always a
poll with a deadline.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SECRET = "integration-test-secret-0123456789"
TICK_MS = 20  # fast elections keep the suite quick; the defaults are 50 ms


def _first_ephemeral_port() -> int:
    """The lowest port the kernel hands out as a connection's source port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_pair(run: int = 1, ips: Sequence[str] = ("127.0.0.1",)) -> int:
    """An HTTP port p with p .. p + run - 1 and each + 10000 free on every one of ``ips``.

    Both stay below the ephemeral range: a master restarted on its ports would otherwise
    find one taken, now and then, as the source port of some other test's connection."""
    highest = _first_ephemeral_port() - 10000 - run
    for _ in range(200):
        port = random.randint(10000, highest)
        if all(
            _free(p, ip) and _free(p + 10000, ip) for p in range(port, port + run) for ip in ips
        ):
            return port
    raise RuntimeError("no free port pair")


def _free(port: int, ip: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class HttpError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


def http(
    method: str,
    address: str,
    path: str,
    body: Any = None,
    *,
    timeout: float = 5.0,
    headers: dict[str, str] | None = None,
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{address}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw.decode(errors="replace")
        raise HttpError(error.code, payload) from None


class Master:
    def __init__(self, root: Path, name: str, port: int, ip: str = "127.0.0.1") -> None:
        self.mdir = root / name
        self.ip = ip
        self.port = port
        self.address = f"{ip}:{port}"
        self.log = root / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.extra_args: tuple[str, ...] = ()
        """Given on every start (e.g. data-path timings)."""
        self.netns: str | None = None
        """The network namespace to run in (``ip netns exec``), or None for this one."""

    def start(self, *args: str, secret: str | None = SECRET) -> None:
        env = dict(os.environ)
        env.pop("QUORUMFS_CLUSTER_SECRET", None)
        if secret is not None:
            env["QUORUMFS_CLUSTER_SECRET"] = secret
        command = [
            *(("ip", "netns", "exec", self.netns) if self.netns else ()),
            sys.executable,
            "-m",
            "quorumfs",
            "master",
            "--mdir",
            str(self.mdir),
            "--port",
            str(self.port),
            *(("--ip", self.ip) if self.ip != "127.0.0.1" else ()),
            "--tick-ms",
            str(TICK_MS),
            *self.extra_args,
            *args,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env)

    def wait_serving(self) -> None:
        def serving() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"master exited {self.process.returncode}:\n{self.log_text()}")
            try:
                return bool(http("GET", self.address, "/healthz", timeout=1))
            except (OSError, HttpError):
                return False

        wait_for(serving, f"{self.address} to serve")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)
        self.process = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = http("GET", self.address, "/cluster/status", timeout=2)
        return result

    def role(self) -> str | None:
        """This master's role, or None while it does not answer (for polling)."""
        try:
            return str(self.status()["role"])
        except (OSError, HttpError):
            return None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def admin_token(self) -> str:
        return (self.mdir / "admin.token").read_text().strip()


class Cluster:
    """Masters on 127.0.0.1, each on its own ports; or, with ``ips``, one master per
    address, all on the same ports (as masters behind one DNS name would be); with
    ``netns`` too, master i runs in namespace ``netns[i]`` on ``ips[i]``."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        master_args: tuple[str, ...] = (),
        *,
        ips: Sequence[str] | None = None,
        netns: Sequence[str] | None = None,
    ) -> None:
        self.root = root
        self.master_args = master_args
        self.ips = None if ips is None else tuple(ips)
        self.netns = None if netns is None else tuple(netns)
        self.masters = self._new_masters(size if self.ips is None else len(self.ips))

    def _new_masters(self, size: int, suffix: str = "") -> list[Master]:
        if self.ips is None:
            return [self._new_master(f"m{i}{suffix}") for i in range(1, size + 1)]
        # A namespace of its own has every port free: any port will do there.
        port = free_port_pair() if self.netns else free_port_pair(ips=self.ips)
        masters = [
            self._new_master(f"m{i}{suffix}", port, ip) for i, ip in enumerate(self.ips, start=1)
        ]
        for master, netns in zip(masters, self.netns or (), strict=False):
            master.netns = netns
        return masters

    def _new_master(self, name: str, port: int | None = None, ip: str = "127.0.0.1") -> Master:
        master = Master(self.root, name, port or free_port_pair(), ip)
        master.extra_args = self.master_args
        return master

    def start(self) -> None:
        """Found the group; if a port was taken meanwhile (by a parallel test), re-pick ports."""
        for attempt in range(3):
            peers = ",".join(m.address for m in self.masters)
            for master in self.masters:
                master.start("--peers", peers)
            try:
                for master in self.masters:
                    master.wait_serving()
                return
            except AssertionError as error:
                if "cannot listen" not in str(error) or attempt == 2:
                    raise
                self.stop()
                self.masters = self._new_masters(len(self.masters), f"-retry{attempt}")

    def add(self, via: Master) -> Master:
        master = self._new_master(f"m{len(self.masters) + 1}")
        self.masters.append(master)
        master.start("--peers", via.address)
        master.wait_serving()
        return master

    def alive(self) -> list[Master]:
        return [m for m in self.masters if m.alive]

    def leader(self, timeout: float = 15.0, *, majority: bool = False) -> Master:
        """The master that every live master agrees is leading; with ``majority``, the one
        that a majority of all masters (itself included) names, for a loaded machine where
        one master may be restarting or a moment behind."""

        def agreed() -> Master | None:
            named: dict[str, int] = {}
            for master in self.alive():
                try:
                    status = master.status()
                except (OSError, HttpError):
                    if majority:
                        continue
                    return None
                named[status["leader_http"]] = named.get(status["leader_http"], 0) + 1
            if majority:
                chosen = [a for a, n in named.items() if a and n > len(self.masters) // 2]
            else:
                chosen = list(named) if len(named) == 1 else []
            if len(chosen) != 1:
                return None
            return next((m for m in self.alive() if m.address == chosen[0]), None)

        found: Master = wait_for(agreed, "one agreed leader", timeout)
        return found

    def stop(self) -> None:
        for master in self.masters:
            master.kill(signal.SIGTERM)


PULSE_MS = 200
"""Volume heartbeats in tests: fast, so a new leader has its picture within a moment."""


class Volume:
    def __init__(self, root: Path, name: str, port: int, masters: list[str]) -> None:
        self.dir = root / name
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.masters = masters
        self.log = root / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.extra_args: tuple[str, ...] = ()
        """Given on every start (e.g. ``--dns-server``)."""

    def start(self, *args: str) -> None:
        env = dict(os.environ)
        env["QUORUMFS_CLUSTER_SECRET"] = SECRET
        command = [
            sys.executable,
            "-m",
            "quorumfs",
            "volume",
            "--dir",
            str(self.dir),
            "--port",
            str(self.port),
            "--mserver",
            ",".join(self.masters),
            "--pulse-ms",
            str(PULSE_MS),
            *self.extra_args,
            *args,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)
        self.process = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, Any] | None:
        """Its /status, or None while it does not answer (for polling)."""
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(
                f"volume server exited {self.process.returncode}:\n{self.log_text()}"
            )
        try:
            result: dict[str, Any] = http("GET", self.address, "/status", timeout=2)
            return result
        except (OSError, HttpError):
            return None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class DataCluster(Cluster):
    """Masters plus volume servers: a whole file system on loopback.

    Masters get ``master_args`` (e.g. a short ``--replication-delay``) and volume
    heartbeats every ``PULSE_MS``. Volume servers are given every master's address as
    ``--mserver``, or what ``mserver`` makes of the masters (e.g. one DNS name), and
    ``volume_args``."""

    def __init__(
        self,
        root: Path,
        *,
        masters: int = 3,
        volumes: int = 3,
        master_args: tuple[str, ...] = (),
        ips: Sequence[str] | None = None,
        netns: Sequence[str] | None = None,
        mserver: Callable[[list[Master]], list[str]] | None = None,
        volume_args: tuple[str, ...] = (),
    ) -> None:
        timings = ("--volume-pulse-ms", str(PULSE_MS), "--volume-dead-after", "1.5")
        super().__init__(root, masters, (*timings, *master_args), ips=ips, netns=netns)
        self.volume_count = volumes
        self.volumes: list[Volume] = []
        self.mserver = mserver
        self.volume_args = volume_args

    def start(self) -> None:
        super().start()
        if self.mserver is not None:
            addresses = self.mserver(self.masters)
        else:
            addresses = [m.address for m in self.masters]
        for i in range(1, self.volume_count + 1):
            volume = Volume(self.root, f"v{i}", free_port_pair(), addresses)
            volume.extra_args = self.volume_args
            self.volumes.append(volume)
        for volume in self.volumes:
            volume.start()
        self.wait_writable(len(self.volumes))

    def master_list(self) -> str:
        return ",".join(m.address for m in self.masters)

    def volume_states(self) -> list[dict[str, Any]] | None:
        leader = self.leader()
        try:
            answer: dict[str, Any] = http("GET", leader.address, "/v1/volumes", timeout=2)
        except (OSError, HttpError):
            return None
        states: list[dict[str, Any]] = answer["volumes"]
        return states

    def wait_writable(self, count: int, timeout: float = 20.0) -> None:
        def enough() -> bool:
            for volume in self.volumes:
                if volume.alive:
                    volume.status()  # raises if it died
            states = self.volume_states() or []
            return sum(1 for v in states if v["writable"]) >= count

        wait_for(enough, f"{count} writable volume servers", timeout)

    def stop(self) -> None:
        for volume in self.volumes:
            volume.kill(signal.SIGTERM)
        super().stop()
