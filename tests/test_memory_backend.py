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


async def test_memory_expiry_heap_bounded_when_lives_vary() -> None:
    # Each shorter life moves the channel's due time earlier and leaves the old
    # entry behind until its own time: the soak's mix of lives grew the heap by
    # megabytes an hour.
    backend = MemoryBackend()
    for i in range(3000):
        life = 3600 - i  # every push's message expires before the last one's
        await backend.publish(f"c{i % 10}", f"m{i}", PushAttributes(size=50, life=life), server=True)
    assert len(backend._expiry) <= 2 * 10 + 64
    # Retained: pushes 2500.. (size 50 each of 10 channels); the latest 50 have the
    # shortest lives, expired here, and the rest are all still there.
    backend.expire(time.time() + 3600 - 2950)
    histories = [await backend.history(f"c{k}", "0") for k in range(10)]
    assert sum(len(h.messages) for h in histories) == 450


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
