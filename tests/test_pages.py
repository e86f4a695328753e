"""The pages martd shows people: the live dashboard and the demo page.

The dashboard's stream is read as a program would, and both pages are driven in
Debian's Chromium (Playwright) against a real uvicorn, martd mounted at /martd.
The dashboard test keeps a screenshot, ``dashboard.png`` in its pytest temporary
directory (the path is printed), to look at what a person would see.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from martd_asgi import create_app

from .helpers import ServerThread, mounted_app, require, sse

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--no-first-run"]
SNAPSHOT = {
    "time",
    "uptime",
    "version",
    "backend",
    "connections",
    "transports",
    "channels",
    "subscribed_channels",
    "pushes_per_second",
    "deliveries_per_second",
    "latency_ms",
    "published",
    "delivered",
    "slow_cuts",
    "memory_bytes",
    "retained_bytes",
}


def until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout}s (last: {value!r})")
        time.sleep(0.03)


@pytest.fixture
def site() -> Iterator[ServerThread]:
    """A site with martd mounted at /martd; martd is told to shut down before the
    server stops, as on SIGTERM, so that open streams end at once."""
    martd = create_app(backend="memory")
    server = ServerThread(mounted_app(martd), timeout_graceful_shutdown=5).start()
    server.url += "/martd"
    server.martd = martd  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.server_loop().call_soon_threadsafe(martd.begin_shutdown)
        server.stop()


# ------------------------------------------------------------ the stream


@pytest.mark.anyio
async def test_dashboard_stream_counts_pushes_and_deliveries(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with sse(client, "/dashboard/events?interval=0.2") as dash:
            first = json.loads((await dash.next())["data"])
            assert set(first) == SNAPSHOT
            assert first["connections"] == 0 and first["published"] == 0
            assert first["latency_ms"] is None and first["memory_bytes"] > 1 << 20
            async with sse(client, "/sub/dash.room") as reader:
                for n in range(5):
                    await client.post("/pub/dash.room", content=f"m{n}")
                for _ in range(5):
                    await reader.next()

                seen = [first]

                async def moved() -> dict[str, Any]:
                    while True:
                        seen.append(json.loads((await dash.next())["data"]))
                        if seen[-1]["published"] == 5 and seen[-1]["delivered"] == 5:
                            return seen[-1]

                snap = await asyncio.wait_for(moved(), 10)
            assert snap["connections"] == 1 and snap["transports"] == {"sse": 1}
            assert snap["subscribed_channels"] == 1
            if snap["backend"] == "memory":  # Redis counts all its channels every few seconds
                assert snap["channels"] == 1
            # The intervals that saw the pushes show them as rates, and their latency.
            assert sum(s["pushes_per_second"] for s in seen) > 0
            assert sum(s["deliveries_per_second"] for s in seen) > 0
            assert any(s["latency_ms"] is not None for s in seen)


@pytest.mark.anyio
async def test_dashboard_needs_server_rights_and_can_be_turned_off() -> None:
    async def get(app: Any, path: str, **headers: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://martd") as client:
            return await client.get(path, headers=headers)

    # The test client is 127.0.0.1, which this allow-list does not make a server.
    guarded = create_app(allow="10.255.255.1", secret="dash-secret")
    for path in ("/dashboard", "/dashboard/events"):
        refused = await get(guarded, path)
        assert refused.status_code == 403 and refused.json()["error"].startswith("server")
    page = await get(guarded, "/dashboard", authorization="Bearer dash-secret")
    assert page.status_code == 200 and "dashboard/events" in page.text

    off = create_app(dashboard=False)
    for path in ("/dashboard", "/dashboard/events"):
        assert (await get(off, path)).status_code == 404
    assert (await get(off, "/stats")).status_code == 200

    bad = await get(create_app(), "/dashboard/events?interval=0")
    assert bad.status_code == 400 and bad.json()["error"].startswith("interval")


def test_dashboard_stream_ends_when_martd_shuts_down(site: ServerThread) -> None:
    with httpx.stream("GET", f"{site.url}/dashboard/events", timeout=10) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        until(lambda: next(lines).startswith("data:"), what="a first snapshot")
        site.server_loop().call_soon_threadsafe(site.martd.begin_shutdown)  # type: ignore[attr-defined]
        ended = time.monotonic()
        for _ in lines:
            pass
        assert time.monotonic() - ended < 3


# --------------------------------------------------------------- Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require("browser", os.path.exists(CHROMIUM), f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


def value(page: Any, metric: str) -> str:
    return str(page.text_content(f"[data-metric={metric}] .value"))


@pytest.mark.browser
def test_dashboard_page_numbers_move_when_a_test_pushes(
    page: Any, site: ServerThread, tmp_path: Path
) -> None:
    page.goto(f"{site.url}/dashboard?interval=0.25")
    page.wait_for_selector("#status.live")
    until(lambda: value(page, "connections") == "0", what="no connections shown")
    assert value(page, "pushes") == "0"

    # A subscriber of the page's own, so that pushes are delivered.
    page.evaluate("window.reader = new EventSource('sub/dash.room?transport=sse')")
    until(lambda: value(page, "connections") == "1", what="the subscriber counted")
    assert "sse 1" in str(page.text_content("[data-metric=connections] .detail"))

    stop = threading.Event()
    pushed = [0]

    def pusher() -> None:
        with httpx.Client(base_url=site.url, timeout=5) as client:
            while not stop.is_set():
                client.post("/pub/dash.room", content=f"tick {pushed[0]}")
                pushed[0] += 1
                stop.wait(0.01)

    thread = threading.Thread(target=pusher, daemon=True)
    thread.start()
    try:
        until(lambda: float(value(page, "pushes")) > 0, what="pushes/s above 0")
        until(lambda: float(value(page, "deliveries")) > 0, what="deliveries/s above 0")
        until(lambda: value(page, "latency") != "–", what="a latency shown")
        # Let the charts draw a few more points, then keep a picture of it.
        time.sleep(1.5)
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot: {shot}")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert pushed[0] > 0
    until(
        lambda: str(page.text_content("[data-metric=pushes] .detail")) == f"{pushed[0]} since start",
        what="every push counted",
    )
    assert float(value(page, "memory")) > 1
    assert shot.stat().st_size > 10_000


@pytest.mark.browser
def test_demo_page_asks_for_no_icon_and_says_what_to_do_until_a_message_comes(
    page: Any, site: ServerThread
) -> None:
    failed: list[str] = []
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.goto(f"{site.url}/demo?channel=demo")
    page.wait_for_selector("#status.open")
    hint = page.locator("#log .empty")
    assert hint.is_visible() and "curl" in str(hint.text_content())

    httpx.post(f"{site.url}/pub/demo", content="first").raise_for_status()
    page.wait_for_selector("#messages li.message")
    assert not hint.is_visible()
    assert not failed, failed
    # A page without an icon of its own makes browsers fetch /favicon.ico from the
    # origin, outside martd (404); headless Chromium does not, so look at the page.
    icon = page.evaluate("document.querySelector('link[rel~=icon]')?.href")
    assert icon == "data:,"
    assert not [url for url in asked if "favicon" in url]
