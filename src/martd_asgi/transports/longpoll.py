"""Long-poll (JSON) and JSONP: one answer with everything new, then the client asks again.

A waiting poll costs a registered subscriber and nothing else: the publisher
answers it directly, and the hub's timer answers it at its deadline. Every
answer names every requested channel with the etag to resume it from, so a
client that polls again with those etags loses nothing pushed in between. For
the common case (one channel, nothing missed) the answer is made once per
message and shared by every poll it completes.
"""

from __future__ import annotations

import json
from typing import Any

from ..backends.base import Control
from ..channels import History, Message, etag_key
from ..delivery import Subscriber
from ..errors import MartdError
from ..protocols import joined_writes
from ..types import CloseReason, Send
from .common import json_bytes, response_events

JSON = b"application/json"
JAVASCRIPT = b"application/javascript; charset=utf-8"
NOSNIFF = [(b"x-content-type-options", b"nosniff")]
Group = dict[str, Any]


def _group(etag: str, messages: list[Message], missed: bool) -> Group:
    return {"etag": etag, "messages": [m.as_json() for m in messages], "missed": missed}


def _lp_events(msg: Message) -> list[dict[str, Any]]:
    body = json_bytes({"channels": {msg.channel: _group(msg.etag, [msg], False)}})
    return response_events(200, body, JSON, [(b"etag", f'"{msg.etag}"'.encode())])


class LongPollSubscriber(Subscriber):
    __slots__ = ("ending", "resume")
    transport = "longpoll"
    stream = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # per channel, the etag to resume from when this answer has nothing for it;
        # None until history was read
        self.resume: list[str] | None = None
        self.ending = False  # shutdown came while history was being read

    def respond(self, messages: list[Message], extra: dict[str, Group] | None = None) -> None:
        missed = self.missed
        if extra is None and len(messages) == 1 and not missed and len(self.channels) == 1:
            self.finish(messages[0].memo("lp", _lp_events))
            return
        groups: dict[str, Group] = dict(extra or {})
        for msg in messages:
            group = groups.get(msg.channel)
            if group is None:
                gone = bool(missed and msg.channel in missed)
                if gone and missed is not None:
                    missed.discard(msg.channel)
                group = groups[msg.channel] = _group(msg.etag, [], gone)
            group["messages"].append(msg.as_json())
            newest = etag_key(group["etag"])
            if newest is None or msg.key > newest:
                group["etag"] = msg.etag
        self.answer(200, {"channels": self.every(groups)}, groups)

    def finish(self, events: list[dict[str, Any]]) -> None:
        with joined_writes(self.send):  # the answer's head and body: one write
            super().finish(events)

    def every(self, groups: dict[str, Group]) -> dict[str, Group]:
        """``groups`` with an entry for every requested channel, in their order."""
        resume = self.resume or ["0"] * len(self.channels)
        return {
            c: groups[c] if c in groups else _group(resume[i], [], False)
            for i, c in enumerate(self.channels)
        }

    def answer(self, status: int, payload: dict[str, Any], groups: dict[str, Group]) -> None:
        headers = []
        if status == 200 and len(self.channels) == 1:
            (group,) = payload["channels"].values()
            headers.append((b"etag", f'"{group["etag"]}"'.encode()))
        self.finish(response_events(status, json_bytes(payload), JSON, headers))

    def tell(self, control: Control) -> None:
        status = 409 if control.kind == "kicked" else 410
        what = "another client took this one2one channel" if status == 409 else "deleted"
        error = f"channel: {control.channel!r}: {what}"
        self.answer(status, {"error": error, "type": control.kind, "channel": control.channel}, {})

    def end(self, reason: CloseReason) -> None:
        if reason == "slow":
            self.abort()
        elif self.resume is None:
            # the etags to resume from are not known yet: begin() answers
            self.ending = True
        else:
            self.answer(200, {"channels": self.every({})}, {})


class JSONPSubscriber(LongPollSubscriber):
    __slots__ = ("callback",)
    transport = "jsonp"

    def __init__(self, *args: Any, callback: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.callback = callback

    def respond(self, messages: list[Message], extra: dict[str, Group] | None = None) -> None:
        # Never the shared long-poll answer: the callback name is this client's.
        super().respond(messages, extra if extra is not None else {})

    def answer(self, status: int, payload: dict[str, Any], groups: dict[str, Group]) -> None:
        if status != 200:
            payload = {**payload, "status": status}
        self.finish(jsonp_events(self.callback, payload))


def jsonp_events(callback: str, payload: Any) -> list[dict[str, Any]]:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    # U+2028/2029 are line breaks in older JavaScript engines
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return response_events(200, f"{callback}({text});".encode(), JAVASCRIPT, NOSNIFF)


async def send_jsonp_error(send: Send, callback: str, error: MartdError) -> None:
    for event in jsonp_events(callback, {**error.as_json(), "status": error.status}):
        await send(event)


async def begin(
    sub: LongPollSubscriber, histories: list[History], *, deadline: float, hub: Any
) -> None:
    """Answer at once with what is there, or wait (registered) until the deadline."""
    extra: dict[str, Group] = {}
    messages: list[Message] = []
    sub.resume = [history.last_etag for history in histories]
    for index, history in enumerate(histories):
        channel = sub.channels[index]
        fresh = sub.fresh(history.messages)
        if history.exists and (fresh or history.missed):
            # resume from the channel's newest etag, an empty push's included
            extra[channel] = _group(history.last_etag, [], history.missed)
        messages.extend(fresh)
    if messages or extra:
        # with what arrived while history was read (pushed after it, or after
        # the subscription began for a channel given no etag)
        queued = [item for item in sub.backlog or () if isinstance(item, Message)]
        sub.respond(messages + sub.fresh(queued), extra)
    elif sub.ending:
        sub.end("shutdown")
    await sub.drain()
    if not sub.closed:
        hub.expire_at(sub, deadline)
