"""The presence feed's budget: which joins and leaves a process's subscribers are told."""

from __future__ import annotations

from typing import Any

from martd_asgi.presence import JOIN, LEAVE, Client, Feed, PresenceEvent


class Sub:
    """A stand-in for a subscriber: what the feed reads and calls."""

    def __init__(self, cid: str, transport: str = "sse") -> None:
        self.cid = cid
        self.transport = transport
        self.closed = False
        self.got: list[dict[str, Any]] = []

    def push(self, event: dict[str, Any]) -> None:
        self.got.append(event)


def told(sub: Sub) -> list[str]:
    out = []
    for event in sub.got:
        text = event["text"] if "text" in event else event["body"].decode()
        kind = "join" if '"join"' in text else "leave"
        cid = text.split('"cid": "')[1].split('"')[0]
        out.append(f"{kind} {cid}")
    return out


def event(kind: str, cid: str) -> PresenceEvent:
    return PresenceEvent(kind, "room", Client(cid, None, "sse"))


def setup(subs: list[Sub], rate: float) -> tuple[Feed, list[float]]:
    now = [100.0]
    by_channel: dict[str, Any] = {"room": dict.fromkeys(subs)}
    feed = Feed(by_channel, {}, rate=rate, clock=lambda: now[0])
    return feed, now


def test_presence_feed_tells_other_stream_subscribers_once() -> None:
    watcher, poll, joiner = Sub("w"), Sub("p", "longpoll"), Sub("j", "websocket")
    feed, _ = setup([watcher, poll, joiner], rate=1000)
    feed.handle(event(JOIN, "j"))
    feed.handle(event(JOIN, "j"))  # told already
    assert told(watcher) == ["join j"]
    assert poll.got == [] and joiner.got == []  # long-polls and the joiner itself: never
    feed.handle(event(LEAVE, "x"))  # never told of x's join: not of its leave either
    feed.handle(event(LEAVE, "j"))
    assert told(watcher) == ["join j", "leave j"]
    assert watcher.got[0]["body"].startswith(b"event: martd\ndata: {")


def test_presence_feed_budget_drops_joins_and_delays_leaves() -> None:
    subs = [Sub(f"s{i}") for i in range(10)]
    feed, now = setup(subs, rate=20)  # 2 events a second at 10 frames each
    for cid in ("a", "b", "c", "d"):
        feed.handle(event(JOIN, cid))
    assert told(subs[0]) == ["join a", "join b"]
    assert feed.counters["presence_joins_untold"] == 2
    assert feed.counters["presence_frames"] == 20
    feed.handle(event(LEAVE, "c"))  # its join was not told
    feed.handle(event(LEAVE, "a"))  # no budget: waits
    feed.handle(event(LEAVE, "b"))
    assert told(subs[0]) == ["join a", "join b"] and feed.waiting == 1
    feed.handle(event(JOIN, "b"))  # back before its leave was told: nothing at all
    now[0] += 0.5
    feed.tick()
    assert told(subs[0]) == ["join a", "join b", "leave a"]
    assert feed.waiting == 0
    now[0] += 10
    feed.tick()
    assert told(subs[0]) == ["join a", "join b", "leave a"]


def test_presence_feed_forgets_channels_without_subscribers() -> None:
    watcher = Sub("w")
    feed, now = setup([watcher], rate=1)
    feed.handle(event(JOIN, "a"))
    feed.handle(event(LEAVE, "a"))  # waits for budget
    assert feed.waiting == 1
    del feed.by_channel["room"]
    now[0] += 5
    feed.tick()
    assert feed.budgets == {} and feed.waiting == 0
    feed.handle(event(JOIN, "b"))
    assert feed.budgets == {}
