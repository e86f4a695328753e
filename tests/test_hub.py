"""The hub's direct send: no task for a healthy subscriber, order kept for a parked one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from martd_asgi.backends.base import Control
from martd_asgi.channels import Message
from martd_asgi.hub import Hub
from martd_asgi.transports.sse import SSESubscriber

from .helpers import wait_for

pytestmark = pytest.mark.anyio


class Socket:
    """A fake ASGI send whose 'socket' can be made to block."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.ended = False
        self.open = asyncio.Event()
        self.open.set()

    async def send(self, event: dict[str, Any]) -> None:
        if not self.open.is_set():
            await self.open.wait()
        if event["type"] == "http.response.body":
            self.sent.append(event.get("body", b""))
            self.ended = self.ended or not event.get("more_body", False)


async def settle() -> None:
    """Let the loop turn end: stream events go out together at its end."""
    for _ in range(3):
        await asyncio.sleep(0)


def message(n: int, channel: str = "c") -> Message:
    return Message(channel, (1000, n), f"m{n}", expires=1e12)


async def live(hub: Hub, socket: Socket, channels: list[str] = ["c"]) -> SSESubscriber:
    sub = SSESubscriber(socket.send, channels, "cid", hub)
    sub.handler = None  # no ASGI handler waits on it here
    hub.add(sub)
    await sub.drain()
    return sub


async def test_hub_healthy_delivery_creates_no_task() -> None:
    hub = Hub()
    socket = Socket()
    sub = await live(hub, socket)
    before = len(asyncio.all_tasks())
    for n in range(1, 50):
        hub.deliver(message(n))
        await settle()
    assert len(asyncio.all_tasks()) == before
    assert sub.task is None and not sub.busy
    assert socket.sent == [f"id: 1000-{n}\ndata: m{n}\n\n".encode() for n in range(1, 50)]


async def test_hub_parks_a_blocked_subscriber_and_keeps_order() -> None:
    hub = Hub()
    fast, slow = Socket(), Socket()
    await live(hub, fast)
    slow_sub = await live(hub, slow)
    slow.open.clear()
    for n in range(1, 6):
        hub.deliver(message(n))
        await settle()
    assert len(fast.sent) == 5  # the publisher never waited for the slow one
    assert slow_sub.busy and slow_sub in hub.parked and slow.sent == []
    slow.open.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert slow.sent == fast.sent
    assert not slow_sub.busy and slow_sub not in hub.parked


async def test_hub_cuts_a_subscriber_whose_backlog_overflows() -> None:
    hub = Hub(max_backlog=3)
    stuck = Socket()
    stuck.open.clear()
    sub = await live(hub, stuck)
    for n in range(1, 10):
        hub.deliver(message(n))
    await settle()
    assert sub.closed and hub.counters["dropped_slow"] == 1
    assert "c" not in hub.by_channel


async def test_hub_dedupes_by_etag_while_busy() -> None:
    hub = Hub()
    socket = Socket()
    sub = SSESubscriber(socket.send, ["c"], "cid", hub)
    hub.add(sub)
    hub.deliver(message(1))  # arrives while history is being sent
    hub.deliver(message(2))
    for msg in sub.fresh([message(1)]):  # history held message 1 already
        await socket.send(
            {
                "type": "http.response.body",
                "body": b"history " + msg.etag.encode(),
                "more_body": True,
            }
        )
    await sub.drain()
    assert socket.sent == [b"history 1000-1", b"id: 1000-2\ndata: m2\n\n"]


async def test_hub_kick_spares_the_holder() -> None:
    hub = Hub()
    keep_socket, other_socket = Socket(), Socket()
    keep = SSESubscriber(keep_socket.send, ["c"], "keep", hub)
    other = SSESubscriber(other_socket.send, ["c"], "other", hub)
    for sub in (keep, other):
        hub.add(sub)
        await sub.drain()
    hub.deliver(Control("kicked", "c", keep="keep"))
    await settle()
    assert not keep.closed and other.closed
    assert b'"kicked"' in other_socket.sent[0]


async def test_hub_control_queued_behind_a_busy_send_still_ends_the_response() -> None:
    hub = Hub()
    socket = Socket()
    sub = SSESubscriber(socket.send, ["c"], "other", hub)
    hub.add(sub)  # busy: as while its history is being read
    hub.deliver(Control("kicked", "c", keep="holder"))
    hub.deliver(message(1))  # the push that switched one2one on
    await sub.drain()
    assert sub.closed
    assert len(socket.sent) == 1 and b'"kicked"' in socket.sent[0]
    assert socket.ended


async def test_hub_longpoll_answered_from_a_control_queued_while_busy() -> None:
    from martd_asgi.transports.longpoll import LongPollSubscriber

    hub = Hub()
    socket = Socket()
    sub = LongPollSubscriber(socket.send, ["c"], "cid", hub)
    hub.add(sub)
    hub.deliver(message(1))
    hub.deliver(Control("deleted", "c"))
    await sub.drain()
    assert sub.closed and socket.ended
    assert b'"data":"m1"' in socket.sent[-1]


