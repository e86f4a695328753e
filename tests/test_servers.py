"""Who is a server: the allow-list, trusted proxies and the bearer secret."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from martd_asgi import create_app

from .helpers import ServerThread, running

pytestmark = pytest.mark.anyio


async def status(server: ServerThread, headers: dict[str, str] | None = None) -> int:
    async with httpx.AsyncClient(base_url=server.url) as client:
        answer = await client.post("/pub/srv", content="x", headers=headers or {})
        return answer.status_code


async def test_loopback_is_a_server_by_default(server: ServerThread) -> None:
    assert await status(server) == 201


@pytest.mark.parametrize("allow", ["10.0.0.1", "192.168.0.0/16,::1"])
async def test_address_outside_the_allow_list_is_refused(
    make_server: Callable[..., ServerThread], allow: str
) -> None:
    server = make_server(allow=allow)
    assert await status(server) == 403
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/stats")).status_code == 403
        assert (await client.get("/pub/srv")).status_code == 403
        assert (await client.delete("/pub/srv")).status_code == 403


async def test_cidr_block_in_the_allow_list(make_server: Callable[..., ServerThread]) -> None:
    assert await status(make_server(allow="127.0.0.0/8")) == 201


async def test_forwarded_headers_ignored_from_untrusted_peers(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(allow="10.1.2.3")
    for header in (
        {"x-forwarded-for": "10.1.2.3"},
        {"forwarded": "for=10.1.2.3"},
        {"x-forwarded-for": "10.1.2.3, 127.0.0.1"},
    ):
        assert await status(server, header) == 403, header


async def test_forwarded_headers_believed_from_trusted_proxies(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(allow="10.1.2.3", trusted_proxies="127.0.0.1")
    assert await status(server, {"x-forwarded-for": "10.1.2.3"}) == 201
    assert await status(server, {"forwarded": 'for="10.1.2.3:4711";proto=https'}) == 200
    # the client wrote its own X-Forwarded-For before the proxy appended the real address
    assert await status(server, {"x-forwarded-for": "10.1.2.3, 10.9.9.9"}) == 403
    assert await status(server, {"x-forwarded-for": "10.9.9.9"}) == 403
    assert await status(server) == 403  # the proxy itself is not a server


async def test_forwarded_headers_that_disagree_or_cannot_be_read_count_for_nothing(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(trusted_proxies="127.0.0.1")  # loopback is also allowed
    # the proxy wrote X-Forwarded-For; the client wrote its own Forwarded
    assert await status(server, {"x-forwarded-for": "6.6.6.6", "forwarded": "for=127.0.0.1"}) == 403
    assert await status(server, {"x-forwarded-for": "6.6.6.6", "forwarded": "for=unknown"}) == 403
    assert await status(server, {"x-forwarded-for": "unknown"}) == 403
    assert await status(server, {"forwarded": "for=_hidden"}) == 403
    # both headers written by proxies that agree
    assert (
        await status(server, {"x-forwarded-for": "127.0.0.1", "forwarded": "for=127.0.0.1"}) == 201
    )


async def test_bearer_secret_makes_a_server(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(allow="", secret="s3cret-value")
    assert await status(server) == 403
    assert await status(server, {"authorization": "Bearer s3cret-value"}) == 201
    assert await status(server, {"authorization": "Bearer s3cret-valuf"}) == 403
    assert await status(server, {"authorization": "Basic s3cret-value"}) == 403
    assert await status(server, {"authorization": "Bearer"}) == 403


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_keys_and_secrets_redacted_in_access_logs() -> None:
    collect = Collect()
    loggers = [logging.getLogger(n) for n in ("uvicorn.access", "uvicorn.error", "martd")]
    martd = create_app(secret="the-secret-xyz")
    with running(martd, log_level="info", access_log=True) as server:
        for logger in loggers:
            logger.addHandler(collect)
        try:
            with httpx.Client(base_url=server.url) as client:
                client.post("/pub/logged?key=channel-key-abc", content="x")
                client.post("/pub/logged?size=3&key=channel-key-abc", content="x")
                client.post("/pub/logged?size=3&%6Bey=channel-key-abc", content="x")
                client.get("/sub/logged?etag=0&tok%65n=tok-123")
                client.get("/sub/logged?etag=0&token=tok-123")
                client.get("/stats", headers={"authorization": "Bearer the-secret-xyz"})
        finally:
            for logger in loggers:
                logger.removeHandler(collect)
    text = "\n".join(collect.lines)
    assert "/pub/logged?key=***" in text and "size=3&key=***" in text
    for secret in ("channel-key-abc", "tok-123", "the-secret-xyz"):
        assert secret not in text
