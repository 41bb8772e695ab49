"""A real DNS server for tests: Debian's dnsmasq on 127.0.0.1, on a free port.

``Dnsmasq(root, {name: [ip, ...]})`` publishes one A record per address for each
name (``--host-record``, repeated), answers for the names' parent domains only
(``--local``: any other name there is NXDOMAIN, an AAAA question gets an empty
answer rather than REFUSED), reads no configuration, hosts file or upstream
resolver, and logs every query to ``<root>/dnsmasq.log``. ``start()`` returns once
it answers; ``stop()`` (or the ``with`` block) ends it. ``.ci/run`` installs
``dnsmasq-base`` when ``dnsmasq`` is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.resolver
from procs import free_port_pair, wait_for

__all__ = ["Dnsmasq", "dnsmasq_binary"]


def dnsmasq_binary() -> str | None:
    """The dnsmasq executable (often in /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which("dnsmasq")
    if found is not None:
        return found
    for candidate in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class Dnsmasq:
    def __init__(self, root: Path, records: Mapping[str, Sequence[str]]) -> None:
        binary = dnsmasq_binary()
        if binary is None:
            raise FileNotFoundError(
                "dnsmasq is not installed (Debian: apt-get install dnsmasq-base)"
            )
        self.binary = binary
        self.records = {name.rstrip("."): list(ips) for name, ips in records.items()}
        self.log = root / "dnsmasq.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: what ``--dns-server`` takes."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start on a free port (another one if it was taken meanwhile); return once it
        answers for the first name."""
        for attempt in range(3):
            self.port = _free_dns_port()
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(self._command(), stdout=log, stderr=log)
            try:
                wait_for(self._answers, f"dnsmasq to answer on {self.address}", timeout=10)
                return
            except AssertionError:
                text = self.log_text()
                self.stop()
                if "Address already in use" not in text or attempt == 2:
                    raise AssertionError(f"dnsmasq did not start:\n{text}") from None

    def _command(self) -> list[str]:
        domains = sorted({name.partition(".")[2] or name for name in self.records})
        return [
            self.binary,
            "--no-daemon",
            "--conf-file=/dev/null",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            f"--user={pwd.getpwuid(os.getuid()).pw_name}",  # no switch to "nobody"
            "--log-facility=-",
            "--log-queries",
            *(f"--local=/{domain}/" for domain in domains),
            *(f"--host-record={name},{ip}" for name, ips in self.records.items() for ip in ips),
        ]

    def _answers(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"dnsmasq exited:\n{self.log_text()}")
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        name = next(iter(self.records))
        try:
            resolver.resolve(name, "A", lifetime=0.5)
        except dns.exception.DNSException:
            return False
        return True

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Dnsmasq:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_dns_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        port = free_port_pair()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port for dnsmasq")
