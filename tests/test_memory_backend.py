"""The memory backend's own bookkeeping stays bounded."""

from __future__ import annotations

import time

import pytest

from martd_asgi.backends.memory import MemoryBackend
from martd_asgi.channels import PushAttributes

pytestmark = pytest.mark.anyio


async def test_memory_expiry_heap_bounded_by_channels_not_pushes() -> None:
    backend = MemoryBackend()
    for i in range(2000):
        await backend.publish("busy", f"m{i}", PushAttributes(size=1), server=True)
    assert len(backend._expiry) <= 2


async def test_memory_expiry_still_honours_each_message_life() -> None:
    backend = MemoryBackend()
    await backend.publish("mixed", "long", PushAttributes(life=60), server=True)
    await backend.publish("mixed", "short", PushAttributes(life=1), server=True)
    backend.expire(time.time() + 2)
    history = await backend.history("mixed", "0")
    assert [m.data for m in history.messages] == ["long"]
    backend.expire(time.time() + 61)
    assert await backend.info("mixed") is None


async def test_memory_lapsed_holds_are_forgotten() -> None:
    backend = MemoryBackend(hold=0.01)
    for i in range(50):
        name = f"solo{i}"
        await backend.publish(name, "x", PushAttributes(one2one=True, life=1), server=True)
        await backend.attach(name, "client")
        await backend.detach(name, "client")
    time.sleep(0.02)
    backend.expire(time.time() + 2)  # the channels themselves expire
    assert backend._holds  # their holds outlived them until the sweep
    backend._sweep()
    assert backend._timer is not None
    backend._timer.cancel()
    assert backend._holds == {}
