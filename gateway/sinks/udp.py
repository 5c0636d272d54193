"""UDP sink: readings as datagrams to unicast, multicast or broadcast targets, split to fit."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from typing import Any, Callable, Iterator

from gateway.sinks.base import Item, Sink, SinkError, route_runs
from gateway.sinks.encoding import encoder
from gateway.throttled_log import ThrottledLog

log = logging.getLogger("gateway.sinks.udp")

DEFAULT_MAX_DATAGRAM = 1472  # a 1500-byte Ethernet MTU minus the IPv4 and UDP headers
LARGEST_DATAGRAM = 65507  # the most an IPv4 UDP datagram can carry
YIELD_EVERY = 256  # datagrams sent between giving other tasks a turn


def parse_target(text: str, where: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' → (host, port), with an error naming the config key."""
    host, separator, port = str(text).rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{where}: expected 'host:port' with port 1-65535, got {text!r}")
    return host, int(port)


def is_broadcast(address: str) -> bool:
    """Limited or (by the usual /24-style convention) directed IPv4 broadcast."""
    return address == "255.255.255.255" or (address.count(".") == 3 and address.endswith(".255"))


def array_overhead(encoding: str, count: int) -> int:
    """Bytes an array of `count` pre-encoded readings adds around and between them."""
    if encoding == "json":
        return 2 + max(count - 1, 0)  # brackets and commas
    if encoding == "msgpack":
        return 1 if count < 16 else 3 if count < 0x10000 else 5
    return 1 if count < 24 else 2 if count < 0x100 else 3 if count < 0x10000 else 5  # cbor


def join_array(encoding: str, parts: list[bytes]) -> bytes:
    """An array of already-encoded readings, without decoding and re-encoding them."""
    count = len(parts)
    if encoding == "json":
        return b"[" + b",".join(parts) + b"]"
    if encoding == "msgpack":
        if count < 16:
            header = bytes([0x90 | count])
        elif count < 0x10000:
            header = b"\xdc" + struct.pack(">H", count)
        else:
            header = b"\xdd" + struct.pack(">I", count)
    elif count < 24:
        header = bytes([0x80 | count])
    elif count < 0x100:
        header = bytes([0x98, count])
    elif count < 0x10000:
        header = b"\x99" + struct.pack(">H", count)
    else:
        header = b"\x9a" + struct.pack(">I", count)
    return header + b"".join(parts)


def pack_arrays(
    parts: list[bytes], encoding: str, max_bytes: int, max_readings: int
) -> Iterator[tuple[bytes | None, int]]:
    """Greedily group encoded readings into arrays of at most max_bytes and max_readings.

    Yields (payload, count) in input order; a reading that cannot fit even alone yields
    (None, index) so the caller can count and report it.
    """
    chunk: list[bytes] = []
    size = 0
    for index, part in enumerate(parts):
        if array_overhead(encoding, 1) + len(part) > max_bytes:
            if chunk:
                yield join_array(encoding, chunk), len(chunk)
                chunk, size = [], 0
            yield None, index
            continue
        grown = len(chunk) + 1
        too_big = array_overhead(encoding, grown) + size + len(part) > max_bytes
        if chunk and (grown > max_readings or too_big):
            yield join_array(encoding, chunk), len(chunk)
            chunk, size = [], 0
        chunk.append(part)
        size += len(part)
    if chunk:
        yield join_array(encoding, chunk), len(chunk)


class _Target:
    """One resolved destination and the bound call that sends a datagram to it."""

    def __init__(self, label: str, sock: socket.socket, address: tuple, connected: bool):
        self.label = label
        self.sock = sock
        self.address = address
        if connected:
            self.send: Callable[[bytes], int] = sock.send
        else:
            sendto = sock.sendto
            self.send = lambda payload: sendto(payload, address)


