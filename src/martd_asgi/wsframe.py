"""WebSocket frames as bytes on the wire, made once and shared.

A server's frames are never masked (RFC 6455, 5.1), so the bytes of a message's
frame are the same for every subscriber: they are made once per message, beside
its ASGI event, and a server that lets martd write frames itself (see
``martd_asgi.wsprotocol.frame_protocol``) gets those bytes, several of one loop turn
joined into one write. Any other server gets the ASGI event as before.
"""

from __future__ import annotations

from typing import Any

TEXT = 0x1
BINARY = 0x2
FIN = 0x80


def frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """One unfragmented, unmasked frame carrying ``payload``."""
    size = len(payload)
    if size < 126:
        head = bytes((FIN | opcode, size))
    elif size < 65536:
        head = bytes((FIN | opcode, 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((FIN | opcode, 127)) + size.to_bytes(8, "big")
    return head + payload


class Outgoing(dict[str, Any]):
    """A ``websocket.send`` event that carries its frame's bytes too (``wire``)."""

    __slots__ = ("wire",)

    def __init__(self, text: str) -> None:
        super().__init__(type="websocket.send", text=text)
        self.wire = frame(text.encode())


def wire(event: dict[str, Any]) -> bytes | None:
    """The frame of a ``websocket.send`` event; None for any other event."""
    if type(event) is Outgoing:
        return event.wire
    if event.get("type") != "websocket.send":
        return None
    text = event.get("text")
    if text is not None:
        try:
            return frame(text.encode())
        except UnicodeEncodeError:  # left to the server's send, which refuses it
            return None
    data = event.get("bytes")
    return frame(data, BINARY) if data is not None else None
