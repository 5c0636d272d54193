"""The throttling TCP proxy (tests/support/throttle.py) against a real sink server."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support.throttle import DOWN, UP, ThrottledProxy


class SinkServer:
    """Accepts one connection, counts what arrives; answers b"done" once `expected` bytes came."""

    def __init__(self, expected: int):
        self.expected = expected
        self.received = 0
        self.closed_by_client = threading.Event()
        self._progress = threading.Condition()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self._listener.accept()
        with connection:
            while True:
                data = connection.recv(65536)
                if not data:
                    self.closed_by_client.set()
                    return
                with self._progress:
                    self.received += len(data)
                    self._progress.notify_all()
                if self.received >= self.expected:
                    connection.sendall(b"done")
                    return  # closing here: the proxy must close the client's side too

    def wait_for(self, count: int, timeout: float) -> bool:
        with self._progress:
            return self._progress.wait_for(lambda: self.received >= count, timeout)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def proxied():
    """(sink, proxy) factory; everything is closed at teardown."""
    made: list = []

    def make(expected: int, rate: float | None) -> tuple[SinkServer, ThrottledProxy]:
        sink = SinkServer(expected)
        proxy = ThrottledProxy(sink.port, rate).start()
        made.append((sink, proxy))
        return sink, proxy

    yield make
    for sink, proxy in made:
        proxy.close()
        sink.close()


def test_the_rate_limits_client_to_server_and_a_server_close_reaches_the_client(proxied):
    size = 400_000
    sink, proxy = proxied(size, 200_000)
    with socket.create_connection(("127.0.0.1", proxy.port)) as client:
        started = time.monotonic()
        client.sendall(b"x" * size)
        assert sink.wait_for(size, timeout=20)
        elapsed = time.monotonic() - started
        client.settimeout(10)
        reply = b"".join(iter(lambda: client.recv(100), b""))  # until the proxy closes us
    assert 1.5 <= elapsed < 6, elapsed  # 400 kB at 200 kB/s: 2 s, less a 20 ms burst
    assert reply == b"done"
    assert proxy.forwarded == {UP: size, DOWN: 4}


def test_set_rate_none_lifts_the_limit_for_bytes_already_waiting(proxied):
    size = 2_000_000  # 100 s at 20 kB/s
    sink, proxy = proxied(size + 1, 20_000)
    client = socket.create_connection(("127.0.0.1", proxy.port))
    sending = threading.Thread(target=client.sendall, args=(b"x" * size,))
    sending.start()
    assert sink.wait_for(10_000, timeout=10)
    assert sink.received < 100_000  # throttled so far
    lifted = time.monotonic()
    proxy.set_rate(None)
    assert sink.wait_for(size, timeout=10)
    assert time.monotonic() - lifted < 3
    sending.join(10)
    client.close()
    assert sink.closed_by_client.wait(10)  # the client's close went through the proxy
    assert proxy.forwarded[UP] == size


def test_a_rate_must_be_positive_or_none():
    with pytest.raises(ValueError):
        ThrottledProxy(1, 0)
