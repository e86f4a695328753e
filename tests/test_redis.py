"""Several martd processes on one Redis behave as one server, and survive restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from martd_asgi.backends.base import Control, Event
from martd_asgi.backends.redis import RedisBackend
from martd_asgi.channels import Message, PushAttributes, etag_key
from martd_asgi.config import Settings
from martd_asgi.errors import Conflict, Unavailable

from .helpers import free_socket, redis_url, sse, wait_for
from .redis_servers import redis_servers

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

# Serves martd on a listening socket inherited from the test (no port race).
LAUNCH = """
import socket, sys, uvicorn
sock = socket.socket(fileno=int(sys.argv[1]))
uvicorn.Server(uvicorn.Config("martd_asgi:app", log_level="warning")).run(sockets=[sock])
"""


class Martd:
    """A martd in a process of its own (``uvicorn martd_asgi:app``), on a kept socket."""

    def __init__(self, env: dict[str, str], workers: int = 1) -> None:
        self.sock = free_socket()
        self.sock.listen(512)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.env = env
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Martd:
        env = {**os.environ, "MARTD_DEMO": "0", **self.env}
        fd = self.sock.fileno()
        if self.workers > 1:  # the command a user runs
            uvicorn = [sys.executable, "-m", "uvicorn", "martd_asgi:app", "--log-level", "warning"]
            args = [*uvicorn, "--workers", str(self.workers), "--fd", str(fd)]
        else:
            args = [sys.executable, "-c", LAUNCH, str(fd)]
        self.proc = subprocess.Popen(args, env=env, pass_fds=[fd])
        return self

    async def ready(self, timeout: float = 20.0) -> Martd:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            while True:
                assert self.proc is not None and self.proc.poll() is None, "martd exited"
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/healthz")).status_code == 200:
                        return self
                assert time.monotonic() < deadline, "martd did not become healthy"
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def backend() -> Iterator[str]:
    with redis_url() as url:
        yield url


@pytest.fixture
def martds(backend: str) -> Iterator[Any]:
    started: list[Martd] = []

    async def start(count: int, **env: str) -> list[Martd]:
        env = {"MARTD_BACKEND": backend, **env}
        procs = [Martd(env).start() for _ in range(count)]
        started.extend(procs)
        await asyncio.gather(*(p.ready() for p in procs))
        return procs

    yield start
    for proc in started:
        proc.stop()
        proc.sock.close()


@contextlib.asynccontextmanager
async def clients(*procs: Martd, **options: Any) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        out = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=p.url, timeout=10, **options)
            )
            for p in procs
        ]
        yield out


async def subscribers(client: httpx.AsyncClient, count: int, **kwargs: Any) -> None:
    async def ready() -> bool:
        stats = (await client.get("/stats", **kwargs)).json()
        return bool(stats["subscribers"] >= count)

    deadline = time.monotonic() + 5
    while not await ready():
        assert time.monotonic() < deadline, "subscribers did not register"
        await asyncio.sleep(0.02)


async def test_redis_push_on_one_process_reaches_subscribers_on_two_others(martds: Any) -> None:
    a, b, c = await martds(3)
    async with clients(a, b, c) as (ca, cb, cc), sse(cb, "/sub/room") as stream:
        poll = asyncio.ensure_future(cc.get("/sub/room"))
        await subscribers(cc, 1)
        answer = await ca.post("/pub/room", content="hello")
        assert answer.status_code == 201
        etag = answer.json()["etag"]
        assert await stream.next() == {"id": etag, "data": "hello"}
        polled = await asyncio.wait_for(poll, 5)
        assert polled.json()["channels"]["room"]["messages"] == [{"etag": etag, "data": "hello"}]
        assert (await cc.get("/pub/room")).json()["subscribers"] == 1


async def raw_pushes(proc: Martd, path: str, texts: list[str], conns: int = 20) -> list[str]:
    """POST each text on ``conns`` keep-alive connections at once; the etags, in any order.

    A bare HTTP/1.1 client: httpx costs more CPU per request than the server does.
    """
    port = int(proc.url.rsplit(":", 1)[1])
    todo = iter(texts)
    etags: list[str] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for text in todo:
                body = text.encode()
                head = f"POST {path} HTTP/1.1\r\nhost: martd\r\ncontent-length: {len(body)}\r\n\r\n"
                writer.write(head.encode() + body)
                status = await reader.readline()
                assert status.split()[1] in (b"200", b"201"), status
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                etags.append(json.loads(await reader.readexactly(length))["etag"])
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(worker() for _ in range(conns)))
    return etags


async def test_redis_concurrent_pushes_from_two_processes_keep_one_order(martds: Any) -> None:
    a, b = await martds(2, MARTD_SUB_BUFFER_MESSAGES="5000")
    async with (
        clients(a, b) as (ca, cb),
        sse(ca, "/sub/busy") as on_a,
        sse(cb, "/sub/busy") as on_b,
    ):
        await ca.post("/pub/busy?size=5000", content="")

        async def read(stream: Any) -> list[tuple[str, str]]:
            return [((e := await stream.next(10))["id"], e["data"]) for _ in range(2000)]

        async def come_and_go(client: httpx.AsyncClient) -> None:
            # subscribers joining mid-burst must not cost the others anything
            for _ in range(10):
                async with sse(client, "/sub/busy") as stream:
                    await stream.next(10)

        readers = [asyncio.ensure_future(read(s)) for s in (on_a, on_b)]
        churn = asyncio.ensure_future(come_and_go(ca))
        pushes = [
            raw_pushes(p, "/pub/busy?size=5000", [f"{n}{i}" for i in range(1000)])
            for p, n in ((a, "a"), (b, "b"))
        ]
        etags = [etag for batch in await asyncio.gather(*pushes) for etag in batch]
        got_a, got_b = await asyncio.gather(*readers)
        await churn
    assert len(set(etags)) == 2000
    assert got_a == got_b
    order = [etag for etag, _ in got_a]
    assert sorted(order, key=lambda e: etag_key(e) or (0, 0)) == order
    assert sorted(order) == sorted(etags)
    assert {data for _, data in got_a} == {f"{p}{i}" for p in "ab" for i in range(1000)}


async def test_redis_martd_restarted_keeps_its_channels(martds: Any) -> None:
    (a,) = await martds(1)
    async with clients(a) as (client,):
        first = (await client.post("/pub/kept?key=k&size=5", content="before")).json()["etag"]
    a.stop()
    a.start()
    await a.ready()
    async with clients(a) as (client,):
        info = (await client.get("/pub/kept")).json()
        assert (info["etag"], info["messages"], info["size"], info["has_key"]) == (
            first,
            1,
            5,
            True,
        )
        assert (await client.post("/pub/kept", content="no key")).status_code == 403
        second = (await client.post("/pub/kept?key=k&size=5", content="after")).json()["etag"]
        assert etag_key(second) > etag_key(first)  # type: ignore[operator]
        polled = (await client.get("/sub/kept", params={"etag": first})).json()
        assert polled["channels"]["kept"]["messages"] == [{"etag": second, "data": "after"}]


async def test_redis_over_a_unix_socket_serves_two_processes_as_one(martds: Any) -> None:
    with redis_servers() as servers:
        path = os.path.join(servers.directory, "redis.sock")
        servers.server("--unixsocket", path, "--unixsocketperm", "700")
        a, b = await martds(2, MARTD_BACKEND=f"unix://{path}?db=0&prefix=sock")
        async with clients(a, b) as (ca, cb), sse(cb, "/sub/local") as stream:
            answer = await ca.post("/pub/local", content="over the socket")
            assert answer.status_code == 201
            event = await stream.next(5)
            assert (event["id"], event["data"]) == (answer.json()["etag"], "over the socket")
            assert (await cb.get("/healthz")).json()["backend"] == "redis"
        keys = subprocess.run(
            ["redis-cli", "-s", path, "--scan", "--pattern", "sock:{local}:*"],
            capture_output=True,
            check=True,
            text=True,
            timeout=10,
        ).stdout.split()
        assert {"sock:{local}:h", "sock:{local}:s"} <= set(keys)  # the channel lives there


def test_redis_unix_socket_url_that_cannot_work_is_refused_at_start_up() -> None:
    refused = {
        "unix:///tmp/redis.sock?cluster=1": "cluster= and sentinel= need a redis://",
        "unix:///tmp/redis.sock?sentinel=main": "cluster= and sentinel= need a redis://",
        "unix://tmp/redis.sock": "a unix:// URL names the socket after three slashes",  # "tmp" would be taken for a host, and dropped
    }
    for url, reason in refused.items():
        with pytest.raises(ValueError, match=f"^backend: {reason}"):
            RedisBackend(url)
        with pytest.raises(ValueError, match=f"^backend \\(MARTD_BACKEND\\): {reason}"):
            Settings(backend=url)
    for url in ("unix:///tmp/redis.sock?cluster=0", "unix://:secret@/tmp/redis.sock?db=2"):
        Settings(backend=url)  # no error


async def test_redis_restarted_mid_stream_loses_nothing_acknowledged(martds: Any) -> None:
    with redis_servers() as servers:
        redis = servers.durable()
        a, b = await martds(2, MARTD_BACKEND=redis.url)
        acked: list[tuple[str, str]] = []
        failed: list[str] = []
        statuses: set[int] = set()
        async with clients(a, b) as (ca, cb), sse(cb, "/sub/live") as stream:

            async def publisher(stop: asyncio.Event) -> None:
                n = 0
                while not stop.is_set():
                    text = f"m{n}"
                    n += 1
                    try:
                        answer = await ca.post("/pub/live?size=1000", content=text)
                    except httpx.HTTPError:
                        failed.append(text)
                        continue
                    statuses.add(answer.status_code)
                    if answer.status_code in (200, 201):
                        acked.append((answer.json()["etag"], text))
                    else:
                        failed.append(text)
                        await asyncio.sleep(0.02)

            stop = asyncio.Event()
            pushing = asyncio.ensure_future(publisher(stop))
            await wait_for(lambda: len(acked) >= 20)
            redis.stop()
            await wait_for(lambda: 503 in statuses)
            assert (await ca.get("/healthz")).status_code == 503
            assert (await cb.get("/healthz")).status_code == 503
            redis.start()
            count = len(acked)
            await wait_for(lambda: len(acked) >= count + 20, timeout=15)
            stop.set()
            await pushing
            received: list[tuple[str, str]] = []
            wanted = {etag for etag, _ in acked}
            while not wanted <= {etag for etag, _ in received}:
                event = await stream.next(10)
                received.append((event["id"], event["data"]))
        etags = [etag for etag, _ in received]
        assert len(etags) == len(set(etags)), "a message was delivered twice"
        assert sorted(etags, key=lambda e: etag_key(e) or (0, 0)) == etags
        extra = {data for _, data in received} - {data for _, data in acked}
        assert extra <= set(failed)  # at most pushes whose answer was lost
        assert [m for m in received if m[0] in wanted] == acked


async def test_redis_key_and_one2one_hold_across_processes(martds: Any) -> None:
    secret = "s3cret-for-tests"
    a, b = await martds(2, MARTD_ALLOW="192.0.2.1", MARTD_SECRET=secret, MARTD_HOLD="1")
    server = {"authorization": f"Bearer {secret}"}
    async with clients(a, b) as (ca, cb):
        assert (await ca.post("/pub/k?key=sesame", content="x", headers=server)).status_code == 201
        assert (await cb.post("/pub/k", content="y", headers=server)).status_code == 403
        assert (await cb.post("/pub/k?key=wrong", content="y")).status_code == 403
        assert (await cb.post("/pub/k?key=sesame", content="y")).status_code == 200

        assert (await ca.post("/pub/o?one2one=1", content="x", headers=server)).status_code == 201
        async with sse(ca, "/sub/o?cid=holder1"):
            await subscribers(ca, 1, headers=server)
            taken = await cb.get("/sub/o?cid=other22", headers={"accept": "text/event-stream"})
            assert taken.status_code == 409
            own = await cb.get("/sub/o?cid=holder1&timeout=1")  # its own reconnect
            assert own.status_code == 200
        taken = await cb.get("/sub/o?cid=other22&timeout=1")
        assert taken.status_code == 409  # held for MARTD_HOLD after it left
        deadline = time.monotonic() + 5
        while (await cb.get("/sub/o?cid=other22&timeout=1")).status_code == 409:
            assert time.monotonic() < deadline, "the hold did not lapse"
            await asyncio.sleep(0.1)


async def test_redis_workers_act_as_one_server(backend: str) -> None:
    proc = Martd({"MARTD_BACKEND": backend}, workers=2).start()
    try:
        await proc.ready()
        async with contextlib.AsyncExitStack() as stack:
            # separate connections, likely spread over both workers
            conns = [
                await stack.enter_async_context(httpx.AsyncClient(base_url=proc.url, timeout=10))
                for _ in range(4)
            ]
            streams = [await stack.enter_async_context(sse(c, "/sub/w")) for c in conns]
            for i in range(3):
                answer = await conns[i].post("/pub/w", content=f"m{i}")
                assert answer.status_code in (200, 201)
            for stream in streams:
                assert [(await stream.next())["data"] for _ in range(3)] == ["m0", "m1", "m2"]
    finally:
        proc.stop()
        proc.sock.close()


async def test_redis_catch_up_delivers_the_gap_in_order_and_tells_what_was_evicted(
    backend: str,
) -> None:
    listener, pusher = RedisBackend(backend), RedisBackend(backend)
    events: list[Event] = []
    await pusher.start(lambda event: None)
    try:
        await listener.attach("gap", "reader")  # subscribed, but hears nothing yet
        for text in ("m1", "m2", "m3", "m4"):
            await pusher.publish("gap", text, PushAttributes(size=2), server=True)
        await listener.start(events.append)  # connects, and catches up first
        await wait_for(lambda: len(events) == 3)
        assert events[0] == Control("missed", "gap")
        assert [e.data for e in events[1:] if isinstance(e, Message)] == ["m3", "m4"]
        await pusher.publish("gap", "m5", PushAttributes(size=2), server=True)
        await wait_for(lambda: len(events) == 4)
        assert isinstance(events[3], Message) and events[3].data == "m5"
        await listener.detach("gap", "reader")
    finally:
        await listener.aclose()
        await pusher.aclose()


@contextlib.asynccontextmanager
async def started(*backends: RedisBackend) -> AsyncIterator[None]:
    try:
        for one in backends:
            await one.start(lambda event: None)
        yield
    finally:
        for one in backends:
            await one.aclose()


async def test_redis_channel_deleted_unheard_is_reported_after_reconnect() -> None:
    with redis_servers() as servers:
        url = servers.server().url  # of its own: the test cuts pub/sub connections
        listener, pusher = RedisBackend(url), RedisBackend(url)
        events: list[Event] = []

        def seen() -> list[tuple[str, str, str]]:
            return [
                ("message", e.channel, e.data)
                if isinstance(e, Message)
                else (e.kind, e.channel, "")
                for e in events
            ]

        async with started(pusher):
            for name in ("gone", "again", "kept"):
                await pusher.publish(name, "old", PushAttributes(), server=True)
                await listener.attach(name, "reader")  # subscribed, but hears nothing yet
            assert await pusher.delete("gone")
            assert await pusher.delete("again")
            await pusher.publish("again", "new", PushAttributes(), server=True)
            try:
                await listener.start(events.append)  # connects, and catches up first
                await wait_for(lambda: len(events) == 3)
                assert seen() == [
                    ("deleted", "gone", ""),
                    ("deleted", "again", ""),
                    ("message", "again", "new"),
                ]
                # A deletion heard as it happened is not told again after a reconnect.
                assert await pusher.delete("kept")
                await wait_for(lambda: len(events) == 4)
                cut = listener._fanout.reconnects
                await pusher._client.client_kill_filter(_type="pubsub")
                await wait_for(
                    lambda: listener._fanout.reconnects > cut and listener._fanout.listening
                )
                await pusher.publish("kept", "after", PushAttributes(), server=True)
                await wait_for(lambda: len(events) == 5)
                assert seen()[3:] == [("deleted", "kept", ""), ("message", "kept", "after")]
            finally:
                await listener.aclose()


async def test_redis_leases_renewed_while_subscribers_stay(backend: str) -> None:
    # Two processes with a 1 s lease: what the first holds must outlive the lease.
    first, second = RedisBackend(backend, lease=1.0, hold=0.3), RedisBackend(backend, lease=1.0)
    async with started(first, second):
        await first.publish("o", "x", PushAttributes(one2one=True), server=True)
        await first.attach("o", "holder")
        await first.publish("quiet", "x", PushAttributes(life=1), server=True)
        await first.attach("quiet", "c1")
        await first.attach("quiet", "c2")
        await asyncio.sleep(2.5)  # well past the lease and the message's life
        with pytest.raises(Conflict):  # 409 for an intruder on another process
            await second.attach("o", "intruder")
        held = await second.info("o")
        assert held is not None and held.subscribers == 1
        quiet = await second.info("quiet")  # subscribed, no messages: still there
        assert quiet is not None and (quiet.subscribers, quiet.messages) == (2, 0)
        for channel, cid in (("o", "holder"), ("quiet", "c1"), ("quiet", "c2")):
            await first.detach(channel, cid)
        assert await second.info("quiet") is None


async def test_redis_renewal_after_redis_lost_its_data_leaves_pushes_working(
    backend: str,
) -> None:
    one = RedisBackend(backend, lease=1.0)
    async with started(one):
        await one.publish("lost", "x", PushAttributes(), server=True)
        await one.attach("lost", "c")
        keys = [k for k in one._keys("lost") if await one._client.exists(k)]
        await one._client.delete(*keys)  # as after a Redis restart without persistence
        await one.renew()
        result = await one.publish("lost", "y", PushAttributes(), server=True)
        assert result.created and result.subscribers == 1
        await one.detach("lost", "c")


async def test_redis_wrong_typed_key_answers_503_and_is_logged(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    one = RedisBackend(backend, lease=1.0)
    async with started(one):
        await one.attach("w", "c")
        await one._client.set(one._keys("w")[3], "not a hash")  # the subscriber counts
        with pytest.raises(Unavailable):
            await one.publish("w", "x", PushAttributes(), server=True)
        assert any("WRONGTYPE" in r.getMessage() for r in caplog.records)
        caplog.clear()
        # the lease renewal fails on it too, and says so above debug level
        with caplog.at_level("WARNING", logger="martd.redis"):
            await wait_for(
                lambda: any("renewal" in r.getMessage() for r in caplog.records), timeout=3
            )
        await one._client.delete(one._keys("w")[3])
        await one.detach("w", "c")


async def test_redis_subscribers_arriving_together_are_counted_and_refused_as_one_by_one(
    backend: str,
) -> None:
    # Attaches of a channel in the same turn go to Redis as one script: a one2one
    # channel still lets the first through and refuses the others, and every
    # count and hold is as if they had come one by one.
    one, other = RedisBackend(backend), RedisBackend(backend)
    async with started(one, other):
        await one.publish("o", "x", PushAttributes(one2one=True), server=True)
        cids = ["first", "second", "third"]
        results = await asyncio.gather(
            *(one.attach("o", cid) for cid in cids), return_exceptions=True
        )
        assert results[0] is None
        assert [type(r) for r in results[1:]] == [Conflict, Conflict]
        with pytest.raises(Conflict):
            await other.attach("o", "elsewhere")
        held = await other.info("o")
        assert held is not None and held.subscribers == 1
        await one.publish("open", "x", PushAttributes(), server=True)
        await asyncio.gather(*(one.attach("open", f"c{i}") for i in range(20)))
        info = await other.info("open")
        assert info is not None and info.subscribers == 20
        # leaving together, and one coming back in the same turn
        await asyncio.gather(
            *(one.detach("open", f"c{i}") for i in range(20)), one.attach("open", "c0")
        )
        info = await other.info("open")
        assert info is not None and info.subscribers == 1
        await one.detach("open", "c0")
        await one.detach("o", "first")
        info = await other.info("open")
        assert info is not None and info.subscribers == 0


async def test_redis_history_reads_together_answer_as_alone(backend: str) -> None:
    one = RedisBackend(backend)
    async with started(one):
        etags = [
            (await one.publish("h", f"m{i}", PushAttributes(size=3), server=True)).etag
            for i in range(5)
        ]
        asks: list[str | None] = [None, "0", etags[0], etags[2], etags[4], "1-0", etags[2]]
        alone = [await one.history("h", after) for after in asks]
        together = await asyncio.gather(*(one.history("h", after) for after in asks))

        def seen(found: list[Any]) -> list[Any]:
            return [
                ([(m.etag, m.data) for m in h.messages], h.missed, h.last_etag, h.exists)
                for h in found
            ]

        assert seen(list(together)) == seen(alone)
        assert [m.data for m in alone[3].messages] == ["m3", "m4"] and not alone[3].missed
        assert alone[2].missed  # its message was evicted (size 3)
        missing = await asyncio.gather(one.history("nothing", "0"), one.history("nothing", None))
        assert [(h.exists, h.missed) for h in missing] == [(False, False), (False, False)]


async def test_redis_pushes_of_one_turn_share_a_connection_and_each_gets_its_own_answer(
    backend: str,
) -> None:
    one = RedisBackend(backend)
    async with started(one):
        results = await asyncio.gather(
            *(
                one.publish(f"turn{i % 3}", f"m{i}", PushAttributes(size=20), server=True)
                for i in range(60)
            )
        )
        for i, result in enumerate(results):
            assert result.channel == f"turn{i % 3}"
        for c in range(3):
            etags = [r.etag for i, r in enumerate(results) if i % 3 == c]
            keys = [etag_key(e) for e in etags]
            assert keys == sorted(keys) and len(set(etags)) == 20  # in call order, none twice
            history = await one.history(f"turn{c}", "0")
            assert [m.data for m in history.messages] == [f"m{i}" for i in range(c, 60, 3)]
            await one.delete(f"turn{c}")


async def test_redis_calls_of_a_busy_turn_reach_redis_in_one_write(backend: str) -> None:
    one = RedisBackend(backend)
    async with started(one):
        await one.publish("batch", "first", PushAttributes(size=50), server=True)
        wire = one._line._wire if one._line is not None else None
        assert wire is not None and wire.transport is not None, "no pipelined script connection"
        writes: list[bytes] = []
        real_write = wire.transport.write

        def counted(data: bytes) -> None:
            writes.append(data)
            real_write(data)

        wire.transport.write = counted  # type: ignore[method-assign]

        sha = one._publish.sha.encode()

        async def turn(count: int) -> list[int]:
            """The pushes in each write of one turn of ``count`` pushes."""
            writes.clear()
            pushes = (
                one.publish("batch", f"m{i}", PushAttributes(size=50), server=True)
                for i in range(count)
            )
            await asyncio.gather(*pushes)
            return [w.count(sha) for w in writes if sha in w]

        # after a calm turn, the first call goes at once and the rest together
        assert await turn(10) == [1, 9]
        # after a busy turn, all of a turn's calls go together: one batch for Redis
        assert await turn(10) == [10]
        assert await turn(1) == [1]
        history = await one.history("batch", "0")
        assert len(history.messages) == 22
        await one.delete("batch")


async def test_redis_that_stops_answering_fails_pushes_in_time_then_serves_again() -> None:
    with redis_servers() as servers:
        server = servers.server()
        one = RedisBackend(server.url, timeout=0.5)
        async with started(one):
            await one.publish("stall", "before", PushAttributes(), server=True)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                with pytest.raises(Unavailable):
                    await one.publish("stall", "lost?", PushAttributes(), server=True)
                assert time.monotonic() - t0 < 3.0
            finally:
                server.proc.send_signal(signal.SIGCONT)
            result = await one.publish("stall", "after", PushAttributes(), server=True)
            history = await one.history("stall", "0")
            assert history.messages[-1].data == "after" and history.last_etag == result.etag
