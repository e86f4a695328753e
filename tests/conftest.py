"""Fixtures: parametrised backends and mounts, martd servers torn down after each test.

The helpers the test modules import (servers, SSE reader, `require`) are in helpers.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from martd_asgi import create_app

from .helpers import ServerThread, mounted_app, redis_url

# The browser engines' fixtures (`context`, `engine`, ...) for any test module.
pytest_plugins = ["tests.browsers"]

# The tests run many apps in one process, like a host that mounts martd: leave the
# process's garbage collector alone (test_lifecycle checks the tuning on its own).
os.environ.setdefault("MARTD_GC_TUNE", "0")

BACKENDS = ["memory", "redis"]


# `make test` runs the suite on several pytest-xdist workers. The tests that measure
# time or load the machine on purpose share one worker, so they never overlap each other.
TIMING = {
    "test_shutdown.py",
    "test_slow_consumers.py",
    "test_rolling_restart.py",
    "test_scaling_tools.py",
}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The soak takes minutes of one worker: start it first, so it ends with the rest.
    items.sort(key=lambda item: item.path.name != "test_soak.py")
    for item in items:
        if item.path.name in TIMING:
            item.add_marker(pytest.mark.xdist_group("timing"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "redis":
        with redis_url() as url:
            yield url
    else:
        yield str(request.param)


MOUNTS = ["root", "mounted"]


@pytest.fixture(params=MOUNTS)
def mount(request: pytest.FixtureRequest) -> str:
    """``root``: martd is the app (``uvicorn martd_asgi:app``); ``mounted``: it is
    mounted at /martd in a Starlette app, as a site would do."""
    return str(request.param)


@pytest.fixture
def make_server(backend_url: str, mount: str) -> Iterator[Callable[..., ServerThread]]:
    """Start a martd server with these settings (torn down after the test).

    Its ``url`` is where martd answers: the root, or /martd when mounted.
    """
    started: list[ServerThread] = []

    def make(**settings: Any) -> ServerThread:
        settings.setdefault("backend", backend_url)
        martd = create_app(**settings)
        if mount == "mounted":
            server = ServerThread(mounted_app(martd)).start()
            server.url += "/martd"
        else:
            server = ServerThread(martd).start()
        server.martd = martd  # type: ignore[attr-defined]
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server()


@pytest.fixture
async def client(server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        yield c


@pytest.fixture
async def asgi_client() -> AsyncIterator[httpx.AsyncClient]:
    """martd in process, through httpx's ASGITransport: for answers that only parse the
    request (a refusal of bad input), where a real server and backend add nothing."""
    martd = create_app(backend="memory")
    async with martd.lifespan():
        transport = httpx.ASGITransport(app=martd)
        async with httpx.AsyncClient(transport=transport, base_url="http://martd") as c:
            yield c
