"""/metrics: Prometheus text format, per-app registries, multiprocess mode; JSON logs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from martd_asgi import create_app

from .helpers import ServerThread, redis_url, sse
from .opshelpers import metric, uvicorn_process

pytestmark = pytest.mark.anyio


async def test_metrics_count_pushes_deliveries_bytes_and_latency(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with sse(client, "/sub/secret-room") as one, sse(client, "/sub/secret-room") as two:
            for text in ("a", "bb", "ccc"):
                await client.post("/pub/secret-room", content=text)
                await one.next()
                await two.next()
            answer = await client.get("/metrics")
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain")
            body = answer.text
            assert metric(body, "martd_connections", transport="sse") == 2
            assert metric(body, "martd_connections", transport="longpoll") == 0
        assert metric(body, "martd_messages_pushed_total") == 3
        assert metric(body, "martd_messages_delivered_total") == 6
        assert metric(body, "martd_pushed_bytes_total") == 6
        assert metric(body, "martd_delivered_bytes_total") == 12
        assert metric(body, "martd_delivery_latency_seconds_count") == 3
        assert metric(body, "martd_delivery_latency_seconds_bucket", le="1.0") == 3
        assert metric(body, "martd_channels") == 1
        assert metric(body, "martd_subscribed_channels") == 1
        assert metric(body, "martd_subscriptions_opened_total") == 2
        assert "secret-room" not in body


async def test_metrics_count_bytes_delivered_to_long_polls(
    make_server: Callable[..., ServerThread],
) -> None:
    import asyncio

    server = make_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        polls = [asyncio.create_task(client.get("/sub/lp-bytes?timeout=5")) for _ in range(3)]
        deadline = time.monotonic() + 5
        while server.martd.hub.subscribers() < 3:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await client.post("/pub/lp-bytes", content="0123456789")
        for poll in polls:
            assert (await poll).json()["channels"]["lp-bytes"]["messages"][0][
                "data"
            ] == "0123456789"
        body = (await client.get("/metrics")).text
    assert metric(body, "martd_messages_delivered_total") == 3
    assert metric(body, "martd_delivered_bytes_total") == 30


async def test_metrics_rejections_are_labelled_by_status_and_field() -> None:
    app = create_app()
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as outsider:
        assert (await outsider.get("/metrics")).status_code == 403
        assert (await outsider.post("/pub/bad%20name", content="x")).status_code == 400
        assert (await outsider.post("/pub/x?size=zero", content="x")).status_code == 400
        assert (await outsider.post("/pub/x?key=hunter2", content="x")).status_code == 403
    inside = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=inside, base_url="http://m") as client:
        body = (await client.get("/metrics")).text
    assert metric(body, "martd_rejected_requests_total", status="403", reason="server") == 1
    assert metric(body, "martd_rejected_requests_total", status="400", reason="channel") == 1
    assert metric(body, "martd_rejected_requests_total", status="400", reason="size") == 1
    assert metric(body, "martd_rejected_requests_total", status="403", reason="channel") == 1
    assert "hunter2" not in body and "bad" not in body


async def test_metrics_each_app_has_its_own_registry() -> None:
    first, second = create_app(), create_app()
    for app, pushes in ((first, 2), (second, 5)):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://m"
        ) as client:
            for _ in range(pushes):
                await client.post("/pub/c", content="x")
    for app, pushes in ((first, 2), (second, 5)):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://m"
        ) as client:
            body = (await client.get("/metrics")).text
            assert metric(body, "martd_messages_pushed_total") == pushes


def test_metrics_multiprocess_mode_sums_workers(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with uvicorn_process(env, "--workers", "2") as server:
        for _ in range(20):  # a new connection each time, so both workers get some
            with httpx.Client(base_url=server.url) as client:
                assert client.post("/pub/c", content="x").status_code in (200, 201)
        deadline = time.monotonic() + 10
        while True:
            body = httpx.get(f"{server.url}/metrics").text
            if metric(body, "martd_messages_pushed_total") == 20:
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.2)
        assert len(list(tmp_path.glob("counter_*.db"))) >= 1
        assert server.proc is not None
        workers = children(server.proc.pid)
        assert len(workers) >= 2  # the workers (and a resource tracker, if any)
    # every process the test started ends, the supervisor's workers too (SIGKILL
    # takes effect a moment later)
    deadline = time.monotonic() + 5
    while [pid for pid in workers if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in workers if alive(pid)] == []


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_metrics_channels_on_redis_counted_once_under_several_workers(tmp_path: Path) -> None:
    from prometheus_client.mmap_dict import MmapedDict

    from martd_asgi.backends.redis import RedisBackend
    from martd_asgi.channels import PushAttributes

    async def push(url: str) -> None:
        backend = RedisBackend(url)
        try:
            for name in ("a", "b", "c"):
                await backend.publish(name, "x", PushAttributes(life=60), server=True)
        finally:
            await backend.aclose()

    def counted() -> list[float]:
        """martd_channels as each worker last wrote it."""
        found = []
        for path in tmp_path.glob("gauge_*.db"):
            for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
                if json.loads(key)[0] == "martd_channels":
                    found.append(value)
        return found

    with redis_url() as url:
        asyncio.run(push(url))
        env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "MARTD_BACKEND": url}
        with uvicorn_process(env, "--workers", "2") as server:
            deadline = time.monotonic() + 10
            while counted() != [3, 3]:  # both workers see the three channels
                assert time.monotonic() < deadline, counted()
                time.sleep(0.1)
            body = httpx.get(f"{server.url}/metrics").text
            assert metric(body, "martd_channels") == 3


def test_logs_json_format_redacts_secrets() -> None:
    env = {"MARTD_LOG_FORMAT": "json"}
    with uvicorn_process(env, "--log-level", "info", "--access-log") as server:
        with httpx.Client(base_url=server.url) as client:
            client.post("/pub/room?key=hunter2&size=5", content="x")
            client.get("/sub/room?token=tok3n&timeout=1")

        def logged() -> list[dict[str, object]]:
            lines = [line for line in server.output().splitlines() if line.startswith("{")]
            return [json.loads(line) for line in lines]

        deadline = time.monotonic() + 5
        while sum(1 for r in logged() if r.get("logger") == "uvicorn.access") < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        records = logged()
    (push,) = [r for r in records if r["logger"] == "uvicorn.access" and r["method"] == "POST"]
    assert push["path"] == "/pub/room?key=***&size=5"
    assert push["status"] == 201
    assert "hunter2" not in server.output() and "tok3n" not in server.output()
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
