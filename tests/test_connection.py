"""The slow-consumer cut reaches uvicorn's transport from a subscriber's ``send``.

martd bounds a stream's kernel send buffer and drops a connection that does not
drain through the asyncio transport under uvicorn's ``send`` (connection.py).
Nothing else shows when that reach is lost: a stalled subscriber would then be
let go only when its handler returns, with the kernel holding up to megabytes
for it meanwhile. So these tests find the transport under a live SSE and
WebSocket subscriber on a real uvicorn, with the protocols ``martd serve`` runs
and with uvicorn's stock ones, and check that both uses of it take effect.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from typing import Any

import pytest

from martd_asgi import create_app, protocols
from martd_asgi.connection import _transport, drop_connection

from .helpers import ServerThread

SNDBUF = 32768

PROTOCOLS = [
    pytest.param(protocols.HTTP, protocols.WEBSOCKET, id="martd-serve"),
    pytest.param("httptools", "websockets-sansio", id="uvicorn-httptools"),
    pytest.param("h11", "websockets-sansio", id="uvicorn-h11"),
]


def subscribe(port: int, channel: str, websocket: bool) -> socket.socket:
    """A raw client holding a subscription, once the response head is read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if websocket:
        key = base64.b64encode(os.urandom(16))
        sock.sendall(
            b"GET /sub/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (channel.encode(), key)
        )
    else:
        sock.sendall(
            b"GET /sub/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
            % channel.encode()
        )
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        assert data, f"closed before the response head: {head!r}"
        head += data
    assert head.split(b" ", 2)[1] == (b"101" if websocket else b"200"), head
    return sock


def in_server(server: ServerThread, fn: Any) -> Any:
    """Run ``fn()`` in the server's event loop, where the subscribers live."""

    async def call() -> Any:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), server.server_loop()).result(5)


def expected_sndbuf() -> int:
    """What the kernel reports for a socket whose SO_SNDBUF was set to SNDBUF."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        return int(probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))


def closed_soon(sock: socket.socket, timeout: float = 3.0) -> bool:
    """True when the server closed ``sock`` within ``timeout`` (what it sent is skipped)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            continue
        except OSError:  # reset: abort() discards what was unsent
            return True
    return False


def transport_socket(send: Any) -> socket.socket | None:
    """The socket of the transport martd finds under ``send``, or None."""
    transport = _transport(send)
    if transport is None:
        return None
    sock: socket.socket | None = transport.get_extra_info("socket")
    return sock


@pytest.mark.parametrize(("http", "ws"), PROTOCOLS)
def test_transport_under_a_subscribers_send_is_reached(http: str, ws: str) -> None:
    martd = create_app(backend="memory", sub_sndbuf=SNDBUF)
    server = ServerThread(martd, http=http, ws=ws).start()
    clients: dict[str, socket.socket] = {}
    try:
        clients["sse"] = subscribe(server.port, "reach", websocket=False)
        clients["websocket"] = subscribe(server.port, "reach", websocket=True)
        deadline = time.monotonic() + 5
        while len(in_server(server, lambda: list(martd.hub.streams))) < 2:
            assert time.monotonic() < deadline, "the subscribers were not registered"
            time.sleep(0.02)
        subs = {sub.transport: sub for sub in in_server(server, lambda: list(martd.hub.streams))}
        assert set(subs) == {"sse", "websocket"}

        for kind, client in clients.items():
            sub = subs[kind]
            sock = in_server(server, lambda sub=sub: transport_socket(sub.send))
            assert sock is not None, f"{kind}: no transport under the subscriber's send"
            # the subscriber's own connection, with the bounded send buffer the hub set
            assert sock.getpeername() == client.getsockname(), kind
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == expected_sndbuf(), kind

        # The cut's drop closes the client's connection at once, with no help from
        # the handler (which still waits for the client).
        for kind, client in clients.items():
            in_server(server, lambda sub=subs[kind]: drop_connection(sub.send))
            assert closed_soon(client), f"{kind}: drop_connection left the connection open"
    finally:
        for client in clients.values():
            client.close()
        server.stop()
