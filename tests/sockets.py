"""Test helpers that watch sockets: every connect the process attempts, a counting listener."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

_watchers: list[list[tuple[str, int]]] = []
_lock = threading.Lock()


def _hook(event: str, args: tuple[Any, ...]) -> None:
    # CPython raises "socket.connect" with (socket, address) before every connect().
    if event != "socket.connect" or not _watchers:
        return
    address = args[1]
    if isinstance(address, tuple) and len(address) >= 2:
        with _lock:
            for seen in _watchers:
                seen.append((str(address[0]), int(address[1])))


sys.addaudithook(_hook)


@contextmanager
def watch_connects() -> Iterator[list[tuple[str, int]]]:
    """Every (address, port) any thread of this process tries to connect to meanwhile."""
    seen: list[tuple[str, int]] = []
    with _lock:
        _watchers.append(seen)
    try:
        yield seen
    finally:
        with _lock:
            _watchers.remove(seen)


class CountingListener:
    """A loopback HTTP server that counts the connections it accepts.

    Each connection gets one answer (``answer`` bytes, ``Connection: close``), so every
    request needs a new connection, and so a new address check.
    """

    def __init__(self, answer: bytes | None = None, *, family: int = socket.AF_INET):
        self.answer = answer or (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        self.accepted = 0
        self.requests: list[bytes] = []
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    self.requests.append(data)
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._sock.close()
        self._thread.join(timeout=5)


@contextmanager
def counting_listener(
    answer: bytes | None = None, *, family: int = socket.AF_INET
) -> Iterator[CountingListener]:
    listener = CountingListener(answer, family=family)
    try:
        yield listener
    finally:
        listener.close()
