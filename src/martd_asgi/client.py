"""Publisher client: push, read channel info, delete, mint tokens, over HTTP.

``Client`` is synchronous and ``AsyncClient`` asynchronous; both take ``url``,
where martd is mounted (``http://127.0.0.1:8000/martd`` for ``martd serve``),
and authenticate with the server ``secret`` or a ``token`` (both sent as
``Authorization: Bearer``). Without either, martd decides by the client's
address (loopback is a server by default).

Every error martd answers is raised as one small class per condition, the
classes of ``errors.py`` (the server raises the same ones; ``ClientError`` is
``errors.MartdError``), and the client adds only ``TransportError``:

    ClientError                .status (None for transport errors), .message, .body
     ├── TransportError        martd could not be reached, or did not answer in time
     ├── BadRequest        400  malformed input; the message names the field
     ├── Unauthorized      401  a grant is needed and none (or an invalid one) was given
     ├── Forbidden         403  not a server, wrong key, attribute change refused
     ├── NotFound          404  no such channel (info, delete), or a wrong ``url``
     ├── Conflict          409  one2one channel held by another client
     ├── Gone              410  the channel was deleted
     ├── PayloadTooLarge   413  the payload is above ``MARTD_MAX_PAYLOAD``
     ├── Unprocessable     422  an ``idempotency_key`` reused for a different push
     ├── TooManyRequests   429  rate or connection limit
     └── Unavailable       503  martd's backend cannot be reached

Any other error status raises ``ClientError`` itself.

``publish`` retries on its own (``retries``, 2 by default) when martd could not
be reached, did not answer in time, or answered 502, 503 or 504. Each push then
carries an ``Idempotency-Key`` made for it and kept across its retries, so a
push whose answer was lost on the way is stored once, never twice.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    MartdError,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unprocessable,
)

__all__ = [
    "AsyncClient",
    "BadRequest",
    "ChannelInfo",
    "Client",
    "ClientError",
    "Conflict",
    "Forbidden",
    "Gone",
    "NotFound",
    "PayloadTooLarge",
    "PublishResult",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "error_for",
]

DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 2
RETRY_STATUSES = frozenset({502, 503, 504})
MAX_RETRY_WAIT = 5.0


ClientError = MartdError
"""The root of the client's errors: ``errors.MartdError`` under its client name."""


class TransportError(MartdError):
    """martd could not be reached, or did not answer in time (``status`` is None)."""

    status = None


_BY_STATUS: dict[int | None, type[MartdError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        Gone,
        PayloadTooLarge,
        Unprocessable,
        TooManyRequests,
        Unavailable,
    )
}


@dataclass(frozen=True)
class PublishResult:
    """martd's answer to a push."""

    channel: str
    etag: str
    subscribers: int
    messages: int
    created: bool
    #: False for an empty push: stored with an etag, but delivered to no subscriber.
    delivered: bool = True
    #: martd's answer as it sent it (the JSON text of the response body).
    answer: str = field(default="", compare=False)


@dataclass(frozen=True)
class ChannelInfo:
    """martd's answer to ``GET /pub/{channel}``."""

    channel: str
    etag: str
    subscribers: int
    messages: int
    size: int
    life: int
    one2one: bool
    has_key: bool
    presence: bool = False


def error_for(response: httpx.Response) -> ClientError:
    """The typed error for an error answer (its JSON ``error``, or its text)."""
    body: Any = None
    try:
        body = response.json()
        message = str(body["error"]) if isinstance(body, dict) and "error" in body else ""
    except (ValueError, UnicodeDecodeError):
        message = ""
    if not message:
        text = response.text.strip().splitlines()
        message = text[0][:200] if text else response.reason_phrase or "no answer"
    cls = _BY_STATUS.get(response.status_code, ClientError)
    return cls(message, status=response.status_code, body=body)


def _transport_error(url: str, exc: httpx.HTTPError) -> TransportError:
    if isinstance(exc, httpx.TimeoutException):
        return TransportError(f"{url}: no answer in time ({type(exc).__name__})")
    reason = str(exc) or type(exc).__name__
    return TransportError(f"cannot reach martd at {url}: {reason}")


