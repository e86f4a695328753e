"""What every endpoint shares: reading a request, answering JSON, errors."""

from __future__ import annotations

import itertools
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from ..channels import check_etag, parse_channels
from ..errors import BadRequest, MartdError, PayloadTooLarge
from ..protocols import joined_writes
from ..types import Receive, Scope, Send

_anonymous = itertools.count(1)
_process = secrets.token_hex(6)  # apart from other processes sharing a Redis


def anonymous_cid() -> str:
    """A client id for a request that gave none; ``#`` keeps it apart from given ones."""
    return f"#{_process}.{next(_anonymous)}"


CID_RE = re.compile(r"[A-Za-z0-9._~\-]{1,64}\Z")
CALLBACK_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$.]{0,63}\Z")
NO_CACHE = [(b"cache-control", b"no-cache, no-store"), (b"x-accel-buffering", b"no")]


class Request:
    """The parts of an ASGI scope that martd reads; parsed once, on demand."""

    __slots__ = ("_headers", "_query", "path", "scope")

    def __init__(self, scope: Scope, path: str) -> None:
        self.scope = scope
        self.path = path
        self._query: dict[str, str] | None = None
        self._headers: dict[str, str] | None = None

    def forget(self) -> None:
        """Drop the parsed headers and query: a subscription that stays open for
        hours holds its request, and needs neither once it has begun."""
        self._query = self._headers = None

    @property
    def method(self) -> str:
        return str(self.scope.get("method", "GET"))

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            raw = self.scope.get("query_string", b"").decode("latin-1")
            self._query = dict(parse_qsl(raw, keep_blank_values=True))
        return self._query

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            headers: dict[str, str] = {}
            for name, value in self.scope.get("headers", ()):
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            self._headers = headers
        return self._headers


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_bytes(body: Any) -> bytes:
    return _encode(body).encode()


def response_events(
    status: int,
    body: bytes,
    content_type: bytes,
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
) -> list[dict[str, Any]]:
    return [
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *NO_CACHE,
                *headers,
            ],
        },
        {"type": "http.response.body", "body": body, "more_body": False},
    ]


async def send_json(
    send: Send,
    status: int,
    body: Any,
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
) -> None:
    with joined_writes(send):  # the head and the body: one write
        for event in response_events(status, json_bytes(body), b"application/json", headers):
            await send(event)


async def send_error(send: Send, error: MartdError) -> None:
    await send_json(send, error.status or 500, error.as_json(), error.headers())


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"payload: larger than {limit} bytes", limit=limit)
    chunks = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("payload: the client went away before sending it all")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"payload: larger than {limit} bytes", limit=limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def decode_payload(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("payload: not valid UTF-8") from None


# ------------------------------------------------------------- subscriptions

TRANSPORTS = ("sse", "longpoll", "jsonp", "websocket")


@dataclass
class SubRequest:
    """A subscribe request, validated: channels, where to start, how to deliver."""

    channels: list[str]
    etags: list[str | None]
    transport: str
    cid: str
    cid_given: bool
    callback: str | None = None
    timeout: float = 30.0
    json: bool = False  # ?format=json: SSE events carry JSON message objects
    # Who subscribes: the ``sub`` claim of the token, or the ``user`` the site's
    # auth hook answered, that admitted a private channel; else None.
    user: str | int | None = None


def _etag_list(raw: str, count: int, source: str) -> list[str | None]:
    parts = [part.strip() for part in raw.split(",")]
    if len(parts) != count:
        raise BadRequest(
            f"{source}: {len(parts)} etags for {count} channel{'s' if count != 1 else ''};"
            " give one per channel, in order (an empty place for none)"
        )
    out: list[str | None] = []
    for part in parts:
        if part == "":
            out.append(None)
        else:
            try:
                out.append(check_etag(part))
            except BadRequest:
                raise BadRequest(f"{source}: malformed etag {part[:70]!r}") from None
    return out


def parse_subscription(
    request: Request, spec: str, *, max_channels: int, poll_timeout: float
) -> SubRequest:
    channels = parse_channels(spec, max_channels)
    query = request.query
    headers = request.headers

    callback = query.get("callback")
    if callback is not None and not CALLBACK_RE.match(callback):
        raise BadRequest("callback: must match [A-Za-z_$][A-Za-z0-9_$.]{0,63}")
    if request.scope["type"] == "websocket":
        transport = "websocket"
    else:
        wanted = query.get("transport")
        if wanted is not None:
            aliases = {"eventsource": "sse", "poll": "longpoll", "long-poll": "longpoll"}
            wanted = aliases.get(wanted, wanted)
            if wanted not in TRANSPORTS or wanted == "websocket":
                raise BadRequest("transport: must be sse, longpoll or jsonp (websocket: upgrade)")
            if wanted == "jsonp" and callback is None:
                raise BadRequest("callback: required for the jsonp transport")
            transport = wanted
        elif callback is not None:
            transport = "jsonp"
        elif "text/event-stream" in headers.get("accept", ""):
            transport = "sse"
        else:
            transport = "longpoll"
    if transport == "jsonp" and callback is None:
        raise BadRequest("callback: required for the jsonp transport")

    fmt = query.get("format")
    if fmt is not None and fmt != "json":
        raise BadRequest("format: must be json (or left out)")

    etags: list[str | None] = [None] * len(channels)
    if headers.get("last-event-id", "").strip():
        etags = _etag_list(headers["last-event-id"], len(channels), "Last-Event-ID")
    elif "etag" in query or "last_event_id" in query:
        raw = query["etag"] if "etag" in query else query["last_event_id"]
        etags = _etag_list(raw, len(channels), "etag")
    elif "if-none-match" in headers and len(channels) == 1:
        raw = headers["if-none-match"].strip()
        raw = raw.removeprefix("W/")
        raw = raw.strip().strip('"')
        if raw and raw != "*":
            etags = _etag_list(raw, 1, "If-None-Match")

    cid = query.get("cid")
    if cid is not None and not CID_RE.match(cid):
        raise BadRequest("cid: 1 to 64 characters of A-Z a-z 0-9 . _ ~ -")

    timeout = poll_timeout
    if "timeout" in query:
        raw = query["timeout"]
        try:
            value = float(raw)
        except ValueError:
            raise BadRequest(f"timeout: a number of seconds from 1 to {poll_timeout:g}") from None
        if not value >= 1 or value != value:
            raise BadRequest(f"timeout: a number of seconds from 1 to {poll_timeout:g}")
        timeout = min(value, poll_timeout)

    return SubRequest(
        channels=channels,
        etags=etags,
        transport=transport,
        cid=cid or anonymous_cid(),
        cid_given=cid is not None,
        callback=callback,
        timeout=timeout,
        json=fmt == "json",
    )
