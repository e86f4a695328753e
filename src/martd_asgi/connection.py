"""Reaching the server's connection under an ASGI ``send``, where the server allows it.

Two things ASGI cannot say: "drop this connection now" and "bound its kernel
send buffer". Both matter for a subscriber that stops reading. uvicorn's
``send`` is a bound method of an object holding the asyncio transport, so
martd reaches it there; anywhere else these do nothing and martd falls back to
portable behaviour (the handler returns and the server closes the connection).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]


def _transport(send: Any) -> Any:
    """The server's transport under ``send``, if it can be reached.

    uvicorn's ``send`` is a bound method of an object that holds the connection's
    transport. Middleware that wraps ``send`` can say what it wraps with
    ``__wrapped__`` (as ``functools.wraps`` does).
    """
    for _ in range(8):
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is not None:
            return transport
        send = getattr(send, "__wrapped__", None)
        if send is None:
            return None
    return None


def drop_connection(send: Send) -> None:
    """Close the connection under ``send`` now, discarding what it holds unsent.

    A connection that does not drain would otherwise stay open until the client
    reads what the server buffered for it, and the server would log the handler's
    early return as an error. Where the transport cannot be reached (another
    server, or middleware that wraps ``send`` without ``__wrapped__``) the server
    closes the connection itself when the handler returns.
    """
    abort = getattr(_transport(send), "abort", None)
    if abort is not None:
        abort()


def set_send_buffer(send: Send, size: int) -> None:
    """Bound the kernel's send buffer of the connection under ``send`` (uvicorn only).

    Linux grows a socket's send buffer up to ``net.ipv4.tcp_wmem`` (4 MiB by
    default) for a client that does not read, before ``send`` ever suspends; a
    small fixed buffer bounds that kernel memory and lets the slow-consumer
    policy see the client sooner.
    """
    get_extra_info = getattr(_transport(send), "get_extra_info", None)
    sock = get_extra_info("socket") if get_extra_info is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        except (OSError, AttributeError):
            pass
