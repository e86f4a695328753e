"""GET /sub/{channels}: where to start, missed, long-poll, SSE and JSONP framing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest

from .helpers import SSE, ServerThread, sse

pytestmark = pytest.mark.anyio


async def push(client: httpx.AsyncClient, channel: str, data: str, query: str = "") -> str:
    answer = await client.post(f"/pub/{channel}{query}", content=data)
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()["etag"])


def datas(poll: dict) -> list[str]:  # type: ignore[type-arg]
    return [m["data"] for m in poll["messages"]]


# ------------------------------------------------------------------ long-poll


async def test_longpoll_waits_then_answers_with_the_message(client: httpx.AsyncClient) -> None:
    poll = asyncio.create_task(client.get("/sub/lp"))
    await asyncio.sleep(0.2)
    assert not poll.done()
    etag = await push(client, "lp", "hello")
    answer = await asyncio.wait_for(poll, 5)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["cache-control"].startswith("no-cache")
    assert answer.headers["x-accel-buffering"] == "no"
    assert answer.json() == {
        "channels": {
            "lp": {"etag": etag, "messages": [{"etag": etag, "data": "hello"}], "missed": False}
        }
    }


async def test_longpoll_times_out_with_every_channel_and_where_to_resume(
    client: httpx.AsyncClient,
) -> None:
    started = time.monotonic()
    answer = await client.get("/sub/idle?timeout=1")
    assert answer.status_code == 200
    assert answer.json() == {"channels": {"idle": {"etag": "0", "messages": [], "missed": False}}}
    assert answer.headers["etag"] == '"0"'
    assert 0.9 <= time.monotonic() - started < 3
    etag = await push(client, "held", "kept")
    answer = await client.get("/sub/idle,held?timeout=1")
    assert answer.json() == {
        "channels": {
            "idle": {"etag": "0", "messages": [], "missed": False},
            "held": {"etag": etag, "messages": [], "missed": False},
        }
    }


async def test_longpoll_timeout_is_clamped(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(poll_timeout=1)
    async with httpx.AsyncClient(base_url=server.url) as client:
        started = time.monotonic()
        answer = await client.get("/sub/idle?timeout=500")
        assert answer.json() == {
            "channels": {"idle": {"etag": "0", "messages": [], "missed": False}}
        }
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("value", ["0", "0.5", "abc", "-3", "nan"])
async def test_longpoll_rejects_bad_timeout(asgi_client: httpx.AsyncClient, value: str) -> None:
    answer = await asgi_client.get(f"/sub/x?timeout={value}")
    assert answer.status_code == 400 and answer.json()["error"].startswith("timeout")


async def test_longpoll_resumes_with_each_etag_source(client: httpx.AsyncClient) -> None:
    e1 = await push(client, "src", "one")
    await push(client, "src", "two")
    for how in (
        {"params": {"etag": e1}},
        {"params": {"last_event_id": e1}},
        {"headers": {"if-none-match": f'"{e1}"'}},
        {"headers": {"if-none-match": f'W/"{e1}"'}},
        {"headers": {"last-event-id": e1}},
    ):
        answer = await client.get("/sub/src", **how)  # type: ignore[arg-type]
        assert datas(answer.json()["channels"]["src"]) == ["two"], how


async def test_longpoll_etag_precedence(client: httpx.AsyncClient) -> None:
    e1 = await push(client, "prec", "one")
    e2 = await push(client, "prec", "two")
    await push(client, "prec", "three")
    answer = await client.get(
        f"/sub/prec?etag={e1}", headers={"last-event-id": e2, "if-none-match": '"0"'}
    )
    assert datas(answer.json()["channels"]["prec"]) == ["three"]
    answer = await client.get(f"/sub/prec?etag={e2}", headers={"if-none-match": '"0"'})
    assert datas(answer.json()["channels"]["prec"]) == ["three"]


async def test_longpoll_etag_zero_gets_everything_retained(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await push(client, "all", f"m{i}")
    poll = (await client.get("/sub/all?etag=0")).json()["channels"]["all"]
    assert datas(poll) == ["m0", "m1", "m2"] and poll["missed"] is False


async def test_longpoll_loop_loses_nothing(client: httpx.AsyncClient) -> None:
    etag = "0"
    got: list[str] = []

    async def poller() -> None:
        nonlocal etag
        while len(got) < 30:
            answer = (await client.get("/sub/loop", params={"etag": etag})).json()
            for group in answer["channels"].values():
                got.extend(datas(group))
                etag = group["etag"]

    task = asyncio.create_task(poller())
    for i in range(30):
        await push(client, "loop", str(i), "?size=100")
        if i % 7 == 0:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(task, 10)
    assert got == [str(i) for i in range(30)]


async def test_longpoll_missed_when_evicted(client: httpx.AsyncClient) -> None:
    first = await push(client, "evict", "m0", "?size=2")
    for i in range(1, 4):
        await push(client, "evict", f"m{i}", "?size=2")
    poll = (await client.get("/sub/evict", params={"etag": first})).json()["channels"]["evict"]
    assert poll["missed"] is True and datas(poll) == ["m2", "m3"]


async def test_longpoll_not_missed_when_resuming_from_the_last_evicted(
    client: httpx.AsyncClient,
) -> None:
    await push(client, "edge", "m0", "?size=2")
    second = await push(client, "edge", "m1", "?size=2")
    await push(client, "edge", "m2", "?size=2")
    await push(client, "edge", "m3", "?size=2")  # evicts m1: the subscriber had it
    poll = (await client.get("/sub/edge", params={"etag": second})).json()["channels"]["edge"]
    assert poll["missed"] is False and datas(poll) == ["m2", "m3"]


async def test_longpoll_unknown_etag_is_missed_with_everything(client: httpx.AsyncClient) -> None:
    await push(client, "foreign", "a")
    await push(client, "foreign", "b")
    for etag in ("1-0", "zzz", "99999999999999-5"):
        poll = (await client.get("/sub/foreign", params={"etag": etag})).json()
        assert poll["channels"]["foreign"]["missed"] is True, etag
        assert datas(poll["channels"]["foreign"]) == ["a", "b"]


async def test_longpoll_missed_when_all_expired(client: httpx.AsyncClient) -> None:
    first = await push(client, "lapse", "a", "?life=60")
    await push(client, "lapse", "b", "?life=1")
    await push(client, "keeper", "k")
    async with sse(client, "/sub/lapse"):  # keeps the channel alive with no messages
        await asyncio.sleep(1.3)
        poll = (await client.get("/sub/lapse", params={"etag": first})).json()
        assert poll["channels"]["lapse"]["missed"] is True
        assert datas(poll["channels"]["lapse"]) == []


async def test_longpoll_nonexistent_channel_waits_and_marks_first_delivery_missed(
    client: httpx.AsyncClient,
) -> None:
    poll = asyncio.create_task(client.get("/sub/later?etag=123-4"))
    await asyncio.sleep(0.3)
    assert not poll.done()
    etag = await push(client, "later", "first")
    group = (await asyncio.wait_for(poll, 5)).json()["channels"]["later"]
    assert group == {"etag": etag, "messages": [{"etag": etag, "data": "first"}], "missed": True}


@pytest.mark.parametrize(
    ("query", "headers", "word"),
    [
        ("etag=a%20b", {}, "etag"),
        ("etag=" + "e" * 65, {}, "etag"),
        ("", {"last-event-id": "bad etag!"}, "Last-Event-ID"),
        ("", {"if-none-match": '"no spaces allowed"'}, "If-None-Match"),
    ],
)
async def test_subscribe_rejects_malformed_etags(
    asgi_client: httpx.AsyncClient, query: str, headers: dict[str, str], word: str
) -> None:
    answer = await asgi_client.get(f"/sub/x?{query}", headers=headers)
    assert answer.status_code == 400 and word in answer.json()["error"]


@pytest.mark.parametrize(
    ("path", "word"),
    [
        ("/sub/a,a", "twice"),
        ("/sub/a,,b", "channel"),
        ("/sub/martd", "reserved"),
        ("/sub/a%20b", "channel"),
    ],
)
async def test_subscribe_rejects_bad_channel_lists(
    asgi_client: httpx.AsyncClient, path: str, word: str
) -> None:
    answer = await asgi_client.get(path)
    assert answer.status_code == 400 and word in answer.json()["error"]


async def test_subscribe_channel_count_limit(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(max_channels=3)
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/sub/a,b,c,d")).status_code == 400
        assert (await client.get("/sub/a,b,c?timeout=1")).status_code == 200
    default = make_server()
    names = ",".join(f"c{i}" for i in range(65))
    async with httpx.AsyncClient(base_url=default.url) as client:
        assert (await client.get(f"/sub/{names}")).status_code == 400


async def test_longpoll_several_channels_with_positional_etags(client: httpx.AsyncClient) -> None:
    a1 = await push(client, "pa", "a1")
    await push(client, "pa", "a2")
    await push(client, "pb", "b1")
    answer = await client.get("/sub/pa,pb,pc", params={"etag": f"{a1},0,"})
    groups = answer.json()["channels"]
    assert list(groups) == ["pa", "pb", "pc"]
    assert datas(groups["pa"]) == ["a2"] and datas(groups["pb"]) == ["b1"]
    assert groups["pc"] == {"etag": "0", "messages": [], "missed": False}
    wrong = await client.get("/sub/pa,pb", params={"etag": "0"})
    assert wrong.status_code == 400 and "etag" in wrong.json()["error"]


async def test_subscriber_counted_while_waiting(client: httpx.AsyncClient) -> None:
    await push(client, "count", "x")
    poll = asyncio.create_task(client.get("/sub/count?timeout=5"))
    deadline = time.monotonic() + 5
    while (await client.get("/pub/count")).json()["subscribers"] != 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    etag = await push(client, "count", "y")
    assert (await asyncio.wait_for(poll, 5)).json()["channels"]["count"]["etag"] == etag


# ------------------------------------------------------------------------ SSE


async def test_sse_headers_retry_and_delivery(client: httpx.AsyncClient) -> None:
    async with sse(client, "/sub/s1") as stream:
        headers = stream.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"].startswith("no-cache")
        assert headers["x-accel-buffering"] == "no"
        etag = await push(client, "s1", "line one\nline two\r\nline three")
        event = await stream.next()
        assert stream.retry is not None
        assert event == {"id": etag, "data": "line one\nline two\nline three"}
        unicode = await push(client, "s1", "zürich ☃ 東京 \u2028")
        assert await stream.next() == {"id": unicode, "data": "zürich ☃ 東京 \u2028"}


async def test_sse_query_transport_and_history(client: httpx.AsyncClient) -> None:
    e0 = await push(client, "s2", "old")
    e1 = await push(client, "s2", "new")
    async with client.stream("GET", f"/sub/s2?transport=sse&etag={e0}") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = SSE(response)
        assert await stream.next() == {"id": e1, "data": "new"}


async def test_sse_keepalive_comments(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(ping=0.2)
    async with httpx.AsyncClient(base_url=server.url) as client:
        async with client.stream("GET", "/sub/ka", headers={"accept": "text/event-stream"}) as r:
            seen = b""
            async with asyncio.timeout(3):
                async for chunk in r.aiter_raw():
                    seen += chunk
                    if seen.count(b":\n\n") >= 2:
                        break
            assert seen.startswith(b"retry: ")


async def test_sse_missed_event_then_messages(client: httpx.AsyncClient) -> None:
    first = await push(client, "s3", "m0", "?size=1")
    last = await push(client, "s3", "m1", "?size=1")
    await push(client, "s3", "m2", "?size=1")
    async with sse(client, "/sub/s3", headers={"last-event-id": first}) as stream:
        missed = await stream.next()
        assert missed["event"] == "martd"
        assert json.loads(missed["data"]) == {"type": "missed", "channel": "s3"}
        event = await stream.next()
        assert event["data"] == "m2" and event["id"] != last


async def test_sse_several_channels_named_events_and_compound_ids(
    client: httpx.AsyncClient,
) -> None:
    a0 = await push(client, "ma", "a0")
    async with sse(client, "/sub/ma,mb") as stream:
        b1 = await push(client, "mb", "b1")
        event = await stream.next()
        assert event == {"event": "mb", "id": f"{a0},{b1}", "data": "b1"}
        a1 = await push(client, "ma", "a1")
        event = await stream.next()
        assert event == {"event": "ma", "id": f"{a1},{b1}", "data": "a1"}
        resume = event["id"]
    # pushed while disconnected, then a reconnect with Last-Event-ID resumes both
    a2 = await push(client, "ma", "a2")
    b2 = await push(client, "mb", "b2")
    async with sse(client, "/sub/ma,mb", headers={"last-event-id": resume}) as stream:
        got = [await stream.next(), await stream.next()]
    assert {(e["event"], e["data"]) for e in got} == {("ma", "a2"), ("mb", "b2")}
    assert got[-1]["id"] in (f"{a2},{b2}",)


async def test_sse_subscription_begins_before_headers(client: httpx.AsyncClient) -> None:
    for i in range(10):
        async with sse(client, "/sub/race") as stream:
            etag = await push(client, "race", f"r{i}")
            assert (await stream.next())["id"] == etag


async def test_sse_push_during_connect_delivered_exactly_once(client: httpx.AsyncClient) -> None:
    total = 60

    async def subscriber(start_after: float) -> list[str]:
        await asyncio.sleep(start_after)
        got: list[str] = []
        async with sse(client, "/sub/storm?etag=0") as stream:
            while len(got) < total:
                got.append((await stream.next(timeout=10))["data"])
        return got

    readers = [asyncio.create_task(subscriber(i * 0.01)) for i in range(15)]
    for i in range(total):
        await push(client, "storm", str(i), "?size=100")
        await asyncio.sleep(0.002)
    for got in await asyncio.gather(*readers):
        assert got == [str(i) for i in range(total)]


async def test_sse_deleted_channel_tells_and_closes(client: httpx.AsyncClient) -> None:
    await push(client, "doomed", "x")
    async with sse(client, "/sub/doomed") as stream:
        await client.delete("/pub/doomed")
        event = await stream.next()
        assert event["event"] == "martd"
        assert json.loads(event["data"]) == {"type": "deleted", "channel": "doomed"}
        with pytest.raises(EOFError):
            await stream.next()


async def test_longpoll_deleted_channel_answers_410(client: httpx.AsyncClient) -> None:
    await push(client, "doomed2", "x")
    poll = asyncio.create_task(client.get("/sub/doomed2"))
    await asyncio.sleep(0.2)
    await client.delete("/pub/doomed2")
    answer = await asyncio.wait_for(poll, 5)
    assert answer.status_code == 410
    body = answer.json()
    assert body["type"] == "deleted" and body["channel"] == "doomed2" and body["error"]


# ---------------------------------------------------------------------- JSONP


async def test_jsonp_wraps_the_long_poll_answer(client: httpx.AsyncClient) -> None:
    etag = await push(client, "jp", "</script><b>\u2028")
    answer = await client.get("/sub/jp?etag=0&callback=window.cb_1")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/javascript")
    assert answer.headers["x-content-type-options"] == "nosniff"
    text = answer.text
    assert text.startswith("window.cb_1(") and text.endswith(");")
    assert "\u2028" not in text
    body = json.loads(text[len("window.cb_1(") : -2])
    assert body["channels"]["jp"]["messages"] == [{"etag": etag, "data": "</script><b>\u2028"}]


async def test_jsonp_bad_callback_is_json_400(asgi_client: httpx.AsyncClient) -> None:
    for name in ("alert(1)", "1abc", "a" * 65, "a-b"):
        answer = await asgi_client.get("/sub/jp", params={"callback": name})
        assert answer.status_code == 400
        assert answer.headers["content-type"].startswith("application/json")
        assert "callback" in answer.json()["error"]


async def test_jsonp_other_errors_are_200_with_status(client: httpx.AsyncClient) -> None:
    answer = await client.get("/sub/a,a?callback=cb")
    assert answer.status_code == 200
    body = json.loads(answer.text[3:-2])
    assert body["status"] == 400 and "twice" in body["error"]
    await push(client, "jdel", "x")
    poll = asyncio.create_task(client.get("/sub/jdel?callback=cb"))
    await asyncio.sleep(0.2)
    await client.delete("/pub/jdel")
    answer = await asyncio.wait_for(poll, 5)
    assert answer.status_code == 200
    body = json.loads(answer.text[3:-2])
    assert body["status"] == 410 and body["type"] == "deleted"


async def test_jsonp_transport_needs_callback(asgi_client: httpx.AsyncClient) -> None:
    answer = await asgi_client.get("/sub/x?transport=jsonp")
    assert answer.status_code == 400 and "callback" in answer.json()["error"]
    answer = await asgi_client.get("/sub/x?transport=carrier-pigeon")
    assert answer.status_code == 400 and "transport" in answer.json()["error"]


async def test_sse_several_channels_ids_never_skip_history_not_yet_sent(
    client: httpx.AsyncClient,
) -> None:
    await push(client, "ha", "x1")
    await push(client, "hb", "y1")
    await push(client, "hb", "y2")
    async with sse(client, "/sub/ha,hb?etag=0,0") as stream:
        first = await stream.next()
    assert (first["event"], first["data"]) == ("ha", "x1")
    # reconnecting from the first event's id must still bring hb's history
    async with sse(client, "/sub/ha,hb", headers={"last-event-id": first["id"]}) as stream:
        got = [await stream.next(), await stream.next()]
    assert [(e["event"], e["data"]) for e in got] == [("hb", "y1"), ("hb", "y2")]


async def test_longpoll_etag_is_the_channels_newest_after_an_empty_push(
    client: httpx.AsyncClient,
) -> None:
    await push(client, "newest", "m1")
    empty = await push(client, "newest", "")
    group = (await client.get("/sub/newest?etag=0")).json()["channels"]["newest"]
    assert datas(group) == ["m1"] and group["etag"] == empty
    # resuming from it waits for what comes next
    poll = asyncio.create_task(client.get("/sub/newest", params={"etag": group["etag"]}))
    await asyncio.sleep(0.2)
    assert not poll.done()
    etag = await push(client, "newest", "m2")
    assert (await asyncio.wait_for(poll, 5)).json()["channels"]["newest"]["etag"] == etag
