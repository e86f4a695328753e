"""martd_asgi.client_subscription (what `martd sub` runs): resuming after the connection is cut."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from martd_asgi.client_subscription import Delivery, Subscription

from .helpers import ServerThread


class Relay:
    """A TCP relay in front of a server; the test cuts its connections and holds new ones."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open = threading.Event()
        self.open.set()
        self.sockets: list[socket.socket] = []
        self.held = 0  # connections that waited for release()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        if not self.open.is_set():
            self.held += 1
        if not self.open.wait(10):
            client.close()
            return
        server = socket.create_connection(("127.0.0.1", self.target))
        with self.lock:
            self.sockets += [client, server]
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Drop every connection; new ones wait until ``release()``."""
        self.open.clear()
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self.sockets.clear()

    def release(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def relay(server: ServerThread) -> Iterator[Relay]:
    front = Relay(server.port)
    front.url += server.url.removeprefix(f"http://127.0.0.1:{server.port}")  # /martd when mounted
    yield front
    front.close()


def listen(subscription: Subscription) -> queue.Queue[Delivery]:
    got: queue.Queue[Delivery] = queue.Queue()

    def run() -> None:
        for delivery in subscription:
            got.put(delivery)

    threading.Thread(target=run, daemon=True).start()
    return got


def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.mark.parametrize("transport", ["sse", "longpoll"])
def test_subscription_resumes_from_its_last_etag_after_a_cut(
    server: ServerThread, relay: Relay, transport: str
) -> None:
    notices: list[str] = []
    subscription = Subscription(
        relay.url, ["resume"], transport=transport, on_notice=notices.append
    )  # type: ignore[arg-type]
    got = listen(subscription)
    try:
        wait_until(lambda: any("listening" in n for n in notices) or transport == "longpoll")
        wait_until(lambda: httpx.get(f"{server.url}/stats").json()["subscribers"] == 1)
        first = httpx.post(f"{server.url}/pub/resume", content="one").json()
        assert got.get(timeout=5) == Delivery("resume", first["etag"], "one")

        relay.cut()
        # Pushed while the subscriber is away: it must get both on its return, once each.
        second = httpx.post(f"{server.url}/pub/resume", content="two").json()
        third = httpx.post(f"{server.url}/pub/resume", content="three").json()
        # Its next request is either refused (a notice) or held by the relay.
        wait_until(lambda: relay.held > 0 or any("reconnecting" in n for n in notices))
        relay.release()
        assert got.get(timeout=10) == Delivery("resume", second["etag"], "two")
        assert got.get(timeout=5) == Delivery("resume", third["etag"], "three")
        assert got.empty()
    finally:
        subscription.close()
        relay.cut()


@pytest.mark.parametrize("etag", ["0", "0,0,0"])
def test_subscription_etags_need_one_place_per_channel(etag: str) -> None:
    with pytest.raises(ValueError, match="one place per channel"):
        Subscription("http://127.0.0.1:1/martd", ["a", "b"], etag=etag)
