"""One error hierarchy: what the server raises in process is what the client raises.

``except martd_asgi.BadRequest`` catches a refusal whether ``MartdApp.publish``
raised it in process or the client read it from martd's answer, with the same
message; the client adds only ``TransportError``. ``MartdApp.publish`` takes the
push path of ``POST /pub``: the same checks, limits and counters.
"""

from __future__ import annotations

import httpx
import pytest

import martd_asgi
from martd_asgi import create_app, errors

from .helpers import free_socket, running

pytestmark = pytest.mark.anyio

ERRORS = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Gone",
    "MartdError",
    "NotFound",
    "PayloadTooLarge",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
]


def test_the_package_errors_are_the_servers() -> None:
    for name in ERRORS:
        assert getattr(martd_asgi, name) is getattr(errors, name), name
        assert issubclass(getattr(martd_asgi, name), martd_asgi.MartdError)
    assert martd_asgi.ClientError is martd_asgi.MartdError
    assert issubclass(martd_asgi.TransportError, martd_asgi.MartdError)
    assert martd_asgi.TransportError.status is None


@pytest.mark.parametrize(
    ("call", "kind", "says"),
    [
        ({"channel": "bad name", "data": "x"}, "BadRequest", "channel"),
        ({"channel": "ok", "data": "x", "size": 0}, "BadRequest", "size"),
        ({"channel": "ok", "data": "\ud800"}, "BadRequest", "data: not valid UTF-8"),
        ({"channel": "ok", "data": "x" * 101}, "PayloadTooLarge", "payload: larger than 100"),
        ({"channel": "ok", "data": "x", "event": "a b"}, "BadRequest", "event"),
    ],
)
async def test_in_process_publish_raises_what_the_package_names(
    call: dict[str, object], kind: str, says: str
) -> None:
    martd = create_app(backend="memory", max_payload=100)
    try:
        with pytest.raises(getattr(martd_asgi, kind)) as raised:
            await martd.publish(**call)  # type: ignore[arg-type]
        assert says in raised.value.message
        assert raised.value.status == getattr(errors, kind).status
    finally:
        await martd.shutdown()


async def test_a_refusal_is_the_same_error_in_process_and_over_http() -> None:
    martd = create_app(backend="memory")
    with running(martd) as server:
        with pytest.raises(martd_asgi.BadRequest) as in_process:
            await martd.publish("ok", "x", size=0)
        async with martd_asgi.AsyncClient(server.url) as client:
            with pytest.raises(martd_asgi.BadRequest) as over_http:
                await client.publish("ok", "x", size=0)
    assert type(over_http.value) is type(in_process.value) is errors.BadRequest
    assert over_http.value.message == in_process.value.message
    assert over_http.value.status == 400 and over_http.value.body["error"] == in_process.value.message
    assert in_process.value.body is None  # raised by the server, not read from an answer


async def test_in_process_pushes_count_as_http_pushes_do() -> None:
    martd = create_app(backend="memory")
    with running(martd) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            before = (await http.get("/stats")).json()
            await martd.publish("counted", "é1")  # 3 bytes in UTF-8
            assert (await http.post("/pub/counted", content="é1".encode())).is_success
            after = (await http.get("/stats")).json()
    assert after["published"] - before["published"] == 2
    assert after["published_bytes"] - before["published_bytes"] == 6


def test_a_transport_error_is_a_martd_error_without_status() -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with martd_asgi.Client(f"http://127.0.0.1:{port}", retries=0) as client:
        with pytest.raises(martd_asgi.MartdError) as raised:
            client.publish("ch", "x")
    assert isinstance(raised.value, martd_asgi.TransportError)
    assert raised.value.status is None


def test_documented_entry_points_are_public() -> None:
    from martd_asgi.client_subscription import Subscription
    from martd_asgi.proxy import ProxyMiddleware
    from martd_asgi.serve import build_config
    from martd_asgi.tokens import mint_token

    for name, thing in [
        ("Subscription", Subscription),
        ("ProxyMiddleware", ProxyMiddleware),
        ("build_config", build_config),
        ("mint_token", mint_token),
    ]:
        assert name in martd_asgi.__all__
        assert getattr(martd_asgi, name) is thing
