"""A network the nemesis can cut: one namespace per master, routed through a hub namespace.

Layout (``R`` is picked per run, so two runs never share addresses)::

    root namespace (harness, clients, volume servers)
      veth <prefix>r  10.R.0.1/24 ──── 10.R.0.2/24  <prefix>h0   ┐
                                                                   │ hub namespace
    master N's namespace                                           │ (forwards; the
      veth <prefix>mN 10.R.N.2/24 ──── 10.R.N.1/24  <prefix>hN   ┘  only place that
      (default route via 10.R.N.1)                                   drops packets)

The root namespace reaches every master through the hub (one route, 10.R.0.0/16), and
masters reach each other through the hub. Forwarding is turned on in the hub's
namespace only; the machine's own settings are not touched.

A cut is a policy rule in the hub, ``from A to B blackhole``: packets from A to B are
dropped in flight, as a broken switch would, so neither end's kernel knows. TCP on both
sides sees silence and retransmits. A one-way cut also drops A's acknowledgements of
B's data, so B's messages still arrive at A for a while and then its connection stalls,
as one-way faults behave on a real network. Clients and volume servers are never cut
off: only master-to-master paths are (Raft and the masters' HTTP forwarding).

Needs root and iproute2 (``ip``). Namespaces are named ``qfsnem<pid>-...`` and removed
by ``close``; ones left by a killed run are removed by the next run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

PREFIX = "qfsnem"


def _ip(*args: str) -> str:
    command = ["ip", *args]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def remove_stale() -> None:
    """Remove namespaces a run left behind when it was killed (their pid is gone)."""
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", name)


class Network:
    """``size`` master namespaces behind a hub; ``address(n)`` is master n's (1-based)."""

    def __init__(self, size: int) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("network partitions need root (ip netns)")
        pid = os.getpid()
        self.size = size
        self.net = 100 + pid % 150
        self.tag = f"{PREFIX}{pid}"
        # Interface names are at most 15 bytes: keep them short and per-run unique.
        short = self.short = f"q{pid % 100000}"
        self.hub = f"{self.tag}-hub"
        self.namespaces = [f"{self.tag}-m{n}" for n in range(1, size + 1)]
        self.cuts: set[tuple[int, int]] = set()
        """Directed master pairs (from, to) whose packets the hub drops."""
        remove_stale()
        try:
            _ip("netns", "add", self.hub)
            _ip("-n", self.hub, "link", "set", "lo", "up")
            _ip("netns", "exec", self.hub, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self._link(f"{short}r", None, f"{short}h0", 0)
            _ip("route", "add", f"10.{self.net}.0.0/16", "via", f"10.{self.net}.0.2")
            for n, namespace in enumerate(self.namespaces, start=1):
                _ip("netns", "add", namespace)
                _ip("-n", namespace, "link", "set", "lo", "up")
                self._link(f"{short}m{n}", namespace, f"{short}h{n}", n)
                _ip("-n", namespace, "route", "add", "default", "via", f"10.{self.net}.{n}.1")
        except BaseException:
            self.close()
            raise

    def _link(self, outer: str, namespace: str | None, inner: str, n: int) -> None:
        """A veth pair: ``outer`` in ``namespace`` (None: root) as 10.R.n.2 (root: .1),
        ``inner`` in the hub as the other end."""
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", self.hub)
        _ip(
            "-n",
            self.hub,
            "addr",
            "add",
            f"10.{self.net}.{n}.{2 if n == 0 else 1}/24",
            "dev",
            inner,
        )
        _ip("-n", self.hub, "link", "set", inner, "up")
        own = f"10.{self.net}.{n}.{1 if n == 0 else 2}/24"
        if namespace is None:
            _ip("addr", "add", own, "dev", outer)
            _ip("link", "set", outer, "up")
        else:
            _ip("link", "set", outer, "netns", namespace)
            _ip("-n", namespace, "addr", "add", own, "dev", outer)
            _ip("-n", namespace, "link", "set", outer, "up")

    def address(self, n: int) -> str:
        return f"10.{self.net}.{n}.2"

    def namespace(self, n: int) -> str:
        return self.namespaces[n - 1]

    def cut(self, frm: int, to: int) -> None:
        """Drop every packet from master ``frm`` to master ``to`` (one way)."""
        if (frm, to) not in self.cuts:
            self._rule("add", frm, to)
            self.cuts.add((frm, to))

    def isolate(self, group: set[int]) -> None:
        """Cut every path between ``group`` and the other masters, both ways."""
        for a in group:
            for b in set(range(1, self.size + 1)) - group:
                self.cut(a, b)
                self.cut(b, a)

    def heal(self) -> None:
        """Remove every cut."""
        for frm, to in sorted(self.cuts):
            self._rule("del", frm, to)
        self.cuts.clear()

    def _rule(self, action: str, frm: int, to: int) -> None:
        source, target = self.address(frm), self.address(to)
        _ip("-n", self.hub, "rule", action, "from", source, "to", target, "blackhole")

    def close(self) -> None:
        """Remove the namespaces and their veths (the root's end at once: the kernel may
        take a moment to remove a namespace's devices)."""
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", f"{self.short}r")
        for namespace in [*self.namespaces, self.hub]:
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", namespace)


@contextlib.contextmanager
def network(size: int) -> Iterator[Network]:
    net = Network(size)
    try:
        yield net
    finally:
        net.close()
