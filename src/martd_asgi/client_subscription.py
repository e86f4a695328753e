"""A blocking subscriber for scripts and ``martd sub``: SSE or long-poll, resuming on its own.

``Subscription(url, ["a", "b"], etag="0,0")`` is an iterator of ``Delivery``
values. It keeps the last etag of every channel and, when the connection drops
or the server restarts, reconnects with backoff and resumes from there (SSE's
``Last-Event-ID``, long-poll's ``?etag=``), so nothing still retained is lost.
Control events (``missed``, ``deleted``) and reconnects go to ``on_notice``; an
answer that retrying cannot fix (400, 401, 403, 404, 409 ``kicked``) raises the
client's typed error, and so does a first connection that fails.

A delivery carries the message's ``event`` name and ``type`` when its push gave
them. SSE asks for ``?format=json``, whose events carry both; from a server that
sends plain SSE instead, one channel still gets the event name (``event:``).
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

import httpx

from .client import ClientError, Conflict, _transport_error, error_for

Transport = Literal["sse", "longpoll"]


@dataclass(frozen=True)
class Delivery:
    channel: str
    etag: str
    data: str
    event: str | None = None
    type: str | None = None

    def as_json(self) -> dict[str, str]:
        """``{"channel", "etag", "data"}``, with ``event`` and ``type`` when set."""
        body = {"channel": self.channel, "etag": self.etag, "data": self.data}
        if self.event is not None:
            body["event"] = self.event
        if self.type is not None:
            body["type"] = self.type
        return body


def _ignore(message: str) -> None:
    pass


class Subscription:
    def __init__(
        self,
        url: str,
        channels: Sequence[str],
        *,
        etag: str | None = None,
        transport: Transport = "sse",
        token: str | None = None,
        on_notice: Callable[[str], None] = _ignore,
        max_delay: float = 10.0,
        read_timeout: float = 75.0,
    ) -> None:
        if not channels:
            raise ValueError("channels: give at least one")
        self.url = url.rstrip("/")
        self.channels = list(channels)
        self.transport = transport
        self.on_notice = on_notice
        self.max_delay = max_delay
        self.cid = secrets.token_hex(8)
        self.etags: dict[str, str | None] = dict.fromkeys(self.channels)
        if etag is not None:
            # As on the wire: one place per channel, in their order; empty means none.
            given = etag.split(",")
            if len(given) != len(self.channels):
                raise ValueError(
                    f"etag: give one place per channel, comma-separated in the order of the "
                    f"channels (an empty place: none); got {len(given)} for "
                    f"{len(self.channels)} channels"
                )
            self.etags = {ch: (e or None) for ch, e in zip(self.channels, given, strict=True)}
        headers = {"user-agent": "martd-sub"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self.http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(10.0, read=read_timeout), trust_env=False
        )
        self.path = "/sub/" + ",".join(quote(ch, safe=":@~") for ch in self.channels)
        self.connected_once = False
        self.closed = False

    def close(self) -> None:
        """Stop: the iteration ends at its next message, error or reconnect."""
        self.closed = True
        self.http.close()

    def __iter__(self) -> Iterator[Delivery]:
        delay = 0.25
        while not self.closed:
            try:
                reader = self._sse() if self.transport == "sse" else self._longpoll()
                for delivery in reader:
                    delay = 0.25
                    yield delivery
                    if self.closed:
                        return
                delay = 0.25
                time.sleep(0.05)  # the server ended the stream (shutdown, slow consumer): go on
                continue
            except (httpx.HTTPError, ClientError, RuntimeError) as exc:
                if self.closed:
                    return
                if isinstance(exc, RuntimeError):  # httpx: the client was closed
                    raise
                if isinstance(exc, httpx.HTTPError):
                    exc = _transport_error(self.url, exc)
                status = exc.status
                if not self.connected_once or (
                    status is not None and status < 500 and status != 429
                ):
                    raise exc from None
                wait = delay * (0.5 + random.random())
                self.on_notice(f"{exc.message}; reconnecting in {wait:.1f} s")
                time.sleep(wait)
                delay = min(self.max_delay, delay * 2)

    def _params(self) -> dict[str, str]:
        params = {"cid": self.cid}
        if any(self.etags.values()):
            params["etag"] = ",".join(self.etags[ch] or "" for ch in self.channels)
        return params

    def _connected(self) -> None:
        if self.connected_once:
            self.on_notice(f"reconnected to {self.url} ({self.transport})")
        else:
            names = ",".join(self.channels)
            self.on_notice(f"listening on {names} at {self.url} ({self.transport})")
        self.connected_once = True

    def _control(self, body: str) -> None:
        try:
            event = json.loads(body)
            kind, channel = str(event["type"]), str(event["channel"])
        except (ValueError, KeyError, TypeError):
            return
        if kind == "kicked":
            raise Conflict(f"{channel}: another client took this one2one channel", status=409)
        if kind == "deleted":
            self.etags[channel] = "0"
            self.on_notice(f"{channel}: the channel was deleted")
        elif kind == "missed":
            self.on_notice(f"{channel}: missed messages (no longer retained)")

    # ------------------------------------------------------------------ SSE

    def _sse(self) -> Iterator[Delivery]:
        headers = {"accept": "text/event-stream"}
        params = self._params() | {"format": "json"}
        with self.http.stream("GET", self.url + self.path, params=params, headers=headers) as r:
            if r.status_code != 200:
                r.read()
                raise error_for(r)
            if "text/event-stream" not in r.headers.get("content-type", ""):
                raise ClientError(
                    f"{r.url}: not an event stream (is --url where martd is mounted?)"
                )
            self._connected()
            name, ident, data = "", None, []  # type: tuple[str, str | None, list[str]]
            for line in r.iter_lines():
                if line == "":
                    if data or name:
                        delivery = self._event(name or "message", ident, "\n".join(data))
                        if delivery is not None:
                            yield delivery
                    name, ident, data = "", None, []
                    continue
                if line.startswith(":"):
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "data":
                    data.append(value)
                elif field == "event":
                    name = value
                elif field == "id":
                    ident = value

    def _event(self, name: str, ident: str | None, data: str) -> Delivery | None:
        if name == "martd":
            self._control(data)
            return None
        single = len(self.channels) == 1
        channel = self.channels[0] if single else name
        if channel not in self.etags:
            return None
        if ident:
            ids = [ident] if single else ident.split(",")
            for ch, etag in zip(self.channels, ids, strict=False):
                if etag:
                    self.etags[ch] = etag
        etag = self.etags[channel] or ""
        wrapped = _json_event(data, etag)
        if wrapped is not None:
            return Delivery(channel, etag, *wrapped)
        event = name if single and name != "message" else None
        return Delivery(channel, etag, data, event)

    # ------------------------------------------------------------- long-poll

    def _longpoll(self) -> Iterator[Delivery]:
        while True:
            # Below the read timeout, whatever the server's MARTD_POLL_TIMEOUT.
            params = self._params() | {"timeout": "55"}
            r = self.http.get(self.url + self.path, params=params)
            if r.status_code == 410:
                body = r.json()
                self._control(json.dumps({"type": "deleted", "channel": body.get("channel", "")}))
                continue
            if r.status_code != 200:
                raise error_for(r)
            try:
                answer = r.json()["channels"]
            except (ValueError, KeyError, TypeError):
                raise ClientError(
                    f"{r.url}: not a martd answer (is --url where martd is mounted?)"
                ) from None
            self._connected()
            for channel in self.channels:
                found = answer.get(channel)
                if not found:
                    continue
                if found.get("missed"):
                    self.on_notice(f"{channel}: missed messages (no longer retained)")
                for message in found.get("messages", []):
                    self.etags[channel] = str(message["etag"])
                    event, kind = message.get("event"), message.get("type")
                    yield Delivery(
                        channel,
                        str(message["etag"]),
                        str(message["data"]),
                        None if event is None else str(event),
                        None if kind is None else str(kind),
                    )
                if found.get("etag"):
                    self.etags[channel] = str(found["etag"])


def _json_event(data: str, etag: str) -> tuple[str, str | None, str | None] | None:
    """``(data, event, type)`` of a ``?format=json`` event, or None for a plain one.

    A plain payload is never taken for one: the JSON must name this very event's
    etag, which a payload cannot know before it is pushed.
    """
    if not data.startswith("{"):
        return None
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("etag") != etag or not etag:
        return None
    payload, event, kind = body.get("data"), body.get("event"), body.get("type")
    if not isinstance(payload, str) or set(body) - {"etag", "data", "event", "type"}:
        return None
    return (
        payload,
        event if isinstance(event, str) else None,
        kind if isinstance(kind, str) else None,
    )
