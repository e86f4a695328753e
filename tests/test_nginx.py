"""deploy/nginx.conf for real: nginx in front of a uvicorn martd, as a browser sees it.

The browser is 127.0.0.2 (httpx bound to that local address) and nginx is
127.0.0.1; martd allows only 127.0.0.2 and trusts only 127.0.0.1 as a proxy,
so a push through nginx is accepted exactly when martd sees the browser's
address rather than nginx's. Every test runs twice: with uvicorn's own
proxy-header rewriting off (martd reads X-Forwarded-For itself, as it must
under any other server) and on (uvicorn's default, as in the command that
deploy/nginx.conf and docs/deploy.md give).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from martd_asgi import create_app
from martd_asgi.config import Settings

from .helpers import ServerThread, require, running, sse, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.nginx]

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "deploy" / "nginx.conf"
BROWSER = "127.0.0.2"
SITE_PAGE = """<!doctype html>
<title>My site</title>
<script src="/martd/client.js"></script>
<p id="news"></p>
<script>martd.sub("news", function (data) { news.textContent = data; });</script>
"""


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render(template: str, values: dict[str, str]) -> str:
    """What envsubst does with an explicit list of names."""
    text = template
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    left = re.findall(r"\$\{[A-Z_]+\}", code)
    assert not left, f"markers without a value: {left}"
    return text


@dataclass
class Stack:
    http: str  # nginx, plain HTTP
    https: str  # nginx, TLS + HTTP/2
    martd: ServerThread
    ca: ssl.SSLContext
    conf: str

    def browser(self, **kwargs: object) -> httpx.AsyncClient:
        """A client whose requests come from the browser's address."""
        transport = httpx.AsyncHTTPTransport(local_address=BROWSER)
        return httpx.AsyncClient(base_url=self.http, transport=transport, timeout=10, **kwargs)  # type: ignore[arg-type]

    def nginx_host(self) -> httpx.AsyncClient:
        """A client on nginx's own address (127.0.0.1)."""
        return httpx.AsyncClient(base_url=self.http, timeout=10)


def start_nginx(binary: str, conf: Path, prefix: Path, port: int) -> subprocess.Popen[bytes]:
    globals_ = f"daemon off; pid {prefix}/nginx.pid; error_log stderr;"
    command = [binary, "-c", str(conf), "-p", str(prefix), "-g", globals_]
    check = subprocess.run([*command, "-t"], capture_output=True, timeout=10, check=False)
    assert check.returncode == 0, check.stderr.decode()
    errors = open(prefix / "stderr.log", "wb")  # noqa: SIM115 - owned by the process
    # a group of its own: stop_nginx ends the workers even if the master is killed
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True
    )
    errors.close()
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            raise RuntimeError("nginx exited: " + (prefix / "stderr.log").read_text())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if time.monotonic() > deadline:
                stop_nginx(process)
                raise RuntimeError("nginx did not start listening") from None
            time.sleep(0.02)


def stop_nginx(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)  # fast shutdown: open streams are cut
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the master and any worker left
    process.wait(timeout=5)


@contextlib.contextmanager
def nginx_in_front(tmp: Path, app: Any, *, proxy_headers: bool) -> Iterator[Stack]:
    """uvicorn serving ``app``, and nginx with deploy/nginx.conf in front of it."""
    binary = nginx_binary()
    require("nginx", binary is not None, "install nginx-light (or nginx)")
    assert binary is not None

    site = tmp / "site"
    site.mkdir()
    (site / "index.html").write_text(SITE_PAGE)
    (tmp / "logs").mkdir()
    authority = trustme.CA()
    cert = authority.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    ca = ssl.create_default_context()
    authority.configure_trust(ca)

    with running(app, proxy_headers=proxy_headers) as martd:
        http_port, tls_port = free_port(), free_port()
        conf = render(
            CONF.read_text(),
            {
                "NGINX_USER": "root" if os.geteuid() == 0 else "nobody",
                "LOG_DIR": str(tmp / "logs"),
                "SERVER_NAME": "localhost",
                "LISTEN_PORT": f"127.0.0.1:{http_port}",
                "TLS_PORT": f"127.0.0.1:{tls_port}",
                "SITE_ROOT": str(site),
                "UPSTREAM_ADDR": f"127.0.0.1:{martd.port}",
                "SSL_CERTIFICATE": str(tmp / "server.pem"),
                "SSL_CERTIFICATE_KEY": str(tmp / "server.pem"),
            },
        )
        rendered = tmp / "nginx.conf"
        rendered.write_text(conf)
        process = start_nginx(binary, rendered, tmp, http_port)
        try:
            yield Stack(
                http=f"http://127.0.0.1:{http_port}",
                https=f"https://localhost:{tls_port}",
                martd=martd,
                ca=ca,
                conf=conf,
            )
        finally:
            stop_nginx(process)


