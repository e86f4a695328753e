"""js/ as a package for front-end builds: package.json, TypeScript types, size.

The TypeScript check and the size use the tools of js/package.json's
devDependencies (``npm ci --prefix js``, which ``make test`` runs); without them
these tests skip, and fail where ``MARTD_REQUIRE_TYPESCRIPT=1`` (CI).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from martd_asgi import create_app

from .helpers import ServerThread, mounted_app, require

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "js"
TOOLS = JS / "node_modules"
BUDGET = 7 * 1024  # bytes of client.js, minified and gzipped, as a bundle ships it
CHROMIUM = "/usr/bin/chromium"


def node_tool(relative: str) -> list[str]:
    node = shutil.which("node")
    tool = TOOLS / relative
    require(
        "typescript",
        node is not None and tool.is_file(),
        f"needs node and js/node_modules/{relative} (npm ci --prefix js)",
    )
    return [str(node), str(tool)]


def package() -> dict[str, Any]:
    return dict(json.loads((JS / "package.json").read_text()))


def test_package_json_names_files_that_exist_and_no_runtime_dependency() -> None:
    meta = package()
    assert "dependencies" not in meta and "peerDependencies" not in meta
    targets = [meta["main"], meta["module"], meta["types"]]
    root = meta["exports"]["."]
    targets += [root["import"]["types"], root["import"]["default"], root["default"]]
    for target in targets:
        name = target.removeprefix("./")
        assert (JS / name).is_file(), target
        assert name in meta["files"], f"{name} would not be in the published package"
    assert meta["module"] == "client.mjs" and meta["main"] == "client.js"
    # The module names the export that docs/client.md imports.
    module = (JS / "client.mjs").read_text()
    assert "export { martd }" in module and "export default martd" in module


def test_package_types_check_a_typed_usage_file(tmp_path: Path) -> None:
    """``tsc --noEmit`` on a page written against the types, importing the package by
    name as a bundler resolves it (package.json ``exports``); the usage file's
    ``@ts-expect-error`` lines are mistakes the types must refuse."""
    tsc = node_tool("typescript/bin/tsc")
    for name in ("usage.ts", "tsconfig.json"):
        shutil.copy(ROOT / "tests" / "typescript" / name, tmp_path / name)
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "martd-client").symlink_to(JS, target_is_directory=True)
    result = subprocess.run(
        [*tsc, "--noEmit", "-p", str(tmp_path / "tsconfig.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    # The same file with one more mistake fails: the check is not vacuous.
    usage = tmp_path / "usage.ts"
    usage.write_text(usage.read_text() + '\nmartd.pub("room.7", null, "x").then((a) => a.nope);\n')
    result = subprocess.run(
        [*tsc, "--noEmit", "-p", str(tmp_path / "tsconfig.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0 and "nope" in result.stdout


def test_package_client_fits_its_size_budget() -> None:
    terser = node_tool("terser/bin/terser")
    result = subprocess.run(
        [*terser, str(JS / "client.js"), "--compress", "--mangle"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    size = len(gzip.compress(result.stdout, compresslevel=9))
    print(f"client.js: {size} bytes minified and gzipped (budget {BUDGET})")
    assert 1000 < size <= BUDGET


# ------------------------------------------------------------ in Chromium


@pytest.fixture
def site() -> Iterator[ServerThread]:
    martd = create_app(backend="memory")
    server = ServerThread(mounted_app(martd), timeout_graceful_shutdown=5).start()
    try:
        yield server
    finally:
        server.server_loop().call_soon_threadsafe(martd.begin_shutdown)
        server.stop()


@pytest.mark.browser
def test_package_module_exports_martd_and_finds_its_server(site: ServerThread) -> None:
    require("browser", os.path.exists(CHROMIUM), f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"], headless=True
        )
        try:
            page = browser.new_page()
            page.goto(f"{site.url}/martd/demo?channel=")
            found = page.evaluate(
                """async () => {
                  const m = await import("/martd/client.mjs");
                  return [m.martd === m.default, m.sub === m.martd.sub, m.martd.config().url];
                }"""
            )
            members = page.evaluate("Object.keys(martd)")
            settings = page.evaluate("Object.keys(martd.config())")
        finally:
            browser.close()
    assert found == [True, True, f"{site.url}/martd"]
    # Whatever client.js offers is declared for TypeScript.
    types = (JS / "client.d.mts").read_text()
    martd_interface = types[types.index("export interface Martd {") :]
    config_interface = types[types.index("export interface Config {") :]
    for name in members:
        assert re.search(rf"\n  (readonly )?{name}[(:?<]", martd_interface), f"martd.{name}"
    for name in settings:
        assert re.search(rf"\n  {name}: ", config_interface), f"config {name}"
