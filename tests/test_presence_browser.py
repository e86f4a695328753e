"""Presence in client.js and on the demo page, in Debian's Chromium (see test_browser).

Chromium only: presence is client.js code over transports test_browser already runs in both
engines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .test_browser import (  # noqa: F401  (fixtures)
    SiteServer,
    connected,
    open_page,
    push,
    serve,
)

pytestmark = pytest.mark.browser

WATCH = """
window.told = [];
["join", "leave"].forEach(function (name) {
  martd.on(name, function (d) { told.push([name, d.channel, d.cid, d.user]); });
});
"""


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_client_tells_joins_and_leaves_and_lists_who_is_here(
    chromium: Any,
    serve: Callable[..., SiteServer],  # noqa: F811
    transport: str,
) -> None:
    server = serve(hold=0.3)
    push(server, "room", "", presence="1")
    first = chromium.new_context()
    second = chromium.new_context()
    try:
        page = open_page(first, server, transport=transport)
        page.evaluate(WATCH + "listen('room')")
        connected(server, transport)
        other = open_page(second, server, transport=transport)
        other.evaluate("listen('room')")
        cid = other.evaluate("martd.cid")
        page.wait_for_function("window.told.length >= 1")
        assert page.evaluate("window.told") == [["join", "room", cid, None]]

        listed = page.evaluate(
            "martd.presence('room').then(function (list) {"
            " return list.map(function (c) { return [c.cid, c.user, c.transport]; }).sort(); })"
        )
        mine = page.evaluate("martd.cid")
        assert listed == sorted([[mine, None, transport], [cid, None, transport]])

        other.close()
        page.wait_for_function("window.told.length >= 2")
        assert page.evaluate("window.told")[1] == ["leave", "room", cid, None]
        # join/leave do not disturb the subscription: messages still arrive
        push(server, "room", "after", presence="1")
        page.wait_for_function("window.got.length >= 1")
    finally:
        second.close()
        first.close()


def test_client_presence_list_is_refused_without_server_rights(
    context: Any,
    serve: Callable[..., SiteServer],  # noqa: F811
) -> None:
    server = serve(allow="10.9.9.9")
    push(server, "room", "", presence="1")
    page = open_page(context, server)
    status = page.evaluate(
        "martd.presence('room').then(function () { return 'listed'; },"
        " function (e) { return e.status; })"
    )
    assert status == 403


def test_demo_page_shows_who_is_here(
    chromium: Any,
    serve: Callable[..., SiteServer],  # noqa: F811
) -> None:
    server = serve(hold=0.3)
    first = chromium.new_context()
    second = chromium.new_context()
    try:
        page = first.new_page()
        page.goto(f"{server.url}/demo")
        page.wait_for_selector("#status.open")
        mine = page.evaluate("martd.cid")
        page.wait_for_selector(f"#who li.you[data-cid='{mine}']")

        other = second.new_page()
        other.goto(f"{server.url}/demo")
        other.wait_for_selector("#status.open")
        theirs = other.evaluate("martd.cid")
        page.wait_for_selector(f"#who li[data-cid='{theirs}']")
        # the newcomer lists everyone who was already here
        other.wait_for_selector(f"#who li[data-cid='{mine}']")

        # a push from the demo keeps presence on
        page.fill("#message", "hello")
        page.click("#push")
        page.wait_for_selector("#messages li.message")

        other.close()
        page.wait_for_selector(f"#who li[data-cid='{theirs}']", state="detached")
        assert page.locator("#who li").count() == 1
    finally:
        second.close()
        first.close()