def _payload(data: str | bytes | Any, content_type: str | None) -> tuple[bytes, dict[str, str]]:
    """The body and its Content-Type, which martd keeps as the message's ``type``:
    ``application/json`` for data sent as JSON, else only the one asked for."""
    if isinstance(data, bytes):
        body, kind = data, "application/octet-stream"
    elif isinstance(data, str):
        body, kind = data.encode(), ""
    else:
        body, kind = json.dumps(data, separators=(",", ":")).encode(), "application/json"
    kind = content_type or kind
    return body, ({"content-type": kind} if kind else {})


def _push_params(
    size: int | None,
    life: int | None,
    one2one: bool | None,
    key: str | None,
    event: str | None = None,
    presence: bool | None = None,
) -> dict[str, str]:
    params: dict[str, str] = {}
    if event is not None:
        params["event"] = event
    if size is not None:
        params["size"] = str(size)
    if life is not None:
        params["life"] = str(life)
    if one2one is not None:
        params["one2one"] = "true" if one2one else "false"
    if key is not None:
        params["key"] = key
    if presence is not None:
        params["presence"] = "true" if presence else "false"
    return params


def _json(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise error_for(response)
    try:
        body = response.json()
    except ValueError:
        raise ClientError(
            f"{response.url}: not a martd answer (is url where martd is mounted?)",
            status=response.status_code,
        ) from None
    if not isinstance(body, dict):
        raise ClientError(f"{response.url}: not a martd answer", status=response.status_code)
    return body


def _publish_result(response: httpx.Response) -> PublishResult:
    body = _json(response)
    return PublishResult(
        channel=str(body.get("channel", "")),
        etag=str(body["etag"]),
        subscribers=int(body.get("subscribers", 0)),
        messages=int(body.get("messages", 0)),
        created=response.status_code == 201,
        delivered=body.get("delivered", True) is not False,
        answer=response.text,
    )


def _channel_info(response: httpx.Response) -> ChannelInfo:
    body = _json(response)
    return ChannelInfo(
        channel=str(body["channel"]),
        etag=str(body["etag"]),
        subscribers=int(body["subscribers"]),
        messages=int(body["messages"]),
        size=int(body["size"]),
        life=int(body["life"]),
        one2one=bool(body["one2one"]),
        has_key=bool(body["has_key"]),
        presence=bool(body.get("presence", False)),
    )


def _retry_wait(attempt: int, answer: httpx.Response | None) -> float:
    """Seconds before retry ``attempt`` (0 first): martd's Retry-After, else backoff."""
    if answer is not None:
        after = answer.headers.get("retry-after", "")
        if after.isdigit():
            return min(float(after), MAX_RETRY_WAIT)
    return min(0.2 * 2.0**attempt, MAX_RETRY_WAIT) * (0.5 + random.random())


def _retryable(answer: httpx.Response) -> bool:
    return answer.status_code in RETRY_STATUSES


class _Base:
    retries: int

    def __init__(self, url: str, secret: str | None, token: str | None) -> None:
        if secret is not None and token is not None:
            raise ValueError("give either secret or token, not both")
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"url: {url!r} is not an http:// or https:// URL")
        self.url = url.rstrip("/")
        self.secret = secret
        self.token = token
        self.headers = {"user-agent": "martd-client"}
        if secret or token:
            self.headers["authorization"] = f"Bearer {secret or token}"

    def _channel_url(self, channel: str) -> str:
        return f"{self.url}/pub/{quote(channel, safe=':@~')}"

    def _push_headers(self, kind: dict[str, str], idempotency_key: str | None) -> dict[str, str]:
        headers = dict(kind)
        key = idempotency_key
        if key is None and self.retries > 0:
            key = secrets.token_urlsafe(18)  # one per push, the same on each of its retries
        if key is not None:
            headers["idempotency-key"] = key
        return headers

    def mint_token(
        self, publish: Sequence[str] = (), subscribe: Sequence[str] = (), ttl: float | None = 3600
    ) -> str:
        """A signed token granting these channel patterns, valid ``ttl`` seconds."""
        if not self.secret:
            raise ValueError("mint_token needs the client's secret")
        # Imported on use: tokens need PyJWT, pushing does not.
        tokens = importlib.import_module("martd_asgi.tokens")
        return str(tokens.mint_token(self.secret, publish=publish, subscribe=subscribe, ttl=ttl))


