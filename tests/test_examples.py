"""The examples under examples/, started the way examples/README.md says.

Each runs in a process of its own (as a user would run it) on a free
loopback port; a message published from the example's own route or view must
reach an SSE subscriber under /martd/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .helpers import require, sse

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
ASGI_EXAMPLES = {
    "fastapi": ["--app-dir", "examples/fastapi_app", "main:app"],
    "django": ["--app-dir", "examples/django_site", "newsroom.asgi:application"],
}


EXAMPLE_SECRET = "example-secret-" + "x" * 24  # /martd/stats: the Django example allows no address


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def started(
    command: list[str], url: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` until ``url`` answers 200; stop it (SIGTERM, then SIGKILL) after."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | (env or {}),
            start_new_session=True,  # a group of its own: its workers end with it
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited:\n{log.read_text()}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not answer:\n{log.read_text()}")
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of its group is left
        process.wait(timeout=5)


@contextlib.contextmanager
def asgi_example(name: str, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", *ASGI_EXAMPLES[name], "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with started(command, url + "/", log, {"MARTD_SECRET": EXAMPLE_SECRET}) as process:
        yield url, process


async def publish_from_the_app(client: httpx.AsyncClient, name: str, text: str) -> httpx.Response:
    if name == "django":
        page = await client.get("/")  # sets the CSRF cookie, as a browser's visit would
        token = page.cookies["csrftoken"]
        return await client.post("/notify", data={"text": text}, headers={"x-csrftoken": token})
    return await client.post("/notify", content=text)


@pytest.mark.parametrize("name", sorted(ASGI_EXAMPLES))
async def test_examples_asgi_app_delivers_its_own_push_under_martd(
    name: str, tmp_path: Path
) -> None:
    with asgi_example(name, tmp_path / "server.log") as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            page = await client.get("/")
            assert '<script src="/martd/client.js">' in page.text
            script = await client.get("/martd/client.js")
            assert script.status_code == 200 and "martd" in script.text
            async with sse(client, "/martd/sub/news") as stream:
                answer = await publish_from_the_app(client, name, "from the app")
                assert answer.status_code == 200, answer.text
                event = await stream.next()
                assert event == {"id": answer.json()["etag"], "data": '{"text": "from the app"}'}


@pytest.mark.parametrize("name", sorted(ASGI_EXAMPLES))
async def test_examples_asgi_app_routes_websockets_under_martd_to_martd(
    name: str, tmp_path: Path
) -> None:
    from websockets.asyncio.client import connect

    with asgi_example(name, tmp_path / "server.log") as (url, _):
        ws_url = url.replace("http://", "ws://") + "/martd/sub/news"
        async with (
            connect(ws_url, open_timeout=5) as ws,
            httpx.AsyncClient(base_url=url, timeout=10) as client,
        ):
            answer = await publish_from_the_app(client, name, "over a websocket")
            assert answer.status_code == 200, answer.text
            async with asyncio.timeout(5):
                while True:
                    frame = json.loads(await ws.recv())
                    if "type" not in frame:  # keep-alive and control frames
                        break
            assert frame == {
                "channel": "news",
                "etag": answer.json()["etag"],
                "data": '{"text": "over a websocket"}',
            }


@pytest.mark.parametrize("name", sorted(ASGI_EXAMPLES))
async def test_examples_asgi_app_ends_martds_streams_on_shutdown(name: str, tmp_path: Path) -> None:
    """The host runs martd's lifespan: SIGTERM ends open streams instead of hanging."""
    log = tmp_path / "server.log"
    with asgi_example(name, log) as (url, process):
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as client,
            sse(client, "/martd/sub/news") as stream,
        ):
            started_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            with pytest.raises((EOFError, httpx.RemoteProtocolError)):
                while True:
                    await stream.next(timeout=8)
            assert stream.retry is not None
        # uvicorn exits by re-raising the signal once it has shut down cleanly.
        assert process.wait(timeout=8) in (0, -signal.SIGTERM)
        assert time.monotonic() - started_at < 8
    assert "Application shutdown complete" in log.read_text()


async def subscribers(url: str) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        stats = await client.get(
            url + "/martd/stats", headers={"authorization": f"Bearer {EXAMPLE_SECRET}"}
        )
        return int(stats.json()["subscribers"])


