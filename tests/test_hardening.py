"""Holes an adversarial review found, each closed: limits, keys, bytes, logs, WebSocket frames."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from martd_asgi import create_app
from martd_asgi.channels import Message
from martd_asgi.hub import Hub
from martd_asgi.logs import redact
from martd_asgi.transports.sse import SSESubscriber

from .helpers import running, wait_for
from .opshelpers import uvicorn_process
from .serving import martd_serve

pytestmark = pytest.mark.anyio

FAR = ("203.0.113.7", 40000)


def client_for(app: Any, peer: tuple[str, int] = FAR) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=peer)
    return httpx.AsyncClient(transport=transport, base_url="http://martd", timeout=10)


# -------------------------------------------- an address that cannot be settled


@pytest.mark.parametrize(
    "trusted, headers",
    [
        # no trusted proxy: a client naming its own address in X-Forwarded-For
        ("", {"x-forwarded-for": FAR[0]}),
        # behind a trusted proxy: Forwarded and X-Forwarded-For disagree
        ("203.0.113.0/24", {"forwarded": "for=1.1.1.1", "x-forwarded-for": "2.2.2.2"}),
    ],
)
async def test_hardening_unsettled_address_is_counted_by_its_peer(
    trusted: str, headers: dict[str, str]
) -> None:
    app = create_app(allow="", trusted_proxies=trusted, max_connections_per_address=2)
    async with client_for(app) as client:
        polls = [
            asyncio.create_task(client.get(f"/sub/p{i}?timeout=1", headers=headers))
            for i in range(2)
        ]
        await wait_for(lambda: len(app.hub.by_channel) == 2)  # both polls are waiting
        third = await client.get("/sub/p3?timeout=1", headers=headers)
        assert third.status_code == 429, third.text
        assert third.json()["error"].startswith("connections:")
        assert "retry-after" in third.headers
        assert [(await poll).status_code < 400 for poll in polls] == [True, True]
    assert app.limits.by_address == {}


async def test_hardening_channels_per_address_are_bounded() -> None:
    app = create_app(allow="", max_channels_per_address=3, max_channels_total=10)
    async with client_for(app) as client, client_for(app, ("198.51.100.9", 1)) as other:
        first = asyncio.create_task(client.get("/sub/a,b?timeout=1"))
        second = asyncio.create_task(client.get("/sub/b,c?timeout=1"))
        await wait_for(lambda: sum(app.limits.by_address.values()) == 2)
        # a, b, c are held; a fourth channel from the same address is refused
        refused = await client.get("/sub/d?timeout=1")
        assert refused.status_code == 429
        assert refused.json()["error"].startswith("channels: at most 3")
        # ... but one it already holds is not, nor another address's
        assert (await client.get("/sub/a?timeout=1")).status_code < 400
        assert (await other.get("/sub/d?timeout=1")).status_code < 400
        await first
        await second
        # released: the address may take new channels again
        assert (await client.get("/sub/d,e,f?timeout=1")).status_code < 400
    assert app.limits.channels_by_address == {}


# -------------------------------------------------------------- wrong keys


async def test_hardening_wrong_keys_are_limited_per_address_and_channel() -> None:
    app = create_app(allow="127.0.0.1")
    async with (
        client_for(app, ("127.0.0.1", 1)) as server,
        client_for(app) as guesser,
        client_for(app, ("198.51.100.9", 1)) as other,
    ):
        for name in ("vault", "open"):
            assert (await server.post(f"/pub/{name}?key=right", content="x")).status_code == 201
        statuses = []
        started = time.monotonic()
        for attempt in range(40):
            answer = await guesser.post(f"/pub/vault?key=guess{attempt}", content="x")
            statuses.append(answer.status_code)
        refills = int((time.monotonic() - started) * 0.5)  # one more try every 2 s
        assert statuses[:10] == [403] * 10
        assert statuses.count(403) <= 10 + refills and statuses[-1] == 429
        refused = await guesser.post("/pub/vault?key=right", content="x")
        assert refused.status_code == 429  # even the right key: guessing stops here
        assert refused.json()["error"].startswith("key:")
        assert int(refused.headers["retry-after"]) >= 1
        # another channel, another address: not held back by this guesser
        assert (await guesser.post("/pub/open?key=right", content="x")).status_code == 200
        assert (await other.post("/pub/vault?key=right", content="x")).status_code == 200


# -------------------------------------------------- bytes, not characters


async def test_hardening_retained_bytes_count_utf8_bytes() -> None:
    app = create_app(max_retained_bytes=20_000)
    wide = "\U0001d11e" * 250  # 1,000 bytes in UTF-8, 250 characters
    async with client_for(app, ("127.0.0.1", 1)) as client:
        for _ in range(40):
            assert (await client.post("/pub/wide?size=100", content=wide)).status_code < 300
        kept = (await client.get("/sub/wide?etag=0&timeout=1")).json()["channels"]["wide"]
        stats = (await client.get("/stats")).json()
    held = sum(len(m["data"].encode()) for m in kept["messages"])
    assert held <= 20_000 and stats["retained_bytes"] <= 20_000
    assert stats["evicted"] > 0


async def test_hardening_subscriber_backlog_counts_utf8_bytes() -> None:
    hub = Hub(max_backlog=1000, max_backlog_bytes=1000)

    async def send(event: Any) -> None:
        pass

    sub = SSESubscriber(send, ["c"], "cid", hub)
    sub.handler = None  # no handler task to wake: the test's own task
    hub.add(sub)
    # 400 characters, 1,200 bytes: over a 1,000-byte backlog while busy
    sub.deliver(Message("c", (1, 1), "\u20ac" * 400, time.time() + 60))
    assert sub.closed and hub.counters["dropped_slow"] == 1


# ------------------------------------------------------------ access logs

SENSITIVE = st.sampled_from(["key", "token", "secret", "%6Bey", "Key"])
TEXT = st.text(alphabet="ab;#=/?%+,:", max_size=6)


@settings(max_examples=300, deadline=None, database=None)
@given(before=TEXT, name=SENSITIVE, head=TEXT, tail=TEXT, after=TEXT)
def test_hardening_redaction_splits_as_the_query_parser(
    before: str, name: str, head: str, tail: str, after: str
) -> None:
    from urllib.parse import parse_qsl, unquote_plus

    query = f"{before}&{name}={head}SECRET{tail}&{after}".lstrip("&")
    read = [v for n, v in parse_qsl(query, keep_blank_values=True) if "SECRET" in v]
    names = {unquote_plus(n).strip().lower() for n, v in parse_qsl(query) if "SECRET" in v}
    shown = redact(f"/pub/ch?{query}")
    if read and names <= {"key", "token", "secret"}:
        assert "SECRET" not in shown, (query, shown)


def test_hardening_access_log_never_shows_a_key_tail() -> None:
    with uvicorn_process({}, "--log-level", "info", "--access-log") as server:
        httpx.post(f"{server.url}/pub/room?key=abc;SECRETTAIL&size=5", content="x")
        deadline = time.monotonic() + 5
        while "/pub/room" not in server.output():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert "/pub/room?key=***&size=5" in server.final
    assert "SECRETTAIL" not in server.final


# ------------------------------------------------------- WebSocket frames


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_errors() -> Iterator[Errors]:
    handler = Errors()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "martd")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
values = st.one_of(
    any_text, st.integers(), st.booleans(), st.none(), st.floats(), st.lists(any_text, max_size=2)
)
pub_frames = st.fixed_dictionaries(
    {"type": st.sampled_from(["pub", "ping", "x"]) | any_text},
    optional={
        "channel": st.sampled_from(["fz", "fz.a"]) | any_text | values,
        "data": any_text | values,
        "key": any_text | values,
        "size": values,
        "one2one": values,
        "id": values,
    },
)
frames = st.one_of(
    pub_frames.map(lambda body: ("text", json.dumps(body))),
    st.binary(max_size=40).map(lambda raw: ("bytes", raw)),
    any_text.map(lambda text: ("text", json.dumps(text))),
    st.sampled_from(["not json", "[]", "1"]).map(lambda text: ("text", text)),
)
# what the review found: lone surrogates in data, key and id, deep nesting
FOUND: list[tuple[str, Any]] = [
    ("text", '{"type":"pub","channel":"fz","data":"\\ud800","id":1}'),
    ("text", '{"type":"pub","channel":"fz","data":"x","key":"\\udfff","id":2}'),
    ("text", '{"type":"x","id":"\\ud800"}'),
    ("bytes", b'{"type":"pub","channel":"fz","data":"\xed\xa0\x80","id":3}'),
    ("text", "[" * 100_000 + "]" * 100_000),
    ("text", '{"a":' * 100_000 + "1" + "}" * 100_000),
]


async def test_hardening_websocket_frames_always_get_an_answer(server_errors: Errors) -> None:
    """Every frame gets an answer frame or a close with a reason, never a crash."""
    app = create_app(allow="127.0.0.1")
    pending: list[tuple[str, Any]] = []

    @settings(
        max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(frames)
    def collect(item: tuple[str, Any]) -> None:
        pending.append(item)

    collect()
    pending += FOUND
    answered = closed = 0
    with running(app) as server:
        url = server.url.replace("http://", "ws://") + "/sub/fz-sink"
        ws = await connect(url)
        try:
            for kind, payload in pending:
                await ws.send(payload if kind == "bytes" else str(payload))
                try:
                    async with asyncio.timeout(5):
                        while True:
                            reply = json.loads(await ws.recv())
                            if reply.get("type") != "ping":
                                break
                    assert reply["type"] in ("ack", "error", "pong"), reply
                    if reply["type"] == "error":
                        assert reply["error"] and reply["status"] < 500, reply
                    answered += 1
                except ConnectionClosed as gone:
                    assert gone.rcvd is not None and gone.rcvd.code == 1008, (payload, gone)
                    assert gone.rcvd.reason, payload
                    closed += 1
                    ws = await connect(url)
        finally:
            await ws.close()
    print(f"websocket fuzz: {answered} answered, {closed} closed with a reason")
    assert answered and closed
    assert not server_errors.records, [r.getMessage() for r in server_errors.records]


# ------------------------------------------------------- WebSocket ping flood


def test_hardening_ping_flood_from_a_client_that_never_reads_is_bounded(tmp_path: Path) -> None:
    """`martd serve` stops reading a client that makes it write more than it reads."""
    with martd_serve(tmp=tmp_path) as served:
        pid = served.process.pid
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
        sock.connect(("127.0.0.1", served.port))
        sock.sendall(
            b"GET /martd/sub/flood HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        ping = b"\x89\xfd\x00\x00\x00\x00" + b"p" * 125  # masked (with zeros), 125 bytes
        burst = ping * 512
        before = rss(pid)
        sock.setblocking(False)
        taken = 0
        left = memoryview(burst)
        blocked_since: float | None = None
        stopped = False
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                try:
                    count = sock.send(left)
                except BlockingIOError:
                    blocked_since = blocked_since or time.monotonic()
                    if time.monotonic() - blocked_since > 1.0:
                        stopped = True  # the server has stopped reading this client
                        break
                    time.sleep(0.005)
                    continue
                blocked_since = None
                taken += count
                left = left[count:] or memoryview(burst)
            growth = rss(pid) - before
        finally:
            sock.close()
    print(f"ping flood: {taken / 2**20:.1f} MiB taken in, server grew {growth / 2**20:.1f} MiB")
    assert stopped, f"still reading after {taken / 2**20:.0f} MiB of pings"
    assert taken < 32 * 2**20 and growth < 16 * 2**20


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_martd_serve_offers_no_websocket_compression(tmp_path: Path) -> None:
    """Compression state was most of an idle WebSocket's memory: `martd serve` declines it."""
    with martd_serve(tmp=tmp_path) as served:
        sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        with sock:
            sock.sendall(
                b"GET /martd/sub/calm HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
            )
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                assert chunk, head
                head += chunk
        assert head.startswith(b"HTTP/1.1 101")
        assert b"sec-websocket-extensions" not in head.lower()