@pytest.fixture(
    scope="module", params=[False, True], ids=["martd-reads-forwarded", "uvicorn-proxy-headers"]
)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    app = create_app(allow=BROWSER, trusted_proxies="127.0.0.1", backend="memory")
    with nginx_in_front(tmp_path_factory.mktemp("nginx"), app, proxy_headers=request.param) as s:
        yield s


async def test_nginx_serves_the_sites_own_pages(stack: Stack) -> None:
    async with stack.browser() as browser:
        page = await browser.get("/")
        assert page.status_code == 200
        assert '<script src="/martd/client.js">' in page.text
        missing = await browser.get("/nope.html")
        assert missing.status_code == 404
        script = await browser.get("/martd/client.js", headers={"accept-encoding": "gzip"})
        assert script.status_code == 200
        assert "martd" in script.text
        assert script.headers["content-encoding"] == "gzip"


async def test_nginx_sse_delivers_each_message_as_it_is_pushed(stack: Stack) -> None:
    async with (
        stack.browser() as browser,
        sse(browser, "/martd/sub/nginx-sse", {"accept-encoding": "gzip"}) as stream,
    ):
        assert "content-encoding" not in stream.response.headers
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        for text in ("first", "second"):
            started = time.monotonic()
            pushed = await browser.post("/martd/pub/nginx-sse", content=text)
            assert pushed.status_code in (200, 201), pushed.text
            event = await stream.next(timeout=3)
            assert event == {"id": pushed.json()["etag"], "data": text}
            # The stream is still open: the event was not held back until it ended.
            assert not stream.response.is_closed
            assert time.monotonic() - started < 1.0


async def test_nginx_allow_sees_the_browsers_address_not_nginxs(stack: Stack) -> None:
    async with stack.browser() as browser, stack.nginx_host() as local:
        accepted = await browser.post("/martd/pub/nginx-allow", content="from the browser")
        assert accepted.status_code == 201, accepted.text
        refused = await local.post("/martd/pub/nginx-allow", content="from 127.0.0.1")
        assert refused.status_code == 403
        assert "error" in refused.json()
        # A client that claims the allowed address itself is not believed.
        for claim in ({"x-forwarded-for": BROWSER}, {"forwarded": f"for={BROWSER}"}):
            spoofed = await local.post("/martd/pub/nginx-allow", content="spoof", headers=claim)
            assert spoofed.status_code == 403, claim
        info = await browser.get("/martd/pub/nginx-allow")
        assert info.json()["messages"] == 1


async def test_nginx_long_poll_and_jsonp(stack: Stack) -> None:
    async with stack.browser() as browser:
        first = await browser.post("/martd/pub/nginx-lp", content='{"n": 1}')
        etag = first.json()["etag"]
        second = await browser.post("/martd/pub/nginx-lp", content='{"n": 2}')

        poll = await browser.get("/martd/sub/nginx-lp", params={"etag": etag, "timeout": "5"})
        assert poll.status_code == 200
        got = poll.json()["channels"]["nginx-lp"]
        assert [m["data"] for m in got["messages"]] == ['{"n": 2}']
        assert got["etag"] == second.json()["etag"]

        # A poll that waits is answered through nginx as soon as a push comes.
        hub = stack.martd.app.hub
        waiting = asyncio.create_task(
            browser.get("/martd/sub/nginx-lp", params={"etag": got["etag"], "timeout": "10"})
        )
        try:
            await wait_for(lambda: hub.subscribers() > 0)
            started = time.monotonic()
            third = await browser.post("/martd/pub/nginx-lp", content='{"n": 3}')
            answer = await asyncio.wait_for(waiting, timeout=5)
        finally:
            waiting.cancel()
        assert time.monotonic() - started < 1.0
        messages = answer.json()["channels"]["nginx-lp"]["messages"]
        assert messages == [{"etag": third.json()["etag"], "data": '{"n": 3}'}]

        script = await browser.get(
            "/martd/sub/nginx-lp", params={"callback": "cb", "etag": "0", "timeout": "5"}
        )
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("application/javascript")
        assert script.text.startswith("cb(") and script.text.rstrip().endswith(");")
        body = json.loads(script.text.strip()[3:-2])
        assert [m["data"] for m in body["channels"]["nginx-lp"]["messages"]] == [
            '{"n": 1}',
            '{"n": 2}',
            '{"n": 3}',
        ]


