"""A tiny DNS server for tests: UDP on 127.0.0.1, in a thread, answers from a dict.

``FakeDns`` answers A and AAAA questions from ``records`` (name -> addresses, IPv4
and IPv6 mixed), NXDOMAIN for a name it does not know, and an empty answer
(NODATA) for a known name without records of the type asked. ``mode`` switches it
to refusing (REFUSED) or to dropping every question (the client times out). Every
question is counted in ``queries``. Real enough for dnspython's resolvers, sync
and async; the real server (dnsmasq) is in the integration tests.
"""

from __future__ import annotations

import ipaddress
import socketserver
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Mode = Literal["answer", "refuse", "drop"]


class FakeDns:
    def __init__(self, records: Mapping[str, Sequence[str]]) -> None:
        self._lock = threading.Lock()
        self._records = {_key(name): list(ips) for name, ips in records.items()}
        self.mode: Mode = "answer"
        self.queries: list[tuple[str, str]] = []
        """(name, type) of every question received, in order."""
        self.address = ""
        """``127.0.0.1:PORT`` once serving."""

    def set_records(self, name: str, ips: Sequence[str]) -> None:
        with self._lock:
            self._records[_key(name)] = list(ips)

    def query_count(self) -> int:
        with self._lock:
            return len(self.queries)

    def reply(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = _key(question.name.to_text())
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, rdtype))
            mode = self.mode
            known = self._records.get(name)
        if mode == "drop":
            return None
        response = dns.message.make_response(query)
        if mode == "refuse":
            response.set_rcode(dns.rcode.REFUSED)
        elif known is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            version = {"A": 4, "AAAA": 6}.get(rdtype)
            ips = [ip for ip in known if ipaddress.ip_address(ip).version == version]
            if ips:
                response.answer.append(
                    dns.rrset.from_text_list(question.name, 60, dns.rdataclass.IN, rdtype, ips)
                )
        return response.to_wire()


def _key(name: str) -> str:
    return name.rstrip(".").lower()


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        data, sock = self.request
        answer = self.server.fake.reply(data)
        if answer is not None:
            sock.sendto(answer, self.client_address)


class _Server(socketserver.ThreadingUDPServer):
    daemon_threads = True

    def __init__(self, fake: FakeDns) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


@contextmanager
def serving(fake: FakeDns) -> Iterator[FakeDns]:
    """Serve ``fake`` on a free UDP port of 127.0.0.1 until the block ends."""
    server = _Server(fake)
    fake.address = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
