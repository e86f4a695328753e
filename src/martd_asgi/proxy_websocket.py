"""The WebSocket half of the proxy: the upstream connection, and frames relayed both ways."""

from __future__ import annotations

from typing import Any

import anyio

from .types import Receive, Send


def site_connection(browser_host: bool) -> Any:
    """The websockets client connection, sending the browser's ``Host`` (when it sent
    one) instead of its own."""
    from websockets.asyncio.client import ClientConnection

    class SiteConnection(ClientConnection):
        async def handshake(self, *args: Any, **kwargs: Any) -> None:
            made = self.protocol.connect

            def connect() -> Any:
                request = made()
                if browser_host:  # it comes with the other headers
                    del request.headers["Host"]
                return request

            self.protocol.connect = connect  # type: ignore[method-assign]
            await super().handshake(*args, **kwargs)

    return SiteConnection


def _sendable(code: int | None) -> int:
    # 1005 (no code) and 1006 (connection lost) are never sent in a close frame.
    if code is None or code == 1005:
        return 1000
    if code == 1006:
        return 1011
    return code


async def relay_websocket(upstream: Any, receive: Receive, send: Send) -> None:
    from websockets.exceptions import ConnectionClosed

    async with anyio.create_task_group() as group:

        async def from_browser() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.receive":
                    text = message.get("text")
                    try:
                        await upstream.send(
                            text if text is not None else message.get("bytes") or b""
                        )
                    except ConnectionClosed:
                        return
                elif message["type"] == "websocket.disconnect":
                    try:
                        await upstream.close(code=_sendable(message.get("code")))
                    except (ValueError, ConnectionClosed):
                        await upstream.close()
                    group.cancel_scope.cancel()
                    return

        async def from_upstream() -> None:
            try:
                async for data in upstream:
                    key = "text" if isinstance(data, str) else "bytes"
                    await send({"type": "websocket.send", key: data})
            except ConnectionClosed:
                pass
            except OSError:  # the browser went away
                group.cancel_scope.cancel()
                return
            rcvd = upstream.protocol.close_rcvd
            code = _sendable(rcvd.code if rcvd else 1006)
            reason = rcvd.reason if rcvd else ""
            try:
                await send({"type": "websocket.close", "code": code, "reason": reason})
            except (OSError, RuntimeError):
                pass
            group.cancel_scope.cancel()

        group.start_soon(from_browser)
        group.start_soon(from_upstream)
