"""Debian's Chromium, headless, driven by playwright: pages whose console errors are kept, a
screenshot as a test artifact, a gateway process asked with a token, and a TCP relay that
cuts a browser's connections as a network would."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from tests.support.e2e import REPO_ROOT, GatewayProcess

CHROMIUM = "/usr/bin/chromium"  # Debian's package (`make test` installs it); no browser download
ARTIFACTS = Path(REPO_ROOT) / "tests" / "artifacts"  # ignored by git


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium for the duration of the block."""
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        raise AssertionError(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class WatchedPage:
    """A new page of `browser` whose console errors and uncaught exceptions are kept."""

    def __init__(self, browser: Any, viewport: tuple[int, int] = (1280, 900)):
        self.context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def screenshot(self, name: str) -> Path:
        """Write the page as tests/artifacts/NAME.png and say where."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    def close(self) -> None:
        self.context.close()


class TokenGatewayProcess(GatewayProcess):
    """A `gateway run` child whose health is asked with `token` (None: its config has none)."""

    def __init__(self, config_text: str, directory: str, token: str | None):
        super().__init__(config_text, directory)
        self.token = token

    def health(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}/api/v1/health", headers=headers
        )
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.load(response)


class CuttingRelay:
    """Listens on 127.0.0.1:`port` and relays each connection to 127.0.0.1:`target`;
    cut() closes every connection open now, both ends, as a dropped link would. New
    connections are relayed as before."""

    def __init__(self, target: int):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self.listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self.accepted += 1
                self._open |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        self._drop(source, sink)

    def _drop(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            with self._lock:
                self._open.discard(sock)

    def cut(self) -> int:
        """Close every relayed connection; returns how many sockets were open."""
        with self._lock:
            sockets = list(self._open)
        self._drop(*sockets)
        return len(sockets)

    def close(self) -> None:
        self.listener.close()
        self.cut()