class Client(_Base):
    """Synchronous client: ``with Client(url) as martd: martd.publish("ch", "hi")``."""

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, secret, token)
        if retries < 0:
            raise ValueError("retries: must be 0 or more")
        self.retries = retries
        self._http = httpx.Client(
            headers=self.headers, timeout=timeout, transport=transport, follow_redirects=False
        )

    def _send(self, method: str, channel: str, **kwargs: Any) -> httpx.Response:
        url = self._channel_url(channel)
        try:
            return self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise _transport_error(self.url, exc) from None

    def publish(
        self,
        channel: str,
        data: str | bytes | Any = "",
        *,
        size: int | None = None,
        life: int | None = None,
        one2one: bool | None = None,
        key: str | None = None,
        event: str | None = None,
        content_type: str | None = None,
        idempotency_key: str | None = None,
        presence: bool | None = None,
    ) -> PublishResult:
        """Push ``data`` (text, bytes, or anything else as JSON) into ``channel``.

        ``event`` names the message's event; ``content_type`` is sent as the
        Content-Type, which martd keeps as the message's ``type``. Retried as
        the client's ``retries`` say, under one ``idempotency_key`` (made here
        unless given).
        """
        content, kind = _payload(data, content_type)
        params = _push_params(size, life, one2one, key, event, presence)
        headers = self._push_headers(kind, idempotency_key)
        attempt = 0
        while True:
            try:
                response = self._send(
                    "POST", channel, content=content, params=params, headers=headers
                )
            except TransportError:
                if attempt >= self.retries:
                    raise
                time.sleep(_retry_wait(attempt, None))
            else:
                if attempt >= self.retries or not _retryable(response):
                    return _publish_result(response)
                time.sleep(_retry_wait(attempt, response))
            attempt += 1

    def info(self, channel: str) -> ChannelInfo:
        """The channel's etag, counts and attributes; ``NotFound`` if it does not exist."""
        return _channel_info(self._send("GET", channel))

    def delete(self, channel: str) -> None:
        """Drop the channel (its subscribers are told); ``NotFound`` if it does not exist."""
        _json(self._send("DELETE", channel))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous client: ``async with AsyncClient(url) as martd: await martd.publish(...)``."""

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, secret, token)
        if retries < 0:
            raise ValueError("retries: must be 0 or more")
        self.retries = retries
        self._http = httpx.AsyncClient(
            headers=self.headers, timeout=timeout, transport=transport, follow_redirects=False
        )

    async def _send(self, method: str, channel: str, **kwargs: Any) -> httpx.Response:
        url = self._channel_url(channel)
        try:
            return await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise _transport_error(self.url, exc) from None

    async def publish(
        self,
        channel: str,
        data: str | bytes | Any = "",
        *,
        size: int | None = None,
        life: int | None = None,
        one2one: bool | None = None,
        key: str | None = None,
        event: str | None = None,
        content_type: str | None = None,
        idempotency_key: str | None = None,
        presence: bool | None = None,
    ) -> PublishResult:
        """Push ``data`` (text, bytes, or anything else as JSON) into ``channel``.

        Arguments and retries as for ``Client.publish``.
        """
        content, kind = _payload(data, content_type)
        params = _push_params(size, life, one2one, key, event, presence)
        headers = self._push_headers(kind, idempotency_key)
        attempt = 0
        while True:
            try:
                response = await self._send(
                    "POST", channel, content=content, params=params, headers=headers
                )
            except TransportError:
                if attempt >= self.retries:
                    raise
                await asyncio.sleep(_retry_wait(attempt, None))
            else:
                if attempt >= self.retries or not _retryable(response):
                    return _publish_result(response)
                await asyncio.sleep(_retry_wait(attempt, response))
            attempt += 1

    async def info(self, channel: str) -> ChannelInfo:
        """The channel's etag, counts and attributes; ``NotFound`` if it does not exist."""
        return _channel_info(await self._send("GET", channel))

    async def delete(self, channel: str) -> None:
        """Drop the channel (its subscribers are told); ``NotFound`` if it does not exist."""
        _json(await self._send("DELETE", channel))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
