"""A headless Chromium driven by Selenium, from Debian's `chromium` and `chromium-driver`
(scripts/ensure-chromium.sh installs them). Missing binaries fail the test, never skip it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = ("chromium", "chromium-browser")
DRIVER = ("chromedriver",)
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1280,900",
)


def _find(names: tuple[str, ...], extra: tuple[str, ...] = ()) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    for path in extra:
        if Path(path).is_file():
            return path
    return None


@contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile in `profile`; closed afterwards."""
    browser = _find(CHROMIUM)
    driver = _find(DRIVER, ("/usr/lib/chromium/chromedriver",))
    if browser is None or driver is None:
        pytest.fail(
            "Chromium or its driver is missing: run scripts/ensure-chromium.sh "
            "(Debian packages 'chromium' and 'chromium-driver')"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield chrome
    finally:
        chrome.quit()
