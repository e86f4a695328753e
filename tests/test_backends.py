"""The Backend protocol, the same assertions for every backend (memory and Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from martd_asgi.backends import make_backend
from martd_asgi.backends.base import Backend, Control, Event
from martd_asgi.channels import Message, PushAttributes
from martd_asgi.errors import Conflict, Forbidden

from .helpers import wait_for

pytestmark = pytest.mark.anyio


class Started:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.events: list[Event] = []

    def messages(self, channel: str) -> list[str]:
        return [e.data for e in self.events if isinstance(e, Message) and e.channel == channel]

    def controls(self) -> list[Control]:
        return [e for e in self.events if isinstance(e, Control)]


@pytest.fixture
async def bk(backend_url: str) -> AsyncIterator[Started]:
    backend = make_backend(backend_url, hold=0.3)
    started = Started(backend)
    await backend.start(started.events.append)
    try:
        yield started
    finally:
        await backend.aclose()


def attrs(**given: Any) -> PushAttributes:
    return PushAttributes(**given)


async def push(bk: Started, channel: str, data: str, *, server: bool = True, **given: Any) -> str:
    result = await bk.backend.publish(channel, data, attrs(**given), server=server)
    return result.etag


async def test_backend_publish_creates_then_appends(bk: Started) -> None:
    first = await bk.backend.publish("a", "one", attrs(), server=True)
    second = await bk.backend.publish("a", "two", attrs(), server=True)
    assert first.created and not second.created
    assert second.messages == 2 and second.subscribers == 0
    assert first.etag != second.etag
    info = await bk.backend.info("a")
    assert info is not None
    assert (info.etag, info.messages, info.size, info.life, info.one2one, info.has_key) == (
        second.etag,
        2,
        10,
        3600,
        False,
        False,
    )
    assert await bk.backend.info("nothing") is None


async def test_backend_publish_delivers_in_order_but_not_empty_pushes(bk: Started) -> None:
    await bk.backend.attach("a", "c1")
    etags = [await push(bk, "a", f"m{i}") for i in range(5)]
    await push(bk, "a", "")
    await wait_for(lambda: len(bk.messages("a")) == 5)
    assert bk.messages("a") == [f"m{i}" for i in range(5)]
    assert [e.etag for e in bk.events if isinstance(e, Message)] == etags
    await bk.backend.detach("a", "c1")


async def test_backend_size_evicts_oldest_and_history_says_missed(bk: Started) -> None:
    etags = [await push(bk, "a", f"m{i}", size=3) for i in range(5)]
    history = await bk.backend.history("a", "0")
    assert [m.data for m in history.messages] == ["m2", "m3", "m4"]
    assert not history.missed and history.last_etag == etags[-1]
    after = await bk.backend.history("a", etags[0])
    assert after.missed and [m.data for m in after.messages] == ["m2", "m3", "m4"]
    after = await bk.backend.history("a", etags[1])
    assert not after.missed and [m.data for m in after.messages] == ["m2", "m3", "m4"]
    after = await bk.backend.history("a", etags[3])
    assert not after.missed and [m.data for m in after.messages] == ["m4"]
    unknown = await bk.backend.history("a", "123-4")
    assert unknown.missed and len(unknown.messages) == 3
    foreign = await bk.backend.history("a", "not-an-etag")
    assert foreign.missed and len(foreign.messages) == 3
    none = await bk.backend.history("a", None)
    assert none.messages == [] and not none.missed and none.exists


async def test_backend_history_of_missing_channel(bk: Started) -> None:
    assert (await bk.backend.history("x", None)).exists is False
    assert (await bk.backend.history("x", "0")).missed is False
    gone = await bk.backend.history("x", "1-1")
    assert gone.missed and not gone.exists and gone.last_etag == "0"


async def test_backend_empty_push_counts_but_is_not_history(bk: Started) -> None:
    first = await push(bk, "a", "x")
    empty = await bk.backend.publish("a", "", attrs(), server=True)
    assert empty.messages == 2
    history = await bk.backend.history("a", first)
    assert history.messages == [] and not history.missed and history.last_etag == empty.etag


async def test_backend_life_expires_each_message_by_its_own_life(bk: Started) -> None:
    await push(bk, "a", "long", life=60)
    await push(bk, "a", "short", life=1)
    await push(bk, "a", "long2", life=60)
    await asyncio.sleep(1.2)
    if hasattr(bk.backend, "expire"):
        import time

        bk.backend.expire(time.time())
    history = await bk.backend.history("a", "0")
    assert [m.data for m in history.messages] == ["long", "long2"]
    info = await bk.backend.info("a")
    assert info is not None and info.messages == 2


async def test_backend_channel_dropped_when_empty_and_unsubscribed(bk: Started) -> None:
    etag = await push(bk, "a", "x", life=1)
    await bk.backend.attach("a", "c1")
    await asyncio.sleep(1.2)
    if hasattr(bk.backend, "expire"):
        import time

        bk.backend.expire(time.time())
    info = await bk.backend.info("a")
    assert info is not None and info.messages == 0 and info.subscribers == 1
    await bk.backend.detach("a", "c1")
    assert await bk.backend.info("a") is None
    again = await bk.backend.publish("a", "y", attrs(), server=True)
    assert again.created and again.etag != etag
    # an etag from the dropped channel is not one this channel gave out
    assert (await bk.backend.history("a", etag)).missed


async def test_backend_key_rules(bk: Started) -> None:
    await push(bk, "k", "x", key="sesame")
    with pytest.raises(Forbidden):
        await push(bk, "k", "y")
    with pytest.raises(Forbidden):
        await push(bk, "k", "y", key="wrong")
    await push(bk, "k", "y", key="sesame", server=False)
    with pytest.raises(Forbidden) as error:
        await push(bk, "k", "z", key="sesame", server=False, size=99)
    assert error.value.extra == {"field": "size"}
    info = await bk.backend.info("k")
    assert info is not None and info.has_key and info.messages == 2
    await push(bk, "open", "x")
    with pytest.raises(Forbidden):
        await push(bk, "open", "y", key="late")
    with pytest.raises(Forbidden):
        await push(bk, "open", "y", key="late", server=False)
    with pytest.raises(Forbidden):
        await push(bk, "new", "y", key="k", server=False)


async def test_backend_one2one_hold_conflict_and_lapse(bk: Started) -> None:
    await push(bk, "o", "x", one2one=True)
    await bk.backend.attach("o", "first")
    with pytest.raises(Conflict):
        await bk.backend.attach("o", "second")
    await bk.backend.attach("o", "first")  # its own reconnect
    await bk.backend.detach("o", "first")
    await bk.backend.detach("o", "first")
    with pytest.raises(Conflict):  # still held for `hold` seconds
        await bk.backend.attach("o", "second")
    await asyncio.sleep(0.45)
    await bk.backend.attach("o", "second")
    await bk.backend.detach("o", "second")


async def test_backend_one2one_switched_on_kicks_all_but_earliest(bk: Started) -> None:
    await push(bk, "o", "x")
    await bk.backend.attach("o", "early")
    await bk.backend.attach("o", "late")
    result = await bk.backend.publish("o", "", attrs(one2one=True), server=True)
    assert result.subscribers == 2
    await wait_for(lambda: bk.controls())
    assert bk.controls() == [Control("kicked", "o", "early")]
    await bk.backend.detach("o", "late")
    with pytest.raises(Conflict):
        await bk.backend.attach("o", "late")
    await bk.backend.detach("o", "early")


async def test_backend_delete_tells_subscribers(bk: Started) -> None:
    await push(bk, "d", "x")
    await bk.backend.attach("d", "c")
    assert await bk.backend.delete("d")
    await wait_for(lambda: bk.controls())
    assert bk.controls() == [Control("deleted", "d")]
    assert await bk.backend.info("d") is None
    assert not await bk.backend.delete("d")
    await bk.backend.detach("d", "c")


async def test_backend_subscribers_counted(bk: Started) -> None:
    await bk.backend.attach("s", "a")
    await bk.backend.attach("s", "b")
    result = await bk.backend.publish("s", "x", attrs(), server=True)
    assert result.created and result.subscribers == 2
    await bk.backend.detach("s", "a")
    info = await bk.backend.info("s")
    assert info is not None and info.subscribers == 1
    await bk.backend.detach("s", "b")
    assert await bk.backend.healthy()


async def test_backend_stats_count_channels_and_messages(bk: Started) -> None:
    await push(bk, "one", "a")
    await push(bk, "one", "b")
    await push(bk, "two", "c")
    stats = await bk.backend.stats()
    assert (stats["backend"], stats["channels"], stats["messages"]) == (
        bk.backend.name,
        2,
        3,
    )


async def test_backend_life_expiry_after_order_was_restored(bk: Started) -> None:
    await push(bk, "fifo", "A", life=100)
    await push(bk, "fifo", "B", life=1)  # out of push order: B expires before A
    await asyncio.sleep(1.2)
    await bk.backend.history("fifo", "0")  # B expires; what is left is in order again
    await push(bk, "fifo", "C", life=1)
    await asyncio.sleep(1.3)
    if hasattr(bk.backend, "expire"):
        import time

        bk.backend.expire(time.time())
    history = await bk.backend.history("fifo", "0")
    assert [m.data for m in history.messages] == ["A"]


async def test_backend_one2one_on_creation_kicks_clients_already_waiting(bk: Started) -> None:
    await bk.backend.attach("new", "early")
    await bk.backend.attach("new", "late")
    result = await bk.backend.publish("new", "x", attrs(one2one=True), server=True)
    assert result.created and result.subscribers == 2
    await wait_for(lambda: bk.controls())
    assert bk.controls() == [Control("kicked", "new", "early")]
    await bk.backend.detach("new", "late")
    with pytest.raises(Conflict):
        await bk.backend.attach("new", "late")
    await bk.backend.detach("new", "early")
    # creating a one2one channel nobody waits on kicks nobody
    await push(bk, "quiet", "x", one2one=True)
    await asyncio.sleep(0.1)
    assert [c for c in bk.controls() if c.channel == "quiet"] == []
