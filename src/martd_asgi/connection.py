"""Reaching the server's connection under an ASGI ``send``, where the server allows it.

Three things ASGI cannot say: "drop this connection now", "bound its kernel
send buffer" and "end this body by closing, never chunk it". The first two
matter for a subscriber that stops reading, the third for an HTTP/1.0 client. uvicorn's
``send`` is a bound method of an object holding the asyncio transport, so
martd reaches it there; anywhere else these do nothing and martd falls back to
portable behaviour (the handler returns and the server closes the connection).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from .types import Send


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


UNBOUNDED = 1 << 62
AnySend = TypeVar("AnySend", bound=Callable[..., Awaitable[None]])


def close_delimited(send: AnySend) -> AnySend:
    """A ``send`` whose response body is delimited by closing the connection.

    For an HTTP/1.0 client, which cannot read chunked bodies: uvicorn's h11
    protocol does that on its own, but its httptools protocol chunks any
    response without ``Content-Length``, whatever the request's version.
    There the response is told it has a length too large to reach, and the
    last body event the length it completes; the protocol then writes the body
    as it is and closes the connection (HTTP/1.0 is never kept alive).
    Elsewhere ``send`` is returned as it is.
    """
    cycle: Any = getattr(send, "__self__", None)
    if getattr(cycle, "chunked_encoding", False) is not None or not isinstance(
        getattr(cycle, "expected_content_length", None), int
    ):
        return send

    async def delimited(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            cycle.chunked_encoding = False
            cycle.expected_content_length = UNBOUNDED
        elif event["type"] == "http.response.body" and not event.get("more_body", False):
            cycle.expected_content_length = len(event.get("body", b""))
        await send(event)

    delimited.__wrapped__ = send  # type: ignore[attr-defined]
    return cast(AnySend, delimited)
