"""martd_asgi.Client / AsyncClient against a real server, and the package's public surface."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

import martd_asgi
from martd_asgi import (
    AsyncClient,
    BadRequest,
    Client,
    ClientError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    TransportError,
)

from .helpers import ServerThread, sse
from .serving import free_port

pytestmark = pytest.mark.anyio


def test_client_publish_info_delete(server: ServerThread) -> None:
    with Client(server.url) as martd:
        first = martd.publish("client.sync", "hello", size=3, life=60)
        assert (first.channel, first.created, first.messages) == ("client.sync", True, 1)
        second = martd.publish("client.sync", {"n": 2}, size=3, life=60)
        assert not second.created and second.etag != first.etag
        info = martd.info("client.sync")
        assert (info.etag, info.messages, info.size, info.life, info.has_key) == (
            second.etag,
            2,
            3,
            60,
            False,
        )
        martd.delete("client.sync")
        with pytest.raises(NotFound) as missing:
            martd.info("client.sync")
        assert missing.value.status == 404 and "client.sync" in missing.value.message


def test_client_empty_push_says_it_reaches_nobody_and_repr_shows_the_answer(
    server: ServerThread,
) -> None:
    with Client(server.url) as martd:
        empty = martd.publish("client.empty", size=5)
        real = martd.publish("client.empty", "x")
    assert empty.delivered is False and real.delivered is True
    assert '"delivered":false' in empty.answer
    assert f"answer='{real.answer}'" in repr(real)


async def test_async_client_push_reaches_a_subscriber(server: ServerThread) -> None:
    import httpx

    async with AsyncClient(server.url) as martd, httpx.AsyncClient(base_url=server.url) as http:
        async with sse(http, "/sub/client.async") as stream:
            result = await martd.publish("client.async", b'{"raw": "bytes"}')
            event = await stream.next()
            assert (await martd.info("client.async")).subscribers == 1
        assert event == {"id": result.etag, "data": '{"raw": "bytes"}'}
        await martd.delete("client.async")
        with pytest.raises(NotFound):
            await martd.delete("client.async")


def test_client_errors_are_typed(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(max_payload=16)
    with Client(server.url) as martd:
        martd.publish("client.keyed", "x", key="right")
        with pytest.raises(Forbidden) as refused:
            martd.publish("client.keyed", "y", key="wrong")
        assert refused.value.status == 403 and refused.value.body["error"] == refused.value.message
        with pytest.raises(PayloadTooLarge):
            martd.publish("client.big", "x" * 17)
        with pytest.raises(BadRequest) as bad:
            martd.publish("client.bad", "x", size=0)
        assert "size" in bad.value.message
        with pytest.raises(BadRequest):
            martd.publish("not a name", "x")


def test_client_secret_makes_a_remote_client_a_server(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(allow="10.9.9.9", secret="s3cret")
    with Client(server.url) as anonymous, pytest.raises(Forbidden):
        anonymous.publish("client.secret", "x")
    with Client(server.url, secret="s3cret") as trusted:
        assert trusted.publish("client.secret", "x").created


async def test_client_unreachable_server_is_a_transport_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TransportError) as down, Client(url, timeout=2) as martd:
        martd.publish("ch", "x")
    assert down.value.status is None and url in down.value.message
    async with AsyncClient(url, timeout=2) as amartd:
        with pytest.raises(ClientError):
            await amartd.info("ch")


def test_client_checks_its_arguments() -> None:
    with pytest.raises(ValueError):
        Client("127.0.0.1:8000")
    with pytest.raises(ValueError):
        Client("http://127.0.0.1:8000", secret="a", token="b")
    with Client("http://127.0.0.1:8000") as martd, pytest.raises(ValueError):
        martd.mint_token(publish=["x"])


def test_client_mint_token_grants_what_it_names() -> None:
    import jwt

    secret = "a-long-enough-signing-secret-for-hs256"
    with Client("http://127.0.0.1:8000", secret=secret) as martd:
        token = martd.mint_token(publish=["user.42.*"], ttl=60)
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    assert claims["martd"]["publish"] == ["user.42.*"]


def test_package_all_is_sorted_and_every_name_resolves() -> None:
    assert martd_asgi.__all__ == sorted(martd_asgi.__all__)
    for name in martd_asgi.__all__:
        if name != "app":  # building the default app reads the environment
            assert getattr(martd_asgi, name) is not None


def test_package_import_is_light() -> None:
    code = "import sys, martd_asgi; print(sorted(m for m in ('httpx', 'uvicorn', 'click') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