async def test_nginx_websocket_subscribes_through_the_upgrade(stack: Stack) -> None:
    from websockets.asyncio.client import connect

    url = stack.http.replace("http://", "ws://") + "/martd/sub/nginx-ws"
    async with connect(url, open_timeout=5) as ws, stack.browser() as browser:
        pushed = await browser.post("/martd/pub/nginx-ws", content="over a websocket")
        assert pushed.status_code == 201
        async with asyncio.timeout(5):
            while True:
                frame = json.loads(await ws.recv())
                if "type" not in frame:  # skip keep-alive and control frames
                    break
        assert frame == {
            "channel": "nginx-ws",
            "etag": pushed.json()["etag"],
            "data": "over a websocket",
        }


async def test_nginx_https_serves_streams_over_http2(stack: Stack) -> None:
    async with (
        httpx.AsyncClient(base_url=stack.https, verify=stack.ca, http2=True, timeout=10) as client,
        stack.browser() as browser,
    ):
        page = await client.get("/")
        assert page.status_code == 200 and page.http_version == "HTTP/2"
        # Two streams on the one HTTP/2 connection, each delivering as pushed.
        async with (
            sse(client, "/martd/sub/nginx-h2a") as one,
            sse(client, "/martd/sub/nginx-h2b") as two,
        ):
            assert one.response.http_version == "HTTP/2"
            for channel, stream in (("nginx-h2a", one), ("nginx-h2b", two)):
                pushed = await browser.post(f"/martd/pub/{channel}", content=channel)
                assert (await stream.next(timeout=3))["data"] == channel, pushed.text


def test_nginx_conf_timeouts_outlast_martds_poll_and_ping() -> None:
    read = re.search(r"proxy_read_timeout\s+(\d+)s;", CONF.read_text())
    assert read is not None
    defaults = Settings()
    assert int(read.group(1)) > max(defaults.poll_timeout, defaults.ping)


def test_nginx_conf_and_deploy_docs_agree_on_the_prefix() -> None:
    conf = CONF.read_text()
    docs = (ROOT / "docs" / "deploy.md").read_text()
    line = "proxy_pass http://martd/;"
    assert line in conf and line in docs
    assert "X-Forwarded-For $remote_addr" in conf and "X-Forwarded-For $remote_addr" in docs


def test_nginx_conf_envsubst_command_in_its_header_fills_every_marker(tmp_path: Path) -> None:
    envsubst = shutil.which("envsubst")
    require("nginx", envsubst is not None, "envsubst (Debian's gettext-base) is not installed")
    assert envsubst is not None
    template = CONF.read_text()
    header = " ".join(
        line.lstrip("#").strip() for line in template.splitlines() if line.startswith("#")
    )
    quoted = re.search(r"envsubst '([^']*)'", header)
    assert quoted is not None, "the header shows no envsubst command"
    names = re.findall(r"\$\{([A-Z_]+)\}", quoted.group(1))
    values = {name: f"value-of-{name.lower()}" for name in names}
    done = subprocess.run(
        [envsubst, quoted.group(1)],
        input=template,
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "")} | values,
        timeout=10,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # The same result as the test's renderer, so every marker is named there,
    # and nginx's own $variables are left alone.
    assert done.stdout == render(template, values)
    assert "$connection_upgrade" in done.stdout and "$remote_addr" in done.stdout


async def test_nginx_without_trusted_proxies_no_request_through_it_is_a_server(
    tmp_path: Path,
) -> None:
    """Forgetting MARTD_TRUSTED_PROXIES fails safe: nobody publishes through nginx by address.

    nginx connects from loopback, which the default MARTD_ALLOW lets publish,
    and uvicorn (proxy headers on, trusting 127.0.0.1) replaces that peer with
    the X-Forwarded-For address; martd, trusting no proxy, counts neither.
    """
    app = create_app(backend="memory")  # default MARTD_ALLOW, no trusted proxies
    with nginx_in_front(tmp_path, app, proxy_headers=True) as stack:
        async with (
            stack.nginx_host() as local,
            httpx.AsyncClient(base_url=stack.martd.url, timeout=10) as direct,
        ):
            through = await local.post("/martd/pub/nginx-untrusted", content="via nginx")
            assert through.status_code == 403, through.text
            straight = await direct.post("/pub/nginx-untrusted", content="to uvicorn")
            assert straight.status_code == 201, straight.text
