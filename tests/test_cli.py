"""The `martd` command as a user runs it: real processes, real servers."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from martd_asgi import create_app
from martd_asgi.devcert import dev_certificate

from .helpers import ServerThread, mounted_app, redis_url, running
from .serving import Served, ca_context, free_port, martd_process, martd_serve, run_martd


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with martd_serve(tmp=tmp_path_factory.mktemp("cli")) as server:
        yield server


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_pub_then_sub_from_etag_0_prints_the_message(served: Served) -> None:
    pushed = run_martd("pub", "cli.first", "hello from the shell", "--url", served.url)
    assert pushed.returncode == 0, pushed.stderr
    # martd's answer as the server sent it, one line, no fields of the client's own.
    assert pushed.stdout.count("\n") == 1
    answer = json.loads(pushed.stdout)
    assert set(answer) == {"channel", "etag", "subscribers", "messages"}
    assert answer["channel"] == "cli.first" and answer["messages"] == 1
    assert answer["etag"] == httpx.get(f"{served.url}/pub/cli.first").json()["etag"]

    got = run_martd("sub", "cli.first", "--etag", "0", "--count", "1", "--url", served.url)
    assert got.returncode == 0, got.stderr
    assert got.stdout == "hello from the shell\n"

    got = run_martd(
        "sub",
        "cli.first",
        "--etag",
        "0",
        "--count",
        "1",
        "--json",
        "--transport",
        "longpoll",
        "--url",
        served.url,
    )
    assert json.loads(got.stdout) == {
        "channel": "cli.first",
        "etag": answer["etag"],
        "data": "hello from the shell",
    }


def test_cli_pub_event_and_type_then_sub_json_shows_them(served: Served) -> None:
    args = ["--event", "update", "--type", "application/json", "--url", served.url]
    pushed = run_martd("pub", "cli.typed", '{"n":1}', *args)
    assert pushed.returncode == 0, pushed.stderr
    etag = json.loads(pushed.stdout)["etag"]
    for transport in ("longpoll", "sse"):
        got = run_martd(
            "sub", "cli.typed", "--etag", "0", "--count", "1", "--json",
            "--transport", transport, "--url", served.url,
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        line = json.loads(got.stdout)
        assert (line["etag"], line["data"], line["event"]) == (etag, '{"n":1}', "update")
        if transport == "longpoll":  # plain SSE carries the event name only
            assert line["type"] == "application/json"
    bad = one_line_error(run_martd("pub", "cli.typed", "x", "--event", "a b", "--url", served.url))
    assert bad.startswith("martd: 400: event")


def test_cli_sub_takes_one_etag_place_per_channel_in_their_order(served: Served) -> None:
    def pub(channel: str, data: str) -> str:
        pushed = run_martd("pub", channel, data, "--url", served.url)
        assert pushed.returncode == 0, pushed.stderr
        return str(json.loads(pushed.stdout)["etag"])

    after = pub("cli.pa", "pa1")
    pub("cli.pa", "pa2")
    pub("cli.pb", "pb1")

    def sub(etag: str, count: int) -> list[str]:
        got = run_martd(
            "sub", "cli.pa,cli.pb", "--etag", etag, "--count", str(count), "--url", served.url
        )
        assert got.returncode == 0, got.stderr
        return got.stdout.splitlines()

    # cli.pa resumes after its first message, cli.pb starts from everything retained.
    assert sorted(sub(f"{after},0", 2)) == ["cli.pa: pa2", "cli.pb: pb1"]
    # An empty place: that channel has no etag (only new messages); the other from 0.
    assert sub(",0", 1) == ["cli.pb: pb1"]
    assert sub("0,", 1) == ["cli.pa: pa1"]


def test_cli_pub_reads_stdin_and_sets_attributes(served: Served) -> None:
    pushed = run_martd(
        "pub",
        "cli.stdin",
        "-",
        "--size",
        "2",
        "--url",
        served.url,
        input=b'{"multi": "line"}\nsecond line',
    )
    assert pushed.returncode == 0, pushed.stderr
    info = httpx.get(f"{served.url}/pub/cli.stdin").json()
    assert info["size"] == 2
    got = run_martd(
        "sub", "cli.stdin", "--etag", "0", "--count", "1", "--json", "--url", served.url
    )
    assert json.loads(got.stdout)["data"] == '{"multi": "line"}\nsecond line'


def test_cli_sub_prints_each_message_as_it_arrives(served: Served) -> None:
    with martd_process("sub", "cli.live,cli.other", "--url", served.url) as process:
        assert process.stderr is not None and process.stdout is not None
        assert "listening" in process.stderr.readline()
        deadline = time.monotonic() + 10
        while httpx.get(f"{served.origin}/martd/stats").json().get("subscribers", 0) < 1:
            assert time.monotonic() < deadline, "sub did not connect"
            time.sleep(0.02)
        httpx.post(f"{served.url}/pub/cli.live", content="one")
        assert process.stdout.readline() == "cli.live: one\n"
        httpx.post(f"{served.url}/pub/cli.other", content="two")
        assert process.stdout.readline() == "cli.other: two\n"
        # The channel is dropped (its stream ends): sub reconnects on its own.
        httpx.delete(f"{served.url}/pub/cli.live")
        assert "deleted" in process.stderr.readline()
        deadline = time.monotonic() + 10
        while True:
            httpx.post(f"{served.url}/pub/cli.other", content="after")
            line = process.stdout.readline()
            if line == "cli.other: after\n":
                break
            assert time.monotonic() < deadline
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 130
        assert "Traceback" not in process.stderr.read()


def test_cli_sub_takes_sigint_in_a_test_run_started_in_the_background(served: Served) -> None:
    # A non-interactive shell starts background jobs with SIGINT ignored, and
    # children inherit that; the suite must still reach `martd sub` with it.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with martd_process("sub", "cli.bg", "--url", served.url) as process:
            assert process.stderr is not None
            assert "listening" in process.stderr.readline()
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=10) == 130
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    "args, says",
    [
        (["pub", "bad name!", "x"], "channel"),
        (["sub", "ok,martd"], "channel"),
        (["pub", "ch", "x", "--url", "ftp://nowhere"], "--url"),
        (["sub", "ch", "--etag", "not valid!"], "--etag"),
        (["sub", "a,b", "--etag", "0"], "--etag"),
        (["sub", "a,b", "--etag", "0,0,0"], "--etag"),
        (["pub", "ch", "x", "--size", "many"], "--size"),
        (["serve", "--port", "abc"], "'abc' is not a port number (0 to 65535)"),
        (["serve", "--workers", "2"], "redis"),
        # Refused before any worker starts (each would fail, and be started again).
        (
            ["serve", "--workers", "2", "--backend", "unix:///tmp/r.sock?cluster=1"],
            "backend (MARTD_BACKEND): cluster= and sentinel= need a redis:// or rediss:// URL",
        ),
        (
            ["serve", "--workers", "2", "--backend", "redis://127.0.0.1:abc/0"],
            "backend: Port could not be cast to integer",
        ),
        (["serve", "--upstream", "localhost:3000"], "--upstream"),
        (["serve", "--prefix", "martd"], "--prefix"),
        (["token"], "--secret"),
        (["token", "--secret", "s"], "--publish"),
    ],
)
def test_cli_bad_input_is_one_line_and_non_zero(args: list[str], says: str) -> None:
    line = one_line_error(run_martd(*args, MARTD_BACKEND="memory"))
    assert says in line


@pytest.mark.parametrize(
    ("options", "option", "says"),
    [
        ({"workers": 0}, "workers", "at least 1"),
        ({"prefix": "martd"}, "prefix", "must be a path like /martd"),
        ({"upstream": "localhost:3000"}, "upstream", "http:// or https://"),
        ({"workers": 2, "backend": "memory"}, None, "needs a shared backend"),
        ({"certfile": "cert.pem"}, None, "go together"),
    ],
)
def test_serve_from_python_raises_setting_errors_that_name_the_option(
    options: dict[str, Any], option: str | None, says: str
) -> None:
    from martd_asgi.errors import ServeError, SettingError
    from martd_asgi.serve import build_config

    with pytest.raises(SettingError) as raised:
        build_config(**options)
    assert raised.value.option == option
    assert says in raised.value.message
    assert isinstance(raised.value, ServeError) and isinstance(raised.value, ValueError)


def test_serve_from_python_on_a_port_in_use_raises_start_error() -> None:
    from martd_asgi.errors import StartError
    from martd_asgi.serve import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(StartError, match=r"cannot listen on 127\.0\.0\.1"):
            serve(port=taken.getsockname()[1], backend="memory")


def test_cli_server_down_is_one_line_and_non_zero() -> None:
    url = f"http://127.0.0.1:{free_port()}/martd"
    assert "cannot reach" in one_line_error(run_martd("pub", "ch", "x", "--url", url))
    assert "cannot reach" in one_line_error(run_martd("sub", "ch", "--url", url))


def test_cli_refused_push_is_one_line_and_non_zero(served: Served) -> None:
    assert run_martd("pub", "cli.keyed", "x", "--key", "right", "--url", served.url).returncode == 0
    line = one_line_error(run_martd("pub", "cli.keyed", "y", "--key", "wrong", "--url", served.url))
    assert line.startswith("martd: 403")
    line = one_line_error(run_martd("pub", "cli.first", "x", "--size", "0", "--url", served.url))
    assert "400" in line and "size" in line


def test_cli_pub_of_an_empty_message_warns_that_it_reaches_nobody(served: Served) -> None:
    pushed = run_martd("pub", "cli.empty", "--size", "3", "--url", served.url)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["delivered"] is False
    assert pushed.stderr.startswith("martd pub: warning: the message is empty")
    assert "delivers it to no subscriber" in pushed.stderr
    real = run_martd("pub", "cli.empty", "something", "--url", served.url)
    assert real.returncode == 0 and real.stderr == ""


def test_cli_pub_to_martd_served_at_the_root_says_which_url_to_use() -> None:
    with running(create_app(backend="memory")) as root:
        assert isinstance(root, ServerThread)
        for args in (["pub", "demo", "hi"], ["sub", "demo", "--count", "1"]):
            line = one_line_error(run_martd(*args, "--url", f"{root.url}/martd"))
            assert "404" in line and "nothing at '/martd/" in line
            assert line.endswith(f"martd answers at {root.url} (it is served at /): use --url {root.url}")
    # martd is elsewhere (a site mounts it at /push): a hint about --url all the same.
    with running(mounted_app(create_app(backend="memory"), "/push")) as site:
        line = one_line_error(run_martd("pub", "demo", "hi", "--url", f"{site.url}/martd"))
        assert line.startswith("martd: 404: ")
        assert line.endswith(
            f"is --url where martd is mounted? (uvicorn martd_asgi:app serves it at /: --url {site.url})"
        )


def test_cli_without_arguments_prints_its_help() -> None:
    bare = run_martd()
    assert bare.returncode == 0 and bare.stderr == ""
    assert bare.stdout.startswith("Usage: martd") and "martd pub CHANNEL DATA" in bare.stdout


def test_cli_serve_on_a_port_in_use_says_so_before_any_banner(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_martd("serve", "--port", str(port), MARTD_BACKEND="memory")
    line = one_line_error(result)
    assert line == (
        f"martd: cannot listen on 127.0.0.1:{port}: Address already in use; "
        "is martd already running? choose another --port"
    )
    assert "serving at" not in result.stderr and result.stdout == ""


def test_cli_serve_without_upstream_redirects_root_to_the_demo(served: Served) -> None:
    answer = httpx.get(served.origin + "/")
    assert answer.status_code == 307
    assert answer.headers["location"] == "/martd/demo"
    assert httpx.get(served.origin + "/martd/demo").status_code == 200


def test_cli_serve_takes_its_options_from_the_environment(tmp_path: Path) -> None:
    env = {"MARTD_PREFIX": "/push", "MARTD_DEMO": "0", "MARTD_ACCESS_LOG": "false"}
    env |= {"MARTD_LOG_LEVEL": "info"}
    with martd_serve(tmp=tmp_path, **env) as served:
        assert served.url.endswith("/push")
        assert httpx.post(f"{served.url}/pub/env", content="x").status_code == 201
        assert httpx.get(f"{served.origin}/martd/healthz").status_code == 404
        assert httpx.get(f"{served.origin}/").status_code == 404  # no demo, no redirect
    assert "/pub/env" not in served.stderr()  # no access log


def test_cli_serve_help_names_every_environment_variable() -> None:
    text = run_martd("serve", "--help").stdout
    for name in (
        "HOST",
        "PORT",
        "UPSTREAM",
        "PREFIX",
        "BACKEND",
        "SSL",
        "CERTFILE",
        "KEYFILE",
        "WORKERS",
        "LOG_LEVEL",
        "ACCESS_LOG",
    ):
        assert f"MARTD_{name}" in text


def test_cli_serve_ssl_serves_https_with_the_printed_certificate(tmp_path: Path) -> None:
    def printed_authority(served: Served) -> ssl.SSLContext | None:
        found = re.search(r"certificate authority to trust: (\S+)", served.stderr())
        return ca_context(found.group(1)) if found else None

    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    with martd_serve("--ssl", tmp=tmp_path, verify=printed_authority, **env) as served:
        authority = re.search(r"certificate authority to trust: (\S+)", served.stderr())
        assert authority and authority.group(1).startswith(str(tmp_path / "cache"))
        context = ca_context(authority.group(1))
        for host in ("localhost", "127.0.0.1"):
            answer = httpx.get(f"https://{host}:{served.port}/martd/healthz", verify=context)
            assert answer.status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{served.port}/martd/healthz")  # not trusted by default


def test_devcert_is_reused_while_valid(tmp_path: Path) -> None:
    first = dev_certificate(tmp_path)
    second = dev_certificate(tmp_path)
    assert first.created and not second.created
    assert first.cert.read_bytes() == second.cert.read_bytes()
    assert oct(first.key.stat().st_mode & 0o777) == "0o600"
    assert "PRIVATE KEY" not in first.ca.read_text()


SECRET = "a-long-enough-signing-secret-for-hs256"


def test_cli_token_prints_a_token_for_the_secret() -> None:
    import jwt

    result = run_martd(
        "token",
        "--publish",
        "user.42.*",
        "--subscribe",
        "room.1",
        "--ttl",
        "60",
        MARTD_SECRET=SECRET,
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["martd"]["publish"] == ["user.42.*"]
    assert claims["martd"]["subscribe"] == ["room.1"]


def test_cli_serve_workers_share_channels_through_redis_and_stop_cleanly(
    tmp_path: Path,
) -> None:
    with (
        redis_url() as backend,
        martd_serve("--workers", "2", "--backend", backend, tmp=tmp_path) as served,
    ):
        pushed = run_martd("pub", "cli.workers", "first", "--url", served.url)
        assert pushed.returncode == 0, pushed.stderr
        got = run_martd("sub", "cli.workers", "--etag", "0", "--count", "1", "--url", served.url)
        assert got.returncode == 0, got.stderr
        assert got.stdout == "first\n"
        with martd_process("sub", "cli.workers", "--count", "1", "--url", served.url) as process:
            assert process.stderr is not None and process.stdout is not None
            assert "listening" in process.stderr.readline()
            # Subscribed before its headers came back: whichever worker takes the push,
            # the message reaches it through Redis.
            assert httpx.post(f"{served.url}/pub/cli.workers", content="live").is_success
            assert process.stdout.readline() == "live\n"
            assert process.wait(timeout=10) == 0
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=15) == 0, served.stderr()
        assert "Traceback" not in served.stderr()
