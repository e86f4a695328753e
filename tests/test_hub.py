"""The hub's direct send: no task for a healthy subscriber, order kept for a parked one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from martd_asgi.backends.base import Control
from martd_asgi.channels import Message
from martd_asgi.hub import Hub
from martd_asgi.transports.sse import SSESubscriber

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


async def test_hub_joins_frames_of_one_loop_turn_into_one_write() -> None:
    hub = Hub()
    socket = Socket()
    await live(hub, socket)
    for n in range(1, 4):
        hub.deliver(message(n))  # three publishers answered in the same turn
    await settle()
    assert socket.sent == [b"".join(f"id: 1000-{n}\ndata: m{n}\n\n".encode() for n in (1, 2, 3))]


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