def frames(*ns: int) -> bytes:
    return b"".join(f"id: 1000-{n}\ndata: m{n}\n\n".encode() for n in ns)


async def test_hub_writes_a_lone_message_at_once_and_joins_a_busy_turn() -> None:
    hub = Hub()
    socket = Socket()
    await live(hub, socket)
    hub.deliver(message(1))  # a lone push: written before its publisher is answered
    assert socket.sent == [frames(1)]
    for n in (2, 3):
        hub.deliver(message(n))  # more publishers answered in the same turn
    assert socket.sent == [frames(1)]
    await settle()
    assert socket.sent == [frames(1), frames(2, 3)]
    # the next turn follows a busy one: all of its messages leave as one write
    socket.sent.clear()
    for n in (4, 5, 6):
        hub.deliver(message(n))
    assert socket.sent == []
    await settle()
    assert socket.sent == [frames(4, 5, 6)]
    # a lone message after a busy turn waits for the turn's end; then calm again
    socket.sent.clear()
    hub.deliver(message(7))
    assert socket.sent == []
    await settle()
    hub.deliver(message(8))
    assert socket.sent == [frames(7), frames(8)]


async def test_hub_defers_a_large_fan_out_to_the_end_of_the_turn() -> None:
    from martd_asgi.hub import AT_ONCE_MAX

    hub = Hub()
    few, many = [Socket() for _ in range(2)], [Socket() for _ in range(AT_ONCE_MAX + 1)]
    for socket in few:
        await live(hub, socket, ["few"])
    for socket in many:
        await live(hub, socket, ["many"])
    hub.deliver(message(1, "many"))  # the publisher is not held up by a big fan-out
    assert all(socket.sent == [] for socket in many)
    await settle()
    assert all(socket.sent == [frames(1)] for socket in many)
    await settle()  # that turn delivered one message: the next lone one goes at once
    hub.deliver(message(2, "few"))
    assert all(socket.sent == [frames(2)] for socket in few)


async def test_app_lone_push_reaches_the_subscriber_before_the_publisher_is_answered() -> None:
    from martd_asgi import create_app

    app = create_app(backend="memory", demo=False)
    order: list[str] = []
    gone = asyncio.Event()

    async def sub_send(event: dict[str, Any]) -> None:
        if b"data: " in event.get("body", b""):
            order.append(event["body"].decode().rsplit("data: ", 1)[1].strip())

    async def sub_receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def pub_send(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            order.append(f"answer {event['status']}")

    def scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        return {
            "type": "http",
            "method": method,
            "path": path,
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 80),
            "scheme": "http",
            "http_version": "1.1",
            "root_path": "",
        }

    async with app.lifespan():
        sse = scope("GET", "/sub/lone", [(b"accept", b"text/event-stream")])
        handler = asyncio.ensure_future(app(sse, sub_receive, sub_send))
        await wait_for(lambda: app.hub.subscribers() == 1)
        for n in range(3):
            await settle()  # each push in a turn of its own, as a lone publisher's are
            body = {"type": "http.request", "body": f"m{n}".encode(), "more_body": False}

            async def pub_receive(body: dict[str, Any] = body) -> dict[str, Any]:
                return body

            await app(scope("POST", "/pub/lone", []), pub_receive, pub_send)
        assert order == ["m0", "answer 201", "m1", "answer 200", "m2", "answer 200"]
        gone.set()
        await handler


@pytest.mark.parametrize("how", ["raises", "future fails"])
async def test_hub_error_in_a_suspended_send_reaches_the_subscribers_cleanup(how: str) -> None:
    hub = Hub()
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def send(event: dict[str, Any]) -> None:
        await waiter  # the socket is full: the send suspends
        raise ConnectionResetError("peer gone while the send waited")

    sub = SSESubscriber(send, ["c"], "cid", hub)
    sub.handler = None
    hub.add(sub)
    sub.busy = False
    hub.deliver(message(1))
    await settle()
    assert sub in hub.parked and not sub.closed
    if how == "raises":
        waiter.set_result(None)
    else:
        waiter.set_exception(ConnectionResetError("transport lost"))
    async with asyncio.timeout(2):
        while sub in hub.parked:
            await asyncio.sleep(0)
    # the error did not vanish: the subscriber is closed and gone from the hub
    assert sub.closed and hub.subscribers() == 0


async def test_hub_cancelled_while_parked_cancels_the_send_under_way() -> None:
    hub = Hub()
    socket = Socket()
    sub = await live(hub, socket)
    socket.open.clear()
    hub.deliver(message(1))
    await settle()
    task = sub.task
    assert task is not None
    sub.abort()
    async with asyncio.timeout(2):
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() or task.done()
    assert socket.sent == [] or not socket.sent[-1].startswith(b"id: 1000-1")
