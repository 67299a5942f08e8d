"""A real browser for console tests: Playwright driving Debian's `chromium` headless.

`playwright install` cannot download browsers here, so the system's Chromium is launched by
path (`TOLLHOUSE_TEST_CHROMIUM`, else `chromium` on PATH). Without one the test is skipped
locally and fails in CI (`.ci/run` installs the package when it is missing). Screenshots go to
`TOLLHOUSE_SCREENSHOTS_DIR` (default `.artifacts/console/` in the checkout).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

__all__ = ["chromium", "screenshot", "sign_in"]

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _executable() -> str:
    path = (
        os.environ.get("TOLLHOUSE_TEST_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if path:
        return path
    if os.environ.get("TOLLHOUSE_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail("chromium is required in CI (apt-get install chromium) but was not found")
    pytest.skip("no chromium on this machine")


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium, closed afterwards."""
    executable = _executable()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


def screenshots_dir() -> Path:
    path = Path(os.environ.get("TOLLHOUSE_SCREENSHOTS_DIR") or ROOT / ".artifacts" / "console")
    path.mkdir(parents=True, exist_ok=True)
    return path


async def screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot saved under the screenshots directory."""
    target = screenshots_dir() / f"{name}.png"
    await page.screenshot(path=str(target), full_page=True)
    return target


async def sign_in(page: Page, base_url: str, name: str, password: str) -> None:
    """Open the console and sign in on the authorization server's page, as a person would."""
    await page.goto(f"{base_url}/ui/")
    await page.wait_for_url("**/oauth/login?**")
    await page.fill("#username", name)
    await page.fill("#password", password)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base_url}/ui/")
