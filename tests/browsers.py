"""The browser engines the client tests run in, behind one small driver interface.

A test gets a ``context`` (one per test) and opens pages in it with ``new_page()``.
A page has the subset of Playwright's ``Page`` that the tests use: ``goto``,
``evaluate``, ``wait_for_function``, ``reload``, ``close``, ``url`` and, for the demo
page, ``fill``, ``click``, ``select_option``, ``wait_for_selector`` and
``text_content``. In Chromium (Debian's, driven by Playwright) the context and its
pages are Playwright's own objects; in Firefox ESR (Debian's, driven over
Marionette) they are the classes below. A test runs in Chromium only unless it is
marked ``@both_engines`` (or ``@engines_with(...)``, for a parameter of which Firefox
runs a subset); one that also uses Playwright's own extras (``page.on``,
``context.route``) stays Chromium-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Any, Protocol

import pytest

from .helpers import require

CHROMIUM = "/usr/bin/chromium"
FIREFOX = "/usr/bin/firefox-esr"
ENGINES = ["chromium", "firefox"]
TIMEOUT_MS = 10_000
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# marionette.port 0: Firefox takes a free port and writes it to MarionetteActivePort
# in the profile. The rest keeps it off the network (updates, telemetry, safe
# browsing, remote settings, captive-portal and connectivity checks, prefetching) and
# keeps timers of pages that are not in front at full speed, as in Chromium.
FIREFOX_PREFS: dict[str, Any] = {
    "marionette.port": 0,
    "app.normandy.enabled": False,
    "app.normandy.api_url": "",
    "app.shield.optoutstudies.enabled": False,
    "app.update.auto": False,
    "app.update.disabledForTesting": True,
    "app.update.enabled": False,
    "browser.aboutwelcome.enabled": False,
    "browser.discovery.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.newtabpage.activity-stream.feeds.section.topstories": False,
    "browser.newtabpage.activity-stream.feeds.topsites": False,
    "browser.newtabpage.activity-stream.telemetry": False,
    "browser.ping-centre.telemetry": False,
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.provider.google4.updateURL": "",
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "browser.search.update": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage": "about:blank",
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.tabs.warnOnClose": False,
    "browser.topsites.contile.enabled": False,
    "captivedetect.canonicalURL": "",
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.policy.firstRunURL": "",
    "dom.push.connection.enabled": False,
    "dom.push.serverURL": "",
    "dom.min_background_timeout_value": 4,
    "dom.timeout.enable_budget_timer_throttling": False,
    "extensions.blocklist.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "extensions.systemAddon.update.url": "",
    "extensions.update.enabled": False,
    "geo.provider.network.url": "",
    "media.gmp-gmpopenh264.enabled": False,
    "media.gmp-manager.updateEnabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.http.speculative-parallel-limit": 0,
    "network.prefetch-next": False,
    "network.trr.mode": 5,
    "security.OCSP.enabled": 0,
    "services.settings.server": "",
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.server": "",
    "toolkit.telemetry.unified": False,
}


class Page(Protocol):
    """What a test may do with a page in any engine (Playwright's names and meaning)."""

    @property
    def url(self) -> str: ...
    def goto(self, url: str) -> Any: ...
    def reload(self) -> Any: ...
    def evaluate(self, expression: str, arg: Any = None) -> Any: ...
    def wait_for_function(
        self, expression: str, *, arg: Any = None, timeout: float | None = None
    ) -> Any: ...
    def fill(self, selector: str, value: str) -> None: ...
    def click(self, selector: str) -> None: ...
    def select_option(self, selector: str, value: str) -> Any: ...
    def wait_for_selector(self, selector: str, *, timeout: float | None = None) -> Any: ...
    def text_content(self, selector: str) -> str | None: ...
    def close(self) -> None: ...


class Context(Protocol):
    """Pages that share cookies and origins' storage, like tabs of one browser window."""

    def new_page(self) -> Page: ...
    def close(self) -> None: ...


both_engines = pytest.mark.parametrize("engine", ENGINES, indirect=True)
"""Run a test in Firefox as well as in Chromium."""


def engines_with(name: str, chromium: list[str], firefox: list[str]) -> pytest.MarkDecorator:
    """Parametrise ``name`` over ``chromium``'s values in Chromium and ``firefox``'s in
    Firefox (the subset where the engines differ)."""
    pairs = [("chromium", v) for v in chromium] + [("firefox", v) for v in firefox]
    return pytest.mark.parametrize(("engine", name), pairs, indirect=["engine"])


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The engine of this test: Chromium unless parametrised by ``both_engines``."""
    return str(getattr(request, "param", "chromium"))


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    require("browser", os.path.exists(CHROMIUM), f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # launch() gives every run a new, empty profile directory of its own.
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def firefox() -> Iterator[Firefox]:
    require("browser", os.path.exists(FIREFOX), f"{FIREFOX} is not installed")
    browser = Firefox()
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def context(engine: str, request: pytest.FixtureRequest) -> Iterator[Context]:
    """A fresh browser context of this test's engine, closed with its pages after it."""
    if engine == "firefox":
        ctx: Any = request.getfixturevalue("firefox").new_context()
    else:
        ctx = request.getfixturevalue("chromium").new_context()
        ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


# ------------------------------------------------------------------ Firefox

# Runs a Playwright-style expression in the page: a function is called with the
# argument; anything else is evaluated as a script in the page's global scope.
# A returned promise is awaited by Marionette.
_EVALUATE = """
var source = arguments[0], arg = arguments[1], compiled = null;
try { compiled = new Function("return (" + source + "\\n)"); } catch (e) {
  if (!(e instanceof SyntaxError)) throw e;
}
if (compiled === null) return (0, eval)(source);
var value = compiled();
return typeof value === "function" ? value(arg) : value;
"""

_VISIBLE = """
var el = document.querySelector(arguments[0]);
if (!el) return false;
var style = getComputedStyle(el);
return el.getClientRects().length > 0 && style.visibility !== "hidden";
"""

# As Playwright's select_option: select the option, then tell the page.
_SELECT = """
var el = document.querySelector(arguments[0]);
el.value = arguments[1];
el.dispatchEvent(new Event("input", {bubbles: true}));
el.dispatchEvent(new Event("change", {bubbles: true}));
return [el.value];
"""


class Firefox:
    """Debian's Firefox ESR, headless, on a new profile, driven over Marionette.

    Every page is a window of its own (so that each is in front and visible, as a
    Playwright page is); one blank window stays open to keep the session.
    """

    def __init__(self, binary: str = FIREFOX, startup: float = 90.0) -> None:
        with warnings.catch_warnings():
            # mozinfo, imported by it, calls a deprecated distro function at import
            warnings.simplefilter("ignore", DeprecationWarning)
            from marionette_driver.marionette import Marionette  # type: ignore[import-untyped]

        self.profile = tempfile.mkdtemp(prefix="martd-firefox-")
        with open(os.path.join(self.profile, "user.js"), "w") as prefs:
            for name, value in FIREFOX_PREFS.items():
                prefs.write(f"user_pref({json.dumps(name)}, {json.dumps(value)});\n")
        self.log = open(os.path.join(self.profile, "firefox.log"), "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [binary, "--headless", "--marionette", "--no-remote", "--profile", self.profile],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its content processes end with it, by group
        )
        try:
            port = self._marionette_port(time.monotonic() + startup)
            self.marionette = Marionette(port=port, socket_timeout=60)
            self.session = self.marionette.start_session(timeout=startup)
        except BaseException:
            self._end_process()
            raise
        self.marionette.timeout.page_load = TIMEOUT_MS / 1000
        self.marionette.timeout.script = TIMEOUT_MS / 1000
        self.version = str(self.session["browserVersion"])
        self.home = self.marionette.current_window_handle
        self.current = self.home

    def _marionette_port(self, deadline: float) -> int:
        path = os.path.join(self.profile, "MarionetteActivePort")
        while True:
            with contextlib.suppress(OSError, ValueError):
                with open(path) as f:
                    return int(f.read().strip())
            if self.process.poll() is not None or time.monotonic() > deadline:
                with open(os.path.join(self.profile, "firefox.log"), errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"Firefox did not start Marionette: {tail}")
            time.sleep(0.05)

    def use(self, handle: str) -> Any:
        """The Marionette client, its commands directed at window ``handle``."""
        if handle != self.current:
            self.marionette.switch_to_window(handle, focus=False)
            self.current = handle
        return self.marionette

    def new_context(self) -> FirefoxContext:
        return FirefoxContext(self)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.marionette._request_in_app_shutdown()
            self.marionette.delete_session(send_request=False)
        self._end_process()

    def _end_process(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=15)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
                break
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


class FirefoxContext:
    """The pages a test opened in Firefox; closing it closes them all."""

    def __init__(self, firefox: Firefox) -> None:
        self.firefox = firefox
        self.pages: list[FirefoxPage] = []

    def new_page(self) -> FirefoxPage:
        handle = self.firefox.marionette.open(type="window", focus=False)["handle"]
        page = FirefoxPage(self.firefox, str(handle))
        self.pages.append(page)
        return page

    def close(self) -> None:
        # Cookies are the site's (127.0.0.1), whatever the port: the next test starts
        # without them, as in a new Playwright context. Other storage is per port.
        for page in self.pages:
            if not page.closed and page.url.startswith("http"):
                self.firefox.use(page.handle).delete_all_cookies()
                break
        for page in self.pages:
            page.close()


class FirefoxPage:
    """A Firefox window with Playwright's ``Page`` methods (timeouts in ms, too)."""

    def __init__(self, firefox: Firefox, handle: str) -> None:
        self.firefox = firefox
        self.handle = handle
        self.closed = False

    def _run(self, script: str, *args: Any) -> Any:
        # sandbox=None: the script runs in the page itself and sees its globals.
        return self.firefox.use(self.handle).execute_script(
            script, script_args=list(args), sandbox=None
        )

    @property
    def url(self) -> str:
        return str(self.firefox.use(self.handle).get_url())

    def goto(self, url: str) -> None:
        self.firefox.use(self.handle).navigate(url)

    def reload(self) -> None:
        self.firefox.use(self.handle).refresh()

    def evaluate(self, expression: str, arg: Any = None) -> Any:
        return self._run(_EVALUATE, expression, arg)

    def wait_for_function(
        self, expression: str, *, arg: Any = None, timeout: float | None = None
    ) -> Any:
        return self._until(lambda: self.evaluate(expression, arg), expression, timeout)

    def wait_for_selector(self, selector: str, *, timeout: float | None = None) -> None:
        self._until(lambda: self._run(_VISIBLE, selector), f"visible {selector}", timeout)

    def text_content(self, selector: str) -> str | None:
        self._until(
            lambda: self._run("return !!document.querySelector(arguments[0])", selector),
            f"element {selector}",
            None,
        )
        text = self._run("return document.querySelector(arguments[0]).textContent", selector)
        return None if text is None else str(text)

    def fill(self, selector: str, value: str) -> None:
        element = self._element(selector)
        element.clear()
        if value:
            element.send_keys(value)

    def click(self, selector: str) -> None:
        self._element(selector).click()

    def select_option(self, selector: str, value: str) -> list[str]:
        self.wait_for_selector(selector)
        return list(self._run(_SELECT, selector, value))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.firefox.use(self.handle).close()
        self.firefox.use(self.firefox.home)

    def _element(self, selector: str) -> Any:
        self.wait_for_selector(selector)
        return self.firefox.use(self.handle).find_element("css selector", selector)

    def _until(self, check: Any, what: str, timeout: float | None) -> Any:
        deadline = time.monotonic() + (TIMEOUT_MS if timeout is None else timeout) / 1000
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"Firefox: {what!r} not true within {timeout or TIMEOUT_MS} ms")
            time.sleep(0.02)
