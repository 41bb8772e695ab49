"""Where the client finds the masters: the ``MasterSource`` protocol and a static list.

A source answers one question, "which masters may I ask?", as HTTP ``host:port``
addresses, and is asked again at the start of every client call (so it must be
cheap: cache, don't resolve per call). The client decides who leads and in
what order to try them; a source only lists candidates.

``StaticMasters`` is a fixed list (``"h1:p1,h2:p2"`` or a list). ``DnsMasters``
(``_dns``: one name with several A/AAAA records, re-resolved every few seconds)
implements the same protocol; ``_dns.master_source`` chooses between the two
from what a user typed, and is what the client does with text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["MasterSource", "StaticMasters", "parse_address", "parse_masters"]

_MAX_PORT = 65535


@runtime_checkable
class MasterSource(Protocol):
    """Lists the masters' HTTP addresses (``host:port``, an IPv6 host in brackets)."""

    async def addresses(self) -> Sequence[str]:
        """The masters to try, in the order to try them; never empty.

        Called at the start of every client call: return a cached answer, refresh it in
        the background or when it is older than a refresh interval. Raise ``OSError`` when
        no address can be produced (the client reports it as ``Unavailable``).
        """
        ...


class StaticMasters:
    """A fixed list of masters, given as ``"h1:p1,h2:p2"`` or as an iterable of strings."""

    def __init__(self, masters: str | Iterable[str]) -> None:
        self._addresses = parse_masters(masters)

    async def addresses(self) -> Sequence[str]:
        return self._addresses

    def __repr__(self) -> str:
        return f"StaticMasters({','.join(self._addresses)!r})"


def parse_address(text: str) -> str:
    """``text`` stripped, if it is ``host:port`` (port 1..65535, IPv6 in brackets);
    ``ValueError`` otherwise."""
    address = text.strip()
    host, sep, port = address.rpartition(":")
    valid = (
        bool(sep and host)
        and port.isascii()
        and port.isdigit()
        and 1 <= int(port) <= _MAX_PORT
        and not any(c.isspace() or c in "/?#@" for c in address)
        and (":" not in host or (host.startswith("[") and host.endswith("]")))
    )
    if not valid:
        raise ValueError(
            f"master address {text!r} is not host:port (e.g. 127.0.0.1:9333 or [::1]:9333)"
        )
    return address


def parse_masters(masters: str | Iterable[str]) -> tuple[str, ...]:
    """The addresses of a master list, in order, without repeats; ``ValueError`` when
    one is malformed or the list is empty."""
    parts = masters.split(",") if isinstance(masters, str) else list(masters)
    addresses: list[str] = []
    for part in parts:
        if isinstance(masters, str) and not part.strip():
            continue  # "h1:p1," or "h1:p1,,h2:p2"
        address = parse_address(part)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ValueError("no master address given (e.g. 127.0.0.1:9333,127.0.0.1:9334)")
    return tuple(addresses)
