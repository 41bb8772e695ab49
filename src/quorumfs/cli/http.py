"""How CLI commands talk to the masters' HTTP API: one synchronous call path.

Owns finding a master that answers (the ``--master`` list, tried in order),
following the API's 307 redirects to the leader, bounded timeouts, and turning
every failure into a ``CliError``: one line that says what went wrong and what
to do, with the exit code (2: usage, unreachable or unavailable; 1: the cluster
refused the operation). Also declares the options every such command shares
(``--master``, ``--token``, ``--json``). What each command asks and prints is
left to the command modules (``fs``, ``cluster``).

Built on the standard library's ``http.client`` rather than aiohttp: a CLI makes
one request at a time, so an event loop buys nothing,
connecting and reading get separate timeouts (a dead master is skipped in
``CONNECT_TIMEOUT``, while a live one gets longer than the masters' own 5 s
request timeout so that its 503 arrives before we give up), and nothing follows
redirects behind our back.

``--master`` is a list of masters, or one ``NAME:PORT`` whose DNS A/AAAA
records are the masters (the rule and the resolver are
``quorumfs.client.DnsMasters``'s, asking ``--dns-server`` or
``QUORUMFS_DNS_SERVER`` when given). A command makes a handful of requests
within seconds, so the name is resolved once, when the command starts; the
addresses found are then tried in turn like a list.

Which failures move on to the next master: for a read, any failure to get an
answer and any 503. For a write, only what guarantees that nothing was done: a
master that could not be connected to (nothing was sent), and ``ELOOP`` (a
forwarded request refused before it reached the service). Any other 503
(``EAGAIN`` may mean "the outcome is unknown" when the service lost its quorum
mid-commit), and a write whose answer never came, is reported instead of being
retried elsewhere: it may have been applied, and the error says what to check.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
from collections.abc import Iterator
from typing import Annotated, Any, Final, NamedTuple
from urllib.parse import urlsplit

import typer

from quorumfs import __version__
from quorumfs.client import DNS_SERVER_ENV, DnsMasters, dns_name_of, parse_nameserver

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_MASTER",
    "DNS_SERVER_ENV",
    "READ_TIMEOUT",
    "CliError",
    "DnsServerOption",
    "JsonOption",
    "MasterClient",
    "MasterOption",
    "Reply",
    "TokenOption",
    "parse_address",
    "parse_masters",
    "reported_errors",
    "resolve_masters",
]

DEFAULT_MASTER: Final = "127.0.0.1:9333"
CONNECT_TIMEOUT: Final = 2.0
"""Seconds to wait for a TCP connection before trying the next master."""
READ_TIMEOUT: Final = 10.0
"""Seconds to wait for an answer once connected; above the masters' request timeout."""
MAX_REDIRECTS: Final = 3
EXIT_REFUSED: Final = 1
EXIT_UNAVAILABLE: Final = 2
_MAX_PORT: Final = 65535
_NOT_DONE: Final = frozenset({"ELOOP"})
"""503 codes that guarantee a write was not carried out (safe to send elsewhere)."""

