"""Hostile input: property-based requests, a schemathesis run, truncated and slow requests.

The server never answers 5xx, never crashes, and never changes a channel that
a request did not name.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from martd_asgi import create_app

from .opshelpers import uvicorn_process

OPENAPI = Path(__file__).parents[1] / "docs" / "openapi.yaml"
SENTINEL = "zz-sentinel-7f3a9c"
FUZZ_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

names = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.:@~\-]{1,12}", fullmatch=True),
    st.text(min_size=0, max_size=140),
    st.sampled_from(["martd", "a,b", "a,a", "x" * 129, "%00", "..", "a/b"]),
)
etags = st.one_of(
    st.from_regex(r"[0-9]{1,14}-[0-9]{1,4}", fullmatch=True),
    st.sampled_from(["0", "", ",", 'W/"1-2"', "*", "-1", "1-", "x" * 65]),
    st.text(max_size=20),
)
query_names = st.sampled_from(
    ["size", "life", "one2one", "key", "etag", "last_event_id", "cid", "timeout",
     "transport", "callback", "token", "x"]
)  # fmt: skip
query_values = st.one_of(
    st.sampled_from(["0", "1", "-1", "10000", "10001", "true", "nan", "inf", "1e9", "", "sse",
                     "longpoll", "jsonp", "cb", "a.b", "1x"]),
    st.text(max_size=30),
)  # fmt: skip
header_names = st.sampled_from(
    ["last-event-id", "if-none-match", "accept", "authorization", "x-forwarded-for",
     "forwarded", "content-type", "cookie", "origin"]
)  # fmt: skip
header_values = st.one_of(
    st.sampled_from(["text/event-stream", "*/*", "Bearer x", "Bearer ", "for=1.2.3.4", "0",
                     "martd_auth=abc"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)  # fmt: skip


@st.composite
def hostile_requests(draw: st.DrawFn) -> dict[str, Any]:
    method = draw(
        st.sampled_from(["GET"] * 4 + ["POST"] * 4 + ["DELETE", "PUT", "HEAD", "OPTIONS"])
    )
    prefix = draw(st.sampled_from(["/pub/"] * 4 + ["/sub/"] * 4 + ["/", "/stats", "/metrics"]))
    path = prefix + (draw(names) if prefix in ("/pub/", "/sub/") else "")
    query = draw(st.lists(st.tuples(query_names, query_values), max_size=4))
    headers = draw(st.dictionaries(header_names, header_values, max_size=3))
    body = draw(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
    server = draw(st.booleans())  # from an allowed address, or from anywhere
    return {
        "method": method, "path": path, "query": query, "headers": headers, "body": body,
        "server": server,
    }  # fmt: skip


async def sentinel_state(client: httpx.AsyncClient) -> tuple[Any, Any]:
    info = (await client.get(f"/pub/{SENTINEL}")).json()
    history = (await client.get(f"/sub/{SENTINEL}?etag=0&timeout=1")).json()
    return info, history


@pytest.mark.anyio
async def test_hostile_random_requests_never_5xx_nor_touch_other_channels() -> None:
    app = create_app(poll_timeout=1)
    transport = httpx.ASGITransport(app=app)
    far = httpx.ASGITransport(app=app, client=("198.51.100.4", 4000))
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://martd") as client,
        httpx.AsyncClient(transport=far, base_url="http://martd") as outsider,
    ):
        await client.post(f"/pub/{SENTINEL}?size=5&key=k", content="keep me")
        before = await sentinel_state(client)
        pending: list[dict[str, Any]] = []

        @settings(FUZZ_SETTINGS, max_examples=400)
        @given(hostile_requests())
        def collect(req: dict[str, Any]) -> None:
            pending.append(req)

        async def send(req: dict[str, Any]) -> int | None:
            with anyio.move_on_after(0.05):
                try:
                    answer = await (client if req["server"] else outsider).request(
                        req["method"], req["path"], params=req["query"],
                        headers=req["headers"], content=req["body"],
                    )  # fmt: skip
                except httpx.InvalidURL:
                    return None
                assert answer.status_code < 500, (req, answer.text)
                json_error = answer.headers.get("content-type") == "application/json"
                if answer.status_code >= 400 and json_error and req["method"] != "HEAD":
                    assert "error" in answer.json()
                return answer.status_code
            return None

        collect()
        statuses: dict[int | None, int] = {}
        for req in pending:
            status = await send(req)
            statuses[status] = statuses.get(status, 0) + 1
        print(f"hypothesis: {len(pending)} requests, statuses {statuses}")
        assert any(s is not None and s < 300 for s in statuses)
        assert any(s is not None and 400 <= s < 500 for s in statuses)
        assert await sentinel_state(client) == before
        assert app.hub.by_channel.keys() <= {SENTINEL}


def test_hostile_schemathesis_run_against_a_real_server() -> None:
    schema = schemathesis.openapi.from_path(OPENAPI)
    operations = [result.ok() for result in schema.get_all_operations()]
    strategy = st.one_of([op.as_strategy() for op in operations])
    with uvicorn_process({"MARTD_POLL_TIMEOUT": "1"}) as server:
        with requests.Session() as session:
            session.post(f"{server.url}/pub/{SENTINEL}?size=5&key=k", data="keep me")
            before = session.get(f"{server.url}/pub/{SENTINEL}").json()
            statuses: dict[int, int] = {}

            @FUZZ_SETTINGS
            @given(strategy)
            def run(case: Any) -> None:
                if case.path == "/sub/{channels}":
                    # a stream never ends: fuzz long-poll and JSONP, and time-box the wait
                    query = case.query or {}
                    if query.get("transport") in ("sse", "eventsource"):
                        query["transport"] = "longpoll"
                    case.query = query
                    if case.headers:
                        case.headers.pop("Accept", None)
                path = case.formatted_path
                if SENTINEL in path.split("/")[-1].split(","):
                    return
                try:
                    response = case.call(base_url=server.url, session=session, timeout=3)
                except requests.ReadTimeout:
                    pytest.fail(f"no answer in 3 s: {case.method} {path}")
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                case.validate_response(response, checks=[not_a_server_error])

            started = time.monotonic()
            run()
            print(
                f"schemathesis: {sum(statuses.values())} requests in "
                f"{time.monotonic() - started:.1f}s, statuses {sorted(statuses.items())}"
            )
            assert session.get(f"{server.url}/pub/{SENTINEL}").json() == before
        assert server.proc is not None and server.proc.poll() is None
    assert "Traceback" not in server.final
    assert "Exception in ASGI" not in server.final


def raw(port: int, data: bytes, *, pause: float = 0.0, close: bool = True) -> bytes:
    """Send ``data`` (byte by byte with ``pause`` if given) and read what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        if pause:
            for byte in data:
                sock.sendall(bytes([byte]))
                time.sleep(pause)
        else:
            sock.sendall(data)
        if close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_hostile_truncated_slow_and_malformed_requests() -> None:
    with uvicorn_process({"MARTD_POLL_TIMEOUT": "1"}) as server:
        port = server.port
        host = f"Host: 127.0.0.1:{port}\r\n"
        # a body shorter than its Content-Length, then the client goes away
        raw(port, f"POST /pub/t HTTP/1.1\r\n{host}Content-Length: 100\r\n\r\nshort".encode())
        # a request cut in the middle of its headers
        raw(port, f"GET /sub/t HTTP/1.1\r\n{host}Accept: text/ev".encode())
        # a chunked body that never finishes
        raw(
            port,
            f"POST /pub/t HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n5\r\nab".encode(),
        )
        # garbage, an absurd method, a header flood
        assert raw(port, b"\x00\xff\r\n\r\n").startswith(b"HTTP/1.1 400")
        raw(port, f"BREW /pub/t HTTP/1.1\r\n{host}\r\n".encode())
        raw(port, f"GET /sub/t HTTP/1.1\r\n{host}".encode() + b"X-A: b\r\n" * 2000 + b"\r\n")
        # a slow publisher: headers and body trickle in, and still work
        slow = (
            f"POST /pub/slow HTTP/1.1\r\n{host}Content-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
        assert raw(port, slow.encode(), pause=0.002).startswith(b"HTTP/1.1 201")
        # a long-poll whose client leaves at once, and an SSE client that leaves mid-stream
        raw(port, f"GET /sub/t?timeout=1 HTTP/1.1\r\n{host}\r\n".encode())
        raw(port, f"GET /sub/t HTTP/1.1\r\n{host}Accept: text/event-stream\r\n\r\n".encode())
        healthy = httpx.get(f"{server.url}/healthz")
        assert healthy.status_code == 200
        stats = httpx.get(f"{server.url}/stats").json()
        assert stats["published"] == 1
        deadline = time.monotonic() + 5
        while httpx.get(f"{server.url}/stats").json()["subscribers"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert "Traceback" not in server.final
    assert "Exception in ASGI" not in server.final
