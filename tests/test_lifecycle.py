"""The app as a whole: lazy import, settings, small routes, in-process publish, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import pytest

from martd_asgi import Settings, create_app

from .helpers import ServerThread, free_socket, sse

pytestmark = pytest.mark.anyio


def test_import_starts_nothing() -> None:
    code = (
        "import sys, threading, martd_asgi;"
        "assert 'martd_asgi.application' not in sys.modules, 'app module imported';"
        "assert threading.active_count() == 1;"
        "app = martd_asgi.app;"
        "assert app is martd_asgi.app and not app.started;"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_settings_from_environment_and_keywords() -> None:
    env = {
        "MARTD_ALLOW": "10.0.0.0/8, ::1",
        "MARTD_POLL_TIMEOUT": "12",
        "MARTD_DEMO": "0",
        "MARTD_PRIVATE": "secret.*,admin",
    }
    settings = Settings.from_env(env, poll_timeout=5)
    assert [str(n) for n in settings.allow] == ["10.0.0.0/8", "::1/128"]
    assert settings.poll_timeout == 5 and settings.demo is False
    assert settings.private == ("secret.*", "admin")
    with pytest.raises(ValueError, match="MARTD_PING"):
        Settings.from_env({"MARTD_PING": "often"})
    with pytest.raises(ValueError, match="MARTD_ALLOW"):
        Settings.from_env({"MARTD_ALLOW": "not-an-address"})
    with pytest.raises(ValueError, match="MARTD_BACKEND"):
        Settings.from_env({"MARTD_BACKEND": "mongodb://x"})
    assert "hidden" not in repr(Settings(secret="hidden"))


async def test_small_routes(client: httpx.AsyncClient) -> None:
    js = await client.get("/client.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("application/javascript")
    assert "martd" in js.text and js.headers["etag"] and "max-age" in js.headers["cache-control"]
    cached = await client.get("/client.js", headers={"if-none-match": js.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    health = await client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    demo = await client.get("/demo")
    assert demo.status_code == 200 and "client.js" in demo.text
    missing = await client.get("/nothing/here")
    assert missing.status_code == 404 and "path" in missing.json()["error"]
    stats = (await client.get("/stats")).json()
    assert {"channels", "subscribers", "published", "delivered"} <= set(stats)


async def test_demo_can_be_turned_off(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(demo=False)
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/demo")).status_code == 404


async def test_in_process_publish(server: ServerThread, client: httpx.AsyncClient) -> None:
    martd = server.martd  # type: ignore[attr-defined]
    async with sse(client, "/sub/inproc") as stream:
        future = asyncio.run_coroutine_threadsafe(
            martd.publish("inproc", "from python", size=3), server.server_loop()
        )
        etag = await asyncio.wrap_future(future)
        assert await stream.next() == {"id": etag, "data": "from python"}
    assert (await client.get("/pub/inproc")).json()["size"] == 3


async def test_in_process_publish_validates() -> None:
    martd = create_app()
    with pytest.raises(Exception, match="channel"):
        await martd.publish("bad name", "x")
    with pytest.raises(Exception, match="size"):
        await martd.publish("ok", "x", size=0)
    await martd.shutdown()


async def test_sigterm_ends_streams_and_exits_quickly() -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "martd_asgi:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={**os.environ, "MARTD_BACKEND": "memory"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    await client.get("/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            poll = asyncio.create_task(client.get("/sub/wait"))
            async with sse(client, "/sub/live") as stream:
                etag = (await client.post("/pub/live", content="accepted")).json()["etag"]
                await asyncio.sleep(0.2)
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                assert await stream.next() == {"id": etag, "data": "accepted"}
                with pytest.raises(EOFError):
                    await stream.next()
                assert stream.retry == 1000  # the shutdown hint
            answer = await asyncio.wait_for(poll, 5)
            assert answer.status_code == 200
            assert answer.json() == {
                "channels": {"wait": {"etag": "0", "messages": [], "missed": False}}
            }
        assert proc.wait(timeout=5) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_etags_not_reused_after_restart() -> None:
    from martd_asgi.channels import etag_key

    seen: list[str] = []
    for _ in range(3):  # each app is a fresh process's memory backend
        martd = create_app(backend="memory")
        seen.append(await martd.publish("restarted", "x"))
        seen.append(await martd.publish("restarted", "y"))
        await martd.shutdown()
    assert len(set(seen)) == len(seen)
    keys = [etag_key(e) for e in seen]
    assert keys == sorted(keys)  # later etags never sort before earlier ones


def test_settings_repr_hides_passwords_and_secrets() -> None:
    text = repr(Settings(backend="redis://:hunter2@127.0.0.1:6379/0", secret="s3cr3t-value"))
    assert "hunter2" not in text and "s3cr3t-value" not in text


def test_collector_tuned_only_when_martd_is_the_servers_app() -> None:
    code = (
        "import asyncio, gc, martd_asgi\n"
        "app = martd_asgi.create_app(gc_tune=True)\n"
        "async def main():\n"
        "    sent = []\n"
        "    msgs = iter([{'type': 'lifespan.startup'}, {'type': 'lifespan.shutdown'}])\n"
        "    async def receive(): return next(msgs)\n"
        "    async def send(m): sent.append(m['type']); print(m['type'], gc.get_threshold()[0], gc.get_freeze_count() > 0)\n"
        "    async with app.lifespan():\n"
        "        print('mounted', gc.get_threshold()[0])\n"
        "    await app({'type': 'lifespan'}, receive, send)\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "MARTD_GC_TUNE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == "mounted 700"  # a host's lifespan leaves its collector alone
    assert lines[1] == "lifespan.startup.complete 20000 True"
