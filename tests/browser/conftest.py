"""Browser fixtures: Debian's chromium driven by Playwright, against the real daemon.

The tests skip, saying why, where Playwright or a chromium binary is missing (`apt-get
install chromium`); CI installs chromium and sets HSID_TEST_REQUIRE_BROWSER, so there a
missing browser fails instead. One daemon serves the whole module, with API keys on,
so every test also goes the way a browser on the network goes: through the key.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from hsid.core.config import Config
from hsid.core.db import create_pool
from tests.conftest import _create_database, _database_url, _drop_database, free_port
from tests.support import Daemon, http_json, wait_for

API_KEY = "browser-test-key-0123456789"
KEY_NAME = "browser"
# Playwright drives the machine's chromium; it never downloads a browser of its own.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
PAGE_TIMEOUT_MS = 15_000


def run_async(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to the end in a thread of its own: Playwright's sync API keeps an
    event loop running on this thread, where asyncio.run() refuses to start."""
    with ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, coroutine).result()


def cannot_run(reason: str) -> NoReturn:
    """Skip, saying why; in CI (HSID_TEST_REQUIRE_BROWSER set) fail, as they must run there."""
    if os.environ.get("HSID_TEST_REQUIRE_BROWSER"):
        pytest.fail(reason)
    pytest.skip(reason)


def chromium_binary() -> str | None:
    given = os.environ.get("HSID_TEST_CHROMIUM")
    if given:
        return given
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless chromium (a fresh profile per context), or a skip naming what is missing.

    Module-scoped on purpose: while Playwright's sync API is open, its event loop counts as
    running on this thread, and asyncio.run() (or an async test) would refuse to start."""
    try:
        from playwright import sync_api
    except ImportError:
        cannot_run("browser tests need Playwright: pip install -e '.[dev]'")
    executable = chromium_binary()
    if executable is None:
        cannot_run("browser tests need a chromium binary: apt-get install chromium "
                   "(or set HSID_TEST_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests leave screenshots of the main views (HSID_TEST_SCREENSHOTS, or a
    temporary folder named in the test output) for a person to look at."""
    given = os.environ.get("HSID_TEST_SCREENSHOTS")
    folder = Path(given) if given else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots in {folder}")
    return folder


@dataclass
class PageDaemon:
    base_url: str
    database_url: str
    camera_root: Path
    state_dir: Path

    def sql(self, query: str, *args: Any) -> list[dict[str, Any]]:
        """Run one statement on the daemon's database (codecs as the daemon has them)."""
        async def run() -> list[dict[str, Any]]:
            pool = await create_pool(Config().database, self.database_url)
            try:
                return [dict(row) for row in await pool.fetch(query, *args)]
            finally:
                await pool.close()

        return run_async(run())


@pytest.fixture(scope="module")
def page_daemon(browser: Any, tmp_path_factory: pytest.TempPathFactory, redis_url: str,
                redis_prefix: str, test_models: dict[str, Path]) -> Iterator[PageDaemon]:
    """`hsid run` with every stage, rules for scoring (quick), keys on, on its own database."""
    name = f"hsid_test_{uuid.uuid4().hex[:12]}"
    run_async(_create_database(name))
    root = tmp_path_factory.mktemp("page")
    camera_root, state_dir = root / "cameras", root / "state"
    camera_root.mkdir()
    state_dir.mkdir()
    port = free_port()
    env = {
        "DATABASE_URL": _database_url(name), "REDIS_URL": redis_url,
        "HSID_REDIS__PREFIX": f"{redis_prefix}page:",
        "HSID_PATHS__CAMERA_ROOT": str(camera_root), "HSID_PATHS__STATE_DIR": str(state_dir),
        "HSID_API__PORT": str(port),
        "HSID_DETECTOR__MODEL": str(test_models["detector"]), "HSID_ANALYZER__MODEL": "",
        "HSID_BATCH__WINDOW_SECONDS": "3", "HSID_BATCH__IDLE_SECONDS": "1",
        "HSID_BATCH__SWEEP_INTERVAL_SECONDS": "0.2",
        "API_KEY_ENABLED": "true", "API_KEYS": f"{KEY_NAME}:{API_KEY}",
    }
    daemon = Daemon(env, ["run"], root / "daemon.log")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_json(f"{base_url}/api/system/health")[0] == 200, timeout=60)
        yield PageDaemon(base_url, _database_url(name), camera_root, state_dir)
    finally:
        status = daemon.stop()
        run_async(_drop_database(name))
    assert status == 0, daemon.output()


@pytest.fixture
def page(browser: Any, page_daemon: PageDaemon) -> Iterator[Any]:
    """A fresh browser context (empty storage) with the key already saved, at a laptop size."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"localStorage.setItem('hsid.apiKey', {API_KEY!r})")
    tab = context.new_page()
    tab.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield tab
    finally:
        context.close()