class UdpSink(Sink):
    """Sends each reading (or each array of readings, in batch mode) as one datagram per target.

    One non-blocking socket per address family; with a single target it is connected, which
    is faster and lets ICMP refusals surface. "Confirmed" means sendto() returned: UDP has no
    acknowledgement. A datagram no target accepted raises SinkError so the base retries later.
    """

    kind = "udp"

    def __init__(self, name: str, options: dict[str, Any], gateway_id: str):
        super().__init__(name, options, gateway_id)
        where = f"sinks.{name}"
        targets = options.get("targets") or []
        if isinstance(targets, str) or not targets:
            expected = "expected a non-empty list of 'host:port'"
            raise ValueError(f"{where}.targets: {expected}, got {targets!r}")
        self.targets = [parse_target(t, f"{where}.targets[{i}]") for i, t in enumerate(targets)]
        self.encoding = options.get("encoding", "json")
        encoder(self.encoding)  # raises ValueError naming the choices
        self.max_datagram = int(options.get("max_datagram", DEFAULT_MAX_DATAGRAM))
        if not 1 <= self.max_datagram <= LARGEST_DATAGRAM:
            expected = f"expected 1-{LARGEST_DATAGRAM} bytes"
            raise ValueError(f"{where}.max_datagram: {expected}, got {self.max_datagram}")
        self.batch = options.get("batch") or None
        self.ttl = int(options.get("ttl", 1))
        if not 0 <= self.ttl <= 255:
            raise ValueError(f"{where}.ttl: expected 0-255, got {self.ttl}")
        self.broadcast = options.get("broadcast")  # None: decided per target address
        self.interface = options.get("interface")  # IPv4 address multicast leaves through
        if self.interface is not None:
            try:
                ipaddress.IPv4Address(self.interface)
            except ValueError:
                expected = "expected the IPv4 address of a local interface"
                raise ValueError(f"{where}.interface: {expected}, got {self.interface!r}") from None
        self._targets: list[_Target] = []
        self._sockets: dict[int, socket.socket] = {}
        self._errors = ThrottledLog(log, interval=5.0)
        self._oversize_log = ThrottledLog(log, interval=5.0)

    # -- connection ----------------------------------------------------------------------
    async def open(self) -> None:
        await self.close()
        loop = asyncio.get_running_loop()
        resolved = []
        for host, port in self.targets:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            family, _, _, _, address = infos[0]
            resolved.append((f"{host}:{port}", family, address))
        connect = len(resolved) == 1
        try:
            for label, family, address in resolved:
                sock = self._socket_for(family)
                self._configure(sock, family, address[0])
                if connect:
                    sock.connect(address)
                self._targets.append(_Target(label, sock, address, connect))
        except OSError:
            await self.close()
            raise

    async def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._targets.clear()

    def _socket_for(self, family: int) -> socket.socket:
        if family not in self._sockets:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self._sockets[family] = sock
        return self._sockets[family]

    def _configure(self, sock: socket.socket, family: int, host: str) -> None:
        address = ipaddress.ip_address(host.split("%")[0])
        if address.is_multicast and family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            if self.interface:
                sock.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(self.interface)
                )
        elif address.is_multicast:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, self.ttl)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
        wants_broadcast = self.broadcast if self.broadcast is not None else is_broadcast(host)
        if wants_broadcast and family == socket.AF_INET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)

    # -- delivery ------------------------------------------------------------------------
    async def send(self, items: list[Item]) -> None:
        targets = self._targets
        if not targets:
            raise SinkError("UDP sink is not open")
        sent = datagrams = 0
        try:
            for (encoding, max_readings), readings in route_runs(items, self._settings):
                for payload in self._payloads(readings, encoding, max_readings):
                    datagrams += 1
                    if datagrams % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                    accepted = False
                    for target in targets:
                        try:
                            target.send(payload)
                            accepted = True
                            sent += 1
                        except OSError as error:
                            if await self._send_again(target, payload, error):
                                accepted = True
                                sent += 1
                    if not accepted:
                        raise SinkError(f"no UDP target accepted a datagram: {self.last_error}")
        finally:
            self.counters["datagrams"] += sent

    def _settings(self, route: dict | None) -> tuple[str, int]:
        if not route:
            route = {}
        batch = route.get("batch") or self.batch
        max_readings = int(batch.get("max_readings", 1)) if batch else 1
        return route.get("encoding") or self.encoding, max(max_readings, 1)

    def _payloads(self, readings: list[dict], encoding: str, max_readings: int) -> Iterator[bytes]:
        encode = encoder(encoding)
        limit = self.max_datagram
        if max_readings == 1:
            for reading in readings:
                payload = encode(reading)
                if len(payload) <= limit:
                    yield payload
                else:
                    self._oversize(reading, len(payload))
            return
        parts = [encode(reading) for reading in readings]
        for payload, count in pack_arrays(parts, encoding, limit, max_readings):
            if payload is None:
                self._oversize(readings[count], len(parts[count]) + array_overhead(encoding, 1))
            else:
                yield payload

    def _oversize(self, reading: dict, size: int) -> None:
        self.counters["oversize"] += 1
        self._oversize_log.warning(
            "oversize",
            "sink %s: dropped reading %s/%s seq %s: %d bytes encoded, max_datagram is %d",
            self.name, reading.get("device"), reading.get("stream"), reading.get("seq"),
            size, self.max_datagram,
        )  # fmt: skip

    async def _send_again(self, target: _Target, payload: bytes, error: OSError) -> bool:
        """After a failed send: wait out a full buffer, retry a refusal once, count errors."""
        retried = False
        while True:
            if isinstance(error, BlockingIOError):
                await self._writable(target.sock)
            elif isinstance(error, ConnectionRefusedError) and not retried:
                # An ICMP report about an earlier datagram; this call sent nothing. Nobody
                # listening is normal for UDP, so count it and send this datagram again.
                self._send_failed(target, error)
                retried = True
            else:
                self._send_failed(target, error)
                return False
            try:
                target.send(payload)
                return True
            except OSError as again:
                error = again

    def _send_failed(self, target: _Target, error: OSError) -> None:
        self.counters["send_errors"] += 1
        self.last_error = f"{target.label}: {error.strerror or error}"
        self._errors.warning(
            target.label, "sink %s: send to %s failed: %s", self.name, target.label, error
        )

    async def _writable(self, sock: socket.socket) -> None:
        """Wait until the kernel takes datagrams again (its send buffer was full)."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_writer(sock.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_writer(sock.fileno())