@pytest.mark.browser
async def test_examples_asgi_app_page_shows_what_its_form_publishes(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    require("browser", chromium is not None, "install Debian's chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            for name in sorted(ASGI_EXAMPLES):
                with asgi_example(name, tmp_path / f"{name}.log") as (url, _):
                    page = await browser.new_page()
                    await page.goto(url + "/")
                    deadline = time.monotonic() + 5
                    while await subscribers(url) < 1:  # the page's stream is open
                        assert time.monotonic() < deadline, f"{name}: the page did not subscribe"
                        await asyncio.sleep(0.05)
                    await page.fill("input[name=text]", f"typed in the {name} page")
                    await page.click("button")
                    item = await page.wait_for_selector("#news li", timeout=5000)
                    assert item is not None
                    assert await item.inner_text() == f"typed in the {name} page"
                    await page.close()
        finally:
            await browser.close()


def test_examples_django_site_passes_djangos_checks() -> None:
    done = subprocess.run(
        [sys.executable, "examples/django_site/manage.py", "check"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


async def test_examples_flask_app_behind_martd_serve_publishes_over_http(tmp_path: Path) -> None:
    """The README's two processes: Flask, and `martd serve --upstream` in front of it."""
    flask_port, martd_port = free_port(), free_port()
    site = f"http://127.0.0.1:{martd_port}"
    flask = [
        sys.executable, "-m", "flask", "--app", "examples/wsgi_flask/app.py",
        "run", "--host", "127.0.0.1", "--port", str(flask_port),
    ]  # fmt: skip
    martd = [
        str(Path(sys.executable).with_name("martd")), "serve",
        "--host", "127.0.0.1", "--port", str(martd_port),
        "--upstream", f"http://127.0.0.1:{flask_port}",
    ]  # fmt: skip
    flask_env = {"MARTD_URL": site + "/martd"}
    with (
        started(flask, f"http://127.0.0.1:{flask_port}/", tmp_path / "flask.log", flask_env),
        started(martd, site + "/", tmp_path / "martd.log"),
    ):
        async with httpx.AsyncClient(base_url=site, timeout=10) as client:
            page = await client.get("/")  # Flask's page, through martd
            assert '<script src="/martd/client.js">' in page.text
            async with sse(client, "/martd/sub/news") as stream:
                answer = await client.post("/notify", data={"text": "from flask"})
                assert answer.status_code == 200, answer.text
                event = await stream.next()
                assert event == {"id": answer.json()["etag"], "data": '{"text": "from flask"}'}


def manage(*args: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "examples/django_site/manage.py", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
        env=os.environ | env,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


@pytest.mark.browser
async def test_examples_django_session_login_decides_who_reads_a_private_channel(
    tmp_path: Path,
) -> None:
    """The auth hook with Django's own login: martd asks the site with the browser's
    session cookie. Alice reads her channel; nobody else does."""
    chromium = shutil.which("chromium")
    require("browser", chromium is not None, "install Debian's chromium")
    from playwright.async_api import Browser, Page, async_playwright

    password = "correct-horse-battery-staple"
    env = {"NEWSROOM_DB": str(tmp_path / "db.sqlite3"), "MARTD_SECRET": EXAMPLE_SECRET}
    manage("migrate", "-v0", env=env)
    for name in ("alice", "bob"):  # user ids 1 and 2
        manage(
            "createsuperuser", "--noinput", "--username", name, "--email", f"{name}@example.com",
            env=env | {"DJANGO_SUPERUSER_PASSWORD": password},
        )  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env["MARTD_AUTH_URL"] = f"{url}/martd-auth"
    command = [sys.executable, "-m", "uvicorn", *ASGI_EXAMPLES["django"], "--port", str(port)]

    async def status_of(page: Page, path: str) -> int:
        """What martd answers this page's own request (its cookies included)."""
        script = "path => fetch(path).then(answer => answer.status)"
        return int(await page.evaluate(script, path))

    async def logged_in(browser: Browser, name: str) -> Page:
        page = await (await browser.new_context()).new_page()
        await page.goto(url + "/login")
        await page.fill("input[name=username]", name)
        await page.fill("input[name=password]", password)
        await page.click("button")
        await page.wait_for_url(url + "/inbox", timeout=10000)
        return page

    with started(command, url + "/", tmp_path / "django.log", env):
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=chromium, args=["--no-sandbox"]
            )
            try:
                anonymous = await (await browser.new_context()).new_page()
                await anonymous.goto(url + "/login")
                assert await status_of(anonymous, "/martd/sub/user:1?timeout=1") == 401

                alice = await logged_in(browser, "alice")
                deadline = time.monotonic() + 10
                while await subscribers(url) < 1:  # her inbox listens on user:1
                    assert time.monotonic() < deadline, "the inbox did not subscribe"
                    await asyncio.sleep(0.05)
                await alice.fill("input[name=text]", "only for alice")
                await alice.click("button")
                item = await alice.wait_for_selector("#notes li", timeout=5000)
                assert item is not None and await item.inner_text() == "only for alice"
                assert await alice.inner_text("#status") == ""
                assert await status_of(alice, "/martd/sub/user:2?timeout=1") == 403

                bob = await logged_in(browser, "bob")
                assert await status_of(bob, "/martd/sub/user:1?timeout=1") == 403
                assert await status_of(bob, "/martd/sub/user:2?timeout=1&etag=0") == 200
            finally:
                await browser.close()
    log = (tmp_path / "django.log").read_text()
    assert "sessionid" not in log