MasterOption = Annotated[
    str,
    typer.Option(
        "--master",
        "-m",
        envvar="QUORUMFS_MASTER",
        help="Masters to ask, in order: comma-separated HTTP host:port, or one NAME:PORT "
        "whose DNS A/AAAA records are the masters.",
    ),
]
DnsServerOption = Annotated[
    str | None,
    typer.Option(
        "--dns-server",
        envvar=DNS_SERVER_ENV,
        help="Nameserver (IP or IP:PORT) to resolve a --master NAME with "
        "(default: the system's resolv.conf).",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="QUORUMFS_ADMIN_TOKEN",
        help="The cluster admin token (membership changes, leader transfer).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


class CliError(Exception):
    """A failure to report on one line (no traceback), with the process exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_UNAVAILABLE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Report a ``CliError`` as ``error: ...`` on stderr and exit with its code."""
    try:
        yield
    except CliError as exc:
        # typer.echo, not rich: a message may hold brackets ([::1]:9333) that are not markup.
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(exc.exit_code) from None


def parse_address(text: str, option: str = "--master") -> str:
    """``text`` if it is ``host:port`` (port 1..65535, IPv6 in brackets), else a usage error."""
    host, sep, port = text.rpartition(":")
    valid = (
        bool(sep and host)
        and port.isascii()
        and port.isdigit()
        and 1 <= int(port) <= _MAX_PORT
        and not any(c.isspace() or c == "/" for c in text)
        and (":" not in host or (host.startswith("[") and host.endswith("]")))
    )
    if not valid:
        raise CliError(f"{option}: {text!r} is not host:port (e.g. 127.0.0.1:9333 or [::1]:9333)")
    return text


def parse_masters(text: str) -> list[str]:
    """The addresses of a ``--master`` list, in order, without repeats."""
    masters: list[str] = []
    for part in text.split(","):
        address = parse_address(part.strip())
        if address not in masters:
            masters.append(address)
    return masters


def resolve_masters(text: str, dns_server: str | None = None) -> list[str]:
    """The masters of ``--master``: the list, or the addresses its one name resolves to
    (asking ``dns_server``, else ``QUORUMFS_DNS_SERVER``, else the system's resolver)."""
    masters = parse_masters(text)
    nameserver = dns_server or os.environ.get(DNS_SERVER_ENV) or None
    try:
        if nameserver is not None:
            parse_nameserver(nameserver)  # a typo is reported even when it is not needed
    except ValueError as exc:
        raise CliError(f"--dns-server: {exc}") from None
    try:
        name = dns_name_of(masters)
    except ValueError as exc:
        raise CliError(f"--master: {exc}") from None
    if name is None:
        return masters
    try:
        return list(DnsMasters(name, nameserver=nameserver).resolve_once())
    except OSError as exc:
        raise CliError(f"--master: {exc}; pass --dns-server (or set {DNS_SERVER_ENV})") from None


class Reply(NamedTuple):
    status: int
    body: Any
    """The decoded JSON."""
    address: str
    """The master that gave this answer (after redirects)."""


class _UnreachableError(Exception):
    """Nothing was sent: the connection could not be made."""


class _NoAnswerError(Exception):
    """The request may have been sent, but no answer came."""


class MasterClient:
    """Calls the masters' HTTP API: tries each master in turn, follows redirects."""

    def __init__(
        self,
        masters: str,
        *,
        token: str | None = None,
        dns_server: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.masters = resolve_masters(masters, dns_server)
        self.token = token
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    def request(
        self, method: str, path: str, body: object = None, *, redirect: bool = False
    ) -> Reply:
        """The first successful (2xx) answer from the masters, tried in order.

        ``redirect`` asks a follower for a 307 to the leader (followed here) instead
        of letting it forward the request. Raises ``CliError`` otherwise.
        """
        failures: list[str] = []
        last_refusal: CliError | None = None
        for master in self.masters:
            try:
                reply = self._follow(master, method, path, body, redirect)
            except _UnreachableError as exc:
                failures.append(f"{master} ({exc})")
                continue
            except _NoAnswerError as exc:
                if method != "GET":
                    raise CliError(
                        f"{master} did not answer ({exc}); the operation may or may not "
                        "have been applied: check before retrying"
                    ) from None
                failures.append(f"{master} ({exc})")
                continue
            if 200 <= reply.status < 300:
                return reply
            refusal = _refusal(reply)
            if reply.status == 503 and (method == "GET" or _code(reply) in _NOT_DONE):
                last_refusal = refusal  # nothing was done: another master may do better
                continue
            raise refusal
        if last_refusal is not None:
            raise last_refusal
        raise CliError(
            f"no master answered at {', '.join(failures)}; is a master running? "
            "pass --master (or set QUORUMFS_MASTER)"
        )

    def replies(self, path: str) -> Iterator[Reply]:
        """A successful GET answer from each master that gives one, in order (lazily),
        for commands that compare the masters' views; ``CliError`` if none does."""
        answered = False
        failures: list[str] = []
        for master in self.masters:
            try:
                reply = self._follow(master, "GET", path, None, redirect=False)
            except (_UnreachableError, _NoAnswerError) as exc:
                failures.append(f"{master} ({exc})")
                continue
            if 200 <= reply.status < 300:
                answered = True
                yield reply
            else:
                failures.append(f"{master} (HTTP {reply.status})")
        if not answered:
            raise CliError(
                f"no master answered at {', '.join(failures)}; is a master running? "
                "pass --master (or set QUORUMFS_MASTER)"
            )

    # ------------------------------------------------------------- one master

    def _follow(self, master: str, method: str, path: str, body: object, redirect: bool) -> Reply:
        address, target = master, path
        for _ in range(MAX_REDIRECTS + 1):
            status, headers, answer = self._exchange(address, method, target, body, redirect)
            if status != 307:
                return Reply(status, answer, address)
            address, target = _redirect_target(address, headers.get("Location", ""))
        raise CliError(
            f"more than {MAX_REDIRECTS} redirects starting at {master} (the masters disagree "
            "about who leads; retry in a few seconds)"
        )

    def _exchange(
        self, address: str, method: str, path: str, body: object, redirect: bool
    ) -> tuple[int, http.client.HTTPMessage, Any]:
        headers = {"Accept": "application/json", "User-Agent": f"quorumfs-cli/{__version__}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if redirect:
            headers["X-Quorumfs-Redirect"] = "1"
        connection = http.client.HTTPConnection(address, timeout=self.connect_timeout)
        try:
            try:
                connection.connect()
            except (OSError, http.client.HTTPException) as exc:
                raise _UnreachableError(_describe(exc, self.connect_timeout)) from None
            assert connection.sock is not None
            connection.sock.settimeout(self.read_timeout)
            try:
                connection.request(method, path, body=data, headers=headers)
                response = connection.getresponse()
                content = response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise _NoAnswerError(_describe(exc, self.read_timeout)) from None
        finally:
            connection.close()
        try:
            decoded = json.loads(content)
        except ValueError:
            raise CliError(
                f"{address} answered HTTP {response.status} without JSON; "
                "is it a quorumfs master's HTTP port? check --master"
            ) from None
        return response.status, response.headers, decoded


def _redirect_target(current: str, location: str) -> tuple[str, str]:
    parts = urlsplit(location)
    if parts.scheme != "http" or not parts.netloc:
        raise CliError(f"{current} redirected to {location!r}, which is not an http:// URL")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return parts.netloc, target


def _code(reply: Reply) -> str:
    error = reply.body.get("error") if isinstance(reply.body, dict) else None
    return str(error.get("code", "")) if isinstance(error, dict) else ""


def _refusal(reply: Reply) -> CliError:
    """A non-2xx answer as a one-line error: 4xx is a refusal (1), the rest unavailability (2)."""
    error = reply.body.get("error") if isinstance(reply.body, dict) else None
    if isinstance(error, dict) and "message" in error:
        message = f"{error['message']} ({error.get('code', '?')}, from {reply.address})"
    else:
        message = f"{reply.address} answered HTTP {reply.status}"
    code = EXIT_REFUSED if 400 <= reply.status < 500 else EXIT_UNAVAILABLE
    return CliError(message, code)


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return f"unknown host: {exc.strerror}"
    return str(exc) or type(exc).__name__
