"""A small authoritative DNS server for tests (dnspython), in the running asyncio loop.

Answers UDP and TCP on 127.0.0.1 from a dict, ``records[name][type] = [rdata text, ...]``:

* a name that is not in ``records`` is NXDOMAIN;
* a name that is there without the asked type gets an empty NOERROR answer (NODATA);
* a name in ``servfail`` gets SERVFAIL; a name in ``silent`` gets no answer at all (the
  client times out).

Names are case-insensitive, with or without the final dot. ``queries`` records every
question asked, as ``(name, type)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

__all__ = ["TestDNSServer"]


def _key(name: str) -> str:
    return name.lower().rstrip(".") + "."


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: TestDNSServer) -> None:
        self.owner = owner
        self.transport: Any = None  # the selector loop's datagram transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.owner.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class TestDNSServer:
    """DNS on 127.0.0.1, UDP and TCP on the same ephemeral port (``port`` after start())."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.records: dict[str, dict[str, list[str]]] = {}
        self.servfail: set[str] = set()
        self.silent: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self._udp: asyncio.BaseTransport | None = None
        self._tcp: asyncio.Server | None = None

    def add(self, name: str, rdtype: str, *values: str) -> None:
        """Add records: ``add("example.test", "MX", "10 mx1.example.test.")``; no values
        just makes the name exist."""
        self.records.setdefault(_key(name), {}).setdefault(rdtype.upper(), []).extend(values)

    def fail(self, name: str) -> None:
        """Answer SERVFAIL for every question about `name`."""
        self.servfail.add(_key(name))

    def ignore(self, name: str) -> None:
        """Never answer questions about `name`."""
        self.silent.add(_key(name))

    def answer(self, wire: bytes) -> bytes | None:
        """The response to one query in wire format; None: no response."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        name = _key(question.name.to_text())
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            values = self.records[name].get(rdtype, [])
            if values:
                response.answer.append(
                    dns.rrset.from_text_list(question.name, 60, "IN", rdtype, values)
                )
        return response.to_wire()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self.answer(await reader.readexactly(length))
                if reply is None:
                    continue
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self) -> None:
        """Listen on 127.0.0.1: UDP on an ephemeral port, TCP on the same one."""
        loop = asyncio.get_running_loop()
        for _ in range(20):  # the TCP port of that number may be taken: pick another
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, 0), family=socket.AF_INET
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError:
                udp.close()
                continue
            self._udp, self.port = udp, port
            return
        raise RuntimeError("no port free for both UDP and TCP")

    async def stop(self) -> None:
        """Stop answering."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
            self._tcp = None
