"""The Backend protocol: where channels live and how pushes reach every process.

A backend stores channels (attributes, the hashed key, the message queue) and
moves events between processes. It never talks to subscribers: every event it
produces goes to one ``deliver`` callback, the hub's, in publish order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..channels import History, Message, PushAttributes
from ..presence import Client, PresenceEvent

if TYPE_CHECKING:
    from ..idempotency import Idempotency


@dataclass(frozen=True)
class Control:
    """A control event for the subscribers of one channel.

    ``kind`` is ``deleted`` (the channel was dropped: tell and close everyone),
    ``kicked`` (one2one was switched on: everyone but ``keep`` goes) or
    ``missed`` (messages were lost before they could be delivered, e.g. evicted
    while a backend was reconnecting: the next delivery is marked missed).
    """

    kind: str
    channel: str
    keep: str | None = None


Event = Message | Control | PresenceEvent
Deliver = Callable[[Event], None]


@dataclass(frozen=True)
class PublishResult:
    channel: str
    etag: str
    subscribers: int
    messages: int
    created: bool
    replayed: bool = False  # v1.1: the answer of an earlier push with the same Idempotency-Key

    def body(self) -> dict[str, Any]:
        # by hand: dataclasses.asdict deep-copies, and this runs once per push
        return {
            "channel": self.channel,
            "etag": self.etag,
            "subscribers": self.subscribers,
            "messages": self.messages,
        }

    def answer(self, payload: str) -> dict[str, Any]:
        """The push's answer: ``body()``, and for an empty push that it reaches nobody."""
        body = self.body()
        if not payload:
            # The original martd's empty push sets attributes; its message is never sent.
            body["delivered"] = False
        return body


@dataclass(frozen=True)
class ChannelInfo:
    channel: str
    etag: str
    subscribers: int
    messages: int
    size: int
    life: int
    one2one: bool
    has_key: bool
    presence: bool = False

    def body(self) -> dict[str, Any]:
        return asdict(self)


class Backend(Protocol):
    name: str

    async def start(self, deliver: Deliver) -> None:
        """Begin handing every event, local or from other processes, to ``deliver``."""

    async def aclose(self) -> None: ...

    async def publish(
        self,
        channel: str,
        data: str,
        attrs: PushAttributes,
        *,
        server: bool,
        event: str | None = None,
        content_type: str | None = None,
        idempotency: Idempotency | None = None,
    ) -> PublishResult:
        """Store a push and deliver it. Raises Forbidden for a wrong key or a
        non-server that may not create or change the channel.

        ``event`` and ``content_type`` go with the message (v1.1). With
        ``idempotency``, a push that repeats an earlier one with the same key
        stores nothing and returns that push's answer (``replayed``); the same
        key with another fingerprint raises Unprocessable."""

    async def info(self, channel: str) -> ChannelInfo | None: ...

    async def delete(self, channel: str) -> bool: ...

    async def history(self, channel: str, after: str | None) -> History:
        """Retained messages after ``after`` (None: none, "0": all) and the missed flag."""

    async def attach(self, channel: str, cid: str) -> None:
        """Count a subscriber of ``channel`` as client ``cid``; raises Conflict when a
        one2one channel is held by another client."""

    async def detach(self, channel: str, cid: str) -> None: ...

    # v1.1 presence: called after attach and before detach, for each channel
    async def present(self, channel: str, client: Client, *, keep: bool) -> None:
        """``client`` subscribed to ``channel`` once more; ``keep``: its cid can come
        back, so its leave waits ``MARTD_HOLD`` seconds."""

    async def absent(self, channel: str, client: Client, *, keep: bool) -> None:
        """One subscription of ``client`` on ``channel`` ended."""

    async def clients(self, channel: str) -> list[Client]:
        """Who is on ``channel`` (empty when it has no presence), across processes."""

    async def healthy(self) -> bool: ...

    async def stats(self) -> dict[str, Any]: ...

