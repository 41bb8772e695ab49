"""Masters found through DNS: one name whose A (and AAAA) records are the masters.

Owns turning ``NAME:PORT`` into the masters' ``ip:port`` addresses and keeping
that answer fresh: ``DnsMasters`` is a ``MasterSource`` (``_sources``), and
``master_source`` decides, from what a user typed, whether the masters are a
list or a name. Uses dnspython (``dns.asyncresolver``; ``dns.resolver`` for the
one synchronous look-up of the CLI).

Which text means "a DNS name": a master list of exactly one ``host:port``
whose host is not an IP literal (``masters.example:9333``, ``localhost:9333``).
Anything else (one IP address, or several entries of any kind) is a static list
(``StaticMasters``), used as given.

How a name is resolved (``DnsMasters``):

- The hosts file (``/etc/hosts``) first, like the system's resolver ("files
  dns"): a name listed there (``localhost``) gives the addresses listed, and
  DNS is not asked. Then DNS: the nameserver given (``host`` or ``host:port``,
  an IP address; ``QUORUMFS_DNS_SERVER`` in the CLI and the volume server), else
  the system's (``/etc/resolv.conf``, its search domains included). A and AAAA
  are asked at once; either may be missing.
- The answer is sorted (IPv4 first, then IPv6, each by address), not kept in
  the server's order: DNS servers rotate their records, and a stable order keeps
  the client's turn over the masters and its memory of which failed meaningful
  across refreshes. The client finds the leader by asking, so the order does not
  decide who is asked for writes.
- The first call resolves (concurrent first calls share one look-up) and raises
  ``OSError`` when that fails; a failed first look-up is not repeated for
  ``min(refresh, 1 s)``, calls in between raise the same error at once. Once an
  answer exists, every call returns it at once, and a call that finds it older
  than ``refresh`` seconds (default 5, the seed's ``DNS_REFRESH_TIME``) starts a
  re-resolution in the background: never a look-up per call, never a wait. A
  re-resolution that fails (or finds no record) keeps the last good answer, and
  says so in the log once per outage.
- DNS TTLs are not used: the refresh interval is the one knob.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

import dns.asyncresolver
import dns.exception
import dns.resolver

from ._sources import MasterSource, StaticMasters, parse_address, parse_masters

__all__ = [
    "DEFAULT_DNS_TIMEOUT",
    "DEFAULT_REFRESH",
    "DNS_SERVER_ENV",
    "HOSTS_FILE",
    "DnsMasters",
    "Nameserver",
    "dns_name_of",
    "master_source",
    "parse_nameserver",
]

logger = logging.getLogger("quorumfs.client")

DEFAULT_REFRESH: Final = 5.0
"""Seconds an answer is used before it is re-resolved (the seed's DNS_REFRESH_TIME)."""
DEFAULT_DNS_TIMEOUT: Final = 2.0
"""Seconds one look-up (A and AAAA) may take."""
DNS_SERVER_ENV: Final = "QUORUMFS_DNS_SERVER"
"""Where the CLI and the volume server take the nameserver from when no option names one."""
HOSTS_FILE: Final = Path("/etc/hosts")
_FIRST_RETRY: Final = 1.0
"""Seconds at most between look-ups while there was never an answer."""
_DNS_PORT: Final = 53
_MAX_PORT: Final = 65535


class Nameserver(NamedTuple):
    """A DNS server to ask: an IP address and a port."""

    ip: str
    port: int = _DNS_PORT

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"


def parse_nameserver(text: str) -> Nameserver:
    """``ip``, ``ip:port``, ``[ipv6]:port`` or a bare IPv6 address; ``ValueError`` otherwise
    (a name is refused: it would need a nameserver of its own)."""
    given = text.strip()
    host, port = given, str(_DNS_PORT)
    if given.startswith("["):
        host, sep, rest = given[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            host = ""
        port = rest[1:] if rest else port
    elif given.count(":") == 1:
        host, _, port = given.partition(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"nameserver {text!r} is not an IP address with an optional port "
            "(e.g. 127.0.0.1, 127.0.0.1:5353 or [::1]:53)"
        ) from None
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= _MAX_PORT):
        raise ValueError(f"nameserver {text!r}: the port must be 1..{_MAX_PORT}")
    return Nameserver(str(ip), int(port))


def dns_name_of(masters: str | Iterable[str]) -> str | None:
    """``NAME:PORT`` when ``masters`` is one entry whose host is a name (to resolve), else
    None (a static list). ``ValueError`` when the list is malformed."""
    addresses = parse_masters(masters)
    if len(addresses) != 1:
        return None
    host = addresses[0].rpartition(":")[0]
    return None if _is_ip_literal(host) else addresses[0]


def master_source(
    masters: str | Iterable[str],
    *,
    nameserver: str | None = None,
    refresh: float = DEFAULT_REFRESH,
) -> MasterSource:
    """``DnsMasters`` for one ``NAME:PORT``, ``StaticMasters`` for anything else (see the
    module docstring); ``ValueError`` when the text is malformed. ``nameserver`` only
    matters for a name."""
    listed = masters if isinstance(masters, str) else list(masters)
    name = dns_name_of(listed)
    if name is None:
        if nameserver is not None:
            parse_nameserver(nameserver)  # a typo is reported even when it is not needed
        return StaticMasters(listed)
    return DnsMasters(name, nameserver=nameserver, refresh=refresh)


class DnsMasters:
    """A ``MasterSource``: the addresses ``NAME:PORT`` resolves to (see the module docstring).

    ``nameserver``: ``"ip"`` or ``"ip:port"``; None for the system's resolver
    configuration. ``hosts_file``: looked up first; None to ask DNS only. Belongs to the
    event loop of its first call, like the client; ``aclose()`` stops a refresh in flight.
    """

    def __init__(
        self,
        target: str,
        *,
        nameserver: str | None = None,
        refresh: float = DEFAULT_REFRESH,
        timeout: float = DEFAULT_DNS_TIMEOUT,
        hosts_file: Path | None = HOSTS_FILE,
    ) -> None:
        self.target = parse_address(target)
        host, _, port = self.target.rpartition(":")
        if _is_ip_literal(host):
            raise ValueError(
                f"{target!r} is an IP address, not a name to resolve (use StaticMasters)"
            )
        for label, value in (("refresh", refresh), ("timeout", timeout)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"DnsMasters {label} must be a positive number, not {value!r}")
        self.name = host
        self.port = int(port)
        self.nameserver = None if nameserver is None else parse_nameserver(nameserver)
        self.refresh = refresh
        self.timeout = timeout
        self.hosts_file = hosts_file
        self._answer: tuple[str, ...] = ()
        """The last good answer; empty until there is one."""
        self._attempted = -math.inf
        """``time.monotonic()`` when the last look-up started."""
        self._lookup: asyncio.Task[None] | None = None
        """The look-up in flight, if any."""
        self._async_resolver: dns.asyncresolver.Resolver | None = None
        self.last_error: str | None = None
        """Why the last look-up failed; None after one that succeeded (or before any)."""
        self.lookups = 0
        """Look-ups finished, successful or not."""

    @property
    def answer(self) -> tuple[str, ...]:
        """The last good answer (``ip:port`` addresses), without resolving; may be empty."""
        return self._answer

    def __repr__(self) -> str:
        via = f" via {self.nameserver}" if self.nameserver is not None else ""
        return f"DnsMasters({self.target!r}{via})"

    # ------------------------------------------------------------ MasterSource

    async def addresses(self) -> Sequence[str]:
        now = time.monotonic()
        if self._answer:
            if now - self._attempted >= self.refresh and not self._in_flight():
                self._start_lookup(now)
            return self._answer
        if not self._in_flight():
            if now - self._attempted < min(self.refresh, _FIRST_RETRY):
                raise self._failure()
            self._start_lookup(now)
        assert self._lookup is not None
        await asyncio.shield(self._lookup)
        if not self._answer:
            raise self._failure()
        return self._answer

    async def aclose(self) -> None:
        """Cancel a look-up in flight. The source can still be used afterwards."""
        lookup, self._lookup = self._lookup, None
        if lookup is not None and not lookup.done():
            lookup.cancel()
            if lookup.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await lookup

    def resolve_once(self) -> tuple[str, ...]:
        """Resolve now, synchronously (for code without an event loop: the CLI's admin
        commands), and keep the answer; ``OSError`` when there is none."""
        self._attempted = time.monotonic()
        try:
            found = self._from_hosts_file()
            if not found:
                resolver = dns.resolver.Resolver(configure=self.nameserver is None)
                self._configure(resolver)
                outcomes: list[dns.resolver.Answer | Exception] = []
                for rdtype in ("A", "AAAA"):
                    try:
                        outcomes.append(self._query(resolver, rdtype))
                    except dns.exception.DNSException as error:
                        outcomes.append(error)
                found = self._combine(outcomes)
        except (dns.exception.DNSException, _NoRecordError, OSError) as error:
            self._failed(_describe(error, self.timeout))
        else:
            self._succeeded(found)
        if not self._answer:
            raise self._failure()
        return self._answer

    # --------------------------------------------------------------- internals

    def _in_flight(self) -> bool:
        lookup = self._lookup
        if lookup is None or lookup.done():
            return False
        # A look-up started on another (now stopped) event loop can never finish here.
        return lookup.get_loop() is asyncio.get_running_loop()

    def _start_lookup(self, now: float) -> None:
        self._attempted = now
        self._lookup = asyncio.get_running_loop().create_task(
            self._resolve(), name=f"resolve {self.target}"
        )

    async def _resolve(self) -> None:
        """One look-up; records its outcome and never raises (but when cancelled)."""
        try:
            found = self._from_hosts_file()
            if not found:
                resolver = self._resolver()
                outcomes = await asyncio.gather(
                    self._query_async(resolver, "A"),
                    self._query_async(resolver, "AAAA"),
                    return_exceptions=True,
                )
                found = self._combine(outcomes)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a resolver's failure of any kind: reported, not raised
            self._failed(_describe(error, self.timeout))
        else:
            self._succeeded(found)

    def _resolver(self) -> dns.asyncresolver.Resolver:
        """Made once (reading resolv.conf when no nameserver is given)."""
        if self._async_resolver is None:
            resolver = dns.asyncresolver.Resolver(configure=self.nameserver is None)
            self._configure(resolver)
            self._async_resolver = resolver
        return self._async_resolver

    def _configure(self, resolver: dns.resolver.BaseResolver) -> None:
        if self.nameserver is not None:
            resolver.nameservers = [self.nameserver.ip]
            resolver.port = self.nameserver.port
        resolver.timeout = self.timeout
        resolver.lifetime = self.timeout
        resolver.cache = None

    async def _query_async(
        self, resolver: dns.asyncresolver.Resolver, rdtype: str
    ) -> dns.resolver.Answer:
        return await resolver.resolve(
            self.name, rdtype, lifetime=self.timeout, search=True, raise_on_no_answer=False
        )

    def _query(self, resolver: dns.resolver.Resolver, rdtype: str) -> dns.resolver.Answer:
        return resolver.resolve(
            self.name, rdtype, lifetime=self.timeout, search=True, raise_on_no_answer=False
        )

    def _combine(self, outcomes: Sequence[dns.resolver.Answer | BaseException]) -> list[str]:
        """The addresses of the A and AAAA answers; the A query's error (else the AAAA
        one's) when neither has any."""
        found: list[str] = []
        errors: list[BaseException] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                errors.append(outcome)
            elif outcome.rrset is not None:
                found.extend(record.to_text() for record in outcome.rrset)
        if found:
            return found
        if errors:
            raise errors[0]
        raise _NoRecordError(f"{self.name} has no A or AAAA record")

    def _from_hosts_file(self) -> list[str]:
        """The addresses the hosts file lists for the name (none when it is not listed or
        the file cannot be read)."""
        if self.hosts_file is None:
            return []
        try:
            text = self.hosts_file.read_text(errors="replace")
        except OSError:
            return []
        wanted = self.name.rstrip(".").lower()
        found: list[str] = []
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2 or wanted not in (n.rstrip(".").lower() for n in fields[1:]):
                continue
            with contextlib.suppress(ValueError):
                found.append(str(ipaddress.ip_address(fields[0].split("%", 1)[0])))
        return found

    def _succeeded(self, ips: Iterable[str]) -> None:
        answer = _addresses(ips, self.port)
        self.lookups += 1
        if self.last_error is not None and self._answer:
            logger.info("%s resolves again", self.target)
        self.last_error = None
        if answer != self._answer:
            logger.info("masters: %s resolves to %s", self.target, ", ".join(answer))
            self._answer = answer

    def _failed(self, reason: str) -> None:
        self.lookups += 1
        first = self.last_error is None
        self.last_error = reason
        if not self._answer:
            logger.debug("cannot resolve %s: %s", self.target, reason)
        elif first:
            logger.warning(
                "cannot re-resolve %s (%s); keeping the last answer: %s",
                self.target,
                reason,
                ", ".join(self._answer),
            )
        else:
            logger.debug("cannot re-resolve %s either: %s", self.target, reason)

    def _failure(self) -> OSError:
        where = f"nameserver {self.nameserver}" if self.nameserver else "the system's resolver"
        return OSError(
            f"cannot resolve the masters' name {self.name} (asked {where}): "
            f"{self.last_error or 'no answer yet'}"
        )


class _NoRecordError(Exception):
    """The name exists but has no address record."""


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True


def _addresses(ips: Iterable[str], port: int) -> tuple[str, ...]:
    """``ip:port`` (``[ipv6]:port``) for each address, without repeats, IPv4 first."""
    unique = {ipaddress.ip_address(ip) for ip in ips}
    ordered = sorted(unique, key=lambda ip: (ip.version, int(ip)))
    return tuple(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}" for ip in ordered)


def _describe(error: BaseException, timeout: float) -> str:
    """One line for a failed look-up."""
    if isinstance(error, dns.resolver.NXDOMAIN):
        return "no such name (NXDOMAIN)"
    if isinstance(error, dns.exception.Timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(error, dns.resolver.NoResolverConfiguration):
        return "no nameserver configured (/etc/resolv.conf); give one"
    if isinstance(error, dns.resolver.NoNameservers):
        # dnspython lists every server's complaint: keep the message, it names them.
        return str(error).rstrip(".")
    return str(error) or type(error).__name__
